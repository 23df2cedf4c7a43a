using System.Buffers.Binary;
using LazyModelFs.Check;
using LazyModelFs.Chunks;
using LazyModelFs.Gc;
using LazyModelFs.Import;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Gc;

/// <summary>
/// <see cref="GarbageCollector"/> (lmfs gc) over real engine pairs: SQLite + local directory and
/// Redis + s3rver. "Old" objects are made by running gc on a clock two days ahead, so the default
/// 24 h grace passes over every object, including ones an import has just stored.
/// </summary>
public abstract class GarbageCollectorContract : IDisposable
{
    private const int ChunkSize = 1 << 20;

    protected TempDir Dir { get; } = new("lmfs-gc");

    protected abstract (string Meta, string Storage, StorageOptions Options) NewVolume();

    /// <summary>Writes a reference count straight into the engine's storage (null removes it), as damage or a bug would leave it.</summary>
    protected abstract Task SetRawCountAsync(string meta, ChunkId id, long? count);

    private sealed class Later(TimeSpan by) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => System.GetUtcNow() + by;
    }

    private static GcOptions TwoDaysOn(bool dryRun = false) => new() { DryRun = dryRun, Time = new Later(TimeSpan.FromDays(2)) };

    private async Task<(Volume V, string Meta)> FormatAsync()
    {
        var (meta, storage, opts) = NewVolume();
        await Volume.FormatAsync(meta, storage, opts, ChunkSize, "none", "test");
        return (await Volume.OpenAsync(meta, opts), meta);
    }

    private async Task<Volume> ReopenAsync(string meta) => await Volume.OpenAsync(meta, NewVolume().Options);

    private string Source(string name, int size, int seed) => Dir.WriteRandom(name, size, seed);

    private static Task ImportAsync(Volume v, string src, string dest) => new Importer(v, new ImportOptions()).RunAsync([src], dest);

    private static async Task<byte[]> ReadAsync(Volume v, string path)
    {
        var n = await v.Namespace.ResolveAsync(path) ?? throw new InvalidOperationException(path);
        using var ms = new MemoryStream();
        await FileReader.CopyToAsync(v, n, ms);
        return ms.ToArray();
    }

    private static async Task<List<ChunkId>> IdsAsync(Volume v, string path)
    {
        var n = await v.Namespace.ResolveAsync(path) ?? throw new InvalidOperationException(path);
        return (await v.Meta.GetChunkTableAsync(n.Ino, ChunkSize))!.Entries.Select(e => e.Id).ToList();
    }

    private static async Task AssertHealthyAsync(Volume v)
    {
        var check = await new VolumeCheck(v, new CheckOptions { Verify = true }).RunAsync("/");
        Assert.True(check.Healthy, string.Join("; ", check.Damaged.SelectMany(d => d.Chunks.Select(c => $"{d.Path} chunk {c.Index}: {c.Detail}"))));
    }

    /// <summary>/keep/a.bin (3 chunks and a bit) stays; /gone/b.bin (2 chunks) is imported and removed; two objects gc did not write.</summary>
    private async Task<(Volume V, string Meta, string A, List<ChunkId> Gone)> PopulatedAsync()
    {
        var (v, meta) = await FormatAsync();
        string a = Source("a.bin", (3 * ChunkSize) + 100, 1);
        await ImportAsync(v, a, "/keep/a.bin");
        await ImportAsync(v, Source("b.bin", (2 * ChunkSize) - 7, 2), "/gone/b.bin");
        var gone = await IdsAsync(v, "/gone/b.bin");
        await v.Namespace.RemoveAsync("/gone", recursive: true);
        await v.Store.PutAsync("chunks/README", "not a chunk"u8.ToArray());
        await v.Store.PutAsync("backup/meta.db", "someone else's"u8.ToArray());
        return (v, meta, a, gone);
    }

    [Fact]
    public async Task Gc_deletes_old_unreferenced_objects_and_keeps_referenced_ones_and_what_it_did_not_write()
    {
        var (v, _, a, gone) = await PopulatedAsync();
        using var _v = v;
        var s = await new GarbageCollector(v, TwoDaysOn()).RunAsync();
        Assert.Equal((4L, 2L, 2L, 0L), (s.ReferencedObjects, s.UnreferencedObjects, s.FreedObjects, s.YoungObjects));
        Assert.Equal((2L * ChunkSize) - 7 + (2 * ChunkObject.HeaderSize), s.FreedBytes);
        Assert.Equal((3L * ChunkSize) + 100 + (4 * ChunkObject.HeaderSize), s.ReferencedBytes);
        Assert.Equal(1, s.OtherObjects);
        Assert.Equal(0, s.RefcountsFixed);
        foreach (var id in gone)
        {
            Assert.Null(await v.Store.HeadAsync(id.ObjectKey()));
        }

        Assert.NotNull(await v.Store.HeadAsync("chunks/README"));
        Assert.NotNull(await v.Store.HeadAsync("backup/meta.db"));
        Assert.Equal(File.ReadAllBytes(a), await ReadAsync(v, "/keep/a.bin"));
        await AssertHealthyAsync(v);

        // Nothing is left to free.
        var again = await new GarbageCollector(v, TwoDaysOn()).RunAsync();
        Assert.Equal((4L, 0L, 0L), (again.ReferencedObjects, again.UnreferencedObjects, again.FreedObjects));
    }

    [Fact]
    public async Task Access_profiles_of_contents_no_file_has_are_removed_and_a_live_files_are_kept()
    {
        var (v, meta) = await FormatAsync();
        using var _v = v;
        await ImportAsync(v, Source("a.bin", (3 * ChunkSize) + 100, 1), "/keep/a.bin");
        await ImportAsync(v, Source("b.bin", 2 * ChunkSize, 2), "/gone/b.bin");
        var keep = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/keep/a.bin"))!.Ino, ChunkSize))!;
        var gone = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/gone/b.bin"))!.Ino, ChunkSize))!;
        await v.Meta.PutProfileAsync(keep.ContentKey, "python3", new AccessProfile("python3", DateTimeOffset.UtcNow, keep.Count, [2, 0]).Encode());
        await v.Meta.PutProfileAsync(gone.ContentKey, "python3", new AccessProfile("python3", DateTimeOffset.UtcNow, gone.Count, [1]).Encode());
        await v.Meta.PutProfileAsync(gone.ContentKey, "vllm", new AccessProfile("vllm", DateTimeOffset.UtcNow, gone.Count, [0]).Encode());
        await v.Namespace.RemoveAsync("/gone", recursive: true);

        var dry = await new GarbageCollector(v, TwoDaysOn(dryRun: true)).RunAsync();
        Assert.Equal(1, dry.ProfilesRemoved);
        Assert.Equal(2, (await v.Meta.GetProfilesAsync(gone.ContentKey)).Count);

        var s = await new GarbageCollector(v, TwoDaysOn()).RunAsync();
        Assert.Equal(1, s.ProfilesRemoved);
        Assert.Empty(await v.Meta.GetProfilesAsync(gone.ContentKey));
        Assert.Single(await v.Meta.GetProfilesAsync(keep.ContentKey));
        Assert.Equal([keep.ContentKey], await v.Meta.ListProfiledAsync());
        Assert.Equal(0, (await new GarbageCollector(v, TwoDaysOn()).RunAsync()).ProfilesRemoved);
    }

    [Fact]
    public async Task A_dry_run_counts_what_it_would_free_and_deletes_nothing()
    {
        var (v, _, _, gone) = await PopulatedAsync();
        using var _v = v;
        var s = await new GarbageCollector(v, TwoDaysOn(dryRun: true)).RunAsync();
        Assert.True(s.DryRun);
        Assert.Equal((2L, 2L), (s.UnreferencedObjects, s.FreedObjects));
        foreach (var id in gone)
        {
            Assert.NotNull(await v.Store.HeadAsync(id.ObjectKey()));
        }
    }

    [Fact]
    public async Task The_grace_period_keeps_objects_younger_than_it()
    {
        var (v, _, _, gone) = await PopulatedAsync();
        using var _v = v;
        var s = await new GarbageCollector(v, new GcOptions()).RunAsync();
        Assert.Equal((2L, 0L, 2L), (s.UnreferencedObjects, s.FreedObjects, s.YoungObjects));
        foreach (var id in gone)
        {
            Assert.NotNull(await v.Store.HeadAsync(id.ObjectKey()));
        }

        // A grace of 0 lets them go on today's clock.
        Assert.Equal(2, (await new GarbageCollector(v, new GcOptions { Grace = TimeSpan.Zero }).RunAsync()).FreedObjects);
    }

    [Fact]
    public async Task Drifted_reference_counts_are_set_back_to_the_tables_in_both_directions()
    {
        var (v, meta, a, _) = await PopulatedAsync();
        using var _v = v;
        var ids = await IdsAsync(v, "/keep/a.bin");
        var ghost = ChunkId.Of("no table references this"u8);
        await SetRawCountAsync(meta, ids[0], 7);   // too high
        await SetRawCountAsync(meta, ids[1], null); // lost: 0 while a table references it
        await SetRawCountAsync(meta, ghost, 3);     // a count with no table at all

        var dry = await new GarbageCollector(v, TwoDaysOn(dryRun: true)).RunAsync();
        Assert.Equal(3, dry.RefcountsFixed);
        Assert.Equal(7, await v.Meta.GetChunkRefCountAsync(ids[0]));

        var s = await new GarbageCollector(v, TwoDaysOn()).RunAsync();
        Assert.True(s.RefcountsChecked);
        Assert.Equal(3, s.RefcountsFixed);
        Assert.Equal(new long[] { 1, 1, 1, 1, 0 }, await Task.WhenAll(ids.Append(ghost).Select(id => v.Meta.GetChunkRefCountAsync(id))));

        // The chunk whose count was lost is referenced by its table, so it was not deleted.
        Assert.Equal(4, s.ReferencedObjects);
        Assert.Equal(File.ReadAllBytes(a), await ReadAsync(v, "/keep/a.bin"));
        await AssertHealthyAsync(v);
        Assert.Equal(0, (await new GarbageCollector(v, TwoDaysOn()).RunAsync()).RefcountsFixed);
    }

    [Fact]
    public async Task An_import_that_found_an_old_orphan_by_HEAD_stores_it_again_when_gc_deletes_it_before_the_commit()
    {
        // The window the grace period does not cover: b.bin's objects are old and unreferenced (its
        // file was removed), the same bytes are imported again and deduplicated against them by
        // HEAD, and gc deletes them between that HEAD and the import's commit.
        var (v, meta, _, _) = await PopulatedAsync();
        string b = Source("b.bin", (2 * ChunkSize) - 7, 2);
        using var gcVolume = await ReopenAsync(meta);
        var store = new FaultyObjectStore(v.Store);
        using var w = Volume.Create(v.Meta, v.Settings, store);
        int ran = 0;
        GcSummary? during = null;
        store.AfterHead = async (key, size) =>
        {
            if (size is not null && key.StartsWith("chunks/", StringComparison.Ordinal) && Interlocked.Exchange(ref ran, 1) == 0)
            {
                during = await new GarbageCollector(gcVolume, TwoDaysOn()).RunAsync();
            }
        };

        var summary = await new Importer(w, new ImportOptions { Concurrency = 1 }).RunAsync([b], "/again/b.bin");
        Assert.Equal(2, during!.FreedObjects);
        Assert.Equal(1, summary.DedupChunks); // the first chunk was found by HEAD, the second stored (gone by its HEAD)
        Assert.Equal(File.ReadAllBytes(b), await ReadAsync(w, "/again/b.bin"));
        await AssertHealthyAsync(w);
    }

    [Fact]
    public async Task A_delete_the_store_refuses_is_counted_failed_and_keeps_its_claim_so_no_other_gc_or_commit_takes_the_chunk()
    {
        var (v, _, _, gone) = await PopulatedAsync();
        using var _v = v;
        var store = new FaultyObjectStore(v.Store) { OnDelete = _ => new LmfsException("the store refused the DELETE (test)", "none", 5) };
        using var failing = Volume.Create(v.Meta, v.Settings, store);
        var s = await new GarbageCollector(failing, TwoDaysOn()).RunAsync();
        Assert.Equal((0L, 2L), (s.FreedObjects, s.FailedDeletes)); // both tried, neither deleted, the run went on
        foreach (var id in gone)
        {
            Assert.NotNull(await v.Store.HeadAsync(id.ObjectKey()));
        }

        // The claims stay (a DELETE that failed on our side may still land): another gc run keeps the objects.
        var again = await new GarbageCollector(v, TwoDaysOn()).RunAsync();
        Assert.Equal((0L, 2L), (again.FreedObjects, again.Rereferenced));
        foreach (var id in gone)
        {
            Assert.NotNull(await v.Store.HeadAsync(id.ObjectKey()));
        }
    }

    [Fact]
    public async Task A_commit_waits_while_gc_holds_a_claim_on_one_of_its_chunks_and_stores_the_deleted_object_again()
    {
        var (v, meta, _, gone) = await PopulatedAsync();
        using var _v = v;
        string b = Source("b.bin", (2 * ChunkSize) - 7, 2);
        Assert.True(await v.Meta.ClaimUnreferencedChunkAsync(gone[0], "test-gc"));
        var importer = new Importer(v, new ImportOptions());
        var import = importer.RunAsync([b], "/again/b.bin");
        while (importer.Progress.ChunksDone < 2 && !import.IsCompleted)
        {
            await Task.Delay(20);
        }

        // Every chunk is stored; the commit is refused while the claim holds, however long that is.
        await Task.Delay(300);
        Assert.False(import.IsCompleted, import.Exception?.ToString());
        Assert.Null(await v.Namespace.ResolveAsync("/again/b.bin"));

        // gc's delete lands, then its claim goes: the commit goes through and the object is stored again.
        await v.Store.DeleteAsync(gone[0].ObjectKey());
        await v.Meta.ReleaseChunkClaimAsync(gone[0], "test-gc");
        await import;
        Assert.Equal(File.ReadAllBytes(b), await ReadAsync(v, "/again/b.bin"));
        await AssertHealthyAsync(v);
    }

    [Fact]
    public async Task Gc_running_again_and_again_during_imports_robs_no_file()
    {
        // Old orphans to deduplicate against (the removed copies), fresh chunks of the running import,
        // and chunks shared between files: gc on a clock two days ahead may delete any unreferenced one.
        var (v, meta) = await FormatAsync();
        using var _v = v;
        var sources = Enumerable.Range(0, 12).Select(i => Source($"race/f{i}.bin", (ChunkSize * (1 + (i % 3))) + (i * 1000), 100 + (i % 6))).ToList();
        await new Importer(v, new ImportOptions()).RunAsync([.. sources[..6], Source("race/only-old.bin", ChunkSize + 3, 99)], "/old/");
        await v.Namespace.RemoveAsync("/old", recursive: true);

        using var gcVolume = await ReopenAsync(meta);
        var import = Task.Run(async () =>
        {
            using var iv = await ReopenAsync(meta);
            await new Importer(iv, new ImportOptions { Concurrency = 4 }).RunAsync(sources, "/new/");
            await new Importer(iv, new ImportOptions { Concurrency = 4 }).RunAsync(sources[..6], "/second/");
        });
        long freed = 0;
        int runs = 0;
        while (!import.IsCompleted || runs == 0)
        {
            freed += (await new GarbageCollector(gcVolume, TwoDaysOn() with { Concurrency = 4 }).RunAsync()).FreedObjects;
            runs++;
        }

        await import;
        Assert.True(freed >= 2, "gc did not free only-old.bin's objects, which nothing imports again");
        for (int i = 0; i < sources.Count; i++)
        {
            Assert.Equal(File.ReadAllBytes(sources[i]), await ReadAsync(v, $"/new/f{i}.bin"));
        }

        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(File.ReadAllBytes(sources[i]), await ReadAsync(v, $"/second/f{i}.bin"));
        }

        await AssertHealthyAsync(v);
        var after = await new GarbageCollector(gcVolume, TwoDaysOn()).RunAsync();
        Assert.Equal((0L, 0L), (after.RefcountsFixed, after.FreedObjects));
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            Dir.Dispose();
        }
    }
}

