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
/// <param name="Blocks">The SHA-256 of each block (a version 2 table); empty in a version 1 table.</param>
public readonly record struct ChunkEntry(ChunkId Id, int PlainLength, int StoredLength, ChunkCodec Codec, uint Crc32C, BlockHashes Blocks = default)
{
    /// <summary>Whether a block-aligned part of the chunk can be fetched and verified alone: the row has block hashes and the object is stored plain.</summary>
    public bool HasBlocks => !Blocks.IsEmpty && Codec == ChunkCodec.None;
}

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
///   4  2  version (1, or 2 with block hashes)
///   6  2  reserved (0)
///   8  4  entry count
///  12  4  version 1: reserved (0); version 2: block size
///  16  rows: id[32] plain_len u32, stored_len u32, codec u8, pad[3], crc32c u32
///      version 2 only, after each row's 48 bytes: chunk size ÷ block size SHA-256 block hashes of
///      32 bytes (those past the chunk's last block zero)
/// </code>
/// Fixed-size rows let a reader find row i without parsing the rest.
/// </summary>
public sealed class ChunkTable
{
    public const int HeaderSize = 16;
    public const int EntrySize = 48;
    private const uint Magic = 0x54434D4C; // "LMCT" little-endian
    private const ushort Version1 = 1;
    private const ushort Version2 = 2;

