using System.CommandLine;
using LazyModelFs.Cli.Commands;
using LazyModelFs.Util;
using LazyModelFs.Vfs;

namespace LazyModelFs.Cli;

/// <summary>
/// The `lmfs` command line. Commands are thin: they parse, call the core, and print. Every failure
/// goes through <see cref="Guard"/>: one "error:" line saying what was wrong, one "hint:" line saying
/// what to do, a non-zero exit code, and a stack trace only with --verbose. URLs in any of it are
/// shown without their credentials (<see cref="Redact.Text"/>), and messages name paths from volumes
/// and imported trees, so they are printed through <see cref="TerminalText.Safe"/>: a name's control
/// characters arrive as \033, never as themselves.
/// </summary>
public static class Cli
{
    /// <summary>Exit codes (docs/operations.md): 0 ok, 1 failure, 2 bad input, 3 data integrity, 4 metadata engine, 5 object store, 130 interrupted.</summary>
    public const int ExitInterrupted = 130;

    public static readonly Option<bool> Verbose = new("--verbose", "-v")
    {
        Description = "Show debug detail and stack traces of unexpected errors",
        Recursive = true,
    };

    public static RootCommand Build()
    {
        var root = new RootCommand("LazyModelFs: model files served lazily from object storage.\n\nQuick start:\n  lmfs format sqlite:///var/lib/lmfs/meta.db --storage file:///var/lib/lmfs/objects\n  lmfs import sqlite:///var/lib/lmfs/meta.db ./my-model /models/\n  lmfs ls sqlite:///var/lib/lmfs/meta.db /models/my-model");
        root.Add(Verbose);
        root.Add(FormatCommand.Build());
        root.Add(ImportCommand.Build());
        root.Add(ListCommand.Build());
        root.Add(StatCommand.Build());
        root.Add(CatCommand.Build());
        root.Add(RemoveCommand.Build());
        root.Add(FsckCommand.Build());
        root.Add(GcCommand.Build());
        root.Add(MountCommand.Build());
        root.Add(UmountCommand.Build());
        root.Add(MountsCommand.Build());
        root.Add(StatsCommand.Build());
        root.Add(WarmupCommand.Build());
        root.Add(PlanCommand.Build());
        root.Add(CacheCommand.Build());
        root.Add(BenchCommand.Build());
        root.Add(CsiCommand.Build());
        return root;
    }

    public static async Task<int> RunAsync(string[] args)
    {
        var root = Build();
        // A binary copied (not linked) to a helper's name starts its daemon under that name too: a
        // command word first means an lmfs command line, never mount(8)'s SOURCE MOUNTPOINT.
        if (MountHelper.InvokedAs() is { } helper && !(args.Length > 0 && root.Subcommands.Any(c => c.Name == args[0])))
        {
            // mount(8) / mount.fuse3 running us as /sbin/mount.fuse.lazymodelfs or lazymodelfs (Commands/MountHelper.cs).
            // mount(8) runs helpers without PATH (and HOME): the daemon is started through setsid, and
            // unprivileged mounts through fusermount3, so give them the search path a shell would use.
            if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("PATH")))
            {
                Environment.SetEnvironmentVariable("PATH", MountHelper.DefaultPath);
            }

