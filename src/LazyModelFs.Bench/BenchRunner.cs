using System.Diagnostics;
using LazyModelFs.Chunks;
using LazyModelFs.Util;

namespace LazyModelFs.Bench;

public sealed record BenchOptions
{
    /// <summary>The file to read, through the mount.</summary>
    public required string File { get; init; }

    /// <summary>A *.safetensors file through the mount for the load phase (optional).</summary>
    public string? Safetensors { get; init; }

    public int Readers { get; init; } = 4;

    public int RandomReads { get; init; } = 200;

    public int ReadSize { get; init; } = 1 << 20;

    /// <summary>Streams of the parallel-GET ceiling.</summary>
    public int GetStreams { get; init; } = 16;

    public IReadOnlyList<CacheState> Phases { get; init; } = [CacheState.Cold, CacheState.Warm, CacheState.Hot];

    /// <summary>Measure the local-disk ceiling (a same-size file written here) — the cache disk.</summary>
    public string? LocalDir { get; init; }

    /// <summary>The object-store server's pid, to report its CPU per GB.</summary>
    public int? ServerPid { get; init; }

    /// <summary>The safetensors file as a plain object (s3://bucket/key), for the AWS CLI download baseline.</summary>
    public string? AwsBaseline { get; init; }

    public string? AwsEndpoint { get; init; }

    public int Seed { get; init; } = 1;

    /// <summary>Each measurement is repeated this many times (each from its phase's state): sequential figures are the median run, latencies pool every sample.</summary>
    public int Runs { get; init; } = 1;
}

/// <summary>
/// Runs the phases of `lmfs bench` against one target and fills a <see cref="BenchReport"/>.
///
/// Order: ceilings (the object store read directly, a local file on the cache disk cold and hot),
/// then cold, warm and hot through the mount. Every measurement starts from its phase's state — the
/// target is reset before each one (cold: nothing cached; warm: only the local cache; hot: nothing
/// dropped) — so the 1-reader, N-reader, random and first-MiB figures of a phase do not warm each
/// other. Before warm and hot the file is read once, untimed, to fill the caches. CPU is the serving
/// process's utime + stime over the measurement windows only (resets excluded), per GB read; peak
/// memory is its VmHWM, reset at each measurement.
/// </summary>
public sealed class BenchRunner(IBenchTarget target, BenchOptions o, Action<string>? progress = null)
{
    private readonly Action<string> _progress = progress ?? (_ => { });

    /// <summary>The file's chunk table and the store, for the object-store ceiling (lmfs only).</summary>
    public (Storage.IObjectStore Store, ChunkTable Table)? Store { get; init; }

    public async Task<BenchReport> RunAsync(CancellationToken ct = default)
    {
        long size = new FileInfo(o.File).Length;
        if (size == 0)
        {
            throw new LmfsException($"'{o.File}' is empty", "benchmark a file of at least a few MiB (the harness uses 1 GiB)", 2);
        }

        var notes = new List<string>();
        if (!PageCache.CanDropAll)
        {
            notes.Add("not root: the page cache was dropped per file (FUSE invalidation and fadvise), not with drop_caches");
        }

        var ceilings = new Ceilings();
        if (Store is { } st)
        {
            ceilings = ceilings with { Store = await StoreCeilingAsync(st.Store, st.Table, ct).ConfigureAwait(false) };
        }

        if (o.LocalDir is not null)
        {
            var (cold, hot) = LocalCeiling(size, ct);
            ceilings = ceilings with { LocalCold = cold, LocalHot = hot };
        }

        var phases = new List<PhaseResult>();
        foreach (var state in o.Phases)
        {
            if (state != CacheState.Cold)
            {
                Fill(o.File, size, ct);
            }

            phases.Add(await MeasureAsync(state, ct).ConfigureAwait(false));
        }

        SafetensorsResult? safetensors = o.Safetensors is null ? null : await SafetensorsAsync(o.Safetensors, ct).ConfigureAwait(false);
        var report = new BenchReport
        {
            System = target.System,
            Date = DateTimeOffset.UtcNow,
            Machine = MachineInfo.Current(),
            File = o.File,
            FileBytes = size,
            Readers = o.Readers,
            RandomReads = o.RandomReads,
            Runs = o.Runs,
            ReadSize = o.ReadSize,
            BufferSize = target.BufferSize,
            Ceilings = ceilings,
            Phases = phases,
            Safetensors = safetensors,
            Notes = notes,
        };
        return report with { Targets = Goals.Evaluate(report) };
    }

    // ------------------------------------------------------------------ ceilings

