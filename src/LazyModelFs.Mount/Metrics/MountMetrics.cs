using System.Text.Json.Nodes;

namespace LazyModelFs.Metrics;

/// <summary>
/// The mount's families for <c>/metrics</c>, read from the same stats object the control socket's
/// <c>stats</c> answers (<see cref="Vfs.MountHost.Stats"/>): one set of counters for <c>lmfs stats</c>
/// and Prometheus. Several mounts (the CSI plugin's staged volumes) are written as one family each,
/// told apart by their labels. Names and meanings are listed in docs/operations.md, "Metrics".
/// </summary>
public static class MountMetrics
{
    private const string Counter = "counter", Gauge = "gauge";

    /// <summary>(name, type, help, stats key, extra labels): one sample per mount whose stats carry the key.</summary>
    private static readonly (string Name, string Type, string Help, (string Key, Labels Extra)[] Keys)[] Families =
    [
        ("lmfs_reads_total", Counter, "READ requests the daemon answered with data (the kernel's page cache answers the rest without it).", [("reads", Labels.None)]),
        ("lmfs_read_bytes_total", Counter, "Bytes the daemon's READ answers carried to the kernel.", [("readBytes", Labels.None)]),
        ("lmfs_read_errors_total", Counter, "READ requests answered with an error (EIO, ...).", [("readErrors", Labels.None)]),
        ("lmfs_served_bytes_total", Counter, "Bytes of READ answers by the tier that held the chunk when the READ asked: memory (a hit), disk (the READ waited for the disk cache), store (the READ waited for the object store). The tiers sum to lmfs_read_bytes_total.",
            [("servedMemoryBytes", new Labels(("tier", "memory"))), ("servedDiskBytes", new Labels(("tier", "disk"))), ("servedStoreBytes", new Labels(("tier", "store")))]),
        ("lmfs_store_fetches_total", Counter, "Chunk objects fetched from the object store (retries of one fetch count once).", [("storeFetches", Labels.None)]),
        ("lmfs_store_fetched_bytes_total", Counter, "Stored bytes fetched from the object store.", [("storeBytes", Labels.None)]),
        ("lmfs_fetch_errors_total", Counter, "Chunk fetches that failed, and READs that gave up waiting for one, by kind: timeout (--fetch-timeout passed), missing (object not found), corrupt (failed its SHA-256 check every attempt), refused (the store refused the request), row_mismatch (the chunk table row names another chunk), other.",
            [("fetchErrorKinds.timeout", new Labels(("kind", "timeout"))), ("fetchErrorKinds.missing", new Labels(("kind", "missing"))), ("fetchErrorKinds.corrupt", new Labels(("kind", "corrupt"))),
             ("fetchErrorKinds.refused", new Labels(("kind", "refused"))), ("fetchErrorKinds.rowMismatch", new Labels(("kind", "row_mismatch"))), ("fetchErrorKinds.other", new Labels(("kind", "other")))]),
        ("lmfs_fetches_in_flight", Gauge, "Chunk fetches queued or running, plus cache writes not yet done.", [("busy", Labels.None)]),
        ("lmfs_memory_cache_hits_total", Counter, "Chunk lookups the memory tier answered.", [("memoryHits", Labels.None)]),
        ("lmfs_memory_cache_misses_total", Counter, "Chunk lookups the memory tier could not answer.", [("memoryMisses", Labels.None)]),
        ("lmfs_memory_cache_chunks", Gauge, "Chunks held in the memory tier.", [("memoryChunks", Labels.None)]),
        ("lmfs_memory_cache_bytes", Gauge, "Native memory held by the memory tier's buffers (fetches in flight included).", [("memoryBytes", Labels.None)]),
        ("lmfs_memory_cache_limit_bytes", Gauge, "The memory tier's size (--buffer-size).", [("bufferSize", Labels.None)]),
        ("lmfs_memory_cache_evictions_total", Counter, "Chunks the memory tier evicted to make room.", [("memoryEvictions", Labels.None)]),
        ("lmfs_disk_cache_hits_total", Counter, "Chunks read from the disk cache.", [("diskHits", Labels.None)]),
        ("lmfs_disk_cache_chunks", Gauge, "Chunk files in the disk cache (shared with other mounts using the directory).", [("diskChunks", Labels.None)]),
        ("lmfs_disk_cache_bytes", Gauge, "Bytes of chunk files and views in the disk cache.", [("diskBytes", Labels.None)]),
        ("lmfs_disk_cache_views", Gauge, "Whole-file views in the disk cache (files served by passthrough).", [("views", Labels.None)]),
        ("lmfs_disk_cache_view_bytes", Gauge, "Bytes of those views (also in lmfs_disk_cache_bytes).", [("viewBytes", Labels.None)]),
        ("lmfs_disk_cache_writes_skipped_total", Counter, "Cache writes skipped because the write queue was full (the cache disk lagged the store).", [("diskWritesSkipped", Labels.None)]),
        ("lmfs_disk_cache_writes_refilled_total", Counter, "Skipped cache writes written later.", [("diskWritesRefilled", Labels.None)]),
        ("lmfs_passthrough_opens_total", Counter, "File opens answered with FUSE passthrough: the kernel reads the file's view, no READ reaches the daemon.", [("passthroughOpens", Labels.None)]),
        ("lmfs_peer_fetches_total", Counter, "Chunks this node got from their owner in its cache group (also in lmfs_store_fetches_total, which counts every fetch below the cache), and fetches that fell back to the object store because a peer refused, lied, failed or did not answer.",
            [("peerFetches", new Labels(("result", "peer"))), ("peerFallbacks", new Labels(("result", "fallback")))]),
        ("lmfs_peer_fetched_bytes_total", Counter, "Bytes of the chunks this node got from peers.", [("peerBytes", Labels.None)]),
        ("lmfs_peer_served_total", Counter, "Chunk requests from other members this node answered with the chunk, refused (no valid signature), failed (could not get the chunk) or turned away busy (503).",
            [("peerServed", new Labels(("result", "served"))), ("peerRejected", new Labels(("result", "refused"))), ("peerServeFailed", new Labels(("result", "failed"))), ("peerServeBusy", new Labels(("result", "busy")))]),
        ("lmfs_peer_served_bytes_total", Counter, "Bytes of the chunks this node served to other members.", [("peerServedBytes", Labels.None)]),
        ("lmfs_profile_replays_total", Counter, "First opens that replayed a recorded access profile as prefetch, and read plans received.", [("profileReplays", new Labels(("source", "profile"))), ("profilePlans", new Labels(("source", "plan")))]),
        ("lmfs_profiles_stored_total", Counter, "Access profiles stored: recorded where the file had none, or replacing one a load did not follow.", [("profilesRecorded", new Labels(("how", "recorded"))), ("profilesReplaced", new Labels(("how", "replaced")))]),
        ("lmfs_profile_errors_total", Counter, "Access profiles ignored as damaged, or that could not be looked up or stored.", [("profileErrors", Labels.None)]),
        ("lmfs_prefetch_bytes_total", Counter, "Bytes prefetch (profile replay, safetensors, whole-file) started fetching (issued), and of those the bytes READs then touched (used); issued minus used was fetched for nothing.",
            [("prefetchIssuedBytes", new Labels(("kind", "issued"))), ("prefetchUsedBytes", new Labels(("kind", "used")))]),
        ("lmfs_disk_cache_evictions_total", Counter, "Chunk files this daemon evicted from the disk cache to stay under its limit.", [("diskEvictions", Labels.None)]),
        ("lmfs_disk_cache_evicted_bytes_total", Counter, "Bytes of the chunk files this daemon evicted.", [("diskEvictedBytes", Labels.None)]),
        ("lmfs_disk_cache_corrupt_total", Counter, "Cache files found damaged or untrusted, discarded and fetched again.", [("diskCorrupt", Labels.None)]),
        ("lmfs_dir_handles", Gauge, "Open directory handles.", [("dirHandles", Labels.None)]),
        ("lmfs_dir_snapshot_bytes", Gauge, "Bytes of directory listings held for open handles.", [("dirSnapshotBytes", Labels.None)]),
        ("lmfs_dir_refused_total", Counter, "opendir calls refused with ENFILE (too many handles or listing bytes).", [("dirRefused", Labels.None)]),
        ("lmfs_start_time_seconds", Gauge, "When the mount daemon started, in seconds since the Unix epoch.", [("startTime", Labels.None)]),
        ("lmfs_uptime_seconds", Gauge, "Seconds since the mount daemon started.", [("uptime", Labels.None)]),
    ];

