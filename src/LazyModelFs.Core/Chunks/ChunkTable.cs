using System.Buffers.Binary;
using LazyModelFs.Util;

namespace LazyModelFs.Chunks;

/// <summary>How a chunk's payload is stored in its object.</summary>
public enum ChunkCodec : byte
{
    None = 0,
    Zstd = 1,
}

/// <summary>One row of a file's chunk table.</summary>
/// <param name="Id">SHA-256 of the plain bytes.</param>
/// <param name="PlainLength">Bytes of file data (chunk size, or less for the last chunk).</param>
/// <param name="StoredLength">Size of the whole object, header included.</param>
/// <param name="Codec">How the payload is encoded.</param>
/// <param name="Crc32C">CRC-32C of the plain bytes, for cheap checks of cached copies.</param>
public readonly record struct ChunkEntry(ChunkId Id, int PlainLength, int StoredLength, ChunkCodec Codec, uint Crc32C);

/// <summary>Where one byte of a file lives: <see cref="Within"/> bytes into chunk <see cref="Index"/>.</summary>
public readonly record struct ChunkPosition(int Index, int Within);

/// <summary>
/// A file's chunk table. Chunk i covers file bytes [i × chunkSize, i × chunkSize + PlainLength):
/// every chunk but the last is exactly the volume's chunk size, the last one is 1 to chunk size
/// bytes (an empty file has no chunks). The table knows its chunk size, so it alone works out which
/// chunk holds a byte (<see cref="Locate"/>, <see cref="ChunkRange"/>, <see cref="StartOf"/>);
/// readers never divide by the chunk size themselves (issue 12).
///
/// Encoding (little-endian), see docs/data-format.md:
/// <code>
///   0  4  magic "LMCT"
///   4  2  version (1)
///   6  2  reserved (0)
///   8  4  entry count
///  12  4  reserved (0)
///  16  48 × count entries: id[32] plain_len u32, stored_len u32, codec u8, pad[3], crc32c u32
/// </code>
/// Fixed-size rows let a reader find row i without parsing the rest.
/// </summary>
public sealed class ChunkTable
{
    public const int HeaderSize = 16;
    public const int EntrySize = 48;
    private const uint Magic = 0x54434D4C; // "LMCT" little-endian
    private const ushort Version = 1;

    /// <param name="entries">The rows, complete (they are not changed afterwards).</param>
    /// <param name="chunkSize">The volume's chunk size: chunk i starts at byte i × chunkSize.</param>
    public ChunkTable(IReadOnlyList<ChunkEntry> entries, int chunkSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkSize);
        Entries = entries;
        ChunkSize = chunkSize;
        long total = 0;
        foreach (var e in entries)
        {
            total += e.PlainLength;
        }

