using LazyModelFs.Read;
using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Meta;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Import;

/// <summary>
/// Import → read round trips and the import rules, over any engine pair. The in-memory subclass
/// runs them on the twins; the integration subclasses on SQLite + local directory and Redis + s3rver.
/// </summary>
public abstract class ImportContract : IDisposable
{
    protected const int ChunkSize = 1 << 20;

    protected TempDir Dir { get; } = new("lmfs-import");

    /// <summary>Metadata URL and storage URL of a fresh volume, and storage options.</summary>
    protected abstract (string Meta, string Storage, StorageOptions Options) NewVolume();

    protected virtual async Task<Volume> FormatAsync(string compression = "none")
    {
        var (meta, storage, opts) = NewVolume();
        await Volume.FormatAsync(meta, storage, opts, ChunkSize, compression, "test");
        return await Volume.OpenAsync(meta, opts);
    }

    protected string WriteSource(string name, int size, int seed) => Dir.WriteRandom(name, size, seed);

    protected static async Task<byte[]> ReadAsync(Volume v, string path)
    {
        var n = await v.Namespace.ResolveAsync(path) ?? throw new InvalidOperationException(path + " missing");
        using var ms = new MemoryStream();
        await FileReader.CopyToAsync(v, n, ms);
        return ms.ToArray();
    }

    protected static async Task<int> CountObjectsAsync(IObjectStore s)
    {
        int n = 0;
        await foreach (var _ in s.ListAsync("chunks/"))
        {
            n++;
        }

        return n;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(ChunkSize - 1)]
    [InlineData(ChunkSize)]
    [InlineData(ChunkSize + 1)]
    [InlineData((3 * ChunkSize) + 12345)]
    public async Task Import_then_read_round_trips_bit_for_bit(int size)
    {
        using var v = await FormatAsync();
        string src = WriteSource($"f{size}.bin", size, size);
        var summary = await new Importer(v, new ImportOptions()).RunAsync([src], "/m/file.bin");
        Assert.Equal(1, summary.Files);
        Assert.Equal(size, summary.Bytes);
        Assert.Equal(File.ReadAllBytes(src), await ReadAsync(v, "/m/file.bin"));
        var node = await v.Namespace.ResolveAsync("/m/file.bin");
        Assert.Equal((ulong)size, node!.Size);
        var table = await v.Meta.GetChunkTableAsync(node.Ino, ChunkSize);
        Assert.Equal((size + ChunkSize - 1) / ChunkSize, table!.Count);
        Assert.All(table.Entries, e => Assert.Equal(ChunkCodec.None, e.Codec));
    }

