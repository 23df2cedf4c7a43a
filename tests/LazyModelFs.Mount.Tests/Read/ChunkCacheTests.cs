using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>The chunk cache port's administration: Check, Fill (waits for the disk writes), Evict, over the in-memory twins and a real disk tier.</summary>
public sealed class ChunkCacheTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private readonly TempDir _dir = new("lmfs-port");

    /// <summary>Five chunks, the fourth equal to the first: four distinct ids.</summary>
    private async Task<(Volume V, ChunkTable Table)> ImportedAsync()
    {
        var v = await TwinVolume.CreateAsync(new MemoryObjectStore(), Chunk, "none");
        var data = new byte[5 * Chunk];
        new Random(5).NextBytes(data);
        data.AsSpan(0, Chunk).CopyTo(data.AsSpan(3 * Chunk));
        File.WriteAllBytes(_dir["src.bin"], data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/f.bin");
        return (v, (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/f.bin"))!.Ino, Chunk))!);
    }

    private ChunkCache Open(Volume v) => ChunkCache.Open(v, new ChunkCacheSetup { Directory = _dir["cache"], FreeSpaceRatio = 0, MemoryBytes = 16L * CachedChunk.BufferSizeFor(Chunk) });

    [Fact]
    public async Task Fill_returns_when_every_chunk_is_on_disk_and_counts_each_chunk_once()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);
        var before = cache.Check(table.Entries);
        Assert.Equal((4, 4L * Chunk, 4), (before.Chunks, before.Bytes, before.Missing.Count));

        long progress = 0;
        var r = await cache.FillAsync(cache.Check(table.Entries), 3, n => Interlocked.Add(ref progress, n));
        Assert.Equal((4, 0), (r.Stored, r.NotStored));
        Assert.Equal(4L * Chunk, progress);
        Assert.Empty(cache.Check(table.Entries).Missing); // at once: the fill waited for the writes, nobody polls
        Assert.Equal(4, cache.StoreFetches);

        // A second fill finds everything and fetches nothing; a fresh cache over the same directory sees it all.
        var again = await cache.FillAsync(cache.Check(table.Entries), 3);
        Assert.Equal((0, 0, 0), (again.Before.Missing.Count, again.Stored, again.NotStored));
        Assert.Equal(4, cache.StoreFetches);
        using var fresh = Open(v);
        Assert.Equal(4L * Chunk, fresh.Check(table.Entries).CachedBytes);
    }

    [Fact]
    public async Task Fill_counts_the_chunks_the_disk_would_not_take_instead_of_reporting_them_cached()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);

        // Where two of the chunks' shard directories would go, a file: their writes fail, whoever runs this (root too).
        var refused = table.Entries.Select(e => e.Id).Distinct().Take(2).ToList();
        foreach (var id in refused)
        {
            File.WriteAllText(Path.Combine(_dir["cache"], "chunks", id.ToHex()[..2]), "not a directory");
        }

        int expectRefused = table.Entries.Select(e => e.Id).Distinct().Count(id => refused.Any(x => x.ToHex()[..2] == id.ToHex()[..2]));
        var r = await cache.FillAsync(cache.Check(table.Entries), 1);
        // A failed write also pauses the disk tier for a while (a full disk is not asked again at every
        // chunk), so the chunks after it are not stored either: each is counted, none reported cached.
        Assert.InRange(r.NotStored, expectRefused, 4);
        Assert.Equal(4, r.Stored + r.NotStored);
        Assert.Equal(r.NotStored, cache.Check(table.Entries).Missing.Count);
    }

    [Fact]
    public async Task Evict_takes_chunks_out_of_memory_and_disk_and_the_next_read_fetches_again()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);
        await cache.FillAsync(cache.Check(table.Entries), 2);
        using (await cache.GetAsync(table[1]))
        {
        }

        Assert.True(cache.IsCached(table[1].Id));
        var ids = table.Entries.Select(e => e.Id).ToList();
        var (memory, disk) = cache.Evict(ids, disk: false);
        Assert.True(memory >= 1);
        Assert.Equal(0, disk);
        Assert.True(cache.IsCached(table[1].Id)); // still on disk
        (_, disk) = cache.Evict(ids, disk: true);
        Assert.Equal(4, disk);
        Assert.All(ids, id => Assert.False(cache.IsCached(id)));

        long fetched = cache.StoreFetches;
        using (var lease = await cache.GetAsync(table[2]))
        {
            Assert.Equal(table[2].PlainLength, lease.Data.Length);
        }

        Assert.Equal(fetched + 1, cache.StoreFetches);
    }

    public void Dispose() => _dir.Dispose();
}
