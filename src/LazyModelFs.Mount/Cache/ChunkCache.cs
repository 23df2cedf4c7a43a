using System.Diagnostics;
using System.Text.Json.Nodes;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Metrics;
using LazyModelFs.Storage;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Cache;

/// <summary>Who wants a chunk. Lower runs first.</summary>
public enum FetchPriority
{
    /// <summary>A READ is waiting for it.</summary>
    Demand = 0,

    /// <summary>Ahead of a sequential reader.</summary>
    Readahead = 1,

    /// <summary>Whole-file or safetensors prefetch, and warmup.</summary>
    Prefetch = 2,
}

public sealed record ChunkCacheOptions
{
    /// <summary>Object GETs (or cache-file reads) running at once.</summary>
    public int MaxFetches { get; init; } = 16;

    /// <summary>How long one chunk may take, retries included, before its readers get EIO.</summary>
    public TimeSpan FetchTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Ranged GETs a chunk is split into when a READ is waiting for it (readahead and prefetch fetch
    /// whole objects: they want throughput, a waiting READ wants latency).
    /// </summary>
    public int DemandParts { get; init; } = 4;

    /// <summary>Write chunks fetched from the store to the disk cache (off when the store is a directory on the cache's own filesystem).</summary>
    public bool CacheStoreReads { get; init; } = true;

    /// <summary>Disk-cache writes queued at most; past it a write is skipped and filled later (ChunkCache.Writes.cs). Default: a quarter of the memory tier's buffers, at least 4.</summary>
    public int? MaxQueuedWrites { get; init; }
}

/// <summary>
/// The chunk cache port: every reader of chunk bytes in the daemon (the VFS, warmup, the control
/// socket, the bench's reset through it) goes through here. Tiers, in order: the memory tier
/// (<see cref="MemoryTier"/>: leased buffers the FUSE replies are sent from), the disk cache
/// (<see cref="DiskCache"/>, optional), then the source (<see cref="IChunkSource"/>: the object
/// store's <see cref="ChunkStore"/>; a peer tier goes in front of the store there). Operations:
/// <see cref="GetAsync"/> (a lease), <see cref="Prefetch"/>, <see cref="FillAsync"/> (into the disk
/// tier, waiting until the bytes are written), <see cref="Check"/>, <see cref="Evict"/>, <see cref="AddStats"/>.
/// Build one with <see cref="Open"/>.
///
/// - Single flight: one fetch per chunk id however many readers wait; each waiter gets its own
///   reference to the one buffer.
/// - Bounded concurrency with priorities: at most <see cref="ChunkCacheOptions.MaxFetches"/> run;
///   demand fetches are taken before readahead, readahead before prefetch, and a quarter of the
///   slots are kept for demand so a long prefetch never makes a READ wait for a slot. A demand read
///   of a chunk already queued for prefetch promotes it.
/// - Integrity: a chunk from the object store is checked against its SHA-256 id before anyone sees
///   it or it is cached; a chunk from the disk cache against its length and CRC32C.
/// - Failures: the read path's one retry layer (<see cref="RetryPolicy"/>; the store below makes one
///   attempt per call): transient errors are retried with exponential backoff until the fetch
///   deadline; a missing object or a damaged one fails at once (it will not get better) and is
///   logged naming the chunk.
/// </summary>
public sealed partial class ChunkCache : IDisposable
{
    private readonly IChunkSource _source;
    private readonly MemoryTier _memory;
    private readonly bool _ownsMemory;
    private readonly DiskCache? _disk;
    private readonly ChunkCacheOptions _options;
    private readonly ILogger _log;
    private readonly Dictionary<ChunkId, Fetch> _inflight = [];
    private readonly PriorityQueue<Fetch, (int Priority, long Seq)> _queue = new();
    private readonly Lock _lock = new();
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA2213", Justification = "cancelled, never disposed: fetches still running after Dispose read its token; without CancelAfter it holds nothing to free")]
    private readonly CancellationTokenSource _shutdown = new();
    private readonly int _backgroundSlots;
    private int _running;
    private int _runningBackground;
    private long _seq;
    private long _storeFetches;
    private long _storeBytes;
    private long _errors;
    private readonly long[] _errorKinds = new long[(int)FetchError.Count];
    private readonly long[] _served = new long[3]; // READ bytes by tier: memory, disk, store
    private readonly LatencyHistogram _fetchSeconds = new();

    /// <summary>Why a fetch failed, for the <c>fetchErrorKinds</c> counters (they sum to <see cref="Errors"/>).</summary>
    private enum FetchError
    {
        Timeout,
        Missing,
        Corrupt,
        Refused,
        RowMismatch,
        Other,
        Count,
    }