        PlainSize = total;
    }

    /// <summary>The table of an empty file: no chunks.</summary>
    public static ChunkTable Empty(int chunkSize) => new([], chunkSize);

    public IReadOnlyList<ChunkEntry> Entries { get; }

    public int Count => Entries.Count;

    public ChunkEntry this[int i] => Entries[i];

    /// <summary>The volume's chunk size, which the table was decoded (or built) with.</summary>
    public int ChunkSize { get; }

    /// <summary>Bytes of the file the rows cover (the sum of their plain lengths).</summary>
    public long PlainSize { get; }

    /// <summary>
    /// The chunk holding byte <paramref name="offset"/> of the file, and the offset within it. Only
    /// bytes of the file have a place: an offset below 0 or at or past <see cref="PlainSize"/>
    /// (every offset of an empty file) throws <see cref="ArgumentOutOfRangeException"/>, never a
    /// position past the last row. No allocation; the READ hit path calls it.
    /// </summary>
    public ChunkPosition Locate(long offset)
    {
        if ((ulong)offset >= (ulong)PlainSize)
        {
            throw OutsideTheFile(nameof(offset), offset);
        }

        int index = (int)(offset / ChunkSize);
        return new ChunkPosition(index, (int)(offset - ((long)index * ChunkSize)));
    }

    /// <summary>
    /// The first and last chunk holding any byte of [<paramref name="from"/>, <paramref name="to"/>),
    /// after cutting the range to the file: a range that holds no byte of the file (empty, reversed,
    /// or wholly past the end) gives First &gt; Last, so <c>for (i = First; i &lt;= Last; i++)</c> runs
    /// no turn.
    /// </summary>
    public (int First, int Last) ChunkRange(long from, long to)
    {
        from = Math.Max(from, 0);
        to = Math.Min(to, PlainSize);
        if (from >= to)
        {
            return (0, -1);
        }

        return ((int)(from / ChunkSize), (int)((to - 1) / ChunkSize));
    }

    /// <summary>The file offset where chunk <paramref name="index"/> begins (0 ≤ index &lt; <see cref="Count"/>).</summary>
    public long StartOf(int index)
    {
        if ((uint)index >= (uint)Count)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"the table has {Count} chunks");
        }

        return (long)index * ChunkSize;
    }

    private ArgumentOutOfRangeException OutsideTheFile(string name, long offset) =>
        new(name, offset, $"the file has {PlainSize} bytes");

    public long StoredSize
    {
        get
        {
            long total = 0;
            foreach (var e in Entries)
            {
                total += e.StoredLength;
            }

            return total;
        }
    }

    public byte[] Encode()
    {
        var buf = new byte[HeaderSize + (EntrySize * Entries.Count)];
        var s = buf.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(s[4..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], (uint)Entries.Count);
        for (int i = 0; i < Entries.Count; i++)
        {
            var e = Entries[i];
            var row = s.Slice(HeaderSize + (i * EntrySize), EntrySize);
            e.Id.WriteTo(row);
            BinaryPrimitives.WriteInt32LittleEndian(row[32..], e.PlainLength);
            BinaryPrimitives.WriteInt32LittleEndian(row[36..], e.StoredLength);
            row[40] = (byte)e.Codec;
            BinaryPrimitives.WriteUInt32LittleEndian(row[44..], e.Crc32C);
        }

        return buf;
    }

    /// <summary>Decodes and validates a table; throws <see cref="MetaCorruptException"/> on any inconsistency.</summary>
    public static ChunkTable Decode(ReadOnlySpan<byte> s, int chunkSize)
    {
        if (s.Length < HeaderSize || BinaryPrimitives.ReadUInt32LittleEndian(s) != Magic)
        {
            throw new MetaCorruptException("chunk table has no LMCT header");
        }

        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(s[4..]);
        if (version != Version)
        {
            throw new MetaCorruptException($"chunk table version {version} is not supported (this lmfs reads version {Version})");
        }

        uint count = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        if ((long)count * EntrySize != s.Length - HeaderSize)
        {
            throw new MetaCorruptException($"chunk table says {count} entries but holds {s.Length - HeaderSize} bytes of rows");
        }

        var entries = new ChunkEntry[count];
        for (int i = 0; i < count; i++)
        {
            var row = s.Slice(HeaderSize + (i * EntrySize), EntrySize);
            var e = new ChunkEntry(
                ChunkId.FromBytes(row[..32]),
                BinaryPrimitives.ReadInt32LittleEndian(row[32..]),
                BinaryPrimitives.ReadInt32LittleEndian(row[36..]),
                (ChunkCodec)row[40],
                BinaryPrimitives.ReadUInt32LittleEndian(row[44..]));
            bool last = i == count - 1;
            if (e.PlainLength <= 0 || e.PlainLength > chunkSize || (!last && e.PlainLength != chunkSize))
            {
                throw new MetaCorruptException($"chunk table row {i} has plain length {e.PlainLength} (chunk size {chunkSize})");
            }

            // A plain object is exactly header + bytes; a zstd one is stored only when smaller than that.
            bool lengthOk = e.Codec switch
            {
                ChunkCodec.None => e.StoredLength == e.PlainLength + ChunkObject.HeaderSize,
                ChunkCodec.Zstd => e.StoredLength > ChunkObject.HeaderSize && e.StoredLength < e.PlainLength + ChunkObject.HeaderSize,
                _ => false,
            };
            if (!lengthOk)
            {
                throw new MetaCorruptException($"chunk table row {i} has codec {(byte)e.Codec} and stored length {e.StoredLength} for {e.PlainLength} plain bytes");
            }

            entries[i] = e;
        }

        return new ChunkTable(entries, chunkSize);
    }

    public bool ContentEquals(ChunkTable other)
    {
        if (other.Count != Count)
        {
            return false;
        }

        for (int i = 0; i < Count; i++)
        {
            if (Entries[i].Id != other.Entries[i].Id || Entries[i].PlainLength != other.Entries[i].PlainLength)
            {
                return false;
            }
        }

        return true;
    }
}
