using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Google.Protobuf;
using LazyModelFs.Csi.Grpc;
using LazyModelFs.Csi.V1;
using LazyModelFs.Fuse;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Csi;

/// <summary>
/// The CSI Identity and Node services (no Controller: volumes are provisioned statically, each
/// PersistentVolume naming its metadata URL in volumeAttributes).
///
/// A volume is staged once per node (NodeStageVolume mounts it at the staging path through an
/// `lmfs mount` daemon, so every pod on the node shares one mount and one chunk cache) and published
/// per pod (NodePublishVolume bind-mounts it, or a sub-path of it, at the pod's target path).
/// Every call is idempotent as the spec asks; calls on the same path run one at a time.
/// </summary>
public sealed class CsiServices
{
    private const string FsType = "fuse.lazymodelfs";
    private readonly CsiOptions _o;
    private readonly ILogger _log;
    private readonly StageMounter _mounter;
    // Calls on one path run one at a time; paths share 64 striped locks, so the set of locks stays
    // bounded however many pods come and go (two paths on one stripe just wait for each other).
    private readonly SemaphoreSlim[] _locks = Enumerable.Range(0, 64).Select(_ => new SemaphoreSlim(1, 1)).ToArray();

    public CsiServices(CsiOptions options, ILogger log)
    {
        _o = options;
        _log = log;
        _mounter = new StageMounter(options, log);
    }

    public void MapTo(GrpcServer s)
    {
        s.Map("/csi.v1.Identity/GetPluginInfo", GetPluginInfoRequest.Parser, (_, _) => Task.FromResult<IMessage>(PluginInfo()));
        s.Map("/csi.v1.Identity/GetPluginCapabilities", GetPluginCapabilitiesRequest.Parser, (_, _) => Task.FromResult<IMessage>(new GetPluginCapabilitiesResponse()));
        s.Map("/csi.v1.Identity/Probe", ProbeRequest.Parser, (_, _) => Task.FromResult<IMessage>(Probe()));
        s.Map("/csi.v1.Node/NodeGetCapabilities", NodeGetCapabilitiesRequest.Parser, (_, _) => Task.FromResult<IMessage>(new NodeGetCapabilitiesResponse
        {
            Capabilities = { new NodeServiceCapability { Rpc = new NodeServiceCapability.Types.RPC { Type = NodeServiceCapability.Types.RPC.Types.Type.StageUnstageVolume } } },
        }));
        s.Map("/csi.v1.Node/NodeGetInfo", NodeGetInfoRequest.Parser, (_, _) => Task.FromResult<IMessage>(new NodeGetInfoResponse { NodeId = _o.NodeId }));
        s.Map("/csi.v1.Node/NodeStageVolume", NodeStageVolumeRequest.Parser, async (r, ct) => await StageAsync(r, ct).ConfigureAwait(false));
        s.Map("/csi.v1.Node/NodeUnstageVolume", NodeUnstageVolumeRequest.Parser, async (r, ct) => await UnstageAsync(r, ct).ConfigureAwait(false));
        s.Map("/csi.v1.Node/NodePublishVolume", NodePublishVolumeRequest.Parser, async (r, ct) => await PublishAsync(r, ct).ConfigureAwait(false));
        s.Map("/csi.v1.Node/NodeUnpublishVolume", NodeUnpublishVolumeRequest.Parser, async (r, ct) => await UnpublishAsync(r, ct).ConfigureAwait(false));
    }

    public static GetPluginInfoResponse PluginInfo() => new()
    {
        Name = CsiOptions.DriverName,
        VendorVersion = typeof(CsiServices).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0",
    };

    private static ProbeResponse Probe()
    {
        if (!File.Exists("/dev/fuse"))
        {
            throw new RpcException(StatusCode.FailedPrecondition, "/dev/fuse is missing in the plugin's container; give it the host's /dev/fuse (privileged)");
        }

        return new ProbeResponse { Ready = true };
    }

    // ------------------------------------------------------------------ stage

