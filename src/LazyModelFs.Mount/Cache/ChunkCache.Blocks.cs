using System.Diagnostics;
using System.Numerics;
using LazyModelFs.Chunks;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Cache;

/// <summary>
/// Partial chunks (format v2, issue 14): a READ that is not part of a sequential stream, on a chunk
/// no tier holds and no running fetch is bringing, gets only the blocks it touches — one ranged GET
/// straight into the chunk's memory buffer, each block verified against its hash in the row before
/// any READ sees it — instead of waiting for the whole chunk.
///
/// - A partial chunk is a memory-tier buffer (rented, unpublished) with a mask of verified blocks
///   (<see cref="Partial.Valid"/>) and of blocks being fetched (<see cref="Partial.Pending"/>). Every
///   block has one fetch at a time; a READ waits for the fetches of its blocks, starting those nobody
///   has started. Fetches write only their own blocks' bytes, and a READ only reads verified blocks,
///   so one buffer serves READs while other blocks of it are still arriving; a failed fetch leaves its
///   blocks unverified, never readable.
/// - A partial chunk whose every block has arrived is checked against the chunk id (SHA-256 of the
///   whole, and the CRC32C) and published in the memory tier as a whole chunk, then written to the
///   disk cache. Only whole, id-verified chunks ever enter the content-addressed tiers shared by every
///   file and volume.
/// - A whole-chunk fetch (a sequential READ, readahead, prefetch, warmup) of a chunk that is partial
///   adopts the buffer and fetches only the blocks that are missing: "the rest of the chunk follows
///   when the access pattern says it will be used", without moving the same bytes twice.
/// - At most a quarter of the memory tier's buffers are partial; past that the least recently used
///   partial with no fetch running is dropped, or when every one is busy the READ takes the whole
///   chunk path (bounded memory, whatever the access pattern).
/// - A row naming the chunk with other block hashes than the partial was verified against is never
///   served from it: it reads whole, verified by the id.
/// </summary>
public sealed partial class ChunkCache
{
    private readonly Dictionary<ChunkId, Partial> _partials = [];
    private readonly LinkedList<Partial> _partialLru = new(); // First = most recent
    private long _blockFetches;
    private long _partialHits;
    private int _blockFetchesRunning;

    private int MaxPartials => Math.Max(2, _memory.Capacity / 4);

    private sealed class Partial
    {
        public Partial(CachedChunk chunk, ChunkEntry row)
        {
            Chunk = chunk;
            Row = row;
            Node = new LinkedListNode<Partial>(this);
        }

        /// <summary>The buffer; the partial map holds one reference to it, each running block fetch one more.</summary>
        public CachedChunk Chunk { get; }

        /// <summary>The row the blocks were verified against.</summary>
        public ChunkEntry Row { get; }

        public LinkedListNode<Partial> Node { get; }

        /// <summary>Blocks verified (read and written under the cache's lock).</summary>
        public ulong Valid;

        /// <summary>Blocks a running fetch is bringing.</summary>
        public ulong Pending;

        public readonly List<BlockFetch> Fetches = [];

        /// <summary>A whole-chunk fetch took the buffer over: it checks and publishes the chunk, not the last block fetch.</summary>
        public bool Adopted;

        /// <summary>Left the map (dropped, evicted, or published whole).</summary>
        public bool Gone;
    }