public sealed class SqliteLocalGcTests : GarbageCollectorContract
{
    [Fact]
    public async Task A_chunk_table_that_does_not_decode_stops_gc_before_it_deletes_anything()
    {
        string id = Guid.NewGuid().ToString("N");
        string meta = $"sqlite://{Dir[id + "/meta.db"]}";
        await Volume.FormatAsync(meta, $"file://{Dir[id + "/objects"]}", new StorageOptions(), 1 << 20, "none", "test");
        using var v = await Volume.OpenAsync(meta);
        string a = Dir["bad-a.bin"];
        File.WriteAllBytes(a, new byte[5000]);
        await new Importer(v, new ImportOptions()).RunAsync([a], "/a.bin");
        await new Importer(v, new ImportOptions()).RunAsync([Dir.WriteRandom("bad-b.bin", 3000)], "/b.bin");
        await v.Namespace.RemoveAsync("/b.bin", recursive: false);
        ulong ino = (await v.Namespace.ResolveAsync("/a.bin"))!.Ino;
        using (var kv = SqliteKv.Open(Dir[id + "/meta.db"], create: false))
        {
            var key = new byte[9];
            key[0] = (byte)'C';
            BinaryPrimitives.WriteUInt64BigEndian(key.AsSpan(1), ino);
            kv.Write(tx =>
            {
                tx.Set(key, "garbage"u8.ToArray());
                return 0;
            });
        }

        var ex = await Assert.ThrowsAsync<Util.LmfsException>(() => new GarbageCollector(v, new GcOptions { Grace = TimeSpan.Zero }).RunAsync());
        Assert.Equal(3, ex.ExitCode);
        Assert.Contains($"the chunk table of inode {ino} does not decode", ex.Message, StringComparison.Ordinal);
        Assert.Contains("lmfs fsck", ex.Hint, StringComparison.Ordinal);
        Assert.Equal(2, Directory.GetFiles(Dir[id + "/objects"], "*", SearchOption.AllDirectories).Length); // b.bin's orphan is still there
    }

