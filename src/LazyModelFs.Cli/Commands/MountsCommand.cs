using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using LazyModelFs.Fuse;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Spectre.Console;

namespace LazyModelFs.Cli.Commands;

/// <summary>
/// `lmfs mounts`: this user's mounts from the mount records (<see cref="MountRegistry.All"/>). A
/// record is live only while the mount table shows fuse.lazymodelfs at its path and its daemon runs;
/// a daemon killed with SIGKILL leaves its record behind, and that record is shown as stale, never as
/// live. The pid is the daemon's only while the process started before the record was written (the
/// daemon writes it once it serves): a later process with a reused pid is not it.
/// </summary>
internal static class MountsCommand
{
    public static Command Build()
    {
        var json = new Option<bool>("--json") { Description = "Print a JSON array (schema in docs/operations.md) instead of a table" };
        var cmd = new Command("mounts", "List this user's lmfs mounts (root: those root started): path, volume, pid, cache, uptime, live or stale.\n\nExamples:\n  lmfs mounts\n  lmfs mounts --json") { json };
        cmd.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            var table = FuseMount.MountTable();
            var rows = MountRegistry.All().Select(x => Describe(x.Record, x.Written, table)).ToList();
            if (p.GetValue(json))
            {
                var a = new JsonArray();
                foreach (var r in rows)
                {
                    var o = new JsonObject
                    {
                        ["path"] = r.Record.MountPoint,
                        ["volume"] = r.Record.MetaUrl,
                        ["pid"] = r.Record.Pid,
                        ["cacheDir"] = r.Record.CacheDir,
                        ["state"] = r.Live ? "live" : "stale",
                        ["mounted"] = r.Mounted,
                        ["uptimeSeconds"] = r.Uptime is { } u ? Math.Floor(u.TotalSeconds) : null,
                    };
                    Json.AddTime(o, "recordedAt", Json.UnixNs(r.Written) / 1_000_000_000 * 1_000_000_000); // whole seconds: when the daemon began serving
                    a.Add(o);
                }

                Json.Print(a);
                return Task.FromResult(0);
            }

            if (rows.Count == 0)
            {
                Console.WriteLine("no lmfs mounts");
                return Task.FromResult(0);
            }

            Console.WriteLine($"{"PATH",-30} {"STATE",-5} {"PID",7} {"UPTIME",10}  {"VOLUME",-40} CACHE");
            foreach (var r in rows)
            {
                string up = r.Uptime is { } u ? FormatUptime(u) : "-";
                Console.WriteLine($"{TerminalText.Safe(r.Record.MountPoint),-30} {(r.Live ? "live" : "stale"),-5} {r.Record.Pid,7} {up,10}  {TerminalText.Safe(Redact.Text(r.Record.MetaUrl)),-40} {TerminalText.Safe(r.Record.CacheDir)}");
            }

            if (rows.Any(r => !r.Live))
            {
                Console.WriteLine("stale: the daemon is gone (killed?); `lmfs umount PATH` detaches a dead mount and removes its record");
            }

            return Task.FromResult(0);
        }));
        return cmd;
    }

    /// <summary>A record with what the mount table and /proc say of it now.</summary>
    internal sealed record MountState(MountRecord Record, DateTime Written, bool Mounted, bool Live, TimeSpan? Uptime);

    internal static MountState Describe(MountRecord r, DateTime written, IReadOnlyList<MountEntry> table)
    {
        bool mounted = table.LastOrDefault(m => m.MountPoint == r.MountPoint)?.FsType == "fuse.lazymodelfs";
        var age = ProcessAge(r.Pid);
        // The daemon writes its record after it started; a process that started later only reuses the pid (2 s: /proc's clock-tick rounding and the file time's).
        bool daemon = age is { } a && DateTime.UtcNow - a <= written + TimeSpan.FromSeconds(2);
        bool live = mounted && daemon;
        return new MountState(r, written, mounted, live, live ? age : null);
    }

    /// <summary>How long process <paramref name="pid"/> has run: /proc/PID/stat's start time (field 22, in clock ticks since boot; USER_HZ is 100 on Linux) against /proc/uptime. Null when there is no such process.</summary>
    internal static TimeSpan? ProcessAge(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' '); // the name (field 2) may hold spaces and ')'
            double start = long.Parse(fields[19], CultureInfo.InvariantCulture) / 100.0;
            double uptime = double.Parse(File.ReadAllText("/proc/uptime").Split(' ')[0], CultureInfo.InvariantCulture);
            return TimeSpan.FromSeconds(Math.Max(0, uptime - start));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException or OverflowException)
        {
            return null;
        }
    }

    private static string FormatUptime(TimeSpan t) =>
        t.TotalDays >= 1 ? $"{(int)t.TotalDays}d{t.Hours}h" : t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:00}m" : $"{(int)t.TotalMinutes}m{t.Seconds:00}s";
}

