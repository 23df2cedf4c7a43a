using System.Globalization;

namespace LazyModelFs.Bench;

/// <summary>
/// The targets of ../shared/docs/performance.md, judged on one report: every figure against a
/// ceiling measured in the same run. A target whose inputs were not measured is reported with
/// <c>Met = null</c> and says what is missing, never guessed.
/// </summary>
public static class Goals
{
    public const long RssAllowance = 150L << 20;

    public static IReadOnlyList<TargetResult> Evaluate(BenchReport r)
    {
        var list = new List<TargetResult>();
        var store = r.Ceilings.Store;
        var cold = r.Phase("cold");
        var warm = r.Phase("warm");
        var hot = r.Phase("hot");

        list.Add(AtLeast(
            "cold sequential",
            0.90,
            cold?.Seq1.MBps,
            store?.Parallel.MBps,
            $"1 reader through the mount vs {store?.Parallel.Readers ?? 16} parallel GETs of the chunk objects",
            "needs the cold phase and the object-store ceiling"));
        list.Add(AtLeast(
            "warm sequential",
            0.85,
            warm?.Seq1.MBps,
            r.Ceilings.LocalCold?.Seq1.MBps,
            "1 reader, local cache on disk, vs the same size read from the cache disk with the page cache dropped",
            "needs the warm phase and the local-disk ceiling"));
        list.Add(AtLeast(
            "hot sequential",
            0.80,
            hot?.Seq1.MBps,
            r.Ceilings.LocalHot?.Seq1.MBps,
            "1 reader from the page cache vs a local file from the page cache",
            "needs the hot phase and the local-disk ceiling"));
        list.Add(AtMost(
            "random 1 MiB p99, cold",
            2.0,
            cold?.Random.Latency.P99Ms,
            store?.Random.Latency.P99Ms,
            "p99 of random 1 MiB reads through a cold mount vs p99 of single ranged GETs",
            "needs the cold phase and the object-store ceiling"));
        list.Add(AtMost(
            "random reads: bytes moved / bytes read, cold",
            1.3,
            cold?.RandomStoreBytes,
            cold?.Random.Bytes,
            "bytes the mount fetched from the object store while the cold random reads ran vs the bytes they read",
            "needs the cold phase through an lmfs mount (its store counters)"));
        list.Add(AtMost(
            "first MiB, cold",
            3.0,
            cold?.FirstMiBMs,
            store?.FirstMiBMs,
            "open + first 1 MiB through a cold mount vs one ranged GET of 1 MiB (the metadata round trip is inside the mount's figure)",
            "needs the cold phase and the object-store ceiling"));

        var st = r.Safetensors;
        var stCold = st?.Runs.FirstOrDefault(x => x.Phase == "cold" && x.Order == "file");
        list.Add(AtMost(
            "safetensors cold load",
            1.0,
            stCold?.Seconds,
            st?.Baseline?.DownloadSeconds,
            "whole load through a cold mount (mmap, every tensor in file order) vs the AWS CLI download alone",
            st?.BaselineNote ?? "needs a safetensors file and --aws-baseline",
            strict: true));

        var shuffled = st?.Runs.FirstOrDefault(x => x.Phase == "cold" && x.Order == "shuffled");
        var replayed = st?.Runs.FirstOrDefault(x => x.Phase == "cold" && x.Order == "shuffled, replay");
        list.Add(AtMost(
            "safetensors cold shuffled load, replaying its profile",
            0.6,
            replayed?.Seconds,
            shuffled?.Seconds,
            "the shuffled cold load again, replaying the access profile the load before it recorded, vs that load without one (issue 17)",
            "needs a safetensors file through an lmfs mount"));
        list.Add(AtMost(
            "replay: prefetched bytes unused",
            0.05,
            replayed?.PrefetchedBytes - replayed?.PrefetchUsedBytes,
            st?.Bytes,
            "bytes the replay prefetched that the load did not read vs the file's size",
            "needs a safetensors file through an lmfs mount"));

        long? peak = r.Phases.Max(p => p.PeakRssBytes);
        list.Add(AtMost(
            "peak memory",
            1.0,
            peak,
            r.BufferSize is { } b ? b + RssAllowance : null,
            $"peak RSS of the mount process vs --buffer-size + 150 MiB ({(r.BufferSize is { } bb ? Util.Sizes.Format(bb + RssAllowance) : "?")})",
            "needs the mount's pid (peak RSS) and its buffer size"));
        return list;
    }

    private static TargetResult AtLeast(string name, double min, double? value, double? ceiling, string what, string missing) =>
        Judge(name, "≥ " + min.ToString("0.00", CultureInfo.InvariantCulture), value, ceiling, ratio => ratio >= min, what, missing);

    private static TargetResult AtMost(string name, double max, double? value, double? ceiling, string what, string missing, bool strict = false) =>
        Judge(name, (strict ? "< " : "≤ ") + max.ToString("0.00", CultureInfo.InvariantCulture), value, ceiling, ratio => strict ? ratio < max : ratio <= max, what, missing);

    private static TargetResult Judge(string name, string target, double? value, double? ceiling, Func<double, bool> ok, string what, string missing)
    {
        if (value is not { } v || ceiling is not { } c || c <= 0 || double.IsNaN(v))
        {
            return new TargetResult(name, target, null, null, "not measured: " + missing);
        }

        double ratio = v / c;
        return new TargetResult(name, target, Math.Round(ratio, 3), ok(ratio), what);
    }
}
