using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using LazyModelFs.Import;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests;

/// <summary>
/// `lmfs mount` for real: volumes on redis-server and s3rver, mounted through /dev/fuse, read by
/// ordinary tools. Tests in this class run one at a time (they stop and start the shared S3 server).
/// </summary>
public sealed class MountReadTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    // These tests serve the mount from this process and block thread-pool threads in read(2) on it
    // (16 readers at once): a pool that grows a thread or two a second would delay the daemon's own
    // continuations (timeouts, replies) by seconds. A real daemon is its own process; give the shared
    // pool room, so what is measured is the daemon, not the test's starvation.
    static MountReadTests()
    {
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(Math.Max(workers, 64), io);
    }

    private const int Chunk = 1 << 20;

    private static StorageOptions Creds => new() { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey };

    private readonly TempDir _dir = new("lmfs-mnt");
    private readonly List<MountHost> _mounts = [];
    private string _meta = "";

    /// <summary>A fresh volume with /m/big.bin (24 chunks), /m/small.txt and /m/model.safetensors, imported from local files.</summary>
    /// <param name="blockSize">Format version 2 with this block size, or 0 for a version 1 volume (no block hashes).</param>
    private async Task<Volume> VolumeAsync(int blockSize = Volume.DefaultBlockSize)
    {
        _meta = servers.Redis.NewVolumeUrl();
        await Volume.FormatAsync(_meta, servers.S3.NewStorageUrl(), Creds, Chunk, "none", "mnt", blockSize);
        var v = await Volume.OpenAsync(_meta, Creds);
        Directory.CreateDirectory(_dir["src/m"]);
        File.WriteAllBytes(_dir["src/m/big.bin"], TestData.Random((24 * Chunk) + 333, 1));
        File.WriteAllText(_dir["src/m/small.txt"], "small and cached\n");
        File.WriteAllBytes(_dir["src/m/model.safetensors"], TestData.Safetensors(10 * Chunk));
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src/m"]], "/");
        return v;
    }

    private MountHost Mount(Volume v, string cache, Func<MountOptions, MountOptions>? tweak = null)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-mp-").FullName;
        var o = new MountOptions { CacheDir = cache, BufferSize = 8L * (Chunk + 4096), MaxFetches = 8, FetchTimeout = TimeSpan.FromSeconds(3) };
        var m = MountHost.Start(v, mp, tweak?.Invoke(o) ?? o);
        _mounts.Add(m);
        return m;
    }

    private void Unmount(MountHost m)
    {
        m.Dispose();
        _mounts.Remove(m);
        Directory.Delete(m.MountPoint);
    }

    private byte[] Source(string name) => File.ReadAllBytes(_dir["src/m/" + name]);

    /// <summary>Runs <paramref name="body"/> with the S3 server stopped, and starts it again whatever happens.</summary>
    private async Task WithS3StoppedAsync(Func<Task> body)
    {
        servers.S3.Stop();
        try
        {
            await body();
        }
        finally
        {
            servers.S3.Start();
        }
    }

    [MountTheory]
    [InlineData(0)]            // format version 1: whole-chunk reads
    [InlineData(256 << 10)]    // version 2: random READs fetch their blocks
    [InlineData(64 << 10)]     // smaller blocks: several per READ, READs spanning blocks and chunks
    public async Task Bytes_through_the_mount_equal_the_imported_source(int blockSize)
    {
        using var v = await VolumeAsync(blockSize);
        Assert.Equal(blockSize == 0 ? 1 : 2, v.Settings.FormatVersion);
        var m = Mount(v, _dir["cache"]); // memory tier of 8 chunks: the 24-chunk file does not fit
        string big = Path.Combine(m.MountPoint, "m/big.bin");
        byte[] want = Source("big.bin");

        Assert.Equal(want.Length, new FileInfo(big).Length);
        Assert.Equal(new[] { "big.bin", "model.safetensors", "small.txt" }, Directory.GetFiles(Path.Combine(m.MountPoint, "m")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.False(File.Exists(Path.Combine(m.MountPoint, "m/pytorch_model.bin")));

        string copy = _dir["cat.out"];
        Proc.Run("sh", "-c", $"cat '{big}' > '{copy}'");
        Assert.Equal(SHA256.HashData(want), SHA256.HashData(File.ReadAllBytes(copy)));

        using (var h = File.OpenHandle(big))
        {
            var rnd = new Random(3);
            var buf = new byte[3 * Chunk];
            for (int i = 0; i < 100; i++)
            {
                long off = rnd.NextInt64(0, want.Length);
                int n = RandomAccess.Read(h, buf.AsSpan(0, rnd.Next(1, buf.Length)), off);
                Assert.True(buf.AsSpan(0, n).SequenceEqual(want.AsSpan((int)off, n)), $"pread mismatch at {off}");
            }
        }

        // mmap in another process (MmapProbe): faulting pages of this process's own mount can deadlock with the GC.
        byte[] st = Source("model.safetensors");
        var ranges = MmapProbe.RandomRanges(st.Length, 200, 200_000, 4);
        Assert.Equal(MmapProbe.Expected(st, ranges), MmapProbe.Sha256(Path.Combine(m.MountPoint, "m/model.safetensors"), ranges));

        var hashes = new byte[8][];
        Parallel.For(0, 8, i => hashes[i] = SHA256.HashData(File.ReadAllBytes(big)));
        Assert.All(hashes, x => Assert.Equal(SHA256.HashData(want), x));

        Assert.ThrowsAny<IOException>(() => File.WriteAllText(Path.Combine(m.MountPoint, "m/new.txt"), "x")); // read-only
        Assert.True(new DriveInfo(m.MountPoint).TotalSize > 0);
    }

    [MountFact]
    public async Task A_warm_read_after_remount_needs_no_object_store()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["cache"]);
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(m.MountPoint, "m/big.bin"))); // cold
        Assert.True(m.Cache.StoreFetches >= 25);
        SpinWait.SpinUntil(() => m.Cache.Disk!.Count >= 25, 10_000);
        Unmount(m);

        await WithS3StoppedAsync(() =>
        {
            var warm = Mount(v, _dir["cache"]);
            Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(warm.MountPoint, "m/big.bin")));
            Assert.Equal(0, warm.Cache.StoreFetches);
            return Task.CompletedTask;
        });
    }

    [MountFact]
    public async Task A_file_all_in_the_disk_cache_is_then_served_by_passthrough_without_the_daemon()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["cache"]);
        string big = Path.Combine(m.MountPoint, "m/big.bin");
        byte[] want = Source("big.bin");
        Assert.Equal(want, File.ReadAllBytes(big)); // cold, in cached mode; its close queues the view
        Assert.True(SpinWait.SpinUntil(() => m.FileSystem.Switched >= 1, 30_000), "no view was built after the file was read whole");
        Assert.Equal(1, m.Cache.Disk!.ViewCount);
        long readsBefore = m.Session.Dispatcher.Reads;
        Assert.Equal(want, File.ReadAllBytes(big)); // the same inode, now in passthrough mode (its cached pages were dropped)
        Assert.Equal(1, m.FileSystem.PassthroughOpens);
        Assert.Equal(readsBefore, m.Session.Dispatcher.Reads);
        Unmount(m);

        await WithS3StoppedAsync(() =>
        {
            var warm = Mount(v, _dir["cache"]);
            string path = Path.Combine(warm.MountPoint, "m/big.bin");
            long reads = warm.Session.Dispatcher.Reads;
            string copy = _dir["pt.out"];
            Proc.Run("sh", "-c", $"cat '{path}' > '{copy}'");
            Assert.Equal(SHA256.HashData(want), SHA256.HashData(File.ReadAllBytes(copy)));

            // Two handles at once share the inode's backing file; mmap goes to it too (another process).
            using (var h1 = File.OpenHandle(path))
            using (var h2 = File.OpenHandle(path))
            {
                var rnd = new Random(5);
                var buf = new byte[Chunk + 7];
                for (int i = 0; i < 50; i++)
                {
                    long off = rnd.NextInt64(0, want.Length);
                    int n = RandomAccess.Read(i % 2 == 0 ? h1 : h2, buf, off);
                    Assert.True(buf.AsSpan(0, n).SequenceEqual(want.AsSpan((int)off, n)), $"pread mismatch at {off}");
                }
            }

            var ranges = MmapProbe.RandomRanges(want.Length, 100, 200_000, 6);
            Assert.Equal(MmapProbe.Expected(want, ranges), MmapProbe.Sha256(path, ranges));
            Assert.True(warm.FileSystem.PassthroughOpens >= 4, $"{warm.FileSystem.PassthroughOpens} passthrough opens");
            Assert.Equal(reads, warm.Session.Dispatcher.Reads); // the kernel read the view itself: no READ reached the daemon
            Assert.Equal(0, warm.Cache.StoreFetches);
            Assert.InRange((long)warm.Stats()["viewOpens"]!, 1, 3); // once per run of opens (cat; the two handles; the mmap), not per open

            // The view replaced the file's chunk files: a mount without passthrough reads its chunks from the view.
            Assert.Equal(0, warm.Cache.Disk!.Count);
            var plain = Mount(v, _dir["cache"], o => o with { Passthrough = false });
            Assert.Equal(want, File.ReadAllBytes(Path.Combine(plain.MountPoint, "m/big.bin")));
            Assert.Equal(0, plain.Cache.StoreFetches);
            Assert.Equal(0, plain.FileSystem.PassthroughOpens);
            Assert.True((long)plain.Stats()["diskHits"]! >= 25); // every chunk of the file, read from the view
            return Task.CompletedTask;
        });
    }

    [MountFact]
    public async Task An_inode_open_in_cached_mode_never_gets_a_passthrough_open_beside_it_and_turns_after_its_last_release()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["cache"]);
        string big = Path.Combine(m.MountPoint, "m/big.bin");
        byte[] want = Source("big.bin");
        ulong ino = Posix.LStat(big).Ino;
        var table = await v.Meta.GetChunkTableAsync(ino, Chunk);
        using (var held = File.OpenHandle(big))
        {
            var all = new byte[want.Length];
            Assert.Equal(want.Length, RandomAccess.Read(held, all, 0));
            Assert.Equal(want, all);
            Assert.True(SpinWait.SpinUntil(() => m.Cache.Busy == 0, 10_000));
            Assert.True(await m.Cache.QueueViewBuild(table!)); // the view exists while a cached-mode handle is open

            // A passthrough open now would fail in the kernel (fs/fuse/iomode.c): this one must be cached too.
            Assert.Equal(want, File.ReadAllBytes(big));
            Assert.Equal(0, m.FileSystem.PassthroughOpens);
        }

        // Its last release lets the inode turn to passthrough: pages dropped, the next open passthrough.
        Assert.True(SpinWait.SpinUntil(() => m.FileSystem.Switched >= 1, 30_000));
        Assert.Equal(want, File.ReadAllBytes(big));
        Assert.Equal(1, m.FileSystem.PassthroughOpens);

        // The bench's cold reset (forget with the disk) takes the view too.
        await m.FileSystem.ForgetCachedAsync(ino, disk: true);
        Assert.Equal(0, m.Cache.Disk!.ViewCount);
        Assert.Empty(Directory.EnumerateFiles(m.Cache.Disk.ViewRoot));
    }

    [MountFact]
    public async Task Two_mounts_share_one_cache_directory()
    {
        using var v = await VolumeAsync();
        var a = Mount(v, _dir["shared-cache"]);
        var b = Mount(v, _dir["shared-cache"]);
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(a.MountPoint, "m/big.bin")));
        SpinWait.SpinUntil(() => a.Cache.Disk!.Count >= 25, 10_000);
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(b.MountPoint, "m/big.bin")));
        Assert.Equal(0, b.Cache.StoreFetches); // everything came from the files mount A wrote
    }

    [MountFact]
    public async Task A_corrupted_cache_file_is_detected_and_healed()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["cache"]);
        File.ReadAllBytes(Path.Combine(m.MountPoint, "m/big.bin"));
        SpinWait.SpinUntil(() => m.Cache.Disk!.Count >= 25, 10_000);
        Unmount(m);

        string victim = Directory.GetFiles(_dir["cache/chunks"], "*", SearchOption.AllDirectories).First();
        var bytes = File.ReadAllBytes(victim);
        bytes[bytes.Length / 2] ^= 0x5A;
        File.WriteAllBytes(victim, bytes);

        var again = Mount(v, _dir["cache"]);
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(again.MountPoint, "m/big.bin")));
        Assert.Equal(1, again.Cache.Disk!.Corrupt);
        Assert.Equal(1, again.Cache.StoreFetches); // only the damaged chunk came from S3
    }

    [MountFact]
    public async Task Eviction_keeps_the_cache_under_its_size()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["small-cache"], o => o with { CacheSize = 6L * Chunk });
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(m.MountPoint, "m/big.bin")));
        Thread.Sleep(500);
        long bytes = Directory.GetFiles(_dir["small-cache/chunks"], "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        Assert.True(bytes <= 6L * Chunk, $"{bytes} bytes cached with a {6 * Chunk}-byte limit");
    }

    [MountFact]
    public async Task Object_store_down_during_a_cold_read_gives_eio_in_time_and_cached_files_still_read()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["cache"], o => o with { FetchTimeout = TimeSpan.FromSeconds(2), Vfs = o.Vfs with { Prefetch = PrefetchMode.None } });
        Assert.Equal("small and cached\n", File.ReadAllText(Path.Combine(m.MountPoint, "m/small.txt")));
        await WithS3StoppedAsync(async () =>
        {
            var read = Task.Run(() => File.ReadAllBytes(Path.Combine(m.MountPoint, "m/big.bin")));
            Assert.True(await Task.WhenAny(read, Task.Delay(TimeSpan.FromSeconds(120))) == read, "the read hung with the object store down");
            var ex = await Assert.ThrowsAnyAsync<Exception>(() => read);
            Assert.Contains("Input/output error", ex.Message, StringComparison.Ordinal);
            Assert.Equal("small and cached\n", File.ReadAllText(Path.Combine(m.MountPoint, "m/small.txt")));
        });

        // Once the store is back (and the last failures are no longer remembered), the same file reads: nothing wrong was cached.
        await Task.Delay(LazyModelFs.Cache.ChunkCache.FailureMemory + TimeSpan.FromSeconds(1));
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(m.MountPoint, "m/big.bin")));
    }

    [MountFact]
    public async Task Warmup_then_read_with_the_object_store_stopped()
    {
        using (await VolumeAsync())
        {
        }

        var env = LmfsRunner.S3Env();
        var r = LmfsRunner.Run(["warmup", _meta, "/m", "--cache-dir", _dir["warm"]], env);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("warmed up", r.Stdout, StringComparison.Ordinal);
        Assert.Contains("3 of 3 files ready for passthrough", r.Stdout, StringComparison.Ordinal);
        var check = LmfsRunner.Run(["warmup", _meta, "/m", "--cache-dir", _dir["warm"], "--check"], env);
        Assert.Contains("(100.0%)", check.Stdout, StringComparison.Ordinal);

        await WithS3StoppedAsync(async () =>
        {
            using var v = await Volume.OpenAsync(_meta, Creds);
            var m = Mount(v, _dir["warm"]);
            foreach (var f in new[] { "big.bin", "small.txt", "model.safetensors" })
            {
                Assert.Equal(Source(f), File.ReadAllBytes(Path.Combine(m.MountPoint, "m", f)));
            }

            Assert.Equal(0, m.Cache.StoreFetches);
            Assert.Equal(3, m.FileSystem.PassthroughOpens); // the views warmup built: the first opens are passthrough
        });
    }

    [MountFact]
    public async Task Safetensors_prefetch_fetches_the_tensors_after_the_header_is_read()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["st-cache"], o => o with { BufferSize = 32L * (Chunk + 4096) });
        using (var f = File.OpenRead(Path.Combine(m.MountPoint, "m/model.safetensors")))
        {
            var head = new byte[8];
            f.ReadExactly(head);
        }

        // Only 8 bytes were read; prefetch brings in every chunk of the file in the background.
        Assert.True(SpinWait.SpinUntil(() => m.Cache.Disk!.Count >= 11, 30_000), $"prefetched {m.Cache.Disk!.Count} of 11 chunks");
    }

    /// <summary>One 4 KiB O_DIRECT read (no kernel readahead: the daemon sees exactly these READs) at the start of each chunk, by dd in another process.</summary>
    private static void DirectReads(string file, IEnumerable<int> chunks) =>
        Proc.Run("sh", "-c", string.Concat(chunks.Select(c => $"dd if='{file}' of=/dev/null bs=4096 count=1 skip={c * (Chunk / 4096)} iflag=direct status=none && ")) + "true");

    [MountFact]
    public async Task A_load_recorded_on_one_mount_is_replayed_by_a_cold_mount_with_another_cache()
    {
        using var v = await VolumeAsync();
        int[] order = [.. Enumerable.Range(0, 25).OrderBy(i => (i * 7) % 25)]; // all 25 chunks of big.bin, shuffled
        var a = Mount(v, _dir["rec-a"], o => o with { BufferSize = 32L * (Chunk + 4096) });
        string big = Path.Combine(a.MountPoint, "m/big.bin");
        DirectReads(big, order);
        Assert.True(SpinWait.SpinUntil(() => (long?)a.Stats()["profileWritesPending"] == 0, 30_000));
        Assert.True((long?)a.Stats()["profilesRecorded"] >= 1);
        Unmount(a);

        var stat = LmfsRunner.Run(["stat", _meta, "/m/big.bin"], LmfsRunner.S3Env());
        Assert.True(stat.ExitCode == 0, stat.ToString());
        Assert.Contains("profiles: dd: 25 of 25 chunks", stat.Stdout, StringComparison.Ordinal);
        var json = System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run(["stat", "--json", _meta, "/m/big.bin"], LmfsRunner.S3Env()).Stdout)!;
        Assert.Equal(25, (int)json["profiles"]![0]!["chunks"]!);

        // Another node: an empty cache. Its first open replays the profile; no prefetch of big.bin would happen without it.
        // Passthrough off: once the file is all in the cache, later opens would be served by the kernel, and
        // their READs (what this test counts) would never reach the daemon.
        var b = Mount(v, _dir["rec-b"], o => o with { BufferSize = 32L * (Chunk + 4096), Passthrough = false });
        big = Path.Combine(b.MountPoint, "m/big.bin");
        using (File.OpenHandle(big))
        {
            Assert.True(SpinWait.SpinUntil(() => b.Cache.Disk!.Count >= 25 && b.Cache.Busy == 0, 30_000), $"{b.Cache.Disk!.Count} of 25 chunks prefetched");
        }

        Assert.Equal(1L, (long?)b.Stats()["profileReplays"]);
        DirectReads(big, order);
        Assert.True(SpinWait.SpinUntil(() => (long?)b.Stats()["profileWritesPending"] == 0, 30_000));
        var st = b.Stats();
        Assert.Equal(25L, (long?)st["prefetchHits"]);
        Assert.Equal((long?)st["prefetchIssuedBytes"], (long?)st["prefetchUsedBytes"]);
        Assert.Equal(25L, b.Cache.StoreFetches); // each chunk once
        Assert.True((long?)st["profilesKept"] >= 1);
        Assert.Equal(0L, (long?)st["profilesReplaced"]);
        Assert.Equal(Source("big.bin"), File.ReadAllBytes(big));
    }

    [MountFact]
    public async Task Warmup_with_profile_fills_only_what_the_recorded_load_read()
    {
        using var v = await VolumeAsync();
        var a = Mount(v, _dir["wp-a"]);
        DirectReads(Path.Combine(a.MountPoint, "m/big.bin"), [20, 3, 14, 8, 1]); // a partial load, stored at each last release
        Assert.True(SpinWait.SpinUntil(() => (long?)a.Stats()["profileWritesPending"] == 0, 30_000));
        Unmount(a);

        var env = LmfsRunner.S3Env();
        var r = LmfsRunner.Run(["warmup", _meta, "/m", "--profile", "--cache-dir", _dir["wp-b"]], env);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("1 by their access profile", r.Stdout, StringComparison.Ordinal); // big.bin; the others have none and are warmed whole
        var check = System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run(["warmup", _meta, "/m/big.bin", "--check", "--json", "--cache-dir", _dir["wp-b"]], env).Stdout)!;
        Assert.Equal(5, (int)check["cachedChunks"]!);
        Assert.Equal(25, (int)check["chunks"]!);
        var all = System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run(["warmup", _meta, "/m/model.safetensors", "--check", "--json", "--cache-dir", _dir["wp-b"]], env).Stdout)!;
        Assert.Equal((int)all["chunks"]!, (int)all["cachedChunks"]!);
    }

    private static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }

    [MountFact]
    public async Task Two_mounts_in_a_cache_group_read_one_file_at_once_and_the_store_serves_it_about_once()
    {
        using (await VolumeAsync())
        {
        }

        var env = LmfsRunner.S3Env();
        env["LMFS_PEER_SECRET"] = "the volume's peer secret for this test";
        int[] ports = [FreePort(), FreePort()];
        string peers = string.Join(',', ports.Select(p => $"127.0.0.1:{p}"));
        var mps = new List<string>();
        try
        {
            for (int i = 0; i < 2; i++)
            {
                string mp = Directory.CreateTempSubdirectory($"lmfs-peer{i}-mp-").FullName;
                mps.Add(mp);
                var r = LmfsRunner.Run(["mount", _meta, mp, "--background", "--cache-dir", _dir[$"peer-cache{i}"], "--log-file", _dir[$"peer{i}.log"],
                    "--peer-listen", $"127.0.0.1:{ports[i]}", "--peers", peers], env);
                Assert.True(r.ExitCode == 0, r + "\n" + (File.Exists(_dir[$"peer{i}.log"]) ? File.ReadAllText(_dir[$"peer{i}.log"]) : ""));
                Assert.DoesNotContain(env["LMFS_PEER_SECRET"]!, File.ReadAllText(_dir[$"peer{i}.log"]), StringComparison.Ordinal);
            }

            // Both nodes cold-load the same file at once, in other processes.
            var loads = mps.Select(mp => Task.Run(() => Proc.Run("sh", "-c", $"cat '{Path.Combine(mp, "m/big.bin")}' | sha256sum"))).ToList();
            string want = Convert.ToHexStringLower(SHA256.HashData(Source("big.bin")));
            foreach (var l in loads)
            {
                Assert.StartsWith(want, await l.WaitAsync(TimeSpan.FromSeconds(120)), StringComparison.Ordinal);
            }

            long storeBytes = 0, fromPeers = 0, served = 0;
            foreach (var mp in mps)
            {
                var st = System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run(["stats", mp, "--json"], env).Stdout)!;
                Assert.Equal(2, (int)st["peerMembers"]!);
                Assert.Equal(0, (long)st["peerErrors"]!);
                storeBytes += (long)st["storeBytes"]! - (long)st["peerBytes"]!; // below the cache, less what peers gave
                fromPeers += (long)st["peerFetches"]!;
                served += (long)st["peerServed"]!;
            }

            // Two nodes, one file: the store served it about once (each chunk by its owner; the first READs'
            // blocks, which go to the store directly, a little more), and what one node got from the other
            // is what the other served.
            long size = Source("big.bin").Length;
            Assert.InRange(storeBytes, size, size * 11 / 10);
            Assert.InRange(fromPeers, 20, 25);
            Assert.Equal(fromPeers, served);
        }
        finally
        {
            foreach (var mp in mps)
            {
                LmfsRunner.Run("umount", mp);
                SpinWait.SpinUntil(() => Fuse.FuseMount.MountTypeAt(mp) is null, 10_000);
                Directory.Delete(mp);
            }
        }

        // Bad group options are refused before anything is mounted.
        string spare = Directory.CreateTempSubdirectory("lmfs-peer-bad-").FullName;
        try
        {
            var noSecret = LmfsRunner.Run(["mount", _meta, spare, "--peer-listen", "127.0.0.1:1"], LmfsRunner.S3Env());
            Assert.Equal(2, noSecret.ExitCode);
            Assert.Contains("peer secret", noSecret.Stderr, StringComparison.Ordinal);
            var wildcard = LmfsRunner.Run(["mount", _meta, spare, "--peer-listen", "0.0.0.0:7070"], env);
            Assert.Equal(2, wildcard.ExitCode);
            Assert.Contains("--peer-advertise", wildcard.Stderr, StringComparison.Ordinal);
            var badMember = LmfsRunner.Run(["mount", _meta, spare, "--peers", "10.0.0.1:7070,nohost"], env);
            Assert.Equal(2, badMember.ExitCode);
            Assert.Contains("'nohost' is not HOST:PORT", badMember.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(spare);
        }
    }

    [MountFact]
    public async Task lmfs_plan_prefetches_a_loaders_ranges_on_a_live_mount()
    {
        using (await VolumeAsync())
        {
        }

        string mp = Directory.CreateTempSubdirectory("lmfs-plan-mp-").FullName;
        var env = LmfsRunner.S3Env();
        var r = LmfsRunner.Run(["mount", _meta, mp, "--background", "--cache-dir", _dir["plan-cache"], "--log-file", _dir["plan.log"], "--record", "off"], env);
        Assert.True(r.ExitCode == 0, r.ToString());
        try
        {
            string big = Path.Combine(mp, "m/big.bin");
            var plan = LmfsRunner.Run(["plan", big], env, stdin: Encoding.ASCII.GetBytes($"{20L * Chunk} {Chunk}\n{3L * Chunk}:10\n# a comment\n{7L * Chunk + 5} 2\n"));
            Assert.True(plan.ExitCode == 0, plan.ToString());
            Assert.Contains("3 chunks", plan.Stdout, StringComparison.Ordinal);
            Assert.True(SpinWait.SpinUntil(() => (int)System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run(["warmup", mp, big, "--check", "--json"], env).Stdout)!["cachedChunks"]! >= 3, 30_000));
            var stats = System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run(["stats", mp, "--json"], env).Stdout)!;
            Assert.Equal(1, (int)stats["profilePlans"]!);
            Assert.False((bool)stats["profileRecording"]!);

            var bad = LmfsRunner.Run(["plan", big, "--ranges", "12:abc"], env);
            Assert.Equal(2, bad.ExitCode);
            Assert.Contains("is not OFFSET:LENGTH", bad.Stderr, StringComparison.Ordinal);
            var outside = LmfsRunner.Run(["plan", _dir["plan.log"], "--ranges", "0:1"], env);
            Assert.Equal(2, outside.ExitCode);
            Assert.Contains("not under an lmfs mount", outside.Stderr, StringComparison.Ordinal);
            Assert.Equal(Source("big.bin"), File.ReadAllBytes(big));
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
        }

        Assert.True(SpinWait.SpinUntil(() => Fuse.FuseMount.MountTypeAt(mp) is null, 10_000));
        Directory.Delete(mp);
    }

    [MountFact]
    public async Task Random_reads_fetch_only_what_they_touch()
    {
        using var v = await VolumeAsync();
        var m = Mount(v, _dir["rnd-cache"], o => o with { Vfs = o.Vfs with { Prefetch = PrefetchMode.Sequential } });
        using var h = File.OpenHandle(Path.Combine(m.MountPoint, "m/big.bin"), FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        var one = new byte[1];
        foreach (int chunk in new[] { 20, 3, 14, 8, 1 })
        {
            RandomAccess.Read(h, one, ((long)chunk * Chunk) + 1000);
            Assert.Equal(Source("big.bin")[(chunk * Chunk) + 1000], one[0]);
        }

        Assert.Equal(5, m.Cache.StoreFetches);
    }

    [MountFact]
    public async Task The_command_line_mounts_in_the_background_and_unmounts()
    {
        using (await VolumeAsync())
        {
        }

        string mp = Directory.CreateTempSubdirectory("lmfs-cli-mp-").FullName;
        var env = LmfsRunner.S3Env();
        var r = LmfsRunner.Run(["mount", _meta, mp, "--background", "--cache-dir", _dir["cli-cache"], "--log-file", _dir["mount.log"]], env);
        Assert.True(r.ExitCode == 0, r + "\n--- log\n" + (File.Exists(_dir["mount.log"]) ? File.ReadAllText(_dir["mount.log"]) : ""));
        try
        {
            Assert.Equal(Source("big.bin"), File.ReadAllBytes(Path.Combine(mp, "m/big.bin")));
            var check = LmfsRunner.Run(["warmup", mp, Path.Combine(mp, "m/big.bin"), "--check"], env);
            Assert.Contains("cached:", check.Stdout, StringComparison.Ordinal);
            Assert.Equal(2, LmfsRunner.Run("mount", _meta, mp, "--cache-dir", _dir["cli-cache"]).ExitCode); // already mounted: refused
        }
        finally
        {
            var u = LmfsRunner.Run("umount", mp);
            Assert.True(u.ExitCode == 0, u.ToString());
        }

        Assert.True(SpinWait.SpinUntil(() => Fuse.FuseMount.MountTypeAt(mp) is null, 10_000));
        Assert.Contains("mounted volume", File.ReadAllText(_dir["mount.log"]), StringComparison.Ordinal);
        Assert.Equal(2, LmfsRunner.Run("umount", mp).ExitCode); // nothing mounted any more
        Directory.Delete(mp);
    }

    public void Dispose()
    {
        foreach (var m in _mounts.ToList())
        {
            Unmount(m);
        }

        _dir.Dispose();
    }
}
