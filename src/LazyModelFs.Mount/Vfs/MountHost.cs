using LazyModelFs.Cache;
using System.Net;
using System.Reflection;
using System.Text.Json.Nodes;
using LazyModelFs.Fuse;
using LazyModelFs.Metrics;
using LazyModelFs.Read;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Vfs;

/// <summary>Every knob of `lmfs mount` (docs/operations.md lists them with their defaults).</summary>
public sealed record MountOptions
{
    public string CacheDir { get; init; } = "/var/cache/lmfs";

    /// <summary>0 disables the disk cache.</summary>
    public long CacheSize { get; init; } = 100L << 30;

    public double FreeSpaceRatio { get; init; } = 0.1;

    /// <summary>Memory tier (chunk buffers), including fetches in flight.</summary>
    public long BufferSize { get; init; } = 512L << 20;

    public int MaxFetches { get; init; } = 16;

    /// <summary>Ranged GETs one chunk is split into when a READ waits for it.</summary>
    public int DemandParts { get; init; } = 4;

    public TimeSpan FetchTimeout { get; init; } = TimeSpan.FromSeconds(60);

    public VfsOptions Vfs { get; init; } = new();

    public bool AllowOther { get; init; }

    /// <summary>Mount with MS_NOEXEC (`-o noexec` through the mount helper).</summary>
    public bool NoExec { get; init; }

    /// <summary>
    /// Serve files whose chunks are all in the disk cache through FUSE passthrough, from a whole-file
    /// view built in the cache (needs root and a kernel with CONFIG_FUSE_PASSTHROUGH; off without a disk cache).
    /// </summary>
    public bool Passthrough { get; init; } = true;

    /// <summary>Kernel readahead (read_ahead_kb) for the mount.</summary>
    public int ReadaheadKb { get; init; } = 16384;

    public int? Threads { get; init; }

    /// <summary>Mount over a directory that is not empty (refused otherwise: the mount would hide what it holds).</summary>
    public bool NonEmpty { get; init; }

    /// <summary>Where to listen for control commands (<see cref="MountControl"/>); null: no control socket.</summary>
    public string? ControlSocket { get; init; }

    /// <summary>Where to serve Prometheus metrics (<c>--metrics ADDR:PORT</c>, <see cref="MetricsServer"/>); null: nowhere.</summary>
    public IPEndPoint? Metrics { get; init; }

    /// <summary>The cache group (issue 15): members, this node's address, the secret; null: none.</summary>
    public Peer.PeerOptions? Peers { get; init; }

    /// <summary>Where this node serves its chunks to the group (<c>--peer-listen</c>); null: it only asks.</summary>
    public IPEndPoint? PeerListen { get; init; }
}

/// <summary>A mounted volume: the chunk cache, the VFS and the FUSE session (and the control socket), wired together. The daemon's entry point.</summary>
public sealed class MountHost : IDisposable
{
    private MountHost(Volume volume, MountOptions options, ChunkCache cache, LmfsFileSystem fs, FuseSession session)
    {
        Volume = volume;
        Options = options;
        Cache = cache;
        FileSystem = fs;
        Session = session;
    }

    public Volume Volume { get; }

    public MountOptions Options { get; }

    internal MountControl? Control { get; private set; }

    internal MetricsServer? MetricsServer { get; private set; }

    internal Peer.PeerServer? PeerServer { get; private set; }

    /// <summary>When the daemon started serving (UTC).</summary>
    public DateTimeOffset StartedAt { get; } = DateTimeOffset.UtcNow;

    /// <summary>The lmfs version (the informational version, without its commit suffix).</summary>
    public static string Version { get; } = typeof(MountHost).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    /// <summary>
    /// The daemon's counters since it started: what the control socket's <c>stats</c> answers
    /// (<c>lmfs stats</c>, the CSI plugin's metrics) and what <c>/metrics</c> renders. Keys in
    /// docs/operations.md (<c>lmfs stats --json</c>).
    /// </summary>
    public JsonObject Stats()
    {
        var o = new JsonObject
        {
            ["pid"] = Environment.ProcessId,
            ["version"] = Version,
            ["startTime"] = StartedAt.ToUnixTimeMilliseconds() / 1000.0,
            ["uptime"] = Math.Round((DateTimeOffset.UtcNow - StartedAt).TotalSeconds, 3),
            ["chunkSize"] = Volume.Settings.ChunkSize,
            ["bufferSize"] = Options.BufferSize,
        };
        var d = Session.Dispatcher;
        o["reads"] = d.Reads;
        o["readBytes"] = d.ReadBytes;
        o["readErrors"] = d.ReadErrors;
        Cache.AddStats(o);
        o["passthroughOpens"] = FileSystem.PassthroughOpens;
        FileSystem.Profiles.AddStats(o);
        PeerServer?.AddStats(o);
        o["dirHandles"] = FileSystem.Directories.Open;
        o["dirSnapshots"] = FileSystem.Directories.Snapshots;
        o["dirSnapshotBytes"] = FileSystem.Directories.Bytes;
        o["dirRefused"] = FileSystem.Directories.Refused;
        return o;
    }

    public ChunkCache Cache { get; }

    internal LmfsFileSystem FileSystem { get; }

    internal FuseSession Session { get; }

    public string MountPoint => Session.MountPoint;

