using System.Globalization;

namespace LazyModelFs.Util;

/// <summary>Human sizes: parse "4M", "512MiB", "100G"; format 1536 as "1.5 KiB".</summary>
public static class Sizes
{
    public static long Parse(string text, string what)
    {
        string s = text.Trim();
        int i = 0;
        while (i < s.Length && (char.IsAsciiDigit(s[i]) || s[i] == '.'))
        {
            i++;
        }

        if (i == 0 || !double.TryParse(s.AsSpan(0, i), NumberStyles.Float, CultureInfo.InvariantCulture, out double n))
        {
            throw new LmfsException($"{what} '{text}' is not a size", "write a number with an optional unit, e.g. 4M, 512MiB, 100G");
        }

        string unit = s[i..].Trim().ToUpperInvariant().Replace("IB", "", StringComparison.Ordinal).TrimEnd('B');
        long mul = unit switch
        {
            "" => 1,
            "K" => 1L << 10,
            "M" => 1L << 20,
            "G" => 1L << 30,
            "T" => 1L << 40,
            _ => throw new LmfsException($"{what} '{text}' has an unknown unit '{s[i..]}'", "use K, M, G or T (powers of 1024)"),
        };
        double v = n * mul;
        if (v > long.MaxValue || v < 0)
        {
            throw new LmfsException($"{what} '{text}' is out of range");
        }

        return (long)v;
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
