using System.Diagnostics;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging;
using Xunit;

namespace LazyModelFs.Mount.Tests.Faults;

/// <summary>A redis-server that keeps its data across a kill and restart (AOF, fsync always), and an s3rver.</summary>
public sealed class PersistentRedisAndS3 : IDisposable
{
    public RedisServer Redis { get; } = new(null, persistent: true);

    public S3rverServer S3 { get; } = new();

    public void Dispose()
    {
        Redis.Dispose();
        S3.Dispose();
    }
}

/// <summary>
/// Real mounts (redis-server, s3rver, /dev/fuse) while things around them fail: Redis killed and
/// restarted, the object store frozen, the cache disk full or deleted. Readers get the imported
/// bytes or an error in bounded time, and the mount recovers by itself.
/// </summary>
public sealed class MountFaultTests(PersistentRedisAndS3 servers) : IClassFixture<PersistentRedisAndS3>, IDisposable
{
    private const int Chunk = 1 << 20;
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(90);
    private readonly TempDir _dir = new("lmfs-mfault");
    private readonly List<MountHost> _mounts = [];
    private readonly List<string> _tmpfs = [];

    private static StorageOptions Creds => new() { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey };

    private async Task<Volume> VolumeAsync(params (string Name, int Size)[] files)
    {
        string meta = servers.Redis.NewVolumeUrl();
        await Volume.FormatAsync(meta, servers.S3.NewStorageUrl(), Creds, Chunk, "none", "faults");
        var v = await Volume.OpenAsync(meta, Creds);
        Directory.CreateDirectory(_dir["src"]);
        foreach (var (name, size) in files)
        {
            File.WriteAllBytes(_dir["src/" + name], TestData.Random(size, size));
        }

        await new LazyModelFs.Import.Importer(v, new LazyModelFs.Import.ImportOptions()).RunAsync([.. files.Select(f => _dir["src/" + f.Name])], "/d/");
        return v;
    }

    private byte[] Source(string name) => File.ReadAllBytes(_dir["src/" + name]);