    /// <summary>Completes when the kernel ends the session (unmounted, or the daemon aborted it).</summary>
    public Task Completion => Session.Completion;

    /// <summary>
    /// The largest READ to ask the kernel for, in pages: a chunk (so a READ spans at most two), at
    /// least 1 MiB and at most 16 MiB. The kernel grants at most fs.fuse.max_pages_limit (256 pages
    /// unless root raises it: operations.md, "Larger READs").
    /// </summary>
    internal static ushort MaxPagesFor(int chunkSize) => (ushort)Math.Clamp(chunkSize / 4096, FuseKernel.DefaultMaxPagesLimit, 4096);

    /// <summary>Asks the kernel to unmount (lazily: open files finish, then the session ends and <see cref="Completion"/> completes).</summary>
    public void Unmount() => Session.Unmount();

    public static MountHost Start(Volume volume, string mountPoint, MountOptions o, ILoggerFactory? loggers = null)
    {
        loggers ??= NullLoggerFactory.Instance;

        // First, so an address that cannot be used (in use, not this host's) fails the mount with
        // nothing mounted or opened (exit 2).
        MetricsServer? metrics = o.Metrics is { } at ? MetricsServer.Bind(at, loggers.CreateLogger("metrics")) : null;
        try
        {
#pragma warning disable CA2000 // the cache is disposed on every failure path below, and owned by the mount after
            var cache = ChunkCache.Open(volume, new ChunkCacheSetup
            {
                Directory = o.CacheDir,
                DiskBytes = o.CacheSize,
                FreeSpaceRatio = o.FreeSpaceRatio,
                MemoryBytes = o.BufferSize,
                Fetch = new ChunkCacheOptions { MaxFetches = o.MaxFetches, FetchTimeout = o.FetchTimeout, DemandParts = o.DemandParts },
                Peers = o.Peers,
            }, loggers);
            Peer.PeerServer? peerServer = null;
            LmfsFileSystem fs;
            FuseSession session;
            try
            {
                if (o.PeerListen is { } listen)
                {
                    peerServer = Peer.PeerServer.Start(listen, cache, (o.Peers ?? throw new LmfsException("--peer-listen needs the group's peer secret", "set LMFS_PEER_SECRET or give --peer-secret-file", 2)).Secret, volume.Settings.ChunkSize, loggers.CreateLogger("peer"));
                }

                fs = new LmfsFileSystem(volume, cache, o.Vfs, loggers.CreateLogger("vfs"));
                var fuseOptions = new FuseMountOptions
                {
                    FsName = "lmfs:" + TerminalText.Safe(volume.Settings.Name), // shown by mount(8) and df: no control characters from the metadata
                    AllowOther = o.AllowOther,
                    ReadaheadKb = o.ReadaheadKb,
                    Threads = o.Threads ?? new FuseMountOptions().Threads,
                    AllowNonEmpty = o.NonEmpty,
                    NoExec = o.NoExec,
                    Protocol = new FuseProtocolOptions { MaxPages = MaxPagesFor(volume.Settings.ChunkSize), Passthrough = o.Passthrough && cache.HasViews },
                };
                session = FuseSession.Mount(mountPoint, fs, fuseOptions, loggers.CreateLogger("fuse"));
            }
            catch (Exception e)
            {
                // Nothing is mounted: the peer port is let go and the cache closed, whatever failed.
                peerServer?.Dispose();
                cache.Dispose();
                if (e is FuseMountException f)
                {
                    throw new LmfsException(f.Message, f.Hint, 2, f);
                }

                throw;
            }

            var mount = new MountHost(volume, o, cache, fs, session) { PeerServer = peerServer };
#pragma warning restore CA2000
            if (peerServer is not null)
            {
                loggers.CreateLogger("peer").LogInformation("peer: serving chunks to the cache group on {Address} ({Members} members)", peerServer.Address, cache.Peers?.Members.Count ?? 0);
            }

            if (o.ControlSocket is not null)
            {
                mount.Control = MountControl.Start(o.ControlSocket, mount, loggers.CreateLogger("control"));
            }

            if (metrics is not null)
            {
                mount.MetricsServer = metrics;
                metrics.Serve(_ => Task.FromResult(MountMetrics.Render(mount.Stats())));
                loggers.CreateLogger("metrics").LogInformation("metrics: serving http://{Address}/metrics", metrics.Address);
                metrics = null; // the mount owns it now
            }

            return mount;
        }
        finally
        {
            metrics?.Dispose();
        }
    }

    /// <summary>The mount point checks <see cref="Start"/> makes (changing nothing), for a caller that wants bad input refused (exit 2) before it reaches out to the network. <paramref name="resolved"/> comes from <see cref="FuseMount.ResolveMountPoint"/>.</summary>
    public static void CheckMountPoint(string resolved, bool allowNonEmpty)
    {
        try
        {
            FuseMount.CheckMountPoint(resolved, allowNonEmpty);
        }
        catch (FuseMountException e)
        {
            throw new LmfsException(e.Message, e.Hint, 2, e);
        }
    }

    public void Dispose()
    {
        MetricsServer?.Dispose();
        PeerServer?.Dispose();
        Control?.Dispose();
        Session.Unmount();
        Session.Dispose();
        FileSystem.FlushProfiles(TimeSpan.FromSeconds(3)); // what the last loads recorded, before the daemon goes
        Cache.Dispose();
    }
}
