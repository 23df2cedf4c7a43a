using System.Numerics;
using System.Security.Cryptography;

namespace LazyModelFs.Chunks;

/// <summary>
/// The SHA-256 of each block of one chunk (format v2, issue 14): block <c>k</c> covers the chunk's
/// plain bytes <c>[k × BlockSize, min((k + 1) × BlockSize, plain length))</c>, so any block-aligned
/// range of a chunk can be fetched with one ranged GET and verified on its own against the metadata,
/// without the rest of the chunk. The chunk id stays the SHA-256 of the whole chunk (dedup and the
/// content-addressed caches are unchanged); these hashes only let a part be trusted.
///
/// Empty (<see cref="IsEmpty"/>, block size 0) for a row of a version 1 table: such a chunk is only
/// ever read whole. A chunk has at most <see cref="MaxBlocks"/> blocks, so a 64-bit mask names any
/// set of them.
/// </summary>
public readonly struct BlockHashes : IEquatable<BlockHashes>
{
    public const int HashSize = 32;

    /// <summary>Most blocks one chunk may have (the chunk size ÷ the block size).</summary>
    public const int MaxBlocks = 64;

    /// <summary>Smallest block (one page: a smaller one would only multiply hashes).</summary>
    public const int MinBlockSize = 4096;

    private readonly ReadOnlyMemory<byte> _hashes;

    /// <param name="blockSize">A power of two, at least <see cref="MinBlockSize"/>.</param>
    /// <param name="hashes"><see cref="HashSize"/> bytes per block, in block order.</param>
    public BlockHashes(int blockSize, ReadOnlyMemory<byte> hashes)
    {
        if (blockSize < MinBlockSize || !BitOperations.IsPow2(blockSize))
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "a block is a power of two of 4 KiB or more");
        }

        if (hashes.Length == 0 || hashes.Length % HashSize != 0 || hashes.Length / HashSize > MaxBlocks)
        {
            throw new ArgumentException($"{hashes.Length} bytes are not 1 to {MaxBlocks} block hashes", nameof(hashes));
        }

        BlockSize = blockSize;
        _hashes = hashes;
    }

    /// <summary>Bytes per block; 0 for a chunk without block hashes.</summary>
    public int BlockSize { get; }

    public bool IsEmpty => BlockSize == 0;

    public int Count => _hashes.Length / HashSize;

    /// <summary>Block <paramref name="k"/>'s SHA-256.</summary>
    public ReadOnlySpan<byte> this[int k] => _hashes.Span.Slice(k * HashSize, HashSize);

    /// <summary>All hashes, block after block.</summary>
    public ReadOnlySpan<byte> Span => _hashes.Span;

    /// <summary>Blocks a chunk of <paramref name="plainLength"/> bytes has.</summary>
    public static int CountFor(int plainLength, int blockSize) => (int)(((long)plainLength + blockSize - 1) / blockSize);

    /// <summary>The hashes of <paramref name="plain"/>'s blocks.</summary>
    public static BlockHashes Compute(ReadOnlySpan<byte> plain, int blockSize)
    {
        int count = CountFor(plain.Length, blockSize);
        var hashes = new byte[count * HashSize];
        for (int k = 0; k < count; k++)
        {
            SHA256.HashData(BlockOf(plain, k, blockSize), hashes.AsSpan(k * HashSize, HashSize));
        }

        return new BlockHashes(blockSize, hashes);
    }

    /// <summary>Block <paramref name="k"/> of a chunk's plain bytes (the last one may be shorter).</summary>
    public static ReadOnlySpan<byte> BlockOf(ReadOnlySpan<byte> plain, int k, int blockSize)
    {
        int from = k * blockSize;
        return plain.Slice(from, Math.Min(blockSize, plain.Length - from));
    }

    /// <summary>Whether <paramref name="block"/> is the bytes block <paramref name="k"/>'s hash names.</summary>
    public bool Matches(int k, ReadOnlySpan<byte> block)
    {
        Span<byte> h = stackalloc byte[HashSize];
        SHA256.HashData(block, h);
        return h.SequenceEqual(this[k]);
    }

    /// <summary>The first block whose bytes in <paramref name="plain"/> (the whole chunk) do not match; -1 when all do.</summary>
    public int FirstMismatch(ReadOnlySpan<byte> plain)
    {
        if (CountFor(plain.Length, BlockSize) != Count)
        {
            return 0;
        }

        for (int k = 0; k < Count; k++)
        {
            if (!Matches(k, BlockOf(plain, k, BlockSize)))
            {
                return k;
            }
        }

        return -1;
    }

    /// <summary>The mask of the blocks holding any of the bytes <c>[within, within + length)</c> of the chunk (length &gt; 0).</summary>
    public ulong MaskOf(int within, int length)
    {
        int first = within / BlockSize;
        int last = (within + length - 1) / BlockSize;
        return RunMask(first, last - first + 1);
    }

    /// <summary>Every block of the chunk.</summary>
    public ulong All => RunMask(0, Count);

    /// <summary>The mask of <paramref name="count"/> blocks from <paramref name="first"/>.</summary>
    public static ulong RunMask(int first, int count) => (count >= 64 ? ulong.MaxValue : ((1UL << count) - 1)) << first;

    /// <summary>Whether both name the same bytes for every block in <paramref name="mask"/>.</summary>
    public bool SameAs(in BlockHashes other, ulong mask)
    {
        if (other.BlockSize != BlockSize || other.Count != Count)
        {
            return false;
        }

        for (; mask != 0; mask &= mask - 1)
        {
            int k = BitOperations.TrailingZeroCount(mask);
            if (!this[k].SequenceEqual(other[k]))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Same block size and the same hashes (rows of two files naming one chunk are equal).</summary>
    public bool Equals(BlockHashes other) => other.BlockSize == BlockSize && other._hashes.Span.SequenceEqual(_hashes.Span);

    public override bool Equals(object? obj) => obj is BlockHashes b && Equals(b);

    public override int GetHashCode() => _hashes.Length >= 8 ? System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(_hashes.Span) : BlockSize;

    public static bool operator ==(BlockHashes a, BlockHashes b) => a.Equals(b);

    public static bool operator !=(BlockHashes a, BlockHashes b) => !a.Equals(b);
}
