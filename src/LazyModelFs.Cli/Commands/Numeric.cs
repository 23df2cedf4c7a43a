using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Numerics;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

/// <summary>
/// Every numeric option of every command is built here, so each has one range that is shown in
/// --help, listed in docs/operations.md ("Accepted ranges") and checked while the command line is
/// parsed, before anything starts: a value outside it is a usage error (exit 2) that names the
/// option and the range. Without it, numbers that parse reach code that cannot take them (issue 11,
/// item 8): `--fetch-timeout 10000000` passed every check and then failed each cold READ (past the
/// ~24.8-day limit of a timer); `--entry-timeout 1e12` overflowed a TimeSpan; `NaN` passed every
/// "below the minimum" test; `-j 0` reached Parallel.ForEachAsync.
///
/// The ranges are what the code behind each option is known to handle, not what a machine can
/// afford: whether 1T of --buffer-size fits in memory is for the mount to find out.
/// Numbers are parsed with the invariant culture; NaN and infinities are refused; whole-number
/// options take no fraction or exponent.
/// </summary>
internal static class Numeric
{
    /// <summary>A whole number from <paramref name="min"/> to <paramref name="max"/>.</summary>
    public static RangedOption<int> Int(string name, string description, int defaultValue, int min, int max, params string[] aliases)
    {
        var o = new RangedOption<int>(name, aliases, description, $"{min} to {max}", min, max, integer: true)
        {
            DefaultValueFactory = _ => defaultValue,
            HelpName = "N",
        };
        o.CustomParser = r => ParseWhole(r, o) is { } v ? (int)v : default;
        return o;
    }

    /// <summary>A whole number that may be left out (the command then picks, e.g. from the core count).</summary>
    public static RangedOption<int?> OptionalInt(string name, string description, int min, int max)
    {
        var o = new RangedOption<int?>(name, [], description, $"{min} to {max}", min, max, integer: true) { HelpName = "N" };
        o.CustomParser = r => ParseWhole(r, o) is { } v ? (int)v : null;
        return o;
    }