    private sealed class BlockFetch(ulong mask)
    {
        public ulong Mask { get; } = mask;

        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>
    /// A lease on chunk bytes that hold at least <c>[within, within + length)</c> of the chunk, for a
    /// READ. A READ of a sequential stream (<paramref name="sequential"/>), a row without block hashes,
    /// or a chunk on the local disk goes the whole-chunk way (<see cref="GetAsync"/>); any other READ
    /// gets the blocks it touches first (see the class comment). Completes synchronously when the bytes
    /// are in memory; the lease's <see cref="CachedChunk.Data"/> is the whole chunk's extent, of which
    /// only the asked range is guaranteed verified. <paramref name="priority"/> is the whole-chunk way's
    /// (a READ's is Demand; the safetensors header prefetch asks with Readahead).
    /// </summary>
    public ValueTask<CachedChunk> GetRangeAsync(in ChunkEntry entry, int within, int length, bool sequential, FetchPriority priority = FetchPriority.Demand)
    {
        if (sequential || !entry.HasBlocks || length <= 0)
        {
            return GetAsync(entry, priority);
        }

        if (_memory.TryGet(entry.Id, out var hit))
        {
            return Checked(hit, entry);
        }

        ulong mask = entry.Blocks.MaskOf(within, length);
        if (TryPartialHit(entry, mask) is { } partialHit)
        {
            return ValueTask.FromResult(partialHit);
        }

        long now = Stopwatch.GetTimestamp();
        bool onDisk = _disk?.Contains(entry.Id) == true; // a stat on a miss: not on the hit paths above
        Partial? p;
        List<Task>? waits = null;
        List<(BlockFetch Fetch, int First, int Count)>? start = null;
        lock (_lock)
        {
            if (TryPartialHit(entry, mask) is { } arrived)
            {
                return ValueTask.FromResult(arrived); // its blocks arrived since the look above
            }

            _partials.TryGetValue(entry.Id, out p);
            if (_failed.TryGetValue(entry.Id, out var failed) && now < failed.Until)
            {
                return ValueTask.FromException<CachedChunk>(failed.Error);
            }

            // The whole-chunk way when that is sooner or the only safe one: a whole fetch is running, the
            // chunk arrived meanwhile or is on the local disk, the partial was verified against other
            // block hashes (or is being completed), or every partial is busy.
            bool whole = onDisk
                || (_inflight.TryGetValue(entry.Id, out var f) && f.Started)
                || _memory.Contains(entry.Id)
                || (p is not null && (p.Adopted || !SameRow(p, entry, entry.Blocks.All)))
                || (p is null && !MakeRoomForPartial());
            if (!whole)
            {
                p ??= NewPartial(entry);
                Touch(p);
                _memory.AddRefs(p.Chunk, 1); // the READ's lease
                waits = [];
                start = Claim(p, mask, waits, parts: 1);
            }
        }

        if (start is null)
        {
            return GetAsync(entry, priority);
        }

        long deadline = now + (long)(_options.FetchTimeout.TotalSeconds * Stopwatch.Frequency);
        StartBlockFetches(p!, start, deadline);
        return new ValueTask<CachedChunk>(WaitBlocksAsync(p!, mask, waits!, now, deadline));
    }

    /// <summary>A lease on the partial chunk when every block of <paramref name="mask"/> is verified there (for this row); null otherwise.</summary>
    private CachedChunk? TryPartialHit(in ChunkEntry entry, ulong mask)
    {
        lock (_lock)
        {
            if (!_partials.TryGetValue(entry.Id, out var p) || (p.Valid & mask) != mask || !SameRow(p, entry, mask))
            {
                return null;
            }

            _memory.AddRefs(p.Chunk, 1);
            Touch(p);
            Interlocked.Increment(ref _partialHits);
            return p.Chunk;
        }
    }

    /// <summary>Caller holds _lock. Whether the partial was verified against the same block hashes as <paramref name="row"/> asks for, for the blocks in <paramref name="mask"/>.</summary>
    private static bool SameRow(Partial p, in ChunkEntry row, ulong mask) =>
        p.Row.PlainLength == row.PlainLength && p.Row.Crc32C == row.Crc32C && p.Row.Blocks.SameAs(row.Blocks, mask);

    /// <summary>Caller holds _lock.</summary>
    private void Touch(Partial p)
    {
        if (!p.Gone)
        {
            _partialLru.Remove(p.Node);
            _partialLru.AddFirst(p.Node);
        }
    }