    private async Task<NodeStageVolumeResponse> StageAsync(NodeStageVolumeRequest r, CancellationToken ct)
    {
        string volumeId = Required(r.VolumeId, "volume_id");
        string staging = CsiPaths.Check(r.StagingTargetPath, "staging_target_path", _o.KubeletDir);
        CheckCapability(r.VolumeCapability);
        string meta = r.VolumeContext.GetValueOrDefault("metaUrl") is { Length: > 0 } m ? m : throw RpcException.InvalidArgument("volume_context has no metaUrl (the volume's metadata URL: sqlite:///… or redis://…)");
        CheckContext(r.VolumeContext);
        var secrets = CheckSecrets(r.Secrets);

        using var _ = await LockAsync(staging, ct).ConfigureAwait(false);
        var record = LoadRecord(staging);
        if (record is not null && IsLiveLmfsMount(staging))
        {
            if (record.VolumeId != volumeId || record.MetaUrl != Redact.StripCredentials(meta))
            {
                throw RpcException.AlreadyExists($"{staging} already holds volume {record.VolumeId} ({Redact.Url(record.MetaUrl)})");
            }

            return new NodeStageVolumeResponse(); // already staged: idempotent
        }

        // The volume must exist before anything is mounted (NOT_FOUND per the spec).
        await CheckVolumeAsync(meta, secrets, ct).ConfigureAwait(false);
        Directory.CreateDirectory(staging);
        await _mounter.MountAsync(meta, staging, r.VolumeContext, secrets, ct).ConfigureAwait(false);
        SaveRecord(new StageRecord(volumeId, staging, Redact.StripCredentials(meta)));
        return new NodeStageVolumeResponse();
    }

    private static async Task CheckVolumeAsync(string meta, IReadOnlyDictionary<string, string> secrets, CancellationToken ct)
    {
        string? redis = secrets.GetValueOrDefault("LMFS_REDIS_PASSWORD");
        try
        {
            using var meta0 = await Meta.MetaStores.OpenAsync(meta, false, redis, ct).ConfigureAwait(false);
            if (await meta0.LoadSettingsAsync(ct).ConfigureAwait(false) is null)
            {
                throw RpcException.NotFound($"no volume is formatted at {Redact.Url(meta)}");
            }
        }
        catch (LmfsException ex)
        {
            throw ex.ExitCode switch
            {
                2 when ex.Message.Contains("does not exist", StringComparison.Ordinal) || ex.Message.Contains("no volume", StringComparison.Ordinal) => RpcException.NotFound(ex.Message),
                2 => RpcException.InvalidArgument(ex.Message),
                4 or 5 => new RpcException(StatusCode.Unavailable, ex.Message),
                _ => new RpcException(StatusCode.Internal, ex.Message),
            };
        }
    }

    private async Task<NodeUnstageVolumeResponse> UnstageAsync(NodeUnstageVolumeRequest r, CancellationToken ct)
    {
        Required(r.VolumeId, "volume_id");
        string staging = CsiPaths.Check(r.StagingTargetPath, "staging_target_path", _o.KubeletDir);
        using var _ = await LockAsync(staging, ct).ConfigureAwait(false);
        if (FuseMount.MountAt(staging) is { FsType: FsType })
        {
            await _mounter.UnmountAsync(staging, ct).ConfigureAwait(false);
        }
        else if (FuseMount.MountAt(staging) is { } other)
        {
            throw RpcException.FailedPrecondition($"{staging} holds a {other.FsType} mount, not an lmfs one; leaving it alone");
        }

        DeleteRecord(staging);
        return new NodeUnstageVolumeResponse(); // not staged: nothing to do (idempotent)
    }

    // ------------------------------------------------------------------ publish

