using System.CommandLine;
using System.Text.Json;
using LazyModelFs.Check;
using LazyModelFs.Util;
using Spectre.Console;

namespace LazyModelFs.Cli.Commands;

internal static class FsckCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var path = new Argument<string>("PATH") { Description = "Directory or file in the volume to check", DefaultValueFactory = _ => "/" };
        var verify = new Option<bool>("--verify") { Description = "Read every object and verify it (length, SHA-256, CRC32C), not only that it exists with its size" };
        var repair = new Option<bool>("--repair") { Description = "Delete damaged objects (those that are not the bytes their key names), so importing the file's source again stores them again" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object (summary and damaged files) instead of text" };
        var jobs = Numeric.Int("--concurrency", "Object requests at once", 16, 1, 256, "-j");
        var creds = new Common.Credentials();
        var cmd = new Command("fsck", "Check that every file's chunk table is whole and every chunk object exists with its size;\nwith --verify, read and verify every object. Names each damaged file and chunk; exits 0 when\nthe volume is healthy, 3 when something is damaged.\n\nRepair: `lmfs fsck --verify --repair` deletes the damaged objects, then\n`lmfs import --overwrite SRC DEST` of the same source stores them again.\n\nExamples:\n  lmfs fsck sqlite:///var/lib/lmfs/meta.db\n  lmfs fsck --verify redis://10.0.0.5:6379/1 /models/llama-3-8b\n  lmfs fsck --verify --repair --json sqlite:///var/lib/lmfs/meta.db") { meta, path, verify, repair, json, jobs };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            using var volume = await Volume.OpenAsync(p.GetValue(meta)!, creds.Read(p), ct).ConfigureAwait(false);
            var check = new VolumeCheck(volume, new CheckOptions { Verify = p.GetValue(verify), Repair = p.GetValue(repair), Concurrency = p.GetValue(jobs) });
            var s = await Common.WithProgressAsync(check.RunAsync(p.GetValue(path)!, ct), !p.GetValue(json), "checking", task =>
            {
                task.MaxValue = Math.Max(1, check.Progress.TotalObjects);
                task.Value = check.Progress.ObjectsDone;
                task.Description = $"checking {check.Progress.FilesSeen} files";
            }, ct).ConfigureAwait(false);
            if (p.GetValue(json))
            {
                WriteJson(s);
            }
            else
            {
                foreach (var d in s.Damaged)
                {
                    string where = TerminalText.Safe(d.Path);
                    if (d.Problem is not null)
                    {
                        Console.WriteLine($"damaged: {where} (inode {d.Ino}): {TerminalText.Safe(d.Problem)}");
                    }

                    foreach (var c in d.Chunks)
                    {
                        Console.WriteLine($"damaged: {where}: chunk {c.Index} {c.Id}: {Word(c.Problem)}: {TerminalText.Safe(c.Detail)}{(c.Removed ? " (object removed)" : "")}");
                    }
                }

                Console.WriteLine($"checked {s.Files} file(s), {s.Chunks} chunk(s) in {s.Objects} object(s), {Sizes.Format(s.Bytes)}{(s.Verified ? $"; read and verified {Sizes.Format(s.BytesRead)}" : " (sizes only; --verify reads them)")}");
                Console.WriteLine(s.Healthy ? "healthy" : $"damaged: {s.DamagedFiles} file(s), {s.DamagedChunks} chunk(s){(s.RemovedObjects > 0 ? $"; {s.RemovedObjects} damaged object(s) removed" : "")}");
            }

            if (s.Healthy)
            {
                return 0;
            }

            await Console.Error.WriteLineAsync("hint: " + (s.RemovedObjects > 0
                ? "import the damaged files' sources again (lmfs import --overwrite SRC DEST): the removed objects are stored again"
                : "run lmfs fsck --verify --repair to remove the damaged objects, then import the damaged files' sources again (lmfs import --overwrite SRC DEST); a missing object needs only the import")).ConfigureAwait(false);
            return 3;
        }));
        return cmd;
    }

    internal static string Word(ChunkProblem p) => p switch
    {
        ChunkProblem.Missing => "missing",
        ChunkProblem.WrongSize => "wrong size",
        _ => "fails verification",
    };

    private static void WriteJson(CheckSummary s) => Json.Write(w =>
    {
        w.WriteStartObject();
        w.WriteBoolean("healthy", s.Healthy);
        w.WriteBoolean("verified", s.Verified);
        w.WriteNumber("files", s.Files);
        w.WriteNumber("chunks", s.Chunks);
        w.WriteNumber("objects", s.Objects);
        w.WriteNumber("bytes", s.Bytes);
        w.WriteNumber("bytesRead", s.BytesRead);
        w.WriteNumber("damagedFiles", s.DamagedFiles);
        w.WriteNumber("damagedChunks", s.DamagedChunks);
        w.WriteNumber("removedObjects", s.RemovedObjects);
        w.WriteStartArray("damaged");
        foreach (var d in s.Damaged)
        {
            w.WriteStartObject();
            w.WriteString("path", d.Path);
            w.WriteNumber("inode", d.Ino);
            if (d.Problem is null)
            {
                w.WriteNull("problem");
            }
            else
            {
                w.WriteString("problem", d.Problem);
            }

            w.WriteStartArray("chunks");
            foreach (var c in d.Chunks)
            {
                w.WriteStartObject();
                w.WriteNumber("index", c.Index);
                w.WriteString("id", c.Id.ToHex());
                w.WriteString("problem", c.Problem switch { ChunkProblem.Missing => "missing", ChunkProblem.WrongSize => "wrong-size", _ => "fails-verification" });
                w.WriteString("detail", c.Detail);
                w.WriteBoolean("removed", c.Removed);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteEndObject();
    });
}
