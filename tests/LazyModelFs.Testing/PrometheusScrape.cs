using System.Globalization;
using System.Net;
using System.Text;

namespace LazyModelFs.Testing;

/// <summary>
/// A scrape of a <c>/metrics</c> page, parsed and checked against the text exposition format 0.0.4 as
/// Prometheus reads it: every sample line is <c>name{labels} value</c> with a number; every family has
/// one HELP and one TYPE line before its samples, and its samples are together; a histogram's buckets
/// (per label set) have increasing bounds, are cumulative, end in <c>le="+Inf"</c>, and that bucket
/// equals <c>_count</c>, with a <c>_sum</c>. <see cref="Parse"/> throws, saying which line, if not.
/// </summary>
public sealed class PrometheusScrape
{
    public sealed record Sample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);

    private PrometheusScrape(List<Sample> samples, Dictionary<string, string> types)
    {
        Samples = samples;
        Types = types;
    }

    public IReadOnlyList<Sample> Samples { get; }

    /// <summary>Family name → TYPE.</summary>
    public IReadOnlyDictionary<string, string> Types { get; }

    /// <summary>GET <paramref name="url"/>: status, Content-Type and body.</summary>
    public static async Task<(HttpStatusCode Status, string? ContentType, string Body)> GetAsync(string url, HttpMethod? method = null)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        using var request = new HttpRequestMessage(method ?? HttpMethod.Get, url);
        if (request.Method == HttpMethod.Post)
        {
            request.Content = new StringContent("x=1");
        }

        using var response = await http.SendAsync(request);
        string? type = response.Content.Headers.ContentType?.ToString();
        return (response.StatusCode, type, await response.Content.ReadAsStringAsync());
    }

    /// <summary>Scrapes and parses <paramref name="url"/>; anything but 200 with the 0.0.4 content type throws.</summary>
    public static async Task<PrometheusScrape> ScrapeAsync(string url)
    {
        var (status, type, body) = await GetAsync(url);
        if (status != HttpStatusCode.OK || type is null || !type.StartsWith("text/plain; version=0.0.4", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"scrape of {url}: {(int)status} {type}\n{body}");
        }

        return Parse(body);
    }

    public static PrometheusScrape Parse(string text)
    {
        var samples = new List<Sample>();
        var help = new HashSet<string>(StringComparer.Ordinal);
        var types = new Dictionary<string, string>(StringComparer.Ordinal);
        var done = new HashSet<string>(StringComparer.Ordinal);
        string? current = null;
        int n = 0;
        foreach (var line in text.Split('\n'))
        {
            n++;
            if (line.Length == 0)
            {
                continue;
            }

            string Fail(string why) => throw new FormatException($"line {n}: {why}: {line}");
            if (line.StartsWith('#'))
            {
                var parts = line.Split(' ', 4);
                if (parts.Length < 3 || parts[1] is not ("HELP" or "TYPE"))
                {
                    continue; // a plain comment
                }

                string family = parts[2];
                if (parts[1] == "HELP" && !help.Add(family))
                {
                    Fail("a second HELP");
                }

                if (parts[1] == "TYPE")
                {
                    if (parts.Length != 4 || parts[3] is not ("counter" or "gauge" or "histogram" or "summary" or "untyped") || !types.TryAdd(family, parts[3]))
                    {
                        Fail("a bad or second TYPE");
                    }

                    if (samples.Any(s => FamilyOf(s.Name, types) == family))
                    {
                        Fail("TYPE after samples of the family");
                    }
                }

                continue;
            }

            var (name, labels, value) = ParseSample(line, Fail);
            string fam = FamilyOf(name, types);
            if (!help.Contains(fam) || !types.ContainsKey(fam))
            {
                Fail($"no HELP and TYPE for family {fam} before it");
            }

            if (fam != current)
            {
                if (current is not null)
                {
                    done.Add(current);
                }

                if (done.Contains(fam))
                {
                    Fail($"samples of {fam} are not together");
                }

                current = fam;
            }

            if (types[fam] is "counter" && !name.EndsWith("_total", StringComparison.Ordinal))
            {
                Fail("a counter whose name does not end in _total");
            }

            samples.Add(new Sample(name, labels, value));
        }

        var scrape = new PrometheusScrape(samples, types);
        foreach (var (family, type) in types.Where(t => t.Value == "histogram"))
        {
            scrape.CheckHistogram(family);
        }

        return scrape;
    }

    /// <summary>The value of the one sample named <paramref name="name"/> with exactly these labels.</summary>
    public double Value(string name, params (string Key, string Value)[] labels)
    {
        var found = Samples.Where(s => s.Name == name && s.Labels.Count == labels.Length && labels.All(l => s.Labels.TryGetValue(l.Key, out var v) && v == l.Value)).ToList();
        return found.Count == 1 ? found[0].Value : throw new InvalidOperationException($"{found.Count} samples {name}{{{string.Join(",", labels.Select(l => $"{l.Key}={l.Value}"))}}}");
    }

    /// <summary>The sum of every sample named <paramref name="name"/> whose labels include these.</summary>
    public double Sum(string name, params (string Key, string Value)[] labels) =>
        Samples.Where(s => s.Name == name && labels.All(l => s.Labels.TryGetValue(l.Key, out var v) && v == l.Value)).Sum(s => s.Value);

    public bool Has(string name) => Samples.Any(s => s.Name == name);

    private static string FamilyOf(string name, IReadOnlyDictionary<string, string> types)
    {
        foreach (var suffix in new[] { "_bucket", "_sum", "_count" })
        {
            if (name.EndsWith(suffix, StringComparison.Ordinal) && types.TryGetValue(name[..^suffix.Length], out var t) && t is "histogram" or "summary")
            {
                return name[..^suffix.Length];
            }
        }

        return name;
    }

    private void CheckHistogram(string family)
    {
        static string Key(IReadOnlyDictionary<string, string> labels) => string.Join(",", labels.Where(l => l.Key != "le").OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => $"{l.Key}={l.Value}"));
        foreach (var group in Samples.Where(s => s.Name == family + "_bucket").GroupBy(s => Key(s.Labels)))
        {
            var buckets = group.ToList();
            if (buckets[^1].Labels["le"] != "+Inf")
            {
                throw new FormatException($"{family}{{{group.Key}}}: the last bucket is le=\"{buckets[^1].Labels["le"]}\", not +Inf");
            }

            for (int i = 1; i < buckets.Count; i++)
            {
                double lo = Bound(buckets[i - 1].Labels["le"]), hi = Bound(buckets[i].Labels["le"]);
                if (!(hi > lo) || buckets[i].Value < buckets[i - 1].Value)
                {
                    throw new FormatException($"{family}{{{group.Key}}}: bucket le={buckets[i].Labels["le"]} is not after le={buckets[i - 1].Labels["le"]} or not cumulative");
                }
            }

            var count = Samples.Where(s => s.Name == family + "_count" && Key(s.Labels) == group.Key).ToList();
            if (count.Count != 1 || count[0].Value != buckets[^1].Value || !Samples.Any(s => s.Name == family + "_sum" && Key(s.Labels) == group.Key))
            {
                throw new FormatException($"{family}{{{group.Key}}}: _count is not the +Inf bucket ({buckets[^1].Value}), or _sum is missing");
            }
        }
    }

    private static double Bound(string le) => le == "+Inf" ? double.PositiveInfinity : double.Parse(le, NumberStyles.Float, CultureInfo.InvariantCulture);

    private static (string Name, Dictionary<string, string> Labels, double Value) ParseSample(string line, Func<string, string> fail)
    {
        int i = 0;
        while (i < line.Length && (char.IsAsciiLetterOrDigit(line[i]) || line[i] is '_' or ':'))
        {
            i++;
        }

        string name = line[..i];
        if (name.Length == 0 || char.IsAsciiDigit(name[0]))
        {
            fail("no metric name");
        }

        var labels = new Dictionary<string, string>(StringComparer.Ordinal);
        if (i < line.Length && line[i] == '{')
        {
            i++;
            while (line[i] != '}')
            {
                int k = i;
                while (char.IsAsciiLetterOrDigit(line[i]) || line[i] == '_')
                {
                    i++;
                }

                string key = line[k..i];
                if (key.Length == 0 || line[i] != '=' || line[i + 1] != '"')
                {
                    fail("a bad label");
                }

                i += 2;
                var v = new StringBuilder();
                while (line[i] != '"')
                {
                    if (line[i] == '\\')
                    {
                        i++;
                        v.Append(line[i] switch { 'n' => '\n', '\\' => '\\', '"' => '"', _ => throw new FormatException($"bad escape in {line}") });
                    }
                    else
                    {
                        v.Append(line[i]);
                    }

                    i++;
                }

                i++;
                if (!labels.TryAdd(key, v.ToString()))
                {
                    fail("a label twice");
                }

                if (line[i] == ',')
                {
                    i++;
                }
            }

            i++;
        }

        if (i >= line.Length || line[i] != ' ')
        {
            fail("no space before the value");
        }

        string value = line[(i + 1)..];
        double d = value switch
        {
            "+Inf" => double.PositiveInfinity,
            "-Inf" => double.NegativeInfinity,
            "NaN" => double.NaN,
            _ => double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var x) ? x : throw new FormatException($"value '{value}' is not a number: {line}"),
        };
        return (name, labels, d);
    }
}
