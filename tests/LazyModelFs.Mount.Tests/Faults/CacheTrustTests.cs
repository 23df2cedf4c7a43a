using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests.Faults;

/// <summary>
/// The disk cache's trust model (issue 11, item 3): CRC32C finds damage, not forgery, so nobody but
/// root and the cache's owner may put anything in it. Directories of other users, directories others
/// can write, and files planted by another uid — even with the right length and CRC32C — are refused.
/// </summary>
public sealed class CacheTrustTests : IDisposable
{
    private const int Nobody = 65534;
    private readonly TempDir _dir = new("lmfs-trust");

    [Fact]
    public void Lmfs_makes_its_cache_private_and_refuses_directories_others_can_write()
    {
        var cache = new DiskCache(new DiskCacheOptions { Directory = _dir["new/cache"] });
        Assert.Equal(TrustedPath.PrivateDir, File.GetUnixFileMode(_dir["new/cache"]));
        Assert.Equal(TrustedPath.PrivateDir, File.GetUnixFileMode(cache.Root));

        Directory.CreateDirectory(_dir["open"]);
        File.SetUnixFileMode(_dir["open"], (UnixFileMode)0x1FF); // 0777, not sticky
        var ex = Assert.Throws<LmfsException>(() => new DiskCache(new DiskCacheOptions { Directory = _dir["open"] }));
        Assert.Equal(2, ex.ExitCode);
        Assert.Contains("writable by", ex.Message, StringComparison.Ordinal);

        // A private directory below one anybody can write (and rename in) is no better.
        Directory.CreateDirectory(_dir["open/below"], TrustedPath.PrivateDir);
        Assert.Contains("writable by others", Assert.Throws<LmfsException>(() => new DiskCache(new DiskCacheOptions { Directory = _dir["open/below"] })).Message, StringComparison.Ordinal);

        // A sticky parent such as /tmp is fine: others cannot rename or delete what is ours.
        File.SetUnixFileMode(_dir["open"], (UnixFileMode)0x3FF); // 01777
        _ = new DiskCache(new DiskCacheOptions { Directory = _dir["open/below"] });
    }

    [RootFact]
    public void A_cache_directory_another_user_made_first_is_refused()
    {
        Directory.CreateDirectory(_dir["theirs"]);
        Proc.Run("chown", $"{Nobody}:{Nobody}", _dir["theirs"]);
        var ex = Assert.Throws<LmfsException>(() => new DiskCache(new DiskCacheOptions { Directory = _dir["theirs"] }));
        Assert.Equal(2, ex.ExitCode);
        Assert.Contains($"owned by uid {Nobody}", ex.Message, StringComparison.Ordinal);
        Assert.Contains("--cache-dir", ex.Hint, StringComparison.Ordinal);
    }

    [RootFact]
    public void A_forged_cache_file_with_the_right_length_and_crc_is_discarded_when_another_user_planted_it()
    {
        byte[] real = TestData.Random(1 << 20, 71);
        var entry = new ChunkEntry(ChunkId.Of(real), real.Length, real.Length + ChunkObject.HeaderSize, ChunkCodec.None, Crc32C.Compute(real));
        var cache = new DiskCache(new DiskCacheOptions { Directory = _dir["c"] });
        cache.Write(entry, real);
        string file = Directory.EnumerateFiles(cache.Root, entry.Id.ToHex(), SearchOption.AllDirectories).Single();
        Assert.Equal(TrustedPath.PrivateFile, File.GetUnixFileMode(file));

        // Other bytes, patched in four places to keep the CRC32C: the cache's cheap check cannot tell.
        byte[] forged = TestData.Random(real.Length, 72);
        CrcForge.Patch(forged, 4096, entry.Crc32C);
        Assert.Equal(entry.Crc32C, Crc32C.Compute(forged));
        File.WriteAllBytes(file, forged);
        Proc.Run("chown", $"{Nobody}:{Nobody}", file);
        File.SetUnixFileMode(file, TrustedPath.PrivateFile);

        var dest = new byte[real.Length];
        Assert.False(cache.TryRead(entry, dest));
        Assert.False(File.Exists(file));
        Assert.Equal(1, cache.Corrupt);

        // A file of ours that others may write is no better.
        cache.Write(entry, real);
        File.SetUnixFileMode(file, (UnixFileMode)0x1B6); // 0666
        Assert.False(cache.TryRead(entry, dest));

        // And one that is ours alone is served.
        cache.Write(entry, real);
        Assert.True(cache.TryRead(entry, dest));
        Assert.Equal(real, dest);
    }

    public void Dispose()
    {
        if (Directory.Exists(_dir["open"]))
        {
            File.SetUnixFileMode(_dir["open"], TrustedPath.PrivateDir);
        }

        _dir.Dispose();
    }
}

/// <summary>Makes data have a chosen CRC32C by rewriting 4 bytes (CRC is affine over GF(2): solve 32 linear equations).</summary>
internal static class CrcForge
{
    public static void Patch(byte[] data, int at, uint target)
    {
        data.AsSpan(at, 4).Clear();
        uint c0 = Crc32C.Compute(data);
        var columns = new uint[32];
        for (int k = 0; k < 32; k++)
        {
            data[at + (k / 8)] ^= (byte)(1 << (k % 8));
            columns[k] = Crc32C.Compute(data) ^ c0; // the linear effect of patch bit k
            data[at + (k / 8)] ^= (byte)(1 << (k % 8));
        }

        // Gaussian elimination: find patch bits x with XOR of columns[k] over set x_k == target ^ c0.
        var rows = new ulong[32]; // per CRC bit: 32 coefficient bits, then the right-hand side at bit 32
        uint want = target ^ c0;
        for (int bit = 0; bit < 32; bit++)
        {
            ulong r = 0;
            for (int k = 0; k < 32; k++)
            {
                r |= (ulong)((columns[k] >> bit) & 1) << k;
            }

            rows[bit] = r | ((ulong)((want >> bit) & 1) << 32);
        }

        int rank = 0;
        var pivotOf = new int[32];
        for (int col = 0; col < 32 && rank < 32; col++)
        {
            int pivot = Array.FindIndex(rows, rank, r => ((r >> col) & 1) != 0);
            if (pivot < 0)
            {
                continue;
            }

            (rows[rank], rows[pivot]) = (rows[pivot], rows[rank]);
            for (int i = 0; i < 32; i++)
            {
                if (i != rank && ((rows[i] >> col) & 1) != 0)
                {
                    rows[i] ^= rows[rank];
                }
            }

            pivotOf[rank++] = col;
        }

        uint x = 0;
        for (int i = 0; i < rank; i++)
        {
            x |= (uint)((rows[i] >> 32) & 1) << pivotOf[i];
        }

        for (int k = 0; k < 32; k++)
        {
            if (((x >> k) & 1) != 0)
            {
                data[at + (k / 8)] ^= (byte)(1 << (k % 8));
            }
        }
    }
}
