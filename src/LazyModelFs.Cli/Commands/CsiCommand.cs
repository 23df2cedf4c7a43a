using System.CommandLine;
using LazyModelFs.Csi;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Cli.Commands;

internal static class CsiCommand
{
    public static Command Build()
    {
        var endpoint = new Option<string?>("--endpoint") { Description = "Socket to serve: unix:///csi/csi.sock (default: $CSI_ENDPOINT)" };
        var nodeId = new Option<string?>("--node-id") { Description = "This node's name (default: $NODE_ID, else the host name)" };
        var kubeletDir = new Option<string>("--kubelet-dir") { Description = "Staging and target paths must lie under this directory", DefaultValueFactory = _ => "/var/lib/kubelet" };
        var cacheDir = new Option<string>("--cache-dir") { Description = "The node's chunk cache, shared by every volume staged here (volumeAttributes cacheDir overrides)", DefaultValueFactory = _ => "/var/cache/lmfs" };
        var stateDir = new Option<string>("--state-dir") { Description = "Where the plugin records staged volumes (no secrets), to find them after a restart", DefaultValueFactory = _ => "/var/lib/lmfs-csi" };
        var logDir = new Option<string>("--log-dir") { Description = "Logs of the mount daemons", DefaultValueFactory = _ => "/var/log/lmfs" };
        var healInterval = Numeric.Number("--heal-interval", "Seconds between checks that staged volumes' mount daemons live; a dead one is mounted again and pods' targets bound again (0: only at stage and publish)", 10, 0, 3600, "seconds");
        var metrics = Common.MetricsOption("the plugin's calls and every staged volume's mount counters, labelled volume_id");
        var cmd = new Command("csi", "Run the Container Storage Interface node plugin (Identity and Node services; volumes are\nprovisioned statically, so there is no Controller service). NodeStageVolume mounts a volume once per\nnode with an `lmfs mount` daemon that outlives the plugin process; NodePublishVolume bind-mounts it\n(or a sub-path) into each pod, read-only. Deployment: deploy/kubernetes/ and docs/operations.md.\n\nExample:\n  lmfs csi --endpoint unix:///csi/csi.sock --node-id $(hostname) --metrics 0.0.0.0:9567")
        {
            endpoint, nodeId, kubeletDir, cacheDir, stateDir, logDir, healInterval, metrics,
        };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            string ep = p.GetValue(endpoint) ?? Environment.GetEnvironmentVariable("CSI_ENDPOINT")
                ?? throw new LmfsException("no endpoint given", "pass --endpoint unix:///csi/csi.sock or set CSI_ENDPOINT", 2);
            if (!ep.StartsWith("unix:///", StringComparison.Ordinal))
            {
                throw new LmfsException($"endpoint '{ep}' is not a unix socket URL", "CSI plugins listen on unix sockets: unix:///csi/csi.sock", 2);
            }

            if (!Environment.IsPrivilegedProcess)
            {
                throw new LmfsException("the CSI node plugin must run as root (it mounts)", "run it privileged, as deploy/kubernetes/daemonset.yaml does", 2);
            }

            double heal = p.GetValue(healInterval);
            var options = new CsiOptions
            {
                Endpoint = ep,
                NodeId = p.GetValue(nodeId) ?? Environment.GetEnvironmentVariable("NODE_ID") ?? Environment.MachineName,
                KubeletDir = Path.GetFullPath(p.GetValue(kubeletDir)!),
                CacheDir = Path.GetFullPath(p.GetValue(cacheDir)!),
                StateDir = Path.GetFullPath(p.GetValue(stateDir)!),
                LogDir = Path.GetFullPath(p.GetValue(logDir)!),
                HealInterval = TimeSpan.FromSeconds(heal),
                Metrics = p.GetValue(metrics),
                LmfsCommand = SelfExec.Arguments([]).Prepend(Environment.ProcessPath!).ToList(),
            };
            Directory.CreateDirectory(options.LogDir);
            using var loggers = Logs.Create(p.GetValue(Cli.Verbose) ? LogLevel.Debug : LogLevel.Information);
            await CsiPlugin.RunAsync(options, loggers, ct).ConfigureAwait(false);
            return 0;
        }));
        return cmd;
    }
}
