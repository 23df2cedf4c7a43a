using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Import;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests.Faults;

/// <summary>
/// The read path under a misbehaving object store (the fault-injecting decorator over the in-memory
/// twin): errors, slowness, hangs, short bodies, wrong bytes and missing objects. Whatever happens, a
/// reader gets the imported bytes or an error in bounded time — never wrong bytes, never a hang —
/// and nothing unverified reaches the caches.
/// </summary>
public sealed class StoreFaultTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private readonly TempDir _dir = new("lmfs-faults");

    /// <summary>Generous bound for "did not hang": no figure here is a performance threshold.</summary>
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(60);

    private async Task<(Volume V, FaultyObjectStore Store, ChunkTable Table, byte[] Data)> ImportedAsync(int size, string name = "f.bin")
    {
        var store = new FaultyObjectStore(new MemoryObjectStore());
        var v = await TwinVolume.CreateAsync(store, Chunk, "none");
        var data = TestData.Random(size, size);
        File.WriteAllBytes(_dir["src.bin"], data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/" + name);
        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/" + name))!.Ino, Chunk))!;
        return (v, store, table, data);
    }

    private DiskCache Disk() => new(new DiskCacheOptions { Directory = _dir["cache"], FreeSpaceRatio = 0 });

    private static ChunkCache Reader(Volume v, DiskCache? disk, double timeoutSeconds = 20) =>
        new(v.Chunks, new MemoryTier(8L * CachedChunk.BufferSizeFor(Chunk), Chunk), disk, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(timeoutSeconds), DemandParts = 1 });

    [Fact]
    public async Task Server_errors_500_and_503_are_retried_with_backoff_until_the_bytes_come()
    {
        var (v, store, table, data) = await ImportedAsync(2 * Chunk);
        store.OnGet = (_, call) => call <= 3 ? GetFault.ServerError(call % 2 == 0 ? 503 : 500) : null;
        using var reader = Reader(v, null);
        using var c = await reader.GetAsync(table[1]).AsTask().WaitAsync(NoHang);
        Assert.True(c.Data.Span.SequenceEqual(data.AsSpan(Chunk, Chunk)));
        Assert.Equal(4, store.Gets); // three failures, then the answer
    }

    [Fact]
    public async Task A_slow_server_is_waited_for_and_a_hung_one_fails_at_the_fetch_deadline()
    {
        var (v, store, table, data) = await ImportedAsync(2 * Chunk);
        store.OnGet = (_, _) => new GetFault.Slow(TimeSpan.FromMilliseconds(300));
        using (var reader = Reader(v, null))
        using (var c = await reader.GetAsync(table[0]).AsTask().WaitAsync(NoHang))
        {
            Assert.True(c.Data.Span.SequenceEqual(data.AsSpan(0, Chunk)));
        }

        store.OnGet = (_, _) => new GetFault.Hang();
        using var hung = Reader(v, null, timeoutSeconds: 1);
        var ex = await Assert.ThrowsAsync<LmfsException>(() => hung.GetAsync(table[1]).AsTask().WaitAsync(NoHang));
        Assert.Contains("could not be fetched within 1 s", ex.Message, StringComparison.Ordinal);

        // The server answers again: once the failure is no longer remembered (it is, briefly, so the
        // kernel's immediate retry of a failed readahead fails at once), the same chunk reads.
        store.OnGet = null;
        await Task.Delay(ChunkCache.FailureMemory + TimeSpan.FromMilliseconds(100));
        using var again = await hung.GetAsync(table[1]).AsTask().WaitAsync(NoHang);
        Assert.True(again.Data.Span.SequenceEqual(data.AsSpan(Chunk, Chunk)));
    }

    [Fact]
    public async Task A_truncated_body_is_detected_retried_and_never_cached()
    {
        var (v, store, table, data) = await ImportedAsync(2 * Chunk);
        var disk = Disk();
        store.OnGet = (_, call) => call == 1 ? new GetFault.Truncate(Chunk / 2) : null; // the first answer is cut short
        using (var reader = Reader(v, disk))
        using (var c = await reader.GetAsync(table[0]).AsTask().WaitAsync(NoHang))
        {
            Assert.True(c.Data.Span.SequenceEqual(data.AsSpan(0, Chunk)));
        }

        store.OnGet = (_, _) => new GetFault.Truncate(Chunk / 2); // every answer is cut short
        using var always = Reader(v, disk);
        await Assert.ThrowsAsync<ChunkCorruptException>(() => always.GetAsync(table[1]).AsTask().WaitAsync(NoHang));
        Assert.False(disk.Contains(table[1].Id));
    }

    [Fact]
    public async Task Wrong_bytes_in_every_part_of_a_split_fetch_are_refused_and_not_cached()
    {
        var (v, store, table, _) = await ImportedAsync(2 * Chunk);
        store.MangleGet = (_, b) =>
        {
            b[b.Length / 2] ^= 0x40;
            return b;
        };
        var disk = Disk();
        using var reader = new ChunkCache(v.Chunks, new MemoryTier(8L * CachedChunk.BufferSizeFor(Chunk), Chunk), disk, new ChunkCacheOptions { DemandParts = 4, FetchTimeout = TimeSpan.FromSeconds(10) });
        await Assert.ThrowsAsync<ChunkCorruptException>(() => reader.GetAsync(table[0]).AsTask().WaitAsync(NoHang));
        Assert.False(reader.IsCached(table[0].Id));
        Assert.Equal(0, disk.Count);
    }

    [Fact]
    public async Task A_missing_chunk_fails_the_read_with_EIO_and_a_log_line_naming_the_file_and_the_chunk()
    {
        var (v, _, table, data) = await ImportedAsync((3 * Chunk) + 5, "weights.bin");
        await v.Store.DeleteAsync(table[1].Id.ObjectKey());
        var log = new ListLogger();
        using var reader = Reader(v, Disk());
        var fs = new LmfsFileSystem(v, reader, new VfsOptions { Prefetch = PrefetchMode.None }, log);
        var ctx = new FuseContext(1, 1, 0, 0, 1);
        var entry = await fs.LookupAsync(ctx, Node.RootIno, "weights.bin"u8.ToArray());
        Assert.True(entry.IsOk);
        ulong ino = entry.Value.NodeId;
        var open = await fs.OpenAsync(ctx, ino, 0);
        Assert.True(open.IsOk);
        ulong fh = open.Value.Fh;

        var good = await fs.ReadAsync(ctx, ino, fh, 0, new byte[4096]);
        Assert.Equal(Errno.OK, good.Error);
        Assert.True(good.External.Span.SequenceEqual(data.AsSpan(0, 4096)));
        good.Lease?.Dispose();

        var bad = await fs.ReadAsync(ctx, ino, fh, Chunk + 10, new byte[4096]).AsTask().WaitAsync(NoHang);
        Assert.Equal(Errno.EIO, bad.Error);
        Assert.Contains(log.Lines, l => l.Contains("weights.bin", StringComparison.Ordinal) && l.Contains(table[1].Id.ToString(), StringComparison.Ordinal));

        // Other chunks of the file still read.
        var after = await fs.ReadAsync(ctx, ino, fh, 2 * Chunk, new byte[4096]);
        Assert.Equal(Errno.OK, after.Error);
        after.Lease?.Dispose();
    }

    public void Dispose() => _dir.Dispose();
}
