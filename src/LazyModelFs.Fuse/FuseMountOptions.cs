namespace LazyModelFs.Fuse;

/// <summary>How to mount (fuse-protocol.md sections 3 and 15).</summary>
public sealed record FuseMountOptions
{
    /// <summary>Shown as the mount's source in /proc/mounts.</summary>
    public string FsName { get; init; } = "lmfs";

    /// <summary>Type is "fuse.&lt;Subtype&gt;".</summary>
    public string Subtype { get; init; } = "lazymodelfs";

    /// <summary>MS_RDONLY: the VFS refuses writes with EROFS before they reach the daemon.</summary>
    public bool ReadOnly { get; init; } = true;

    /// <summary>MS_NOEXEC: nothing on the mount can be executed (mount -o noexec; mount(8)'s `user` and `users` imply it).</summary>
    public bool NoExec { get; init; }

    /// <summary>Let other users (training jobs under other uids) use the mount.</summary>
    public bool AllowOther { get; init; }

    /// <summary>The kernel checks mode bits itself; ACCESS is then never sent.</summary>
    public bool DefaultPermissions { get; init; } = true;

    /// <summary>Reader threads, each with its own cloned /dev/fuse descriptor.</summary>
    public int Threads { get; init; } = Math.Clamp(2 * Environment.ProcessorCount, 2, 16);

    /// <summary>After mounting as root, set /sys/class/bdi/0:MINOR/read_ahead_kb (null: leave the kernel's 128).</summary>
    public int? ReadaheadKb { get; init; } = 16384;

    /// <summary>Mount over a directory that is not empty (what it holds is hidden while mounted); refused otherwise.</summary>
    public bool AllowNonEmpty { get; init; }

    /// <summary>Force fusermount3 even as root (tests; normally chosen when not root).</summary>
    public bool UseFusermount { get; init; }

    /// <summary>How long <see cref="FuseSession.Unmount"/> waits for the kernel to end the session before aborting the connection.</summary>
    public TimeSpan UnmountGrace { get; init; } = TimeSpan.FromSeconds(5);

    public FuseProtocolOptions Protocol { get; init; } = new();
}
