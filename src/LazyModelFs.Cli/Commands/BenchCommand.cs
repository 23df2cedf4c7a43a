using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;
using LazyModelFs.Bench;
using LazyModelFs.Fuse;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Cli.Commands;

internal static class BenchCommand
{
    public static Command Build()
    {
        var target = new Argument<string>("FILE|META_URL") { Description = "A file under a mount point (lmfs, or another filesystem to compare), or a metadata URL to mount for the run" };
        var path = new Argument<string?>("PATH") { Description = "With a metadata URL: the file's path in the volume", Arity = ArgumentArity.ZeroOrOne };
        var safetensors = new Option<string?>("--safetensors") { Description = "Also time a safetensors load (mmap, every tensor copied out) of this file: a path under the mount, or in the volume" };
        var readers = Numeric.Int("--readers", "Readers of the N-reader sequential figure", 4, 1, 256);
        var randomReads = Numeric.Int("--random-reads", "Random reads per phase", 200, 1, 1_000_000);
        var readSize = Numeric.Size("--read-size", "Size of each random read", "1M", 1, 64L << 20);
        var streams = Numeric.Int("--get-streams", "Streams of the parallel-GET ceiling", 16, 1, 256);
        var phases = new Option<string>("--phases") { Description = "Phases to run, comma-separated: cold,warm,hot", DefaultValueFactory = _ => "cold,warm,hot" };
        var noCeilings = new Option<bool>("--no-ceilings") { Description = "Skip the object-store and local-disk ceilings (e.g. for a peer measured beside an lmfs run)" };
        var localDir = new Option<string?>("--local-dir") { Description = "Directory on the cache disk for the local-disk ceiling file (default: the mount's cache dir, else /var/tmp)" };
        var system = new Option<string?>("--system") { Description = "Name of the system measured, for reports (default: lmfs, or the filesystem type)" };
        var coldCmd = new Option<string?>("--cold-cmd") { Description = "Other filesystems: shell command that empties their cache (e.g. unmount, clear the cache dir, mount again)" };
        var warmCmd = new Option<string?>("--warm-cmd") { Description = "Other filesystems: shell command that keeps their disk cache but drops memory (e.g. unmount and mount again)" };
        var serverPid = Numeric.OptionalInt("--server-pid", "Pid of the object-store server, to report its CPU per GB", 1, 4_194_304);
        var aws = new Option<string?>("--aws-baseline") { Description = "The safetensors file as a plain object (s3://BUCKET/KEY): time `aws s3 cp` of it, then a load from local disk" };
        var awsEndpoint = new Option<string?>("--aws-endpoint") { Description = "Endpoint for --aws-baseline (default: the volume's S3 endpoint)" };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON (progress still goes to stderr)" };
        var jsonFile = new Option<string?>("--json-file") { Description = "Also write the JSON report to this file" };
        var html = new Option<string?>("--html") { Description = "Write a self-contained HTML report (SVG chart of phases vs ceilings) to this file" };
        var runs = Numeric.Int("--runs", "Repeat each measurement this many times (median of the sequential runs; latencies pooled)", 1, 1, 100);
        var seed = Numeric.Int("--seed", "Seed of the random offsets and shuffled tensor order", 1, int.MinValue, int.MaxValue);
        var mountOpts = new MountOptionsBinder();
        var creds = new Common.Credentials();
        var cmd = new Command("bench", "Measure cold, warm and hot reads through a mount against the ceilings of the same machine:\n" +
            "the object store read directly (parallel and single ranged GETs) and the cache disk read directly.\n" +
            "Each phase reads with 1 and N readers, 200 random 1 MiB reads (p50/p95/p99) and the first MiB, and\n" +
            "reports the mount's CPU per GB and peak memory. Needs root to drop the page cache (otherwise\n" +
            "per-file invalidation). Speed claims in docs/benchmarks.md come from here and bench/.\n\n" +
            "Examples:\n" +
            "  lmfs bench /models/bench/random.bin --safetensors /models/bench/model.safetensors\n" +
            "  lmfs bench sqlite:///var/lib/lmfs/meta.db /bench/random.bin --cache-dir /nvme/lmfs --json-file out.json --html out.html\n" +
            "  lmfs bench /mnt/rclone/random.bin --system rclone --no-ceilings --cold-cmd './remount-rclone --clear'\n" +
            "  lmfs bench compare lmfs.json rclone.json s3fs.json --markdown")
        {
            target, path, safetensors, readers, randomReads, readSize, streams, phases, noCeilings, localDir, system, coldCmd, warmCmd, serverPid, aws, awsEndpoint, json, jsonFile, html, runs, seed,
        };
        mountOpts.AddTo(cmd);
        creds.AddTo(cmd);
        cmd.Add(BuildCompare());
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var o = new BenchOptions
            {
                File = "",
                Readers = p.GetValue(readers),
                RandomReads = p.GetValue(randomReads),
                ReadSize = (int)p.GetValue(readSize).Bytes,
                GetStreams = p.GetValue(streams),
                Phases = ParsePhases(p.GetValue(phases)!),
                ServerPid = p.GetValue(serverPid),
                AwsBaseline = p.GetValue(aws),
                Seed = p.GetValue(seed),
                Runs = p.GetValue(runs),
            };
            string t = p.GetValue(target)!;
            BenchReport report;
            if (t.Contains("://", StringComparison.Ordinal))
            {
                string vpath = p.GetValue(path) ?? throw new LmfsException("a metadata URL needs the file's PATH in the volume", "e.g. lmfs bench sqlite:///var/lib/lmfs/meta.db /bench/random.bin", 2);
                report = await WithMountAsync(p, t, mountOpts, async mnt =>
                {
                    string Under(string v) => Path.Combine(mnt, v.TrimStart('/'));
                    var opts = o with { File = Under(vpath), Safetensors = p.GetValue(safetensors) is { } s ? Under(s) : null };
                    return await RunOnMountAsync(p, opts, mnt, ct).ConfigureAwait(false);
                }, ct).ConfigureAwait(false);
            }
            else
            {
                if (p.GetValue(path) is not null)
                {
                    throw new LmfsException("PATH is only for a metadata URL; for a mounted file give just the file", "e.g. lmfs bench /models/bench/random.bin", 2);
                }

                // Resolved, so the mount it lies on is found in the kernel's table even through a link.
                string file = FuseMount.ResolveMountPoint(t);
                var (mp, fsType) = MountInfo.Find(file);
                var opts = o with { File = file, Safetensors = p.GetValue(safetensors) is { } s ? FuseMount.ResolveMountPoint(s) : null };
                report = fsType == "fuse.lazymodelfs"
                    ? await RunOnMountAsync(p, opts, mp, ct).ConfigureAwait(false)
                    : await RunOnOtherAsync(p, opts, mp, fsType, ct).ConfigureAwait(false);
            }

            if (p.GetValue(system) is { } name)
            {
                report = report with { System = name };
            }

            string text = report.ToJson();
            if (p.GetValue(jsonFile) is { } jf)
            {
                await File.WriteAllTextAsync(jf, text + "\n", ct).ConfigureAwait(false);
            }

            if (p.GetValue(html) is { } hf)
            {
                await File.WriteAllTextAsync(hf, Formats.Html(report), ct).ConfigureAwait(false);
            }

            Console.Write(p.GetValue(json) ? text + "\n" : Formats.Text(report));
            return 0;
        }));
        return cmd;

        void Check(string file, string what)
        {
            if (!File.Exists(file))
            {
                throw new LmfsException($"{what} '{file}' does not exist or is not a file", "give a file under the mount point", 2);
            }
        }

        async Task<BenchReport> RunOnMountAsync(ParseResult p, BenchOptions o, string mountPoint, CancellationToken ct)
        {
            Check(o.File, "file");
            if (o.Safetensors is { } s)
            {
                Check(s, "safetensors file");
            }

            var lmfs = await LmfsBenchTarget.ConnectAsync(mountPoint, ct).ConfigureAwait(false);
            o = o with { LocalDir = p.GetValue(noCeilings) ? null : p.GetValue(localDir) ?? lmfs.State.CacheDir };
            (Storage.IObjectStore, Chunks.ChunkTable)? store = null;
            Volume? volume = null;
            try
            {
                if (!p.GetValue(noCeilings))
                {
                    volume = await Volume.OpenAsync(lmfs.State.MetaUrl, creds.Read(p), ct).ConfigureAwait(false);
                    var table = await volume.Meta.GetChunkTableAsync(Posix.Stat(o.File).Ino, volume.Settings.ChunkSize, ct).ConfigureAwait(false)
                        ?? throw new LmfsException($"the volume has no chunk table for {o.File}", "is the file still in the volume? (lmfs ls)", 2);
                    store = (volume.Store, table);
                    if (o.AwsBaseline is not null && p.GetValue(awsEndpoint) is null && Storage.ObjectStores.EndpointOf(volume.Settings.Storage) is { } ep)
                    {
                        o = o with { AwsEndpoint = ep };
                    }
                }

                o = o with { AwsEndpoint = p.GetValue(awsEndpoint) ?? o.AwsEndpoint };
                var runner = new BenchRunner(lmfs, o, Progress) { Store = store };
                return await runner.RunAsync(ct).ConfigureAwait(false);
            }
            finally
            {
                volume?.Dispose();
            }
        }

        async Task<BenchReport> RunOnOtherAsync(ParseResult p, BenchOptions o, string mountPoint, string fsType, CancellationToken ct)
        {
            Check(o.File, "file");
            var other = new CommandBenchTarget(p.GetValue(system) ?? fsType, mountPoint, p.GetValue(coldCmd), p.GetValue(warmCmd));
            o = o with { LocalDir = p.GetValue(noCeilings) ? null : p.GetValue(localDir) ?? "/var/tmp", AwsEndpoint = p.GetValue(awsEndpoint) };
            var report = await new BenchRunner(other, o, Progress).RunAsync(ct).ConfigureAwait(false);
            if (p.GetValue(coldCmd) is null && o.Phases.Contains(CacheState.Cold))
            {
                report = report with { Notes = [.. report.Notes, "no --cold-cmd: 'cold' only dropped the page cache; the filesystem's own cache was kept"] };
            }

            return report;
        }
    }

    private static void Progress(string line) => Console.Error.WriteLine("bench: " + line);

    private static CacheState[] ParsePhases(string s)
    {
        var list = new List<CacheState>();
        foreach (var w in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            list.Add(w switch
            {
                "cold" => CacheState.Cold,
                "warm" => CacheState.Warm,
                "hot" => CacheState.Hot,
                _ => throw new LmfsException($"--phases: unknown phase '{w}'", "use cold, warm and/or hot, comma-separated", 2),
            });
        }

        return list.Count > 0 ? [.. list.Distinct().Order()] : throw new LmfsException("--phases is empty", "use cold, warm and/or hot, comma-separated", 2);
    }

    /// <summary>
    /// Mounts the volume for the run in a child `lmfs mount` process (the bench must never read a mount
    /// its own process serves: architecture.md), runs <paramref name="body"/>, then unmounts and removes
    /// whatever it created (mount point; cache directory unless --cache-dir was given).
    /// </summary>
    private static async Task<BenchReport> WithMountAsync(ParseResult p, string metaUrl, MountOptionsBinder opts, Func<string, Task<BenchReport>> body, CancellationToken ct)
    {
        opts.Read(p); // validate the mount options before anything starts
        string work = Directory.CreateTempSubdirectory("lmfs-bench-").FullName; // mkdtemp(3): a new directory of ours, mode 0700
        string log = Path.Combine(work, "mount.log");
        Directory.CreateDirectory(Path.Combine(work, "mnt"));
        string mnt = FuseMount.ResolveMountPoint(Path.Combine(work, "mnt")); // TMPDIR may lead through a link
        var (url, password) = Redact.SplitPassword(metaUrl); // the password goes through the environment, never argv
        var args = new List<string> { "mount", url, mnt };
        bool cacheGiven = p.GetResult(opts.CacheDir) is { Implicit: false };
        if (!cacheGiven)
        {
            args.AddRange(["--cache-dir", Path.Combine(work, "cache")]);
        }

        args.AddRange(opts.PassThrough(p));
        var env = new Dictionary<string, string>();
        if (password is not null)
        {
            env["LMFS_REDIS_PASSWORD"] = password;
        }

        LaunchResult? launched = null;
        try
        {
            launched = await MountLauncher.StartAsync(new MountLaunch(SelfExec.Command(args), mnt, log) { Environment = env }, ct).ConfigureAwait(false);
            if (!launched.Ready)
            {
                throw new LmfsException($"mounting {Redact.Url(metaUrl)} for the bench failed: {launched.Message}", launched.Hint ?? "run lmfs mount by hand to see why", launched.ExitCode);
            }

            Progress($"mounted {Redact.Url(metaUrl)} at {mnt} (pid {launched.Pid})");
            return await body(mnt).ConfigureAwait(false);
        }
        finally
        {
            if (launched is { Pid: var pid } && MountLauncher.Alive(pid))
            {
                FuseMount.UnmountPath(mnt, NullLogger.Instance);
                if (!await ExitedAsync(pid, TimeSpan.FromSeconds(30)).ConfigureAwait(false))
                {
                    try
                    {
                        using var daemon = Process.GetProcessById(pid);
                        daemon.Kill();
                    }
                    catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
                    {
                        // ended meanwhile
                    }

                    await ExitedAsync(pid, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                }
            }

            // A daemon that ended without saying why left its reason in the log, which the error names: keep that.
            bool keepLog = launched is { Ready: false };
            try
            {
                if (keepLog)
                {
                    foreach (var d in Directory.GetDirectories(work))
                    {
                        Directory.Delete(d, recursive: true);
                    }
                }
                else
                {
                    Directory.Delete(work, recursive: true);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"bench: could not remove {work}: {ex.Message}");
            }
        }
    }

    private static async Task<bool> ExitedAsync(int pid, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        while (MountLauncher.Alive(pid))
        {
            if (clock.Elapsed > limit)
            {
                return false;
            }

            await Task.Delay(50, CancellationToken.None).ConfigureAwait(false);
        }

        return true;
    }

    private static Command BuildCompare()
    {
        var files = new Argument<string[]>("REPORT.json") { Description = "Reports written by lmfs bench --json-file (the first with ceilings gives the ceilings)", Arity = ArgumentArity.OneOrMore };
        var markdown = new Option<bool>("--markdown") { Description = "Print a Markdown table (for docs/benchmarks.md)" };
        var cmd = new Command("compare", "Print the figures of several bench reports side by side, with ratios to the ceilings.\n\nExample:\n  lmfs bench compare lmfs.json rclone.json s3fs.json --markdown") { files, markdown };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var reports = new List<BenchReport>();
            foreach (var f in p.GetValue(files)!)
            {
                try
                {
                    reports.Add(BenchReport.FromJson(await File.ReadAllTextAsync(f, ct).ConfigureAwait(false)));
                }
                catch (Exception ex) when (ex is System.Text.Json.JsonException or NotSupportedException)
                {
                    throw new LmfsException($"'{f}' is not an lmfs bench report: {ex.Message}", "give files written by lmfs bench --json-file", 2, ex);
                }
            }

            Console.Write(Formats.Compare(reports, p.GetValue(markdown)));
            return 0;
        }));
        return cmd;
    }
}

/// <summary>Starting this same lmfs again as another process (a background mount, the bench's mount).</summary>
internal static class SelfExec
{
    /// <summary>The whole command line of this lmfs with <paramref name="args"/>, executable first.</summary>
    public static List<string> Command(IEnumerable<string> args) => [Environment.ProcessPath!, .. Arguments(args)];

    /// <summary>The arguments after the executable: running as `dotnet lmfs.dll`, the dll comes first.</summary>
    public static List<string> Arguments(IEnumerable<string> args)
    {
        var list = args.ToList();
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet")
        {
            list.Insert(0, Environment.GetCommandLineArgs()[0]);
        }

        return list;
    }
}
