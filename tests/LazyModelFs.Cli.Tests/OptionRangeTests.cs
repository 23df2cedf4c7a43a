using System.CommandLine;
using System.Globalization;
using LazyModelFs.Cli.Commands;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// Issue 11, item 8: every numeric option of every command has one range, checked by the shared
/// parser (<see cref="Numeric"/>) and listed in docs/operations.md. A new numeric option made
/// without it, or left out of the docs, fails here.
/// </summary>
public sealed class OptionRangeTests
{
    private static readonly Type[] NumericTypes = [typeof(int), typeof(long), typeof(uint), typeof(ulong), typeof(short), typeof(double), typeof(float), typeof(decimal), typeof(ByteSize), typeof(TimeSpan)];

    [Fact]
    public void Every_numeric_option_of_every_command_has_a_range_that_is_checked_and_documented()
    {
        var rows = File.ReadAllLines(Path.Combine(Repo.Root, "docs/operations.md")).Where(l => l.StartsWith("| ", StringComparison.Ordinal)).ToList();
        int seen = 0;
        foreach (var (path, cmd) in Commands(global::LazyModelFs.Cli.Cli.Build(), []))
        {
            foreach (var o in cmd.Options)
            {
                var t = Nullable.GetUnderlyingType(o.ValueType) ?? o.ValueType;
                if (!NumericTypes.Contains(t))
                {
                    continue;
                }

                seen++;
                string where = $"lmfs {string.Join(' ', path)} {o.Name}";
                var r = o as IRangedOption;
                Assert.True(r is not null, $"{where} is numeric but not made by Numeric: it has no checked range");
                Assert.True(rows.Any(l => l.Contains($"`{o.Name}`", StringComparison.Ordinal) && l.Contains($"| {r.Range}", StringComparison.Ordinal)), $"{where} ({r.Range}) is missing from docs/operations.md's range table");
                Assert.Contains($"({r.Range})", o.Description, StringComparison.Ordinal);

                string[] args = [.. path, .. cmd.Arguments.SelectMany(a => Enumerable.Repeat("x", Math.Max(1, a.Arity.MinimumNumberOfValues)))];
                foreach (var ok in new[] { r.Min, r.Max })
                {
                    var errors = Errors(args, o.Name, Text(ok));
                    Assert.True(errors.Count == 0, $"{where} {Text(ok)} is in range but refused: {string.Join("; ", errors)}");
                }

                var bad = new List<string> { Text(r.Min - 1), Text(r.Max + 1), "NaN", "Infinity", "twelve" };
                if (r.Integer)
                {
                    bad.Add(Text(r.Min + 0.5m));
                }

                foreach (var b in bad)
                {
                    var errors = Errors(args, o.Name, b);
                    Assert.True(errors.Any(e => e.StartsWith($"{o.Name} ", StringComparison.Ordinal) && e.Contains(r.Range, StringComparison.Ordinal)), $"{where} {b}: expected an error naming the option and its range, got: {string.Join("; ", errors)}");
                }
            }
        }

        Assert.True(seen >= 20, $"only {seen} numeric options found: did the command tree change?");
    }

    private static List<string> Errors(string[] args, string option, string value) =>
        global::LazyModelFs.Cli.Cli.Build().Parse([.. args, option, value]).Errors.Select(e => e.Message).Where(m => m.Contains(option, StringComparison.Ordinal)).ToList();

    private static string Text(decimal d) => d.ToString(CultureInfo.InvariantCulture);

    private static IEnumerable<(string[] Path, Command Command)> Commands(Command c, string[] path)
    {
        yield return (path, c);
        foreach (var s in c.Subcommands)
        {
            foreach (var x in Commands(s, [.. path, s.Name]))
            {
                yield return x;
            }
        }
    }
}