    /// <summary>A decimal number; <paramref name="unit"/> ("seconds") follows the range in messages.</summary>
    public static RangedOption<double> Number(string name, string description, double defaultValue, double min, double max, string? unit = null)
    {
        string range = $"{min.ToString(CultureInfo.InvariantCulture)} to {max.ToString(CultureInfo.InvariantCulture)}{(unit is null ? "" : " " + unit)}";
        var o = new RangedOption<double>(name, [], description, range, (decimal)min, (decimal)max, integer: false)
        {
            DefaultValueFactory = _ => defaultValue,
            HelpName = unit?.ToUpperInvariant() ?? "N",
        };
        o.CustomParser = r =>
        {
            string t = Token(r);
            if (!double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
            {
                r.AddError($"{Typed(r, name)} '{t}' is not a number: use {range}");
                return default;
            }

            if (v < min || v > max)
            {
                r.AddError(OutOfRange(r, o, t));
                return default;
            }

            return v;
        };
        return o;
    }

    /// <summary>A size ("4M", "100G", plain bytes) from <paramref name="min"/> to <paramref name="max"/> bytes.</summary>
    public static RangedOption<ByteSize> Size(string name, string description, string defaultValue, long min, long max)
    {
        string range = $"{Sizes.FormatExact(min)} to {Sizes.FormatExact(max)}";
        long def = Sizes.Parse(defaultValue, name);
        var o = new RangedOption<ByteSize>(name, [], description, range, min, max, integer: true)
        {
            DefaultValueFactory = _ => new ByteSize(def),
            HelpName = "SIZE",
        };
        o.CustomParser = r =>
        {
            string t = Token(r);
            if (!Sizes.TryParse(t, out long v, out string? why))
            {
                r.AddError($"{Typed(r, name)} {why}: use {range} (a number with an optional unit K, M, G, T: powers of 1024)");
                return default;
            }

            if (v < min || v > max)
            {
                r.AddError(OutOfRange(r, o, t));
                return default;
            }

            return new ByteSize(v);
        };
        return o;
    }

    /// <summary>
    /// A duration: a whole number with a unit s, m, h or d ("30m", "6h", "2d"), or plain seconds
    /// ("0", "90"), from 0 to <paramref name="maxDays"/> days.
    /// </summary>
    /// <remarks>Null when left out: the command applies its default, which its description states (help would print a TimeSpan as 1.00:00:00).</remarks>
    public static RangedOption<TimeSpan?> Duration(string name, string description, int maxDays)
    {
        string range = $"0 to {maxDays}d";
        var o = new RangedOption<TimeSpan?>(name, [], description, range, 0, maxDays * 86400m, integer: true)
        {
            HelpName = "DURATION",
        };
        o.CustomParser = r =>
        {
            string t = Token(r);
            int digits = 0;
            while (digits < t.Length && char.IsAsciiDigit(t[digits]))
            {
                digits++;
            }

            string unit = t[digits..];
            long perUnit = unit switch { "" or "s" => 1, "m" => 60, "h" => 3600, "d" => 86400, _ => 0 };
            if (digits == 0 || perUnit == 0 || !BigInteger.TryParse(t.AsSpan(0, digits), NumberStyles.None, CultureInfo.InvariantCulture, out var n))
            {
                r.AddError($"{Typed(r, name)} '{t}' is not a duration: use {range} (a whole number with a unit s, m, h or d, e.g. 30m, 6h, 2d; 0 for none)");
                return null;
            }

            var seconds = n * perUnit;
            if (seconds > new BigInteger(o.Max))
            {
                r.AddError(OutOfRange(r, o, t));
                return null;
            }

            return TimeSpan.FromSeconds((long)seconds);
        };
        return o;
    }

    /// <summary>A duration as users write it: the largest unit that divides it (2d, 30m, 90s), one day as 24h.</summary>
    public static string FormatDuration(TimeSpan t)
    {
        long s = (long)t.TotalSeconds;
        return s == 0 ? "0" : s % 86400 == 0 && s > 86400 ? $"{s / 86400}d" : s % 3600 == 0 ? $"{s / 3600}h" : s % 60 == 0 ? $"{s / 60}m" : $"{s}s";
    }

    private static string Token(ArgumentResult r) => r.Tokens.Count > 0 ? r.Tokens[^1].Value : "";

    /// <summary>The option as the user typed it (-j, or --concurrency), for messages.</summary>
    private static string Typed(ArgumentResult r, string name) => (r.Parent as OptionResult)?.IdentifierToken?.Value ?? name;

    private static long? ParseWhole(ArgumentResult r, IRangedOption o)
    {
        string t = Token(r);
        if (!BigInteger.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v))
        {
            r.AddError($"{Typed(r, o.Name)} '{t}' is not a whole number: use {o.Range}");
            return null;
        }

        if (v < new BigInteger(o.Min) || v > new BigInteger(o.Max))
        {
            r.AddError(OutOfRange(r, o, t));
            return null;
        }

        return (long)v;
    }

    private static string OutOfRange(ArgumentResult r, IRangedOption o, string token) => $"{Typed(r, o.Name)} {token} is out of range: use {o.Range}";
}

/// <summary>What every option built by <see cref="Numeric"/> says about its range (tests check the docs against it).</summary>
internal interface IRangedOption
{
    string Name { get; }

    /// <summary>As users read it in --help, in errors and in docs/operations.md: "1 to 256", "0.1 to 86400 seconds", "0 to 1024T".</summary>
    string Range { get; }

    decimal Min { get; }

    decimal Max { get; }

    bool Integer { get; }
}

internal sealed class RangedOption<T> : Option<T>, IRangedOption
{
    /// <summary>The option, its --help description followed by its range.</summary>
    public RangedOption(string name, string[] aliases, string description, string range, decimal min, decimal max, bool integer)
        : base(name, aliases)
    {
        Description = $"{description} ({range})";
        Range = range;
        Min = min;
        Max = max;
        Integer = integer;
    }

    public string Range { get; }

    public decimal Min { get; }

    public decimal Max { get; }

    public bool Integer { get; }
}

/// <summary>A size in bytes that prints as users write it (100G), so --help shows "[default: 100G]".</summary>
internal readonly record struct ByteSize(long Bytes)
{
    public override string ToString() => Sizes.FormatExact(Bytes);
}