    private static readonly string[] ErrorKindNames = ["timeout", "missing", "corrupt", "refused", "rowMismatch", "other"];

    private void CountError(FetchError kind)
    {
        Interlocked.Increment(ref _errors);
        Interlocked.Increment(ref _errorKinds[(int)kind]);
    }

    private static FetchError KindOf(Exception ex) => ex switch
    {
        _ when ex.Data.Contains(TimeoutMark) => FetchError.Timeout,
        ObjectNotFoundException => FetchError.Missing,
        ChunkCorruptException => FetchError.Corrupt,
        StoreRefusedException => FetchError.Refused,
        ChunkRowMismatchException => FetchError.RowMismatch,
        _ => FetchError.Other,
    };

    /// <summary>Marks (in <see cref="Exception.Data"/>) the error of a fetch that ran out of its --fetch-timeout budget, retries included; it stays a plain <see cref="LmfsException"/> for its callers.</summary>
    private const string TimeoutMark = "lmfs.fetchTimeout";

    /// <summary>
    /// Counts <paramref name="bytes"/> of a READ answer served from <paramref name="chunk"/>: from the
    /// memory tier when the lookup was a hit (<paramref name="memoryHit"/>: <see cref="GetAsync"/> completed
    /// at once), else from the tier the fetch the READ waited for read it from. Lock-free.
    /// </summary>
    internal void CountServed(CachedChunk chunk, bool memoryHit, int bytes) =>
        Interlocked.Add(ref _served[memoryHit ? 0 : chunk.FromDisk ? 1 : 2], bytes);

    /// <summary>A cache over tiers the caller made (and keeps: disposing the cache leaves <paramref name="memory"/> to the caller). <see cref="Open"/> is the usual way.</summary>
    internal ChunkCache(IChunkSource source, MemoryTier memory, DiskCache? disk, ChunkCacheOptions? options = null, ILogger? logger = null)
        : this(source, memory, disk, options, logger, ownsMemory: false)
    {
    }

    private ChunkCache(IChunkSource source, MemoryTier memory, DiskCache? disk, ChunkCacheOptions? options, ILogger? logger, bool ownsMemory)
    {
        _source = source;
        _memory = memory;
        _ownsMemory = ownsMemory;
        _disk = disk;
        _options = options ?? new ChunkCacheOptions();
        _log = logger ?? NullLogger.Instance;
        _backgroundSlots = Math.Max(1, _options.MaxFetches - Math.Max(1, _options.MaxFetches / 4));

        // Background fetches wait while every memory buffer is held by readers; nothing else wakes
        // the queue when those leases end, so look again a few times a second.
        _pumpTimer = new Timer(_ =>
        {
            lock (_lock)
            {
                if (_queue.Count > 0)
                {
                    Pump();
                }
            }
        }, null, 200, 200);
        StartWriters();
    }

    private readonly Timer _pumpTimer;

