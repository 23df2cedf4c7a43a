using System.Text.Json.Nodes;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// Format v2's partial reads through the chunk cache (issue 14, items 1 and 2): a random READ costs
/// the blocks it touches, verified block by block; a chunk completed by such READs, or by a whole
/// fetch adopting it, is verified by its id before it enters the shared tiers. Over the in-memory
/// store, counting what the cache moved (<see cref="ChunkCache.StoreBytes"/>).
/// </summary>
public sealed class PartialChunkTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private const int Block = 64 << 10;
    private readonly TempDir _dir = new("lmfs-partial");
    private readonly MemoryObjectStore _store = new();
    private byte[] _data = [];

    /// <summary>Four chunks of random bytes at /f.bin, blocks of <paramref name="blockSize"/> (0: a version 1 table).</summary>
    private async Task<(Volume V, ChunkTable Table)> ImportedAsync(int blockSize = Block)
    {
        var v = await TwinVolume.CreateAsync(_store, Chunk, "none", blockSize);
        _data = TestData.Random(4 * Chunk, 9);
        File.WriteAllBytes(_dir["src.bin"], _data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/f.bin");
        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/f.bin"))!.Ino, Chunk))!;
        Assert.Equal(blockSize, table.BlockSize);
        return (v, table);
    }

    private ChunkCache Open(Volume v, long memoryBuffers = 16, long disk = 1L << 30) =>
        ChunkCache.Open(v, new ChunkCacheSetup { Directory = _dir["cache"], FreeSpaceRatio = 0, DiskBytes = disk, MemoryBytes = memoryBuffers * CachedChunk.BufferSizeFor(Chunk) });

    /// <summary>Reads [within, within + length) of chunk <paramref name="index"/> as a random READ would, and checks the bytes.</summary>
    private async Task ReadAsync(ChunkCache cache, ChunkTable table, int index, int within, int length, bool sequential = false)
    {
        using var c = await cache.GetRangeAsync(table[index], within, length, sequential);
        Assert.True(c.Data.Span.Slice(within, length).SequenceEqual(_data.AsSpan((index * Chunk) + within, length)), $"bytes of chunk {index} at {within}");
    }

    private static long Stat(ChunkCache cache, string name)
    {
        var o = new JsonObject();
        cache.AddStats(o);
        return long.Parse(o[name]!.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task A_random_read_fetches_only_the_blocks_it_touches()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);

        await ReadAsync(cache, table, 1, Block + 100, 4096); // inside block 1
        Assert.Equal(Block, cache.StoreBytes);
        await ReadAsync(cache, table, 1, (3 * Block) - 10, 20); // across blocks 2 and 3
        Assert.Equal(3L * Block, cache.StoreBytes);
        await ReadAsync(cache, table, 1, Block, 2 * Block); // blocks 1 and 2, both here: no transfer
        Assert.Equal(3L * Block, cache.StoreBytes);
        Assert.Equal((2L, 1L, 1L), (Stat(cache, "blockFetches"), Stat(cache, "partialHits"), Stat(cache, "partialChunks")));
        Assert.Equal(0, Stat(cache, "memoryChunks")); // a partial chunk is not a memory-tier chunk
        Assert.False(cache.IsCached(table[1].Id));
    }

    [Fact]
    public async Task A_chunk_whose_every_block_arrived_is_verified_whole_and_cached_once()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);
        for (int b = Chunk / Block - 1; b >= 0; b--)
        {
            await ReadAsync(cache, table, 2, b * Block, Block);
        }

        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0, 10_000));
        Assert.Equal(Chunk, cache.StoreBytes); // every byte once
        Assert.Equal((0L, 1L), (Stat(cache, "partialChunks"), Stat(cache, "memoryChunks")));
        Assert.Empty(cache.Check([table[2]]).Missing); // on disk too: whole and checked against the id
        await ReadAsync(cache, table, 2, 0, Chunk);
        Assert.Equal(Chunk, cache.StoreBytes);
    }

    [Fact]
    public async Task A_sequential_read_of_a_partial_chunk_fetches_only_the_missing_blocks()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);
        await ReadAsync(cache, table, 0, 0, 100); // the header block first, as a loader's first READ
        Assert.Equal(Block, cache.StoreBytes);

        await ReadAsync(cache, table, 0, Block, Chunk - Block, sequential: true); // the stream goes on: the whole chunk, adopting the partial
        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0, 10_000));
        Assert.Equal(Chunk, cache.StoreBytes);
        Assert.Equal((0L, 1L), (Stat(cache, "partialChunks"), Stat(cache, "memoryChunks")));
        Assert.Empty(cache.Check([table[0]]).Missing);

        // Prefetch of another partial chunk adopts it the same way.
        await ReadAsync(cache, table, 3, 5 * Block, 10);
        cache.Prefetch(table[3], FetchPriority.Prefetch);
        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0 && cache.IsCached(table[3].Id), 10_000));
        Assert.Equal(2L * Chunk, cache.StoreBytes);
    }

    [Fact]
    public async Task A_damaged_block_fails_its_reads_and_the_others_still_read()
    {
        var (v, table) = await ImportedAsync();
        var key = table[1].Id.ObjectKey();
        var obj = new byte[Chunk + ChunkObject.HeaderSize];
        Assert.Equal(obj.Length, await _store.GetAsync(key, 0, obj));
        obj[ChunkObject.HeaderSize + (4 * Block) + 7] ^= 1; // block 4
        _store.Overwrite(key, obj);
        using var cache = Open(v);

        var ex = await Assert.ThrowsAsync<ChunkCorruptException>(async () => await ReadAsync(cache, table, 1, (4 * Block) + 1, 10));
        Assert.Contains("block 4", ex.Message, StringComparison.Ordinal);
        await ReadAsync(cache, table, 1, 5 * Block, Block); // block 5 is fine
        await ReadAsync(cache, table, 1, 0, 4 * Block);     // so are 0 to 3

        // The whole chunk is refused (the id does not match): never published, never cached.
        await Assert.ThrowsAsync<ChunkCorruptException>(async () => await ReadAsync(cache, table, 1, 0, Chunk, sequential: true));
        Assert.True(SpinWait.SpinUntil(() => cache.Busy == 0, 10_000));
        Assert.False(cache.IsCached(table[1].Id));
        Assert.Equal(0, Stat(cache, "memoryChunks"));
    }

    [Fact]
    public async Task A_row_with_other_block_hashes_is_never_served_from_a_partial_verified_against_another()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);
        await ReadAsync(cache, table, 1, 0, 10);

        // The same id and CRC32C, a forged hash for block 0: never the partial's bytes, and never different ones.
        var hashes = table[1].Blocks.Span.ToArray();
        hashes[0] ^= 0xFF;
        var forged = table[1] with { Blocks = new BlockHashes(Block, hashes) };
        using (var c = await cache.GetRangeAsync(forged, 0, 10, sequential: false))
        {
            // The whole-chunk way: verified by the id, so the bytes are the chunk's (the forged hash is never trusted).
            Assert.True(c.Data.Span.SequenceEqual(_data.AsSpan(Chunk, Chunk)));
        }
    }

    [Fact]
    public async Task A_version_1_row_is_read_whole()
    {
        var (v, table) = await ImportedAsync(blockSize: 0);
        Assert.False(table[0].HasBlocks);
        using var cache = Open(v);
        await ReadAsync(cache, table, 0, 100, 10);
        Assert.Equal(Chunk + ChunkObject.HeaderSize, cache.StoreBytes);
        Assert.Equal(0, Stat(cache, "blockFetches"));
    }

    [Fact]
    public async Task Partial_chunks_are_bounded_by_a_quarter_of_the_memory_tier()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v, memoryBuffers: 4); // room for 2 partials (at least 2, else a quarter)
        for (int round = 0; round < 3; round++)
        {
            for (int i = 0; i < 4; i++)
            {
                await ReadAsync(cache, table, i, ((round * 3) + i) * Block, 100);
                Assert.True(Stat(cache, "partialChunks") <= 2);
            }
        }

        Assert.True(cache.Memory.Allocated <= 4);
    }

    [Fact]
    public async Task Evict_drops_partial_chunks_so_the_next_read_is_cold()
    {
        var (v, table) = await ImportedAsync();
        using var cache = Open(v);
        await ReadAsync(cache, table, 2, 0, 10);
        cache.Evict([table[2].Id], disk: true);
        Assert.Equal(0, Stat(cache, "partialChunks"));
        await ReadAsync(cache, table, 2, 0, 10);
        Assert.Equal(2L * Block, cache.StoreBytes);
    }

    public void Dispose()
    {
        _store.Dispose();
        _dir.Dispose();
    }
}
