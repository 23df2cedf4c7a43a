using System.CommandLine;
using System.Text.Json;
using LazyModelFs.Gc;
using LazyModelFs.Util;
using Spectre.Console;

namespace LazyModelFs.Cli.Commands;

internal static class GcCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "Count what would be deleted and which reference counts would be fixed; change nothing" };
        var grace = Numeric.Duration("--grace", "Keep unreferenced objects written more recently than this, e.g. 30m, 6h, 2d; 0 only when no import runs (default 24h: longer than any import, whose chunks are stored before its files are committed)", 3650);
        var json = new Option<bool>("--json") { Description = "Print one JSON object (the summary) instead of text" };
        var jobs = Numeric.Int("--concurrency", "Deletes at once", 16, 1, 256, "-j");
        var creds = new Common.Credentials();
        var cmd = new Command("gc", "Delete chunk objects that no file references (older than --grace), and fix reference counts\nthat drifted from the chunk tables. Safe while imports run; never deletes objects it did not\nwrite (keys outside chunks/).\n\nExamples:\n  lmfs gc --dry-run sqlite:///var/lib/lmfs/meta.db\n  lmfs gc redis://10.0.0.5:6379/1\n  lmfs gc --grace 6h --json sqlite:///var/lib/lmfs/meta.db") { meta, dryRun, grace, json, jobs };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            using var volume = await Volume.OpenAsync(p.GetValue(meta)!, creds.Read(p), ct).ConfigureAwait(false);
            var gc = new GarbageCollector(volume, new GcOptions { DryRun = p.GetValue(dryRun), Grace = p.GetValue(grace) ?? GcOptions.DefaultGrace, Concurrency = p.GetValue(jobs) });
            var s = await Common.WithProgressAsync(gc.RunAsync(ct), !p.GetValue(json), "listing", task =>
            {
                task.MaxValue = Math.Max(1, gc.Progress.ToDelete);
                task.Value = gc.Progress.Deleted;
                task.Description = gc.Progress.ToDelete == 0 ? $"listing: {gc.Progress.Listed} objects" : $"deleting {gc.Progress.ToDelete} objects";
            }, ct).ConfigureAwait(false);
            if (p.GetValue(json))
            {
                WriteJson(s);
            }
            else
            {
                string verb = s.DryRun ? "would free" : "freed";
                Console.WriteLine($"referenced: {s.ReferencedObjects} object(s), {Sizes.Format(s.ReferencedBytes)} ({s.Tables} chunk table(s))");
                Console.WriteLine($"unreferenced: {s.UnreferencedObjects} object(s), {Sizes.Format(s.UnreferencedBytes)}");
                Console.WriteLine($"{verb}: {s.FreedObjects} object(s), {Sizes.Format(s.FreedBytes)}");
                Console.WriteLine($"kept, younger than --grace {Numeric.FormatDuration(s.Grace)}: {s.YoungObjects} object(s), {Sizes.Format(s.YoungBytes)}{(s.Rereferenced > 0 ? $"; kept, referenced again since the scan: {s.Rereferenced}" : "")}");
                Console.WriteLine(s.RefcountsChecked
                    ? $"reference counts {(s.DryRun ? "to fix" : "fixed")}: {s.RefcountsFixed}"
                    : s.DryRun
                        ? "reference counts: not checked, the volume kept changing during the scan (imports or removals ran); run gc again"
                        : "reference counts: not checked and nothing deleted: the volume kept changing during the scan (imports or removals ran); run gc again");
                if (s.ProfilesRemoved > 0)
                {
                    Console.WriteLine($"access profiles {(s.DryRun ? "to remove" : "removed")}: of {s.ProfilesRemoved} content(s) no file has any more");
                }

                if (s.OtherObjects > 0)
                {
                    Console.WriteLine($"left alone: {s.OtherObjects} object(s) under chunks/ that are not chunk objects (gc deletes only what lmfs writes)");
                }
            }

            if (s.MissingObjects > 0)
            {
                await Console.Error.WriteLineAsync($"warning: {s.MissingObjects} referenced object(s) are missing from the store; run lmfs fsck META_URL to name the files").ConfigureAwait(false);
            }

            if (s.FailedDeletes > 0)
            {
                throw new LmfsException(
                    $"{s.FailedDeletes} object(s) could not be deleted: the object store refused or did not answer in time",
                    "check the object store, then run gc again (those objects stay claimed for up to 10 minutes; the next run deletes them)",
                    5);
            }

            return 0;
        }));
        return cmd;
    }

    private static void WriteJson(GcSummary s) => Json.Write(w =>
    {
        w.WriteStartObject();
        w.WriteBoolean("dryRun", s.DryRun);
        w.WriteNumber("graceSeconds", (long)s.Grace.TotalSeconds);
        w.WriteNumber("tables", s.Tables);
        w.WriteNumber("referencedObjects", s.ReferencedObjects);
        w.WriteNumber("referencedBytes", s.ReferencedBytes);
        w.WriteNumber("unreferencedObjects", s.UnreferencedObjects);
        w.WriteNumber("unreferencedBytes", s.UnreferencedBytes);
        w.WriteNumber("freedObjects", s.FreedObjects);
        w.WriteNumber("freedBytes", s.FreedBytes);
        w.WriteNumber("youngObjects", s.YoungObjects);
        w.WriteNumber("youngBytes", s.YoungBytes);
        w.WriteNumber("rereferencedObjects", s.Rereferenced);
        w.WriteNumber("otherObjects", s.OtherObjects);
        w.WriteNumber("missingObjects", s.MissingObjects);
        w.WriteBoolean("refcountsChecked", s.RefcountsChecked);
        w.WriteNumber("refcountsFixed", s.RefcountsFixed);
        w.WriteNumber("failedDeletes", s.FailedDeletes);
        w.WriteNumber("profilesRemoved", s.ProfilesRemoved);
        w.WriteEndObject();
    });
}