    protected override (string, string, StorageOptions) NewVolume() => RedisAndS3.NewEmbeddedVolume(Dir);

    protected override Task SetRawCountAsync(string meta, ChunkId id, long? count)
    {
        using var kv = SqliteKv.Open(new Uri(meta).AbsolutePath, create: false);
        kv.Write(tx =>
        {
            var key = new byte[1 + ChunkId.Size];
            key[0] = (byte)'R';
            id.WriteTo(key.AsSpan(1));
            if (count is { } n)
            {
                var b = new byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(b, n);
                tx.Set(key, b);
            }
            else
            {
                tx.Delete(key);
            }

            return 0;
        });
        return Task.CompletedTask;
    }
}

public sealed class RedisS3GcTests(RedisAndS3 servers) : GarbageCollectorContract, IClassFixture<RedisAndS3>
{
    protected override (string, string, StorageOptions) NewVolume() => servers.NewVolume();

    protected override async Task SetRawCountAsync(string meta, ChunkId id, long? count)
    {
        string volume = meta[(meta.IndexOf("volume=", StringComparison.Ordinal) + 7)..];
        using var conn = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{servers.Redis.Port}");
        var db = conn.GetDatabase(0);
        string refs = $"lmfs{{{volume}}}:refs";
        if (count is { } n)
        {
            await db.HashSetAsync(refs, id.ToBytes(), n);
        }
        else
        {
            await db.HashDeleteAsync(refs, id.ToBytes());
        }
    }
}
