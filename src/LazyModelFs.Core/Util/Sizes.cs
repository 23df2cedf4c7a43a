using System.Globalization;

namespace LazyModelFs.Util;

/// <summary>Human sizes: parse "4M", "512MiB", "100G"; format 1536 as "1.5 KiB", or 100 GiB exactly as "100G".</summary>
public static class Sizes
{
    private const string UnitHint = "write a whole or decimal number with an optional unit, e.g. 4M, 512MiB, 100G (K, M, G, T: powers of 1024)";

    /// <summary>Parses a size; a malformed one is bad input (exit 2) naming <paramref name="what"/>.</summary>
    public static long Parse(string text, string what) =>
        TryParse(text, out long v, out string? error) ? v : throw new LmfsException($"{what} {error}", UnitHint, 2);

    /// <summary>
    /// Parses "4M", "1.5G", "512MiB", "100" (bytes). On failure <paramref name="error"/> says why, in words
    /// that follow the option's name ("'5X' has an unknown unit 'X'"). Sizes above 2^62 are refused, so
    /// no caller's arithmetic on them overflows, and so are fractions of a byte ("1.5G" is whole; "1.3K" is not).
    /// </summary>
    public static bool TryParse(string text, out long bytes, out string? error)
    {
        bytes = 0;
        string s = text.Trim();
        int i = 0;
        while (i < s.Length && (char.IsAsciiDigit(s[i]) || s[i] == '.'))
        {
            i++;
        }

        if (i == 0 || !double.TryParse(s.AsSpan(0, i), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double n))
        {
            error = $"'{text}' is not a size";
            return false;
        }

        string unit = s[i..].Trim().ToUpperInvariant().Replace("IB", "", StringComparison.Ordinal).TrimEnd('B');
        long mul = unit switch
        {
            "" => 1,
            "K" => 1L << 10,
            "M" => 1L << 20,
            "G" => 1L << 30,
            "T" => 1L << 40,
            _ => 0,
        };
        if (mul == 0)
        {
            error = $"'{text}' has an unknown unit '{s[i..]}'";
            return false;
        }

        double v = n * mul;
        if (!(v <= 1L << 62))
        {
            error = $"'{text}' is too large";
            return false;
        }

        if (v != Math.Floor(v))
        {
            error = $"'{text}' is not a whole number of bytes";
            return false;
        }

        bytes = (long)v;
        error = null;
        return true;
    }

    /// <summary>A size as a user would type it: the largest unit that divides it exactly (107374182400 is "100G"; 1000 is "1000").</summary>
    public static string FormatExact(long bytes)
    {
        foreach (var (unit, shift) in new[] { ("T", 40), ("G", 30), ("M", 20), ("K", 10) })
        {
            if (bytes != 0 && bytes % (1L << shift) == 0)
            {
                return (bytes >> shift).ToString(CultureInfo.InvariantCulture) + unit;
            }
        }

        return bytes.ToString(CultureInfo.InvariantCulture);
    }

    public static string Format(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        int u = 0;
        while (Math.Abs(bytes) >= 1024 && u < units.Length - 1)
        {
            bytes /= 1024;
            u++;
        }

        return u == 0 ? $"{bytes:0} B" : $"{bytes:0.0} {units[u]}".Replace(',', '.');
    }
}
