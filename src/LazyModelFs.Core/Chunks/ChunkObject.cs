using System.Buffers.Binary;
using LazyModelFs.Compression;
using LazyModelFs.Util;

namespace LazyModelFs.Chunks;

/// <summary>
/// The bytes of a stored chunk object: a 16-byte header, then the payload.
/// <code>
///   0  4  magic "LMCK"
///   4  1  version (1)
///   5  1  codec (0 = none, 1 = zstd)
///   6  2  reserved (0)
///   8  4  plain length
///  12  4  payload length (object length − 16)
/// </code>
/// A plain chunk's payload is the file bytes themselves, so a reader can place them straight into
/// its buffer. Whatever the codec, <see cref="Decode"/> checks the SHA-256 of the plain bytes
/// against the chunk id: a mismatch is an error, never data.
/// </summary>
public static class ChunkObject
{
    public const int HeaderSize = 16;
    private const uint Magic = 0x4B434D4C; // "LMCK"
    private const byte Version = 1;

    /// <summary>Bytes a caller must reserve to <see cref="Encode"/> a chunk of this plain size.</summary>
    public static int MaxObjectSize(int plainLength, ChunkCodec codec) =>
        HeaderSize + (codec == ChunkCodec.Zstd ? Math.Max(plainLength, Zstd.CompressBound(plainLength)) : plainLength);

