using System.Text.Json;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>`lmfs gc` as users run it: the executable, its summary and JSON, exit codes, files readable after it.</summary>
public sealed class GcTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    private readonly TempDir _dir = new("lmfs-gc-cli");

    private static RunResult Exit(int code, RunResult r)
    {
        Assert.True(r.ExitCode == code, $"expected exit {code}: {r}");
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        return r;
    }

    private static JsonElement Json(RunResult r) => JsonDocument.Parse(r.Stdout).RootElement.Clone();

    [Fact]
    public void Gc_on_the_embedded_default_keeps_young_objects_frees_them_with_grace_0_and_leaves_files_readable()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        string objects = _dir["objects"];
        Exit(0, LmfsRunner.Run("format", meta, "--storage", $"file://{objects}", "--chunk-size", "1M"));
        string a = _dir.WriteRandom("src/a.bin", (2 << 20) + 9);
        string b = _dir.WriteRandom("src/b.bin", (1 << 20) + 5);
        Exit(0, LmfsRunner.Run("import", meta, a, "/m/a.bin"));
        Exit(0, LmfsRunner.Run("import", meta, b, "/m/b.bin"));
        Exit(0, LmfsRunner.Run("rm", meta, "/m/b.bin"));
        File.WriteAllText(Path.Combine(objects, "chunks", "NOTES.txt"), "an operator's file");

        // The default grace (24h) keeps b.bin's fresh objects.
        var young = Exit(0, LmfsRunner.Run("gc", meta));
        Assert.Contains("referenced: 3 object(s)", young.Stdout, StringComparison.Ordinal);
        Assert.Contains("unreferenced: 2 object(s)", young.Stdout, StringComparison.Ordinal);
        Assert.Contains("freed: 0 object(s)", young.Stdout, StringComparison.Ordinal);
        Assert.Contains("kept, younger than --grace 24h: 2 object(s)", young.Stdout, StringComparison.Ordinal);
        Assert.Contains("left alone: 1 object(s)", young.Stdout, StringComparison.Ordinal);

        // A dry run with --grace 0 says what it would free, and frees nothing.
        var dry = Json(Exit(0, LmfsRunner.Run("gc", "--dry-run", "--grace", "0", "--json", meta)));
        Assert.True(dry.GetProperty("dryRun").GetBoolean());
        Assert.Equal(2, dry.GetProperty("freedObjects").GetInt64());
        Assert.Equal(6, Directory.GetFiles(Path.Combine(objects, "chunks"), "*", SearchOption.AllDirectories).Length); // 5 chunk objects and the notes

        var done = Json(Exit(0, LmfsRunner.Run("gc", "--grace", "0", "--json", "-j", "2", meta)));
        Assert.False(done.GetProperty("dryRun").GetBoolean());
        Assert.Equal(0, done.GetProperty("graceSeconds").GetInt64());
        Assert.Equal((3L, 2L, 2L, ((1L << 20) + 5) + (2 * LazyModelFs.Chunks.ChunkObject.HeaderSize)), (done.GetProperty("referencedObjects").GetInt64(), done.GetProperty("unreferencedObjects").GetInt64(), done.GetProperty("freedObjects").GetInt64(), done.GetProperty("freedBytes").GetInt64()));
        Assert.Equal((0L, 0L, true), (done.GetProperty("youngObjects").GetInt64(), done.GetProperty("refcountsFixed").GetInt64(), done.GetProperty("refcountsChecked").GetBoolean()));
        Assert.Equal(1, done.GetProperty("otherObjects").GetInt64());
        Assert.Equal(4, Directory.GetFiles(Path.Combine(objects, "chunks"), "*", SearchOption.AllDirectories).Length);
        Assert.True(File.Exists(Path.Combine(objects, "chunks", "NOTES.txt")));

        var cat = LmfsRunner.RunBytes(["cat", meta, "/m/a.bin"]);
        Assert.Equal(0, cat.ExitCode);
        Assert.Equal(File.ReadAllBytes(a), cat.Stdout);
        Exit(0, LmfsRunner.Run("fsck", "--verify", meta));
        Assert.Contains("freed: 0 object(s)", Exit(0, LmfsRunner.Run("gc", "--grace", "0", meta)).Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Gc_on_redis_and_s3_frees_a_removed_file_and_without_credentials_exits_5()
    {
        string meta = servers.Redis.NewVolumeUrl();
        var env = LmfsRunner.S3Env();
        Exit(0, LmfsRunner.Run(["format", meta, "--storage", servers.S3.NewStorageUrl(), "--chunk-size", "1M"], env));
        string a = _dir.WriteRandom("s3/a.bin", (1 << 20) + 1);
        string b = _dir.WriteRandom("s3/b.bin", 3 << 20);
        Exit(0, LmfsRunner.Run(["import", meta, a, b, "/m/"], env));
        Exit(0, LmfsRunner.Run(["rm", meta, "/m/b.bin"], env));

        Assert.Equal(5, LmfsRunner.Run("gc", "--grace", "0", meta).ExitCode);
        var s = Json(Exit(0, LmfsRunner.Run(["gc", "--grace", "0", "--json", meta], env)));
        Assert.Equal((2L, 3L, 3L << 20), (s.GetProperty("referencedObjects").GetInt64(), s.GetProperty("freedObjects").GetInt64(), s.GetProperty("freedBytes").GetInt64() - (3 * LazyModelFs.Chunks.ChunkObject.HeaderSize)));
        var cat = LmfsRunner.RunBytes(["cat", meta, "/m/a.bin"], env);
        Assert.Equal(0, cat.ExitCode);
        Assert.Equal(File.ReadAllBytes(a), cat.Stdout);
        Exit(0, LmfsRunner.Run(["fsck", "--verify", meta], env));
    }

    [Theory]
    [InlineData("1.5h", "--grace '1.5h' is not a duration: use 0 to 3650d")]
    [InlineData("6 hours", "--grace '6 hours' is not a duration")]
    [InlineData("-1d", "--grace '-1d' is not a duration")]
    [InlineData("3651d", "--grace 3651d is out of range: use 0 to 3650d")]
    public void A_bad_grace_is_a_usage_error_that_says_what_is_accepted(string value, string message)
    {
        var r = Exit(2, LmfsRunner.Run("gc", "--grace", value, $"sqlite://{_dir["none.db"]}"));
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(_dir["none.db"]));
    }

    public void Dispose() => _dir.Dispose();
}
