using System.CommandLine;
using System.Globalization;
using LazyModelFs.Util;
using LazyModelFs.Vfs;

namespace LazyModelFs.Cli.Commands;

/// <summary>The options of `lmfs mount` (and the cache options `warmup` and `cache` share).</summary>
internal sealed class MountOptionsBinder
{
    public Option<string> CacheDir { get; } = new("--cache-dir") { Description = "Local chunk cache directory (NVMe); shared safely by several mounts", DefaultValueFactory = _ => "/var/cache/lmfs" };

    public Option<string> CacheSize { get; } = new("--cache-size") { Description = "Disk cache limit, capped by --free-space-ratio (0 disables the disk cache)", DefaultValueFactory = _ => "100G" };

    public Option<double> FreeSpaceRatio { get; } = new("--free-space-ratio") { Description = "Fraction of the cache disk always left free", DefaultValueFactory = _ => 0.1 };

    public Option<string> BufferSize { get; } = new("--buffer-size") { Description = "Memory tier for chunks, fetches in flight included", DefaultValueFactory = _ => "512M" };

    public Option<int> MaxFetches { get; } = new("--max-fetches") { Description = "Concurrent object GETs", DefaultValueFactory = _ => 16 };

    public Option<int> DemandParts { get; } = new("--demand-parts") { Description = "Ranged GETs a chunk is split into when a read waits for it (1: whole objects only)", DefaultValueFactory = _ => 4 };

    public Option<string> Readahead { get; } = new("--readahead") { Description = "Largest readahead window of a sequential reader", DefaultValueFactory = _ => "128M" };

    public Option<string> Prefetch { get; } = new("--prefetch") { Description = "none | sequential | whole-file | safetensors (header, then tensors in file order, for *.safetensors; sequential for the rest)", DefaultValueFactory = _ => "safetensors" };

    public Option<bool> AllowOther { get; } = new("--allow-other") { Description = "Let users other than the mounting one use the mount" };

    public Option<int> ReadaheadKb { get; } = new("--readahead-kb") { Description = "Kernel readahead for the mount (read_ahead_kb; root only)", DefaultValueFactory = _ => 16384 };

    public Option<double> FetchTimeout { get; } = new("--fetch-timeout") { Description = "Seconds a chunk may take, retries included, before the read fails with EIO", DefaultValueFactory = _ => 60 };

    public Option<double> EntryTimeout { get; } = new("--entry-timeout") { Description = "Seconds the kernel caches names, directory attributes and absent names", DefaultValueFactory = _ => 1 };

    public Option<int?> Threads { get; } = new("--threads") { Description = "FUSE reader threads (default 2 x cores)" };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { CacheDir, CacheSize, FreeSpaceRatio, BufferSize, MaxFetches, DemandParts, Readahead, Prefetch, AllowOther, ReadaheadKb, FetchTimeout, EntryTimeout, Threads })
        {
            c.Add(o);
        }

        Prefetch.AcceptOnlyFromAmong("none", "sequential", "whole-file", "safetensors");
    }

    /// <summary>The mount options given explicitly on this command line, as arguments for another `lmfs mount`.</summary>
    public IEnumerable<string> PassThrough(ParseResult p)
    {
        foreach (var o in new Option[] { CacheDir, CacheSize, FreeSpaceRatio, BufferSize, MaxFetches, DemandParts, Readahead, Prefetch, AllowOther, ReadaheadKb, FetchTimeout, EntryTimeout, Threads })
        {
            if (p.GetResult(o) is { Implicit: false } r)
            {
                yield return o.Name;
                foreach (var t in r.Tokens)
                {
                    yield return t.Value;
                }
            }
        }
    }

    public MountOptions Read(ParseResult p)
    {
        double ratio = p.GetValue(FreeSpaceRatio);
        if (ratio is < 0 or >= 1)
        {
            throw new LmfsException($"--free-space-ratio {ratio.ToString(CultureInfo.InvariantCulture)} is out of range", "use a fraction from 0 to 0.99", 2);
        }

        int fetches = p.GetValue(MaxFetches);
        if (fetches is < 1 or > 256)
        {
            throw new LmfsException($"--max-fetches {fetches} is out of range", "use 1 to 256", 2);
        }

        int parts = p.GetValue(DemandParts);
        if (parts is < 1 or > 64)
        {
            throw new LmfsException($"--demand-parts {parts} is out of range", "use 1 to 64", 2);
        }

        double fetchTimeout = p.GetValue(FetchTimeout), entryTimeout = p.GetValue(EntryTimeout);
        if (fetchTimeout <= 0 || entryTimeout < 0)
        {
            throw new LmfsException("--fetch-timeout must be positive and --entry-timeout not negative", "give seconds, e.g. --fetch-timeout 60", 2);
        }

        var entry = TimeSpan.FromSeconds(entryTimeout);
        return new MountOptions
        {
            CacheDir = p.GetValue(CacheDir)!,
            CacheSize = Sizes.Parse(p.GetValue(CacheSize)!, "--cache-size"),
            FreeSpaceRatio = ratio,
            BufferSize = Sizes.Parse(p.GetValue(BufferSize)!, "--buffer-size"),
            MaxFetches = fetches,
            DemandParts = parts,
            FetchTimeout = TimeSpan.FromSeconds(fetchTimeout),
            AllowOther = p.GetValue(AllowOther),
            ReadaheadKb = p.GetValue(ReadaheadKb),
            Threads = p.GetValue(Threads),
            Vfs = new VfsOptions
            {
                Prefetch = p.GetValue(Prefetch) switch { "none" => PrefetchMode.None, "sequential" => PrefetchMode.Sequential, "whole-file" => PrefetchMode.WholeFile, _ => PrefetchMode.Safetensors },
                ReadaheadMax = Sizes.Parse(p.GetValue(Readahead)!, "--readahead"),
                EntryTimeout = entry,
                NegativeTimeout = entry,
                DirectoryTimeout = entry,
            },
        };
    }
}
