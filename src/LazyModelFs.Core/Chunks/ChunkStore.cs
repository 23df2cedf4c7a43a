using System.Buffers;
using LazyModelFs.Storage;

namespace LazyModelFs.Chunks;

/// <summary>Reads and writes chunk objects through an <see cref="IObjectStore"/>, verifying every chunk read.</summary>
public sealed class ChunkStore(IObjectStore store)
{
    public IObjectStore Store { get; } = store;

    /// <summary>
    /// Fetches the chunk and writes its verified plain bytes into <paramref name="plain"/>
    /// (at least <c>entry.PlainLength</c> long). A truncated, damaged or mismatching object throws
    /// <see cref="Util.ChunkCorruptException"/>; nothing unverified is ever written to <paramref name="plain"/>'s caller-visible range on success paths.
    /// </summary>
    public async Task ReadAsync(ChunkEntry entry, Memory<byte> plain, CancellationToken ct = default)
    {
        byte[] obj = ArrayPool<byte>.Shared.Rent(entry.StoredLength + 1);
        try
        {
            int n = await GetWholeAsync(entry, obj, ct).ConfigureAwait(false);
            ChunkObject.Decode(obj.AsSpan(0, n), entry, plain.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(obj);
        }
    }

    /// <summary>
    /// Fetches the chunk's object into <paramref name="buffer"/> (at least chunk size + 17 bytes) and
    /// returns the offset of its verified plain bytes there. A plain object is verified in place (no
    /// copy); a zstd one is decompressed into the buffer.
    /// </summary>
    public async Task<int> ReadIntoAsync(ChunkEntry entry, Memory<byte> buffer, int parts = 1, CancellationToken ct = default)
    {
        if (entry.Codec == ChunkCodec.None && buffer.Length > entry.StoredLength)
        {
            int n = parts > 1 && entry.StoredLength >= 2 * MinPart
                ? await GetPartsAsync(entry, buffer, parts, ct).ConfigureAwait(false)
                : await GetWholeAsync(entry, buffer, ct).ConfigureAwait(false);
            return ChunkObject.VerifyPlainInPlace(buffer.Span[..n], entry);
        }

        await ReadAsync(entry, buffer[ChunkObject.HeaderSize..], ct).ConfigureAwait(false);
        return ChunkObject.HeaderSize;
    }

    /// <summary>Smallest range worth its own GET when a chunk is fetched in parts.</summary>
    public const int MinPart = 512 << 10;

    /// <summary>
    /// Reads the object as up to <paramref name="parts"/> ranged GETs at once (a reader waiting on a
    /// cold chunk gets it in the time of one part, not of the whole object). The last part asks for
    /// one byte more than expected, like <see cref="GetWholeAsync"/>, so a longer object is caught.
    /// </summary>
    private async Task<int> GetPartsAsync(ChunkEntry entry, Memory<byte> dest, int parts, CancellationToken ct)
    {
        int total = entry.StoredLength;
        parts = Math.Min(parts, total / MinPart);
        int size = ((total / parts) + 4095) & ~4095;
        var tasks = new List<Task<int>>(parts);
        for (int off = 0; off < total; off += size)
        {
            int len = Math.Min(size, total - off);
            bool last = off + len >= total;
            tasks.Add(PartAsync(dest.Slice(off, len + (last ? 1 : 0)), off));
        }

        // Every part is awaited, failed or not, before the buffer goes back to the caller: a part
        // still writing into a buffer that a retry, or another chunk, has taken over would corrupt it.
        int[] got = await Task.WhenAll(tasks).ConfigureAwait(false);
        int n = 0;
        for (int i = 0, off = 0; i < got.Length; i++, off += size)
        {
            int want = Math.Min(size, total - off);
            if (got[i] < want || (i < got.Length - 1 && got[i] != want))
            {
                throw new Util.ChunkCorruptException($"chunk {entry.Id}: object is shorter than the chunk table's {total} bytes");
            }

            n += got[i];
        }

        if (n != total)
        {
            throw new Util.ChunkCorruptException($"chunk {entry.Id}: object is longer than the chunk table's {total} bytes");
        }

        return n;

        // An async wrapper, so a store that throws before returning its task still yields a task to wait for.
        async Task<int> PartAsync(Memory<byte> into, long offset) => await Store.GetAsync(entry.Id.ObjectKey(), offset, into, ct).ConfigureAwait(false);
    }

    /// <summary>Reads the whole object, asking for one byte more than expected: a longer object is damaged too.</summary>
    private async Task<int> GetWholeAsync(ChunkEntry entry, Memory<byte> dest, CancellationToken ct)
    {
        int n = await Store.GetAsync(entry.Id.ObjectKey(), 0, dest[..(entry.StoredLength + 1)], ct).ConfigureAwait(false);
        if (n != entry.StoredLength)
        {
            throw new Util.ChunkCorruptException($"chunk {entry.Id}: object is {(n > entry.StoredLength ? "longer" : $"{n} bytes")}, the chunk table says {entry.StoredLength}");
        }

        return n;
    }

    /// <summary>
    /// If the chunk's object already exists, returns its codec and size (a plain object is exactly
    /// plain + header bytes; a zstd one is stored only when smaller). Null when absent or malformed.
    /// </summary>
    public async Task<(ChunkCodec Codec, int StoredLength)?> FindAsync(ChunkId id, int plainLength, CancellationToken ct = default)
    {
        long? size = await Store.HeadAsync(id.ObjectKey(), ct).ConfigureAwait(false);
        if (size is not { } s || s <= ChunkObject.HeaderSize)
        {
            return null;
        }

        if (s == plainLength + ChunkObject.HeaderSize)
        {
            return (ChunkCodec.None, (int)s);
        }

        return s < plainLength + ChunkObject.HeaderSize ? (ChunkCodec.Zstd, (int)s) : null;
    }
}
