using System.Buffers;
using System.Diagnostics;
using LazyModelFs.Storage;
using LazyModelFs.Util;

namespace LazyModelFs.Chunks;

/// <summary>
/// Chunk objects in an <see cref="IObjectStore"/>, both directions: reads verify every chunk against its
/// row; writes (<see cref="StoreAsync(ChunkId, Memory{byte}, ChunkCodec, CancellationToken)"/>) choose the
/// codec and skip objects the store already has. The object format itself is <see cref="ChunkObject"/>.
/// </summary>
public sealed class ChunkStore(IObjectStore store) : IChunkSource
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

    /// <inheritdoc/>
    public async Task ReadBlocksAsync(ChunkEntry entry, int first, int count, Memory<byte> dest, CancellationToken ct = default)
    {
        var blocks = entry.Blocks;
        if (!entry.HasBlocks || first < 0 || count <= 0 || first + count > blocks.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(first), $"blocks {first}+{count} of chunk {entry.Id} ({blocks.Count} blocks, codec {entry.Codec})");
        }

        int size = blocks.BlockSize;
        int from = first * size;
        int len = Math.Min(count * size, entry.PlainLength - from);

        // A plain object is the 16-byte header then the chunk's bytes: block k is at 16 + k × size.
        int n = await Store.GetAsync(entry.Id.ObjectKey(), ChunkObject.HeaderSize + (long)from, dest[..len], ct).ConfigureAwait(false);
        if (n != len)
        {
            throw new Util.ChunkCorruptException($"chunk {entry.Id}: object is shorter than the chunk table's {entry.StoredLength} bytes (a ranged read of {len} bytes at {ChunkObject.HeaderSize + from} got {n})");
        }

        var got = dest.Span[..len];
        for (int k = 0; k < count; k++)
        {
            if (!blocks.Matches(first + k, BlockHashes.BlockOf(got, k, size)))
            {
                throw new Util.ChunkCorruptException($"chunk {entry.Id}: block {first + k} does not match its hash in the chunk table row (the object or the row is damaged; lmfs fsck --verify tells which)");
            }
        }
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
            // A shorter object that is whole and right for its id means the row is wrong, not the object:
            // say so (never retried, never "restore the object"), so a healthy object is not blamed.
            if (n < entry.StoredLength && ChunkObject.IsWholePlainObjectOf(dest.Span[..n], entry.Id))
            {
                throw new Util.ChunkRowMismatchException($"chunk {entry.Id}: the object is whole and matches its id at {n} bytes, but the chunk table row says {entry.StoredLength} (the row is damaged)");
            }

            throw new Util.ChunkCorruptException($"chunk {entry.Id}: object is {(n > entry.StoredLength ? "longer" : $"{n} bytes")}, the chunk table says {entry.StoredLength}");
        }

        return n;
    }

    /// <summary>
    /// If the chunk's object already exists, returns its codec and size, told by the size alone
    /// (<see cref="ChunkObject.CodecOfSize"/>). Null when absent or of a size no chunk object of this
    /// length has (it is then stored again, replacing it).
    /// </summary>
    public async Task<(ChunkCodec Codec, int StoredLength)?> FindAsync(ChunkId id, int plainLength, CancellationToken ct = default)
    {
        long? size = await Store.HeadAsync(id.ObjectKey(), ct).ConfigureAwait(false);
        return size is { } s && ChunkObject.CodecOfSize(s, plainLength) is { } codec ? (codec, (int)s) : null;
    }

    /// <summary>
    /// The stored size of each chunk's object (null: missing), one HEAD per id, <paramref name="concurrency"/>
    /// at a time (<c>lmfs fsck</c>, and an import deciding whether an unchanged file's objects are all there).
    /// <paramref name="onEach"/> is called as each HEAD completes.
    /// </summary>
    public async Task<IReadOnlyDictionary<ChunkId, long?>> StoredSizesAsync(IEnumerable<ChunkId> ids, int concurrency, Action? onEach = null, CancellationToken ct = default)
    {
        var sizes = new System.Collections.Concurrent.ConcurrentDictionary<ChunkId, long?>();
        await Parallel.ForEachAsync(ids.Distinct(), new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, concurrency), CancellationToken = ct }, async (id, t) =>
        {
            sizes[id] = await Store.HeadAsync(id.ObjectKey(), t).ConfigureAwait(false);
            onEach?.Invoke();
        }).ConfigureAwait(false);
        return sizes;
    }

    /// <summary>
    /// Stores a chunk unless the store already has its object (a HEAD, <see cref="FindAsync"/>), and
    /// returns its chunk-table row. With zstd wanted, the object is compressed only when that makes it
    /// smaller (<see cref="ChunkObject.TryCompress"/>).
    /// </summary>
    /// <param name="id"><c>ChunkId.Of</c> the plain bytes: the caller has it already (the importer single-flights on it).</param>
    /// <param name="slot">
    /// <see cref="ChunkObject.HeaderSize"/> bytes of room, then the plain bytes (the rest of the slot).
    /// A chunk stored plain is sent from the slot itself, its header written into the room: the
    /// importer reads a chunk right behind a header slot, so the bytes it read are the bytes sent.
    /// </param>
    /// <param name="reuse">
    /// False: store the object even when one of a plausible size exists (it is known damaged: the
    /// importer repairing a file whose object has not the size its row says). A PUT replaces an
    /// object whole, so readers of the old one see it or the new one, never a mix.
    /// </param>
    public async Task<StoredChunk> StoreAsync(ChunkId id, Memory<byte> slot, ChunkCodec wanted, bool reuse, CancellationToken ct = default)
    {
        var plain = slot[ChunkObject.HeaderSize..];
        int len = plain.Length;
        Debug.Assert(ChunkId.Of(plain.Span) == id, "the id names other bytes");
        uint crc = Crc32C.Compute(plain.Span);
        if (reuse && await FindAsync(id, len, ct).ConfigureAwait(false) is { } found)
        {
            return new StoredChunk(new ChunkEntry(id, len, found.StoredLength, found.Codec, crc), Uploaded: false);
        }

        byte[]? rented = null;
        try
        {
            var codec = ChunkCodec.None;
            ReadOnlyMemory<byte> obj = slot;
            if (wanted == ChunkCodec.Zstd)
            {
                rented = ArrayPool<byte>.Shared.Rent(ChunkObject.MaxObjectSize(len, ChunkCodec.Zstd));
                if (ChunkObject.TryCompress(plain.Span, rented) is > 0 and int n)
                {
                    codec = ChunkCodec.Zstd;
                    obj = rented.AsMemory(0, n);
                }
            }

            if (codec == ChunkCodec.None)
            {
                ChunkObject.WriteHeader(slot.Span, ChunkCodec.None, len, len);
            }

            await Store.PutAsync(id.ObjectKey(), obj, ct).ConfigureAwait(false);
            return new StoredChunk(new ChunkEntry(id, len, obj.Length, codec, crc), Uploaded: true);
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    /// <inheritdoc cref="StoreAsync(ChunkId, Memory{byte}, ChunkCodec, bool, CancellationToken)"/>
    public Task<StoredChunk> StoreAsync(ChunkId id, Memory<byte> slot, ChunkCodec wanted, CancellationToken ct = default) => StoreAsync(id, slot, wanted, reuse: true, ct);

    /// <summary>Stores a chunk given as plain bytes alone (a copy into a header slot; the importer uses the slot form).</summary>
    public Task<StoredChunk> StoreAsync(ReadOnlyMemory<byte> plain, ChunkCodec wanted, CancellationToken ct = default)
    {
        var slot = new byte[ChunkObject.HeaderSize + plain.Length];
        plain.CopyTo(slot.AsMemory(ChunkObject.HeaderSize));
        return StoreAsync(ChunkId.Of(plain.Span), slot, wanted, ct);
    }
}

/// <summary>What <see cref="ChunkStore.StoreAsync(ChunkId, Memory{byte}, ChunkCodec, CancellationToken)"/> did: the chunk's row, and whether it uploaded the object (false: the store had it).</summary>
public readonly record struct StoredChunk(ChunkEntry Entry, bool Uploaded);