    private async Task<StoreCeiling> StoreCeilingAsync(Storage.IObjectStore store, ChunkTable table, CancellationToken ct)
    {
        // The server reads its objects from a disk too (s3rver, a local-directory store): its page cache
        // is dropped before each measurement (as root), as the mount's is before each cold one.
        var server = o.ServerPid is { } sp ? new ProcessMeter(sp) : null;
        PageCache.Drop();
        double? s0 = server?.CpuSeconds();
        var parallel = await StoreProbes.ParallelAsync(store, table, o.GetStreams, ct).ConfigureAwait(false);
        double? s1 = server?.CpuSeconds();
        _progress($"ceiling: {o.GetStreams} parallel GETs {parallel.MBps:0} MB/s");
        PageCache.Drop();
        var single = await StoreProbes.ParallelAsync(store, table, 1, ct).ConfigureAwait(false);
        _progress($"ceiling: 1 stream of GETs {single.MBps:0} MB/s");
        PageCache.Drop();
        var random = await StoreProbes.RandomAsync(store, table, o.RandomReads, o.ReadSize, o.Seed, ct).ConfigureAwait(false);
        _progress($"ceiling: random {Sizes.Format(o.ReadSize)} GETs p50 {random.Latency.P50Ms:0.0} ms, p99 {random.Latency.P99Ms:0.0} ms");
        PageCache.Drop();
        var first = await StoreProbes.FirstMiBAsync(store, table, ct).ConfigureAwait(false);
        _progress($"ceiling: first MiB {first:0.0} ms");
        return new StoreCeiling(parallel, single, random, first, s0 is { } a && s1 is { } b ? (b - a) / (parallel.Bytes / 1e9) : null);
    }

    private (PhaseResult Cold, PhaseResult Hot) LocalCeiling(long size, CancellationToken ct)
    {
        string path = Path.Combine(o.LocalDir!, $".lmfs-bench-{Environment.ProcessId}-{Guid.NewGuid():N}.tmp");
        try
        {
            Directory.CreateDirectory(o.LocalDir!);
            FileProbes.WriteRandomFile(path, size);
            PhaseResult Run(string name, bool cold)
            {
                void Reset()
                {
                    if (cold)
                    {
                        PageCache.Drop(path);
                    }
                }

                if (!cold)
                {
                    FileProbes.Sequential(path, size, 1, ct);
                }

                Reset();
                var s1 = FileProbes.Sequential(path, size, 1, ct);
                Reset();
                var sn = FileProbes.Sequential(path, size, o.Readers, ct);
                Reset();
                var rnd = FileProbes.Random(path, size, o.RandomReads, o.ReadSize, o.Seed, ct);
                Reset();
                var first = FileProbes.FirstMiB(path, size);
                _progress($"ceiling: {name}: 1 reader {s1.MBps:0} MB/s, {sn.Readers} readers {sn.MBps:0} MB/s, random p99 {rnd.Latency.P99Ms:0.0} ms, first MiB {first:0.0} ms");
                return new PhaseResult { Name = name, Seq1 = s1, SeqN = sn, Random = rnd, FirstMiBMs = first };
            }

            return (Run("local disk cold", true), Run("local disk hot", false));
        }
        catch (IOException ex)
        {
            throw new LmfsException($"cannot measure the local disk in {o.LocalDir}: {ex.Message}", "give --local-dir on a disk with room for a copy of the file", 1, ex);
        }
        finally
        {
            try
            {
                System.IO.File.Delete(path);
            }
            catch (IOException)
            {
            }
        }
    }

    // ------------------------------------------------------------------ phases through the mount

    private void Fill(string path, long size, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        FileProbes.Sequential(path, size, 1, ct);
        _progress($"filled the caches with {Path.GetFileName(path)} ({sw.Elapsed.TotalSeconds:0.0} s, untimed)");
    }

    /// <summary>CPU, peak memory, server CPU and store bytes of the serving side over a set of measurement windows.</summary>
    private sealed class Window(IBenchTarget target, int? serverPid)
    {
        public double Cpu;
        public double ServerCpu;
        public long? Peak;
        public long? StoreBytes;
        public bool CpuKnown = true;
        public bool ServerKnown = serverPid is not null;

        public async Task<T> MeasureAsync<T>(Func<T> body, CancellationToken ct)
        {
            var m = target.ServingPid is { } pid ? new ProcessMeter(pid) : null;
            var srv = serverPid is { } sp ? new ProcessMeter(sp) : null;
            m?.ResetPeak();
            long? st0 = await target.StoreBytesAsync(ct).ConfigureAwait(false);
            double? c0 = m?.CpuSeconds(), s0 = srv?.CpuSeconds();
            var result = body();
            double? c1 = m?.CpuSeconds(), s1 = srv?.CpuSeconds();
            long? st1 = await target.StoreBytesAsync(ct).ConfigureAwait(false);
            if (c0 is { } a && c1 is { } b)
            {
                Cpu += b - a;
            }
            else
            {
                CpuKnown = false;
            }

            if (s0 is { } x && s1 is { } y)
            {
                ServerCpu += y - x;
            }
            else
            {
                ServerKnown = false;
            }

            if (m?.PeakRss() is { } p)
            {
                Peak = Math.Max(Peak ?? 0, p);
            }

            if (st0 is { } q && st1 is { } r)
            {
                StoreBytes = (StoreBytes ?? 0) + (r - q);
            }

            return result;
        }
    }

