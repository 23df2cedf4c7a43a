using System.Diagnostics;
using System.Text;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// Issue 11, item 14: names from an untrusted tree (ESC, BEL, newline, C1 and bidi controls) never
/// reach the operator's terminal as themselves: lmfs ls and stat quote them as GNU ls does on a
/// terminal, messages and logs escape them, and output into a pipe keeps them exact.
/// </summary>
public sealed class TerminalEscapeTests : IDisposable
{
    private const string Esc = "\u001b";

    private static readonly string[] Hostile = [$"a{Esc}[31mred", "bell\a", "nl\nx", $"title{Esc}]0;pwned\a", "csi\u009b2J", "rlo\u202Etxt.exe", "my file", "it's", "tab\there"];

    private readonly TempDir _dir = new("lmfs-tty");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    /// <summary>The sequences the hostile names carry; none may appear in what a terminal is sent.</summary>
    private static void NoPayload(string output)
    {
        foreach (var p in new[] { $"{Esc}[31m", $"{Esc}]0;", "\a", "\u009b", "\u202E", "\t", $"{Esc}[2J" })
        {
            Assert.False(output.Contains(p, StringComparison.Ordinal), $"raw {string.Concat(p.Select(c => $"\\u{(int)c:x4}"))} reached the output: {output}");
        }
    }

