using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests.Faults;

/// <summary>The disk cache when its files are cut short or its directory is shared by caches evicting at once.</summary>
public sealed class CacheFaultTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private readonly TempDir _dir = new("lmfs-cfault");

    private static (ChunkEntry Entry, byte[] Plain) NewChunk(int seed, int size = Chunk)
    {
        var plain = TestData.Random(size, seed);
        return (new ChunkEntry(ChunkId.Of(plain), size, size + ChunkObject.HeaderSize, ChunkCodec.None, Crc32C.Compute(plain)), plain);
    }

    private static string FileOf(string root, ChunkId id)
    {
        string h = id.ToHex();
        return Path.Combine(root, h[..2], h[2..4], h);
    }

    [Fact]
    public void A_truncated_or_extended_cache_file_is_a_miss_and_is_removed()
    {
        var cache = new DiskCache(new DiskCacheOptions { Directory = _dir["c"], FreeSpaceRatio = 0 });
        var (e, plain) = NewChunk(1);
        cache.Write(e, plain);
        string file = FileOf(cache.Root, e.Id);
        var buf = new byte[Chunk + 8192];
        Assert.True(cache.TryRead(e, buf));

        using (var f = File.OpenWrite(file))
        {
            f.SetLength(Chunk / 3); // a crash or a full disk cut it short
        }

        Assert.False(cache.TryRead(e, buf));
        Assert.False(File.Exists(file));
        Assert.Equal(1, cache.Corrupt);

        cache.Write(e, plain);
        File.AppendAllText(file, "trailing garbage");
        Assert.False(cache.TryRead(e, buf));
        Assert.Equal(2, cache.Corrupt);
    }

    [Fact]
    public async Task Two_caches_sharing_a_directory_evict_at_once_and_keep_only_whole_files_under_the_limit()
    {
        const int perWriter = 24;
        long limit = 10L * Chunk;
        var a = new DiskCache(new DiskCacheOptions { Directory = _dir["shared"], MaxBytes = limit, FreeSpaceRatio = 0 });
        var b = new DiskCache(new DiskCacheOptions { Directory = _dir["shared"], MaxBytes = limit, FreeSpaceRatio = 0 });
        var chunks = Enumerable.Range(0, 2 * perWriter).Select(i => NewChunk(100 + i)).ToArray();

        // Two "processes" write and evict at the same time (each write past the limit evicts).
        await Task.WhenAll(
            Task.Run(() =>
            {
                for (int i = 0; i < perWriter; i++)
                {
                    a.Write(chunks[i].Entry, chunks[i].Plain);
                }
            }),
            Task.Run(() =>
            {
                for (int i = perWriter; i < 2 * perWriter; i++)
                {
                    b.Write(chunks[i].Entry, chunks[i].Plain);
                }
            }));
        a.Evict();

        var files = Directory.EnumerateFiles(a.Root, "*", SearchOption.AllDirectories).ToList();
        Assert.DoesNotContain(files, f => f.Contains(".tmp-", StringComparison.Ordinal)); // no temporary left behind
        Assert.True(files.Sum(f => new FileInfo(f).Length) <= limit, $"{files.Count} files over the {limit}-byte limit");
        Assert.NotEmpty(files);

        // Whatever survived is whole: both caches read it back through the CRC check.
        var buf = new byte[Chunk + 8192];
        foreach (var (entry, plain) in chunks.Where(c => File.Exists(FileOf(a.Root, c.Entry.Id))))
        {
            Assert.True(b.TryRead(entry, buf));
            Assert.True(buf.AsSpan(0, plain.Length).SequenceEqual(plain));
        }

        Assert.Equal(0, a.Corrupt + b.Corrupt);
    }

    public void Dispose() => _dir.Dispose();
}