    private async Task<PhaseResult> MeasureAsync(CacheState state, CancellationToken ct)
    {
        string name = state.ToString().ToLowerInvariant();
        long size = new FileInfo(o.File).Length;
        string[] files = [o.File];
        var w = new Window(target, o.ServerPid);
        var seq1 = new List<SeqResult>();
        var seqN = new List<SeqResult>();
        var samples = new List<double>();
        var firsts = new List<double>();
        long randomBytes = 0, bytes = 0;
        long? randomMoved = null;
        // A cold probe measures a first load: the access profile the probe before it recorded (its own
        // pattern, not this one's) is forgotten first. Replay has its own row (the safetensors loads).
        async Task ResetAsync()
        {
            if (state == CacheState.Cold)
            {
                await target.ForgetProfilesAsync(files, ct).ConfigureAwait(false);
            }

            await target.ResetAsync(state, files, ct).ConfigureAwait(false);
        }

        for (int run = 1; run <= o.Runs; run++)
        {
            string tag = o.Runs > 1 ? $" (run {run}/{o.Runs})" : "";
            await ResetAsync().ConfigureAwait(false);
            var s1 = await w.MeasureAsync(() => FileProbes.Sequential(o.File, size, 1, ct), ct).ConfigureAwait(false);
            _progress($"{name}: 1 reader {s1.MBps:0} MB/s{tag}");
            await ResetAsync().ConfigureAwait(false);
            var sn = await w.MeasureAsync(() => FileProbes.Sequential(o.File, size, o.Readers, ct), ct).ConfigureAwait(false);
            _progress($"{name}: {sn.Readers} readers {sn.MBps:0} MB/s{tag}");
            await ResetAsync().ConfigureAwait(false);
            long? moved0 = w.StoreBytes;
            var (rb, rs) = await w.MeasureAsync(() => FileProbes.RandomSamples(o.File, size, o.RandomReads, o.ReadSize, o.Seed + run - 1, ct), ct).ConfigureAwait(false);
            if (w.StoreBytes is { } moved1)
            {
                randomMoved = (randomMoved ?? 0) + moved1 - (moved0 ?? 0);
            }

            var rl = LatencySummary.From(rs);
            _progress($"{name}: {o.RandomReads} random {Sizes.Format(o.ReadSize)} reads p50 {rl.P50Ms:0.0} ms, p99 {rl.P99Ms:0.0} ms{tag}");
            await ResetAsync().ConfigureAwait(false);
            var first = await w.MeasureAsync(() => FileProbes.FirstMiB(o.File, size), ct).ConfigureAwait(false);
            _progress($"{name}: first MiB {first:0.0} ms{tag}");
            seq1.Add(s1);
            seqN.Add(sn);
            samples.AddRange(rs);
            firsts.Add(first);
            randomBytes += rb;
            bytes += s1.Bytes + sn.Bytes + rb + Math.Min(size, FileProbes.IoSize);
        }

        double gb = bytes / 1e9;
        return new PhaseResult
        {
            Name = name,
            Seq1 = Median(seq1),
            SeqN = Median(seqN),
            Random = new RandomResult((int)Math.Min(o.ReadSize, size), randomBytes, LatencySummary.From(samples)),
            FirstMiBMs = firsts.Order().ElementAt(firsts.Count / 2),
            CpuSecondsPerGB = w.CpuKnown && target.ServingPid is not null ? Math.Round(w.Cpu / gb, 3) : null,
            PeakRssBytes = w.Peak,
            ServerCpuSecondsPerGB = w.ServerKnown ? Math.Round(w.ServerCpu / gb, 3) : null,
            StoreBytes = w.StoreBytes,
            RandomStoreBytes = randomMoved,
        };
    }

    /// <summary>The run with the median time (the middle one of an odd count, the faster middle one of an even count).</summary>
    private static SeqResult Median(List<SeqResult> runs) => runs.OrderBy(r => r.Seconds).ElementAt((runs.Count - 1) / 2);

    // ------------------------------------------------------------------ safetensors