    [Fact]
    public async Task Importing_the_same_bytes_again_stores_no_new_objects()
    {
        using var v = await FormatAsync();
        string src = WriteSource("a.bin", (2 * ChunkSize) + 7, 1);
        await new Importer(v, new ImportOptions()).RunAsync([src], "/one/a.bin");
        int objects = await CountObjectsAsync(v.Store);
        Assert.Equal(3, objects);

        // Same content under another name: every chunk deduplicated, nothing uploaded.
        var again = await new Importer(v, new ImportOptions()).RunAsync([src], "/two/a.bin");
        Assert.Equal(3, again.DedupChunks);
        Assert.Equal(0, again.UploadedBytes);
        Assert.Equal(objects, await CountObjectsAsync(v.Store));

        // Same content to the same place: an unchanged file, skipped.
        var same = await new Importer(v, new ImportOptions()).RunAsync([src], "/one/a.bin");
        Assert.Equal((0L, 1L), (same.Files, same.UnchangedFiles));
        Assert.Equal(2, await v.Meta.GetChunkRefCountAsync((await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/one/a.bin"))!.Ino, ChunkSize))![0].Id));
    }

    [Fact]
    public async Task Repeated_chunks_within_one_file_are_stored_once()
    {
        using var v = await FormatAsync();
        var block = new byte[ChunkSize];
        new Random(3).NextBytes(block);
        string src = Dir["rep.bin"];
        File.WriteAllBytes(src, [.. block, .. block, .. block, .. block.AsSpan(0, 10)]);
        var s = await new Importer(v, new ImportOptions()).RunAsync([src], "/rep.bin");
        Assert.Equal(4, s.Chunks);
        Assert.Equal(2, s.DedupChunks);
        Assert.Equal(2, await CountObjectsAsync(v.Store));
        Assert.Equal(File.ReadAllBytes(src), await ReadAsync(v, "/rep.bin"));
    }

    [Fact]
    public async Task Zstd_volume_compresses_text_round_trips_and_keeps_random_bytes_plain()
    {
        using var v = await FormatAsync("zstd");
        string text = Dir["config.json"];
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("{\"hidden_size\": 4096, \"layers\": 32}\n", 80_000)));
        string rnd = WriteSource("weights.bin", ChunkSize + 99, 4);
        await new Importer(v, new ImportOptions()).RunAsync([text, rnd], "/m/");
        Assert.Equal(File.ReadAllBytes(text), await ReadAsync(v, "/m/config.json"));
        Assert.Equal(File.ReadAllBytes(rnd), await ReadAsync(v, "/m/weights.bin"));
        var tt = await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/m/config.json"))!.Ino, ChunkSize);
        Assert.All(tt!.Entries, e => Assert.Equal(ChunkCodec.Zstd, e.Codec));
        Assert.True(tt.StoredSize < tt.PlainSize / 10);
        var rt = await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/m/weights.bin"))!.Ino, ChunkSize);
        Assert.All(rt!.Entries, e => Assert.Equal(ChunkCodec.None, e.Codec));
    }

    [Fact]
    public async Task A_corrupted_object_is_detected_never_returned()
    {
        using var v = await FormatAsync();
        string src = WriteSource("c.bin", ChunkSize + 5, 5);
        await new Importer(v, new ImportOptions()).RunAsync([src], "/c.bin");
        var table = await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/c.bin"))!.Ino, ChunkSize);
        string key = table![0].Id.ObjectKey();
        var obj = new byte[table[0].StoredLength];
        await v.Store.GetAsync(key, 0, obj);
        obj[5000] ^= 0x40; // one flipped bit in the payload
        await v.Store.PutAsync(key, obj);
        var ex = await Assert.ThrowsAsync<ChunkCorruptException>(() => ReadAsync(v, "/c.bin"));
        Assert.Contains(table[0].Id.ToHex(), ex.Message, StringComparison.Ordinal);

        await v.Store.PutAsync(key, obj.AsMemory(0, 100)); // truncated
        await Assert.ThrowsAsync<ChunkCorruptException>(() => ReadAsync(v, "/c.bin"));
        await v.Store.DeleteAsync(key); // missing
        await Assert.ThrowsAsync<ObjectNotFoundException>(() => ReadAsync(v, "/c.bin"));
    }

    [Fact]
    public async Task Directories_symlinks_modes_and_empty_files_are_imported()
    {
        using var v = await FormatAsync();
        string root = Dir["model"];
        WriteSource("model/weights/part-1.bin", 5000, 6);
        File.WriteAllText(Dir["model/config.json"], "{}");
        File.WriteAllBytes(Dir["model/empty"], []);
        File.SetUnixFileMode(Dir["model/config.json"], UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
        File.CreateSymbolicLink(Dir["model/latest"], "weights/part-1.bin");
        var s = await new Importer(v, new ImportOptions()).RunAsync([root], "/models/");
        Assert.Equal((3L, 1L), (s.Files, s.Symlinks));

        Assert.Equal(["config.json", "empty", "latest", "weights"], (await v.Meta.ListAsync((await v.Namespace.ResolveAsync("/models/model"))!.Ino)).Select(e => e.Name));
        Assert.Equal("weights/part-1.bin", (await v.Namespace.ResolveAsync("/models/model/latest"))!.SymlinkTarget);
        Assert.Equal(0x1A0u, (await v.Namespace.ResolveAsync("/models/model/config.json"))!.Mode); // 0640
        Assert.Empty(await ReadAsync(v, "/models/model/empty"));
        Assert.Equal(File.ReadAllBytes(Dir["model/weights/part-1.bin"]), await ReadAsync(v, "/models/model/weights/part-1.bin"));
        var st = Posix.LStat(Dir["model/config.json"]);
        Assert.Equal(st.MtimeNs, (await v.Namespace.ResolveAsync("/models/model/config.json"))!.MtimeNs);
    }

    /// <summary>The Hugging Face cache: snapshots/REV/NAME -> ../../blobs/SHA (issue 11, item 15).</summary>
    private string HuggingFaceCache()
    {
        WriteSource("hf/blobs/aaa", (2 * ChunkSize) + 17, 21);
        File.WriteAllText(Dir["hf/blobs/bbb"], "{\"model_type\": \"llama\"}");
        File.SetUnixFileMode(Dir["hf/blobs/aaa"], (UnixFileMode)0x1A4); // 0644
        Directory.CreateDirectory(Dir["hf/snapshots/rev/sub"]);
        File.CreateSymbolicLink(Dir["hf/snapshots/rev/model.safetensors"], "../../blobs/aaa");
        File.CreateSymbolicLink(Dir["hf/snapshots/rev/config.json"], "../../blobs/bbb");
        File.CreateSymbolicLink(Dir["hf/snapshots/rev/sub/tokenizer.json"], "../../../blobs/bbb");
        File.CreateSymbolicLink(Dir["hf/snapshots/rev/alias.json"], "config.json"); // stays inside the snapshot
        File.CreateSymbolicLink(Dir["hf/snapshots/rev/elsewhere"], "/etc/hostname"); // not a blob of this cache: kept as a link
        File.CreateSymbolicLink(Dir["hf/current"], "snapshots/rev");
        return Dir["hf"];
    }

    [Fact]
    public async Task A_symlink_named_on_the_command_line_is_imported_as_the_file_it_points_to()
    {
        using var v = await FormatAsync();
        HuggingFaceCache();
        var s = await new Importer(v, new ImportOptions()).RunAsync([Dir["hf/snapshots/rev/model.safetensors"]], "/m/");
        Assert.Equal((1L, 0L, 0), (s.Files, s.Symlinks, s.Errors));
        var n = await v.Namespace.ResolveAsync("/m/model.safetensors");
        Assert.Equal(NodeType.File, n!.Type);
        Assert.Equal(0x1A4u, n.Mode);
        Assert.Equal(Posix.Stat(Dir["hf/blobs/aaa"]).MtimeNs, n.MtimeNs); // the target's attributes, as cp -H
        Assert.Equal(File.ReadAllBytes(Dir["hf/blobs/aaa"]), await ReadAsync(v, "/m/model.safetensors"));

        // Again: the same content, skipped as unchanged (the link is followed for the comparison too).
        var again = await new Importer(v, new ImportOptions()).RunAsync([Dir["hf/snapshots/rev/model.safetensors"]], "/m/");
        Assert.Equal((0L, 1L), (again.Files, again.UnchangedFiles));
    }

    [Fact]
    public async Task A_snapshot_directory_of_symlinks_to_blobs_is_imported_as_real_files()
    {
        using var v = await FormatAsync();
        HuggingFaceCache();
        foreach (var (src, dest) in new[] { (Dir["hf/snapshots/rev/"], "/models/"), (Dir["hf/current"], "/c/") })
        {
            var s = await new Importer(v, new ImportOptions()).RunAsync([src], dest);
            Assert.Equal((3L, 2L, 0), (s.Files, s.Symlinks, s.Errors));
        }

        foreach (var root in new[] { "/models/rev", "/c/current" })
        {
            Assert.Equal(File.ReadAllBytes(Dir["hf/blobs/aaa"]), await ReadAsync(v, root + "/model.safetensors"));
            Assert.Equal(File.ReadAllBytes(Dir["hf/blobs/bbb"]), await ReadAsync(v, root + "/config.json"));
            Assert.Equal(File.ReadAllBytes(Dir["hf/blobs/bbb"]), await ReadAsync(v, root + "/sub/tokenizer.json"));
            var alias = await v.Namespace.ResolveAsync(root + "/alias.json");
            Assert.Equal((NodeType.Symlink, "config.json"), (alias!.Type, alias.SymlinkTarget)); // resolves in the volume as in the source
            Assert.Equal("/etc/hostname", (await v.Namespace.ResolveAsync(root + "/elsewhere"))!.SymlinkTarget);
        }
    }

    [Fact]
    public async Task Links_out_of_a_tree_stay_links_unless_dereferenced_and_a_loop_is_reported()
    {
        using var v = await FormatAsync();
        WriteSource("outer/t/f.bin", 100, 22);
        File.WriteAllText(Dir["outer/other.txt"], "beside the tree");
        File.CreateSymbolicLink(Dir["outer/t/up"], ".."); // leaves t; followed, t then leads back into t
        File.CreateSymbolicLink(Dir["outer/t/abs"], Dir["outer/other.txt"]);
        File.CreateSymbolicLink(Dir["outer/t/gone"], "../nothing");

        // By default a tree's links are kept: following them would copy whatever they name (x -> /etc/shadow).
        var kept = await new Importer(v, new ImportOptions()).RunAsync([Dir["outer/t"]], "/k/");
        Assert.Equal((1L, 3L), (kept.Files, kept.Symlinks));
        Assert.Empty(kept.Problems);
        Assert.Equal(Dir["outer/other.txt"], (await v.Namespace.ResolveAsync("/k/t/abs"))!.SymlinkTarget);

        var s = await new Importer(v, new ImportOptions { Dereference = true }).RunAsync([Dir["outer/t"]], "/d/");
        var loop = Assert.Single(s.Problems);
        Assert.True(loop.IsError);
        Assert.Equal(Dir["outer/t/up/t"], loop.Source);
        Assert.Contains("symlink loop", loop.Reason, StringComparison.Ordinal);
        Assert.Equal("beside the tree", Encoding.UTF8.GetString(await ReadAsync(v, "/d/t/up/other.txt")));
        Assert.Equal("beside the tree", Encoding.UTF8.GetString(await ReadAsync(v, "/d/t/abs")));
        Assert.Equal("../nothing", (await v.Namespace.ResolveAsync("/d/t/gone"))!.SymlinkTarget); // dangling: stays a link
        Assert.Equal(100, (await ReadAsync(v, "/d/t/f.bin")).Length);
    }

    [Fact]
    public async Task Names_that_are_not_UTF8_are_reported_and_the_rest_is_imported()
    {
        using var v = await FormatAsync();
        // .NET cannot create such names; bash can.
        Proc.Run("bash", "-c", """
            cd "$1" && mkdir -p tree/sub && printf ok > tree/ok.bin && printf bad > "$(printf 'tree/bad-\xff.bin')" &&
            mkdir "$(printf 'tree/dir-\xe9')" && printf x > "$(printf 'tree/dir-\xe9/inner.bin')" &&
            ln -s "$(printf 'target-\xfe')" tree/badlink && printf esc > "$(printf 'tree/sub/esc-\x1b[31m.txt')"
            """, "bash", Dir.Path);
        var s = await new Importer(v, new ImportOptions()).RunAsync([Dir["tree"]], "/t/");
        Assert.Equal(3, s.Errors);
        Assert.Equal([Dir["tree"] + @"/bad-\xff.bin", Dir["tree/badlink"], Dir["tree"] + @"/dir-\xe9"], s.Problems.Select(p => p.Source)); // in walk order
        Assert.All(s.Problems, p => Assert.True(p.IsError));
        Assert.Contains("the name is not valid UTF-8", s.Problems[0].Reason, StringComparison.Ordinal);
        Assert.Contains(@"its symlink target 'target-\xfe' is not valid UTF-8", s.Problems[1].Reason, StringComparison.Ordinal);
        Assert.Contains("the name is not valid UTF-8", s.Problems[2].Reason, StringComparison.Ordinal);

        // Everything else is there; a name with an escape character is valid UTF-8 and kept as it is.
        Assert.Equal(["ok.bin", "sub"], (await v.Meta.ListAsync((await v.Namespace.ResolveAsync("/t/tree"))!.Ino)).Select(e => e.Name));
        Assert.Equal("esc", Encoding.UTF8.GetString(await ReadAsync(v, "/t/tree/sub/esc-\u001b[31m.txt")));

        // Messages show such names escaped, never raw on the terminal.
        File.WriteAllText(Dir["tree/sub/esc-\u001b[31m.txt"], "changed");
        var conflict = await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions()).RunAsync([Dir["tree"]], "/t/"));
        Assert.Contains(@"/t/tree/sub/esc-\033[31m.txt exists with other content", conflict.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\u001b', conflict.Message);
    }

    [Fact]
    public async Task Existing_destination_is_refused_unless_overwrite_and_nothing_changes()
    {
        using var v = await FormatAsync();
        string a = WriteSource("x/a.bin", 3000, 7);
        await new Importer(v, new ImportOptions()).RunAsync([a], "/d/a.bin");
        int objects = await CountObjectsAsync(v.Store);
        var usage = await v.Meta.GetUsageAsync();

        string b = WriteSource("y/a.bin", 4000, 8);
        string other = WriteSource("y/new.bin", 10, 9);
        var ex = await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions()).RunAsync([b, other], "/d/"));
        Assert.Contains("/d/a.bin exists with other content", ex.Message, StringComparison.Ordinal);
        Assert.Contains("--overwrite", ex.Hint, StringComparison.Ordinal);
        Assert.Null(await v.Namespace.ResolveAsync("/d/new.bin"));
        Assert.Equal(objects, await CountObjectsAsync(v.Store));
        Assert.Equal(usage, await v.Meta.GetUsageAsync());

