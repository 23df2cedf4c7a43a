using System.CommandLine;
using LazyModelFs.Read;
using LazyModelFs.Vfs;

namespace LazyModelFs.Cli.Commands;

/// <summary>The options of `lmfs mount` (and the cache options `warmup` and `cache` share).</summary>
internal sealed class MountOptionsBinder
{
    public Option<string> CacheDir { get; } = new("--cache-dir") { Description = "Local chunk cache directory (NVMe); shared safely by several mounts", DefaultValueFactory = _ => "/var/cache/lmfs" };

    // Ranges: Numeric (the shared parser); listed in docs/operations.md, "Accepted ranges".
    public Option<ByteSize> CacheSize { get; } = Numeric.Size("--cache-size", "Disk cache limit, capped by --free-space-ratio (0 disables the disk cache)", "100G", 0, 1L << 50);

    public Option<double> FreeSpaceRatio { get; } = Numeric.Number("--free-space-ratio", "Fraction of the cache disk always left free", 0.1, 0, 0.99);

    public Option<ByteSize> BufferSize { get; } = Numeric.Size("--buffer-size", "Memory tier for chunks, fetches in flight included; at least 4 chunks", "512M", 4L << 20, 1L << 40);

    public Option<int> MaxFetches { get; } = Numeric.Int("--max-fetches", "Concurrent object GETs", 16, 1, 256);

    public Option<int> DemandParts { get; } = Numeric.Int("--demand-parts", "Ranged GETs a chunk is split into when a read waits for it (1: whole objects only)", 4, 1, 64);

    public Option<ByteSize> Readahead { get; } = Numeric.Size("--readahead", "Largest readahead window of a sequential reader", "128M", 1L << 20, 64L << 30);

    public Option<string> Prefetch { get; } = new("--prefetch") { Description = "auto (replay the file's recorded access profile when the volume has one, else as safetensors) | none | sequential | whole-file | safetensors (header, then tensors in file order, for *.safetensors; sequential for the rest)", DefaultValueFactory = _ => "auto" };

    public Option<string> Record { get; } = new("--record") { Description = "on | off: record the order each file's chunks are first read in, as its access profile in the volume's metadata (replayed by --prefetch auto on later cold opens)", DefaultValueFactory = _ => "on" };

    public Option<string> Passthrough { get; } = new("--passthrough") { Description = "on | off: serve files whose chunks are all in the disk cache through FUSE passthrough, from a whole-file view in the cache (root, kernel 6.9+)", DefaultValueFactory = _ => "on" };

    public Option<bool> AllowOther { get; } = new("--allow-other") { Description = "Let users other than the mounting one use the mount" };

    public Option<int> ReadaheadKb { get; } = Numeric.Int("--readahead-kb", "Kernel readahead for the mount (read_ahead_kb; root only)", 16384, 0, 1 << 20);

    public Option<double> FetchTimeout { get; } = Numeric.Number("--fetch-timeout", "Seconds a chunk may take, retries included, before the read fails with EIO", 60, 0.1, 86400, "seconds");

    public Option<double> EntryTimeout { get; } = Numeric.Number("--entry-timeout", "Seconds the kernel caches names, directory attributes and absent names", 1, 0, 31_536_000, "seconds");

    public Option<int?> Threads { get; } = Numeric.OptionalInt("--threads", "FUSE reader threads; default 2 x cores", 1, 1024);

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { CacheDir, CacheSize, FreeSpaceRatio, BufferSize, MaxFetches, DemandParts, Readahead, Prefetch, Record, Passthrough, AllowOther, ReadaheadKb, FetchTimeout, EntryTimeout, Threads })
        {
            c.Add(o);
        }

        Prefetch.AcceptOnlyFromAmong("auto", "none", "sequential", "whole-file", "safetensors");
        Record.AcceptOnlyFromAmong("on", "off");
        Passthrough.AcceptOnlyFromAmong("on", "off");
    }

    /// <summary>The mount options given explicitly on this command line, as arguments for another `lmfs mount`.</summary>
    public IEnumerable<string> PassThrough(ParseResult p)
    {
        foreach (var o in new Option[] { CacheDir, CacheSize, FreeSpaceRatio, BufferSize, MaxFetches, DemandParts, Readahead, Prefetch, Record, Passthrough, AllowOther, ReadaheadKb, FetchTimeout, EntryTimeout, Threads })
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

    /// <summary>The options as the mount takes them; their ranges were checked when the command line was parsed.</summary>
    public MountOptions Read(ParseResult p)
    {
        var entry = TimeSpan.FromSeconds(p.GetValue(EntryTimeout));
        return new MountOptions
        {
            CacheDir = p.GetValue(CacheDir)!,
            CacheSize = p.GetValue(CacheSize).Bytes,
            FreeSpaceRatio = p.GetValue(FreeSpaceRatio),
            BufferSize = p.GetValue(BufferSize).Bytes,
            MaxFetches = p.GetValue(MaxFetches),
            DemandParts = p.GetValue(DemandParts),
            FetchTimeout = TimeSpan.FromSeconds(p.GetValue(FetchTimeout)),
            AllowOther = p.GetValue(AllowOther),
            Passthrough = p.GetValue(Passthrough) != "off",
            ReadaheadKb = p.GetValue(ReadaheadKb),
            Threads = p.GetValue(Threads),
            Vfs = new VfsOptions
            {
                Prefetch = p.GetValue(Prefetch) switch { "none" => PrefetchMode.None, "sequential" => PrefetchMode.Sequential, "whole-file" => PrefetchMode.WholeFile, "safetensors" => PrefetchMode.Safetensors, _ => PrefetchMode.Auto },
                Record = p.GetValue(Record) != "off",
                ReadaheadMax = p.GetValue(Readahead).Bytes,
                EntryTimeout = entry,
                NegativeTimeout = entry,
                DirectoryTimeout = entry,
            },
        };
    }
}
