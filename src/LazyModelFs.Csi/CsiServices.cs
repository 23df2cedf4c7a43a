using System.Collections.Concurrent;
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
///
/// A staged volume whose daemon dies (an OOM kill) is mounted again (<see cref="HealAsync"/>): by
/// NodeStageVolume, by NodePublishVolume, and by the plugin itself every --heal-interval. Pods'
/// bind mounts of the dead mount stay dead (a bind holds the superblock it was made from), so
/// each recorded target is bound again, on top of its dead bind. Why there and not by mounting the
/// new daemon over the dead staging mount: the kubelet directory is a shared mount (Bidirectional
/// propagation), so the staging mount and the binds of it would be one peer group; a mount over
/// the staging mount would reach the binds by propagation, but the first pod's unpublish would
/// then propagate the unmount back to the staging path and to every other pod (seen on Linux 6.x).
/// So the staging mount is made private after mounting: each bind then forms its own peer group
/// with its copies on the host and in containers that mount it with HostToContainer propagation,
/// and a bind placed on top of a target reaches exactly those (docs/operations.md, "Restarts").
/// </summary>
public sealed class CsiServices
{
    private const string FsType = "fuse.lazymodelfs";
    private readonly CsiOptions _o;
    private readonly ILogger _log;
    private readonly StageMounter _mounter;
    // Calls on one path run one at a time; paths share 64 striped locks, so the set of locks stays
    // bounded however many pods come and go (two paths on one stripe just wait for each other). A
    // call that needs two paths (publish: target and staging) takes their stripes in index order.
    private readonly SemaphoreSlim[] _locks = Enumerable.Range(0, 64).Select(_ => new SemaphoreSlim(1, 1)).ToArray();
    // The node-stage secrets of each staged volume, kept in memory only (never on disk, never in a
    // log), so a dead daemon can be mounted again without the CO. Lost when the plugin restarts.
    private readonly ConcurrentDictionary<string, IReadOnlyDictionary<string, string>> _secrets = new(StringComparer.Ordinal);
    // Staging paths whose liveness check is still running (a hung daemon must not pile up checks).
    private readonly ConcurrentDictionary<string, Task<bool>> _checks = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, bool> _warned = new(StringComparer.Ordinal);
    private readonly CsiMetrics _metrics = new();

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
        s.Map("/csi.v1.Node/NodeStageVolume", NodeStageVolumeRequest.Parser, Counted<NodeStageVolumeRequest>("NodeStageVolume", async (r, ct) => await StageAsync(r, ct).ConfigureAwait(false)));
        s.Map("/csi.v1.Node/NodeUnstageVolume", NodeUnstageVolumeRequest.Parser, Counted<NodeUnstageVolumeRequest>("NodeUnstageVolume", async (r, ct) => await UnstageAsync(r, ct).ConfigureAwait(false)));
        s.Map("/csi.v1.Node/NodePublishVolume", NodePublishVolumeRequest.Parser, Counted<NodePublishVolumeRequest>("NodePublishVolume", async (r, ct) => await PublishAsync(r, ct).ConfigureAwait(false)));
        s.Map("/csi.v1.Node/NodeUnpublishVolume", NodeUnpublishVolumeRequest.Parser, Counted<NodeUnpublishVolumeRequest>("NodeUnpublishVolume", async (r, ct) => await UnpublishAsync(r, ct).ConfigureAwait(false)));
    }

    /// <summary>A node RPC handler that counts how each call ended (<see cref="CsiMetrics"/>).</summary>
    private Func<T, CancellationToken, Task<IMessage>> Counted<T>(string operation, Func<T, CancellationToken, Task<IMessage>> handler) => async (r, ct) =>
    {
        StatusCode code = StatusCode.Internal;
        try
        {
            var answer = await handler(r, ct).ConfigureAwait(false);
            code = StatusCode.OK;
            return answer;
        }
        catch (RpcException ex)
        {
            code = ex.Code;
            throw;
        }
        catch (OperationCanceledException)
        {
            code = StatusCode.Cancelled;
            throw;
        }
        finally
        {
            _metrics.Call(operation, code);
        }
    };

    /// <summary>The page `lmfs csi --metrics` serves (<see cref="CsiMetrics"/>).</summary>
    public Task<string> RenderMetricsAsync(CancellationToken ct) =>
        _metrics.RenderAsync(LoadRecords().OrderBy(r => r.VolumeId, StringComparer.Ordinal).Select(r => (r.VolumeId, r.StagingPath)).ToList(), LoadPublishRecords().Count, ct);

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
        if (Redact.HasCredentials(meta))
        {
            // Anyone who may read PersistentVolumes reads volumeAttributes; a password there would also
            // reach the daemon's command line. Refused, and never repeated back.
            throw RpcException.InvalidArgument($"volume_context metaUrl {Redact.Url(meta)} carries credentials; remove them from the PersistentVolume and put the password in the node-stage secret (key LMFS_REDIS_PASSWORD)");
        }

        CheckContext(r.VolumeContext);
        var secrets = CheckSecrets(r.Secrets);
        try
        {
            using (await LockAsync(ct, staging).ConfigureAwait(false))
            {
                await StageLockedAsync(volumeId, staging, meta, r.VolumeContext, secrets, ct).ConfigureAwait(false);
            }

            await RebindTargetsAsync(staging, ct).ConfigureAwait(false);
        }
        catch (RpcException ex)
        {
            throw new RpcException(ex.Code, Scrub(ex.Message, secrets.Values));
        }

        return new NodeStageVolumeResponse();
    }

    private async Task StageLockedAsync(string volumeId, string staging, string meta, IDictionary<string, string> context, Dictionary<string, string> secrets, CancellationToken ct)
    {
        var record = LoadRecord(staging);
        var top = FuseMount.MountAt(staging);
        bool dead = top is { FsType: FsType } && FuseMount.IsDeadFuseMount(staging);
        if (top is { FsType: FsType } && !dead)
        {
            if (record is null && Vfs.MountRegistry.Load(staging) is { } daemon && daemon.MetaUrl == meta)
            {
                // Mounted by an earlier run of the plugin whose record is gone: the same volume, adopt it.
                record = new StageRecord(volumeId, staging, meta, Options(context), secrets.Count > 0);
                SaveRecord(record);
            }

            if (record is null || record.VolumeId != volumeId || record.MetaUrl != meta)
            {
                string holds = record is not null ? $"volume {record.VolumeId} ({Redact.Url(record.MetaUrl)})" : "an lmfs mount this plugin did not make";
                throw RpcException.AlreadyExists($"{staging} already holds {holds}");
            }

            _secrets[staging] = secrets; // already staged: idempotent (the secrets may have been rotated)
            return;
        }

        if (top is { } other && other.FsType != FsType)
        {
            throw RpcException.FailedPrecondition($"{staging} holds a {other.FsType} mount, not an lmfs one; leaving it alone");
        }

        // The volume must exist before anything is mounted (NOT_FOUND per the spec).
        await CheckVolumeAsync(meta, secrets, ct).ConfigureAwait(false);
        if (dead)
        {
            _log.LogWarning("csi: volume {Volume}: the mount daemon at {Staging} is gone (transport endpoint is not connected); detaching its mount and mounting the volume again", volumeId, staging);
            await _mounter.UnmountAsync(staging, ct).ConfigureAwait(false);
        }

        Directory.CreateDirectory(staging);
        await MountLockedAsync(new StageRecord(volumeId, staging, meta, Options(context), secrets.Count > 0), secrets, ct).ConfigureAwait(false);
    }

    /// <summary>Mounts a staged volume's daemon, makes the mount private (see the type's summary) and records it. The caller holds the staging lock.</summary>
    private async Task MountLockedAsync(StageRecord record, IReadOnlyDictionary<string, string> secrets, CancellationToken ct)
    {
        await _mounter.MountAsync(record.MetaUrl, record.StagingPath, record.Context ?? [], secrets, ct).ConfigureAwait(false);
        try
        {
            HostMounts.MakePrivate(record.StagingPath);
        }
        catch (IOException ex)
        {
            _log.LogWarning("csi: {Message}; pods keep working, but a remount after the daemon dies cannot reach them", ex.Message);
        }

        SaveRecord(record);
        _secrets[record.StagingPath] = secrets;
        _warned.TryRemove(record.StagingPath, out _);
    }

    /// <summary>
    /// Mounts a staged volume again if its daemon died, then binds the pods' targets again. Returns
    /// why it could not (null when the volume serves). Takes the staging lock.
    /// </summary>
    public async Task<string?> HealAsync(string staging, CancellationToken ct)
    {
        string? why;
        using (await LockAsync(ct, staging).ConfigureAwait(false))
        {
            why = await HealLockedAsync(staging, ct).ConfigureAwait(false);
        }

        if (why is null)
        {
            await RebindTargetsAsync(staging, ct).ConfigureAwait(false);
        }

        return why;
    }

    private async Task<string?> HealLockedAsync(string staging, CancellationToken ct)
    {
        if (LoadRecord(staging) is not { } record)
        {
            return "it is not staged by this plugin";
        }

        var top = FuseMount.MountAt(staging);
        if (top is null)
        {
            // Not a daemon that died: the node restarted, or someone unmounted it. The kubelet stages
            // what its pods still need; mounting every old record here would leave daemons nobody unstages.
            return "nothing is mounted there (the node restarted, or it was unmounted by hand); NodeStageVolume mounts it";
        }

        if (top.FsType != FsType)
        {
            return $"{staging} holds a {top.FsType} mount";
        }

        if (!FuseMount.IsDeadFuseMount(staging))
        {
            return null;
        }

        IReadOnlyDictionary<string, string> secrets = _secrets.TryGetValue(staging, out var known) ? known : new Dictionary<string, string>();
        if (record.NeedsSecrets && known is null)
        {
            const string Why = "its node-stage secrets are not known since the plugin restarted";
            if (_warned.TryAdd(staging, true))
            {
                _log.LogWarning("csi: volume {Volume}: the mount daemon at {Staging} is gone and cannot be started again here: {Why}; delete the pods that use it on this node so the kubelet stages it again", record.VolumeId, staging, Why);
            }

            return Why;
        }

        _log.LogWarning("csi: volume {Volume}: the mount daemon at {Staging} is gone; mounting the volume again", record.VolumeId, staging);
        try
        {
            await _mounter.UnmountAsync(staging, ct).ConfigureAwait(false);

            Directory.CreateDirectory(staging);
            await MountLockedAsync(record, secrets, ct).ConfigureAwait(false);
        }
        catch (RpcException ex)
        {
            string message = Scrub(ex.Message, secrets.Values);
            _metrics.Remounted(ok: false);
            _log.LogWarning("csi: volume {Volume}: mounting it again at {Staging} failed: {Message}", record.VolumeId, staging, message);
            return message;
        }

        _metrics.Remounted(ok: true);
        _log.LogInformation("csi: volume {Volume} is mounted again at {Staging}", record.VolumeId, staging);
        return null;
    }

    /// <summary>
    /// Binds every recorded target of <paramref name="staging"/> whose bind is dead again, on top of
    /// the dead one, so the pods that mount it with HostToContainer propagation see the new mount.
    /// </summary>
    private async Task RebindTargetsAsync(string staging, CancellationToken ct)
    {
        foreach (var pub in LoadPublishRecords().Where(p => p.StagingPath == staging))
        {
            using (await LockAsync(ct, staging, pub.TargetPath).ConfigureAwait(false))
            {
                if (FuseMount.MountAt(pub.TargetPath) is not { FsType: FsType } || !FuseMount.IsDeadFuseMount(pub.TargetPath)
                    || FuseMount.MountAt(staging) is not { FsType: FsType } || FuseMount.IsDeadFuseMount(staging))
                {
                    continue;
                }

                try
                {
                    HostMounts.Bind(CsiPaths.SubPath(staging, pub.SubPath), pub.TargetPath, pub.Readonly);
                    _log.LogInformation("csi: volume {Volume}: {Target} is bound to the new mount again", pub.VolumeId, pub.TargetPath);
                }
                catch (Exception ex) when (ex is IOException or RpcException)
                {
                    _log.LogWarning("csi: volume {Volume}: cannot bind {Target} again: {Message}", pub.VolumeId, pub.TargetPath, ex.Message);
                }
            }
        }
    }

    /// <summary>
    /// Every <paramref name="interval"/>: each staged volume whose daemon died is mounted again and its
    /// targets bound again (<see cref="HealAsync"/>). A check that does not answer (a hung daemon) is
    /// not taken for dead, and is not started again while it runs.
    /// </summary>
    public async Task WatchAsync(TimeSpan interval, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            foreach (var record in LoadRecords())
            {
                string staging = record.StagingPath;
                if (_checks.ContainsKey(staging))
                {
                    continue;
                }

                var check = Task.Run(() => (FuseMount.MountAt(staging) is { FsType: FsType } && FuseMount.IsDeadFuseMount(staging)) || TargetsDead(staging), CancellationToken.None);
                _checks[staging] = check;
                _ = check.ContinueWith(_ => _checks.TryRemove(staging, out Task<bool>? _), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                try
                {
                    if (await check.WaitAsync(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false))
                    {
                        await HealAsync(staging, ct).ConfigureAwait(false);
                    }
                }
                catch (TimeoutException)
                {
                    _log.LogWarning("csi: volume {Volume}: the mount at {Staging} does not answer; not taken for dead", record.VolumeId, staging);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    // The watch must outlive any one volume's trouble; the next round tries again.
                    _log.LogWarning("csi: volume {Volume}: checking or mounting {Staging} again failed: {Message}", record.VolumeId, staging, Redact.Text(ex.Message));
                }
            }

            await Task.Delay(interval, ct).ConfigureAwait(false);
        }
    }

    private bool TargetsDead(string staging) =>
        LoadPublishRecords().Any(p => p.StagingPath == staging && FuseMount.MountAt(p.TargetPath) is { FsType: FsType } && FuseMount.IsDeadFuseMount(p.TargetPath));

    private static Dictionary<string, string> Options(IDictionary<string, string> context) =>
        context.Where(kv => StageMounter.ContextOptions.ContainsKey(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);

    /// <summary>Any secret value that found its way into a message (a child's error output, a library's exception) is replaced by ***.</summary>
    private static string Scrub(string message, IEnumerable<string> secrets)
    {
        foreach (var v in secrets.Where(v => v.Length >= 4).OrderByDescending(v => v.Length))
        {
            message = message.Replace(v, "***", StringComparison.Ordinal);
        }

        return message;
    }

    private static async Task CheckVolumeAsync(string meta, IReadOnlyDictionary<string, string> secrets, CancellationToken ct)
    {
        string? redis = secrets.GetValueOrDefault("LMFS_REDIS_PASSWORD");
        try
        {
            using var meta0 = await Meta.MetaStores.OpenAsync(meta, false, redis, ct).ConfigureAwait(false);
            if (await meta0.LoadSettingsAsync(ct).ConfigureAwait(false) is null)
            {
                throw RpcException.NotFound((await Meta.MetaStores.NotFormattedAsync(meta0, meta, ct).ConfigureAwait(false)).Message);
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
        using var _ = await LockAsync(ct, staging).ConfigureAwait(false);
        // More than one lmfs mount can lie at the path (a dead one under a live one, mounted by hand): all go.
        for (int i = 0; FuseMount.MountAt(staging) is { } m; i++)
        {
            if (m.FsType != FsType)
            {
                throw RpcException.FailedPrecondition($"{staging} holds a {m.FsType} mount, not an lmfs one; leaving it alone");
            }

            if (i == 8)
            {
                throw new RpcException(StatusCode.Internal, $"cannot unmount {staging}: it is still mounted after {i} attempts");
            }

            await _mounter.UnmountAsync(staging, ct).ConfigureAwait(false);
        }

        DeleteRecord(staging);
        _secrets.TryRemove(staging, out IReadOnlyDictionary<string, string>? _);
        _warned.TryRemove(staging, out bool _);
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
        if (LoadRecord(staging) is not null && FuseMount.MountAt(staging) is { FsType: FsType } && FuseMount.IsDeadFuseMount(staging))
        {
            await HealAsync(staging, ct).ConfigureAwait(false); // mounts the dead daemon again, and binds its other targets again
        }

        using var _ = await LockAsync(ct, staging, target).ConfigureAwait(false);
        if (LoadRecord(staging) is { } rec)
        {
            if (rec.VolumeId != volumeId)
            {
                throw RpcException.FailedPrecondition($"{staging} holds volume {rec.VolumeId}, not {volumeId}");
            }

            // The kubelet stages a volume once and then only publishes it: a daemon that died is
            // mounted again here, or no new pod on this node could ever use the volume.
            if (FuseMount.MountAt(staging) is { FsType: FsType } && FuseMount.IsDeadFuseMount(staging) && await HealLockedAsync(staging, ct).ConfigureAwait(false) is { } why)
            {
                throw RpcException.FailedPrecondition($"volume {volumeId} is staged at {staging} but its mount daemon is gone and cannot be started again: {why}; delete the pods that use the volume on this node, so the kubelet stages it again");
            }
        }

        var stage = FuseMount.MountAt(staging);
        if (stage is not { FsType: FsType } || FuseMount.IsDeadFuseMount(staging))
        {
            throw RpcException.FailedPrecondition($"volume {volumeId} is not staged at {staging}; NodeStageVolume must succeed first");
        }

        string subPath = r.VolumeContext.GetValueOrDefault("subPath") ?? "";
        string source = CsiPaths.SubPath(staging, subPath);
        string root = source == staging ? "/" : source[staging.Length..];
        bool overDead = false;
        if (FuseMount.MountAt(target) is { } existing)
        {
            // The volume itself is always read-only, so a bind of it is too whatever the flag said:
            // readonly=false asks for nothing a read-only bind does not already give.
            bool readOnly = existing.Options.Split(',').Contains("ro");
            bool wantReadOnly = r.Readonly || stage.Options.Split(',').Contains("ro");
            if (existing.FsType == FsType && existing.Device == stage.Device && existing.Root == root && readOnly == wantReadOnly)
            {
                SavePublishRecord(new PublishRecord(volumeId, target, staging, subPath, r.Readonly));
                return new NodePublishVolumeResponse(); // already published the same way: idempotent
            }

            // A bind of a mount whose daemon died: the new bind goes on top of it (nothing can be
            // created in or removed from a dead mount; unpublish removes both).
            overDead = existing.FsType == FsType && existing.Root == root && FuseMount.IsDeadFuseMount(target);
            if (!overDead)
            {
                throw RpcException.AlreadyExists($"{target} is already a mount ({existing.FsType} {existing.Root}) that differs from this request");
            }
        }

        if (!overDead)
        {
            if (!Directory.Exists(Path.GetDirectoryName(target)))
            {
                throw RpcException.NotFound($"the parent of target_path {target} does not exist (the CO creates it)");
            }

            Directory.CreateDirectory(target);
        }

        try
        {
            HostMounts.Bind(source, target, r.Readonly);
        }
        catch (IOException ex)
        {
            throw new RpcException(StatusCode.Internal, ex.Message);
        }

        SavePublishRecord(new PublishRecord(volumeId, target, staging, subPath, r.Readonly));
        return new NodePublishVolumeResponse();
    }

    private async Task<NodeUnpublishVolumeResponse> UnpublishAsync(NodeUnpublishVolumeRequest r, CancellationToken ct)
    {
        Required(r.VolumeId, "volume_id");
        string target = CsiPaths.Check(r.TargetPath, "target_path", _o.KubeletDir);
        using var _ = await LockAsync(ct, target).ConfigureAwait(false);
        // A target bound again after its daemon died holds two binds, the dead one below: both go.
        for (int i = 0; FuseMount.MountAt(target) is { } m; i++)
        {
            if (m.FsType != FsType)
            {
                throw RpcException.FailedPrecondition($"{target} holds a {m.FsType} mount, not an lmfs one; leaving it alone");
            }

            if (i == 8)
            {
                throw new RpcException(StatusCode.Internal, $"cannot unmount {target}: it is still mounted after {i} attempts");
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

        DeletePublishRecord(target);
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

    /// <summary>Takes the stripes of <paramref name="keys"/>, each once, in index order (so two calls that need two paths cannot deadlock).</summary>
    private async Task<IDisposable> LockAsync(CancellationToken ct, params string[] keys)
    {
        var stripes = keys.Select(k => (StringComparer.Ordinal.GetHashCode(k) & 0x7FFFFFFF) % _locks.Length).Distinct().Order().ToArray();
        var taken = new List<SemaphoreSlim>(stripes.Length);
        try
        {
            foreach (int i in stripes)
            {
                await _locks[i].WaitAsync(ct).ConfigureAwait(false);
                taken.Add(_locks[i]);
            }
        }
        catch
        {
            taken.ForEach(t => t.Release());
            throw;
        }

        return new Releaser(taken);
    }

    private sealed class Releaser(List<SemaphoreSlim> taken) : IDisposable
    {
        public void Dispose() => taken.ForEach(t => t.Release());
    }

    // ------------------------------------------------------------------ state (no secrets)

    /// <summary>A staged volume: what is needed to mount it again (the mount options of its volume context; whether it needs secrets, which are never stored).</summary>
    public sealed record StageRecord(string VolumeId, string StagingPath, string MetaUrl, Dictionary<string, string>? Context = null, bool NeedsSecrets = false);

    /// <summary>A published target: what is needed to bind it again after the staged mount was mounted again.</summary>
    public sealed record PublishRecord(string VolumeId, string TargetPath, string StagingPath, string SubPath, bool Readonly);

    private static string Hash(string path) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(path)))[..16];

    private string RecordPath(string staging) => Path.Combine(_o.StateDir, Hash(staging) + ".json");

    private string PublishDir => Path.Combine(_o.StateDir, "published");

    private string PublishPath(string target) => Path.Combine(PublishDir, Hash(target) + ".json");

    private StageRecord? LoadRecord(string staging) => Read<StageRecord>(RecordPath(staging)) is { StagingPath: not null, VolumeId: not null, MetaUrl: not null } r && r.StagingPath == staging ? r : null;

    private IEnumerable<StageRecord> LoadRecords() => Directory.Exists(_o.StateDir)
        ? Directory.EnumerateFiles(_o.StateDir, "*.json").Select(Read<StageRecord>).OfType<StageRecord>().Where(r => r.StagingPath is not null && r.VolumeId is not null && r.MetaUrl is not null).ToList()
        : [];

    private List<PublishRecord> LoadPublishRecords() => Directory.Exists(PublishDir)
        ? Directory.EnumerateFiles(PublishDir, "*.json").Select(Read<PublishRecord>).OfType<PublishRecord>().Where(r => r.TargetPath is not null && r.StagingPath is not null).ToList()
        : [];

    private static T? Read<T>(string file)
        where T : class
    {
        try
        {
            // Records name paths the plugin mounts and unmounts: only files nobody else could have written count.
            return PrivateFiles.ReadTrusted(file) is { } text ? JsonSerializer.Deserialize<T>(text) : null;
        }
        catch (Exception ex) when (ex is IOException or JsonException or UnauthorizedAccessException or UnsafePathException)
        {
            return null;
        }
    }

    private static void Write(string file, object record)
    {
        PrivateFiles.EnsureDirectory(Path.GetDirectoryName(file)!); // records name paths the plugin unmounts: nobody else may write them
        PrivateFiles.WriteAtomic(file, JsonSerializer.Serialize(record));
    }

    private void SaveRecord(StageRecord r) => Write(RecordPath(r.StagingPath), r);

    private void SavePublishRecord(PublishRecord r) => Write(PublishPath(r.TargetPath), r);

    private void DeleteRecord(string staging) => Delete(RecordPath(staging));

    private void DeletePublishRecord(string target) => Delete(PublishPath(target));

    private static void Delete(string file)
    {
        if (File.Exists(file))
        {
            File.Delete(file);
        }
    }

    /// <summary>At start: the staged volumes this plugin (or an earlier run of it) mounted, and whether their daemons still serve.</summary>
    public IReadOnlyList<(StageRecord Record, bool Live)> Recover()
    {
        var found = new List<(StageRecord, bool)>();
        foreach (var r in LoadRecords())
        {
            bool live = FuseMount.MountAt(r.StagingPath) is { FsType: FsType } && !FuseMount.IsDeadFuseMount(r.StagingPath);
            found.Add((r, live));
            if (live)
            {
                _log.LogInformation("csi: volume {Volume} is staged at {Staging} and serving", r.VolumeId, r.StagingPath);
            }
            else
            {
                _log.LogWarning(
                    "csi: volume {Volume} was staged at {Staging} but its mount is gone or dead; {What}",
                    r.VolumeId,
                    r.StagingPath,
                    FuseMount.MountAt(r.StagingPath) is null ? "NodeStageVolume mounts it again when a pod needs it"
                    : r.NeedsSecrets ? "it needs its node-stage secrets to be mounted again: delete the pods that use it on this node"
                    : "it is mounted again at the next check, or at the next publish");
            }
        }

        return found;
    }
}