        await new Importer(v, new ImportOptions { Overwrite = true }).RunAsync([b], "/d/a.bin");
        Assert.Equal(File.ReadAllBytes(b), await ReadAsync(v, "/d/a.bin"));
        Assert.Equal(4000, (await v.Meta.GetUsageAsync()).Bytes);

        // A directory is never replaced by a file, even with --overwrite.
        await v.Namespace.MkdirAllAsync("/dir/a.bin");
        var dirEx = await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions { Overwrite = true }).RunAsync([b], "/dir/"));
        Assert.Contains("is a directory", dirEx.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_sources_and_destinations_are_refused_before_anything_changes()
    {
        using var v = await FormatAsync();
        string a = WriteSource("ok.bin", 10, 10);
        await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions()).RunAsync([a, Dir["missing.bin"]], "/d/"));
        await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions()).RunAsync([a], "/d/../etc/x"));
        Assert.Empty(await v.Meta.ListAsync(Node.RootIno));
        Assert.Equal(0, await CountObjectsAsync(v.Store));
        await new Importer(v, new ImportOptions()).RunAsync([a], "/file");
        var several = await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions()).RunAsync([a, a], "/file"));
        Assert.Contains("not a directory", several.Message, StringComparison.Ordinal);
        await v.Namespace.RemoveAsync("/file", recursive: false);
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

