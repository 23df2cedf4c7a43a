using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// Whole-file views (DiskCache.Views.cs): built only from chunks the cache holds and checks, whole or
/// absent, refused when they cannot be trusted, evicted with the chunk files, and found again after a restart.
/// </summary>
public sealed class FileViewTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private readonly TempDir _dir = new("lmfs-views");

    /// <summary>A file of 5 chunks (the last one short) and its bytes; with <paramref name="cache"/>, its chunks written there.</summary>
    private static (ChunkTable Table, byte[] Bytes) File5(DiskCache? cache, int seed = 1)
    {
        byte[] bytes = TestData.Random((4 * Chunk) + 12_345, seed);
        var entries = new List<ChunkEntry>();
        for (int at = 0; at < bytes.Length; at += Chunk)
        {
            var plain = bytes.AsSpan(at, Math.Min(Chunk, bytes.Length - at));
            var e = new ChunkEntry(ChunkId.Of(plain), plain.Length, plain.Length + ChunkObject.HeaderSize, ChunkCodec.None, Crc32C.Compute(plain));
            entries.Add(e);
            cache?.Write(e, plain);
        }

        return (new ChunkTable(entries, Chunk), bytes);
    }

    private DiskCache NewCache(long max = 1L << 30, string name = "cache") => new(new DiskCacheOptions { Directory = _dir[name], MaxBytes = max, FreeSpaceRatio = 0 });

    private static byte[] ReadAll(Microsoft.Win32.SafeHandles.SafeFileHandle h)
    {
        var b = new byte[RandomAccess.GetLength(h)];
        Assert.Equal(b.Length, RandomAccess.Read(h, b, 0));
        return b;
    }

    [Fact]
    public void A_view_holds_the_file_bytes_and_is_found_again_after_a_restart()
    {
        var cache = NewCache();
        var (table, bytes) = File5(cache);
        Assert.True(cache.HoldsAll(table));
        Assert.False(cache.HasView(table));
        Assert.Null(cache.OpenView(table));

        Assert.True(cache.BuildView(table, CancellationToken.None));
        Assert.True(cache.HasView(table));
        using (var h = cache.OpenView(table))
        {
            Assert.NotNull(h);
            Assert.Equal(bytes, ReadAll(h));
        }

        string view = Directory.EnumerateFiles(cache.ViewRoot).Single();
        Assert.Equal(TrustedPath.PrivateFile, File.GetUnixFileMode(view));
        Assert.Equal(bytes.Length, cache.Bytes); // the view holds the bytes once: its chunk files are gone
        Assert.Equal(0, cache.Count);
        Assert.True(cache.HoldsAll(table)); // ... and its chunks are read from it
        AssertChunksRead(cache, table, bytes);

        var again = NewCache(); // a restart, or another mount sharing the directory
        Assert.Equal(1, again.ViewCount);
        Assert.Equal(bytes.Length, again.Bytes);
        Assert.False(again.Contains(table[0].Id)); // where the view holds them is learnt from the table
        Assert.True(again.Locate(table));
        AssertChunksRead(again, table, bytes);
        using var h2 = again.OpenView(table);
        Assert.Equal(bytes, ReadAll(h2!));

        // Another file, or the same bytes in other chunks, has another view.
        var (other, _) = File5(null, seed: 2);
        Assert.NotEqual(DiskCache.ViewKey(table), DiskCache.ViewKey(other));
        Assert.Null(again.OpenView(other));
    }

    private static void AssertChunksRead(DiskCache cache, ChunkTable table, byte[] bytes)
    {
        var buf = new byte[Chunk + 4096];
        long at = 0;
        foreach (var e in table.Entries)
        {
            Assert.True(cache.TryRead(e, buf), $"chunk at {at} not read from the view");
            Assert.True(buf.AsSpan(0, e.PlainLength).SequenceEqual(bytes.AsSpan((int)at, e.PlainLength)));
            at += e.PlainLength;
        }
    }

    [Fact]
    public void A_damaged_view_is_discarded_when_a_chunk_read_from_it_does_not_check()
    {
        var cache = NewCache();
        var (table, bytes) = File5(cache);
        Assert.True(cache.BuildView(table, CancellationToken.None));
        string view = Directory.EnumerateFiles(cache.ViewRoot).Single();
        using (var f = new FileStream(view, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = (2L * Chunk) + 77;
            int b = f.ReadByte();
            f.Position--;
            f.WriteByte((byte)(b ^ 0x40));
        }

        var buf = new byte[Chunk + 4096];
        Assert.True(cache.TryRead(table[1], buf)); // the chunks before are fine
        Assert.False(cache.TryRead(table[2], buf)); // this one's CRC32C differs: the view goes
        Assert.True(cache.Corrupt >= 1);
        Assert.False(File.Exists(view));
        Assert.False(cache.Contains(table[0].Id));
        Assert.Null(cache.OpenView(table));
        Assert.Equal(0, cache.Bytes);
        Assert.NotNull(bytes);
    }

    [Fact]
    public void No_view_is_built_from_a_missing_or_damaged_chunk_and_nothing_is_left_behind()
    {
        var cache = NewCache();
        var (table, _) = File5(cache);
        Assert.True(cache.Remove(table[2].Id));
        Assert.False(cache.HoldsAll(table));
        Assert.False(cache.BuildView(table, CancellationToken.None));
        Assert.Empty(Directory.EnumerateFileSystemEntries(cache.ViewRoot));

        var (table2, bytes2) = File5(cache, seed: 3);
        string chunkFile = Directory.EnumerateFiles(cache.Root, table2[1].Id.ToHex(), SearchOption.AllDirectories).Single();
        var damaged = File.ReadAllBytes(chunkFile);
        damaged[100] ^= 1;
        File.WriteAllBytes(chunkFile, damaged);
        Assert.False(cache.BuildView(table2, CancellationToken.None)); // the CRC32C check of every disk-tier read catches it
        Assert.Empty(Directory.EnumerateFileSystemEntries(cache.ViewRoot));
        Assert.True(cache.Corrupt >= 1);

        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var (table3, _) = File5(cache, seed: 4);
        Assert.False(cache.BuildView(table3, cts.Token));
        Assert.Empty(Directory.EnumerateFileSystemEntries(cache.ViewRoot));
        Assert.NotNull(bytes2);
    }

    [Fact]
    public void A_view_of_the_wrong_length_or_writable_by_others_is_discarded_unread()
    {
        var cache = NewCache();
        var (table, _) = File5(cache);
        Assert.True(cache.BuildView(table, CancellationToken.None));
        string view = Directory.EnumerateFiles(cache.ViewRoot).Single();

        File.SetUnixFileMode(view, (UnixFileMode)0x1B6); // 0666
        Assert.Null(cache.OpenView(table));
        Assert.False(File.Exists(view));
        Assert.False(cache.HoldsAll(table)); // the view held its chunks: they are fetched again

        File5(cache); // fetched again
        Assert.True(cache.BuildView(table, CancellationToken.None));
        using (var f = new FileStream(view, FileMode.Open, FileAccess.Write))
        {
            f.SetLength(f.Length - 1); // cut short
        }

        Assert.Null(cache.OpenView(table));
        Assert.False(File.Exists(view));
        Assert.Equal(0, cache.ViewCount);
    }

    [RootFact]
    public void A_view_planted_by_another_user_is_discarded_unread()
    {
        var cache = NewCache();
        var (table, _) = File5(cache);
        Assert.True(cache.BuildView(table, CancellationToken.None));
        string view = Directory.EnumerateFiles(cache.ViewRoot).Single();
        Proc.Run("chown", "65534:65534", view);
        Assert.Null(cache.OpenView(table));
        Assert.False(File.Exists(view));
    }

    [Fact]
    public void Views_are_evicted_with_the_chunk_files_oldest_first_and_removed_on_request()
    {
        var cache = NewCache(max: 10L * Chunk);
        var (a, _) = File5(cache, seed: 5);
        Assert.True(cache.BuildView(a, CancellationToken.None)); // about 4 MiB: the view, its chunk files gone
        using (cache.OpenView(a))
        {
        }

        var (b, _) = File5(cache, seed: 6);
        Assert.True(cache.BuildView(b, CancellationToken.None)); // about 8 MiB
        Assert.True(cache.HasView(a));
        var (c, _) = File5(cache, seed: 8); // its chunk files pass the limit: down to 90 % of it, oldest first
        Assert.True(cache.Bytes <= 10L * Chunk / 10 * 9, $"{cache.Bytes} bytes cached");
        Assert.False(cache.HasView(a));
        Assert.False(cache.HoldsAll(a));
        Assert.True(cache.HasView(b));
        Assert.True(cache.HoldsAll(c));

        Assert.True(cache.RemoveView(b));
        Assert.False(cache.HasView(b));
        Assert.Null(cache.OpenView(b));

        // A view larger than half the cache is not built: it would push out the chunks of everything else.
        var small = NewCache(max: 8L * Chunk, name: "small");
        var (tooBig, _) = File5(small, seed: 7);
        Assert.False(small.BuildView(tooBig, CancellationToken.None));
    }

    public void Dispose() => _dir.Dispose();
}
