using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using LazyModelFs.Chunks;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Cache;

/// <summary>
/// Disk-tier writes behind the reader (issue 13): a chunk fetched from the store goes to a bounded
/// queue served by a few writer threads of its own, and is answered to its readers at once. When
/// the queue is full (the disk is slower than the store), the write is skipped and counted instead
/// of holding a memory buffer and a pool thread, so a slow cache disk never throttles a reader. A
/// skipped chunk is remembered and filled later: whenever the queue drains, the skipped chunks the
/// memory tier still holds are written from it in the background; and when a file is closed with
/// only skipped chunks missing (it was read whole), the rest are fetched again at prefetch priority
/// and written before its view is built (ChunkCache.Views.cs). A file read in part keeps its gaps:
/// they are fetched, and cached, when next read.
/// </summary>
public sealed partial class ChunkCache
{
    private const int MaxRemembered = 1 << 16; // skipped chunk ids kept for a later fill (a 256 GiB file of 4 MiB chunks)
    private BlockingCollection<PendingWrite>? _writeQueue;
    private Thread[] _writers = [];
    private int _maxQueuedWrites;
    private readonly Dictionary<ChunkId, ChunkEntry> _skipped = []; // under _lock
    private Task _refill = Task.CompletedTask; // under _lock: the fill of skipped chunks under way
    private long _writesSkipped;
    private long _writesSkippedBytes;
    private long _writesRefilled;

    private sealed record PendingWrite(ChunkEntry Row, CachedChunk Chunk, int Offset, TaskCompletionSource Written);

    /// <summary>Chunks whose disk write was skipped because the queue was full, and their bytes.</summary>
    public long WritesSkipped => Interlocked.Read(ref _writesSkipped);

    private void StartWriters()
    {
        if (_disk is null)
        {
            return;
        }

        _maxQueuedWrites = _options.MaxQueuedWrites ?? Math.Max(4, _memory.Capacity / 4);
        _writeQueue = new BlockingCollection<PendingWrite>();
        _writers = new Thread[Math.Clamp(Environment.ProcessorCount / 4, 2, 4)];
        for (int i = 0; i < _writers.Length; i++)
        {
            _writers[i] = new Thread(WriterLoop) { IsBackground = true, Name = "lmfs-cache-writer" };
            _writers[i].Start();
        }
    }

    /// <summary>
    /// Caller holds _lock. A place in the write queue for the chunk (its completion, registered in
    /// <c>_writes</c>), or null when it is being written already or the queue is full (then the
    /// write is skipped and counted).
    /// </summary>
    private TaskCompletionSource? ReserveWrite(in ChunkEntry row)
    {
        if (_writes.ContainsKey(row.Id) || _writeQueue is null)
        {
            return null;
        }

        if (_pendingWrites >= _maxQueuedWrites)
        {
            Interlocked.Increment(ref _writesSkipped);
            Interlocked.Add(ref _writesSkippedBytes, row.PlainLength);
            if (_skipped.Count < MaxRemembered)
            {
                _skipped.TryAdd(row.Id, row);
            }

            return null;
        }

        Interlocked.Increment(ref _pendingWrites);
        var written = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _writes[row.Id] = written;
        return written;
    }

    /// <summary>Hands the write reserved by <see cref="ReserveWrite"/> to the writers, with one reference to <paramref name="chunk"/> that they release.</summary>
    private void EnqueueWrite(in ChunkEntry row, CachedChunk chunk, int offset, TaskCompletionSource written)
    {
        var w = new PendingWrite(row, chunk, offset, written);
        try
        {
            _writeQueue!.Add(w);
        }
        catch (InvalidOperationException)
        {
            WriteDone(w); // shutting down: not written
        }
    }

    private void WriterLoop()
    {
        foreach (var w in _writeQueue!.GetConsumingEnumerable())
        {
            try
            {
                _disk!.Write(w.Row, w.Chunk.Buffer.Span[w.Offset..]);
            }
            catch (Exception ex)
            {
                _log.LogWarning("cache: writing chunk {Id} failed: {Message}", w.Row.Id, ex.Message);
            }
            finally
            {
                WriteDone(w);
            }
        }
    }

