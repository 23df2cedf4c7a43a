using LazyModelFs.Cache;
using LazyModelFs.Fuse;
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

    /// <summary>Kernel readahead (read_ahead_kb) for the mount.</summary>
    public int ReadaheadKb { get; init; } = 16384;

    public int? Threads { get; init; }

    /// <summary>Mount over a directory that is not empty (refused otherwise: the mount would hide what it holds).</summary>
    public bool NonEmpty { get; init; }

    /// <summary>Where to listen for control commands (<see cref="MountControl"/>); null: no control socket.</summary>
    public string? ControlSocket { get; init; }
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

    public ChunkCache Cache { get; }

    internal LmfsFileSystem FileSystem { get; }

    internal FuseSession Session { get; }

    public string MountPoint => Session.MountPoint;

    /// <summary>Completes when the kernel ends the session (unmounted, or the daemon aborted it).</summary>
    public Task Completion => Session.Completion;

    /// <summary>Asks the kernel to unmount (lazily: open files finish, then the session ends and <see cref="Completion"/> completes).</summary>
    public void Unmount() => Session.Unmount();

    public static MountHost Start(Volume volume, string mountPoint, MountOptions o, ILoggerFactory? loggers = null)
    {
        loggers ??= NullLoggerFactory.Instance;
        var cache = ChunkCache.Open(volume, new ChunkCacheSetup
        {
            Directory = o.CacheDir,
            DiskBytes = o.CacheSize,
            FreeSpaceRatio = o.FreeSpaceRatio,
            MemoryBytes = o.BufferSize,
            Fetch = new ChunkCacheOptions { MaxFetches = o.MaxFetches, FetchTimeout = o.FetchTimeout, DemandParts = o.DemandParts },
        }, loggers);
        var fs = new LmfsFileSystem(volume, cache, o.Vfs, loggers.CreateLogger("vfs"));
        var fuseOptions = new FuseMountOptions
        {
            FsName = "lmfs:" + TerminalText.Safe(volume.Settings.Name), // shown by mount(8) and df: no control characters from the metadata
            AllowOther = o.AllowOther,
            ReadaheadKb = o.ReadaheadKb,
            Threads = o.Threads ?? new FuseMountOptions().Threads,
            AllowNonEmpty = o.NonEmpty,
            NoExec = o.NoExec,
        };
        try
        {
            var session = FuseSession.Mount(mountPoint, fs, fuseOptions, loggers.CreateLogger("fuse"));
            var mount = new MountHost(volume, o, cache, fs, session);
            if (o.ControlSocket is not null)
            {
                mount.Control = MountControl.Start(o.ControlSocket, mount, loggers.CreateLogger("control"));
            }

            return mount;
        }
        catch (FuseMountException e)
        {
            cache.Dispose();
            throw new LmfsException(e.Message, e.Hint, 2, e);
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
        Control?.Dispose();
        Session.Unmount();
        Session.Dispose();
        Cache.Dispose();
    }
}
