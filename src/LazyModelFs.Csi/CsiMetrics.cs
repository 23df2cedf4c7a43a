using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using LazyModelFs.Csi.Grpc;
using LazyModelFs.Fuse;
using LazyModelFs.Metrics;
using LazyModelFs.Vfs;

namespace LazyModelFs.Csi;

/// <summary>
/// What `lmfs csi --metrics` serves: the plugin's own counters (node RPCs by result, remounts of dead
/// daemons, volumes staged and published) and, labelled <c>volume_id</c>, the mount families of every
/// staged volume (<see cref="MountMetrics"/>), read at scrape time from each daemon's control socket:
/// the same stats <c>lmfs stats</c> shows, one set of counters. The daemons are separate processes
/// that outlive the plugin, so the plugin keeps no copy of them; a daemon that does not answer within
/// <see cref="MountTimeout"/> is left out of that scrape and counted in <c>lmfs_csi_mount_stats_unavailable</c>.
/// Each daemon's counters start at zero when it is mounted again (Prometheus' rate() takes that as a reset).
/// </summary>
internal sealed class CsiMetrics
{
    public static readonly TimeSpan MountTimeout = TimeSpan.FromSeconds(3);

    private readonly ConcurrentDictionary<(string Operation, StatusCode Code), StrongBox<long>> _calls = new();
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private long _remounts, _remountFailures;

    /// <summary>Counts one node RPC and how it ended.</summary>
    public void Call(string operation, StatusCode code) => Interlocked.Increment(ref _calls.GetOrAdd((operation, code), _ => new StrongBox<long>()).Value);

    public void Remounted(bool ok) => Interlocked.Increment(ref ok ? ref _remounts : ref _remountFailures);

    /// <summary>The page: plugin families, then the staged volumes' mount families.</summary>
    public async Task<string> RenderAsync(IReadOnlyList<(string VolumeId, string Staging)> staged, int published, CancellationToken ct)
    {
        var mounts = await Task.WhenAll(staged.Select(s => MountStatsAsync(s.VolumeId, s.Staging, ct))).ConfigureAwait(false);
        var calls = _calls.OrderBy(kv => kv.Key.Operation, StringComparer.Ordinal).ThenBy(kv => kv.Key.Code).Select(kv => (kv.Key, Value: Interlocked.Read(ref kv.Value.Value))).ToList();

        var w = new PrometheusText();
        w.Family("lmfs_csi_build_info", "gauge", "The lmfs version of the CSI node plugin (always 1).", [(new Labels(("version", MountHost.Version)), 1)]);
        w.Family("lmfs_csi_start_time_seconds", "gauge", "When the plugin process started, in seconds since the Unix epoch.", [(Labels.None, _started.ToUnixTimeMilliseconds() / 1000.0)]);
        w.Family("lmfs_csi_operations_total", "counter", "Node RPCs answered, by operation and gRPC status code (OK, InvalidArgument, ...).",
            calls.Select(c => (new Labels(("operation", c.Key.Operation), ("code", c.Key.Code.ToString())), (double)c.Value)));
        w.Family("lmfs_csi_errors_total", "counter", "Node RPCs answered with an error (any code but OK), by operation.",
            calls.Where(c => c.Key.Code != StatusCode.OK).GroupBy(c => c.Key.Operation, StringComparer.Ordinal).Select(g => (new Labels(("operation", g.Key)), (double)g.Sum(c => c.Value))));
        w.Family("lmfs_csi_remounts_total", "counter", "Staged volumes whose daemon had died and that the plugin mounted again (result ok), or failed to (result failed).",
            [(new Labels(("result", "ok")), Interlocked.Read(ref _remounts)), (new Labels(("result", "failed")), Interlocked.Read(ref _remountFailures))]);
        w.Family("lmfs_csi_volumes_staged", "gauge", "Volumes staged on this node (the plugin's stage records).", [(Labels.None, staged.Count)]);
        w.Family("lmfs_csi_volumes_published", "gauge", "Pod targets published on this node (the plugin's publish records).", [(Labels.None, published)]);
        w.Family("lmfs_csi_mount_stats_unavailable", "gauge", "Staged volumes whose mount daemon did not answer for this scrape (dead, hung, or not mounted).", [(Labels.None, mounts.Count(m => m.Stats is null))]);
        MountMetrics.Write(w, mounts.Where(m => m.Stats is not null).Select(m => (new Labels(("volume_id", m.VolumeId)), m.Stats!)).ToList());
        return w.ToString();
    }

    private static async Task<(string VolumeId, JsonObject? Stats)> MountStatsAsync(string volumeId, string staging, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(MountTimeout);
        try
        {
            // Resolving the path may touch the mount (a hung daemon): off the caller's thread, bounded like the rest.
            var socket = await Task.Run(() => MountRegistry.ControlSocketFor(FuseMount.ResolveMountPoint(staging)), CancellationToken.None).WaitAsync(timeout.Token).ConfigureAwait(false);
            return (volumeId, await MountClient.StatsAsync(socket, timeout.Token).ConfigureAwait(false));
        }
        catch (Exception ex) when (ex is Util.LmfsException or OperationCanceledException or IOException)
        {
            return (volumeId, null);
        }
    }
}
