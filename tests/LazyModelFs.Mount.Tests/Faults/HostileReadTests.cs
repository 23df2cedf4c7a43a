using System.Diagnostics;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging;
using Xunit;

namespace LazyModelFs.Mount.Tests.Faults;

/// <summary>
/// Issue 11's read-path defects, each on a real mount (redis-server, s3rver, /dev/fuse): metadata
/// that went back in time or names the wrong chunk, a frozen store with many readers, an unmount
/// under a blocked reader, refused credentials. The promise each test holds: the imported bytes or
/// an error, in bounded time.
/// </summary>
public sealed class HostileReadTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    // These tests serve the mount from this process and block thread-pool threads in read(2) on it
    // (16 readers at once): a pool that grows a thread or two a second would delay the daemon's own
    // continuations (timeouts, replies) by seconds. A real daemon is its own process; give the shared
    // pool room, so what is measured is the daemon, not the test's starvation.
    static HostileReadTests()
    {
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(Math.Max(workers, 64), io);
    }

    private const int Chunk = 1 << 20;
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(90);
    private readonly TempDir _dir = new("lmfs-hostile");
    private readonly List<MountHost> _mounts = [];

    private static StorageOptions Creds => new() { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey };

    private async Task<(Volume Volume, string Meta)> VolumeAsync(string? meta = null)
    {
        meta ??= servers.Redis.NewVolumeUrl();
        await Volume.FormatAsync(meta, servers.S3.NewStorageUrl(), Creds, Chunk, "none", "hostile");
        return (await Volume.OpenAsync(meta, Creds), meta);
    }

    private async Task ImportAsync(Volume v, string name, byte[] data)
    {
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/" + name], data);
        await new LazyModelFs.Import.Importer(v, new LazyModelFs.Import.ImportOptions()).RunAsync([_dir["src/" + name]], "/d/");
    }

    private (MountHost Mount, ListLogger Log) Mount(Volume v, Func<MountOptions, MountOptions>? tweak = null)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-hmp-").FullName;
        var provider = new ListLoggerProvider();
        var o = new MountOptions
        {
            CacheDir = _dir["cache-" + Guid.NewGuid().ToString("N")[..8]],
            BufferSize = 16L * CachedChunk.BufferSizeFor(Chunk),
            MaxFetches = 8,
            FetchTimeout = TimeSpan.FromSeconds(30),
            Vfs = new VfsOptions { EntryTimeout = TimeSpan.Zero, NegativeTimeout = TimeSpan.Zero, DirectoryTimeout = TimeSpan.Zero, Prefetch = PrefetchMode.None },
        };
        var m = MountHost.Start(v, mp, tweak?.Invoke(o) ?? o, new LoggerFactory([provider]));
        _mounts.Add(m);
        return (m, provider.Logger);
    }

    /// <summary>Replaces /d/NAME by a file with the same node attributes and a hand-edited chunk table (damaged metadata).</summary>
    private static async Task ForgeAsync(Volume v, string name, Func<ChunkTable, ChunkTable> edit)
    {
        var d = (await v.Meta.LookupAsync(Node.RootIno, "d"))!.Value;
        var e = (await v.Meta.LookupAsync(d.Ino, name))!.Value;
        var node = (await v.Meta.GetNodeAsync(e.Ino))!;
        var table = (await v.Meta.GetChunkTableAsync(e.Ino, Chunk))!;
        ulong ino = await v.Meta.AllocateInodeAsync();
        var r = await v.Meta.CreateAsync(new EntryCreate(d.Ino, name, node with { Ino = ino }, edit(table), new Replaced(e, node, table)));
        Assert.Equal(MetaResult.Ok, r);
    }

    private static async Task<ChunkTable> TableAsync(Volume v, string name)
    {
        var d = (await v.Meta.LookupAsync(Node.RootIno, "d"))!.Value;
        var e = (await v.Meta.LookupAsync(d.Ino, name))!.Value;
        return (await v.Meta.GetChunkTableAsync(e.Ino, Chunk))!;
    }

    private static async Task<Exception?> ReadFailsAsync(Func<byte[]> read)
    {
        var t = Task.Run(read);
        try
        {
            await t.WaitAsync(NoHang);
            return null;
        }
        catch (IOException ex)
        {
            return ex;
        }
    }

    /// <summary>pread until <paramref name="n"/> bytes are in: a read that stops at a failing page returns short first, then fails.</summary>
    private static byte[] ReadAt(Microsoft.Win32.SafeHandles.SafeFileHandle h, long offset, int n)
    {
        var buf = new byte[n];
        for (int done = 0; done < n;)
        {
            int got = RandomAccess.Read(h, buf.AsSpan(done), offset + done);
            if (got == 0)
            {
                throw new EndOfStreamException($"end of file at {offset + done}");
            }

            done += got;
        }

        return buf;
    }

    // ------------------------------------------------------------------ item 1

    [MountFact]
    public async Task A_metadata_rollback_that_hands_an_inode_number_out_again_never_serves_the_old_files_bytes()
    {
        using var redis = new RedisServer(); // its own server: the test restores an older snapshot of all of it
        var (v, meta) = await VolumeAsync(redis.NewVolumeUrl());
        using (v)
        {
            await ImportAsync(v, "seed.txt", "seed\n"u8.ToArray());
            Proc.Run("redis-cli", "-p", redis.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "SAVE");
            File.Copy(Path.Combine(redis.Data.Path, "dump.rdb"), _dir["before-a.rdb"]);

            byte[] a = TestData.Random((2 * Chunk) + 100, 11), b = TestData.Random((2 * Chunk) + 100, 12);
            await ImportAsync(v, "a.bin", a);
            // Names are kept by the kernel (entry timeout): a listing's READDIRPLUS entries are used without a LOOKUP.
            var (m, log) = Mount(v, o => o with { Vfs = o.Vfs with { EntryTimeout = TimeSpan.FromMinutes(5) } });
            string aPath = Path.Combine(m.MountPoint, "d/a.bin");
            Assert.Equal(a, File.ReadAllBytes(aPath));
            ulong aIno = Posix.Stat(aPath).Ino;

            // A process keeps a.bin open (a loader, a model server): the kernel keeps its inode, and its pages.
            using var held = File.OpenHandle(aPath);
            Assert.Equal(4096, RandomAccess.Read(held, new byte[4096], 0));

            // The metadata goes back to before a.bin was imported (an older RDB restored), then another file is imported.
            redis.Stop();
            File.Copy(_dir["before-a.rdb"], Path.Combine(redis.Data.Path, "dump.rdb"), overwrite: true);
            redis.Start();
            using (var again = await Volume.OpenAsync(meta, Creds))
            {
                Assert.Null(await again.Meta.LookupAsync((await again.Meta.LookupAsync(Node.RootIno, "d"))!.Value.Ino, "a.bin"));
                await ImportAsync(again, "b.bin", b);
            }

            string bPath = Path.Combine(m.MountPoint, "d/b.bin");
            byte[]? got = null;
            for (var sw = Stopwatch.StartNew(); got is null && sw.Elapsed < NoHang;)
            {
                try
                {
                    // List first, as loaders do (os.listdir, then open): the entry comes from READDIRPLUS.
                    Assert.Contains(bPath, Directory.GetFiles(Path.Combine(m.MountPoint, "d"))); // the mount reconnects to Redis by itself
                    got = File.ReadAllBytes(bPath);
                }
                catch (IOException)
                {
                    await Task.Delay(200);
                }
            }

            Assert.Equal(aIno, Posix.Stat(bPath).Ino); // the precondition: b.bin got a.bin's number
            Assert.Equal(b, got);
            File.WriteAllText("/proc/sys/vm/drop_caches", "3");
            Assert.Equal(b, File.ReadAllBytes(bPath));
            Assert.Contains(log.Lines, l => l.Contains("now names another file", StringComparison.Ordinal));
        }
    }

    // ------------------------------------------------------------------ item 2

    [MountFact]
    public async Task A_row_whose_id_names_another_chunk_of_the_same_length_is_an_error_from_store_memory_and_disk()
    {
        var (v, meta) = await VolumeAsync();
        using (v)
        {
            byte[] x = TestData.Random(Chunk, 21), y = TestData.Random(Chunk, 22);
            await ImportAsync(v, "x.bin", x);
            await ImportAsync(v, "y.bin", y);
            var yId = (await TableAsync(v, "y.bin"))[0].Id;
            await ForgeAsync(v, "x.bin", t => new ChunkTable([t[0] with { Id = yId }], Chunk)); // x's row, y's id: x's CRC32C stays
            var (m, log) = Mount(v);
            string xPath = Path.Combine(m.MountPoint, "d/x.bin"), yPath = Path.Combine(m.MountPoint, "d/y.bin");

            // From the object store: y's object verifies against the id, but not against the row.
            Assert.NotNull(await ReadFailsAsync(() => File.ReadAllBytes(xPath)));

            // From the memory tier: y.bin was just read, so its chunk is in memory under that id.
            Assert.Equal(y, File.ReadAllBytes(yPath));
            Assert.NotNull(await ReadFailsAsync(() => File.ReadAllBytes(xPath)));

            // From the disk cache: out of memory, on disk.
            Assert.True(SpinWait.SpinUntil(() => m.Cache.Busy == 0, 10_000));
            await m.FileSystem.ForgetCachedAsync(Posix.Stat(yPath).Ino, disk: false);
            Assert.True(m.Cache.Disk!.Contains(yId));
            Assert.NotNull(await ReadFailsAsync(() => File.ReadAllBytes(xPath)));
            Assert.True(m.Cache.Disk.Contains(yId), "the damaged row cost the honest chunk its cached copy");
            Assert.Contains(log.Lines, l => l.Contains("CRC32C", StringComparison.Ordinal));

            // The honest file still reads, and `lmfs cat` refuses the damaged one with exit 3.
            File.WriteAllText("/proc/sys/vm/drop_caches", "3");
            Assert.Equal(y, File.ReadAllBytes(yPath));
            var cat = LmfsRunner.RunBytes(["cat", meta, "/d/x.bin"], LmfsRunner.S3Env());
            Assert.Equal(3, cat.ExitCode);
            Assert.Contains("CRC32C", cat.Stderr, StringComparison.Ordinal);
            Assert.False(cat.Stdout.AsSpan().SequenceEqual(y));
        }
    }

    // ------------------------------------------------------------------ item 4

    [MountFact]
    public async Task A_row_naming_a_shorter_chunk_already_in_memory_fails_the_read_instead_of_spinning()
    {
        var (v, _) = await VolumeAsync();
        using (v)
        {
            byte[] s = TestData.Random(Chunk + 100, 31), t = TestData.Random(Chunk + 50, 32);
            await ImportAsync(v, "s.bin", s);
            await ImportAsync(v, "t.bin", t);
            var tLast = (await TableAsync(v, "t.bin"))[1]; // 50 bytes
            await ForgeAsync(v, "s.bin", tab => new ChunkTable([tab[0], tab[1] with { Id = tLast.Id }], Chunk)); // 100-byte row, 50-byte chunk
            var (m, _) = Mount(v);
            Assert.Equal(t, File.ReadAllBytes(Path.Combine(m.MountPoint, "d/t.bin"))); // the short chunk is now in memory

            string sPath = Path.Combine(m.MountPoint, "d/s.bin");
            using var h = File.OpenHandle(sPath, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
            Assert.NotNull(await ReadFailsAsync(() => ReadAt(h, Chunk - 10, 60))); // spans the boundary into the short chunk
            Assert.NotNull(await ReadFailsAsync(() => ReadAt(h, Chunk, 100))); // inside the short chunk only

            // The mount is not wedged: the good file reads, and SIGTERM-style shutdown works (Dispose below).
            Assert.Equal(t, File.ReadAllBytes(Path.Combine(m.MountPoint, "d/t.bin")));
        }
    }

    // ------------------------------------------------------------------ item 5

    [MountFact]
    public async Task Every_read_is_answered_within_the_fetch_timeout_of_its_arrival_however_many_wait_on_a_frozen_store()
    {
        var (v, _) = await VolumeAsync();
        using (v)
        {
            const int readers = 16;
            byte[] data = TestData.Random(2 * readers * Chunk, 41);
            await ImportAsync(v, "many.bin", data);
            var timeout = TimeSpan.FromSeconds(2);
            var (m, _) = Mount(v, o => o with { FetchTimeout = timeout, MaxFetches = 4 });
            string path = Path.Combine(m.MountPoint, "d/many.bin");
            using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
            servers.S3.Pause();
            TimeSpan[] took;
            try
            {
                // 16 READs of distinct cold chunks, 4 fetch slots: before, each waited for a slot and then a full timeout.
                took = await Task.WhenAll(Enumerable.Range(0, readers).Select(i => Task.Run(() =>
                {
                    var sw = Stopwatch.StartNew();
                    Assert.ThrowsAny<IOException>(() => RandomAccess.Read(h, new byte[4096], (long)i * 2 * Chunk));
                    return sw.Elapsed;
                }))).WaitAsync(NoHang);
            }
            finally
            {
                servers.S3.Resume();
            }

            // One bound per READ (the kernel's retry of a failed readahead fails at once), with slack for a loaded machine.
            var worst = took.Max();
            Assert.True(worst < 3 * timeout, $"the slowest of {readers} readers took {worst.TotalSeconds:0.0} s with --fetch-timeout {timeout.TotalSeconds} s");

            // The store is back: once the last failures are forgotten, the same chunk reads.
            await Task.Delay(ChunkCache.FailureMemory + TimeSpan.FromSeconds(1));
            var back = new byte[4096];
            Assert.Equal(4096, RandomAccess.Read(h, back, 6L * Chunk));
            Assert.True(back.AsSpan().SequenceEqual(data.AsSpan(6 * Chunk, 4096)));
        }
    }

    // ------------------------------------------------------------------ item 6

    [MountFact]
    public async Task Lmfs_umount_releases_a_reader_blocked_on_a_frozen_store_after_the_grace_period()
    {
        var (v, _) = await VolumeAsync();
        using (v)
        {
            await ImportAsync(v, "cold.bin", TestData.Random(4 * Chunk, 51));
            var (m, log) = Mount(v, o => o with { FetchTimeout = TimeSpan.FromSeconds(120) });
            string path = Path.Combine(m.MountPoint, "d/cold.bin");
            servers.S3.Pause();
            try
            {
                var sw = Stopwatch.StartNew();
                var read = Task.Run(() => File.ReadAllBytes(path));
                await Task.Delay(500);
                Assert.False(read.IsCompleted);
                var u = LmfsRunner.Run("umount", m.MountPoint);
                Assert.True(u.ExitCode == 0, u.ToString());

                // Not the 120 s fetch timeout: the grace period (5 s), then the connection is aborted.
                await Assert.ThrowsAnyAsync<IOException>(() => read.WaitAsync(TimeSpan.FromSeconds(60)));
                Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"the reader was released after {sw.Elapsed.TotalSeconds:0} s");
                await m.Session.Completion.WaitAsync(TimeSpan.FromSeconds(30));
                Assert.Contains(log.Lines, l => l.Contains("unmounted from outside", StringComparison.Ordinal));
            }
            finally
            {
                servers.S3.Resume();
            }
        }
    }

    // ------------------------------------------------------------------ item 7

    [MountFact]
    public async Task Refused_credentials_fail_the_mount_with_exit_5_and_cold_reads_at_once()
    {
        var (v, meta) = await VolumeAsync();
        using (v)
        {
            await ImportAsync(v, "c.bin", TestData.Random(2 * Chunk, 61));
        }

        string mp = Directory.CreateTempSubdirectory("lmfs-hmp-").FullName;
        var wrong = new Dictionary<string, string?> { ["AWS_ACCESS_KEY_ID"] = "NOT-A-KEY", ["AWS_SECRET_ACCESS_KEY"] = "not-the-secret" };
        foreach (var extra in new[] { Array.Empty<string>(), ["--background"] })
        {
            var r = LmfsRunner.Run(["mount", meta, mp, "--cache-dir", _dir["cli-cache"], .. extra], wrong);
            Assert.True(r.ExitCode == 5, r.ToString());
            Assert.Contains("refused", r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("not-the-secret", r.Stdout + r.Stderr, StringComparison.Ordinal);
            Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
        }

        Directory.Delete(mp);

        // A mount whose keys are refused later (rotated, revoked): reads fail at once, not after retrying to the deadline.
        using var bad = await Volume.OpenAsync(meta, new StorageOptions { AccessKey = "NOT-A-KEY", SecretKey = "not-the-secret" });
        var (m, log) = Mount(bad, o => o with { FetchTimeout = TimeSpan.FromSeconds(120) });
        var sw = Stopwatch.StartNew();
        Assert.NotNull(await ReadFailsAsync(() => File.ReadAllBytes(Path.Combine(m.MountPoint, "d/c.bin"))));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"the read failed after {sw.Elapsed.TotalSeconds:0} s");
        Assert.Contains(log.Lines, l => l.Contains("InvalidAccessKeyId", StringComparison.Ordinal));
        Assert.DoesNotContain(log.Lines, l => l.Contains("retrying", StringComparison.Ordinal));
    }

    public void Dispose()
    {
        TestMounts.DisposeAll(_mounts);

        _dir.Dispose();
    }
}
