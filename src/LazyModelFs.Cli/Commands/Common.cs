using System.CommandLine;
using Spectre.Console;
using LazyModelFs.Storage;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

/// <summary>Arguments and options that several commands share.</summary>
internal static class Common
{
    /// <summary>
    /// Awaits <paramref name="run"/>; when <paramref name="show"/> and on a terminal, shows one progress
    /// bar meanwhile, which <paramref name="update"/> refreshes from the run's own counters every
    /// 200 ms (fsck, gc). Callers pass show = false with --json: the bar draws on the terminal's stdout.
    /// </summary>
    public static async Task<T> WithProgressAsync<T>(Task<T> run, bool show, string first, Action<ProgressTask> update, CancellationToken ct)
    {
        if (show && !Console.IsOutputRedirected && !Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
        {
            await AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn()).StartAsync(async ctx =>
            {
                var task = ctx.AddTask(first, maxValue: 1);
                while (!run.IsCompleted)
                {
                    update(task);
                    await Task.WhenAny(run, Task.Delay(200, ct)).ConfigureAwait(false);
                }

                task.Value = task.MaxValue;
            }).ConfigureAwait(false);
        }

        return await run.ConfigureAwait(false);
    }

    public static Argument<string> MetaUrl() => new("META_URL")
    {
        Description = "Metadata engine: sqlite:///PATH/meta.db (embedded), redis://HOST:PORT[,HOST2:PORT2][/DB][?volume=NAME], or redis+sentinel://SENTINEL:26379[,…][/DB]?service=MASTER[&volume=NAME]; password in LMFS_REDIS_PASSWORD",
    };

    /// <summary>
    /// <c>--metrics ADDR:PORT</c> of <c>lmfs mount</c> and <c>lmfs csi</c>: checked while the command line
    /// is parsed (exit 2, naming what was given); binding it is the daemon's, which fails with exit 2 too.
    /// </summary>
    public static Option<System.Net.IPEndPoint?> MetricsOption(string what) => new("--metrics")
    {
        Description = $"Serve Prometheus metrics ({what}) on http://ADDR:PORT/metrics, e.g. 127.0.0.1:9567; off by default. A non-loopback address exposes the counters (no secrets) to the network",
        HelpName = "ADDR:PORT",
        CustomParser = r =>
        {
            string t = r.Tokens is [var one] ? one.Value : "";
            try
            {
                return LazyModelFs.Metrics.MetricsServer.ParseAddress(t);
            }
            catch (LmfsException e)
            {
                r.AddError($"{e.Message}; {e.Hint}");
                return null;
            }
        },
    };

    /// <summary>How names from the volume are printed (GNU ls's option and style names).</summary>
    public static Option<string?> QuotingStyle()
    {
        var o = new Option<string?>("--quoting-style")
        {
            Description = "How to print names: shell-escape (quoted, unsafe characters as $'\\033'; the default on a terminal) or literal (as they are; the default otherwise)",
            HelpName = "shell-escape|literal",
        };
        o.AcceptOnlyFromAmong("shell-escape", "literal");
        return o;
    }

    /// <summary>
    /// The printer of names chosen by --quoting-style: like GNU ls, escaped on a terminal, where a name
    /// could otherwise send escape sequences to it (TerminalText), and as they are when stdout is a
    /// file or a pipe, so scripts get exact names.
    /// </summary>
    public static Func<string, string> Names(ParseResult p, Option<string?> style) =>
        (p.GetValue(style) ?? (Console.IsOutputRedirected ? "literal" : "shell-escape")) == "literal" ? n => n : TerminalText.Name;

    /// <summary>Opens the metadata engine of a formatted volume (no object store needed) and its namespace.</summary>
    public static async Task<(Meta.IMetaStore Meta, Meta.Namespace Namespace)> OpenNamespaceAsync(string url, CancellationToken ct)
    {
        var meta = await Meta.MetaStores.OpenAsync(url, ct: ct).ConfigureAwait(false);
        try
        {
            var settings = await meta.LoadSettingsAsync(ct).ConfigureAwait(false)
                ?? throw await Meta.MetaStores.NotFormattedAsync(meta, url, ct).ConfigureAwait(false);
            return (meta, new Meta.Namespace(meta, settings));
        }
        catch
        {
            meta.Dispose();
            throw;
        }
    }

    /// <summary>S3 credential options; without them the standard AWS chain (environment, profile) is used.</summary>
    public sealed class Credentials
    {
        public Option<string?> AccessKey { get; } = new("--access-key") { Description = "S3 access key id (default: AWS_ACCESS_KEY_ID or the AWS profile)" };

        public Option<FileInfo?> SecretKeyFile { get; } = new("--secret-key-file") { Description = "File holding the S3 secret key (default: AWS_SECRET_ACCESS_KEY or the AWS profile)" };

        public void AddTo(Command c)
        {
            c.Add(AccessKey);
            c.Add(SecretKeyFile);
        }

        public StorageOptions Read(ParseResult p, StorageOptions? baseOptions = null)
        {
            var o = baseOptions ?? new StorageOptions();
            string? access = p.GetValue(AccessKey);
            var file = p.GetValue(SecretKeyFile);
            string? secret = null;
            if (file is not null)
            {
                if (!file.Exists)
                {
                    throw new LmfsException($"secret key file '{file.FullName}' does not exist", "write the secret key into that file (mode 0600)", 2);
                }

                secret = File.ReadAllText(file.FullName).Trim();
            }

            if ((access is null) != (secret is null))
            {
                access ??= Environment.GetEnvironmentVariable("AWS_ACCESS_KEY_ID");
                secret ??= Environment.GetEnvironmentVariable("AWS_SECRET_ACCESS_KEY");
                if (access is null || secret is null)
                {
                    throw new LmfsException("only half of the S3 credentials were given", "give both --access-key and --secret-key-file, or neither", 2);
                }
            }

            return o with { AccessKey = access, SecretKey = secret };
        }
    }
}
