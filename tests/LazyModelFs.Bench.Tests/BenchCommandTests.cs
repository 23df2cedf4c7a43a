using System.Text.Json;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Bench.Tests;

/// <summary>
/// `lmfs bench` for real: a volume on redis-server and s3rver, mounted with `lmfs mount --background`,
/// benchmarked from another process; and a volume the bench mounts itself. Small files and few reads
/// keep it short: these tests check what was measured and reported, never how fast it was.
/// </summary>
public sealed class BenchCommandTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    private const int Chunk = 1 << 20;
    private const int FileSize = (6 * Chunk) + 12345;
    private readonly TempDir _dir = new("lmfs-bench");

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    private (string Meta, int TensorBytes) Volume(string meta, string storage, Dictionary<string, string?> env)
    {
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/random.bin"], TestData.Random(FileSize, 5));
        var st = TestData.Safetensors(3 * Chunk, tensors: 6);
        File.WriteAllBytes(_dir["src/model.safetensors"], st);
        Ok(LmfsRunner.Run(["format", meta, "--storage", storage, "--chunk-size", "1M"], env));
        Ok(LmfsRunner.Run(["import", meta, _dir["src/random.bin"], _dir["src/model.safetensors"], "/b/", "--no-progress"], env));
        return (meta, (3 * Chunk) / 6 / 2 * 2 * 6);
    }

    [MountFact]
    public void Bench_on_a_mounted_file_reports_every_phase_with_the_right_byte_counts()
    {
        var env = LmfsRunner.S3Env();
        string storage = servers.S3.NewStorageUrl();
        var (meta, tensorBytes) = Volume(servers.Redis.NewVolumeUrl(), storage, env);
        string mp = Directory.CreateTempSubdirectory("lmfs-bmp-").FullName;
        Ok(LmfsRunner.Run(["mount", meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"], "--buffer-size", "16M"], env));
        try
        {
            var r = LmfsRunner.Run(
                ["bench", Path.Combine(mp, "b/random.bin"), "--safetensors", Path.Combine(mp, "b/model.safetensors"), "--readers", "2", "--random-reads", "5", "--json-file", _dir["r.json"], "--html", _dir["r.html"]],
                env,
                TimeSpan.FromMinutes(5));
            Ok(r);
            Assert.Contains("targets (performance.md)", r.Stdout, StringComparison.Ordinal);
            Assert.Contains("bench: cold: 1 reader", r.Stderr, StringComparison.Ordinal);

            using var doc = JsonDocument.Parse(File.ReadAllText(_dir["r.json"]));
            var root = doc.RootElement;
            Assert.Equal("lmfs", root.GetProperty("system").GetString());
            Assert.Equal(FileSize, root.GetProperty("fileBytes").GetInt64());
            Assert.Equal(16L << 20, root.GetProperty("bufferSize").GetInt64());

            // Ceilings: every chunk object GET whole (plain objects: 16-byte header + bytes), and a same-size local file.
            int chunks = (FileSize + Chunk - 1) / Chunk;
            var store = root.GetProperty("ceilings").GetProperty("store");
            Assert.Equal(FileSize + (16L * chunks), store.GetProperty("parallel").GetProperty("bytes").GetInt64());
            Assert.Equal(16, store.GetProperty("parallel").GetProperty("readers").GetInt32());
            Assert.Equal(FileSize + (16L * chunks), store.GetProperty("single").GetProperty("bytes").GetInt64());
            Assert.Equal(5L << 20, store.GetProperty("random").GetProperty("bytes").GetInt64());
            Assert.Equal(FileSize, root.GetProperty("ceilings").GetProperty("localCold").GetProperty("seq1").GetProperty("bytes").GetInt64());
            Assert.Equal(FileSize, root.GetProperty("ceilings").GetProperty("localHot").GetProperty("seqN").GetProperty("bytes").GetInt64());

            var phases = root.GetProperty("phases").EnumerateArray().ToDictionary(p => p.GetProperty("name").GetString()!);
            Assert.Equal(["cold", "hot", "warm"], phases.Keys.Order(StringComparer.Ordinal));
            foreach (var (name, p) in phases)
            {
                Assert.Equal(FileSize, p.GetProperty("seq1").GetProperty("bytes").GetInt64());
                Assert.Equal(FileSize, p.GetProperty("seqN").GetProperty("bytes").GetInt64());
                Assert.Equal(2, p.GetProperty("seqN").GetProperty("readers").GetInt32());
                Assert.Equal(5L << 20, p.GetProperty("random").GetProperty("bytes").GetInt64());
                Assert.Equal(5, p.GetProperty("random").GetProperty("latency").GetProperty("count").GetInt32());
                Assert.True(p.GetProperty("firstMiBMs").GetDouble() > 0, name);
                Assert.True(p.GetProperty("peakRssBytes").GetInt64() > 0, name);
                Assert.True(p.TryGetProperty("cpuSecondsPerGB", out _), name);
            }

            // Cold read every chunk from the store; warm and hot fetched nothing (the reset kept the disk cache).
            Assert.True(phases["cold"].GetProperty("storeBytes").GetInt64() >= FileSize, "cold did not fetch the file from the store");
            Assert.Equal(0, phases["warm"].GetProperty("storeBytes").GetInt64());
            Assert.Equal(0, phases["hot"].GetProperty("storeBytes").GetInt64());

            var st = root.GetProperty("safetensors");
            Assert.Equal(6, st.GetProperty("tensors").GetInt32());
            var runs = st.GetProperty("runs").EnumerateArray().ToList();
            Assert.Equal(["cold/file", "cold/shuffled", "cold/shuffled, replay", "warm/file", "warm/shuffled"], runs.Select(x => x.GetProperty("phase").GetString() + "/" + x.GetProperty("order").GetString()));
            Assert.All(runs, x => Assert.Equal(tensorBytes, x.GetProperty("bytes").GetInt64()));
            var replay = runs[2]; // the shuffled load's own profile, replayed: it prefetched, and READs used what it prefetched
            Assert.True(replay.GetProperty("prefetchedBytes").GetInt64() > 0, "the replay prefetched nothing");
            Assert.True(replay.GetProperty("prefetchUsedBytes").GetInt64() > 0, "the load used nothing the replay prefetched");

            var targets = root.GetProperty("targets").EnumerateArray().Select(t => t.GetProperty("name").GetString()).ToList();
            Assert.Equal(10, targets.Count);
            Assert.True(phases["cold"].GetProperty("randomStoreBytes").GetInt64() > 0, "the cold random reads fetched nothing");
            Assert.Contains("cold sequential", targets);
            Assert.Contains("<svg", File.ReadAllText(_dir["r.html"]), StringComparison.Ordinal);

            // The reports compare side by side.
            var cmp = LmfsRunner.Run("bench", "compare", _dir["r.json"], _dir["r.json"], "--markdown");
            Ok(cmp);
            Assert.StartsWith("| figure | lmfs | lmfs |", cmp.Stdout, StringComparison.Ordinal);

            // The bench left the mount serving the same bytes.
            Assert.Equal(File.ReadAllBytes(_dir["src/random.bin"]), File.ReadAllBytes(Path.Combine(mp, "b/random.bin")));
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            SpinWait.SpinUntil(() => Fuse.FuseMount.MountTypeAt(mp) is null, 10_000);
            Directory.Delete(mp);
        }
    }

    [MountFact]
    public void Bench_of_a_metadata_url_mounts_for_the_run_and_cleans_up()
    {
        string objects = _dir["objects"];
        var (meta, _) = Volume($"sqlite://{_dir["meta.db"]}", $"file://{objects}", []);
        var before = BenchMounts();
        var r = LmfsRunner.Run(["bench", meta, "/b/random.bin", "--phases", "cold,warm", "--no-ceilings", "--readers", "3", "--random-reads", "3", "--json", "--buffer-size", "8M"], timeout: TimeSpan.FromMinutes(3));
        Ok(r);
        using var doc = JsonDocument.Parse(r.Stdout);
        var phases = doc.RootElement.GetProperty("phases").EnumerateArray().ToList();
        Assert.Equal(["cold", "warm"], phases.Select(p => p.GetProperty("name").GetString()));
        Assert.All(phases, p => Assert.Equal(FileSize, p.GetProperty("seqN").GetProperty("bytes").GetInt64()));
        Assert.False(doc.RootElement.GetProperty("ceilings").TryGetProperty("store", out _));
        Assert.Equal(8L << 20, doc.RootElement.GetProperty("bufferSize").GetInt64()); // the mount option reached the mount
        Assert.Contains("mounted sqlite://", r.Stderr, StringComparison.Ordinal);
        Assert.Equal(before, BenchMounts()); // no mount left behind
    }

    [Fact]
    public void Bad_bench_input_is_refused_with_a_hint()
    {
        static void Refused(RunResult r, string part)
        {
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
            Assert.Contains(part, r.Stderr, StringComparison.Ordinal);
            Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        }

        Refused(LmfsRunner.Run("bench", _dir["absent.bin"], "--no-ceilings"), "does not exist");
        File.WriteAllBytes(_dir["x.bin"], [1, 2, 3]);
        Refused(LmfsRunner.Run("bench", _dir["x.bin"], "--phases", "cold,tepid"), "unknown phase 'tepid'");
        Refused(LmfsRunner.Run("bench", _dir["x.bin"], "--readers", "0"), "--readers 0");
        Refused(LmfsRunner.Run("bench", "sqlite:///nowhere/meta.db"), "needs the file's PATH");
        File.WriteAllText(_dir["not.json"], "{ this is not json");
        Refused(LmfsRunner.Run("bench", "compare", _dir["not.json"]), "is not an lmfs bench report");
        Assert.Contains("Example", LmfsRunner.Run("bench", "--help").Stdout, StringComparison.Ordinal);
    }

    private static int BenchMounts() => File.ReadAllLines("/proc/mounts").Count(l => l.Contains("/lmfs-bench-", StringComparison.Ordinal) && l.Contains("fuse.lazymodelfs", StringComparison.Ordinal));

    public void Dispose() => _dir.Dispose();
}