    public static void WriteHeader(Span<byte> dest, ChunkCodec codec, int plainLength, int payloadLength)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(dest, Magic);
        dest[4] = Version;
        dest[5] = (byte)codec;
        dest[6] = 0;
        dest[7] = 0;
        BinaryPrimitives.WriteInt32LittleEndian(dest[8..], plainLength);
        BinaryPrimitives.WriteInt32LittleEndian(dest[12..], payloadLength);
    }

    /// <summary>
    /// Encodes <paramref name="plain"/> into <paramref name="obj"/> (sized by <see cref="MaxObjectSize"/>).
    /// With zstd requested, the chunk is still stored plain when compression does not make it smaller
    /// (<see cref="TryCompress"/>). Returns the codec used and the object length.
    /// </summary>
    public static (ChunkCodec Codec, int Length) Encode(ReadOnlySpan<byte> plain, Span<byte> obj, ChunkCodec wanted)
    {
        if (wanted == ChunkCodec.Zstd && TryCompress(plain, obj) is > 0 and int n)
        {
            return (ChunkCodec.Zstd, n);
        }

        plain.CopyTo(obj[HeaderSize..]);
        WriteHeader(obj, ChunkCodec.None, plain.Length, plain.Length);
        return (ChunkCodec.None, HeaderSize + plain.Length);
    }

    /// <summary>
    /// Writes the zstd object of <paramref name="plain"/> into <paramref name="obj"/> (at least
    /// <c>MaxObjectSize(plain.Length, Zstd)</c> long) and returns its length, or 0 when compression
    /// does not make it smaller: then the chunk is stored plain. Model weights compress little and
    /// the plain read path is the cheap one.
    ///
    /// This is one half of the codec rule; <see cref="CodecOfSize"/> is the other. Because zstd is
    /// kept only when its payload is smaller than the plain bytes, a stored object's size alone tells
    /// its codec: exactly plain + <see cref="HeaderSize"/> is plain, smaller is zstd.
    /// </summary>
    public static int TryCompress(ReadOnlySpan<byte> plain, Span<byte> obj)
    {
        int n = Zstd.Compress(plain, obj[HeaderSize..]);
        if (n >= plain.Length)
        {
            return 0;
        }

        WriteHeader(obj, ChunkCodec.Zstd, plain.Length, n);
        return HeaderSize + n;
    }

    /// <summary>
    /// The codec of a stored object of <paramref name="objectLength"/> bytes holding a chunk of
    /// <paramref name="plainLength"/> bytes (the other half of <see cref="TryCompress"/>'s rule), or
    /// null when no object this lmfs writes has that size.
    /// </summary>
    public static ChunkCodec? CodecOfSize(long objectLength, int plainLength) =>
        objectLength == (long)plainLength + HeaderSize ? ChunkCodec.None
        : objectLength > HeaderSize && objectLength < (long)plainLength + HeaderSize ? ChunkCodec.Zstd
        : null;

    /// <summary>
    /// Validates an object against its chunk-table row and writes the verified plain bytes into
    /// <paramref name="plain"/> (at least <c>entry.PlainLength</c> long).
    /// </summary>
    public static void Decode(ReadOnlySpan<byte> obj, in ChunkEntry entry, Span<byte> plain)
    {
        CheckHeader(obj, entry, out var codec, out int plainLen);
        var payload = obj[HeaderSize..];
        var dest = plain[..plainLen];
        switch (codec)
        {
            case ChunkCodec.None:
                payload.CopyTo(dest);
                break;
            case ChunkCodec.Zstd:
                if (Zstd.Decompress(payload, dest) != plainLen)
                {
                    throw new ChunkCorruptException($"chunk {entry.Id}: zstd payload decompressed to the wrong length");
                }

                break;
            default:
                throw new ChunkCorruptException($"chunk {entry.Id}: unknown codec {(byte)codec}");
        }

        Verify(dest, entry);
    }

    private static void CheckHeader(ReadOnlySpan<byte> obj, in ChunkEntry entry, out ChunkCodec codec, out int plainLen)
    {
        if (obj.Length < HeaderSize || BinaryPrimitives.ReadUInt32LittleEndian(obj) != Magic)
        {
            throw new ChunkCorruptException($"chunk {entry.Id}: object has no LMCK header ({obj.Length} bytes)");
        }

        if (obj[4] != Version)
        {
            throw new ChunkCorruptException($"chunk {entry.Id}: object version {obj[4]} is not supported");
        }

        codec = (ChunkCodec)obj[5];
        plainLen = BinaryPrimitives.ReadInt32LittleEndian(obj[8..]);
        int payloadLen = BinaryPrimitives.ReadInt32LittleEndian(obj[12..]);
        if (plainLen != entry.PlainLength || payloadLen != obj.Length - HeaderSize)
        {
            throw new ChunkCorruptException(
                $"chunk {entry.Id}: object is {obj.Length} bytes claiming plain {plainLen}/payload {payloadLen}; the chunk table expects plain {entry.PlainLength}");
        }
    }

    /// <summary>
    /// Validates a plain (codec none) object in place and returns the offset of its verified plain
    /// bytes (the header size): the read path keeps the object buffer and skips a copy.
    /// </summary>
    public static int VerifyPlainInPlace(ReadOnlySpan<byte> obj, in ChunkEntry entry)
    {
        CheckHeader(obj, entry, out var codec, out _);
        if (codec != ChunkCodec.None)
        {
            throw new ChunkCorruptException($"chunk {entry.Id}: object codec {codec} differs from the chunk table's none");
        }

        Verify(obj.Slice(HeaderSize, entry.PlainLength), entry);
        return HeaderSize;
    }

    /// <summary>Whether <paramref name="obj"/> is a complete, self-consistent plain object whose bytes hash to <paramref name="id"/> (used only to tell a damaged row from a damaged object).</summary>
    public static bool IsWholePlainObjectOf(ReadOnlySpan<byte> obj, ChunkId id) =>
        obj.Length > HeaderSize
        && BinaryPrimitives.ReadUInt32LittleEndian(obj) == Magic
        && obj[4] == Version
        && (ChunkCodec)obj[5] == ChunkCodec.None
        && BinaryPrimitives.ReadInt32LittleEndian(obj[8..]) == obj.Length - HeaderSize
        && BinaryPrimitives.ReadInt32LittleEndian(obj[12..]) == obj.Length - HeaderSize
        && ChunkId.Of(obj[HeaderSize..]) == id;

    /// <summary>
    /// Whether <paramref name="obj"/> is a complete, self-consistent object (plain or zstd) whose plain
    /// bytes hash to <paramref name="id"/>, whatever any row says: what <c>lmfs fsck --repair</c> asks
    /// before it deletes an object, so that an object some row merely disagrees with is never deleted.
    /// </summary>
    public static bool IsWholeObjectOf(ReadOnlySpan<byte> obj, ChunkId id)
    {
        if (obj.Length < HeaderSize || BinaryPrimitives.ReadUInt32LittleEndian(obj) != Magic || obj[4] != Version
            || BinaryPrimitives.ReadInt32LittleEndian(obj[12..]) != obj.Length - HeaderSize)
        {
            return false;
        }

        int plainLen = BinaryPrimitives.ReadInt32LittleEndian(obj[8..]);
        if (plainLen < 0 || plainLen > Volume.MaxChunkSize)
        {
            return false;
        }

        switch ((ChunkCodec)obj[5])
        {
            case ChunkCodec.None:
                return plainLen == obj.Length - HeaderSize && ChunkId.Of(obj[HeaderSize..]) == id;
            case ChunkCodec.Zstd:
                var plain = new byte[plainLen];
                try
                {
                    return Zstd.Decompress(obj[HeaderSize..], plain) == plainLen && ChunkId.Of(plain) == id;
                }
                catch (ChunkCorruptException)
                {
                    return false;
                }

            default:
                return false;
        }
    }

    /// <summary>
    /// Throws unless <paramref name="plain"/> is what the whole row says: its length, its SHA-256 id
    /// and its CRC32C. The id alone is not enough: a damaged row whose id names another chunk of the
    /// same length would verify against that chunk's object, and the row's CRC32C is what tells
    /// them apart (issue 11, item 2). Every path that hands out chunk bytes checks the whole row:
    /// here for the store, DiskCache.TryRead (in Mount) for the disk cache, and
    /// <see cref="Cache.CachedChunk.Matches"/> for the memory tier.
    /// </summary>
    public static void Verify(ReadOnlySpan<byte> plain, in ChunkEntry entry)
    {
        if (plain.Length != entry.PlainLength || ChunkId.Of(plain) != entry.Id)
        {
            throw new ChunkCorruptException($"chunk {entry.Id}: content does not match its SHA-256 id");
        }

        if (Crc32C.Compute(plain) != entry.Crc32C)
        {
            throw new ChunkRowMismatchException($"chunk {entry.Id}: the chunk table row's CRC32C {entry.Crc32C:x8} does not match the chunk's content (the row is damaged: the metadata names the wrong chunk)");
        }
    }

    /// <summary>
    /// Throws unless every block hash of the row names its block of <paramref name="plain"/> (the
    /// chunk, already verified by <see cref="Verify"/>). A whole-chunk read checks the id, not these:
    /// a row whose block hashes are wrong reads right whole and fails its partial reads, so
    /// <c>lmfs fsck --verify</c> checks them here.
    /// </summary>
    public static void VerifyBlocks(ReadOnlySpan<byte> plain, in ChunkEntry entry)
    {
        if (!entry.Blocks.IsEmpty && entry.Blocks.FirstMismatch(plain) is >= 0 and int k)
        {
            throw new ChunkRowMismatchException($"chunk {entry.Id}: the chunk table row's hash of block {k} ({entry.Blocks.BlockSize} bytes a block) does not match the chunk's content (the row is damaged: partial reads of that block fail)");
        }
    }
}