    /// <param name="entries">The rows, complete (they are not changed afterwards).</param>
    /// <param name="chunkSize">The volume's chunk size: chunk i starts at byte i × chunkSize.</param>
    /// <param name="blockSize">
    /// 0: a version 1 table (no row has block hashes). Otherwise every row carries the hashes of its
    /// blocks of this size (a version 2 table); <see cref="CheckBlockSize"/> says which sizes are allowed.
    /// Null: the first row's (0 for no rows).
    /// </param>
    public ChunkTable(IReadOnlyList<ChunkEntry> entries, int chunkSize, int? blockSize = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkSize);
        blockSize ??= entries.Count > 0 ? entries[0].Blocks.BlockSize : 0;
        if (blockSize != 0 && CheckBlockSize(blockSize.Value, chunkSize) is { } why)
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, why);
        }

        Entries = entries;
        ChunkSize = chunkSize;
        BlockSize = blockSize.Value;
        long total = 0;
        foreach (var e in entries)
        {
            total += e.PlainLength;
            if (e.Blocks.BlockSize != blockSize || (blockSize != 0 && e.Blocks.Count != BlockHashes.CountFor(e.PlainLength, blockSize.Value)))
            {
                throw new ArgumentException($"row of chunk {e.Id} has {e.Blocks.Count} block hashes of {e.Blocks.BlockSize} bytes; the table's block size is {blockSize}", nameof(entries));
            }
        }

        PlainSize = total;
    }

    /// <summary>The table of an empty file: no chunks.</summary>
    public static ChunkTable Empty(int chunkSize) => new([], chunkSize, 0);

    /// <summary>
    /// Why <paramref name="blockSize"/> cannot split chunks of <paramref name="chunkSize"/> (null: it can):
    /// a power of two from 4 KiB up to the chunk size, and at most <see cref="BlockHashes.MaxBlocks"/> blocks a chunk.
    /// </summary>
    public static string? CheckBlockSize(int blockSize, int chunkSize) =>
        blockSize < BlockHashes.MinBlockSize || (blockSize & (blockSize - 1)) != 0 || blockSize > chunkSize
            ? $"a block size is a power of two from 4K to the chunk size ({Sizes.Format(chunkSize)})"
            : chunkSize / blockSize > BlockHashes.MaxBlocks
                ? $"{Sizes.Format(chunkSize)} chunks of {Sizes.Format(blockSize)} blocks would have {chunkSize / blockSize} blocks each; at most {BlockHashes.MaxBlocks} (a block size of {Sizes.Format(chunkSize / BlockHashes.MaxBlocks)} or more)"
                : null;

    /// <summary>0 in a version 1 table; else the bytes per block of every row's <see cref="ChunkEntry.Blocks"/>.</summary>
    public int BlockSize { get; }

    /// <summary>Bytes of one encoded row.</summary>
    private int RowSize => EntrySize + (BlockSize == 0 ? 0 : BlockHashes.HashSize * (ChunkSize / BlockSize));

    public IReadOnlyList<ChunkEntry> Entries { get; }

    public int Count => Entries.Count;

    public ChunkEntry this[int i] => Entries[i];

    /// <summary>The volume's chunk size, which the table was decoded (or built) with.</summary>
    public int ChunkSize { get; }

    /// <summary>Bytes of the file the rows cover (the sum of their plain lengths).</summary>
    public long PlainSize { get; }

    private object? _contentKey; // a boxed ChunkId: a reference is published whole (a 32-byte struct could be read torn)

    /// <summary>
    /// The file's content key: SHA-256 over its size and each row's id, length and CRC32C (the same
    /// bytes imported twice have one key). It names a file's whole-file view in a disk cache and its
    /// access profiles in the metadata (docs/data-format.md). The CRC is in it so that a table whose
    /// rows disagree with their ids (damaged metadata) never names what an honest file's key names.
    /// Computed once per table (about 180 KB hashed for a 17 GB file).
    /// </summary>
    public ChunkId ContentKey => (ChunkId)(Volatile.Read(ref _contentKey) ?? Interlocked.CompareExchange(ref _contentKey, ComputeContentKey(), null) ?? _contentKey!);

    private ChunkId ComputeContentKey()
    {
        const int Row = ChunkId.Size + 8;
        var buf = new byte[16 + (Count * Row)];
        "lmfsview"u8.CopyTo(buf); // the view's name came first; profiles share it
        BinaryPrimitives.WriteInt64LittleEndian(buf.AsSpan(8), PlainSize);
        int at = 16;
        foreach (var e in Entries)
        {
            e.Id.WriteTo(buf.AsSpan(at));
            BinaryPrimitives.WriteInt32LittleEndian(buf.AsSpan(at + ChunkId.Size), e.PlainLength);
            BinaryPrimitives.WriteUInt32LittleEndian(buf.AsSpan(at + ChunkId.Size + 4), e.Crc32C);
            at += Row;
        }

        return ChunkId.Of(buf);
    }

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
        int rowSize = RowSize;
        var buf = new byte[HeaderSize + (rowSize * Entries.Count)];
        var s = buf.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(s[4..], BlockSize == 0 ? Version1 : Version2);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], (uint)Entries.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], (uint)BlockSize);
        for (int i = 0; i < Entries.Count; i++)
        {
            var e = Entries[i];
            var row = s.Slice(HeaderSize + (i * rowSize), rowSize);
            e.Id.WriteTo(row);
            BinaryPrimitives.WriteInt32LittleEndian(row[32..], e.PlainLength);
            BinaryPrimitives.WriteInt32LittleEndian(row[36..], e.StoredLength);
            row[40] = (byte)e.Codec;
            BinaryPrimitives.WriteUInt32LittleEndian(row[44..], e.Crc32C);
            e.Blocks.Span.CopyTo(row[EntrySize..]);
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
        if (version is not (Version1 or Version2))
        {
            throw new MetaCorruptException($"chunk table version {version} is not supported (this lmfs reads versions {Version1} and {Version2})");
        }

        uint count = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        uint field12 = BinaryPrimitives.ReadUInt32LittleEndian(s[12..]);
        int blockSize = 0;
        if (version == Version2)
        {
            string? why = field12 > int.MaxValue ? "too large" : CheckBlockSize((int)field12, chunkSize);
            if (why is not null)
            {
                throw new MetaCorruptException($"chunk table has block size {field12}: {why}");
            }

            blockSize = (int)field12;
        }

        int hashesPerRow = blockSize == 0 ? 0 : chunkSize / blockSize;
        int rowSize = EntrySize + (BlockHashes.HashSize * hashesPerRow);
        if ((long)count * rowSize != s.Length - HeaderSize)
        {
            throw new MetaCorruptException($"chunk table says {count} entries but holds {s.Length - HeaderSize} bytes of rows");
        }

        // Every row's hashes in one array (rows keep slices of it, so a table is two allocations).
        byte[] hashes = hashesPerRow == 0 ? [] : new byte[count * hashesPerRow * BlockHashes.HashSize];
        var entries = new ChunkEntry[count];
        for (int i = 0; i < count; i++)
        {
            var row = s.Slice(HeaderSize + (i * rowSize), rowSize);
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

            if (blockSize != 0)
            {
                int n = BlockHashes.CountFor(e.PlainLength, blockSize);
                var rowHashes = row[EntrySize..];
                if (rowHashes[(n * BlockHashes.HashSize)..].IndexOfAnyExcept((byte)0) >= 0)
                {
                    throw new MetaCorruptException($"chunk table row {i} has block hashes past its {n} blocks");
                }

                var mine = hashes.AsMemory(i * hashesPerRow * BlockHashes.HashSize, n * BlockHashes.HashSize);
                rowHashes[..mine.Length].CopyTo(mine.Span);
                e = e with { Blocks = new BlockHashes(blockSize, mine) };
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

        return new ChunkTable(entries, chunkSize, blockSize);
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