    /// <summary>Caller holds _lock. A new partial chunk with no block yet, holding the map's reference to its buffer.</summary>
    private Partial NewPartial(in ChunkEntry row)
    {
        var c = _memory.Rent();
        c.Offset = CachedChunk.DataStart;
        c.Length = row.PlainLength;
        c.FromDisk = false;
        var p = new Partial(c, row);
        _partials[row.Id] = p;
        _partialLru.AddFirst(p.Node);
        return p;
    }

    /// <summary>Caller holds _lock. Room for one more partial: true when under the bound, or when the least recently used idle one could be dropped.</summary>
    private bool MakeRoomForPartial()
    {
        if (_partials.Count < MaxPartials)
        {
            return true;
        }

        for (var n = _partialLru.Last; n is not null; n = n.Previous)
        {
            if (n.Value.Pending == 0 && !n.Value.Adopted)
            {
                RemovePartial(n.Value);
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Caller holds _lock. Takes the partial out of the map; gives back the map's reference to its
    /// buffer (readers and running fetches keep theirs) unless <paramref name="keepReference"/>, when the caller takes it over.
    /// </summary>
    private void RemovePartial(Partial p, bool keepReference = false)
    {
        if (p.Gone)
        {
            return;
        }

        p.Gone = true;
        _partials.Remove(p.Row.Id);
        _partialLru.Remove(p.Node);
        if (!keepReference)
        {
            p.Chunk.Dispose();
        }
    }

    /// <summary>Caller holds _lock. Drops the partial of <paramref name="id"/>, if any (the chunk was published whole, or evicted).</summary>
    private void DropPartial(ChunkId id)
    {
        if (_partials.TryGetValue(id, out var p) && !p.Adopted)
        {
            RemovePartial(p);
        }
    }

    /// <summary>
    /// Caller holds _lock. Adds to <paramref name="waits"/> the fetches bringing blocks of
    /// <paramref name="mask"/>, claiming (as pending) the blocks no fetch brings; returns the fetches
    /// to start for those, contiguous runs of at most a whole run ÷ <paramref name="parts"/> (and
    /// <see cref="ChunkStore.MinPart"/>) each.
    /// </summary>
    private static List<(BlockFetch Fetch, int First, int Count)> Claim(Partial p, ulong mask, List<Task> waits, int parts)
    {
        foreach (var running in p.Fetches)
        {
            if ((running.Mask & mask) != 0)
            {
                waits.Add(running.Done.Task);
            }
        }

        var start = new List<(BlockFetch, int, int)>();
        ulong need = mask & ~p.Valid & ~p.Pending;
        int blockSize = p.Row.Blocks.BlockSize;
        while (need != 0)
        {
            int first = BitOperations.TrailingZeroCount(need);
            int run = BitOperations.TrailingZeroCount(~(need >> first));
            int piece = Math.Max(Math.Max(1, ChunkStore.MinPart / blockSize), (run + parts - 1) / parts);
            for (int at = first; at < first + run; at += piece)
            {
                int count = Math.Min(piece, first + run - at);
                var bf = new BlockFetch(BlockHashes.RunMask(at, count));
                p.Pending |= bf.Mask;
                p.Fetches.Add(bf);
                waits.Add(bf.Done.Task);
                start.Add((bf, at, count));
            }

            need &= ~BlockHashes.RunMask(first, run);
        }

        return start;
    }

    /// <param name="deadline">Stopwatch timestamp by which the blocks must be here, retries included.</param>
    private void StartBlockFetches(Partial p, List<(BlockFetch Fetch, int First, int Count)> start, long deadline)
    {
        foreach (var (bf, first, count) in start)
        {
            _memory.AddRefs(p.Chunk, 1); // the fetch's own: it writes into the buffer whoever else lets go
            Interlocked.Increment(ref _blockFetchesRunning);
            _ = Task.Run(() => RunBlockFetchAsync(p, bf, first, count, deadline));
        }
    }

    private async Task RunBlockFetchAsync(Partial p, BlockFetch bf, int first, int count, long deadline)
    {
        bool promote = false;
        try
        {
            var row = p.Row;
            int blockSize = row.Blocks.BlockSize;
            int from = first * blockSize;
            int len = Math.Min(count * blockSize, row.PlainLength - from);
            var dest = p.Chunk.Buffer.Slice(CachedChunk.DataStart + from, len);
            var budget = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), deadline);
            await FetchFromSourceAsync(
                row,
                async token =>
                {
                    await _source.ReadBlocksAsync(row, first, count, dest, token).ConfigureAwait(false);
                    return 0;
                },
                len,
                budget).ConfigureAwait(false);
            Interlocked.Increment(ref _blockFetches);
            lock (_lock)
            {
                p.Valid |= bf.Mask;
                p.Pending &= ~bf.Mask;
                p.Fetches.Remove(bf);
                if (p.Valid == row.Blocks.All && !p.Gone && !p.Adopted)
                {
                    // It stays findable (and unadoptable) until it is published, so no READ starts it over meanwhile.
                    p.Adopted = true;
                    _memory.AddRefs(p.Chunk, 1); // for PublishWhole
                    promote = true;
                }
            }

            bf.Done.TrySetResult();
        }
        catch (Exception ex)
        {
            CountError(KindOf(ex));
            lock (_lock)
            {
                p.Pending &= ~bf.Mask;
                p.Fetches.Remove(bf);
                // A block that does not match its hash may be the row's fault as well as the object's: another
                // row naming the chunk (the honest one) must not fail with it, so only store failures are remembered.
                if (!_shutdown.IsCancellationRequested && ex is not (ChunkRowMismatchException or ChunkCorruptException))
                {
                    RememberFailure(p.Row.Id, ex);
                }
            }

            bf.Done.TrySetException(ex);
        }
        finally
        {
            if (promote)
            {
                PublishWhole(p.Chunk, p.Row);
                lock (_lock)
                {
                    p.Adopted = false;
                    RemovePartial(p); // published whole (or refused): the memory tier has it now, or nobody does
                }
            }

            p.Chunk.Dispose(); // the fetch's reference
            Interlocked.Decrement(ref _blockFetchesRunning); // after the publish: Busy is 0 only when the chunk is where it goes
        }
    }

    /// <summary>
    /// Every block of a partial chunk has arrived: checked against the whole row (id, length, CRC32C)
    /// it becomes a memory-tier chunk like any fetched one and goes to the disk cache; one that fails
    /// the check (a row whose block hashes and id disagree) is dropped and logged. Consumes the
    /// caller's reference to <paramref name="c"/>.
    /// </summary>
    private void PublishWhole(CachedChunk c, ChunkEntry row)
    {
        TaskCompletionSource? written = null;
        try
        {
            try
            {
                ChunkObject.Verify(c.Data.Span, row);
            }
            catch (Exception ex) when (ex is ChunkCorruptException or ChunkRowMismatchException)
            {
                CountError(KindOf(ex));
                _log.LogError("read: chunk {Chunk}: every block matched its hash but the whole does not match the row ({Message}); the row's block hashes are damaged", row.Id, ex.Message);
                return;
            }

            c.Crc = row.Crc32C;
            _memory.Publish(c, row, CachedChunk.DataStart, cold: false);
            if (CachesStoreReads)
            {
                lock (_lock)
                {
                    written = ReserveWrite(row);
                }

                if (written is not null)
                {
                    _memory.AddRefs(c, 1); // the writers' reference
                    EnqueueWrite(row, c, CachedChunk.DataStart, written);
                }
            }
        }
        finally
        {
            c.Dispose();
        }
    }

    /// <summary>A READ's wait for its blocks: bounded by the fetch timeout from its arrival; the lease it holds is given back on failure.</summary>
    private async Task<CachedChunk> WaitBlocksAsync(Partial p, ulong mask, List<Task> waits, long arrival, long deadline)
    {
        try
        {
            var left = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), deadline);
            await Task.WhenAll(waits).WaitAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero).ConfigureAwait(false);
            lock (_lock)
            {
                if ((p.Valid & mask) != mask)
                {
                    throw new LmfsException($"chunk {p.Row.Id}: blocks a READ waited for did not arrive", "read the file again; if it persists, run lmfs fsck --verify", 5);
                }
            }

