using System.Text;

namespace LazyModelFs.Util;

/// <summary>
/// Names from a volume (and from an imported tree) are untrusted text: a file named with ESC
/// sequences can retitle, recolour or rewrite the operator's terminal, a BEL rings it, and a newline
/// forges lines of output (issue 11, item 14). Everything that prints such text goes through here:
///
/// - <see cref="Name"/>: a name on its own (lmfs ls, lmfs stat) in GNU ls's default terminal style,
///   <c>shell-escape</c>: plain names as they are; names with spaces or shell metacharacters in single
///   quotes; unsafe characters as <c>$'\033'</c>, so <c>'a'$'\033''[2Jb'</c> is both harmless on the
///   screen and the exact name when pasted into bash. Commands use it when stdout is a terminal and
///   print names raw otherwise (GNU ls does the same; scripts get exact bytes).
/// - <see cref="Safe"/>: diagnostics (error and warning messages, log lines), always: unsafe
///   characters as C escapes (<c>\033</c>, <c>\n</c>), the rest unchanged, as GNU tools quote names in
///   their messages whatever the output is.
///
/// Unsafe: C0 and C1 controls and DEL (C1 U+0080–U+009F: U+009B is CSI to 8-bit terminals), the line
/// and paragraph separators U+2028/U+2029, the bidirectional overrides and isolates (U+200E/F,
/// U+202A–U+202E, U+2066–U+2069: they reorder what the reader sees), and lone surrogates. Escapes
/// give the character's UTF-8 bytes in octal, as bash's <c>$'…'</c> reads them (a lone surrogate,
/// which has no UTF-8 form, shows as U+FFFD).
/// </summary>
public static class TerminalText
{
    /// <summary>Whether the character at <paramref name="i"/> must not reach a terminal as it is (a surrogate only when it is not half of a pair).</summary>
    public static bool UnsafeAt(string s, int i)
    {
        char c = s[i];
        if (char.IsHighSurrogate(c))
        {
            return i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1]);
        }

        if (char.IsLowSurrogate(c))
        {
            return i == 0 || !char.IsHighSurrogate(s[i - 1]);
        }

        return IsUnsafe(c);
    }

    private static bool IsUnsafe(char c) =>
        char.IsControl(c) || c is '\u2028' or '\u2029' or '\u200E' or '\u200F' or (>= '\u202A' and <= '\u202E') or (>= '\u2066' and <= '\u2069');

    /// <summary>A name as GNU ls shows it on a terminal (quoting style shell-escape).</summary>
    public static string Name(string name)
    {
        if (name.Length == 0)
        {
            return "''";
        }

        bool unsafeChars = false, quote = false;
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            unsafeChars |= UnsafeAt(name, i);
            quote |= c is ' ' or '!' or '"' or '$' or '&' or '\'' or '(' or ')' or '*' or ';' or '<' or '>' or '?' or '[' or '\\' or ']' or '^' or '`' or '{' or '|' or '}'
                || (i == 0 && c is '#' or '~');
        }

        if (!unsafeChars)
        {
            if (!quote)
            {
                return name;
            }

            // GNU prefers "it's" to 'it'\''s' when nothing in the name is special inside double quotes.
            return name.Contains('\'', StringComparison.Ordinal) && name.IndexOfAny(['"', '$', '`', '\\', '!']) < 0
                ? "\"" + name + "\""
                : "'" + name.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
        }

        var sb = new StringBuilder(name.Length + 16);
        int at = 0;
        while (at < name.Length)
        {
            int end = at;
            bool bad = UnsafeAt(name, at);
            while (end < name.Length && UnsafeAt(name, end) == bad)
            {
                end++;
            }

            string run = name[at..end];
            if (bad)
            {
                sb.Append("$'");
                Escape(sb, run);
                sb.Append('\'');
            }
            else
            {
                sb.Append('\'').Append(run.Replace("'", "'\\''", StringComparison.Ordinal)).Append('\'');
            }

            at = end;
        }

        return sb.ToString();
    }

    /// <summary>At most <paramref name="max"/> characters of <paramref name="text"/> (then "…"), made <see cref="Safe"/>: for echoing input back in a message.</summary>
    public static string Excerpt(string text, int max) => Safe(text.Length > max ? text[..max] + "…" : text);

    /// <summary>A diagnostic with every unsafe character as a C escape; <paramref name="keepNewlines"/> for multi-line text of our own (stack traces).</summary>
    public static string Safe(string text, bool keepNewlines = false)
    {
        int i = 0;
        while (i < text.Length && (!UnsafeAt(text, i) || (keepNewlines && text[i] is '\n' or '\r')))
        {
            i++;
        }

        if (i == text.Length)
        {
            return text;
        }

        var sb = new StringBuilder(text.Length + 16).Append(text, 0, i);
        for (; i < text.Length; i++)
        {
            char c = text[i];
            if (!UnsafeAt(text, i) || (keepNewlines && c is '\n' or '\r'))
            {
                sb.Append(c);
            }
            else
            {
                Escape(sb, c.ToString());
            }
        }

        return sb.ToString();
    }

    private static void Escape(StringBuilder sb, string run)
    {
        for (int i = 0; i < run.Length; i++)
        {
            char c = run[i];
            string? named = c switch
            {
                '\a' => "\\a",
                '\b' => "\\b",
                '\t' => "\\t",
                '\n' => "\\n",
                '\v' => "\\v",
                '\f' => "\\f",
                '\r' => "\\r",
                _ => null,
            };
            if (named is not null)
            {
                sb.Append(named);
                continue;
            }

            string one = char.IsSurrogate(c) ? "\uFFFD" : c.ToString();
            foreach (byte b in Encoding.UTF8.GetBytes(one))
            {
                sb.Append('\\').Append(Convert.ToString(b, 8).PadLeft(3, '0'));
            }
        }
    }
}
