using System.CommandLine;
using System.CommandLine.Parsing;

namespace LazyModelFs.Cli;

/// <summary>
/// Checks of the command line that System.CommandLine leaves to us, and the suggestions that go with
/// them. The parser takes a token it does not know as an option for the next positional argument, so
/// `lmfs import META file --overwite` imported `file` as `/--overwite` and exited 0 (issue 18,
/// item 8). Here every token before `--` that starts with '-' and that no option claimed is refused
/// (exit 2), another command's option too, with the closest option of that command when exactly one is close; after `--` every
/// token is an argument, so a name that starts with '-' stays possible (`lmfs import META -- -x /d/`).
/// </summary>
internal static class Usage
{
    /// <summary>The first token that looks like an option but is none of the command's, with its message and hint; null when there is none.</summary>
    public static (string Message, string Hint)? UnknownOption(ParseResult parse)
    {
        var claimed = new HashSet<Token>(ReferenceEqualityComparer.Instance);
        Claim(parse.RootCommandResult, claimed);
        foreach (var t in parse.Tokens)
        {
            if (t.Type == TokenType.DoubleDash)
            {
                break;
            }

            if (t.Type is not (TokenType.Argument or TokenType.Option) || t.Value.Length < 2 || t.Value[0] != '-' || claimed.Contains(t) || IsNumber(t.Value))
            {
                continue;
            }

            string typed = t.Value.Split('=', 2)[0];
            string cmd = CommandLine(parse);
            var options = OptionsOf(parse.CommandResult).ToList();
            string list = $"`{cmd} --help` lists its options; a name that starts with '-' goes after `--`: {cmd} … -- {t.Value}";
            return Closest(typed, options) is { } near
                ? ($"unknown option '{t.Value}' for `{cmd}`", $"did you mean {near}? {list}")
                : ($"unknown option '{t.Value}' for `{cmd}`", list);
        }

        return null;
    }

    /// <summary>What `lmfs` alone prints (to stderr, exit 2): every command on one line, and where the rest is.</summary>
    public static string Short(RootCommand root)
    {
        var sb = new System.Text.StringBuilder("usage: lmfs COMMAND [ARGUMENTS] [OPTIONS]\n\ncommands:\n");
        int width = root.Subcommands.Max(c => c.Name.Length);
        foreach (var c in root.Subcommands.Where(c => !c.Hidden))
        {
            sb.Append("  ").Append(c.Name.PadRight(width + 2)).Append(FirstLine(c.Description)).Append('\n');
        }

        sb.Append("\nrun `lmfs COMMAND --help` for a command's arguments, options and examples (`lmfs --help` for a quick start)\n");
        return sb.ToString();
    }

    /// <summary>
    /// A word where a command was expected that names none (`lmfs moutn`, `lmfs cache stat`), with the
    /// closest command when exactly one is close; null when the command line names a command.
    /// </summary>
    public static (string Message, string Hint)? UnknownCommand(ParseResult parse)
    {
        var at = parse.CommandResult;
        var subcommands = at.Command.Subcommands.Where(c => !c.Hidden).ToList();
        if (subcommands.Count == 0 || at.Children.Any(c => c is ArgumentResult { Tokens.Count: > 0 }))
        {
            return null;
        }

        if (parse.UnmatchedTokens.Count == 0)
        {
            return at.Command.Action is null && at.Command is not RootCommand && parse.Action is not System.CommandLine.Help.HelpAction
                ? ($"`{CommandLine(parse)}` needs a command: {string.Join(", ", subcommands.Select(c => c.Name))}", $"see `{CommandLine(parse)} --help`")
                : null;
        }

        string word = parse.UnmatchedTokens[0];
        if (word.StartsWith('-'))
        {
            return null;
        }

        string cmd = CommandLine(parse);
        var names = subcommands.SelectMany(c => c.Aliases.Prepend(c.Name)).ToList();
        string list = $"`{cmd}` commands: {string.Join(", ", subcommands.Select(c => c.Name))}";
        return Closest(word, names) is { } near
            ? ($"'{word}' is not a command of `{cmd}`", $"did you mean `{cmd} {near}`? {list}")
            : ($"'{word}' is not a command of `{cmd}`", list);
    }

