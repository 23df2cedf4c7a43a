namespace LazyModelFs.Csi;

public sealed record CsiOptions
{
    /// <summary>unix:///path/csi.sock (the CSI_ENDPOINT convention).</summary>
    public required string Endpoint { get; init; }

    public required string NodeId { get; init; }

    /// <summary>Staging and target paths must lie under this directory.</summary>
    public string KubeletDir { get; init; } = "/var/lib/kubelet";

    /// <summary>The node's shared chunk cache (a hostPath), unless a volume names its own.</summary>
    public string CacheDir { get; init; } = "/var/cache/lmfs";

    /// <summary>Where the plugin remembers which volume is staged where (a hostPath, so it survives restarts).</summary>
    public string StateDir { get; init; } = "/var/lib/lmfs-csi";

    /// <summary>Logs of the mount daemons.</summary>
    public string LogDir { get; init; } = "/var/log/lmfs";

    /// <summary>How often the plugin checks that the daemons of staged volumes live, and mounts a dead one again; zero: never (NodeStageVolume and NodePublishVolume still do).</summary>
    public TimeSpan HealInterval { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How to run lmfs for a mount daemon: the executable and any leading arguments.</summary>
    public required IReadOnlyList<string> LmfsCommand { get; init; }

    /// <summary>Where to serve Prometheus metrics (--metrics ADDR:PORT); null: nowhere.</summary>
    public System.Net.IPEndPoint? Metrics { get; init; }

    public const string DriverName = "csi.lazymodelfs.io";

    public string SocketPath => Endpoint.StartsWith("unix://", StringComparison.Ordinal) ? Endpoint["unix://".Length..] : Endpoint;
}
