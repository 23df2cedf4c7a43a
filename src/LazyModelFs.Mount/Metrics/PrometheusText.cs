using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace LazyModelFs.Metrics;

/// <summary>
/// Writes the Prometheus text exposition format, version 0.0.4
/// (https://prometheus.io/docs/instrumenting/exposition_formats/): per family one <c># HELP</c> and one
/// <c># TYPE</c> line, then its samples <c>name{label="value",...} value</c>, each family's samples
/// together. Label values escape backslash, double quote and newline; HELP text backslash and newline.
/// A family with no sample is left out entirely.
/// </summary>
public sealed class PrometheusText
{
    /// <summary>The Content-Type of what <see cref="ToString"/> returns.</summary>
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    private readonly StringBuilder _sb = new();

    /// <summary>A counter or gauge family: <paramref name="samples"/> are (labels, value); the labels may be empty.</summary>
    public void Family(string name, string type, string help, IEnumerable<(Labels Labels, double Value)> samples)
    {
        bool first = true;
        foreach (var (labels, value) in samples)
        {
            if (first)
            {
                Header(name, type, help);
                first = false;
            }

            Sample(name, labels, null, value);
        }
    }

    /// <summary>
    /// A histogram family from stats objects in <see cref="LatencyHistogram.ToJson"/>'s form: cumulative
    /// <c>_bucket</c> samples ending in <c>le="+Inf"</c>, then <c>_sum</c> and <c>_count</c>.
    /// </summary>
    public void Histogram(string name, string help, IEnumerable<(Labels Labels, JsonObject Histogram)> samples)
    {
        bool first = true;
        foreach (var (labels, h) in samples)
        {
            if (h["le"] is not JsonArray le || h["counts"] is not JsonArray counts || counts.Count != le.Count + 1)
            {
                continue; // not a histogram this version writes
            }

            if (first)
            {
                Header(name, "histogram", help);
                first = false;
            }

            for (int i = 0; i < counts.Count; i++)
            {
                string bound = i < le.Count ? Number(Num(le[i]) ?? double.NaN) : "+Inf";
                Sample(name + "_bucket", labels, bound, Num(counts[i]) ?? 0);
            }

            Sample(name + "_sum", labels, null, Num(h["sum"]) ?? 0);
            Sample(name + "_count", labels, null, Num(counts[^1]) ?? 0); // the +Inf bucket, by definition
        }
    }

    public override string ToString() => _sb.ToString();

    /// <summary>A JSON number as a double, whether the node was parsed or built from a CLR value; null otherwise.</summary>
    public static double? Num(JsonNode? n) =>
        n is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number
            ? double.Parse(v.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture)
            : null;

    private void Header(string name, string type, string help)
    {
        _sb.Append("# HELP ").Append(name).Append(' ').Append(help.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal)).Append('\n');
        _sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
    }

    private void Sample(string name, Labels labels, string? le, double value)
    {
        _sb.Append(name);
        if (labels.Count > 0 || le is not null)
        {
            _sb.Append('{');
            bool comma = false;
            foreach (var (k, v) in labels)
            {
                Label(k, v, ref comma);
            }

            if (le is not null)
            {
                Label("le", le, ref comma);
            }

            _sb.Append('}');
        }

        _sb.Append(' ').Append(Number(value)).Append('\n');
    }

    private void Label(string key, string value, ref bool comma)
    {
        if (comma)
        {
            _sb.Append(',');
        }

        comma = true;
        _sb.Append(key).Append("=\"");
        foreach (char c in value)
        {
            _ = c switch
            {
                '\\' => _sb.Append("\\\\"),
                '"' => _sb.Append("\\\""),
                '\n' => _sb.Append("\\n"),
                _ => _sb.Append(c),
            };
        }

        _sb.Append('"');
    }

    /// <summary>Whole numbers without a fraction or exponent (counters up to 2^53 exactly); others round-trip.</summary>
    private static string Number(double v) =>
        double.IsPositiveInfinity(v) ? "+Inf"
        : double.IsNegativeInfinity(v) ? "-Inf"
        : double.IsNaN(v) ? "NaN"
        : v == Math.Floor(v) && Math.Abs(v) < 1e15 ? ((long)v).ToString(CultureInfo.InvariantCulture)
        : v.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>The labels of one sample, in order (immutable); <see cref="None"/> for none.</summary>
public sealed class Labels(params (string Key, string Value)[] pairs) : IReadOnlyList<(string Key, string Value)>
{
    private readonly (string Key, string Value)[] _pairs = pairs;

    public static Labels None { get; } = new();

    public int Count => _pairs.Length;

    public (string Key, string Value) this[int index] => _pairs[index];

    /// <summary>These labels and one more.</summary>
    public Labels With(string key, string value) => new([.. _pairs, (key, value)]);

    public IEnumerator<(string Key, string Value)> GetEnumerator() => ((IEnumerable<(string Key, string Value)>)_pairs).GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
}
