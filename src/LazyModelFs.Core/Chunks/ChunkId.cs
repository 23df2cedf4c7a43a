using System.Buffers.Binary;
using System.Security.Cryptography;

namespace LazyModelFs.Chunks;

/// <summary>
/// A chunk's identity: SHA-256 of its plain bytes. Held as four big-endian words so it is a cheap
/// dictionary key; <see cref="WriteTo"/> gives back the 32 digest bytes in order.
/// </summary>
public readonly record struct ChunkId(ulong A, ulong B, ulong C, ulong D)
{
    public const int Size = 32;

    public static ChunkId Of(ReadOnlySpan<byte> plain)
    {
        Span<byte> digest = stackalloc byte[Size];
        SHA256.HashData(plain, digest);
        return FromBytes(digest);
    }

    public static ChunkId FromBytes(ReadOnlySpan<byte> b)
    {
        if (b.Length != Size)
        {
            throw new ArgumentException($"a chunk id is {Size} bytes, got {b.Length}", nameof(b));
        }

        return new ChunkId(
            BinaryPrimitives.ReadUInt64BigEndian(b),
            BinaryPrimitives.ReadUInt64BigEndian(b[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(b[16..]),
            BinaryPrimitives.ReadUInt64BigEndian(b[24..]));
    }

    public static ChunkId FromHex(string hex) => FromBytes(Convert.FromHexString(hex));

    public void WriteTo(Span<byte> dest)
    {
        BinaryPrimitives.WriteUInt64BigEndian(dest, A);
        BinaryPrimitives.WriteUInt64BigEndian(dest[8..], B);
        BinaryPrimitives.WriteUInt64BigEndian(dest[16..], C);
        BinaryPrimitives.WriteUInt64BigEndian(dest[24..], D);
    }

    public byte[] ToBytes()
    {
        var b = new byte[Size];
        WriteTo(b);
        return b;
    }

    public string ToHex() => Convert.ToHexStringLower(ToBytes());

    /// <summary>Object key relative to the store's prefix: <c>chunks/ab/cd/abcd…</c> (data-format.md).</summary>
    public string ObjectKey()
    {
        string h = ToHex();
        return $"chunks/{h[..2]}/{h[2..4]}/{h}";
    }

    public override string ToString() => ToHex();
}
