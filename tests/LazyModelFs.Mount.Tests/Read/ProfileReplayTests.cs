using System.Collections.Concurrent;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Import;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// Access profiles (issue 17) through the VFS over the in-memory twins, no kernel: a load's first-touch
/// order is recorded into the metadata, replayed as the fetch order on another cache, kept when a later
/// load follows it and replaced when one does not, shared by files of the same content; plans from
/// loaders; damaged profiles ignored. The mount tests (MountReadTests) run it through a real mount.
/// </summary>
public sealed class ProfileReplayTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private const int Chunks = 16;
    private static readonly FuseContext Ctx = new(1, 1, 0, 0, (uint)Environment.ProcessId);
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(60); // "did not hang", not a performance bound
    private readonly TempDir _dir = new("lmfs-profile");
    private readonly List<IDisposable> _owned = [];
    private int _caches;

    public void Dispose()
    {
        foreach (var d in Enumerable.Reverse(_owned))
        {
            d.Dispose();
        }

        _dir.Dispose();
    }

    private async Task<(Volume V, ChunkTable Table, byte[] Data)> ImportedAsync(params string[] names)
    {
        var v = await TwinVolume.CreateAsync(new MemoryObjectStore(), Chunk, "none");
        var data = TestData.Random(Chunks * Chunk, 17);
        File.WriteAllBytes(_dir["src.bin"], data);
        foreach (var name in names)
        {
            await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/" + name);
        }

        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/" + names[0]))!.Ino, Chunk))!;
        return (v, table, data);
    }

    /// <summary>The object store's side of a cache: which chunks were fetched, in order.</summary>
    private sealed class LoggingSource(IChunkSource inner, ChunkTable table) : IChunkSource
    {
        public ConcurrentQueue<int> Fetched { get; } = new();

        public Task<int> ReadIntoAsync(ChunkEntry entry, Memory<byte> buffer, int parts = 1, CancellationToken ct = default)
        {
            Fetched.Enqueue(IndexOf(entry));
            return inner.ReadIntoAsync(entry, buffer, parts, ct);
        }

        public Task ReadBlocksAsync(ChunkEntry entry, int first, int count, Memory<byte> dest, CancellationToken ct = default)
        {
            Fetched.Enqueue(IndexOf(entry));
            return inner.ReadBlocksAsync(entry, first, count, dest, ct);
        }

        private int IndexOf(ChunkEntry e)
        {
            for (int i = 0; i < table.Count; i++)
            {
                if (table[i].Id == e.Id)
                {
                    return i;
                }
            }

            return -1;
        }
    }

    /// <summary>A fresh cache (memory and its own disk directory) over the volume; one fetch at a time, so the store sees the exact order.</summary>
    private (ChunkCache Cache, LoggingSource Source) Cache(Volume v, ChunkTable table, bool disk = true, int maxFetches = 1, int buffers = 64)
    {
        var source = new LoggingSource(v.Chunks, table);
        var memory = new MemoryTier(buffers * (long)CachedChunk.BufferSizeFor(Chunk), Chunk);
        var cache = new ChunkCache(
            source,
            memory,
            disk ? new DiskCache(new DiskCacheOptions { Directory = _dir["cache" + Interlocked.Increment(ref _caches)], FreeSpaceRatio = 0 }) : null,
            new ChunkCacheOptions { MaxFetches = maxFetches });
        _owned.Add(cache);
        _owned.Add(memory);
        return (cache, source);
    }

    private static async Task<(ulong Ino, ulong Fh)> OpenAsync(LmfsFileSystem fs, string name)
    {
        var entry = await fs.LookupAsync(Ctx, Node.RootIno, System.Text.Encoding.UTF8.GetBytes(name));
        Assert.True(entry.IsOk);
        var open = await fs.OpenAsync(Ctx, entry.Value.NodeId, 0);
        Assert.True(open.IsOk);
        return (entry.Value.NodeId, open.Value.Fh);
    }

    /// <summary>One 4 KiB READ at the start of each chunk in <paramref name="order"/>, each checked against the file's bytes.</summary>
    private static async Task LoadAsync(LmfsFileSystem fs, ulong ino, ulong fh, byte[] data, IEnumerable<int> order)
    {
        var buffer = new byte[4096];
        foreach (int i in order)
        {
            var r = await fs.ReadAsync(Ctx, ino, fh, (long)i * Chunk, buffer).AsTask().WaitAsync(NoHang);
            Assert.Equal(Errno.OK, r.Error);
            var got = r.IsExternal ? r.External.ToArray() : buffer[..r.Length];
            r.Lease?.Dispose();
            Assert.Equal(data.AsSpan(i * Chunk, 4096).ToArray(), got);
        }
    }

    private static void WaitIdle(LmfsFileSystem fs, ChunkCache cache) =>
        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0 && fs.Profiles.PendingWrites == 0, NoHang), "never went idle");

    private static async Task<AccessProfile> StoredAsync(Volume v, ChunkTable table)
    {
        var all = await v.Meta.GetProfilesAsync(table.ContentKey);
        var p = Assert.Single(all).Value;
        return AccessProfile.TryDecode(p, table.Count, out var why) ?? throw new Xunit.Sdk.XunitException(why);
    }

    private static long Stat(LmfsFileSystem fs, string key)
    {
        var o = new System.Text.Json.Nodes.JsonObject();
        fs.Profiles.AddStats(o);
        return o[key]!.GetValue<long>();
    }

    private static readonly int[] Shuffled = [9, 3, 14, 0, 7, 12, 1, 5, 15, 10, 2, 8, 13, 4, 11, 6];

    /// <summary>A first load on a node of its own, in the <see cref="Shuffled"/> order: its profile is stored.</summary>
    private async Task RecordShuffledAsync(Volume v, ChunkTable table, byte[] data)
    {
        var (c, _) = Cache(v, table);
        var fs = new LmfsFileSystem(v, c, new VfsOptions());
        var (ino, fh) = await OpenAsync(fs, "model.bin");
        await LoadAsync(fs, ino, fh, data, Shuffled);
        WaitIdle(fs, c);
    }

    [Fact]
    public async Task A_load_is_recorded_and_a_cold_open_on_another_cache_fetches_in_the_recorded_order()
    {
        var (v, table, data) = await ImportedAsync("model.bin");
        var (c1, _) = Cache(v, table);
        var fs1 = new LmfsFileSystem(v, c1, new VfsOptions());
        var (ino, fh) = await OpenAsync(fs1, "model.bin");
        await LoadAsync(fs1, ino, fh, data, Shuffled);
        WaitIdle(fs1, c1); // every chunk touched: stored without waiting for the release
        var p = await StoredAsync(v, table);
        Assert.Equal(Shuffled, p.Order);
        Assert.Equal(AccessProfile.TrimProcess(File.ReadAllText("/proc/self/comm")), p.Process);
        Assert.Equal(1, Stat(fs1, "profilesRecorded"));

        // Another node: a cold cache, the file opened and nothing read yet. The store sees the profile's order.
        var (c2, store2) = Cache(v, table);
        var fs2 = new LmfsFileSystem(v, c2, new VfsOptions());
        var (ino2, fh2) = await OpenAsync(fs2, "model.bin");
        Assert.True(SpinWait.SpinUntil(() => store2.Fetched.Count == Chunks && c2.Busy == 0, NoHang));
        Assert.Equal(Shuffled, store2.Fetched.ToArray());
        Assert.Equal(1, Stat(fs2, "profileReplays"));

        // The loader then does what it did before: every chunk is a prefetch hit, nothing is fetched again,
        // the profile is kept as it is (no write), and the bytes are the file's.
        await LoadAsync(fs2, ino2, fh2, data, Shuffled);
        WaitIdle(fs2, c2);
        Assert.Equal(Chunks, store2.Fetched.Count);
        Assert.Equal(Chunks, Stat(fs2, "prefetchHits"));
        Assert.Equal(Stat(fs2, "prefetchIssuedBytes"), Stat(fs2, "prefetchUsedBytes"));
        Assert.Equal(1, Stat(fs2, "profilesKept"));
        Assert.Equal(0, Stat(fs2, "profilesRecorded") + Stat(fs2, "profilesReplaced"));
    }

    [Fact]
    public async Task A_load_in_another_order_replaces_the_profile_it_was_replayed_from()
    {
        var (v, table, data) = await ImportedAsync("model.bin");
        await RecordShuffledAsync(v, table, data);

        var reversed = Enumerable.Range(0, Chunks).Reverse().ToArray();
        var (c2, _) = Cache(v, table, maxFetches: 4);
        var fs2 = new LmfsFileSystem(v, c2, new VfsOptions());
        var (ino2, fh2) = await OpenAsync(fs2, "model.bin");
        await LoadAsync(fs2, ino2, fh2, data, reversed);
        WaitIdle(fs2, c2);
        Assert.Equal(1, Stat(fs2, "profilesReplaced"));
        Assert.Equal(reversed, (await StoredAsync(v, table)).Order);
    }

    [Fact]
    public async Task A_file_whose_loads_keep_changing_order_is_no_longer_replayed_until_one_follows_its_profile()
    {
        var (v, table, data) = await ImportedAsync("model.bin");
        int[][] orders = [Shuffled, [.. Enumerable.Range(0, Chunks).Reverse()], [.. Enumerable.Range(0, Chunks).OrderBy(i => (i * 5) % 16)], [.. Enumerable.Range(0, Chunks)]];
        var replays = new List<long>();
        foreach (var order in orders)
        {
            var (c, _) = Cache(v, table, maxFetches: 4);
            var fs = new LmfsFileSystem(v, c, new VfsOptions());
            var (ino, fh) = await OpenAsync(fs, "model.bin");
            await LoadAsync(fs, ino, fh, data, order);
            WaitIdle(fs, c);
            replays.Add(Stat(fs, "profileReplays"));
        }

        // 1st: recorded (misses 0). 2nd and 3rd: replayed, not followed, replaced (misses 1, 2). 4th: not replayed.
        Assert.Equal([0L, 1L, 1L, 0L], replays);
        var stored = await StoredAsync(v, table);
        Assert.Equal(orders[3], stored.Order);
        Assert.Equal(3, stored.Misses);

        // A load that follows the unstable profile after all makes it stable again (misses 0): replayed from then on.
        for (int k = 0; k < 2; k++)
        {
            var (c, _) = Cache(v, table, maxFetches: 4);
            var fs = new LmfsFileSystem(v, c, new VfsOptions());
            var (ino, fh) = await OpenAsync(fs, "model.bin");
            await LoadAsync(fs, ino, fh, data, orders[3]);
            WaitIdle(fs, c);
            Assert.Equal(k, Stat(fs, "profileReplays"));
        }

        Assert.Equal(0, (await StoredAsync(v, table)).Misses);
    }

    [Fact]
    public async Task Two_files_of_the_same_bytes_share_one_profile()
    {
        var (v, table, data) = await ImportedAsync("a.safetensors", "copy/b.safetensors");
        var (c1, _) = Cache(v, table);
        var fs1 = new LmfsFileSystem(v, c1, new VfsOptions());
        var (ino, fh) = await OpenAsync(fs1, "a.safetensors");
        await LoadAsync(fs1, ino, fh, data, Shuffled);
        WaitIdle(fs1, c1);

        var b = await v.Namespace.ResolveAsync("/copy/b.safetensors");
        var tableB = (await v.Meta.GetChunkTableAsync(b!.Ino, Chunk))!;
        Assert.NotEqual(ino, b.Ino);
        Assert.Equal(table.ContentKey, tableB.ContentKey);
        Assert.Equal(Shuffled, (await StoredAsync(v, tableB)).Order);
        Assert.Single(await v.Meta.ListProfiledAsync());
    }

    [Fact]
    public async Task A_plan_from_the_loader_orders_the_fetches_and_is_not_overridden_by_a_profile()
    {
        var (v, table, data) = await ImportedAsync("model.bin");
        await RecordShuffledAsync(v, table, data);

        var (c2, store2) = Cache(v, table);
        var fs2 = new LmfsFileSystem(v, c2, new VfsOptions { Prefetch = PrefetchMode.None }); // no replay at open: the plan alone
        var (ino2, fh2) = await OpenAsync(fs2, "model.bin");
        // Ranges in the loader's order: chunk 5 whole, a range across chunks 1-2, chunk 5 again (once), one past the end (ignored).
        int n = fs2.Plan(ino2, [(5L * Chunk, Chunk), (Chunk + 10, Chunk), (5L * Chunk + 7, 1), (Chunks * (long)Chunk, 10)]);
        Assert.Equal(3, n);
        Assert.True(SpinWait.SpinUntil(() => store2.Fetched.Count == 3 && c2.Busy == 0, NoHang));
        Assert.Equal([5, 1, 2], store2.Fetched.ToArray());
        await LoadAsync(fs2, ino2, fh2, data, [5, 1, 2]);
        Assert.Equal(3, Stat(fs2, "prefetchHits"));
        Assert.Throws<Util.LmfsException>(() => fs2.Plan(999, [(0, 1)]));
        Assert.Equal(1, fs2.Plan(ino2, [(15L * Chunk, long.MaxValue)])); // a length to the end of time: up to the end of the file, no overflow
    }

    [Fact]
    public async Task Without_a_disk_cache_a_replay_stays_a_window_ahead_of_the_reader()
    {
        var (v, table, data) = await ImportedAsync("model.bin");
        await RecordShuffledAsync(v, table, data);

        var (c2, store2) = Cache(v, table, disk: false, buffers: 16);
        var fs2 = new LmfsFileSystem(v, c2, new VfsOptions());
        var (ino2, fh2) = await OpenAsync(fs2, "model.bin");
        int window = Math.Max(2, c2.Memory.Capacity / 4);
        Assert.True(window < Chunks, $"the test needs a window ({window}) smaller than the file");
        Assert.True(SpinWait.SpinUntil(() => store2.Fetched.Count == window && c2.Busy == 0, NoHang));
        Thread.Sleep(50);
        Assert.Equal(Shuffled.Take(window), store2.Fetched.ToArray()); // no further before the reader moves
        await LoadAsync(fs2, ino2, fh2, data, Shuffled);
        WaitIdle(fs2, c2);
        Assert.Equal(Chunks, store2.Fetched.Count);
    }

    [Fact]
    public async Task Damaged_profiles_are_ignored_and_record_off_writes_nothing()
    {
        var (v, table, data) = await ImportedAsync("model.bin");
        await v.Meta.PutProfileAsync(table.ContentKey, "bad", [1, 2, 3]);
        await v.Meta.PutProfileAsync(table.ContentKey, "other", new AccessProfile("other", DateTimeOffset.UtcNow, Chunks + 1, [0]).Encode()); // another table's

        var (c1, store1) = Cache(v, table, maxFetches: 4);
        var fs1 = new LmfsFileSystem(v, c1, new VfsOptions { Record = false });
        var (ino, fh) = await OpenAsync(fs1, "model.bin");
        await LoadAsync(fs1, ino, fh, data, Shuffled);
        await fs1.ReleaseAsync(Ctx, ino, fh);
        WaitIdle(fs1, c1);
        Assert.Equal(2, Stat(fs1, "profileErrors"));
        Assert.Equal(0, Stat(fs1, "profileReplays"));
        Assert.Equal(2, (await v.Meta.GetProfilesAsync(table.ContentKey)).Count); // nothing added

        // With recording on, the damaged ones stay unread and the load's own is added beside them.
        var (c2, _) = Cache(v, table, maxFetches: 4);
        var fs2 = new LmfsFileSystem(v, c2, new VfsOptions());
        var (ino2, fh2) = await OpenAsync(fs2, "model.bin");
        await LoadAsync(fs2, ino2, fh2, data, Shuffled.Take(4));
        await fs2.ReleaseAsync(Ctx, ino2, fh2); // a partial load is stored at the last release
        WaitIdle(fs2, c2);
        var mine = (await v.Meta.GetProfilesAsync(table.ContentKey))[AccessProfile.TrimProcess(File.ReadAllText("/proc/self/comm"))];
        Assert.Equal(Shuffled.Take(4), AccessProfile.TryDecode(mine, Chunks, out _)!.Order);
    }
}
