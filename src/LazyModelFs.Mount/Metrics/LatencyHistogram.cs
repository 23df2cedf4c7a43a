using System.Diagnostics;
using System.Text.Json.Nodes;

namespace LazyModelFs.Metrics;

/// <summary>
/// A latency histogram with fixed buckets, recorded lock-free (one Interlocked increment of the bucket
/// and one add to the sum per observation: it sits on the fetch path). Read as a snapshot whose count is
/// the sum of the buckets read, so a scrape never shows a +Inf bucket that differs from its _count,
/// however many observations land while it reads.
/// </summary>
public sealed class LatencyHistogram
{
    /// <summary>
    /// Upper bounds in seconds. A chunk GET from a nearby S3 or a local disk takes milliseconds; a
    /// 4-64 MiB object over a slow link seconds; a fetch retried under an outage up to --fetch-timeout
    /// (60 s by default): the buckets span all three.
    /// </summary>
    public static readonly double[] DefaultBounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

    private readonly double[] _bounds;
    private readonly long[] _counts; // per bucket, not cumulative; the last one is +Inf
    private long _sumTicks;

    public LatencyHistogram(double[]? bounds = null)
    {
        _bounds = bounds ?? DefaultBounds;
        _counts = new long[_bounds.Length + 1];
    }

    /// <summary>Records one duration given in <see cref="Stopwatch"/> ticks.</summary>
    public void Observe(long ticks)
    {
        double seconds = (double)ticks / Stopwatch.Frequency;
        int i = 0;
        while (i < _bounds.Length && seconds > _bounds[i])
        {
            i++;
        }

        Interlocked.Increment(ref _counts[i]);
        Interlocked.Add(ref _sumTicks, ticks);
    }

    /// <summary>
    /// The stats form: <c>{"le": [bounds], "counts": [cumulative, one per bound, then +Inf], "count": N, "sum": seconds}</c>;
    /// <c>counts</c>' last element (the +Inf bucket) equals <c>count</c>.
    /// </summary>
    public JsonObject ToJson()
    {
        var le = new JsonArray();
        foreach (double b in _bounds)
        {
            le.Add(b);
        }

        var counts = new JsonArray();
        long cumulative = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            cumulative += Interlocked.Read(ref _counts[i]);
            counts.Add(cumulative);
        }

        return new JsonObject
        {
            ["le"] = le,
            ["counts"] = counts,
            ["count"] = cumulative,
            ["sum"] = (double)Interlocked.Read(ref _sumTicks) / Stopwatch.Frequency,
        };
    }
}
