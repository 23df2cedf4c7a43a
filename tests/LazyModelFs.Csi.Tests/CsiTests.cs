using LazyModelFs.Csi.Grpc;
using LazyModelFs.Csi.V1;
using LazyModelFs.Testing;
using Xunit;
using Mode = LazyModelFs.Csi.V1.VolumeCapability.Types.AccessMode.Types.Mode;

namespace LazyModelFs.Csi.Tests;

/// <summary>
/// The CSI node plugin as the kubelet sees it: `lmfs csi` in its own process, called over its unix
/// socket with gRPC (HTTP/2). Every RPC, idempotency, the error codes the spec names, refused paths,
/// and a real stage + publish that mounts a volume and reads it through the pod's target path.
/// </summary>
public sealed class CsiTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-csi");
    private CsiPluginProcess _plugin;
    private CsiClient _client;

    public CsiTests()
    {
        _plugin = new CsiPluginProcess(_dir.Path);
        _client = new CsiClient(_plugin.Socket);
        Directory.CreateDirectory(Kubelet("pods"));
        Directory.CreateDirectory(Kubelet("plugins"));
    }

    private string Kubelet(string rel) => Path.Combine(_dir.Path, "kubelet", rel);

    /// <summary>Replaces the plugin with one started with other arguments (its staged volumes keep serving).</summary>
    private void Restart(string? kubeletDir = null, params string[] extra)
    {
        _client.Dispose();
        _plugin.Dispose();
        _plugin = new CsiPluginProcess(_dir.Path, kubeletDir, extra);
        _client = new CsiClient(_plugin.Socket);
    }

    /// <summary>A formatted volume holding m/model.bin and m/sub/config.json.</summary>
    private (string Meta, byte[] Model) FormattedVolume(string? meta = null, Dictionary<string, string?>? env = null)
    {
        Directory.CreateDirectory(_dir["src/models/m/sub"]);
        var model = TestData.Random((3 << 20) + 777, 9);
        File.WriteAllBytes(_dir["src/models/m/model.bin"], model);
        File.WriteAllText(_dir["src/models/m/sub/config.json"], "{\"hidden\": 64}");
        meta ??= $"sqlite://{_dir["meta.db"]}";
        Assert.Equal(0, LmfsRunner.Run(["format", meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"], env).ExitCode);
        Assert.Equal(0, LmfsRunner.Run(["import", meta, _dir["src/models/m"], "/", "--no-progress"], env).ExitCode);
        return (meta, model);
    }

    /// <summary>SIGKILL to the daemon of a staged volume, as the OOM killer sends it.</summary>
    private static void KillDaemon(string staging)
    {
        int pid = Vfs.MountRegistry.Load(staging)!.Pid;
        Assert.Equal(0, Signals.Kill(pid, Signals.SIGKILL));
        Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{pid}"), 30_000), $"daemon {pid} did not exit");
    }

    private static bool Reads(string file, byte[] want)
    {
        try
        {
            return File.ReadAllBytes(file).AsSpan().SequenceEqual(want);
        }
        catch (IOException)
        {
            return false; // "Transport endpoint is not connected"
        }
    }

    private static readonly byte[] Config = "{\"hidden\": 64}"u8.ToArray();

    /// <summary>Detaches every mount under the test's directory (lmfs mounts, binds, the emulated node's), innermost first.</summary>
    private void UnmountAll()
    {
        string root = Fuse.FuseMount.ResolveMountPoint(_dir.Path);
        for (int round = 0; round < 20; round++)
        {
            var mine = Fuse.FuseMount.MountTable().Select(m => m.MountPoint).Where(p => p.StartsWith(root + "/", StringComparison.Ordinal)).Reverse().ToList();
            if (mine.Count == 0)
            {
                return;
            }

            foreach (var m in mine)
            {
                using var u = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("umount") { ArgumentList = { "-l", m }, RedirectStandardError = true })!;
                u.WaitForExit();
            }
        }
    }

    private static VolumeCapability ReadOnlyMany => new()
    {
        Mount = new VolumeCapability.Types.MountVolume(),
        AccessMode = new VolumeCapability.Types.AccessMode { Mode = Mode.MultiNodeReaderOnly },
    };

    private Task<CsiClient.Result<NodeStageVolumeResponse>> Stage(NodeStageVolumeRequest r) => _client.CallAsync("/csi.v1.Node/NodeStageVolume", r, NodeStageVolumeResponse.Parser);

    private Task<CsiClient.Result<NodeUnstageVolumeResponse>> Unstage(string id, string staging) =>
        _client.CallAsync("/csi.v1.Node/NodeUnstageVolume", new NodeUnstageVolumeRequest { VolumeId = id, StagingTargetPath = staging }, NodeUnstageVolumeResponse.Parser);

    private Task<CsiClient.Result<NodePublishVolumeResponse>> Publish(NodePublishVolumeRequest r) => _client.CallAsync("/csi.v1.Node/NodePublishVolume", r, NodePublishVolumeResponse.Parser);

    private Task<CsiClient.Result<NodeUnpublishVolumeResponse>> Unpublish(string id, string target) =>
        _client.CallAsync("/csi.v1.Node/NodeUnpublishVolume", new NodeUnpublishVolumeRequest { VolumeId = id, TargetPath = target }, NodeUnpublishVolumeResponse.Parser);

    private void Code<T>(StatusCode want, CsiClient.Result<T> got, string? messagePart = null)
    {
        Assert.True(got.Code == want, $"expected {want}, got {got.Code}: {got.Message}\n--- plugin log\n{_plugin.Log}");
        if (messagePart is not null)
        {
            Assert.Contains(messagePart, got.Message, StringComparison.Ordinal);
        }
    }

    private NodeStageVolumeRequest StageRequest(string meta, string staging, string id = "vol-1") => new()
    {
        VolumeId = id,
        StagingTargetPath = staging,
        VolumeCapability = ReadOnlyMany,
        VolumeContext = { ["metaUrl"] = meta },
    };

    private static NodePublishVolumeRequest PublishRequest(string staging, string target, string? subPath = null, string id = "vol-1")
    {
        var r = new NodePublishVolumeRequest { VolumeId = id, StagingTargetPath = staging, TargetPath = target, VolumeCapability = ReadOnlyMany, Readonly = true };
        if (subPath is not null)
        {
            r.VolumeContext["subPath"] = subPath;
        }

        return r;
    }

    [Fact]
    public async Task Identity_and_node_info_answer_as_the_spec_asks()
    {
        var info = await _client.CallAsync("/csi.v1.Identity/GetPluginInfo", new GetPluginInfoRequest(), GetPluginInfoResponse.Parser);
        Code(StatusCode.OK, info);
        Assert.Equal("csi.lazymodelfs.io", info.Reply!.Name);
        Assert.False(string.IsNullOrEmpty(info.Reply.VendorVersion));

        var caps = await _client.CallAsync("/csi.v1.Identity/GetPluginCapabilities", new GetPluginCapabilitiesRequest(), GetPluginCapabilitiesResponse.Parser);
        Code(StatusCode.OK, caps);
        Assert.Empty(caps.Reply!.Capabilities); // no Controller service: volumes are provisioned statically

        var probe = await _client.CallAsync("/csi.v1.Identity/Probe", new ProbeRequest(), ProbeResponse.Parser);
        Code(StatusCode.OK, probe);
        Assert.True(probe.Reply!.Ready);

        var node = await _client.CallAsync("/csi.v1.Node/NodeGetCapabilities", new NodeGetCapabilitiesRequest(), NodeGetCapabilitiesResponse.Parser);
        Assert.Equal([NodeServiceCapability.Types.RPC.Types.Type.StageUnstageVolume], node.Reply!.Capabilities.Select(c => c.Rpc.Type));

        var nodeInfo = await _client.CallAsync("/csi.v1.Node/NodeGetInfo", new NodeGetInfoRequest(), NodeGetInfoResponse.Parser);
        Assert.Equal("node-1", nodeInfo.Reply!.NodeId);

        // Not ours: the Controller service, and bytes that are not a protobuf message.
        Code(StatusCode.Unimplemented, await _client.CallAsync("/csi.v1.Controller/CreateVolume", new GetPluginInfoRequest(), GetPluginInfoResponse.Parser));
        Code(StatusCode.InvalidArgument, await _client.SendAsync("/csi.v1.Node/NodeStageVolume", [0, 0, 0, 0, 3, 0xFF, 0xFF, 0xFF], NodeStageVolumeResponse.Parser));
    }

    [Fact]
    public async Task Missing_and_invalid_fields_get_the_specs_error_codes()
    {
        string staging = Kubelet("plugins/lmfs/pv1/globalmount");
        string target = Kubelet("pods/uid1/volumes/pv1/mount");
        string meta = $"sqlite://{_dir["meta.db"]}";

        Code(StatusCode.InvalidArgument, await Stage(StageRequest(meta, staging, id: "")), "volume_id");
        Code(StatusCode.InvalidArgument, await Stage(StageRequest(meta, "")), "staging_target_path");
        var noCap = StageRequest(meta, staging);
        noCap.VolumeCapability = null;
        Code(StatusCode.InvalidArgument, await Stage(noCap), "volume_capability");
        var block = StageRequest(meta, staging);
        block.VolumeCapability = new VolumeCapability { Block = new VolumeCapability.Types.BlockVolume(), AccessMode = ReadOnlyMany.AccessMode };
        Code(StatusCode.InvalidArgument, await Stage(block), "block");
        var writer = StageRequest(meta, staging);
        writer.VolumeCapability.AccessMode.Mode = Mode.SingleNodeWriter;
        Code(StatusCode.InvalidArgument, await Stage(writer), "read-only");
        var noMeta = StageRequest(meta, staging);
        noMeta.VolumeContext.Clear();
        Code(StatusCode.InvalidArgument, await Stage(noMeta), "metaUrl");
        var badKey = StageRequest(meta, staging);
        badKey.VolumeContext["cacheSzie"] = "1G";
        Code(StatusCode.InvalidArgument, await Stage(badKey), "cacheSzie");
        var badSecret = StageRequest(meta, staging);
        badSecret.Secrets["password"] = "hunter2";
        var r = await Stage(badSecret);
        Code(StatusCode.InvalidArgument, r, "secret key 'password'");
        Assert.DoesNotContain("hunter2", r.Message + _plugin.Log, StringComparison.Ordinal);

        // A volume that does not exist: NOT_FOUND, and nothing is mounted.
        Code(StatusCode.NotFound, await Stage(StageRequest(meta, staging)));
        Assert.Null(Fuse.FuseMount.MountTypeAt(staging));

        // Publish before stage, and without a staging path.
        Code(StatusCode.FailedPrecondition, await Publish(PublishRequest(staging, target)), "not staged");
        var noStaging = PublishRequest(staging, target);
        noStaging.StagingTargetPath = "";
        Code(StatusCode.FailedPrecondition, await Publish(noStaging), "staging_target_path");
        Code(StatusCode.InvalidArgument, await Publish(PublishRequest(staging, "")), "target_path");
        Code(StatusCode.InvalidArgument, await Unpublish("vol-1", ""), "target_path");
        Code(StatusCode.InvalidArgument, await Unstage("", staging), "volume_id");

        // Undoing what was never done succeeds (idempotent).
        Code(StatusCode.OK, await Unpublish("vol-1", target));
        Code(StatusCode.OK, await Unstage("vol-1", staging));
    }

    [Fact]
    public async Task Out_of_range_mount_attributes_are_invalid_argument_naming_the_attribute()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        Assert.Equal(0, LmfsRunner.Run("format", meta, "--storage", $"file://{_dir["objects"]}").ExitCode);
        string staging = Kubelet("plugins/lmfs/pv1/globalmount");
        foreach (var (key, value, message) in new[]
        {
            ("entryTimeout", "1e12", "volume attribute entryTimeout: --entry-timeout 1e12 is out of range: use 0 to 31536000 seconds"),
            ("fetchTimeout", "10000000", "volume attribute fetchTimeout: --fetch-timeout 10000000 is out of range: use 0.1 to 86400 seconds"),
            ("maxFetches", "0", "volume attribute maxFetches: --max-fetches 0 is out of range: use 1 to 256"),
            ("cacheSize", "lots", "volume attribute cacheSize: --cache-size 'lots' is not a size"),
        })
        {
            var stage = StageRequest(meta, staging);
            stage.VolumeContext[key] = value;
            Code(StatusCode.InvalidArgument, await Stage(stage), message);
            Assert.Null(Fuse.FuseMount.MountTypeAt(staging));
        }
    }

    [Fact]
    public async Task Paths_that_escape_their_parent_are_refused()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        Code(StatusCode.InvalidArgument, await Stage(StageRequest(meta, Kubelet("plugins/../../../etc"))), "'..'");
        Code(StatusCode.InvalidArgument, await Stage(StageRequest(meta, "/etc/lmfs-staging")), "outside the kubelet directory");
        Code(StatusCode.InvalidArgument, await Stage(StageRequest(meta, "plugins/relative")), "absolute");

        // A symbolic link planted where a pod's target path goes must not redirect the mount (or the removal).
        Directory.CreateDirectory(Kubelet("pods/uid2/volumes"));
        string outside = _dir["outside"];
        Directory.CreateDirectory(outside);
        File.CreateSymbolicLink(Kubelet("pods/uid2/volumes/pv1"), outside);
        Code(StatusCode.InvalidArgument, await Publish(PublishRequest(Kubelet("plugins/x/globalmount"), Kubelet("pods/uid2/volumes/pv1/mount"))), "symbolic link");
        Code(StatusCode.InvalidArgument, await Unpublish("vol-1", Kubelet("pods/uid2/volumes/pv1")), "symbolic link");
        Assert.True(Directory.Exists(outside));
    }

    [MountFact]
    public async Task Stage_and_publish_mount_a_volume_that_pods_read_bit_for_bit_and_survive_a_plugin_restart()
    {
        // A volume with a model, a sub-directory and a symlink that points out of the volume.
        Directory.CreateDirectory(_dir["src/models/m/sub"]);
        var model = TestData.Random((3 << 20) + 777, 9);
        File.WriteAllBytes(_dir["src/models/m/model.bin"], model);
        File.WriteAllText(_dir["src/models/m/sub/config.json"], "{\"hidden\": 64}");
        File.CreateSymbolicLink(_dir["src/models/m/escape"], "/etc");
        string meta = $"sqlite://{_dir["meta.db"]}";
        Assert.Equal(0, LmfsRunner.Run("format", meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M").ExitCode);
        Assert.Equal(0, LmfsRunner.Run("import", meta, _dir["src/models/m"], "/", "--no-progress").ExitCode);

        string staging = Kubelet("plugins/kubernetes.io/csi/csi.lazymodelfs.io/abc/globalmount");
        Directory.CreateDirectory(staging);
        string podDir = Kubelet("pods/uid1/volumes/kubernetes.io~csi/pv1");
        Directory.CreateDirectory(podDir);
        string target = Path.Combine(podDir, "mount");
        var stage = StageRequest(meta, staging);
        stage.VolumeContext["bufferSize"] = "16M";
        try
        {
            Code(StatusCode.OK, await Stage(stage));
            Assert.Equal("fuse.lazymodelfs", Fuse.FuseMount.MountTypeAt(staging));
            Code(StatusCode.OK, await Stage(stage)); // idempotent
            Code(StatusCode.AlreadyExists, await Stage(StageRequest(meta, staging, id: "vol-2")));

            Code(StatusCode.OK, await Publish(PublishRequest(staging, target)));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, target))); // idempotent
            Assert.Equal(model, File.ReadAllBytes(Path.Combine(target, "m/model.bin")));
            Assert.ThrowsAny<Exception>(() => File.WriteAllText(Path.Combine(target, "m/new.txt"), "x")); // read-only
            var rw = PublishRequest(staging, target);
            rw.Readonly = false;
            Code(StatusCode.OK, await Publish(rw)); // the volume is read-only either way: same mount, idempotent
            Code(StatusCode.AlreadyExists, await Publish(PublishRequest(staging, target, subPath: "m/sub"))); // same target, another sub-path

            // A sub-path of the volume; sub-paths that leave the volume are refused.
            string target2 = Kubelet("pods/uid2/mount");
            Directory.CreateDirectory(Kubelet("pods/uid2"));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, target2, subPath: "m/sub")));
            Assert.Equal("{\"hidden\": 64}", File.ReadAllText(Path.Combine(target2, "config.json")));
            Code(StatusCode.InvalidArgument, await Publish(PublishRequest(staging, Kubelet("pods/uid2/m3"), subPath: "m/../../")), "'..'");
            Code(StatusCode.InvalidArgument, await Publish(PublishRequest(staging, Kubelet("pods/uid2/m4"), subPath: "m/escape")), "out of the volume");
            Code(StatusCode.NotFound, await Publish(PublishRequest(staging, Kubelet("pods/uid2/m5"), subPath: "m/absent")));
            Assert.False(Directory.Exists(Kubelet("pods/uid2/m4")));

            // The plugin dies and comes back: the staged volume kept serving, and new pods get it.
            int daemon = Vfs.MountRegistry.Load(staging)!.Pid;
            _plugin.Kill();
            Assert.Equal(model, File.ReadAllBytes(Path.Combine(target, "m/model.bin")));
            using (var restarted = new CsiPluginProcess(_dir.Path))
            using (var client = new CsiClient(restarted.Socket))
            {
                Assert.True(SpinWait.SpinUntil(() => restarted.Log.Contains("is staged at", StringComparison.Ordinal), 10_000), restarted.Log);
                string target3 = Kubelet("pods/uid3/mount");
                Directory.CreateDirectory(Kubelet("pods/uid3"));
                Code(StatusCode.OK, await client.CallAsync("/csi.v1.Node/NodePublishVolume", PublishRequest(staging, target3), NodePublishVolumeResponse.Parser));
                Assert.Equal(model, File.ReadAllBytes(Path.Combine(target3, "m/model.bin")));

                foreach (var t in new[] { target, target2, target3 })
                {
                    Code(StatusCode.OK, await client.CallAsync("/csi.v1.Node/NodeUnpublishVolume", new NodeUnpublishVolumeRequest { VolumeId = "vol-1", TargetPath = t }, NodeUnpublishVolumeResponse.Parser));
                    Code(StatusCode.OK, await client.CallAsync("/csi.v1.Node/NodeUnpublishVolume", new NodeUnpublishVolumeRequest { VolumeId = "vol-1", TargetPath = t }, NodeUnpublishVolumeResponse.Parser));
                    Assert.Null(Fuse.FuseMount.MountTypeAt(t));
                    Assert.False(Directory.Exists(t)); // the plugin removes the target it created
                }

                Code(StatusCode.OK, await client.CallAsync("/csi.v1.Node/NodeUnstageVolume", new NodeUnstageVolumeRequest { VolumeId = "vol-1", StagingTargetPath = staging }, NodeUnstageVolumeResponse.Parser));
                Code(StatusCode.OK, await client.CallAsync("/csi.v1.Node/NodeUnstageVolume", new NodeUnstageVolumeRequest { VolumeId = "vol-1", StagingTargetPath = staging }, NodeUnstageVolumeResponse.Parser));
                Assert.Null(Fuse.FuseMount.MountTypeAt(staging));
                Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{daemon}"), 10_000), "the mount daemon did not exit");
            }
        }
        finally
        {
            UnmountAll();
        }
    }

    [Fact]
    public async Task A_meta_url_with_credentials_is_refused_and_never_repeated()
    {
        string staging = Kubelet("plugins/lmfs/pv9/globalmount");
        foreach (var url in new[] { "redis://:hunter2/x@127.0.0.1:1/0", $"redis://:hunter2%2Fx@127.0.0.1:{Ports.Free()}/0" })
        {
            var r = await Stage(StageRequest(url, staging));
            Code(StatusCode.InvalidArgument, r, "carries credentials");
            Assert.Contains("LMFS_REDIS_PASSWORD", r.Message, StringComparison.Ordinal);
            Assert.DoesNotContain("hunter2", r.Message + _plugin.Log, StringComparison.Ordinal);
        }

        Assert.Null(Fuse.FuseMount.MountTypeAt(staging));
    }

    [MountFact]
    public async Task A_staged_volume_whose_daemon_died_is_staged_again_and_its_targets_bound_again()
    {
        Restart(null, "--heal-interval", "0"); // only the CO's calls, no watch
        var (meta, model) = FormattedVolume();
        string staging = Kubelet("plugins/kubernetes.io/csi/csi.lazymodelfs.io/r1/globalmount");
        Directory.CreateDirectory(staging);
        var targets = new[] { "uid1", "uid2", "uid3" }.Select(u => Directory.CreateDirectory(Kubelet("pods/" + u)).FullName + "/mount").ToArray();
        try
        {
            Code(StatusCode.OK, await Stage(StageRequest(meta, staging)));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, targets[0])));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, targets[1], subPath: "m/sub")));

            KillDaemon(staging);
            Assert.False(Reads(Path.Combine(targets[0], "m/model.bin"), model));
            Code(StatusCode.OK, await Stage(StageRequest(meta, staging))); // was INTERNAL "… globalmount already exists", forever
            Assert.True(Reads(Path.Combine(staging, "m/model.bin"), model));
            Assert.True(Reads(Path.Combine(targets[0], "m/model.bin"), model), _plugin.Log); // bound again, on top of the dead bind
            Assert.True(Reads(Path.Combine(targets[1], "config.json"), Config), _plugin.Log);
            Assert.Contains("mounting the volume again", _plugin.Log, StringComparison.Ordinal);

            // The kubelet only publishes a staged volume: a new pod after the daemon died must work too.
            KillDaemon(staging);
            Code(StatusCode.OK, await Publish(PublishRequest(staging, targets[2]))); // was FAILED_PRECONDITION
            Assert.True(Reads(Path.Combine(targets[2], "m/model.bin"), model));
            Assert.True(Reads(Path.Combine(targets[0], "m/model.bin"), model));
            int daemon = Vfs.MountRegistry.Load(staging)!.Pid;

            foreach (var t in targets)
            {
                Code(StatusCode.OK, await Unpublish("vol-1", t)); // every layer goes: the dead binds and the new one
                Assert.Null(Fuse.FuseMount.MountTypeAt(t));
                Assert.False(Directory.Exists(t));
            }

            Code(StatusCode.OK, await Unstage("vol-1", staging));
            Assert.Null(Fuse.FuseMount.MountTypeAt(staging));
            Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{daemon}"), 10_000), "the mount daemon did not exit");
        }
        finally
        {
            UnmountAll();
        }
    }

    [MountFact]
    public async Task The_plugin_mounts_a_dead_daemon_again_by_itself_and_host_to_container_pods_see_it()
    {
        // As on a node: the kubelet directory is a shared mount (the plugin's Bidirectional propagation needs it).
        string kubelet = _dir["kubelet"];
        Proc.Run("mount", "--bind", kubelet, kubelet);
        Proc.Run("mount", "--make-shared", kubelet);
        try
        {
            Restart(null, "--heal-interval", "1");
            var (meta, model) = FormattedVolume();
            string staging = Kubelet("plugins/kubernetes.io/csi/csi.lazymodelfs.io/h1/globalmount");
            Directory.CreateDirectory(staging);
            string t1 = Directory.CreateDirectory(Kubelet("pods/uid1")).FullName + "/mount";
            string t2 = Directory.CreateDirectory(Kubelet("pods/uid2")).FullName + "/mount";
            Code(StatusCode.OK, await Stage(StageRequest(meta, staging)));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, t1)));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, t2, subPath: "m/sub")));

            // Two containers' views of pod 1's volume, as the runtime makes them: mountPropagation
            // HostToContainer (rslave) and the default None (rprivate).
            string hostToContainer = Directory.CreateDirectory(_dir["ctr-h2c"]).FullName, none = Directory.CreateDirectory(_dir["ctr-none"]).FullName;
            Proc.Run("mount", "--rbind", t1, hostToContainer);
            Proc.Run("mount", "--make-rslave", hostToContainer);
            Proc.Run("mount", "--rbind", t1, none);
            Proc.Run("mount", "--make-rprivate", none);
            string hostToContainerSub = Directory.CreateDirectory(_dir["ctr-h2c-sub"]).FullName; // pod 2: a subPath
            Proc.Run("mount", "--rbind", t2, hostToContainerSub);
            Proc.Run("mount", "--make-rslave", hostToContainerSub);
            Assert.True(Reads(Path.Combine(none, "m/model.bin"), model));

            KillDaemon(staging);
            Assert.True(SpinWait.SpinUntil(() => Reads(Path.Combine(t1, "m/model.bin"), model), 60_000), "the plugin did not mount the volume again:\n" + _plugin.Log);
            Assert.True(Reads(Path.Combine(hostToContainer, "m/model.bin"), model), _plugin.Log);
            Assert.True(SpinWait.SpinUntil(() => Reads(Path.Combine(t2, "config.json"), Config), 10_000), _plugin.Log);
            Assert.True(Reads(Path.Combine(hostToContainerSub, "config.json"), Config), _plugin.Log);
            Assert.False(Reads(Path.Combine(none, "m/model.bin"), model)); // without propagation a pod keeps the dead mount: it must be restarted

            // One pod leaving takes nothing from the staged volume or the other pods (no unmount propagates back).
            Code(StatusCode.OK, await Unpublish("vol-1", t1));
            Assert.True(Reads(Path.Combine(staging, "m/model.bin"), model));
            Assert.True(Reads(Path.Combine(t2, "config.json"), Config));

            // A restarted plugin finds the records and heals from them (this volume needs no secrets).
            Restart(null, "--heal-interval", "1");
            KillDaemon(staging);
            Assert.True(SpinWait.SpinUntil(() => Reads(Path.Combine(t2, "config.json"), Config), 60_000), "the restarted plugin did not mount the volume again:\n" + _plugin.Log);

            Code(StatusCode.OK, await Unpublish("vol-1", t2));
            Code(StatusCode.OK, await Unstage("vol-1", staging));
            Assert.Null(Fuse.FuseMount.MountTypeAt(staging));
        }
        finally
        {
            UnmountAll();
        }
    }

    [MountFact]
    public async Task A_volume_that_needs_secrets_is_mounted_again_while_the_plugin_knows_them_and_refused_clearly_after_a_restart()
    {
        const string Password = "Rk9-secret/pw";
        using var redis = new RedisServer(Password);
        var (meta, model) = FormattedVolume($"redis://127.0.0.1:{redis.Port}/0?volume=sec", new() { ["LMFS_REDIS_PASSWORD"] = Password });
        Restart(null, "--heal-interval", "0");
        string staging = Kubelet("plugins/kubernetes.io/csi/csi.lazymodelfs.io/s1/globalmount");
        Directory.CreateDirectory(staging);
        var targets = new[] { "uid1", "uid2", "uid3" }.Select(u => Directory.CreateDirectory(Kubelet("pods/" + u)).FullName + "/mount").ToArray();
        var stage = StageRequest(meta, staging);
        stage.Secrets["LMFS_REDIS_PASSWORD"] = Password;
        var logs = new System.Text.StringBuilder();
        try
        {
            Code(StatusCode.OK, await Stage(stage));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, targets[0])));
            Assert.True(Reads(Path.Combine(targets[0], "m/model.bin"), model));

            KillDaemon(staging);
            Code(StatusCode.OK, await Publish(PublishRequest(staging, targets[1]))); // mounted again with the secret it kept in memory
            Assert.True(Reads(Path.Combine(targets[1], "m/model.bin"), model));
            Assert.True(Reads(Path.Combine(targets[0], "m/model.bin"), model));
            int pid = Vfs.MountRegistry.Load(staging)!.Pid;
            Assert.DoesNotContain(Password, File.ReadAllText($"/proc/{pid}/cmdline"), StringComparison.Ordinal);

            logs.Append(_plugin.Log);
            Restart(null, "--heal-interval", "0"); // the secret is gone with the process
            KillDaemon(staging);
            var refused = await Publish(PublishRequest(staging, targets[2]));
            Code(StatusCode.FailedPrecondition, refused, "node-stage secrets are not known");
            Assert.Contains("delete the pods", refused.Message, StringComparison.Ordinal);

            Code(StatusCode.OK, await Stage(stage)); // what the kubelet does once the pods are gone: stage again, with the secret
            Code(StatusCode.OK, await Publish(PublishRequest(staging, targets[2])));
            Assert.True(Reads(Path.Combine(targets[2], "m/model.bin"), model));
            Assert.True(Reads(Path.Combine(targets[0], "m/model.bin"), model));
            foreach (var t in targets)
            {
                Code(StatusCode.OK, await Unpublish("vol-1", t));
            }

            Code(StatusCode.OK, await Unstage("vol-1", staging));
            logs.Append(_plugin.Log);
            foreach (var f in Directory.EnumerateFiles(_dir["log"]).Concat(Directory.EnumerateFiles(_dir["state"], "*.json", SearchOption.AllDirectories)))
            {
                logs.Append(File.ReadAllText(f));
            }

            Assert.DoesNotContain(Password, logs.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            UnmountAll();
        }
    }

    [MountFact]
    public async Task A_kubelet_directory_behind_a_symlink_is_staged_once_published_and_unstaged()
    {
        string link = _dir["kubelet-link"];
        File.CreateSymbolicLink(link, _dir["kubelet"]);
        Restart(link, "--heal-interval", "0");
        var (meta, _) = FormattedVolume();
        string staging = Path.Combine(link, "plugins/x/globalmount");
        Directory.CreateDirectory(staging);
        Directory.CreateDirectory(Path.Combine(link, "pods/uid1"));
        string target = Path.Combine(link, "pods/uid1/mount");
        try
        {
            Code(StatusCode.OK, await Stage(StageRequest(meta, staging)));
            Code(StatusCode.OK, await Stage(StageRequest(meta, staging))); // idempotent: no second daemon
            Assert.Single(Fuse.FuseMount.MountTable(), e => e.MountPoint == Kubelet("plugins/x/globalmount"));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, target, subPath: "m/sub")));
            Assert.True(Reads(Path.Combine(target, "config.json"), Config));
            Code(StatusCode.OK, await Unpublish("vol-1", target));
            Assert.Null(Fuse.FuseMount.MountTypeAt(Kubelet("pods/uid1/mount")));
            Code(StatusCode.OK, await Unstage("vol-1", staging));
            Assert.Null(Fuse.FuseMount.MountTypeAt(Kubelet("plugins/x/globalmount")));
        }
        finally
        {
            UnmountAll();
        }
    }

    [MountFact]
    public async Task Metrics_serve_the_plugins_calls_and_each_staged_volumes_mount_counters_by_volume_id()
    {
        var (meta, model) = FormattedVolume();
        int port = Ports.Free();
        string url = $"http://127.0.0.1:{port}/metrics";
        Restart(null, "--metrics", $"127.0.0.1:{port}");
        var empty = await PrometheusScrape.ScrapeAsync(url);
        Assert.Equal(1, empty.Sum("lmfs_csi_build_info"));
        Assert.Equal(0, empty.Value("lmfs_csi_volumes_staged"));
        Assert.False(empty.Has("lmfs_reads_total"));

        string staging = Kubelet("plugins/kubernetes.io/csi/csi.lazymodelfs.io/m1/globalmount");
        Directory.CreateDirectory(staging);
        Directory.CreateDirectory(Kubelet("pods/uid1"));
        string target = Kubelet("pods/uid1/mount");
        try
        {
            var noMeta = StageRequest(meta, staging);
            noMeta.VolumeContext.Clear();
            Code(StatusCode.InvalidArgument, await Stage(noMeta));
            Code(StatusCode.OK, await Stage(StageRequest(meta, staging)));
            Code(StatusCode.OK, await Publish(PublishRequest(staging, target)));
            Assert.Equal(model, File.ReadAllBytes(Path.Combine(target, "m/model.bin")));

            var s = await PrometheusScrape.ScrapeAsync(url);
            Assert.Equal(1, s.Value("lmfs_csi_operations_total", ("operation", "NodeStageVolume"), ("code", "OK")));
            Assert.Equal(1, s.Value("lmfs_csi_operations_total", ("operation", "NodeStageVolume"), ("code", "InvalidArgument")));
            Assert.Equal(1, s.Value("lmfs_csi_errors_total", ("operation", "NodeStageVolume")));
            Assert.Equal(1, s.Value("lmfs_csi_operations_total", ("operation", "NodePublishVolume"), ("code", "OK")));
            Assert.Equal(1, s.Value("lmfs_csi_volumes_staged"));
            Assert.Equal(1, s.Value("lmfs_csi_volumes_published"));
            Assert.Equal(0, s.Value("lmfs_csi_mount_stats_unavailable"));

            // The staged volume's own daemon counters, labelled with its volume id.
            Assert.Equal(model.Length, s.Value("lmfs_read_bytes_total", ("volume_id", "vol-1")));
            Assert.Equal(model.Length, s.Sum("lmfs_served_bytes_total", ("volume_id", "vol-1")));
            Assert.True(s.Value("lmfs_store_fetch_seconds_count", ("volume_id", "vol-1")) >= 1);
            Assert.Equal(1, s.Sum("lmfs_build_info", ("volume_id", "vol-1")));

            Code(StatusCode.OK, await Unpublish("vol-1", target));
            Code(StatusCode.OK, await Unstage("vol-1", staging));
            var after = await PrometheusScrape.ScrapeAsync(url);
            Assert.Equal(0, after.Value("lmfs_csi_volumes_staged"));
            Assert.Equal(0, after.Value("lmfs_csi_volumes_published"));
            Assert.False(after.Has("lmfs_reads_total"));
            Assert.Equal(1, after.Value("lmfs_csi_operations_total", ("operation", "NodeUnstageVolume"), ("code", "OK")));
        }
        finally
        {
            UnmountAll();
        }
    }

    [Fact]
    public void A_metrics_address_that_is_malformed_or_taken_stops_the_plugin_with_exit_2()
    {
        string socket = _dir["plugin2/csi.sock"];
        var bad = LmfsRunner.Run("csi", "--endpoint", "unix://" + socket, "--state-dir", _dir["state2"], "--metrics", "localhost");
        Assert.True(bad.ExitCode == 2, bad.ToString());
        Assert.Contains("--metrics 'localhost' is not ADDR:PORT", bad.Stderr, StringComparison.Ordinal);

        using var taken = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        taken.Start();
        int port = ((System.Net.IPEndPoint)taken.LocalEndpoint).Port;
        var r = LmfsRunner.Run(["csi", "--endpoint", "unix://" + socket, "--state-dir", _dir["state2"], "--kubelet-dir", Kubelet(""), "--metrics", $"127.0.0.1:{port}"], timeout: TimeSpan.FromSeconds(60));
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains($"cannot listen for --metrics on 127.0.0.1:{port}: the address is already in use", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(socket));
    }

    public void Dispose()
    {
        _client.Dispose();
        _plugin.Dispose();
        _dir.Dispose();
    }
}