    private (MountHost Mount, ListLogger Log) Mount(Volume v, string cache, Func<MountOptions, MountOptions>? tweak = null)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-fmp-").FullName;
        var provider = new ListLoggerProvider();
        var o = new MountOptions
        {
            CacheDir = cache,
            BufferSize = 8L * Cache.CachedChunk.BufferSizeFor(Chunk),
            MaxFetches = 8,
            FetchTimeout = TimeSpan.FromSeconds(30),
            Vfs = new VfsOptions { EntryTimeout = TimeSpan.Zero, NegativeTimeout = TimeSpan.Zero, DirectoryTimeout = TimeSpan.Zero },
        };
        var m = MountHost.Start(v, mp, tweak?.Invoke(o) ?? o, new LoggerFactory([provider]));
        _mounts.Add(m);
        return (m, provider.Logger);
    }

    [MountFact]
    public async Task Redis_down_keeps_open_files_reading_fails_new_lookups_in_bounded_time_and_recovers()
    {
        using var v = await VolumeAsync(("a.bin", (6 * Chunk) + 17), ("b.txt", 1000));
        var (m, log) = Mount(v, _dir["cache"]);
        string a = Path.Combine(m.MountPoint, "d/a.bin"), b = Path.Combine(m.MountPoint, "d/b.txt");
        using var open = File.OpenHandle(a);
        var head = new byte[4096];
        RandomAccess.Read(open, head, 0);

        servers.Redis.Stop();
        try
        {
            // The open file's chunk table is in memory: it reads to the end from the object store.
            var all = new byte[(6 * Chunk) + 17];
            int n = 0;
            while (n < all.Length)
            {
                n += RandomAccess.Read(open, all.AsSpan(n), n);
            }

            Assert.Equal(Source("a.bin"), all);

            // A name never looked up needs Redis: an error (not a hang, not "no such file").
            var sw = Stopwatch.StartNew();
            var ex = await Assert.ThrowsAnyAsync<IOException>(() => Task.Run(() => File.ReadAllBytes(b)).WaitAsync(NoHang));
            Assert.IsNotType<FileNotFoundException>(ex);
            Assert.Contains(log.Lines, l => l.Contains("vfs: ", StringComparison.Ordinal) && l.Contains("failed", StringComparison.Ordinal));
            Assert.True(sw.Elapsed < NoHang);
        }
        finally
        {
            servers.Redis.Start();
        }

        // Redis is back (same port, same data): the mount reconnects by itself.
        byte[]? got = null;
        var deadline = Stopwatch.StartNew();
        while (got is null && deadline.Elapsed < NoHang)
        {
            try
            {
                got = File.ReadAllBytes(b);
            }
            catch (IOException)
            {
                await Task.Delay(250);
            }
        }

        Assert.Equal(Source("b.txt"), got);
    }

    [MountFact]
    public async Task A_frozen_object_store_delays_a_cold_read_which_then_completes_with_the_right_bytes()
    {
        using var v = await VolumeAsync(("big.bin", 16 * Chunk));
        var (m, _) = Mount(v, _dir["cache"]);
        string big = Path.Combine(m.MountPoint, "d/big.bin");
        var read = Task.Run(() => File.ReadAllBytes(big));
        await Task.Delay(150);
        servers.S3.Pause(); // connections stay open, nothing answers
        try
        {
            await Task.Delay(2000);
            Assert.False(read.IsFaulted);
        }
        finally
        {
            servers.S3.Resume();
        }

        Assert.Equal(Source("big.bin"), await read.WaitAsync(NoHang));
    }

    [MountFact]
    public async Task A_full_cache_disk_keeps_reads_correct_pauses_caching_and_warns_once()
    {
        using var v = await VolumeAsync(("big.bin", 12 * Chunk));
        string tiny = _dir["tiny"];
        Directory.CreateDirectory(tiny);
        Proc.Run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", tiny);
        _tmpfs.Add(tiny);
        // Someone else fills the disk: about 1.5 MiB stays free.
        File.WriteAllBytes(Path.Combine(tiny, "filler"), new byte[(5 * Chunk) / 2]);
        var (m, log) = Mount(v, Path.Combine(tiny, "cache"), o => o with { FreeSpaceRatio = 0 });
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(m.MountPoint, "d/big.bin")));
        Assert.True(m.Cache.Disk!.Count < 12); // not everything fitted
        var warnings = log.Lines.Count(l => l.Contains("caching paused", StringComparison.Ordinal));
        Assert.True(warnings <= 1, $"{warnings} warnings: {string.Join('\n', log.Lines)}");
    }

    [MountFact]
    public async Task The_cache_directory_deleted_under_a_running_mount_is_made_again_and_reads_stay_correct()
    {
        using var v = await VolumeAsync(("big.bin", 6 * Chunk));
        var (m, _) = Mount(v, _dir["cache2"]);
        string big = Path.Combine(m.MountPoint, "d/big.bin");
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(big));
        Assert.True(SpinWait.SpinUntil(() => m.Cache.Busy == 0, 10_000));
        Directory.Delete(_dir["cache2"], recursive: true);

        // Drop the memory tier and the page cache for the file, so the next read needs the disk cache.
        ulong ino = Util.Posix.Stat(big).Ino;
        await m.FileSystem.ForgetCachedAsync(ino, disk: false);
        await m.Session.Connection.InvalidateInodeAsync(ino, 0, 0);
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(big));
        Assert.True(SpinWait.SpinUntil(() => Directory.Exists(_dir["cache2/chunks"]) && Directory.EnumerateFiles(_dir["cache2/chunks"], "*", SearchOption.AllDirectories).Count() == 6, 10_000));
    }

    public void Dispose()
    {
        TestMounts.DisposeAll(_mounts);

        foreach (var t in _tmpfs)
        {
            using var p = Process.Start("umount", ["-l", t]);
            p.WaitForExit();
        }

        _dir.Dispose();
    }
}