    private async Task<NodePublishVolumeResponse> PublishAsync(NodePublishVolumeRequest r, CancellationToken ct)
    {
        string volumeId = Required(r.VolumeId, "volume_id");
        string target = CsiPaths.Check(r.TargetPath, "target_path", _o.KubeletDir);
        CheckCapability(r.VolumeCapability);
        if (string.IsNullOrEmpty(r.StagingTargetPath))
        {
            throw RpcException.FailedPrecondition("staging_target_path is not set: the volume must be staged first (this plugin has STAGE_UNSTAGE_VOLUME)");
        }

        string staging = CsiPaths.Check(r.StagingTargetPath, "staging_target_path", _o.KubeletDir);
        CheckContext(r.VolumeContext);
        using var _ = await LockAsync(target, ct).ConfigureAwait(false);
        var stage = FuseMount.MountAt(staging);
        if (stage is not { FsType: FsType } || !FuseMount.IsLive(staging))
        {
            throw RpcException.FailedPrecondition($"volume {volumeId} is not staged at {staging}; NodeStageVolume must succeed first");
        }

        if (LoadRecord(staging) is { } rec && rec.VolumeId != volumeId)
        {
            throw RpcException.FailedPrecondition($"{staging} holds volume {rec.VolumeId}, not {volumeId}");
        }

        string source = CsiPaths.SubPath(staging, r.VolumeContext.GetValueOrDefault("subPath"));
        string root = source == staging ? "/" : source[staging.Length..];
        if (FuseMount.MountAt(target) is { } existing)
        {
            // The volume itself is always read-only, so a bind of it is too whatever the flag said:
            // readonly=false asks for nothing a read-only bind does not already give.
            bool readOnly = existing.Options.Split(',').Contains("ro");
            bool wantReadOnly = r.Readonly || stage.Options.Split(',').Contains("ro");
            if (existing.FsType == FsType && existing.Device == stage.Device && existing.Root == root && readOnly == wantReadOnly)
            {
                return new NodePublishVolumeResponse(); // already published the same way: idempotent
            }

            throw RpcException.AlreadyExists($"{target} is already a mount ({existing.FsType} {existing.Root}) that differs from this request");
        }

        if (!Directory.Exists(Path.GetDirectoryName(target)))
        {
            throw RpcException.NotFound($"the parent of target_path {target} does not exist (the CO creates it)");
        }

        Directory.CreateDirectory(target);
        try
        {
            HostMounts.Bind(source, target, r.Readonly);
        }
        catch (IOException ex)
        {
            throw new RpcException(StatusCode.Internal, ex.Message);
        }

        return new NodePublishVolumeResponse();
    }

    private async Task<NodeUnpublishVolumeResponse> UnpublishAsync(NodeUnpublishVolumeRequest r, CancellationToken ct)
    {
        Required(r.VolumeId, "volume_id");
        string target = CsiPaths.Check(r.TargetPath, "target_path", _o.KubeletDir);
        using var _ = await LockAsync(target, ct).ConfigureAwait(false);
        while (FuseMount.MountAt(target) is { } m)
        {
            if (m.FsType != FsType)
            {
                throw RpcException.FailedPrecondition($"{target} holds a {m.FsType} mount, not an lmfs one; leaving it alone");
            }

            try
            {
                HostMounts.Unmount(target);
            }
            catch (IOException ex)
            {
                throw new RpcException(StatusCode.Internal, ex.Message);
            }
        }

        try
        {
            if (Directory.Exists(target))
            {
                Directory.Delete(target); // the spec: the SP deletes what it created; only an empty directory goes
            }
        }
        catch (IOException ex)
        {
            throw new RpcException(StatusCode.Internal, $"cannot remove {target}: {ex.Message}");
        }

        return new NodeUnpublishVolumeResponse();
    }

    // ------------------------------------------------------------------ checks

    private static string Required(string? v, string field) => string.IsNullOrEmpty(v) ? throw RpcException.InvalidArgument($"{field} is required") : v;

    private static void CheckCapability(VolumeCapability? c)
    {
        if (c is null)
        {
            throw RpcException.InvalidArgument("volume_capability is required");
        }

        if (c.AccessTypeCase == VolumeCapability.AccessTypeOneofCase.Block)
        {
            throw RpcException.InvalidArgument("block access is not supported: lmfs volumes are filesystems (use volumeMode: Filesystem)");
        }

        if (c.Mount is { FsType: { Length: > 0 } fs } && fs != "lmfs" && fs != FsType)
        {
            throw RpcException.InvalidArgument($"fs_type '{fs}' is not supported; leave it empty (or lmfs)");
        }

        var mode = c.AccessMode?.Mode ?? VolumeCapability.Types.AccessMode.Types.Mode.Unknown;
        if (mode is not (VolumeCapability.Types.AccessMode.Types.Mode.SingleNodeReaderOnly or VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeReaderOnly))
        {
            throw RpcException.InvalidArgument($"access mode {mode} is not supported: lmfs volumes are read-only (use accessModes: [ReadOnlyMany])");
        }
    }