    private void WriteDone(PendingWrite w)
    {
        w.Chunk.Dispose();
        lock (_lock)
        {
            Interlocked.Decrement(ref _pendingWrites);
            _skipped.Remove(w.Row.Id);
            MaybeRefill();
        }

        EndDiskWrite(w.Row.Id, w.Written);
    }

    /// <summary>Caller holds _lock. Once the queue has drained, writes what was skipped (one fill at a time).</summary>
    private void MaybeRefill()
    {
        if (_pendingWrites > 0 || _skipped.Count == 0 || !_refill.IsCompleted || _shutdown.IsCancellationRequested)
        {
            return;
        }

        // Only what the memory tier still holds: writing it costs no fetch. The rest waits for its
        // file's close (FillSkippedAsync), where a file read whole is worth completing from the store.
        var batch = _skipped.Values.Where(e => _memory.Contains(e.Id)).ToList();
        if (batch.Count == 0)
        {
            return;
        }

        foreach (var e in batch)
        {
            _skipped.Remove(e.Id);
        }

        Interlocked.Increment(ref _refilling);
        _refill = Task.Run(async () =>
        {
            try
            {
                var missing = batch.Where(e => !_disk!.Contains(e.Id)).ToList();
                var r = await FillAsync(new CacheCheck(batch.Count, batch.Sum(e => (long)e.PlainLength), missing), 2, null, _shutdown.Token).ConfigureAwait(false);
                Interlocked.Add(ref _writesRefilled, r.Stored);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                // unmounting
            }
            catch (Exception ex)
            {
                _log.LogInformation("cache: filling in {Count} chunks whose cache writes were skipped failed: {Message}; they are cached when next read", batch.Count, ex.Message);
            }
            finally
            {
                Interlocked.Decrement(ref _refilling);
            }
        });
    }

    private int _refilling;

    /// <summary>
    /// Writes the file's chunks that are missing from the disk tier because their writes were
    /// skipped, when those are all it lacks (a file read only in part is not completed). True when
    /// the disk tier holds the whole file afterwards.
    /// </summary>
    private async Task<bool> FillSkippedAsync(ChunkTable table, DiskCache disk)
    {
        Task refill;
        lock (_lock)
        {
            if (_skipped.Count == 0 && _refill.IsCompleted)
            {
                return false; // nothing skipped: the file was not read whole (HoldsAll said so already)
            }

            refill = _refill;
        }

        await refill.ConfigureAwait(false); // never faults
        var check = Check(table.Entries);
        if (check.Missing.Count == 0)
        {
            return true;
        }

        lock (_lock)
        {
            if (!check.Missing.All(e => _skipped.ContainsKey(e.Id)))
            {
                return false;
            }
        }

        var r = await FillAsync(check, 2, null, _shutdown.Token).ConfigureAwait(false);
        lock (_lock)
        {
            foreach (var e in check.Missing)
            {
                _skipped.Remove(e.Id);
            }
        }

        Interlocked.Add(ref _writesRefilled, r.Stored);
        return r.NotStored == 0 && disk.HoldsAll(table);
    }

    private void StopWriters()
    {
        // Writes already queued finish (a bounded few chunks), so a clean unmount leaves them cached.
        _writeQueue?.CompleteAdding();
        bool stopped = true;
        long deadline = Environment.TickCount64 + 10_000; // for all of them: a frozen disk does not hold an unmount longer
        foreach (var t in _writers)
        {
            stopped &= t.Join(TimeSpan.FromMilliseconds(Math.Max(0, deadline - Environment.TickCount64)));
        }

        if (stopped)
        {
            _writeQueue?.Dispose(); // a writer still in a write (a frozen disk) keeps it
        }
    }

    private void AddWriteStats(JsonObject o)
    {
        if (_disk is not null)
        {
            o["diskWritesSkipped"] = WritesSkipped;
            o["diskWritesSkippedBytes"] = Interlocked.Read(ref _writesSkippedBytes);
            o["diskWritesRefilled"] = Interlocked.Read(ref _writesRefilled);
        }
    }
}
