using System.Text.Json;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>`lmfs fsck` and repair as users run them: the executable, exit codes, the JSON report, `lmfs cat` after repair.</summary>
public sealed class FsckTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    private readonly TempDir _dir = new("lmfs-fsck");

    private string Source(string name, int size) => _dir.WriteRandom(name, size);

    private static RunResult Exit(int code, RunResult r)
    {
        Assert.True(r.ExitCode == code, $"expected exit {code}: {r}");
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        return r;
    }

    [Fact]
    public void Fsck_finds_a_flipped_byte_with_verify_and_repair_by_reimport_makes_cat_work_on_the_embedded_default()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        Exit(0, LmfsRunner.Run("format", meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        string a = Source("src/a.bin", (2 << 20) + 9);
        string b = Source("src/b.bin", 4000);
        Exit(0, LmfsRunner.Run("import", meta, a, "/m/a.bin"));
        Exit(0, LmfsRunner.Run("import", meta, b, "/n/b.bin"));
        var healthy = Exit(0, LmfsRunner.Run("fsck", meta));
        Assert.Contains("checked 2 file(s), 4 chunk(s)", healthy.Stdout, StringComparison.Ordinal);
        Assert.Contains("healthy", healthy.Stdout, StringComparison.Ordinal);

        // Flip one byte of a.bin's second chunk: a HEAD cannot see it, --verify does.
        string hex = ObjectOf(meta, "/m/a.bin", 1);
        string file = Path.Combine(_dir["objects"], "chunks", hex[..2], hex[2..4], hex);
        var obj = File.ReadAllBytes(file);
        obj[100] ^= 1;
        File.WriteAllBytes(file, obj);
        Exit(0, LmfsRunner.Run("fsck", meta));
        var found = Exit(3, LmfsRunner.Run("fsck", "--verify", meta));
        Assert.Contains($"damaged: /m/a.bin: chunk 1 {hex}: fails verification", found.Stdout, StringComparison.Ordinal);
        Assert.Contains("damaged: 1 file(s), 1 chunk(s)", found.Stdout, StringComparison.Ordinal);
        Assert.Contains("hint: run lmfs fsck --verify --repair", found.Stderr, StringComparison.Ordinal);
        // PATH limits the walk.
        Assert.Contains("checked 1 file(s)", Exit(0, LmfsRunner.Run("fsck", "--verify", meta, "/n")).Stdout, StringComparison.Ordinal);

        // --json parses and names the same file and chunk.
        using (var doc = JsonDocument.Parse(Exit(3, LmfsRunner.Run("fsck", "--verify", "--json", meta)).Stdout))
        {
            var root = doc.RootElement;
            Assert.False(root.GetProperty("healthy").GetBoolean());
            Assert.Equal(2, root.GetProperty("files").GetInt64());
            Assert.Equal(1, root.GetProperty("damagedChunks").GetInt64());
            var d = Assert.Single(root.GetProperty("damaged").EnumerateArray().ToList());
            Assert.Equal("/m/a.bin", d.GetProperty("path").GetString());
            var c = Assert.Single(d.GetProperty("chunks").EnumerateArray().ToList());
            Assert.Equal((1, hex, "fails-verification"), (c.GetProperty("index").GetInt32(), c.GetProperty("id").GetString(), c.GetProperty("problem").GetString()));
        }

        // Before repair, the same import skips the file as unchanged and cat fails; the repair removes the object.
        Assert.Equal(3, LmfsRunner.RunBytes(["cat", meta, "/m/a.bin"]).ExitCode);
        Assert.Contains("(object removed)", Exit(3, LmfsRunner.Run("fsck", "--verify", "--repair", meta)).Stdout, StringComparison.Ordinal);
        Exit(0, LmfsRunner.Run("import", "--overwrite", meta, a, "/m/a.bin"));
        var cat = LmfsRunner.RunBytes(["cat", meta, "/m/a.bin"]);
        Assert.Equal(0, cat.ExitCode);
        Assert.Equal(File.ReadAllBytes(a), cat.Stdout);
        Exit(0, LmfsRunner.Run("fsck", "--verify", meta));
    }

    [Fact]
    public async Task Fsck_on_redis_and_s3_finds_deleted_and_truncated_objects_and_reimport_repairs_them()
    {
        string meta = servers.Redis.NewVolumeUrl();
        string storage = servers.S3.NewStorageUrl();
        var env = LmfsRunner.S3Env();
        Exit(0, LmfsRunner.Run(["format", meta, "--storage", storage, "--chunk-size", "1M"], env));
        string a = Source("s3/a.bin", (3 << 20) + 1);
        Exit(0, LmfsRunner.Run(["import", meta, a, "/a.bin"], env));
        Exit(0, LmfsRunner.Run(["fsck", "--verify", meta], env));

        string gone = ObjectOf(meta, "/a.bin", 0, env);
        string cut = ObjectOf(meta, "/a.bin", 2, env);
        using (var store = ObjectStores.Open(storage, new StorageOptions { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey }))
        {
            await store.DeleteAsync(Key(gone));
            var buf = new byte[100];
            int n = await store.GetAsync(Key(cut), 0, buf);
            await store.PutAsync(Key(cut), buf.AsMemory(0, n));
        }

        var found = Exit(3, LmfsRunner.Run(["fsck", meta, "-j", "4"], env));
        Assert.Contains($"damaged: /a.bin: chunk 0 {gone}: missing", found.Stdout, StringComparison.Ordinal);
        Assert.Contains($"damaged: /a.bin: chunk 2 {cut}: wrong size", found.Stdout, StringComparison.Ordinal);

        // Without credentials the store's own code (5), not "damaged".
        Assert.Equal(5, LmfsRunner.Run("fsck", meta).ExitCode);

        Exit(0, LmfsRunner.Run(["import", "--overwrite", meta, a, "/a.bin"], env));
        var cat = LmfsRunner.RunBytes(["cat", meta, "/a.bin"], env);
        Assert.Equal(0, cat.ExitCode);
        Assert.Equal(File.ReadAllBytes(a), cat.Stdout);
        Exit(0, LmfsRunner.Run(["fsck", "--verify", meta], env));
    }

    private static string Key(string hex) => $"chunks/{hex[..2]}/{hex[2..4]}/{hex}";

    /// <summary>The chunk id of a file's chunk, from `lmfs stat --chunks`.</summary>
    private static string ObjectOf(string meta, string path, int index, IDictionary<string, string?>? env = null)
    {
        var lines = Exit(0, LmfsRunner.Run(["stat", meta, path, "--chunks"], env)).Stdout.Split('\n');
        var row = lines.First(l => l.TrimStart().StartsWith($"{index} @", StringComparison.Ordinal));
        return row.Split(' ', StringSplitOptions.RemoveEmptyEntries).First(w => w.Length == 64);
    }

    public void Dispose() => _dir.Dispose();
}
