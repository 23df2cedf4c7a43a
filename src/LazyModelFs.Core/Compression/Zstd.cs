using System.Runtime.InteropServices;
using LazyModelFs.Util;

namespace LazyModelFs.Compression;

/// <summary>
/// zstd through the system's libzstd.so.1 (no managed zstd package restores here;
/// ../shared/docs/dependencies.md). One-shot API only: chunks are at most 64 MiB.
/// </summary>
public static partial class Zstd
{
    private const string Lib = "libzstd.so.1";

    public const int DefaultLevel = 3;

    public static int CompressBound(int length) => checked((int)ZSTD_compressBound((nuint)length));

    /// <summary>Compresses <paramref name="src"/> into <paramref name="dst"/>; returns the compressed length.</summary>
    public static unsafe int Compress(ReadOnlySpan<byte> src, Span<byte> dst, int level = DefaultLevel)
    {
        // SAFETY: the spans are pinned by `fixed` for the duration of the call and their lengths are passed
        // alongside, so libzstd never reads or writes outside them.
        fixed (byte* s = src)
        fixed (byte* d = dst)
        {
            nuint n = ZSTD_compress(d, (nuint)dst.Length, s, (nuint)src.Length, level);
            Check(n, "compress");
            return (int)n;
        }
    }

    /// <summary>Decompresses into <paramref name="dst"/>; returns the plain length. Corrupt input throws.</summary>
    public static unsafe int Decompress(ReadOnlySpan<byte> src, Span<byte> dst)
    {
        // SAFETY: as in Compress; ZSTD_decompress writes at most dst.Length bytes.
        fixed (byte* s = src)
        fixed (byte* d = dst)
        {
            nuint n = ZSTD_decompress(d, (nuint)dst.Length, s, (nuint)src.Length);
            Check(n, "decompress");
            return (int)n;
        }
    }

    private static void Check(nuint code, string what)
    {
        if (ZSTD_isError(code) != 0)
        {
            string name = Marshal.PtrToStringUTF8(ZSTD_getErrorName(code)) ?? "unknown";
            throw new ChunkCorruptException($"zstd {what} failed: {name}");
        }
    }

    [LibraryImport(Lib)]
    private static partial nuint ZSTD_compressBound(nuint srcSize);

    [LibraryImport(Lib)]
    private static unsafe partial nuint ZSTD_compress(byte* dst, nuint dstCapacity, byte* src, nuint srcSize, int level);

    [LibraryImport(Lib)]
    private static unsafe partial nuint ZSTD_decompress(byte* dst, nuint dstCapacity, byte* src, nuint compressedSize);

    [LibraryImport(Lib)]
    private static partial uint ZSTD_isError(nuint code);

    [LibraryImport(Lib)]
    private static partial nint ZSTD_getErrorName(nuint code);
}
