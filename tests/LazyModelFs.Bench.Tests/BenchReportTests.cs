using System.Text.Json;
using LazyModelFs.Bench;
using Xunit;

namespace LazyModelFs.Bench.Tests;

/// <summary>The statistics, the targets and the report formats of `lmfs bench`, on reports built by hand.</summary>
public sealed class BenchReportTests
{
    [Fact]
    public void Percentiles_are_nearest_rank()
    {
        var ms = Enumerable.Range(1, 100).Select(i => (double)i).Reverse().ToList();
        var s = LatencySummary.From(ms);
        Assert.Equal(100, s.Count);
        Assert.Equal(50, s.P50Ms);
        Assert.Equal(95, s.P95Ms);
        Assert.Equal(99, s.P99Ms);
        Assert.Equal(100, s.MaxMs);
        Assert.Equal(50.5, s.MeanMs, 9);

        // Few samples: p99 of 5 samples is the largest; p50 the third.
        var five = LatencySummary.From([5, 1, 4, 2, 3]);
        Assert.Equal(3, five.P50Ms);
        Assert.Equal(5, five.P99Ms);
        Assert.Equal(0, LatencySummary.From([]).Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => LatencySummary.Percentile([1.0], 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => LatencySummary.Percentile([1.0], 101));
    }

    [Fact]
    public void Throughput_is_bytes_over_seconds_and_zero_time_gives_zero()
    {
        Assert.Equal(500, new SeqResult(1, 1_000_000_000, 2).MBps, 9);
        Assert.Equal(0, new SeqResult(1, 10, 0).MBps);
    }

    private static PhaseResult Phase(string name, double mbps, double p99 = 10, double first = 5, long? rss = null) => new()
    {
        Name = name,
        Seq1 = new SeqResult(1, 1_000_000_000, 1000 / mbps),
        SeqN = new SeqResult(4, 1_000_000_000, 1000 / mbps / 2),
        Random = new RandomResult(1 << 20, 200L << 20, new LatencySummary(200, p99 / 4, p99 / 4, p99 / 2, p99, p99 * 1.1)),
        FirstMiBMs = first,
        CpuSecondsPerGB = 1.5,
        PeakRssBytes = rss,
    };

    private static BenchReport Report(SafetensorsResult? st = null) => new()
    {
        System = "lmfs <test> & co",
        Date = new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero),
        Machine = new MachineInfo("host", 2, 24L << 30, "6.18", ".NET 10"),
        File = "/mnt/bench/random.bin",
        FileBytes = 1L << 30,
        Readers = 4,
        RandomReads = 200,
        ReadSize = 1 << 20,
        BufferSize = 512L << 20,
        Ceilings = new Ceilings
        {
            Store = new StoreCeiling(new SeqResult(16, 1_000_000_000, 2), new SeqResult(1, 1_000_000_000, 4), new RandomResult(1 << 20, 200L << 20, new LatencySummary(200, 3, 3, 8, 10, 12)), 5, null),
            LocalCold = Phase("local disk cold", 2000, 2, 2),
            LocalHot = Phase("local disk hot", 10000, 0.5, 0.5),
        },
        Phases = [Phase("cold", 460, 19, 14, 600L << 20), Phase("warm", 1600, 5, 3, 640L << 20), Phase("hot", 7000, 1, 1, 700L << 20)],
        Safetensors = st,
    };

