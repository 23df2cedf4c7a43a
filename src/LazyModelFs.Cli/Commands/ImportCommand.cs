using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using LazyModelFs.Import;
using LazyModelFs.Util;
using Spectre.Console;

namespace LazyModelFs.Cli.Commands;

internal static class ImportCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var paths = new Argument<string[]>("SRC... DEST") { Description = "Local files or directories, then the destination: an absolute path in the volume", Arity = new ArgumentArity(2, 100_000) };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace destination files that exist with other content" };
        var concurrency = Numeric.Int("--concurrency", "Chunks hashed and uploaded at once", 16, 1, 256, "-j");
        var dereference = new Option<bool>("--dereference", "-L") { Description = "Follow every symlink inside source directories (like cp -L); by default they are kept as symlinks" };
        var noProgress = new Option<bool>("--no-progress") { Description = "Print plain progress lines even on a terminal" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object (files, bytes, chunks stored and deduplicated, seconds, entries not imported; schema in docs/operations.md); progress lines stay on stderr" };
        var creds = new Common.Credentials();

        var cmd = new Command("import", "Copy local files or directories into a volume, chunked, deduplicated and verified.\n\nA file appears in the volume only once all its chunks are stored; re-running an interrupted\nimport completes it, skipping what is already there.\n\nA symlink named as a source is followed (like cp -H). Symlinks inside a directory are kept as\nsymlinks, except in a Hugging Face cache, where snapshots/REV/x -> ../../blobs/SHA is imported as\nthe file it points to (so importing snapshots/REV/ gives real files); -L follows them all. An entry that cannot be imported (a name that is not UTF-8,\nan unreadable file) is reported, the rest is imported, and the exit code is 2.\n\nExamples:\n  lmfs import sqlite:///var/lib/lmfs/meta.db ./Llama-3-8B /models/\n  lmfs import redis://127.0.0.1:6379/1 model.safetensors /models/m/model.safetensors\n  lmfs import sqlite:///var/lib/lmfs/meta.db ~/.cache/huggingface/hub/models--org--name/snapshots/REV/ /models/name")
        {
            meta, paths, overwrite, dereference, concurrency, noProgress, json,
        };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var all = p.GetValue(paths)!;
            if (!all[^1].StartsWith('/'))
            {
                // A relative destination used to land under the root: `--overwite` became /--overwite (issue 18, item 8).
                throw new LmfsException($"destination '{all[^1]}' is not allowed: a destination is an absolute path in the volume", $"start it with '/', e.g. /{all[^1].TrimStart('.', '/')} (the destination comes last; a source that starts with '-' goes after `--`)", 2);
            }

            int jobs = p.GetValue(concurrency);
            using var volume = await Volume.OpenAsync(p.GetValue(meta)!, creds.Read(p), ct).ConfigureAwait(false);
            var importer = new Importer(volume, new ImportOptions { Overwrite = p.GetValue(overwrite), Dereference = p.GetValue(dereference), Concurrency = jobs });
            var run = importer.RunAsync(all[..^1], all[^1], ct);
            bool asJson = p.GetValue(json);
            // The progress bar draws on stdout: with --json, plain progress lines on stderr instead.
            var summary = await ShowProgressAsync(importer.Progress, run, !asJson && !p.GetValue(noProgress) && !Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive).ConfigureAwait(false);
            if (asJson)
            {
                PrintJson(summary);
            }
            else
            {
                PrintText(summary);
            }

            foreach (var problem in summary.Problems)
            {
                await Console.Error.WriteLineAsync($"{(problem.IsError ? "error: not imported" : "warning: skipped")}: '{problem.Source}': {problem.Reason}").ConfigureAwait(false);
            }

            return summary.Errors == 0 ? 0 : throw new LmfsException(
                $"{summary.Errors} source entr{(summary.Errors == 1 ? "y was" : "ies were")} not imported (listed above); everything else was",
                "fix or rename them (names must be UTF-8, e.g. convmv -f latin1 -t utf8 -r) and run the same import again: what is imported already is skipped",
                2);
        }));
        return cmd;
    }

    private static void PrintText(ImportSummary summary)
    {
        Console.WriteLine($"imported {summary.Files} file(s) ({Sizes.Format(summary.Bytes)}), {summary.Directories} director{(summary.Directories == 1 ? "y" : "ies")}, {summary.Symlinks} symlink(s); {summary.UnchangedFiles} unchanged file(s) skipped");
        Console.WriteLine($"chunks: {summary.Chunks} total, {summary.DedupChunks} deduplicated, {summary.Chunks - summary.DedupChunks} uploaded ({Sizes.Format(summary.UploadedBytes)} stored)");
        Console.WriteLine($"throughput: {Sizes.Format(summary.BytesPerSecond)}/s in {summary.Elapsed.TotalSeconds:0.0} s");
    }

    /// <summary>`import --json` (docs/operations.md); printed before the exit code says whether entries were not imported, as fsck --json prints before exit 3.</summary>
    private static void PrintJson(ImportSummary s)
    {
        var problems = new JsonArray();
        foreach (var x in s.Problems)
        {
            problems.Add(new JsonObject { ["source"] = x.Source, ["reason"] = x.Reason, ["error"] = x.IsError });
        }

        Json.Print(new JsonObject
        {
            ["files"] = s.Files,
            ["unchangedFiles"] = s.UnchangedFiles,
            ["skipped"] = s.Problems.Count(x => !x.IsError),
            ["notImported"] = s.Errors,
            ["directories"] = s.Directories,
            ["symlinks"] = s.Symlinks,
            ["bytes"] = s.Bytes,
            ["chunks"] = s.Chunks,
            ["deduplicatedChunks"] = s.DedupChunks,
            ["storedChunks"] = s.Chunks - s.DedupChunks,
            ["storedBytes"] = s.UploadedBytes,
            ["seconds"] = Math.Round(s.Elapsed.TotalSeconds, 3),
            ["problems"] = problems,
        });
    }

    private static async Task<ImportSummary> ShowProgressAsync(ImportProgress progress, Task<ImportSummary> run, bool terminal)
    {
        if (terminal)
        {
            await AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .StartAsync(async ctx =>
                {
                    var task = ctx.AddTask("importing", maxValue: 1);
                    while (!run.IsCompleted)
                    {
                        task.MaxValue = Math.Max(1, progress.TotalBytes);
                        task.Value = progress.BytesDone;
                        task.Description = $"importing {progress.FilesDone}/{progress.TotalFiles} files";
                        await Task.WhenAny(run, Task.Delay(200)).ConfigureAwait(false);
                    }

                    task.Value = task.MaxValue;
                }).ConfigureAwait(false);
            return await run.ConfigureAwait(false);
        }

        var sw = Stopwatch.StartNew();
        while (!run.IsCompleted)
        {
            await Task.WhenAny(run, Task.Delay(5000)).ConfigureAwait(false);
            if (!run.IsCompleted && progress.TotalBytes > 0)
            {
                await Console.Error.WriteLineAsync(
                    $"progress: {progress.FilesDone}/{progress.TotalFiles} files, {Sizes.Format(progress.BytesDone)} of {Sizes.Format(progress.TotalBytes)} ({100.0 * progress.BytesDone / progress.TotalBytes:0}%), {Sizes.Format(progress.BytesDone / sw.Elapsed.TotalSeconds)}/s").ConfigureAwait(false);
            }
        }

        return await run.ConfigureAwait(false);
    }
}
