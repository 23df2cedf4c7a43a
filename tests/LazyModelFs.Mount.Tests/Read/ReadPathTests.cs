using System.Text;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>The read path below the VFS, over the in-memory twins: caches, single flight, priorities, integrity.</summary>
public sealed class ReadPathTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private readonly TempDir _dir = new("lmfs-read");

    private async Task<(Volume V, FaultyObjectStore Store, ChunkTable Table, byte[] Data)> ImportedAsync(int size)
    {
        var store = new FaultyObjectStore(new MemoryObjectStore());
        var v = await TwinVolume.CreateAsync(store, Chunk, "none");
        var data = new byte[size];
        new Random(size).NextBytes(data);
        File.WriteAllBytes(_dir["src.bin"], data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/f.bin");
        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/f.bin"))!.Ino, Chunk))!;
        return (v, store, table, data);
    }

    private DiskCache Disk(long max = 1L << 30) => new(new DiskCacheOptions { Directory = _dir["cache"], MaxBytes = max, FreeSpaceRatio = 0 });

    [Fact]
    public async Task Many_readers_of_one_chunk_cause_one_fetch_and_get_verified_bytes()
    {
        var (v, store, table, data) = await ImportedAsync(3 * Chunk);
        using var mem = new MemoryTier(16L * Chunk, Chunk);
        using var reader = new ChunkCache(v.Chunks, mem, Disk());
        var leases = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => reader.GetAsync(table[1]).AsTask()));
        Assert.Equal(1, reader.StoreFetches);
        Assert.All(leases, l => Assert.True(l.Data.Span.SequenceEqual(data.AsSpan(Chunk, Chunk))));
        foreach (var l in leases)
        {
            l.Dispose();
        }

        using var again = await reader.GetAsync(table[1]); // memory hit: no new fetch
        Assert.Equal(1, reader.StoreFetches);
    }

    [Fact]
    public async Task Wrong_bytes_from_the_store_are_never_returned_or_cached()
    {
        var (v, store, table, _) = await ImportedAsync(2 * Chunk);
        store.MangleGet = (_, b) =>
        {
            b[100] ^= 1;
            return b;
        };
        var disk = Disk();
        using var mem = new MemoryTier(16L * Chunk, Chunk);
        using var reader = new ChunkCache(v.Chunks, mem, disk, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(5) });
        await Assert.ThrowsAsync<ChunkCorruptException>(() => reader.GetAsync(table[0]).AsTask());
        Assert.False(reader.IsCached(table[0].Id));
        Assert.Equal(0, disk.Count);
    }

    [Fact]
    public async Task Missing_objects_fail_at_once_and_transient_failures_retry_until_the_deadline()
    {
        var (v, _, table, _) = await ImportedAsync(2 * Chunk);
        await v.Store.DeleteAsync(table[0].Id.ObjectKey());
        using var mem = new MemoryTier(16L * Chunk, Chunk);
        using var reader = new ChunkCache(v.Chunks, mem, null, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(2) });
        await Assert.ThrowsAsync<ObjectNotFoundException>(() => reader.GetAsync(table[0]).AsTask());

        var flaky = new FlakyStore(v.Store, failures: 2);
        var v2 = Volume.Create(v.Meta, v.Settings, flaky);
        using var reader2 = new ChunkCache(v2.Chunks, mem, null, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(10), DemandParts = 1 });
        using var ok = await reader2.GetAsync(table[1]);
        Assert.Equal(3, flaky.Calls);

        var down = new FlakyStore(v.Store, failures: int.MaxValue);
        var v3 = Volume.Create(v.Meta, v.Settings, down);
        using var reader3 = new ChunkCache(v3.Chunks, new MemoryTier(16L * Chunk, Chunk), null, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(1) });
        var ex = await Assert.ThrowsAsync<LmfsException>(() => reader3.GetAsync(table[1]).AsTask());
        Assert.Contains("could not be fetched within 1 s", ex.Message, StringComparison.Ordinal);
    }

    private sealed class FlakyStore(IObjectStore inner, int failures) : IObjectStore
    {
        public int Calls;

        public string Describe => inner.Describe;

        public Task CheckAsync(CancellationToken ct = default) => inner.CheckAsync(ct);

        public Task<int> GetAsync(string key, long offset, Memory<byte> dest, CancellationToken ct = default) =>
            Interlocked.Increment(ref Calls) <= failures ? throw new LmfsException("503 Slow Down (injected)") : inner.GetAsync(key, offset, dest, ct);

        public Task PutAsync(string key, ReadOnlyMemory<byte> data, CancellationToken ct = default) => inner.PutAsync(key, data, ct);

        public Task<long?> HeadAsync(string key, CancellationToken ct = default) => inner.HeadAsync(key, ct);

        public IAsyncEnumerable<ObjectInfo> ListAsync(string prefix, CancellationToken ct = default) => inner.ListAsync(prefix, ct);

        public Task DeleteAsync(string key, CancellationToken ct = default) => inner.DeleteAsync(key, ct);

        public void Dispose()
        {
        }
    }

    [Fact]
    public async Task Disk_cache_serves_a_new_reader_and_heals_a_damaged_file()
    {
        var (v, store, table, data) = await ImportedAsync(2 * Chunk);
        using (var mem = new MemoryTier(16L * Chunk, Chunk))
        using (var reader = new ChunkCache(v.Chunks, mem, Disk()))
        {
            (await reader.GetAsync(table[0])).Dispose();
        }

        // The chunk reaches the disk just after its reader gets it; then a "new process" rebuilds the index.
        string hex = table[0].Id.ToHex();
        string file = Path.Combine(_dir["cache/chunks"], hex[..2], hex[2..4], hex);
        Assert.True(SpinWait.SpinUntil(() => File.Exists(file), 5000)); // renamed into place, not just the temporary file
        var disk = Disk();
        Assert.Equal(1, disk.Count);
        var bytes = File.ReadAllBytes(file);
        bytes[12345] ^= 0xFF;
        File.WriteAllBytes(file, bytes);

        using var mem2 = new MemoryTier(16L * Chunk, Chunk);
        using var reader2 = new ChunkCache(v.Chunks, mem2, disk);
        using (var c = await reader2.GetAsync(table[0]))
        {
            Assert.True(c.Data.Span.SequenceEqual(data.AsSpan(0, Chunk)));
        }

        Assert.Equal(1, disk.Corrupt);
        Assert.Equal(1, reader2.StoreFetches); // fetched again from the store
        SpinWait.SpinUntil(() => File.Exists(file) && File.ReadAllBytes(file).AsSpan().SequenceEqual(data.AsSpan(0, Chunk)), 5000);
        Assert.Equal(data[..Chunk], File.ReadAllBytes(file)); // healed
    }

    [Fact]
    public async Task Disk_cache_evicts_least_recently_used_files_to_stay_under_its_size()
    {
        var (v, _, table, _) = await ImportedAsync(12 * Chunk);
        var disk = Disk(max: 4L * Chunk);
        using var mem = new MemoryTier(16L * Chunk, Chunk);
        using var reader = new ChunkCache(v.Chunks, mem, disk);
        for (int i = 0; i < table.Count; i++)
        {
            (await reader.GetAsync(table[i])).Dispose();
        }

        Assert.True(SpinWait.SpinUntil(() => reader.Busy == 0, 30_000), "disk cache writes still pending"); // its writes (and evictions) finish after GetAsync returns
        long onDisk = Directory.GetFiles(disk.Root, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        Assert.True(onDisk <= 4L * Chunk, $"cache holds {onDisk} bytes");
        Assert.True(disk.Contains(table[^1].Id), "the most recent chunk was evicted");
        Assert.False(disk.Contains(table[0].Id), "the oldest chunk was kept");
    }

    [Fact]
    public void Memory_tier_evicts_only_unreferenced_buffers_and_reuses_them()
    {
        using var mem = new MemoryTier(4L * (Chunk + 4096), Chunk);
        Assert.Equal(4, mem.Capacity);
        var held = mem.Rent();
        mem.Publish(held, new ChunkEntry(ChunkId.Of("held"u8), 10, 26, ChunkCodec.None, 0), 16, cold: false);
        for (int i = 0; i < 10; i++)
        {
            var c = mem.Rent();
            mem.Publish(c, new ChunkEntry(ChunkId.Of(Encoding.ASCII.GetBytes($"c{i}")), 10, 26, ChunkCodec.None, 0), 16, cold: false);
            c.Dispose();
        }

        Assert.True(mem.TryGet(ChunkId.Of("held"u8), out var again)); // referenced: never evicted
        again.Dispose();
        held.Dispose();
        Assert.Equal(4, mem.Allocated);
        Assert.True(mem.TryGet(ChunkId.Of("c9"u8), out var last));
        last.Dispose();
        Assert.False(mem.TryGet(ChunkId.Of("c0"u8), out _));
        Assert.Throws<InvalidOperationException>(() => last.Dispose()); // released twice
    }

    [Fact]
    public void Access_pattern_grows_a_window_for_each_sequential_stream_and_none_for_random_reads()
    {
        var p = new AccessPattern(Chunk, 16L * Chunk);
        long size = 1L << 30;
        Assert.Equal(2L << 20, p.RunBeforeWindow); // 1 MiB chunks: at least 2 MiB of run first
        for (long off = 0; off < 2L << 20; off += 128 << 10)
        {
            Assert.Null(p.OnRead(off, 128 << 10, size)); // sequential, not yet long enough to be told from kernel readahead
        }

        var ra = p.OnRead(2L << 20, 128 << 10, size);
        Assert.Equal(((2L << 20) + (128 << 10), (2L << 20) + (128 << 10) + Chunk), ra);
        var ra2 = p.OnRead((2L << 20) + (128 << 10), 128 << 10, size)!.Value;
        Assert.Equal((2L << 20) + (128 << 10) + Chunk, ra2.From); // only what was not asked for yet
        Assert.Equal((2L << 20) + (256 << 10) + Chunk, ra2.To); // the window moves on; it doubles once the reader has used a quarter of it
        Assert.Equal((2L << 20) + (384 << 10) + (2 * Chunk), p.OnRead((2L << 20) + (256 << 10), 128 << 10, size)!.Value.To); // doubled

        // A second reader elsewhere in the file is its own stream, and does not reset the first.
        Assert.Null(p.OnRead(500L << 20, 1 << 20, size));
        Assert.Null(p.OnRead(501L << 20, 1 << 20, size));
        Assert.NotNull(p.OnRead(502L << 20, 1 << 20, size));
        Assert.NotNull(p.OnRead((2L << 20) + (384 << 10), 128 << 10, size));

        // A random 1 MiB read arrives as about 2 MiB of READs (kernel readahead): no window, no fetch ahead.
        var burst = new AccessPattern(4 * Chunk, 32L * Chunk);
        Assert.Null(burst.OnRead(700L << 20, 1 << 20, size));
        Assert.Null(burst.OnRead(701L << 20, 1 << 20, size));

        var random = new AccessPattern(Chunk, 16L * Chunk);
        foreach (long slot in Enumerable.Range(0, 1000).OrderBy(_ => Random.Shared.Next()).Take(50))
        {
            Assert.Null(random.OnRead(slot * 100L * Chunk, 4096, 1L << 40)); // distinct, far apart
        }
    }

    [Fact]
    public void Safetensors_header_gives_tensor_ranges_in_file_order()
    {
        string json = """{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}""";
        var bytes = Encoding.UTF8.GetBytes(json);
        long size = 8 + bytes.Length + 8;
        Assert.Equal(bytes.Length, SafetensorsHeader.HeaderLength(BitConverter.GetBytes((ulong)bytes.Length), size));
        var r = SafetensorsHeader.TensorRanges(bytes, size)!;
        long start = 8 + bytes.Length;
        Assert.Equal([(start, start + 4), (start + 4, start + 8)], r);
        Assert.Null(SafetensorsHeader.HeaderLength(BitConverter.GetBytes(ulong.MaxValue), size));
        Assert.Null(SafetensorsHeader.TensorRanges("[1,2]"u8, size));
        Assert.Null(SafetensorsHeader.TensorRanges("""{"a":{"data_offsets":[0,99999]}}"""u8, size));
        Assert.Null(SafetensorsHeader.TensorRanges("{not json"u8, size));
    }

    [Fact]
    public async Task A_chunk_fetched_in_parallel_parts_is_whole_and_a_longer_or_shorter_object_is_refused()
    {
        var (v, store, table, data) = await ImportedAsync(3 * Chunk);
        var buf = new byte[Chunk + 8192];
        int before = store.Gets;
        int at = await v.Chunks.ReadIntoAsync(table[1], buf, parts: 4);
        Assert.Equal(2, store.Gets - before); // a 1 MiB chunk makes two parts of at least 512 KiB
        Assert.True(buf.AsSpan(at, Chunk).SequenceEqual(data.AsSpan(Chunk, Chunk)));

        store.MangleGet = (_, b) => [.. b, 7]; // every range one byte longer: the object looks longer
        await Assert.ThrowsAsync<ChunkCorruptException>(() => v.Chunks.ReadIntoAsync(table[1], buf, parts: 4));
        store.MangleGet = (_, b) => b[..^1]; // every range one byte short
        await Assert.ThrowsAsync<ChunkCorruptException>(() => v.Chunks.ReadIntoAsync(table[1], buf, parts: 4));
        store.MangleGet = (k, b) =>
        {
            b[^1] ^= 1; // a flipped bit in some part
            return b;
        };
        await Assert.ThrowsAsync<ChunkCorruptException>(() => v.Chunks.ReadIntoAsync(table[1], buf, parts: 4));
    }

    [Fact]
    public async Task Memory_tier_drop_forgets_chunks_but_keeps_leased_bytes_valid()
    {
        var (v, _, table, data) = await ImportedAsync(3 * Chunk);
        using var mem = new MemoryTier(16L * CachedChunk.BufferSizeFor(Chunk), Chunk);
        using var reader = new ChunkCache(v.Chunks, mem, null);
        var held = await reader.GetAsync(table[0]);
        (await reader.GetAsync(table[1])).Dispose();
        Assert.True(mem.Contains(table[0].Id) && mem.Contains(table[1].Id));
        Assert.Equal(1, mem.Drop([table[1].Id]));
        Assert.False(mem.Contains(table[1].Id));
        Assert.True(mem.Contains(table[0].Id));
        Assert.Equal(1, mem.Drop());
        Assert.Equal(0, mem.Count);
        Assert.True(held.Data.Span.SequenceEqual(data.AsSpan(0, Chunk))); // still leased: untouched
        held.Dispose();
        using var again = await reader.GetAsync(table[0]); // fetched again, into a recycled buffer
        Assert.True(again.Data.Span.SequenceEqual(data.AsSpan(0, Chunk)));
    }

    [Fact]
    public async Task Disk_cache_round_trips_through_direct_and_buffered_io_at_odd_lengths()
    {
        var (v, _, table, data) = await ImportedAsync((2 * Chunk) + 1234); // last chunk is not a whole number of pages
        var disk = Disk();
        using var mem = new MemoryTier(8L * CachedChunk.BufferSizeFor(Chunk), Chunk);
        using (var reader = new ChunkCache(v.Chunks, mem, disk))
        {
            for (int i = 0; i < table.Count; i++)
            {
                (await reader.GetAsync(table[i])).Dispose();
            }
        }

        Assert.True(SpinWait.SpinUntil(() => disk.Count == table.Count, 5000));
        for (int i = 0; i < table.Count; i++)
        {
            var want = data.AsSpan(i * Chunk, table[i].PlainLength);
            var aligned = mem.Rent(); // page-aligned native buffer: the O_DIRECT path where the filesystem allows it
            try
            {
                Assert.True(disk.TryRead(table[i], aligned.Buffer.Span[CachedChunk.DataStart..]));
                Assert.True(aligned.Buffer.Span.Slice(CachedChunk.DataStart, want.Length).SequenceEqual(want));
            }
            finally
            {
                aligned.Dispose();
            }

            var managed = new byte[Chunk + 1]; // unaligned: buffered I/O
            Assert.True(disk.TryRead(table[i], managed.AsSpan(1)));
            Assert.True(managed.AsSpan(1, want.Length).SequenceEqual(want));
        }

        string last = Directory.EnumerateFiles(_dir["cache"], table[^1].Id.ToHex(), SearchOption.AllDirectories).Single();
        Assert.Equal(1234, new FileInfo(last).Length); // the page padding of a direct write is cut off

        // A chunk written from an unaligned buffer reads back the same through the aligned path.
        var other = new DiskCache(new DiskCacheOptions { Directory = _dir["cache2"], FreeSpaceRatio = 0 });
        other.Write(table[^1], data.AsSpan(2 * Chunk, 1234));
        var buf = mem.Rent();
        try
        {
            Assert.True(other.TryRead(table[^1], buf.Buffer.Span[CachedChunk.DataStart..]));
            Assert.True(buf.Buffer.Span.Slice(CachedChunk.DataStart, 1234).SequenceEqual(data.AsSpan(2 * Chunk, 1234)));
        }
        finally
        {
            buf.Dispose();
        }
    }

    [Fact]
    public async Task Cancelling_queued_fetches_drops_background_ones_and_never_a_read_that_waits()
    {
        var (v, store, table, data) = await ImportedAsync(6 * Chunk);
        var gate = new TaskCompletionSource();
        store.OnGet = (_, _) => gate.Task.IsCompleted ? null : new GetFault.Slow(TimeSpan.FromSeconds(2));
        using var mem = new MemoryTier(16L * CachedChunk.BufferSizeFor(Chunk), Chunk);
        using var reader = new ChunkCache(v.Chunks, mem, null, new ChunkCacheOptions { MaxFetches = 1, DemandParts = 1 });
        var running = reader.GetAsync(table[0]).AsTask(); // takes the only slot
        for (int i = 1; i < 5; i++)
        {
            reader.Prefetch(table[i], FetchPriority.Prefetch); // queued behind it
        }

        var waiting = reader.GetAsync(table[5]).AsTask(); // a READ waits too
        Assert.Equal(4, reader.CancelQueued(table.Entries.Select(e => e.Id)));
        gate.SetResult();
        using (var c = await running)
        using (var w = await waiting)
        {
            Assert.True(w.Data.Span.SequenceEqual(data.AsSpan(5 * Chunk, Chunk)));
        }

        Assert.True(SpinWait.SpinUntil(() => reader.Busy == 0, 10_000));
        Assert.Equal(2, reader.StoreFetches); // the running one and the waited-for one; none of the dropped
    }

    public void Dispose() => _dir.Dispose();
}
