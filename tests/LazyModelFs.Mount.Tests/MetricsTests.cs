using System.Diagnostics;
using System.Text.Json.Nodes;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Metrics;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests;

/// <summary>
/// The metrics' pieces without a kernel: the text format's escaping, the histogram's snapshot, the
/// fetch-error kinds the chunk cache counts, and the families a mount's stats give (issue 18, item 5).
/// The scrape of a real mount is in LazyModelFs.Cli.Tests (MetricsTests).
/// </summary>
public sealed class MetricsTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(60); // "did not hang", not a performance bound
    private readonly TempDir _dir = new("lmfs-metrics-unit");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Label_values_and_help_are_escaped_so_a_parser_reads_back_the_exact_value()
    {
        const string Hostile = "vol\"1\\\nx} 2\n# TYPE evil counter";
        var w = new PrometheusText();
        w.Family("lmfs_test_total", "counter", "help with \\ and\nnewline", [(new Labels(("volume_id", Hostile)), 3)]);
        var scrape = PrometheusScrape.Parse(w.ToString());
        Assert.Equal(3, scrape.Value("lmfs_test_total", ("volume_id", Hostile)));
        Assert.Equal(3, w.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // HELP, TYPE, one sample: nothing injected
    }

    [Fact]
    public async Task A_histogram_snapshot_is_cumulative_and_its_count_is_the_inf_bucket_while_others_observe()
    {
        var h = new LatencyHistogram();
        h.Observe(Stopwatch.Frequency / 1000); // exactly 1 ms: in le=0.001 (bounds are inclusive)
        h.Observe(Stopwatch.Frequency * 120); // past the last bound: +Inf only
        var first = h.ToJson();
        Assert.Equal(1, (long)first["counts"]![0]!);
        Assert.Equal(2, (long)first["count"]!);
        Assert.Equal(1, (long)first["counts"]![LatencyHistogram.DefaultBounds.Length - 1]!);

        using var stop = new CancellationTokenSource();
        var writers = Enumerable.Range(0, 4).Select(i => Task.Run(() =>
        {
            var rnd = new Random(i);
            while (!stop.IsCancellationRequested)
            {
                h.Observe((long)(rnd.NextDouble() * Stopwatch.Frequency * 2));
            }
        })).ToList();
        for (int i = 0; i < 200; i++)
        {
            var w = new PrometheusText();
            w.Histogram("lmfs_store_fetch_seconds", "t", [(Labels.None, h.ToJson())]);
            PrometheusScrape.Parse(w.ToString()); // checks cumulative buckets and +Inf == _count
        }

        stop.Cancel();
        await Task.WhenAll(writers);
    }

    [Fact]
    public void Stats_without_a_disk_cache_give_no_disk_families_and_every_family_has_help_and_type()
    {
        var stats = new JsonObject { ["version"] = "1.2.3", ["reads"] = 5, ["readBytes"] = 4096L, ["memoryHits"] = 2, ["fetchSeconds"] = new LatencyHistogram().ToJson() };
        var scrape = PrometheusScrape.Parse(MountMetrics.Render(stats));
        Assert.Equal(5, scrape.Value("lmfs_reads_total"));
        Assert.Equal(1, scrape.Value("lmfs_build_info", ("version", "1.2.3")));
        Assert.Equal(0, scrape.Value("lmfs_store_fetch_seconds_count"));
        Assert.DoesNotContain("lmfs_disk_cache", MountMetrics.Render(stats), StringComparison.Ordinal);
    }

    [Fact]
    public void Views_skipped_cache_writes_and_passthrough_opens_have_their_families()
    {
        var stats = new JsonObject { ["views"] = 2, ["viewBytes"] = 1000L, ["diskWritesSkipped"] = 7, ["diskWritesRefilled"] = 5, ["passthroughOpens"] = 3 };
        var scrape = PrometheusScrape.Parse(MountMetrics.Render(stats));
        Assert.Equal((2, 1000, 7, 5, 3), (scrape.Value("lmfs_disk_cache_views"), scrape.Value("lmfs_disk_cache_view_bytes"), scrape.Value("lmfs_disk_cache_writes_skipped_total"),
            scrape.Value("lmfs_disk_cache_writes_refilled_total"), scrape.Value("lmfs_passthrough_opens_total")));
    }

    [Fact]
    public void Access_profile_counters_have_their_families()
    {
        var stats = new JsonObject { ["profileReplays"] = 4L, ["profilePlans"] = 1L, ["profilesRecorded"] = 2L, ["profilesReplaced"] = 1L, ["profileErrors"] = 3L, ["prefetchIssuedBytes"] = 1000L, ["prefetchUsedBytes"] = 950L };
        var scrape = PrometheusScrape.Parse(MountMetrics.Render(stats));
        Assert.Equal(4, scrape.Value("lmfs_profile_replays_total", ("source", "profile")));
        Assert.Equal(1, scrape.Value("lmfs_profile_replays_total", ("source", "plan")));
        Assert.Equal(2, scrape.Value("lmfs_profiles_stored_total", ("how", "recorded")));
        Assert.Equal(1, scrape.Value("lmfs_profiles_stored_total", ("how", "replaced")));
        Assert.Equal(3, scrape.Value("lmfs_profile_errors_total"));
        Assert.Equal(1000, scrape.Value("lmfs_prefetch_bytes_total", ("kind", "issued")));
        Assert.Equal(950, scrape.Value("lmfs_prefetch_bytes_total", ("kind", "used")));
    }

    [Fact]
    public void Peer_tier_counters_have_their_families()
    {
        var stats = new JsonObject { ["peerFetches"] = 7L, ["peerFallbacks"] = 2L, ["peerBytes"] = 700L, ["peerServed"] = 5L, ["peerRejected"] = 1L, ["peerServeFailed"] = 0L, ["peerServeBusy"] = 3L, ["peerServedBytes"] = 500L };
        var scrape = PrometheusScrape.Parse(MountMetrics.Render(stats));
        Assert.Equal(7, scrape.Value("lmfs_peer_fetches_total", ("result", "peer")));
        Assert.Equal(2, scrape.Value("lmfs_peer_fetches_total", ("result", "fallback")));
        Assert.Equal(700, scrape.Value("lmfs_peer_fetched_bytes_total"));
        Assert.Equal(1, scrape.Value("lmfs_peer_served_total", ("result", "refused")));
        Assert.Equal(3, scrape.Value("lmfs_peer_served_total", ("result", "busy")));
        Assert.Equal(500, scrape.Value("lmfs_peer_served_bytes_total"));
    }

    [Fact]
    public async Task Fetch_failures_are_counted_by_kind_and_the_kinds_sum_to_fetch_errors()
    {
        var store = new FaultyObjectStore(new MemoryObjectStore());
        var v = await TwinVolume.CreateAsync(store, Chunk, "none");
        File.WriteAllBytes(_dir["src.bin"], TestData.Random(4 * Chunk, 4));
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/f.bin");
        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/f.bin"))!.Ino, Chunk))!;
        using var memory = new MemoryTier(8L * CachedChunk.BufferSizeFor(Chunk), Chunk);
        using var cache = new ChunkCache(v.Chunks, memory, null, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(1), DemandParts = 1 });

        await v.Store.DeleteAsync(table[0].Id.ObjectKey());
        await Assert.ThrowsAsync<ObjectNotFoundException>(() => cache.GetAsync(table[0]).AsTask().WaitAsync(NoHang));

        store.OnGet = (key, _) => key == table[1].Id.ObjectKey() ? new GetFault.Fail(new StoreRefusedException("403 AccessDenied (injected)", "fix the keys")) : null;
        await Assert.ThrowsAsync<StoreRefusedException>(() => cache.GetAsync(table[1]).AsTask().WaitAsync(NoHang));

        store.OnGet = (key, _) => key == table[2].Id.ObjectKey() ? new GetFault.Hang() : null;
        await Assert.ThrowsAnyAsync<LmfsException>(() => cache.GetAsync(table[2]).AsTask().WaitAsync(NoHang));

        store.OnGet = null;
        store.MangleGet = (key, b) =>
        {
            if (key == table[3].Id.ObjectKey())
            {
                b[b.Length / 2] ^= 0x40;
            }

            return b;
        };
        await Assert.ThrowsAsync<ChunkCorruptException>(() => cache.GetAsync(table[3]).AsTask().WaitAsync(NoHang));

        var o = new JsonObject();
        cache.AddStats(o);
        var kinds = o["fetchErrorKinds"]!.AsObject();
        Assert.Equal(1, (long)kinds["missing"]!);
        Assert.Equal(1, (long)kinds["refused"]!);
        Assert.True((long)kinds["timeout"]! >= 1, o.ToJsonString()); // the READ's wait, and the fetch's own budget when it ends
        Assert.Equal(1, (long)kinds["corrupt"]!);
        Assert.Equal(0, (long)kinds["other"]!);
        Assert.Equal((long)o["fetchErrors"]!, kinds.Sum(k => (long)k.Value!));
        Assert.Equal(0, (long)o["fetchSeconds"]!["count"]!); // only successful fetches are timed
    }
}