    /// <summary>
    /// The cache of a mount or of <c>lmfs warmup</c>: a memory tier of <see cref="ChunkCacheSetup.MemoryBytes"/>,
    /// a disk cache in <see cref="ChunkCacheSetup.Directory"/> (none when <see cref="ChunkCacheSetup.DiskBytes"/>
    /// is 0), the volume's object store behind them. A <c>file://</c> store on the cache's own
    /// filesystem is already a local copy: its chunks are read from it directly and not copied into
    /// the cache (which would write every byte a second time to the same disk, competing with the reads
    /// for its bandwidth); a <c>file://</c> store elsewhere (NFS, another disk) is cached like S3.
    /// </summary>
    public static ChunkCache Open(Volume volume, ChunkCacheSetup setup, ILoggerFactory? loggers = null)
    {
        loggers ??= NullLoggerFactory.Instance;
        int chunk = volume.Settings.ChunkSize;
        long needed = 4L * CachedChunk.BufferSizeFor(chunk);
        if (setup.MemoryBytes < needed)
        {
            // Stated as a size that is accepted, in the units users type: 4 buffers of a 4 MiB chunk are a
            // little over 16 MiB, which read "16 MiB too small ... use at least 16.0 MiB" (issue 18, item 9).
            long accepted = (needed + (1L << 20) - 1) & ~((1L << 20) - 1);
            throw new LmfsException(
                $"--buffer-size {Sizes.FormatExact(setup.MemoryBytes)} is too small for the volume's {Sizes.FormatExact(chunk)} chunks: the memory tier needs 4 chunk buffers ({Sizes.FormatExact(needed)} bytes)",
                $"use --buffer-size {Sizes.FormatExact(accepted)} or more",
                2);
        }

        var disk = setup.DiskBytes > 0
            ? new DiskCache(new DiskCacheOptions { Directory = setup.Directory, MaxBytes = setup.DiskBytes, FreeSpaceRatio = setup.FreeSpaceRatio }, loggers.CreateLogger("cache"))
            : null;
        var options = setup.Fetch;
        if (disk is not null && volume.Store is LocalObjectStore local && SameFilesystem(local.Root, disk.Root))
        {
            options = options with { CacheStoreReads = false };
            loggers.CreateLogger("cache").LogInformation("cache: the object store {Store} is on the cache's filesystem; chunks are read from it directly and not copied into {Cache}", local.Root, setup.Directory);
        }

        IChunkSource source = setup.Peers is { } peers ? new Peer.PeerSource(volume.Chunks, peers, loggers.CreateLogger("peer")) : volume.Chunks;
        return new ChunkCache(source, new MemoryTier(setup.MemoryBytes, chunk), disk, options, loggers.CreateLogger("read"), ownsMemory: true);
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

    /// <summary>What a disk cache directory holds (<c>lmfs cache stats</c>), without a mount: chunk files, views, and the bytes of both.</summary>
    public static (int Chunks, int Views, long ViewBytes, long Bytes, string Directory, string Root) DiskUsage(string directory)
    {
        var d = OpenDisk(directory);
        return (d.Count, d.ViewCount, d.ViewBytes, d.Bytes, d.Options.Directory, d.Root);
    }

    /// <summary>Deletes every chunk of a disk cache directory (<c>lmfs cache clear</c>); mounts using it fetch them again.</summary>
    public static (int Files, long Bytes) ClearDisk(string directory) => OpenDisk(directory).Clear();

    private static DiskCache OpenDisk(string directory)
    {
        if (!System.IO.Directory.Exists(directory))
        {
            throw new LmfsException($"cache directory '{directory}' does not exist", "give the --cache-dir the mount uses", 2);
        }

        return new DiskCache(new DiskCacheOptions { Directory = directory });
    }

    internal MemoryTier Memory => _memory;

    internal DiskCache? Disk => _disk;

    /// <summary>Where the disk tier lives (null: no disk tier).</summary>
    public string? DiskDirectory => _disk?.Options.Directory;

    /// <summary>Whether chunks fetched from the store go to the disk cache (prefetch is pointless without it).</summary>
    public bool CachesStoreReads => _disk is not null && _options.CacheStoreReads;

    public long StoreFetches => Interlocked.Read(ref _storeFetches);

    public long StoreBytes => Interlocked.Read(ref _storeBytes);

    public long Errors => Interlocked.Read(ref _errors);

    /// <summary>Fetches queued or running plus cache writes not yet done (0 when the reader is idle).</summary>
    public int Busy
    {
        get
        {
            lock (_lock)
            {
                // A fill of skipped cache writes counts while it runs (ChunkCache.Writes.cs).
                return _inflight.Count + Volatile.Read(ref _pendingWrites) + Volatile.Read(ref _blockFetchesRunning) + Volatile.Read(ref _refilling);
            }
        }
    }

    private int _pendingWrites; // disk writes queued or running (ChunkCache.Writes.cs): changed under _lock

    private sealed class Fetch(ChunkEntry entry, FetchPriority priority)
    {
        public ChunkEntry Entry { get; } = entry;

        public FetchPriority Priority = priority;

        public bool Started;

        public int Waiters;

        /// <summary>Set (under the lock) when the result is published and every waiter counted in <see cref="Waiters"/> holds a reference.</summary>
        public bool Completed;

        /// <summary>When a READ first waited for it (Stopwatch ticks; 0: never): a demand fetch's deadline runs from there.</summary>
        public long DemandSince;

        public TaskCompletionSource<CachedChunk> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>
    /// How long a chunk whose fetch just failed (or that a READ gave up waiting for) fails again at
    /// once. The kernel answers a failed readahead by sending the same range again as a synchronous
    /// READ; without this, one frozen store costs a reader two full fetch timeouts (issue 11, item 5).
    /// </summary>
    public static readonly TimeSpan FailureMemory = TimeSpan.FromMilliseconds(500);

    private readonly Dictionary<ChunkId, (long Until, Exception Error)> _failed = [];

    /// <summary>Disk writes under way, by chunk (completed when the write is done or was skipped).</summary>
    private readonly Dictionary<ChunkId, TaskCompletionSource> _writes = [];

    /// <summary>
    /// A lease on the chunk's verified bytes (dispose it when done). Completes synchronously on a memory hit.
    /// A <see cref="FetchPriority.Demand"/> caller gets an answer within <see cref="ChunkCacheOptions.FetchTimeout"/>
    /// of this call, however long the queue in front of it: the bytes or an exception.
    /// The bytes always match the whole row (id, length, CRC32C), whichever tier they come from.
    /// </summary>
    public ValueTask<CachedChunk> GetAsync(in ChunkEntry entry, FetchPriority priority = FetchPriority.Demand)
    {
        if (_memory.TryGet(entry.Id, out var hit))
        {
            return Checked(hit, entry);
        }

        Fetch f;
        long now = Stopwatch.GetTimestamp();
        lock (_lock)
        {
            // A fetch may have finished (and left _inflight) since the miss above: look again.
            if (_memory.TryGet(entry.Id, out hit))
            {
                return Checked(hit, entry);
            }

            if (_failed.TryGetValue(entry.Id, out var failed))
            {
                if (now < failed.Until)
                {
                    return ValueTask.FromException<CachedChunk>(failed.Error);
                }

                _failed.Remove(entry.Id);
            }

            if (!_inflight.TryGetValue(entry.Id, out f!))
            {
                f = new Fetch(entry, priority);
                _inflight[entry.Id] = f;
                _queue.Enqueue(f, ((int)priority, _seq++));
            }
            else if (priority < f.Priority && !f.Started)
            {
                f.Priority = priority; // promote: enqueue again; the stale entry is skipped when dequeued
                _queue.Enqueue(f, ((int)priority, _seq++));
            }

            if (priority == FetchPriority.Demand && f.DemandSince == 0)
            {
                f.DemandSince = now;
            }

            f.Waiters++;
            Pump();
        }

        return new ValueTask<CachedChunk>(priority == FetchPriority.Demand ? WaitBoundedAsync(f, entry, now) : WaitAsync(f, entry));
    }

    private static ValueTask<CachedChunk> Checked(CachedChunk c, in ChunkEntry row)
    {
        if (c.Matches(row))
        {
            return ValueTask.FromResult(c);
        }

        c.Dispose();
        return ValueTask.FromException<CachedChunk>(Mismatch(row, c));
    }

    private static ChunkRowMismatchException Mismatch(in ChunkEntry row, CachedChunk c) =>
        new($"chunk {row.Id}: the chunk table row says {row.PlainLength} bytes with CRC32C {row.Crc32C:x8}, but the chunk with that id is {c.Data.Length} bytes with CRC32C {c.Crc:x8} (the row is damaged)");

    private static async Task<CachedChunk> WaitAsync(Fetch f, ChunkEntry row)
    {
        var c = await f.Done.Task.ConfigureAwait(false);
        return await Checked(c, row).ConfigureAwait(false);
    }

    /// <summary>A READ's wait: bounded from its arrival, whether its fetch is queued, running or retrying.</summary>
    private async Task<CachedChunk> WaitBoundedAsync(Fetch f, ChunkEntry row, long arrival)
    {
        CachedChunk c;
        try
        {
            c = await f.Done.Task.WaitAsync(_options.FetchTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            bool completed, abandoned = false;
            var error = ReadWaitTimeout(row.Id);
            lock (_lock)
            {
                completed = f.Completed;
                if (!completed)
                {
                    f.Waiters--;
                    if (f.Waiters == 0 && !f.Started && RemoveInflight(f))
                    {
                        f.Started = true; // nobody wants it any more: Pump skips it when it comes up
                        abandoned = true;
                    }

                    RememberFailure(row.Id, error);
                }
            }

            if (!completed)
            {
                if (abandoned)
                {
                    f.Done.TrySetException(error);
                }

                CountError(FetchError.Timeout);
                _log.LogError("read: chunk {Chunk}: a READ waited {Seconds:0.0} s for it ({State}); answering EIO", row.Id, Stopwatch.GetElapsedTime(arrival).TotalSeconds, abandoned ? "still queued behind other fetches" : "its fetch is still running");
                throw error;
            }

            c = await f.Done.Task.ConfigureAwait(false); // published just now, with a reference for this waiter
        }

        return await Checked(c, row).ConfigureAwait(false);
    }

    /// <summary>What a READ that waited its whole --fetch-timeout for a chunk (whole or some of its blocks) is answered with.</summary>
    private LmfsException ReadWaitTimeout(ChunkId id) => new(
        $"chunk {id} could not be fetched within {_options.FetchTimeout.TotalSeconds:0.#} s (--fetch-timeout) of the READ asking for it",
        "check that the object store is reachable; reads of cached chunks go on",
        5);

    /// <summary>A disk write registered in <c>_writes</c> is done (or skipped): it leaves the map unless a newer one took its place, and its waiters (fills) go on.</summary>
    private void EndDiskWrite(ChunkId id, TaskCompletionSource written)
    {
        lock (_lock)
        {
            if (_writes.TryGetValue(id, out var w) && w == written)
            {
                _writes.Remove(id);
            }
        }

        written.TrySetResult();
    }

    /// <summary>Caller holds _lock. Removes <paramref name="f"/> from the in-flight map if it is still the fetch there (an abandoned one was replaced by a new fetch of the chunk).</summary>
    private bool RemoveInflight(Fetch f) =>
        _inflight.TryGetValue(f.Entry.Id, out var cur) && cur == f && _inflight.Remove(f.Entry.Id);

    /// <summary>Caller holds _lock. Remembered from now: the kernel's retry follows the EIO reply, so it must find the memory however late that reply went out.</summary>
    private void RememberFailure(ChunkId id, Exception error)
    {
        long now = Stopwatch.GetTimestamp();
        if (_failed.Count >= 4096)
        {
            foreach (var k in _failed.Where(kv => kv.Value.Until <= now).Select(kv => kv.Key).ToList())
            {
                _failed.Remove(k);
            }
        }

        _failed[id] = (now + (long)(FailureMemory.TotalSeconds * Stopwatch.Frequency), error);
    }

    /// <summary>
    /// Fetches the chunk into the caches in the background (no lease is kept). True when a fetch was
    /// started or joined; false when the chunk was already where this priority wants it.
    /// </summary>
    public bool Prefetch(in ChunkEntry entry, FetchPriority priority)
    {
        // Prefetch only needs the chunk on disk; readahead wants it in memory. Ask the disk (a stat) only for prefetch.
        if (_memory.Contains(entry.Id) || (priority == FetchPriority.Prefetch && _disk?.Contains(entry.Id) == true))
        {
            return false;
        }

        var vt = GetAsync(entry, priority);
        if (vt.IsCompletedSuccessfully)
        {
            vt.Result.Dispose();
            return false;
        }

        _ = Drop(vt);
        return true;

        static async Task Drop(ValueTask<CachedChunk> vt)
        {
            try
            {
                (await vt.ConfigureAwait(false)).Dispose();
            }
            catch (Exception)
            {
                // a background fetch failed; the reader that needs it will retry and report it
            }
        }
    }

    /// <summary>
    /// Drops queued background fetches (readahead, prefetch; not yet started) of these chunks; their
    /// waiters are prefetches, which ignore the <see cref="OperationCanceledException"/> they get.
    /// A fetch a READ waits for (promoted to demand) and running fetches go on. Returns how many were dropped.
    /// </summary>
    public int CancelQueued(IEnumerable<ChunkId> ids)
    {
        var dropped = new List<Fetch>();
        lock (_lock)
        {
            foreach (var id in ids)
            {
                if (_inflight.TryGetValue(id, out var f) && !f.Started && f.Priority != FetchPriority.Demand)
                {
                    f.Started = true; // Pump skips it when it comes up in the queue
                    _inflight.Remove(id);
                    dropped.Add(f);
                }
            }
        }

        foreach (var f in dropped)
        {
            f.Done.TrySetException(new OperationCanceledException($"fetch of chunk {f.Entry.Id} was cancelled"));
        }

        return dropped.Count;
    }

    /// <summary>Whether the chunk is in memory or on the local disk.</summary>
    public bool IsCached(ChunkId id) => _memory.Contains(id) || _disk?.Contains(id) == true;

    /// <summary>
    /// Takes chunks out of the cache as if it had never held them: their queued background fetches are
    /// dropped (they would refill what is dropped), they leave the memory tier, and with
    /// <paramref name="disk"/> the disk tier too. Fetches already running finish and publish; a caller
    /// that needs them gone waits for <see cref="Busy"/> to reach 0 and evicts again.
    /// </summary>
    public (int Memory, int Disk) Evict(IReadOnlyCollection<ChunkId> ids, bool disk)
    {
        CancelQueued(ids);
        lock (_lock)
        {
            DropPartials(ids);
        }

        int memory = _memory.Drop(ids);
        int removed = 0;
        if (disk && _disk is { } cache)
        {
            foreach (var id in ids.Distinct())
            {
                removed += cache.Remove(id) ? 1 : 0;
            }
        }

        return (memory, removed);
    }

    /// <summary>How much of these chunks (counted once each) the disk tier holds.</summary>
    public CacheCheck Check(IEnumerable<ChunkEntry> entries)
    {
        var unique = entries.DistinctBy(e => e.Id).ToList();
        var missing = _disk is { } d ? unique.Where(e => !d.Contains(e.Id)).ToList() : unique;
        return new CacheCheck(unique.Count, unique.Sum(e => (long)e.PlainLength), missing);
    }

    /// <summary>
    /// Brings the chunks <paramref name="check"/> found missing (<see cref="Check"/>: the caller has
    /// usually shown it already, so the disk is not asked twice) into the disk tier (<c>lmfs warmup</c>), <paramref name="concurrency"/> at a
    /// time, and returns when each is written or known not to be: a chunk the disk would not take
    /// (full, unwritable) is counted in <see cref="FillResult.NotStored"/>, never reported as cached.
    /// <paramref name="progress"/> gets the plain bytes of each chunk done.
    /// </summary>
    public async Task<FillResult> FillAsync(CacheCheck check, int concurrency, Action<long>? progress = null, CancellationToken ct = default)
    {
        var disk = _disk ?? throw new LmfsException("this cache has no disk tier to fill", "give a --cache-dir (and a --cache-size above 0)", 2);
        int stored = 0, notStored = 0;
        await Parallel.ForEachAsync(check.Missing, new ParallelOptions { MaxDegreeOfParallelism = concurrency, CancellationToken = ct }, async (e, _) =>
        {
            using (var lease = await GetAsync(e, FetchPriority.Prefetch).ConfigureAwait(false))
            {
                Task? pending;
                lock (_lock)
                {
                    pending = _writes.TryGetValue(e.Id, out var w) ? w.Task : null;
                }

                if (pending is not null)
                {
                    await pending.ConfigureAwait(false);
                }

                // From memory (an earlier fetch whose write was skipped) or a store that is not cached
                // by default: write it from the lease.
                bool ok = disk.Contains(e.Id) || disk.Write(e, lease.Buffer.Span[lease.Offset..]);
                if (ok)
                {
                    Interlocked.Increment(ref stored);
                }
                else
                {
                    Interlocked.Increment(ref notStored);
                }
            }

            progress?.Invoke(e.PlainLength);
        }).ConfigureAwait(false);
        return new FillResult(check, stored, notStored);
    }

    /// <summary>The counters of the cache and its tiers, for the control socket's <c>stats</c>.</summary>
    /// <summary>The peer tier in front of the object store, when this cache is in a cache group.</summary>
    public Peer.PeerSource? Peers => _source as Peer.PeerSource;

    public void AddStats(JsonObject o)
    {
        Peers?.AddStats(o);
        o["storeFetches"] = StoreFetches;
        o["storeBytes"] = StoreBytes;
        AddPartialStats(o);
        o["fetchErrors"] = Errors;
        o["busy"] = Busy;
        o["memoryHits"] = _memory.Hits;
        o["memoryMisses"] = _memory.Misses;
        o["memoryChunks"] = _memory.Count;
        o["memoryBuffers"] = _memory.Allocated;
        o["memoryBytes"] = (long)_memory.Allocated * _memory.BufferBytes;
        o["memoryEvictions"] = _memory.Evictions;
        o["servedMemoryBytes"] = Interlocked.Read(ref _served[0]);
        o["servedDiskBytes"] = Interlocked.Read(ref _served[1]);
        o["servedStoreBytes"] = Interlocked.Read(ref _served[2]);
        var kinds = new JsonObject();
        for (int i = 0; i < ErrorKindNames.Length; i++)
        {
            kinds[ErrorKindNames[i]] = Interlocked.Read(ref _errorKinds[i]);
        }

        o["fetchErrorKinds"] = kinds;
        o["fetchSeconds"] = _fetchSeconds.ToJson();
        if (_disk is { } d)
        {
            o["diskHits"] = d.Hits;
            o["diskChunks"] = d.Count;
            o["diskBytes"] = d.Bytes;
            o["diskCorrupt"] = d.Corrupt;
            o["diskEvictions"] = d.Evictions;
            o["diskEvictedBytes"] = d.EvictedBytes;
        }

        AddViewStats(o);
        AddWriteStats(o);
    }

    /// <summary>Stops starting fetches, fails the queued ones, and cancels the running ones' object-store calls.</summary>
    public void Dispose()
    {
        _pumpTimer.Dispose();
        StopWriters();
        _shutdown.Cancel();
        var abandoned = new List<Fetch>();
        lock (_lock)
        {
            while (_queue.TryDequeue(out var f, out _))
            {
                if (!f.Started && _inflight.Remove(f.Entry.Id))
                {
                    abandoned.Add(f);
                }
            }
        }

        foreach (var f in abandoned)
        {
            f.Done.TrySetException(new ObjectDisposedException(nameof(ChunkCache)));
        }

        lock (_lock)
        {
            DropPartials(null);
        }

        if (_ownsMemory)
        {
            _memory.Dispose(); // a buffer still leased is freed at its last release
        }
    }

    /// <summary>Starts queued fetches while slots are free. Caller holds _lock.</summary>
    private void Pump()
    {
        while (!_shutdown.IsCancellationRequested && _running < _options.MaxFetches && _queue.TryPeek(out var f, out var key))
        {
            if (f.Started || key.Priority != (int)f.Priority)
            {
                _queue.Dequeue(); // already running, or a stale entry of a promoted fetch
                continue;
            }

            bool background = f.Priority != FetchPriority.Demand;
            if (background && (_runningBackground >= _backgroundSlots || !_memory.HasRoom))
            {
                return; // keep the reserved slots (and memory) for demand reads
            }

            _queue.Dequeue();
            f.Started = true;
            _running++;
            if (background)
            {
                _runningBackground++;
            }

            _ = Task.Run(() => RunAsync(f, background));
        }
    }

    private async Task RunAsync(Fetch f, bool background)
    {
        CachedChunk? chunk = null;
        TaskCompletionSource? written = null;
        bool fromStore = false;
        try
        {
            // A READ's fetch must be done within the fetch timeout of the READ's arrival, not of the
            // moment a slot freed up; a background fetch gets the whole timeout from its start.
            long since = f.DemandSince != 0 ? f.DemandSince : Stopwatch.GetTimestamp();
            var budget = _options.FetchTimeout - Stopwatch.GetElapsedTime(since);
            (chunk, fromStore) = await LoadAsync(f.Entry, f.Priority == FetchPriority.Demand ? _options.DemandParts : 1, budget).ConfigureAwait(false);
            _memory.Publish(chunk, f.Entry, chunk.Offset, cold: f.Priority == FetchPriority.Prefetch);
        }
        catch (Exception ex)
        {
            chunk?.Dispose();
            CountError(KindOf(ex));
            lock (_lock)
            {
                RemoveInflight(f);

                // A row mismatch belongs to the row, not to the chunk: other files' rows naming it read on.
                if (!_shutdown.IsCancellationRequested && ex is not ChunkRowMismatchException)
                {
                    RememberFailure(f.Entry.Id, ex);
                }

                Finish(background);
            }

            f.Done.TrySetException(ex);
            return;
        }

        lock (_lock)
        {
            RemoveInflight(f);
            DropPartial(f.Entry.Id); // a partial of it (one the fetch did not adopt) is superseded
            _memory.AddRefs(chunk, f.Waiters); // one reference per waiter still waiting
            f.Completed = true;
            if (fromStore && _failed.Count > 0)
            {
                _failed.Clear(); // the store answers again: what failed while it did not is worth asking again
            }

            if (fromStore && CachesStoreReads)
            {
                written = ReserveWrite(f.Entry); // before the waiters run: a fill that got the lease finds it
            }

            Finish(background);
        }

        f.Done.TrySetResult(chunk);

        // The fetch's own reference keeps the bytes while they go to the disk cache (the writers release it).
        if (written is not null)
        {
            EnqueueWrite(f.Entry, chunk, chunk.Offset, written);
        }
        else
        {
            chunk.Dispose();
        }
    }

    private void Finish(bool background)
    {
        _running--;
        if (background)
        {
            _runningBackground--;
        }

        Pump();
    }

    private async Task<(CachedChunk Chunk, bool FromStore)> LoadAsync(ChunkEntry e, int parts, TimeSpan budget)
    {
        var chunk = _memory.Rent();
        try
        {
            // Plain bytes always land at DataStart (page aligned): read from the cache there, or fetch
            // the object so that its 16-byte header ends there.
            if (_disk is not null && _disk.TryRead(e, chunk.Buffer.Span[CachedChunk.DataStart..]))
            {
                chunk.Offset = CachedChunk.DataStart;
                chunk.Length = e.PlainLength;
                chunk.FromDisk = true;
                return (chunk, false);
            }

            // Partial (random READs brought some of its blocks): fetch only the rest, into that buffer.
            if (await TryAdoptPartialAsync(e, parts, budget).ConfigureAwait(false) is { } adopted)
            {
                chunk.Dispose();
                return (adopted, true);
            }

            const int objectStart = CachedChunk.DataStart - ChunkObject.HeaderSize;
            var buffer = chunk.Buffer[objectStart..];
            int plainAt = await FetchFromSourceAsync(e, token => _source.ReadIntoAsync(e, buffer, parts, token), e.StoredLength, budget).ConfigureAwait(false);
            chunk.Offset = objectStart + plainAt;
            chunk.Length = e.PlainLength;
            chunk.FromDisk = false;
            return (chunk, true);
        }
        catch
        {
            chunk.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The read path's one retry layer (<see cref="RetryPolicy"/>), bounded by the fetch's budget:
    /// the store below makes one attempt per call. <paramref name="attempt"/> fetches the whole chunk
    /// or some of its blocks (<paramref name="bytes"/> of transfer, counted when it succeeds).
    /// </summary>
    private async Task<int> FetchFromSourceAsync(ChunkEntry e, Func<CancellationToken, Task<int>> attempt, long bytes, TimeSpan budget)
    {
        var sw = Stopwatch.StartNew();
        long started = Stopwatch.GetTimestamp();
        int attempts = 0;
        try
        {
            int offset = await RetryPolicy.Until(budget).RunAsync(
                token =>
                {
                    attempts++;
                    return attempt(token);
                },
                _shutdown.Token,
                onBudget: (n, last) => Timeout(e, sw.Elapsed, n, last),
                onRetry: (n, ex, wait) => _log.LogWarning("read: chunk {Chunk} attempt {Attempt} failed ({Message}); retrying in {Backoff} ms", e.Id, n, ex.Message, (int)wait.TotalMilliseconds)).ConfigureAwait(false);
            Interlocked.Increment(ref _storeFetches);
            Interlocked.Add(ref _storeBytes, bytes);
            _fetchSeconds.Observe(Stopwatch.GetTimestamp() - started);
            return offset;
        }
        catch (ObjectNotFoundException)
        {
            _log.LogError("read: chunk {Chunk} is missing from the object store", e.Id);
            throw;
        }
        catch (Exception ex) when (ex is StoreRefusedException or ChunkRowMismatchException)
        {
            // Retrying changes nothing (credentials refused, bucket gone, the row names another chunk).
            _log.LogError("read: chunk {Chunk}: {Message}", e.Id, ex.Message);
            throw;
        }
        catch (ChunkCorruptException ex)
        {
            _log.LogError("read: chunk {Chunk} failed its integrity check {Attempts} times: {Message}", e.Id, attempts, ex.Message);
            throw;
        }
        catch (OperationCanceledException) when (_shutdown.IsCancellationRequested)
        {
            throw new ObjectDisposedException(nameof(ChunkCache), "the mount is shutting down"); // not a store failure: nothing to log
        }
    }

    private LmfsException Timeout(ChunkEntry e, TimeSpan elapsed, int attempts, Exception? last)
    {
        _log.LogError("read: chunk {Chunk} could not be fetched in {Seconds:0.0} s ({Attempts} attempts): {Message}", e.Id, elapsed.TotalSeconds, attempts, last?.Message ?? "timed out");
        var error = new LmfsException($"chunk {e.Id} could not be fetched within {_options.FetchTimeout.TotalSeconds:0.#} s (--fetch-timeout): {last?.Message ?? "timed out"}", "check that the object store is reachable", 5, last);
        error.Data[TimeoutMark] = true;
        return error;
    }
}

/// <summary>How the cache of a mount or of <c>lmfs warmup</c> is built (<see cref="ChunkCache.Open"/>).</summary>
public sealed record ChunkCacheSetup
{
    /// <summary>The disk tier's directory.</summary>
    public string Directory { get; init; } = "/var/cache/lmfs";

    /// <summary>The disk tier's size limit; 0: no disk tier.</summary>
    public long DiskBytes { get; init; } = 100L << 30;

    /// <summary>Free space the disk tier leaves on its filesystem, as a share of the whole.</summary>
    public double FreeSpaceRatio { get; init; } = 0.1;

    /// <summary>The memory tier (chunk buffers), fetches in flight included.</summary>
    public long MemoryBytes { get; init; } = 512L << 20;

    public ChunkCacheOptions Fetch { get; init; } = new();

    /// <summary>The cache group this node asks for chunks before the object store (issue 15); null: none.</summary>
    public Peer.PeerOptions? Peers { get; init; }
}

/// <summary>What the disk tier holds of some chunks (each counted once).</summary>
public sealed record CacheCheck(int Chunks, long Bytes, IReadOnlyList<ChunkEntry> Missing)
{
    public long MissingBytes => Missing.Sum(e => (long)e.PlainLength);

    public int CachedChunks => Chunks - Missing.Count;

    public long CachedBytes => Bytes - MissingBytes;
}

/// <summary>What <see cref="ChunkCache.FillAsync"/> did: the check before it, and how many missing chunks were stored or could not be.</summary>
public sealed record FillResult(CacheCheck Before, int Stored, int NotStored);
