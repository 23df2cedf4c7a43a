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
/// The read side of an open file (<see cref="OpenFileReader"/>) behind the VFS's handles, over the
/// in-memory twins, no kernel: the memory-hit path, chunk edges, readahead streams shared by every
/// handle of a file, and prefetch started once per file until the control socket's forget.
/// </summary>
public sealed class OpenFileReaderTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private static readonly FuseContext Ctx = new(1, 1, 0, 0, 1);
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(60); // "did not hang", not a performance bound
    private readonly TempDir _dir = new("lmfs-openfile");
    private readonly List<IDisposable> _owned = [];

    private async Task<(Volume V, ChunkTable Table, byte[] Data)> ImportedAsync(int size, string name = "f.bin")
    {
        var v = await TwinVolume.CreateAsync(new MemoryObjectStore(), Chunk, "none");
        var data = TestData.Random(size, size);
        File.WriteAllBytes(_dir["src.bin"], data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/" + name);
        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/" + name))!.Ino, Chunk))!;
        return (v, table, data);
    }

    private ChunkCache Cache(Volume v, bool disk)
    {
        var memory = new MemoryTier(64L * CachedChunk.BufferSizeFor(Chunk), Chunk);
        var cache = new ChunkCache(v.Chunks, memory, disk ? new DiskCache(new DiskCacheOptions { Directory = _dir["cache"], FreeSpaceRatio = 0 }) : null);
        _owned.Add(cache);
        _owned.Add(memory);
        return cache;
    }

    private static async Task<(ulong Ino, ulong Fh)> OpenAsync(LmfsFileSystem fs, string name)
    {
        var entry = await fs.LookupAsync(Ctx, Node.RootIno, System.Text.Encoding.UTF8.GetBytes(name));
        Assert.True(entry.IsOk);
        var open = await fs.OpenAsync(Ctx, entry.Value.NodeId, 0);
        Assert.True(open.IsOk);
        return (entry.Value.NodeId, open.Value.Fh);
    }

    private static async Task<byte[]> ReadAsync(LmfsFileSystem fs, ulong ino, ulong fh, long offset, int length)
    {
        var buffer = new byte[length];
        var r = await fs.ReadAsync(Ctx, ino, fh, offset, buffer).AsTask().WaitAsync(NoHang);
        Assert.Equal(Errno.OK, r.Error);
        try
        {
            return r.IsExternal ? r.External.ToArray() : buffer[..r.Length];
        }
        finally
        {
            r.Lease?.Dispose();
        }
    }

    private static void WaitIdle(ChunkCache cache) =>
        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0, NoHang), "the chunk cache never went idle");

    /// <summary>1000 READs of one cached chunk, answered as they come (a sync handler is answered inline by the dispatcher).</summary>
    private static (int Synchronous, int External, long Allocated) HitReads(LmfsFileSystem fs, ulong ino, ulong fh, byte[] buffer)
    {
        int synchronous = 0, external = 0;
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            var vt = fs.ReadAsync(Ctx, ino, fh, Chunk + 100 + (i % 64), buffer);
            if (vt.IsCompletedSuccessfully)
            {
                synchronous++;
                var r = vt.Result;
                external += r.Lease is not null && r.External.Length == 4096 ? 1 : 0;
                r.Lease?.Dispose();
            }
        }

        return (synchronous, external, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public async Task A_memory_hit_is_answered_synchronously_from_the_chunk_buffer_with_no_copy_and_no_allocation()
    {
        var (v, _, data) = await ImportedAsync(3 * Chunk);
        var cache = Cache(v, disk: false);
        var fs = new LmfsFileSystem(v, cache, new VfsOptions()); // the default prefetch: every READ goes through the access pattern
        var (ino, fh) = await OpenAsync(fs, "f.bin");
        Assert.Equal(data.AsSpan(Chunk + 100, 4096).ToArray(), await ReadAsync(fs, ino, fh, Chunk + 100, 4096)); // a miss: fetched

        var buffer = new byte[4096];
        HitReads(fs, ino, fh, buffer); // warms the JIT
        var (synchronous, external, allocated) = HitReads(fs, ino, fh, buffer);
        Assert.Equal(0, allocated);
        Assert.Equal(1000, synchronous);
        Assert.Equal(1000, external); // the chunk's own buffer, the lease its owner
        Assert.All(buffer, b => Assert.Equal(0, b)); // nothing was copied into the dispatcher's buffer
    }

    [Fact]
    public async Task Reads_at_chunk_edges_and_in_the_short_last_chunk_return_the_files_bytes()
    {
        int size = (2 * Chunk) + 100;
        var (v, _, data) = await ImportedAsync(size);
        var fs = new LmfsFileSystem(v, Cache(v, disk: false), new VfsOptions { Prefetch = PrefetchMode.None });
        var (ino, fh) = await OpenAsync(fs, "f.bin");
        foreach (var (offset, length) in new (long, int)[]
        {
            (0, 4096), (Chunk - 1, 1), (Chunk - 1, 2), (Chunk, 1), (Chunk - 4096, 8192), // chunk 0's last byte, across the edge, chunk 1's first
            (2 * Chunk, 100), ((2 * Chunk) - 10, 4096), (size - 1, 4096),                   // the short last chunk; cut at the end of the file
        })
        {
            long end = Math.Min(size, offset + length);
            Assert.Equal(data.AsSpan((int)offset, (int)(end - offset)).ToArray(), await ReadAsync(fs, ino, fh, offset, length));
        }

        Assert.Empty(await ReadAsync(fs, ino, fh, size, 4096));      // offset == size
        Assert.Empty(await ReadAsync(fs, ino, fh, size + 10, 4096)); // past the end
        Assert.Equal(Errno.EBADF, (await fs.ReadAsync(Ctx, ino, fh + 1, 0, new byte[10])).Error);
    }

    [Fact]
    public async Task Every_handle_of_a_file_continues_the_same_readahead_streams()
    {
        var (v, table, _) = await ImportedAsync(32 * Chunk);
        var cache = Cache(v, disk: false); // no disk cache: no whole-file prefetch, readahead only
        var fs = new LmfsFileSystem(v, cache, new VfsOptions { Prefetch = PrefetchMode.Sequential });
        var (ino, a) = await OpenAsync(fs, "f.bin");
        for (long off = 0; off < 3 * Chunk; off += 256 << 10) // one reader, sequential: its stream's window grows to 4 MiB, requested up to 7 MiB
        {
            await ReadAsync(fs, ino, a, off, 256 << 10);
        }

        WaitIdle(cache);
        Assert.True(cache.IsCached(table[6].Id));
        Assert.False(cache.IsCached(table[7].Id));

        // A second open (another process, the same loader again) reading on from there continues that
        // stream, whose window moves on: the read side is the file's, not the handle's. A stream of
        // its own would have no window yet and fetch nothing ahead.
        var open = await fs.OpenAsync(Ctx, ino, 0);
        Assert.True(open.IsOk);
        await ReadAsync(fs, ino, open.Value.Fh, 3 * Chunk, 256 << 10);
        WaitIdle(cache);
        Assert.True(cache.IsCached(table[7].Id));
    }

    [Fact]
    public async Task Prefetch_runs_once_per_file_and_again_after_forget()
    {
        var (v, table, _) = await ImportedAsync((6 * Chunk) + 7);
        var cache = Cache(v, disk: true);
        var fs = new LmfsFileSystem(v, cache, new VfsOptions { Prefetch = PrefetchMode.WholeFile });
        var (ino, first) = await OpenAsync(fs, "f.bin");
        WaitIdle(cache);
        Assert.All(table.Entries, e => Assert.True(cache.IsCached(e.Id)));
        long fetches = cache.StoreFetches;
        Assert.Equal(table.Count, fetches);

        // Gone from both tiers behind the read side's back: a second open does not prefetch again.
        cache.Memory.Drop(table.Entries.Select(e => e.Id));
        foreach (var e in table.Entries)
        {
            cache.Disk!.Remove(e.Id);
        }

        var second = await fs.OpenAsync(Ctx, ino, 0);
        Assert.True(second.IsOk);
        Assert.Equal(0, cache.Busy); // prefetch is queued within OPEN, so none was
        Assert.Equal(fetches, cache.StoreFetches);

        // forget puts the file back as a fresh mount finds it: the next open prefetches it whole again.
        await fs.ForgetCachedAsync(ino, disk: true);
        var third = await fs.OpenAsync(Ctx, ino, 0);
        Assert.True(third.IsOk);
        WaitIdle(cache);
        Assert.All(table.Entries, e => Assert.True(cache.IsCached(e.Id)));
        Assert.Equal(2L * table.Count, cache.StoreFetches);
        Assert.Equal(3, fs.OpenFiles);
        await fs.ReleaseAsync(Ctx, ino, first);
        Assert.Equal(2, fs.OpenFiles);
    }

    public void Dispose()
    {
        foreach (var d in Enumerable.Reverse(_owned))
        {
            d.Dispose();
        }

        _dir.Dispose();
    }
}