public sealed class MemoryImportTests : ImportContract
{
    protected override (string, string, StorageOptions) NewVolume() => throw new NotSupportedException("memory:// volumes cannot be reopened");

    // The twins are process-local, so these tests wire the volume by hand.
    protected override Task<Volume> FormatAsync(string compression = "none") => OpenTwinAsync(new MemoryObjectStore(), compression);

    private static async Task<Volume> OpenTwinAsync(IObjectStore store, string compression = "none") =>
        await TwinVolume.CreateAsync(store, ChunkSize, compression);

    [Fact]
    public async Task Interrupted_import_leaves_no_half_file_and_a_rerun_completes_it()
    {
        var inner = new MemoryObjectStore();
        var faulty = new FaultyObjectStore(inner) { FailPutsAfter = 2 };
        using var v = await OpenTwinAsync(faulty);
        string src = WriteSource("big.bin", (5 * ChunkSize) + 3, 11);
        await Assert.ThrowsAnyAsync<Exception>(() => new Importer(v, new ImportOptions { Concurrency = 1 }).RunAsync([src], "/big.bin"));
        Assert.Null(await v.Namespace.ResolveAsync("/big.bin"));
        Assert.Equal(2, inner.Count);

        faulty.FailPutsAfter = null;
        var s = await new Importer(v, new ImportOptions()).RunAsync([src], "/big.bin");
        Assert.Equal(2, s.DedupChunks); // the two chunks stored before the failure are not uploaded again
        Assert.Equal(File.ReadAllBytes(src), await ReadAsync(v, "/big.bin"));
    }

