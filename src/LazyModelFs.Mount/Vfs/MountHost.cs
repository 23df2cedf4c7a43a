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

    /// <summary>Kernel readahead (read_ahead_kb) for the mount.</summary>
    public int ReadaheadKb { get; init; } = 16384;

    public int? Threads { get; init; }

    /// <summary>Mount over a directory that is not empty (refused otherwise: the mount would hide what it holds).</summary>
    public bool NonEmpty { get; init; }

    /// <summary>Where to listen for control commands (<see cref="MountControl"/>); null: no control socket.</summary>
    public string? ControlSocket { get; init; }
}

/// <summary>A mounted volume: the caches, the chunk reader, the VFS and the FUSE session, wired together.</summary>
public sealed class MountHost : IDisposable
{
    private MountHost(Volume volume, MountOptions options, MemoryTier memory, DiskCache? disk, ChunkCache reader, LmfsFileSystem fs, FuseSession session)
    {
        Volume = volume;
        Options = options;
        Memory = memory;
        Disk = disk;
        Reader = reader;
        FileSystem = fs;
        Session = session;
    }

    public Volume Volume { get; }

    public MountOptions Options { get; }

    public MountControl? Control { get; private set; }

    public MemoryTier Memory { get; }

    public DiskCache? Disk { get; }

    public ChunkCache Reader { get; }

    public LmfsFileSystem FileSystem { get; }

    public FuseSession Session { get; }

    public string MountPoint => Session.MountPoint;

    public static MountHost Start(Volume volume, string mountPoint, MountOptions o, ILoggerFactory? loggers = null)
    {
        loggers ??= NullLoggerFactory.Instance;
        int chunk = volume.Settings.ChunkSize;
        if (o.BufferSize < 4L * CachedChunk.BufferSizeFor(chunk))
        {
            throw new LmfsException($"--buffer-size {Sizes.Format(o.BufferSize)} is too small for {Sizes.Format(chunk)} chunks", $"use at least {Sizes.Format(4L * CachedChunk.BufferSizeFor(chunk))}", 2);
        }

        var disk = o.CacheSize > 0
            ? new DiskCache(new DiskCacheOptions { Directory = o.CacheDir, MaxBytes = o.CacheSize, FreeSpaceRatio = o.FreeSpaceRatio }, loggers.CreateLogger("cache"))
            : null;
        var memory = new MemoryTier(o.BufferSize, chunk);

        // A file:// store on the cache's own filesystem is already a local copy: caching would write
        // every byte a second time to the same disk (and compete with the reads for its bandwidth).
        // A file:// store elsewhere (NFS, another disk) is cached like S3.
        bool cacheStoreReads = true;
        if (disk is not null && volume.Store is Storage.LocalObjectStore local && SameFilesystem(local.Root, disk.Root))
        {
            cacheStoreReads = false;
            loggers.CreateLogger("cache").LogInformation("cache: the object store {Store} is on the cache's filesystem; chunks are read from it directly and not copied into {Cache}", local.Root, o.CacheDir);
        }

        var reader = new ChunkCache(volume.Chunks, memory, disk, new ChunkCacheOptions { MaxFetches = o.MaxFetches, FetchTimeout = o.FetchTimeout, DemandParts = o.DemandParts, CacheStoreReads = cacheStoreReads }, loggers.CreateLogger("read"));
        var fs = new LmfsFileSystem(volume, reader, o.Vfs, loggers.CreateLogger("vfs"));
        var fuseOptions = new FuseMountOptions
        {
            FsName = "lmfs:" + TerminalText.Safe(volume.Settings.Name), // shown by mount(8) and df: no control characters from the metadata
            AllowOther = o.AllowOther,
            ReadaheadKb = o.ReadaheadKb,
            Threads = o.Threads ?? new FuseMountOptions().Threads,
            AllowNonEmpty = o.NonEmpty,
        };
        try
        {
            var session = FuseSession.Mount(mountPoint, fs, fuseOptions, loggers.CreateLogger("fuse"));
            var mount = new MountHost(volume, o, memory, disk, reader, fs, session);
            if (o.ControlSocket is not null)
            {
                mount.Control = MountControl.Start(o.ControlSocket, mount, loggers.CreateLogger("control"));
            }

            return mount;
        }
        catch (FuseMountException e)
        {
            reader.Dispose();
            memory.Dispose();
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

    private static bool SameFilesystem(string a, string b)
    {
        try
        {
            return Posix.Stat(a).Dev == Posix.Stat(b).Dev;
        }
        catch (IOException)
        {
            return false;
        }
    }

    public void Dispose()
    {
        Control?.Dispose();
        Session.Unmount();
        Session.Dispose();
        Reader.Dispose();
        Memory.Dispose();
    }
}