    [Fact]
    public void Targets_are_judged_against_the_ceilings_of_the_same_run()
    {
        var r = Report(new SafetensorsResult("/m.safetensors", 1000, 3, [
            new SafetensorsRun("cold", "file", 20, 3.0, 1000, 3),
            new SafetensorsRun("cold", "shuffled", 20, 5.0, 1000, 3),
            new SafetensorsRun("cold", "shuffled, replay", 20, 3.5, 1000, 3) { PrefetchedBytes = 1000, PrefetchUsedBytes = 940 },
        ], new BaselineResult("aws s3 cp", 4.0, 0.5), null));
        r = r with { Phases = [r.Phases[0] with { RandomStoreBytes = 250L << 20 }, .. r.Phases.Skip(1)] };
        var t = Goals.Evaluate(r).ToDictionary(x => x.Name);
        Assert.Equal(10, t.Count);
        Assert.Equal(0.7, t["safetensors cold shuffled load, replaying its profile"].Ratio); // 3.5 s vs 5.0 s > 0.6
        Assert.False(t["safetensors cold shuffled load, replaying its profile"].Met);
        Assert.Equal(0.06, t["replay: prefetched bytes unused"].Ratio); // 60 of 1000 bytes > 5 %
        Assert.False(t["replay: prefetched bytes unused"].Met);
        Assert.Equal(0.92, t["cold sequential"].Ratio);      // 460 / 500
        Assert.True(t["cold sequential"].Met);
        Assert.Equal(0.8, t["warm sequential"].Ratio);       // 1600 / 2000 < 0.85
        Assert.False(t["warm sequential"].Met);
        Assert.Equal(0.7, t["hot sequential"].Ratio);
        Assert.False(t["hot sequential"].Met);
        Assert.Equal(1.9, t["random 1 MiB p99, cold"].Ratio); // 19 / 10 ≤ 2
        Assert.True(t["random 1 MiB p99, cold"].Met);
        Assert.Equal(1.25, t["random reads: bytes moved / bytes read, cold"].Ratio); // 250 MiB moved for 200 MiB read ≤ 1.3
        Assert.True(t["random reads: bytes moved / bytes read, cold"].Met);
        Assert.Equal(2.8, t["first MiB, cold"].Ratio);
        Assert.True(t["first MiB, cold"].Met);
        Assert.Equal(0.75, t["safetensors cold load"].Ratio); // 3.0 s vs a 4.0 s download alone
        Assert.True(t["safetensors cold load"].Met);
        Assert.False(t["peak memory"].Met);                  // 700 MiB > 512 + 150 MiB
        Assert.Equal(Math.Round(700.0 / 662, 3), t["peak memory"].Ratio);
    }

    [Fact]
    public void Targets_without_their_inputs_say_what_is_missing_instead_of_guessing()
    {
        var r = Report() with { Ceilings = new Ceilings(), BufferSize = null };
        var t = Goals.Evaluate(r);
        Assert.All(t, x =>
        {
            Assert.Null(x.Met);
            Assert.Null(x.Ratio);
            Assert.StartsWith("not measured: ", x.Detail, StringComparison.Ordinal);
        });
    }

    [Fact]
    public void Json_round_trips_and_has_the_documented_shape()
    {
        var r = Report();
        r = r with { Targets = Goals.Evaluate(r) };
        string json = r.ToJson();
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        Assert.Equal(1, root.GetProperty("version").GetInt32());
        Assert.Equal(3, root.GetProperty("phases").GetArrayLength());
        var cold = root.GetProperty("phases")[0];
        Assert.Equal("cold", cold.GetProperty("name").GetString());
        Assert.Equal(1_000_000_000, cold.GetProperty("seq1").GetProperty("bytes").GetInt64());
        Assert.True(cold.GetProperty("random").GetProperty("latency").TryGetProperty("p99Ms", out _));
        Assert.True(root.GetProperty("ceilings").GetProperty("store").TryGetProperty("parallel", out _));

        var back = BenchReport.FromJson(json);
        Assert.Equal(r.System, back.System);
        Assert.Equal(r.Phases.Count, back.Phases.Count);
        Assert.Equal(r.Phases[1].Seq1.MBps, back.Phases[1].Seq1.MBps, 9);
        Assert.Equal(r.Targets.Count, back.Targets.Count);
        Assert.Throws<JsonException>(() => BenchReport.FromJson("null"));
    }