    [Fact]
    public async Task A_file_swapped_in_under_a_planned_path_is_refused_and_a_file_changed_in_place_too()
    {
        var store = new FaultyObjectStore(new MemoryObjectStore());
        using var v = await OpenTwinAsync(store);
        string a = WriteSource("swap/a.bin", 1000, 13), b = WriteSource("swap/b.bin", 2000, 14);

        // After the plan, before b is opened: another file with b's size and mtime is renamed over b.
        string other = WriteSource("swap/other.bin", 2000, 15);
        Proc.Run("touch", "-r", b, other);
        store.OnPut = n =>
        {
            if (n == 1)
            {
                File.Move(other, b, overwrite: true);
            }
        };
        var ex = await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions { Concurrency = 1 }).RunAsync([a, b], "/d/"));
        Assert.Contains($"source '{b}' changed while it was imported", ex.Message, StringComparison.Ordinal);
        Assert.Null(await v.Namespace.ResolveAsync("/d/b.bin"));
        Assert.NotNull(await v.Namespace.ResolveAsync("/d/a.bin"));

        // A followed symlink whose target is rewritten while it is read.
        string big = WriteSource("swap/big.bin", (2 * ChunkSize) + 1, 16);
        File.CreateSymbolicLink(Dir["swap/link.bin"], "big.bin");
        store.OnPut = n => File.AppendAllText(big, "more");
        ex = await Assert.ThrowsAsync<LmfsException>(() => new Importer(v, new ImportOptions { Concurrency = 1 }).RunAsync([Dir["swap/link.bin"]], "/d/"));
        Assert.Contains("changed while it was imported", ex.Message, StringComparison.Ordinal);
        Assert.Null(await v.Namespace.ResolveAsync("/d/link.bin"));
    }

    [Fact]
    public async Task Wrong_bytes_from_the_store_are_an_error_never_data()
    {
        var faulty = new FaultyObjectStore(new MemoryObjectStore());
        using var v = await OpenTwinAsync(faulty);
        string src = WriteSource("w.bin", 70_000, 12);
        await new Importer(v, new ImportOptions()).RunAsync([src], "/w.bin");
        faulty.MangleGet = (_, b) =>
        {
            b[^1] ^= 1;
            return b;
        };
        await Assert.ThrowsAsync<ChunkCorruptException>(() => ReadAsync(v, "/w.bin"));
    }
}

public sealed class SqliteLocalImportTests : ImportContract
{
    protected override (string, string, StorageOptions) NewVolume() => RedisAndS3.NewEmbeddedVolume(Dir);
}

public sealed class RedisS3ImportTests(RedisAndS3 servers) : ImportContract, IClassFixture<RedisAndS3>
{
    protected override (string, string, StorageOptions) NewVolume() => servers.NewVolume();
}