    private async Task<SafetensorsResult> SafetensorsAsync(string path, CancellationToken ct)
    {
        var (bytes, tensors) = SafetensorsProbe.Describe(path);
        var runs = new List<SafetensorsRun>();
        string[] files = [path];
        bool profiles = await target.ForgetProfilesAsync(files, ct).ConfigureAwait(false); // false: not lmfs, no replay row
        foreach (var state in new[] { CacheState.Cold, CacheState.Warm })
        {
            if (!o.Phases.Contains(state))
            {
                continue;
            }

            // Cold loads run without an access profile (each forgets the file's first), except the last
            // row: the shuffled load again, replaying the profile the shuffled load before it recorded.
            foreach (var (shuffled, replay) in new[] { (false, false), (true, false), (true, true) })
            {
                if (replay && (state != CacheState.Cold || !profiles))
                {
                    continue;
                }

                var tries = new List<SafetensorsRun>();
                for (int i = 0; i < o.Runs; i++)
                {
                    if (state == CacheState.Warm)
                    {
                        Fill(path, new FileInfo(path).Length, ct);
                    }

                    if (state == CacheState.Cold && !replay && profiles)
                    {
                        await target.ForgetProfilesAsync(files, ct).ConfigureAwait(false);
                    }

                    await target.ResetAsync(state, files, ct).ConfigureAwait(false);
                    var before = await target.PrefetchBytesAsync(ct).ConfigureAwait(false);
                    var run = SafetensorsProbe.Load(path, state.ToString().ToLowerInvariant(), shuffled, o.Seed);
                    if (replay)
                    {
                        run = run with { Order = run.Order + ", replay" };
                    }

                    if (before is { } b && await target.PrefetchBytesAsync(ct).ConfigureAwait(false) is { } a)
                    {
                        run = run with { PrefetchedBytes = a.Issued - b.Issued, PrefetchUsedBytes = a.Used - b.Used };
                    }

                    tries.Add(run);
                    _progress($"safetensors {run.Phase}, {run.Order} order: first tensor {run.FirstTensorMs:0.0} ms, total {run.Seconds:0.00} s ({run.MBps:0} MB/s){(run.PrefetchedBytes is { } pb ? $", prefetched {Sizes.Format(pb)} of which unused {Sizes.Format(pb - run.PrefetchUsedBytes!.Value)}" : "")}");
                }

                runs.Add(tries.OrderBy(r => r.Seconds).ElementAt((tries.Count - 1) / 2));
            }
        }

        BaselineResult? baseline = null;
        string? note = null;
        if (o.AwsBaseline is null)
        {
            note = "give --aws-baseline s3://BUCKET/KEY (the same file as a plain object)";
        }
        else
        {
            baseline = await AwsBaselineAsync(path, ct).ConfigureAwait(false);
        }

        return new SafetensorsResult(path, bytes, tensors, runs, baseline, note);
    }

    private async Task<BaselineResult> AwsBaselineAsync(string mountedPath, CancellationToken ct)
    {
        // A new directory of ours for the download: a fixed name in a shared directory (/var/tmp) could be a planted link.
        string dir = PrivateFiles.CreateUniqueDirectory(o.LocalDir ?? Path.GetTempPath(), ".lmfs-bench-aws-");
        string dest = Path.Combine(dir, Path.GetFileName(mountedPath));
        var psi = new ProcessStartInfo("aws") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        var args = new List<string>();
        if (o.AwsEndpoint is not null)
        {
            args.AddRange(["--endpoint-url", o.AwsEndpoint]);
        }

        args.AddRange(["s3", "cp", "--quiet", o.AwsBaseline!, dest]);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        string shown = "aws " + string.Join(' ', args.Select(a => a == dest ? "LOCAL_FILE" : a));
        PageCache.Drop();
        try
        {
            var sw = Stopwatch.StartNew();
            Process p;
            try
            {
                p = Process.Start(psi)!;
            }
            catch (System.ComponentModel.Win32Exception ex)
            {
                throw new LmfsException("cannot run the AWS CLI for the download baseline: " + ex.Message, "install it (pip install awscli) or leave out --aws-baseline", 1, ex);
            }

            using (p)
            {
                var err = p.StandardError.ReadToEndAsync(ct);
                await p.StandardOutput.ReadToEndAsync(ct).ConfigureAwait(false);
                await p.WaitForExitAsync(ct).ConfigureAwait(false);
                if (p.ExitCode != 0)
                {
                    throw new LmfsException($"{shown} failed ({p.ExitCode}): {(await err.ConfigureAwait(false)).Trim()}", "check the object's URL, the endpoint and the AWS credentials in the environment");
                }
            }

            double download = sw.Elapsed.TotalSeconds;
            var load = SafetensorsProbe.Load(dest, "baseline", false, o.Seed);
            _progress($"baseline: {shown}: {download:0.00} s, then load {load.Seconds:0.00} s");
            return new BaselineResult(shown, download, load.Seconds);
        }
        finally
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
