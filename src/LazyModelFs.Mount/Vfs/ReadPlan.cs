using System.Globalization;
using System.Text;
using LazyModelFs.Util;

namespace LazyModelFs.Vfs;

/// <summary>
/// A loader's read plan (issue 17): byte ranges of one file in the order they will be read. One
/// grammar for what `lmfs plan` reads and what the control socket's <c>plan</c> command carries:
/// OFFSET:LENGTH or "OFFSET LENGTH" items (decimal bytes, LENGTH above 0), separated by commas or
/// newlines; '#' starts a comment line.
/// </summary>
public static class ReadPlan
{
    /// <summary>Ranges one plan may hold.</summary>
    public const int MaxRanges = 65536;

    /// <summary>Bytes of one control-socket command line (a plan's is the only long one).</summary>
    public const int MaxLine = 2 << 20;

    public static List<(long Offset, long Length)> Parse(string text)
    {
        var list = new List<(long, long)>();
        foreach (var raw in text.Split([',', '\n'], StringSplitOptions.RemoveEmptyEntries))
        {
            string item = raw.Trim();
            if (item.Length == 0 || item.StartsWith('#'))
            {
                continue;
            }

            var parts = item.Split([':', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2
                || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long off)
                || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long len) || len <= 0)
            {
                throw new LmfsException($"plan range '{TerminalText.Excerpt(item, 40)}' is not OFFSET:LENGTH (bytes, LENGTH above 0)", "give each range as OFFSET:LENGTH, e.g. 0:1048576", 2);
            }

            if (list.Count == MaxRanges)
            {
                throw new LmfsException($"the plan has more than {MaxRanges} ranges", "merge neighbouring ranges", 2);
            }

            list.Add((off, len));
        }

        return list;
    }

    /// <summary>The control socket's command for a plan of file <paramref name="ino"/>; a plan too long for one command line is refused.</summary>
    public static string Command(ulong ino, IReadOnlyList<(long Offset, long Length)> ranges)
    {
        var sb = new StringBuilder(16 + (ranges.Count * 20)).Append("plan ").Append(ino).Append(' ');
        for (int i = 0; i < ranges.Count; i++)
        {
            sb.Append(i == 0 ? "" : ",").Append(ranges[i].Offset).Append(':').Append(ranges[i].Length);
        }

        if (sb.Length >= MaxLine)
        {
            throw new LmfsException($"the plan is {sb.Length} bytes long; the mount takes at most {MaxLine}", "merge neighbouring ranges", 2);
        }

        return sb.ToString();
    }
}