    /// <summary>The description's first clause: up to the first '.', ':', ';' or " (" of its first paragraph.</summary>
    private static string FirstLine(string? description)
    {
        string text = (description ?? "").Split("\n\n", 2)[0].Replace('\n', ' ');
        int end = text.Length;
        foreach (string stop in new[] { ". ", ":", ";", " (" })
        {
            int i = text.IndexOf(stop, StringComparison.Ordinal);
            if (i > 0 && i < end)
            {
                end = i;
            }
        }

        return text[..end].TrimEnd('.', ' ');
    }

    /// <summary>`lmfs import`, `lmfs cache stats`: the command as typed, for messages and hints.</summary>
    public static string CommandLine(ParseResult parse)
    {
        var names = new List<string>();
        for (var r = parse.CommandResult; r is not null && r.Command is not RootCommand; r = r.Parent as CommandResult)
        {
            names.Insert(0, r.Command.Name);
        }

        return string.Join(' ', names.Prepend("lmfs"));
    }

    /// <summary>
    /// The one candidate within a small edit distance of <paramref name="typed"/> (a swapped pair of
    /// letters counts one), or the one that it is a prefix of; null when none is, or several are
    /// equally close.
    /// </summary>
    public static string? Closest(string typed, IReadOnlyCollection<string> candidates)
    {
        var prefixed = candidates.Where(c => typed.TrimStart('-').Length >= 3 && c.StartsWith(typed, StringComparison.Ordinal)).Distinct().ToList();
        if (prefixed.Count == 1)
        {
            return prefixed[0];
        }

        int limit = Math.Max(1, Math.Min(3, typed.TrimStart('-').Length / 3));
        var scored = candidates.Distinct().Select(c => (c, d: Distance(typed, c))).Where(x => x.d <= limit).OrderBy(x => x.d).ToList();
        return scored.Count == 0 || (scored.Count > 1 && scored[1].d == scored[0].d) ? null : scored[0].c;
    }

    /// <summary>Optimal string alignment distance: insertions, deletions, substitutions and adjacent transpositions.</summary>
    public static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (int j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (int i = 1; i <= a.Length; i++)
        {
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                {
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            }
        }

        return d[a.Length, b.Length];
    }

    /// <summary>Names and aliases of the options the command takes: its own and the recursive ones of the commands above it (--verbose, --help).</summary>
    private static IEnumerable<string> OptionsOf(CommandResult command)
    {
        for (CommandResult? r = command; r is not null; r = r.Parent as CommandResult)
        {
            foreach (var o in r.Command.Options.Where(o => !o.Hidden && (r == command || o.Recursive)))
            {
                yield return o.Name;
                foreach (var a in o.Aliases)
                {
                    yield return a;
                }
            }
        }
    }

    /// <summary>
    /// Collects the options the command line gave and the tokens they took as values (`--seed -5`:
    /// "-5" is the option's). An option of another command (`lmfs warmup … --buffer-size 5X`) is a
    /// token of type Option that no option of this command claims: it went to an argument.
    /// </summary>
    private static void Claim(CommandResult r, HashSet<Token> claimed)
    {
        foreach (var child in r.Children)
        {
            if (child is OptionResult o)
            {
                if (o.IdentifierToken is { } id)
                {
                    claimed.Add(id);
                }

                foreach (var t in o.Tokens)
                {
                    claimed.Add(t);
                }
            }
            else if (child is CommandResult c)
            {
                Claim(c, claimed);
            }
        }
    }

    /// <summary>"-5", "-0.5": a negative number is a value, never an option.</summary>
    private static bool IsNumber(string value) =>
        double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out _);
}
