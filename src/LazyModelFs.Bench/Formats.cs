using System.Globalization;
using System.Net;
using System.Text;
using LazyModelFs.Util;

namespace LazyModelFs.Bench;

/// <summary>
/// The ways a report is shown: a plain-text table for the terminal (ratios beside each phase), a
/// self-contained HTML page with an SVG bar chart of each phase against its ceiling, and the
/// side-by-side comparison of several systems (text or Markdown, for docs/benchmarks.md).
/// </summary>
public static class Formats
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Which ceiling each phase is judged against, by name, and how to read it.</summary>
    public static (string Label, double? MBps) CeilingOf(BenchReport r, string phase) => phase switch
    {
        "cold" => ($"{r.Ceilings.Store?.Parallel.Readers ?? 16} parallel GETs", r.Ceilings.Store?.Parallel.MBps),
        "warm" => ("local disk cold", r.Ceilings.LocalCold?.Seq1.MBps),
        "hot" => ("local disk hot", r.Ceilings.LocalHot?.Seq1.MBps),
        _ => ("", null),
    };

    public static string Text(BenchReport r)
    {
        var sb = new StringBuilder();
        sb.Append(Inv, $"lmfs bench: {r.System} reading {r.File} ({Sizes.Format(r.FileBytes)}), {r.Date:yyyy-MM-dd HH:mm} UTC\n");
        sb.Append(Inv, $"machine: {r.Machine.Cores} cores, {Sizes.Format(r.Machine.MemoryBytes)}, Linux {r.Machine.Kernel}, {r.Machine.Runtime}\n");
        sb.Append(Inv, $"readers: 1 and {r.Readers}; {r.RandomReads} random reads of {Sizes.Format(r.ReadSize)}\n\n");

        if (r.Ceilings.Store is { } s)
        {
            sb.Append("ceilings\n");
            sb.Append(Inv, $"  object store, {s.Parallel.Readers} parallel GETs  {s.Parallel.MBps,8:0} MB/s\n");
            sb.Append(Inv, $"  object store, 1 stream of GETs  {s.Single.MBps,8:0} MB/s   random {Lat(s.Random.Latency)} ms   first MiB {s.FirstMiBMs:0.0} ms\n");
        }

        var rows = new List<PhaseResult>();
        if (r.Ceilings.LocalCold is { } lc)
        {
            rows.Add(lc);
        }

        if (r.Ceilings.LocalHot is { } lh)
        {
            rows.Add(lh);
        }

        rows.AddRange(r.Phases);
        if (rows.Count > 0)
        {
            sb.Append('\n');
            sb.Append(Inv, $"{"phase",-16} {"1 reader",10} {r.Readers + " readers",11} {"random p50/p95/p99 ms",24} {"first MiB",10} {"CPU s/GB",9} {"peak RSS",10}  ratio to ceiling\n");
            foreach (var p in rows)
            {
                var (label, ceiling) = CeilingOf(r, p.Name);
                string ratio = ceiling is { } c && c > 0 ? $"{p.Seq1.MBps / c:0.00} of {label}" : "";
                sb.Append(Inv, $"{p.Name,-16} {p.Seq1.MBps,5:0} MB/s {p.SeqN.MBps,6:0} MB/s {Lat(p.Random.Latency),24} {p.FirstMiBMs,7:0.0} ms {Opt(p.CpuSecondsPerGB, "0.00"),9} {(p.PeakRssBytes is { } m ? Sizes.Format(m) : "-"),10}  {ratio}\n");
            }
        }

        if (r.Safetensors is { } st)
        {
            sb.Append(Inv, $"\nsafetensors: {st.Path} ({Sizes.Format(st.Bytes)}, {st.Tensors} tensors; mmap, every tensor copied out)\n");
            foreach (var run in st.Runs)
            {
                sb.Append(Inv, $"  {run.Phase,-5} {run.Order + " order",-15} first tensor {run.FirstTensorMs,8:0.0} ms   total {run.Seconds,7:0.000} s  {run.MBps,6:0} MB/s\n");
            }

            if (st.Baseline is { } b)
            {
                sb.Append(Inv, $"  baseline: download {b.DownloadSeconds:0.000} s + load {b.LoadSeconds:0.000} s = {b.TotalSeconds:0.000} s ({b.Command})\n");
            }
            else if (st.BaselineNote is not null)
            {
                sb.Append(Inv, $"  baseline: {st.BaselineNote}\n");
            }
        }

        if (r.Targets.Count > 0)
        {
            sb.Append("\ntargets (performance.md)\n");
            foreach (var t in r.Targets)
            {
                string verdict = t.Met switch { true => "met", false => "MISSED", null => "n/a" };
                sb.Append(Inv, $"  [{verdict,-6}] {t.Name,-24} {t.Target,-7} {(t.Ratio is { } x ? x.ToString("0.00", Inv) : "-"),6}  {t.Detail}\n");
            }
        }

        foreach (var n in r.Notes)
        {
            sb.Append("note: ").Append(n).Append('\n');
        }

        return sb.ToString();
    }

    private static string Lat(LatencySummary l) => l.Count == 0 ? "-" : string.Create(Inv, $"{l.P50Ms:0.0}/{l.P95Ms:0.0}/{l.P99Ms:0.0}");

    private static string Opt(double? v, string fmt) => v is { } x ? x.ToString(fmt, Inv) : "-";

    // ------------------------------------------------------------------ HTML

    /// <summary>A self-contained page: no scripts, no external files; the chart is inline SVG.</summary>
    public static string Html(BenchReport r)
    {
        var bars = new List<(string Label, double MBps, bool Ceiling)>();
        if (r.Ceilings.Store is { } s)
        {
            bars.Add(($"{s.Parallel.Readers} parallel GETs", s.Parallel.MBps, true));
            bars.Add(("1 stream of GETs", s.Single.MBps, true));
        }

        foreach (var p in new[] { r.Phase("cold"), r.Ceilings.LocalCold, r.Phase("warm"), r.Ceilings.LocalHot, r.Phase("hot") })
        {
            if (p is not null)
            {
                bars.Add((p.Name, p.Seq1.MBps, p.Name.StartsWith("local", StringComparison.Ordinal)));
            }
        }

        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lmfs bench: ")
          .Append(E(r.System)).Append("</title>\n<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.met{color:#17702a}.missed{color:#b00020;font-weight:bold}</style></head><body>\n");
        sb.Append(Inv, $"<h1>lmfs bench: {E(r.System)}</h1>\n<p>{E(r.File)} ({E(Sizes.Format(r.FileBytes))}), {r.Date:yyyy-MM-dd HH:mm} UTC; {r.Machine.Cores} cores, {E(Sizes.Format(r.Machine.MemoryBytes))}, Linux {E(r.Machine.Kernel)}, {E(r.Machine.Runtime)}. One reader per sequential figure; ceilings measured in the same run.</p>\n");
        sb.Append(Svg(bars));
        sb.Append("<h2>Phases</h2>\n<table><tr><th>phase</th><th>1 reader MB/s</th><th>").Append(r.Readers).Append(" readers MB/s</th><th>random p50 / p95 / p99 ms</th><th>first MiB ms</th><th>CPU s/GB</th><th>peak RSS</th><th>ratio to ceiling</th></tr>\n");
        foreach (var p in new[] { r.Ceilings.LocalCold, r.Ceilings.LocalHot }.OfType<PhaseResult>().Concat(r.Phases))
        {
            var (label, ceiling) = CeilingOf(r, p.Name);
            sb.Append(Inv, $"<tr><td>{E(p.Name)}</td><td>{p.Seq1.MBps:0}</td><td>{p.SeqN.MBps:0}</td><td>{Lat(p.Random.Latency)}</td><td>{p.FirstMiBMs:0.0}</td><td>{Opt(p.CpuSecondsPerGB, "0.00")}</td><td>{(p.PeakRssBytes is { } m ? E(Sizes.Format(m)) : "-")}</td><td>{(ceiling is { } c && c > 0 ? string.Create(Inv, $"{p.Seq1.MBps / c:0.00} of {E(label)}") : "")}</td></tr>\n");
        }

        sb.Append("</table>\n");
        if (r.Safetensors is { } st)
        {
            sb.Append(Inv, $"<h2>safetensors</h2>\n<p>{E(st.Path)} ({E(Sizes.Format(st.Bytes))}, {st.Tensors} tensors): mmap, every tensor copied out.</p>\n<table><tr><th>phase</th><th>order</th><th>first tensor ms</th><th>total s</th><th>MB/s</th></tr>\n");
            foreach (var run in st.Runs)
            {
                sb.Append(Inv, $"<tr><td>{E(run.Phase)}</td><td>{E(run.Order)}</td><td>{run.FirstTensorMs:0.0}</td><td>{run.Seconds:0.000}</td><td>{run.MBps:0}</td></tr>\n");
            }

            if (st.Baseline is { } b)
            {
                sb.Append(Inv, $"<tr><td>baseline</td><td>download, then load</td><td></td><td>{b.TotalSeconds:0.000}</td><td>{st.Bytes / 1e6 / b.TotalSeconds:0}</td></tr>\n");
            }

            sb.Append("</table>\n");
        }

        sb.Append("<h2>Targets</h2>\n<table><tr><th>figure</th><th>target</th><th>ratio</th><th>verdict</th><th>how</th></tr>\n");
        foreach (var t in r.Targets)
        {
            string verdict = t.Met switch { true => "<span class=\"met\">met</span>", false => "<span class=\"missed\">missed</span>", null => "not measured" };
            sb.Append(Inv, $"<tr><td>{E(t.Name)}</td><td>{E(t.Target)}</td><td>{(t.Ratio is { } x ? x.ToString("0.00", Inv) : "-")}</td><td>{verdict}</td><td style=\"text-align:left\">{E(t.Detail)}</td></tr>\n");
        }

        sb.Append("</table>\n");
        foreach (var n in r.Notes)
        {
            sb.Append("<p>").Append(E(n)).Append("</p>\n");
        }

        sb.Append("</body></html>\n");
        return sb.ToString();
    }

    /// <summary>
    /// Horizontal bars, MB/s, ceilings grey and phases blue, with the value written at the end of each
    /// bar, on a logarithmic scale with a line and label at each power of ten. The figures span three
    /// or four orders of magnitude (a cold read from a store next to the page cache): on a linear
    /// scale the mount's cold bar was about 5 px wide (issue 18, item 14); on this one equal ratios
    /// are equal lengths, so "a tenth of the ceiling" reads the same wherever it is.
    /// </summary>
    public static string Svg(IReadOnlyList<(string Label, double MBps, bool Ceiling)> bars)
    {
        const int labelW = 170, barMax = 420, rowH = 26, top = 10, axisH = 16;
        var (lo, hi) = Decades(bars.Select(b => b.MBps));
        int h = top + (bars.Count * rowH) + axisH + 24;
        var sb = new StringBuilder();
        sb.Append(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{labelW + barMax + 90}\" height=\"{h}\" role=\"img\" aria-label=\"sequential MB/s of each phase and ceiling, logarithmic scale\">\n");
        int axisY = top + (bars.Count * rowH);
        for (double d = lo; d <= hi * 1.0001; d *= 10)
        {
            double x = labelW + BarWidth(d, lo, hi, barMax);
            sb.Append(Inv, $"<line x1=\"{x:0.0}\" y1=\"{top}\" x2=\"{x:0.0}\" y2=\"{axisY}\" stroke=\"#ddd\"/>");
            sb.Append(Inv, $"<text x=\"{x:0.0}\" y=\"{axisY + 12}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#555\">{d:0}</text>\n");
        }

        for (int i = 0; i < bars.Count; i++)
        {
            var (label, mbps, ceiling) = bars[i];
            int y = top + (i * rowH);
            double w = BarWidth(mbps, lo, hi, barMax);
            sb.Append(Inv, $"<text x=\"{labelW - 8}\" y=\"{y + 16}\" text-anchor=\"end\" font-size=\"13\">{E(label)}</text>");
            sb.Append(Inv, $"<rect x=\"{labelW}\" y=\"{y + 3}\" width=\"{w:0.0}\" height=\"{rowH - 8}\" fill=\"{(ceiling ? "#9aa0a6" : "#1a73e8")}\"/>");
            sb.Append(Inv, $"<text x=\"{labelW + w + 6:0.0}\" y=\"{y + 16}\" font-size=\"12\">{mbps:0} MB/s</text>\n");
        }

        sb.Append(Inv, $"<text x=\"{labelW}\" y=\"{h - 6}\" font-size=\"11\" fill=\"#555\">MB/s, logarithmic scale (each line ten times the last); grey: ceilings measured in the same run; blue: phases through the mount (1 reader)</text>\n</svg>\n");
        return sb.ToString();
    }

    /// <summary>The power of ten below the smallest positive figure and the one at or above the largest.</summary>
    internal static (double Lo, double Hi) Decades(IEnumerable<double> values)
    {
        var positive = values.Where(v => v > 0 && double.IsFinite(v)).ToList();
        if (positive.Count == 0)
        {
            return (1, 10);
        }

        double lo = Math.Pow(10, Math.Ceiling(Math.Log10(positive.Min())) - 1); // below the smallest, so its bar has a length
        double hi = Math.Max(lo * 10, Math.Pow(10, Math.Ceiling(Math.Log10(positive.Max()))));
        return (lo, hi);
    }

    /// <summary>A bar's length on the log scale from <paramref name="lo"/> (0 px) to <paramref name="hi"/> (<paramref name="barMax"/> px); at least 1 px.</summary>
    internal static double BarWidth(double mbps, double lo, double hi, int barMax) =>
        mbps <= lo ? 1 : Math.Max(1, barMax * Math.Log10(mbps / lo) / Math.Log10(hi / lo));

    private static string E(string s) => WebUtility.HtmlEncode(s);

    // ------------------------------------------------------------------ side by side

    /// <summary>
    /// One row per figure, one column per system. Each column's ratios use its own ceilings when its
    /// report has them (a tuning sweep), else those of the first report that has them (peers measured
    /// beside an lmfs run with --no-ceilings).
    /// </summary>
    public static string Compare(IReadOnlyList<BenchReport> reports, bool markdown)
    {
        var reference = reports.FirstOrDefault(r => r.Ceilings.Store is not null || r.Ceilings.LocalCold is not null) ?? reports[0];
        Ceilings C(BenchReport r) => r.Ceilings.Store is not null || r.Ceilings.LocalCold is not null ? r.Ceilings : reference.Ceilings;
        BenchReport WithCeilings(BenchReport r) => r with { Ceilings = C(r) };
        var rows = new List<(string Figure, string[] Cells)>();
        string[] Each(Func<BenchReport, string> f) => reports.Select(f).ToArray();
        string Mb(double? v) => v is { } x ? x.ToString("0", Inv) : "-";
        string Ms(double? v) => v is { } x ? x.ToString("0.0", Inv) : "-";

        if (reports.Any(r => C(r).Store is not null))
        {
            rows.Add(($"ceiling: {C(reference).Store?.Parallel.Readers ?? 16} parallel GETs, MB/s", Each(r => Mb(C(r).Store?.Parallel.MBps))));
            rows.Add(("ceiling: 1 stream of GETs, MB/s", Each(r => Mb(C(r).Store?.Single.MBps))));
        }

        if (reports.Any(r => C(r).LocalCold is not null))
        {
            rows.Add(("ceiling: local disk cold / hot, MB/s", Each(r => $"{Mb(C(r).LocalCold?.Seq1.MBps)} / {Mb(C(r).LocalHot?.Seq1.MBps)}")));
        }

        foreach (var phase in new[] { "cold", "warm", "hot" })
        {
            if (reports.All(r => r.Phase(phase) is null))
            {
                continue;
            }

            var (label, _) = CeilingOf(reference, phase);
            rows.Add(($"{phase}, 1 reader, MB/s (ratio to {label})", Each(r =>
            {
                var (_, c) = CeilingOf(WithCeilings(r), phase);
                return r.Phase(phase) is { } p ? $"{Mb(p.Seq1.MBps)} ({(c is > 0 ? (p.Seq1.MBps / c.Value).ToString("0.00", Inv) : "-")})" : "-";
            })));
            rows.Add(($"{phase}, {reference.Readers} readers, MB/s", Each(r => Mb(r.Phase(phase)?.SeqN.MBps))));
        }

        rows.Add(("cold random 1 MiB p50 / p99, ms", Each(r => r.Phase("cold") is { } p ? $"{Ms(p.Random.Latency.P50Ms)} / {Ms(p.Random.Latency.P99Ms)}" : "-")));
        rows.Add(("cold random reads: bytes moved / read", Each(r => r.Phase("cold") is { RandomStoreBytes: { } moved, Random.Bytes: > 0 } p ? (moved / (double)p.Random.Bytes).ToString("0.00", Inv) : "-")));
        rows.Add(("cold first MiB, ms", Each(r => Ms(r.Phase("cold")?.FirstMiBMs))));
        rows.Add(("cold CPU s/GB (mount process)", Each(r => r.Phase("cold")?.CpuSecondsPerGB is { } v ? v.ToString("0.00", Inv) : "-")));
        rows.Add(("warm CPU s/GB (mount process)", Each(r => r.Phase("warm")?.CpuSecondsPerGB is { } v ? v.ToString("0.00", Inv) : "-")));
        rows.Add(("peak RSS", Each(r => r.Phases.Max(p => p.PeakRssBytes) is { } m ? Sizes.Format(m) : "-")));
        if (reports.Any(r => r.Safetensors is not null))
        {
            string St(BenchReport r, string phase, string order) =>
                r.Safetensors?.Runs.FirstOrDefault(x => x.Phase == phase && x.Order == order) is { } x ? string.Create(Inv, $"{x.Seconds:0.00} s ({x.FirstTensorMs:0} ms)") : "-";
            rows.Add(("safetensors cold, file order: total (first tensor)", Each(r => St(r, "cold", "file"))));
            rows.Add(("safetensors cold, shuffled: total (first tensor)", Each(r => St(r, "cold", "shuffled"))));
            rows.Add(("safetensors cold, shuffled, replaying its profile: total (first tensor)", Each(r => St(r, "cold", "shuffled, replay"))));
            rows.Add(("replay: prefetched bytes unused / file", Each(r => r.Safetensors is { } st && st.Runs.FirstOrDefault(x => x.Phase == "cold" && x.Order == "shuffled, replay") is { PrefetchedBytes: { } pb, PrefetchUsedBytes: { } pu } ? ((pb - pu) / (double)st.Bytes).ToString("0.000", Inv) : "-")));
            rows.Add(("safetensors warm, file order: total (first tensor)", Each(r => St(r, "warm", "file"))));
            rows.Add(("safetensors warm, shuffled: total (first tensor)", Each(r => St(r, "warm", "shuffled"))));
            var b = reports.Select(r => r.Safetensors?.Baseline).FirstOrDefault(x => x is not null);
            if (b is not null)
            {
                rows.Add(("baseline: AWS CLI download + load, s", Each(_ => string.Create(Inv, $"{b.DownloadSeconds:0.00} + {b.LoadSeconds:0.00}"))));
            }
        }

        var header = new[] { "figure" }.Concat(reports.Select(r => r.System)).ToArray();
        var sb = new StringBuilder();
        if (markdown)
        {
            sb.Append("| ").Append(string.Join(" | ", header)).Append(" |\n");
            sb.Append("| ").Append(string.Join(" | ", header.Select(_ => "---"))).Append(" |\n");
            foreach (var (fig, cells) in rows)
            {
                sb.Append("| ").Append(fig).Append(" | ").Append(string.Join(" | ", cells)).Append(" |\n");
            }
        }
        else
        {
            int w0 = Math.Max(header[0].Length, rows.Max(r => r.Figure.Length));
            var widths = Enumerable.Range(0, reports.Count).Select(i => Math.Max(header[i + 1].Length, rows.Max(r => r.Cells[i].Length))).ToArray();
            sb.Append(header[0].PadRight(w0));
            for (int i = 0; i < reports.Count; i++)
            {
                sb.Append("  ").Append(header[i + 1].PadLeft(widths[i]));
            }

            sb.Append('\n');
            foreach (var (fig, cells) in rows)
            {
                sb.Append(fig.PadRight(w0));
                for (int i = 0; i < cells.Length; i++)
                {
                    sb.Append("  ").Append(cells[i].PadLeft(widths[i]));
                }

                sb.Append('\n');
            }
        }

        return sb.ToString();
    }
}