/// <summary>
/// `lmfs stats MOUNTPOINT`: the daemon's counters through its control socket
/// (<see cref="MountClient.StatsAsync"/>). On a terminal a view refreshed every --interval seconds,
/// rates computed from the differences between two samples; otherwise (or with --json) one sample as
/// JSON. Resolving the mount point follows `lmfs warmup MOUNTPOINT`: the mount table must show
/// fuse.lazymodelfs there and this user's registry must hold its record (exit 2 otherwise).
/// </summary>
internal static class StatsCommand
{
    public static Command Build()
    {
        var target = new Argument<string>("MOUNTPOINT") { Description = "The directory a volume is mounted on" };
        var json = new Option<bool>("--json") { Description = "Print one sample as a JSON object and exit (also what a non-terminal gets)" };
        var interval = Numeric.Number("--interval", "Seconds between refreshes of the live view", 1, 0.1, 3600, "seconds");
        var cmd = new Command("stats", "Show what a live mount does: reads and bytes per second, store fetches and MB/s, memory- and disk-tier hits, fetches in flight, errors.\n\nExamples:\n  lmfs stats /models\n  lmfs stats /models --json") { target, json, interval };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var record = Resolve(p.GetValue(target)!);
            var sample = await MountClient.StatsAsync(record.ControlSocket, ct).ConfigureAwait(false);
            if (p.GetValue(json) || Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
            {
                sample["mountPoint"] = record.MountPoint;
                sample["volume"] = record.MetaUrl;
                Json.Print(sample);
                return 0;
            }

            var every = TimeSpan.FromSeconds(p.GetValue(interval));
            try
            {
                await AnsiConsole.Live(View(record, sample, null, every)).StartAsync(async ctx =>
                {
                    while (true)
                    {
                        await Task.Delay(every, ct).ConfigureAwait(false);
                        var next = await MountClient.StatsAsync(record.ControlSocket, ct).ConfigureAwait(false);
                        ctx.UpdateTarget(View(record, next, sample, every));
                        sample = next;
                    }
                }).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                // Ctrl-C is how a live view ends.
            }

            return 0;
        }));
        return cmd;
    }

    /// <summary>The record of the lmfs mount at <paramref name="given"/>; exit 2 for a path that is not one, or whose record (and control socket) is not this user's.</summary>
    internal static MountRecord Resolve(string given)
    {
        string mp = FuseMount.ResolveMountPoint(given); // the mount table and the records hold resolved paths
        if (FuseMount.MountTypeAt(mp) != "fuse.lazymodelfs")
        {
            throw new LmfsException($"'{given}' is not an lmfs mount point", "give the directory lmfs is mounted on; `lmfs mounts` lists them", 2);
        }

        var record = MountRegistry.Load(mp) ?? throw new LmfsException($"no record of the mount at {mp}: it was started by another user (its control socket is theirs) or by an older lmfs", "run lmfs stats as the user who mounted it (or root, for root's mounts); `lmfs mounts` lists yours", 2);
        if (MountsCommand.ProcessAge(record.Pid) is null)
        {
            throw new LmfsException($"the daemon of the mount at {mp} (pid {record.Pid}) is gone", $"`lmfs umount {mp}` detaches the dead mount; mount it again", 1);
        }

        return record;
    }

    private static Table View(MountRecord r, JsonObject now, JsonObject? before, TimeSpan every)
    {
        double secs = every.TotalSeconds;
        long Get(JsonObject o, string k) => o[k] is JsonValue v && v.TryGetValue(out long x) ? x : 0;
        string Rate(string k, double scale = 1) => before is null ? "-" : ((Get(now, k) - Get(before, k)) / scale / secs).ToString("0.0", CultureInfo.InvariantCulture);
        var t = new Table().Title(Markup.Escape($"{TerminalText.Safe(r.MountPoint)}  pid {r.Pid}  {TerminalText.Safe(Redact.Text(r.MetaUrl))}"))
            .AddColumn("").AddColumn(new TableColumn("per second").RightAligned()).AddColumn(new TableColumn("total").RightAligned());
        void Row(string name, string key, double scale = 1, string unit = "") =>
            t.AddRow(name, Rate(key, scale) + unit, (Get(now, key) / scale).ToString(scale == 1 ? "0" : "0.0", CultureInfo.InvariantCulture) + unit);
        Row("reads (kernel)", "reads");
        Row("read MB (kernel)", "readBytes", 1e6);
        Row("store fetches", "storeFetches");
        Row("store MB", "storeBytes", 1e6);
        Row("memory-tier hits", "memoryHits");
        Row("disk-tier hits", "diskHits");
        Row("read errors", "readErrors");
        Row("fetch errors", "fetchErrors");
        t.AddRow("fetches in flight", "", Get(now, "busy").ToString(CultureInfo.InvariantCulture));
        t.Caption(before is null ? "first sample; rates from the next" : $"every {secs.ToString("0.##", CultureInfo.InvariantCulture)} s; Ctrl-C ends");
        return t;
    }
}
