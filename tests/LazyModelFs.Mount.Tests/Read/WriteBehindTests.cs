using System.Text.Json.Nodes;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// Disk-cache writes behind the reader (ChunkCache.Writes.cs, issue 13): a write that finds the
/// queue full is skipped and counted, never waited for; a file closed with only skipped chunks
/// missing is completed in the background (from memory when the chunks are still there) and gets its view.
/// </summary>
public sealed class WriteBehindTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private readonly TempDir _dir = new("lmfs-writes");
    private readonly MemoryObjectStore _store = new();
    private byte[] _data = [];

    private async Task<(Volume V, ChunkTable Table)> ImportedAsync()
    {
        var v = await TwinVolume.CreateAsync(_store, Chunk, "none", 64 << 10);
        _data = TestData.Random((4 * Chunk) + 999, 21);
        File.WriteAllBytes(_dir["src.bin"], _data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/f.bin");
        return (v, (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/f.bin"))!.Ino, Chunk))!);
    }

    private ChunkCache Open(Volume v, int? maxQueuedWrites) =>
        ChunkCache.Open(v, new ChunkCacheSetup { Directory = _dir["cache"], FreeSpaceRatio = 0, MemoryBytes = 16 * CachedChunk.BufferSizeFor(Chunk), Fetch = new ChunkCacheOptions { MaxQueuedWrites = maxQueuedWrites } });

    private static long Stat(ChunkCache cache, string name)
    {
        var o = new JsonObject();
        cache.AddStats(o);
        return (long)o[name]!;
    }

    private async Task ReadAsync(ChunkCache cache, ChunkTable table, int count)
    {
        for (int i = 0; i < count; i++)
        {
            using var c = await cache.GetAsync(table[i]);
            Assert.True(c.Buffer.Span.Slice(c.Offset, table[i].PlainLength).SequenceEqual(_data.AsSpan(i * Chunk, table[i].PlainLength)));
        }
    }

    [Fact]
    public async Task Writes_past_a_full_queue_are_skipped_counted_and_filled_when_the_whole_file_was_read()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v, maxQueuedWrites: 0); // every write finds the queue full
        await ReadAsync(cache, table, table.Count);
        Assert.Equal(table.Count, Stat(cache, "diskWritesSkipped"));
        Assert.Equal(_data.Length, Stat(cache, "diskWritesSkippedBytes"));
        Assert.Equal(table.Count, cache.Check(table.Entries).Missing.Count);
        long fetched = cache.StoreBytes;

        Assert.True(await cache.QueueViewBuild(table)); // the fill, then the view
        Assert.Equal(table.Count, Stat(cache, "diskWritesRefilled"));
        Assert.Equal(fetched, cache.StoreBytes); // written from the memory tier: nothing fetched twice
        Assert.Empty(cache.Check(table.Entries).Missing);
        Assert.True(cache.Disk!.HasView(table));
        using var view = cache.OpenView(table);
        var bytes = new byte[_data.Length];
        Assert.Equal(_data.Length, RandomAccess.Read(view!, bytes, 0));
        Assert.Equal(_data, bytes);
    }

    [Fact]
    public async Task A_file_read_in_part_is_not_completed()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v, maxQueuedWrites: 0);
        await ReadAsync(cache, table, 3);
        Assert.False(await cache.QueueViewBuild(table));
        Assert.Equal(0, Stat(cache, "diskWritesRefilled"));
        Assert.Equal(table.Count, cache.Check(table.Entries).Missing.Count);
        Assert.False(cache.Disk!.HasView(table));
    }

    [Fact]
    public async Task With_room_in_the_queue_every_chunk_is_written()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v, maxQueuedWrites: null);
        await ReadAsync(cache, table, table.Count);
        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0, 10_000));
        Assert.Equal(0, Stat(cache, "diskWritesSkipped"));
        Assert.Empty(cache.Check(table.Entries).Missing);
    }

    public void Dispose()
    {
        _store.Dispose();
        _dir.Dispose();
    }
}
