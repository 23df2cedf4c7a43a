using System.Text.Json;
using System.Text.Json.Serialization;

namespace LazyModelFs.Bench;

/// <summary>Latency statistics over a set of samples, in milliseconds (nearest-rank percentiles).</summary>
public sealed record LatencySummary(int Count, double MeanMs, double P50Ms, double P95Ms, double P99Ms, double MaxMs)
{
    public static LatencySummary From(IReadOnlyCollection<double> samplesMs)
    {
        if (samplesMs.Count == 0)
        {
            return new LatencySummary(0, 0, 0, 0, 0, 0);
        }

        var sorted = samplesMs.Order().ToArray();
        return new LatencySummary(sorted.Length, sorted.Average(), Percentile(sorted, 50), Percentile(sorted, 95), Percentile(sorted, 99), sorted[^1]);
    }

    /// <summary>Nearest rank: the smallest sample with at least p % of the samples at or below it.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double p)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sorted.Count);
        if (p is <= 0 or > 100)
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "a percentile is in (0, 100]");
        }

        int rank = (int)Math.Ceiling(p / 100.0 * sorted.Count);
        return sorted[Math.Clamp(rank, 1, sorted.Count) - 1];
    }
}

/// <summary>Sequential reading: <see cref="Readers"/> readers, each over its own contiguous slice.</summary>
public sealed record SeqResult(int Readers, long Bytes, double Seconds)
{
    public double MBps => Seconds > 0 ? Bytes / 1e6 / Seconds : 0;
}

/// <summary>Reads of <see cref="Size"/> bytes at random offsets, one at a time.</summary>
public sealed record RandomResult(int Size, long Bytes, LatencySummary Latency);

/// <summary>One phase (cold, warm, hot, or a ceiling read the same way).</summary>
public sealed record PhaseResult
{
    public required string Name { get; init; }

    public required SeqResult Seq1 { get; init; }

    public required SeqResult SeqN { get; init; }

    public required RandomResult Random { get; init; }

    /// <summary>Open plus the first 1 MiB read.</summary>
    public required double FirstMiBMs { get; init; }

    /// <summary>CPU seconds the serving process spent per GB read in this phase (null: no process to measure).</summary>
    public double? CpuSecondsPerGB { get; init; }

    /// <summary>The serving process's peak resident set during the phase (VmHWM after a reset).</summary>
    public long? PeakRssBytes { get; init; }

    /// <summary>CPU seconds of the object-store server per GB (when its pid was given).</summary>
    public double? ServerCpuSecondsPerGB { get; init; }

    /// <summary>Bytes the mount fetched from the object store during the phase (lmfs only).</summary>
    public long? StoreBytes { get; init; }

    /// <summary>Of <see cref="StoreBytes"/>, those fetched while the random reads ran (lmfs only): what they moved over the wire.</summary>
    public long? RandomStoreBytes { get; init; }
}

/// <summary>Direct object-store reads of the file's chunk objects, bypassing every cache.</summary>
public sealed record StoreCeiling(SeqResult Parallel, SeqResult Single, RandomResult Random, double FirstMiBMs, double? ServerCpuSecondsPerGB);

public sealed record Ceilings
{
    public StoreCeiling? Store { get; init; }

    /// <summary>A same-size file on the cache disk, page cache dropped.</summary>
    public PhaseResult? LocalCold { get; init; }

    /// <summary>The same file again, from the page cache.</summary>
    public PhaseResult? LocalHot { get; init; }
}

/// <summary>One load: open, parse the header, mmap, copy every tensor out in the given order.</summary>
public sealed record SafetensorsRun(string Phase, string Order, double FirstTensorMs, double Seconds, long Bytes, int Tensors)
{
    public double MBps => Seconds > 0 ? Bytes / 1e6 / Seconds : 0;

    /// <summary>Bytes the mount's prefetch started fetching during the load (lmfs only).</summary>
    public long? PrefetchedBytes { get; init; }

    /// <summary>Of <see cref="PrefetchedBytes"/>, the bytes the load's READs then used; the rest was fetched for nothing.</summary>
    public long? PrefetchUsedBytes { get; init; }
}

/// <summary>"Download the whole file with the AWS CLI, then load it from local disk".</summary>
public sealed record BaselineResult(string Command, double DownloadSeconds, double LoadSeconds)
{
    public double TotalSeconds => DownloadSeconds + LoadSeconds;
}

public sealed record SafetensorsResult(string Path, long Bytes, int Tensors, IReadOnlyList<SafetensorsRun> Runs, BaselineResult? Baseline, string? BaselineNote);

/// <summary>A target of performance.md and how this run measured against it.</summary>
public sealed record TargetResult(string Name, string Target, double? Ratio, bool? Met, string Detail);

public sealed record MachineInfo(string Host, int Cores, long MemoryBytes, string Kernel, string Runtime)
{
    public static MachineInfo Current()
    {
        long mem = 0;
        try
        {
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            if (line is not null)
            {
                mem = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
            }
        }
        catch (IOException)
        {
        }

        string kernel = File.Exists("/proc/sys/kernel/osrelease") ? File.ReadAllText("/proc/sys/kernel/osrelease").Trim() : Environment.OSVersion.VersionString;
        return new MachineInfo(Environment.MachineName, Environment.ProcessorCount, mem, kernel, System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription);
    }
}

/// <summary>Everything one `lmfs bench` run measured. Serialized as the --json output (schema version 1).</summary>
public sealed record BenchReport
{
    public int Version { get; init; } = 1;

    /// <summary>What was measured: "lmfs", or the name given with --system (rclone, s3fs…).</summary>
    public required string System { get; init; }

    public required DateTimeOffset Date { get; init; }

    public required MachineInfo Machine { get; init; }

    public required string File { get; init; }

    public required long FileBytes { get; init; }

    public required int Readers { get; init; }

    public required int RandomReads { get; init; }

    public required int ReadSize { get; init; }

    /// <summary>Repetitions of each measurement: sequential figures are the median run; random latencies and bytes cover every run.</summary>
    public int Runs { get; init; } = 1;

    /// <summary>Memory tier of the mount (lmfs), for the peak-memory target.</summary>
    public long? BufferSize { get; init; }

    public Ceilings Ceilings { get; init; } = new();

    public IReadOnlyList<PhaseResult> Phases { get; init; } = [];

    public SafetensorsResult? Safetensors { get; init; }

    public IReadOnlyList<TargetResult> Targets { get; init; } = [];

    public IReadOnlyList<string> Notes { get; init; } = [];

    public PhaseResult? Phase(string name) => Phases.FirstOrDefault(p => p.Name == name);

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static BenchReport FromJson(string json) =>
        JsonSerializer.Deserialize<BenchReport>(json, Json) ?? throw new JsonException("the file holds no bench report");
}