            try
            {
                if (MountHelper.Translate(args, helper) is not { } mountArgs)
                {
                    return 0; // mount -f: nothing to do
                }

                args = [.. mountArgs];
            }
            catch (LmfsException ex)
            {
                return await UsageErrorAsync([ex.Message], ex.Hint ?? "see docs/operations.md, \"fstab and mount -t\"", ex.ExitCode).ConfigureAwait(false);
            }
        }

        if (args.Length == 0)
        {
            await Console.Error.WriteAsync(Usage.Short(root)).ConfigureAwait(false);
            return 2;
        }

        var parse = root.Parse(args);
        if (Usage.UnknownCommand(parse) is { } command)
        {
            return await UsageErrorAsync([command.Message], command.Hint).ConfigureAwait(false);
        }

        if (Usage.UnknownOption(parse) is { } unknown)
        {
            return await UsageErrorAsync([unknown.Message], unknown.Hint).ConfigureAwait(false);
        }

        if (parse.Errors.Count > 0 && parse.Action is not System.CommandLine.Help.HelpAction)
        {
            return await UsageErrorAsync(parse.Errors.Select(e => e.Message).ToList(), $"see `{Usage.CommandLine(parse)} --help`").ConfigureAwait(false);
        }

        // Ctrl-C / SIGTERM cancel the command's token; give a mount time to unmount before the process is ended.
        return await parse.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = TimeSpan.FromSeconds(30) }).ConfigureAwait(false);
    }

    /// <summary>A command line that cannot run: each "error:" line, one "hint:" line, exit 2 (reported to a launching `lmfs mount` too).</summary>
    private static async Task<int> UsageErrorAsync(IReadOnlyList<string> messages, string hint, int code = 2)
    {
        foreach (var m in messages)
        {
            await Console.Error.WriteLineAsync("error: " + TerminalText.Safe(Redact.Text(m))).ConfigureAwait(false);
        }

        string safeHint = TerminalText.Safe(Redact.Text(hint));
        await Console.Error.WriteLineAsync("hint: " + safeHint).ConfigureAwait(false);
        MountRegistry.ReportFailed(code, TerminalText.Safe(Redact.Text(messages[0])), safeHint);
        return code;
    }

    /// <summary>
    /// Runs a command body behind the error boundary. A mount daemon that <see cref="MountLauncher"/>
    /// started reports its failure here too (<see cref="MountRegistry.ReportFailed"/>), with the exit
    /// code and the lines it prints, before it exits.
    /// </summary>
    public static async Task<int> Guard(ParseResult parse, Func<Task<int>> body)
    {
        bool verbose = parse.GetValue(Verbose);
        try
        {
            return await body().ConfigureAwait(false);
        }
        catch (LmfsException ex)
        {
            return await FailAsync(ex.ExitCode, Redact.Text(ex.Message), ex.Hint, verbose && ex.InnerException is not null ? ex.InnerException.ToString() : null).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return await FailAsync(ExitInterrupted, "interrupted", null, null).ConfigureAwait(false);
        }
        catch (IOException ex) when (ex.HResult == unchecked((int)0x80070020) || ex.Message.Contains("Broken pipe", StringComparison.OrdinalIgnoreCase))
        {
            return 141; // stdout closed (e.g. `lmfs cat … | head`): like SIGPIPE
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return await FailAsync(1, Redact.Text(ex.Message), "check the path and its permissions", verbose ? ex.ToString() : null).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            string? detail = verbose ? ex.ToString() : null;
            return await FailAsync(1, $"unexpected {ex.GetType().Name}: {Redact.Text(ex.Message)}", detail is null ? "run again with --verbose for details, and report it with that output" : null, detail).ConfigureAwait(false);
        }
    }

    /// <summary>Prints the `error:` line, the `hint:` line and (with --verbose) the detail, all escaped and redacted, and returns <paramref name="code"/>.</summary>
    private static async Task<int> FailAsync(int code, string message, string? hint, string? detail)
    {
        string error = TerminalText.Safe(message);
        string? safeHint = hint is null ? null : TerminalText.Safe(hint);
        await Console.Error.WriteLineAsync("error: " + error).ConfigureAwait(false);
        if (safeHint is not null)
        {
            await Console.Error.WriteLineAsync("hint: " + safeHint).ConfigureAwait(false);
        }

        if (detail is not null)
        {
            await Console.Error.WriteLineAsync(TerminalText.Safe(Redact.Text(detail), keepNewlines: true)).ConfigureAwait(false);
        }

        MountRegistry.ReportFailed(code, error, safeHint);
        return code;
    }
}