    [Fact]
    public void Names_are_quoted_as_gnu_ls_quotes_them_and_bash_reads_them_back_exactly()
    {
        Assert.Equal("model.safetensors", TerminalText.Name("model.safetensors"));
        Assert.Equal("'my file'", TerminalText.Name("my file"));
        Assert.Equal("\"it's\"", TerminalText.Name("it's"));
        Assert.Equal("'a'$'\\033''[31mred'", TerminalText.Name($"a{Esc}[31mred"));
        Assert.Equal("'bell'$'\\a'", TerminalText.Name("bell\a"));
        Assert.Equal("'nl'$'\\n''x'", TerminalText.Name("nl\nx"));
        Assert.Equal("'csi'$'\\302\\233''2J'", TerminalText.Name("csi\u009b2J"));
        Assert.Equal("'rlo'$'\\342\\200\\256''txt.exe'", TerminalText.Name("rlo\u202Etxt.exe"));
        Assert.Equal("$'\\357\\277\\275'", TerminalText.Name("\ud800")); // a lone surrogate has no UTF-8 form
        Assert.Equal("''", TerminalText.Name(""));
        Assert.Equal("модель-😀.bin", TerminalText.Name("модель-😀.bin")); // printable Unicode, pairs included, stays
        Assert.Equal("error: 'a\\033[31mred' and 'nl\\nx'", TerminalText.Safe($"error: 'a{Esc}[31mred' and 'nl\nx'"));
        Assert.Equal("two\nlines\\033", TerminalText.Safe($"two\nlines{Esc}", keepNewlines: true));

        // What is shown is what a shell takes: pasted into bash, each quoted name is the name again.
        foreach (var name in Hostile.Append("$HOME `id` ;|&<>*?[]{}\\\"!#~x").Append("~home").Append("#hash"))
        {
            var psi = new ProcessStartInfo("bash", ["-c", "printf %s " + TerminalText.Name(name)]) { RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            string back = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.Equal(name, back);
        }
    }

    private void Tree()
    {
        Assert.Equal(0, LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["objects"]}", "--name", $"vol{Esc}[2J").ExitCode);
        Directory.CreateDirectory(_dir["src"]);
        foreach (var n in Hostile)
        {
            File.WriteAllText(Path.Combine(_dir["src"], n), n);
        }

        File.CreateSymbolicLink(Path.Combine(_dir["src"], "link"), $"to{Esc}[31m");
        Proc.Run("mkfifo", Path.Combine(_dir["src"], $"fifo{Esc}]0;pwned\a"));
        var import = LmfsRunner.Run("import", Meta, _dir["src"], "/d", "--no-progress");
        Assert.True(import.ExitCode == 0, import.ToString());
        Assert.Contains("warning: skipped", import.Stderr, StringComparison.Ordinal); // the FIFO, named safely
        Assert.Contains("fifo\\033]0;pwned\\a", import.Stderr, StringComparison.Ordinal);
        NoPayload(import.Stdout + import.Stderr);
    }

    [Fact]
    public void Ls_and_stat_quote_names_on_a_terminal_and_print_them_exactly_into_a_pipe()
    {
        Tree();

        // Into a pipe: exact names, one per line, as GNU ls prints them (a newline in a name stays one).
        var raw = LmfsRunner.Run("ls", Meta, "/d");
        Assert.True(raw.ExitCode == 0, raw.ToString());
        foreach (var n in Hostile)
        {
            Assert.Contains(n + "\n", raw.Stdout, StringComparison.Ordinal);
        }

        // On a terminal (a pty from script(1)): quoted, nothing raw.
        var tty = OnTerminal("ls", "-l", Meta, "/d");
        NoPayload(tty);
        foreach (var n in Hostile)
        {
            Assert.Contains(TerminalText.Name(n), tty, StringComparison.Ordinal);
        }

        Assert.Contains("link -> 'to'$'\\033''[31m'", tty, StringComparison.Ordinal);
        var stat = OnTerminal("stat", Meta, "/d/link");
        Assert.Contains("target:   'to'$'\\033''[31m'", stat, StringComparison.Ordinal);
        var root = OnTerminal("stat", Meta, "/");
        Assert.Contains("volume:   'vol'$'\\033''[2J'", root, StringComparison.Ordinal);
        NoPayload(stat + root);

        // The same on request, and raw on request.
        Assert.Contains("'bell'$'\\a'", LmfsRunner.Run("ls", Meta, "/d", "--quoting-style", "shell-escape").Stdout, StringComparison.Ordinal);
        Assert.Contains("bell\a", OnTerminal("ls", Meta, "/d", "--quoting-style", "literal"), StringComparison.Ordinal);
    }

    [Fact]
    public void Error_messages_escape_names_wherever_they_go()
    {
        Tree();
        var r = LmfsRunner.Run("cat", Meta, $"/d/missing{Esc}[31m\a");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("error: '/d/missing\\033[31m\\a' does not exist in the volume", r.Stderr, StringComparison.Ordinal);
        NoPayload(r.Stderr);
        var notFile = LmfsRunner.Run("cat", Meta, "/d");
        Assert.Contains("is a directory", notFile.Stderr, StringComparison.Ordinal);
        var usage = LmfsRunner.Run("ls", Meta, "/d", $"--bogus{Esc}[2J");
        Assert.Equal(2, usage.ExitCode);
        NoPayload(usage.Stderr);
    }

    [MountFact]
    public void A_mounts_log_and_the_mount_table_escape_the_volumes_name()
    {
        Tree();
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        var r = LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]);
        try
        {
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.True(SpinWait.SpinUntil(() => File.ReadAllText(_dir["mount.log"]).Contains("mounted volume", StringComparison.Ordinal), 30_000), File.ReadAllText(_dir["mount.log"]));
            string log = File.ReadAllText(_dir["mount.log"]);
            Assert.Contains("mounted volume 'vol\\033[2J'", log, StringComparison.Ordinal);
            NoPayload(log);
            string table = File.ReadAllLines("/proc/self/mountinfo").Single(l => l.Contains(mp, StringComparison.Ordinal));
            Assert.Contains(" lmfs:vol", table, StringComparison.Ordinal); // the kernel shows the escape's backslash as \134
            NoPayload(table);
            Assert.Equal(Hostile.Order(StringComparer.Ordinal), Directory.EnumerateFiles(Path.Combine(mp, "d")).Select(Path.GetFileName).Where(n => n != "link").Order(StringComparer.Ordinal)!);
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
        }
    }

    /// <summary>Runs lmfs with its stdout on a pseudo-terminal (script(1)) and returns what the terminal received.</summary>
    private static string OnTerminal(params string[] args)
    {
        var psi = new ProcessStartInfo("script") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        // The arguments travel in the environment, so no name is ever parsed by a shell.
        string command = "exec dotnet \"$LMFS_DLL\"" + string.Concat(args.Select((_, i) => $" \"$LMFS_ARG{i}\""));
        foreach (var a in new[] { "-q", "-e", "-c", command, "/dev/null" })
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["LMFS_DLL"] = LmfsRunner.Dll;
        for (int i = 0; i < args.Length; i++)
        {
            psi.Environment[$"LMFS_ARG{i}"] = args[i];
        }

        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"lmfs {string.Join(' ', args)} on a terminal exited {p.ExitCode}: {output}{err.Result}");
        return output.Replace("\r\n", "\n", StringComparison.Ordinal);
    }

    public void Dispose() => _dir.Dispose();
}