            return p.Chunk;
        }
        catch (TimeoutException)
        {
            p.Chunk.Dispose();
            CountError(FetchError.Timeout);
            _log.LogError("read: chunk {Chunk}: a READ waited {Seconds:0.0} s for its blocks; answering EIO", p.Row.Id, Stopwatch.GetElapsedTime(arrival).TotalSeconds);
            throw ReadWaitTimeout(p.Row.Id);
        }
        catch
        {
            p.Chunk.Dispose();
            throw;
        }
    }

    /// <summary>
    /// For a whole-chunk fetch: when the chunk is partial (and its blocks were verified against this
    /// row), takes its buffer over and fetches only the missing blocks, in up to <paramref name="parts"/>
    /// GETs a run, then checks the whole against the row. Null when there is no partial to adopt.
    /// </summary>
    private async Task<CachedChunk?> TryAdoptPartialAsync(ChunkEntry e, int parts, TimeSpan budget)
    {
        if (!e.HasBlocks)
        {
            return null;
        }

        Partial? p;
        List<Task> waits = [];
        List<(BlockFetch Fetch, int First, int Count)> start;
        lock (_lock)
        {
            if (!_partials.TryGetValue(e.Id, out p) || p.Adopted || !SameRow(p, e, e.Blocks.All))
            {
                return null;
            }

            p.Adopted = true;
            _memory.AddRefs(p.Chunk, 1); // the whole fetch's lease
            start = Claim(p, e.Blocks.All, waits, parts);
        }

        StartBlockFetches(p, start, Stopwatch.GetTimestamp() + (long)(Math.Max(0, budget.TotalSeconds) * Stopwatch.Frequency));
        try
        {
            await Task.WhenAll(waits).WaitAsync(budget > TimeSpan.Zero ? budget : TimeSpan.Zero).ConfigureAwait(false);
            ChunkObject.Verify(p.Chunk.Data.Span, e);
            p.Chunk.Crc = e.Crc32C;
            lock (_lock)
            {
                p.Adopted = false;
                RemovePartial(p); // it is published whole by the fetch
            }

            return p.Chunk;
        }
        catch (Exception ex)
        {
            lock (_lock)
            {
                p.Adopted = false;
                if (ex is ChunkCorruptException or ChunkRowMismatchException)
                {
                    RemovePartial(p); // its blocks matched, its whole did not: nothing of it is trusted further
                }
            }

            p.Chunk.Dispose();
            if (ex is TimeoutException)
            {
                throw new LmfsException($"chunk {e.Id} could not be fetched within {_options.FetchTimeout.TotalSeconds:0.#} s (--fetch-timeout)", "check that the object store is reachable", 5, ex);
            }

            throw;
        }
    }

    /// <summary>Caller holds _lock. Drops the partials of <paramref name="ids"/> (<see cref="Evict"/>), or all of them (null: <see cref="Dispose"/>).</summary>
    private void DropPartials(IEnumerable<ChunkId>? ids)
    {
        foreach (var p in ids is null ? _partials.Values.ToList() : ids.Select(id => _partials.GetValueOrDefault(id)).OfType<Partial>().ToList())
        {
            RemovePartial(p);
        }
    }

    private void AddPartialStats(System.Text.Json.Nodes.JsonObject o)
    {
        o["blockFetches"] = Interlocked.Read(ref _blockFetches);
        o["partialHits"] = Interlocked.Read(ref _partialHits);
        lock (_lock)
        {
            o["partialChunks"] = _partials.Count;
        }
    }
}
