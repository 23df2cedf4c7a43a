using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LazyModelFs.Cli.Commands;

/// <summary>
/// The one style of every `--json` document (docs/operations.md, "JSON output"): camelCase keys,
/// indented, one document on stdout followed by a newline. Times are RFC 3339 in UTC with a `Z`,
/// with the fraction of a second the record holds (volume times keep nanoseconds), and beside each
/// one its `…Unix` twin: the same instant in seconds since the epoch, exact (a decimal, not a double).
/// A command that fails before its result is complete prints nothing on stdout, only its error on
/// stderr; one that finishes with a finding (fsck: damage; import: entries not imported) prints its
/// document and then exits with that finding's code.
/// </summary>
internal static class Json
{
    public static readonly JsonSerializerOptions Options = new() { WriteIndented = true };

    public static readonly JsonWriterOptions WriterOptions = new() { Indented = true };

    public static void Print(JsonNode document) => Console.WriteLine(document.ToJsonString(Options));

    /// <summary>Streams one document to stdout in this style (for the large ones: fsck's damage list), then the newline.</summary>
    public static void Write(Action<Utf8JsonWriter> document)
    {
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout, WriterOptions))
        {
            document(w);
        }

        stdout.WriteByte((byte)'\n');
    }

    /// <summary>RFC 3339, UTC: `2026-12-01T14:00:00Z`, or `2026-12-01T14:00:00.123456789Z` when the time has a fraction of a second.</summary>
    public static string Time(long unixNs)
    {
        long secs = Math.DivRem(unixNs, 1_000_000_000L, out long frac);
        if (frac < 0)
        {
            secs--;
            frac += 1_000_000_000L;
        }

        string whole = DateTime.UnixEpoch.AddSeconds(secs).ToString("yyyy-MM-ddTHH:mm:ss", CultureInfo.InvariantCulture);
        return frac == 0 ? whole + "Z" : whole + "." + frac.ToString("D9", CultureInfo.InvariantCulture).TrimEnd('0') + "Z";
    }

    public static string Time(DateTime utc) => Time(UnixNs(utc));

    /// <summary>Seconds since the epoch, exact to the nanosecond.</summary>
    public static decimal Unix(long unixNs) => unixNs / 1_000_000_000m;

    /// <summary>Nanoseconds since the epoch; a time of unspecified kind is taken as UTC (file times here are), never shifted by the local zone.</summary>
    public static long UnixNs(DateTime utc) => ((utc.Kind == DateTimeKind.Local ? utc.ToUniversalTime() : utc) - DateTime.UnixEpoch).Ticks * 100;

    /// <summary>Adds <paramref name="name"/> (RFC 3339) and <paramref name="name"/>Unix (seconds) to <paramref name="o"/>.</summary>
    public static void AddTime(JsonObject o, string name, long unixNs)
    {
        o[name] = Time(unixNs);
        o[name + "Unix"] = Unix(unixNs);
    }

    /// <summary>Permission bits as an octal string, as stat -c %a shows them with a leading 0: "0644".</summary>
    public static string Mode(uint mode) => "0" + Convert.ToString(mode & 0xFFF, 8).PadLeft(3, '0');
}
