using LazyModelFs.Csi.Grpc;
using LazyModelFs.Csi.V1;
using LazyModelFs.Testing;
using Xunit;
using Mode = LazyModelFs.Csi.V1.VolumeCapability.Types.AccessMode.Types.Mode;

namespace LazyModelFs.Tests.Csi;

/// <summary>
/// The CSI node plugin as the kubelet sees it: `lmfs csi` in its own process, called over its unix
/// socket with gRPC (HTTP/2). Every RPC, idempotency, the error codes the spec names, refused paths,
/// and a real stage + publish that mounts a volume and reads it through the pod's target path.
/// </summary>
public sealed class CsiTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-csi");
    private readonly CsiPluginProcess _plugin;
    private readonly CsiClient _client;

    public CsiTests()
    {
        _plugin = new CsiPluginProcess(_dir.Path);
        _client = new CsiClient(_plugin.Socket);
        Directory.CreateDirectory(Kubelet("pods"));
        Directory.CreateDirectory(Kubelet("plugins"));
    }

    private string Kubelet(string rel) => Path.Combine(_dir.Path, "kubelet", rel);

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
            int daemon = Vfs.MountState.Load(staging)!.Pid;
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
            foreach (var m in File.ReadAllLines("/proc/mounts").Select(l => l.Split(' ')[1]).Where(p => p.StartsWith(_dir.Path, StringComparison.Ordinal)).Reverse())
            {
                LmfsRunner.Run("umount", m);
            }
        }
    }

    public void Dispose()
    {
        _client.Dispose();
        _plugin.Dispose();
        _dir.Dispose();
    }
}