    /// <summary>Writes the mount families of every (labels, stats) given, in one pass per family.</summary>
    public static void Write(PrometheusText w, IReadOnlyList<(Labels Labels, JsonObject Stats)> mounts)
    {
        w.Family("lmfs_build_info", Gauge, "The lmfs version of the mount daemon (always 1).",
            mounts.Where(m => m.Stats["version"] is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.String).Select(m => (m.Labels.With("version", m.Stats["version"]!.GetValue<string>()), 1.0)));
        foreach (var (name, type, help, keys) in Families)
        {
            w.Family(name, type, help, mounts.SelectMany(m => keys.Select(k => (Labels: m.Labels.With(k.Extra), Value: Value(m.Stats, k.Key)))
                .Where(s => s.Value is not null).Select(s => (s.Labels, s.Value!.Value))));
        }

        w.Histogram("lmfs_store_fetch_seconds", "Time to fetch and verify one chunk object from the object store, retries included (successful fetches).",
            mounts.Where(m => m.Stats["fetchSeconds"] is JsonObject).Select(m => (m.Labels, m.Stats["fetchSeconds"]!.AsObject())));
    }

    /// <summary>A mount's stats alone, as its own <c>/metrics</c> page.</summary>
    public static string Render(JsonObject stats)
    {
        var w = new PrometheusText();
        Write(w, [(Labels.None, stats)]);
        return w.ToString();
    }

    private static Labels With(this Labels a, Labels b) => b.Count == 0 ? a : new([.. a, .. b]);

    /// <summary>A number under <paramref name="path"/> ("a" or "a.b"), or null when absent (e.g. disk keys without a disk cache).</summary>
    private static double? Value(JsonObject o, string path)
    {
        JsonNode? n = o;
        foreach (var part in path.Split('.'))
        {
            n = n is JsonObject obj ? obj[part] : null;
        }

        return PrometheusText.Num(n);
    }
}