    private static void CheckContext(IDictionary<string, string> context)
    {
        foreach (var k in context.Keys)
        {
            // Keys with a '/' are the CO's own (csi.storage.k8s.io/pod.name …).
            if (k is not ("metaUrl" or "subPath") && !StageMounter.ContextOptions.ContainsKey(k) && !k.Contains('/', StringComparison.Ordinal))
            {
                throw RpcException.InvalidArgument($"volume_context key '{k}' is not known; known keys: metaUrl, subPath, {string.Join(", ", StageMounter.ContextOptions.Keys)}");
            }
        }
    }

    private static Dictionary<string, string> CheckSecrets(IDictionary<string, string> secrets)
    {
        foreach (var k in secrets.Keys)
        {
            if (!StageMounter.SecretKeys.Contains(k))
            {
                throw RpcException.InvalidArgument($"secret key '{k}' is not known; known keys: {string.Join(", ", StageMounter.SecretKeys)}");
            }
        }

        return new Dictionary<string, string>(secrets, StringComparer.Ordinal);
    }

    /// <summary>An lmfs mount whose daemon answers (a dead one must be staged again, not used).</summary>
    private static bool IsLiveLmfsMount(string path) => FuseMount.MountAt(path) is { FsType: FsType } && FuseMount.IsLive(path);

    private async Task<IDisposable> LockAsync(string key, CancellationToken ct)
    {
        var s = _locks[(StringComparer.Ordinal.GetHashCode(key) & 0x7FFFFFFF) % _locks.Length];
        await s.WaitAsync(ct).ConfigureAwait(false);
        return new Releaser(s);
    }

    private sealed class Releaser(SemaphoreSlim s) : IDisposable
    {
        public void Dispose() => s.Release();
    }

    // ------------------------------------------------------------------ state (no secrets)

    public sealed record StageRecord(string VolumeId, string StagingPath, string MetaUrl);

    private string RecordPath(string staging) => Path.Combine(_o.StateDir, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(staging)))[..16] + ".json");

    private StageRecord? LoadRecord(string staging)
    {
        try
        {
            return PrivateFiles.ReadTrusted(RecordPath(staging)) is { } text ? JsonSerializer.Deserialize<StageRecord>(text) : null;
        }
        catch (Exception ex) when (ex is IOException or JsonException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private void SaveRecord(StageRecord r)
    {
        PrivateFiles.EnsureDirectory(_o.StateDir); // records name paths the plugin unmounts: nobody else may write them
        PrivateFiles.WriteAtomic(RecordPath(r.StagingPath), JsonSerializer.Serialize(r));
    }

    private void DeleteRecord(string staging)
    {
        if (File.Exists(RecordPath(staging)))
        {
            File.Delete(RecordPath(staging));
        }
    }

    /// <summary>At start: the staged volumes this plugin (or an earlier run of it) mounted, and whether their daemons still serve.</summary>
    public IReadOnlyList<(StageRecord Record, bool Live)> Recover()
    {
        var found = new List<(StageRecord, bool)>();
        if (!Directory.Exists(_o.StateDir))
        {
            return found;
        }

        foreach (var f in Directory.EnumerateFiles(_o.StateDir, "*.json"))
        {
            try
            {
                if (PrivateFiles.ReadTrusted(f) is { } text && JsonSerializer.Deserialize<StageRecord>(text) is { } r)
                {
                    bool live = IsLiveLmfsMount(r.StagingPath);
                    found.Add((r, live));
                    if (live)
                    {
                        _log.LogInformation("csi: volume {Volume} is staged at {Staging} and serving", r.VolumeId, r.StagingPath);
                    }
                    else
                    {
                        _log.LogWarning("csi: volume {Volume} was staged at {Staging} but its mount is gone or dead; pods using it must be restarted to stage it again", r.VolumeId, r.StagingPath);
                    }
                }
            }
            catch (Exception ex) when (ex is IOException or JsonException or UnsafePathException)
            {
                _log.LogWarning("csi: cannot read {File}: {Message}", f, ex.Message);
            }
        }

        return found;
    }
}
