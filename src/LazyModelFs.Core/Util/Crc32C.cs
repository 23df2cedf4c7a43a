using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;

namespace LazyModelFs.Util;

/// <summary>
/// CRC-32C (Castagnoli), as in iSCSI/ext4/S3 checksums: initial value ~0, final xor ~0.
/// <see cref="BitOperations.Crc32C(uint, ulong)"/> lowers to the SSE4.2 / ARMv8 CRC instruction.
/// Check value for "123456789" is 0xE3069283 (RFC 3720 appendix B.4).
///
/// The instruction has a latency of three cycles and a throughput of one, so one dependency chain
/// uses a third of it. Large buffers are cut into blocks of three lanes, each lane's CRC computed in
/// the same loop (three independent chains), and the lanes joined with the CRC's linearity:
/// crc(A‖B) = crc(A)·x^(8|B|) mod P ⊕ crc₀(B) (zlib's crc32_combine, in the reflected domain). Every
/// block's CRC register is checked against the plain serial loop by the tests.
/// </summary>
public static class Crc32C
{
    private const uint Poly = 0x82F63B78; // reflected Castagnoli polynomial
    private const int Lane = 8192;        // bytes per lane; a block is three lanes
    private static readonly uint ShiftLane = XPowModP(Lane); // x^(8·Lane) mod P

    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>Continues a CRC previously returned by <see cref="Compute"/> or <see cref="Append"/>.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        uint c = ~crc;
        while (data.Length >= 3 * Lane)
        {
            c = Block(c, data[..(3 * Lane)]);
            data = data[(3 * Lane)..];
        }

        return ~Serial(c, data);
    }

    /// <summary>The serial loop on the register (no inversions), for short tails and as the reference.</summary>
    internal static uint Serial(uint c, ReadOnlySpan<byte> data)
    {
        while (data.Length >= 8)
        {
            c = BitOperations.Crc32C(c, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }

        foreach (byte b in data)
        {
            c = BitOperations.Crc32C(c, b);
        }

        return c;
    }

    /// <summary>Three lanes of <see cref="Lane"/> bytes in one loop, then joined.</summary>
    private static uint Block(uint c, ReadOnlySpan<byte> block)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(block);
        const int n = Lane / 8;
        uint a = c, b = 0, d = 0;
        for (int i = 0; i < n; i++)
        {
            a = BitOperations.Crc32C(a, BitConverter.IsLittleEndian ? words[i] : BinaryPrimitives.ReverseEndianness(words[i]));
            b = BitOperations.Crc32C(b, BitConverter.IsLittleEndian ? words[n + i] : BinaryPrimitives.ReverseEndianness(words[n + i]));
            d = BitOperations.Crc32C(d, BitConverter.IsLittleEndian ? words[(2 * n) + i] : BinaryPrimitives.ReverseEndianness(words[(2 * n) + i]));
        }

        // Register after lane 0 moved past lane 1's bytes, plus lane 1's own contribution; then again for lane 2.
        return MultModP(ShiftLane, MultModP(ShiftLane, a) ^ b) ^ d;
    }

    /// <summary>a·b mod P, polynomials in the reflected bit order (zlib crc32.c multmodp).</summary>
    internal static uint MultModP(uint a, uint b)
    {
        uint m = 1u << 31, p = 0;
        while (true)
        {
            if ((a & m) != 0)
            {
                p ^= b;
                if ((a & (m - 1)) == 0)
                {
                    return p;
                }
            }

            m >>= 1;
            b = (b & 1) != 0 ? (b >> 1) ^ Poly : b >> 1;
        }
    }

    /// <summary>x^(8·bytes) mod P.</summary>
    internal static uint XPowModP(long bytes)
    {
        uint x2n = 1u << 30; // x^1, then x^2, x^4, … by squaring
        uint p = 1u << 31;   // x^0
        long n = bytes * 8;
        while (n != 0)
        {
            if ((n & 1) != 0)
            {
                p = MultModP(x2n, p);
            }

            x2n = MultModP(x2n, x2n);
            n >>= 1;
        }

        return p;
    }
}