    [Fact]
    public void The_terminal_table_shows_every_phase_with_its_ratio_and_every_target()
    {
        var r = Report();
        r = r with { Targets = Goals.Evaluate(r) };
        string text = Formats.Text(r);
        Assert.Contains("0.92 of 16 parallel GETs", text, StringComparison.Ordinal);
        Assert.Contains("0.80 of local disk cold", text, StringComparison.Ordinal);
        Assert.Contains("0.70 of local disk hot", text, StringComparison.Ordinal);
        Assert.Contains("[MISSED] warm sequential", text, StringComparison.Ordinal);
        Assert.Contains("[met   ] cold sequential", text, StringComparison.Ordinal);
        foreach (var name in new[] { "local disk cold", "local disk hot", "cold", "warm", "hot" })
        {
            Assert.Contains("\n" + name, text, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void The_html_report_is_self_contained_with_an_svg_bar_per_phase_and_ceiling_and_escapes_text()
    {
        var r = Report();
        r = r with { Targets = Goals.Evaluate(r) };
        string html = Formats.Html(r);
        Assert.StartsWith("<!DOCTYPE html>", html, StringComparison.Ordinal);
        Assert.Contains("<svg", html, StringComparison.Ordinal);
        Assert.Equal(7, html.Split("<rect ").Length - 1); // 2 store ceilings, 2 local ceilings, 3 phases
        Assert.Contains("lmfs &lt;test&gt; &amp; co", html, StringComparison.Ordinal);
        Assert.DoesNotContain("<test>", html, StringComparison.Ordinal);
        Assert.DoesNotContain("<script", html, StringComparison.Ordinal);
        Assert.DoesNotContain("http://", html.Replace("http://www.w3.org/2000/svg", "", StringComparison.Ordinal), StringComparison.Ordinal); // nothing fetched from elsewhere
    }

    [Fact]
    public void The_chart_is_on_a_log_scale_so_a_cold_bar_is_readable_next_to_the_page_cache_ceiling()
    {
        // On the linear scale a 50 MB/s cold bar next to a 20,000 MB/s page-cache ceiling was 1 px of 420 (issue 18, item 14).
        string svg = Formats.Svg([("a", 10, true), ("b", 100, true), ("c", 1000, true), ("d", 10000, true), ("cold", 50, false), ("local disk hot", 20000, true)]);
        var w = System.Text.RegularExpressions.Regex.Matches(svg, "<rect x=\"170\" y=\"\\d+\" width=\"([0-9.]+)\"")
            .Select(m => double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(6, w.Count);

        // From 1 (0 px) to 100,000 (420 px): five decades of 84 px; equal ratios are equal lengths.
        double decade = w[1] - w[0];
        Assert.Equal(84, w[0], 0.06);
        Assert.Equal(84, decade, 0.11);
        Assert.Equal(decade, w[2] - w[1], 0.11);
        Assert.Equal(decade, w[3] - w[2], 0.11);
        Assert.Equal(84 * Math.Log10(50), w[4], 0.06); // the cold bar: 143 px
        Assert.Equal(84 * Math.Log10(20000), w[5], 0.06);
        Assert.Equal(Math.Log10(20000 / 50.0), (w[5] - w[4]) / decade, 0.01); // its ratio to the ceiling reads off the scale
        foreach (var label in new[] { ">1<", ">10<", ">100<", ">1000<", ">10000<", ">100000<", "logarithmic scale" })
        {
            Assert.Contains(label, svg, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Compare_puts_systems_side_by_side_with_the_first_reports_ceilings_for_peers()
    {
        var lmfs = Report();
        var peer = Report() with { System = "rclone", Ceilings = new Ceilings(), Phases = [Phase("cold", 250), Phase("warm", 400), Phase("hot", 500)] };
        string md = Formats.Compare([lmfs, peer], markdown: true);
        var lines = md.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("| figure | lmfs <test> & co | rclone |", lines[0]);
        Assert.Equal("| --- | --- | --- |", lines[1]);
        Assert.Contains(lines, l => l.StartsWith("| cold, 1 reader, MB/s (ratio to 16 parallel GETs) | 460 (0.92) | 250 (0.50) |", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("| warm, 1 reader, MB/s (ratio to local disk cold) | 1600 (0.80) | 400 (0.20) |", StringComparison.Ordinal));
        Assert.All(lines, l => Assert.Equal(4, l.Count(c => c == '|')));

        string text = Formats.Compare([lmfs, peer], markdown: false);
        Assert.Contains("rclone", text.Split('\n')[0], StringComparison.Ordinal);
    }
}
