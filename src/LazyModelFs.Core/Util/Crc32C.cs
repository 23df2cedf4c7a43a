using System.Buffers.Binary;
using System.Numerics;

namespace LazyModelFs.Util;

/// <summary>
/// CRC-32C (Castagnoli), as in iSCSI/ext4/S3 checksums: initial value ~0, final xor ~0.
/// <see cref="BitOperations.Crc32C(uint, ulong)"/> lowers to the SSE4.2 / ARMv8 CRC instruction.
/// Check value for "123456789" is 0xE3069283 (RFC 3720 appendix B.4).
/// </summary>
public static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>Continues a CRC previously returned by <see cref="Compute"/> or <see cref="Append"/>.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        uint c = ~crc;
        while (data.Length >= 8)
        {
            c = BitOperations.Crc32C(c, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }

        foreach (byte b in data)
        {
            c = BitOperations.Crc32C(c, b);
        }

        return ~c;
    }
}
