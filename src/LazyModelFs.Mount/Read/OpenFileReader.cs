using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Meta;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Read;

/// <summary>
/// The read side of one file of the mount: turns the kernel's READs into chunk leases, and plans
/// what to fetch before it is asked for (readahead, whole-file and safetensors prefetch).
///
/// One per file the daemon knows (per inode incarnation: a number the metadata hands out again to
/// another file gets another one), not one per handle. The kernel opens one file many times —
/// several processes, a loader opening each shard twice, tensor-parallel ranks — and all of them
/// feed the same <see cref="AccessPattern"/>, whose streams tell those readers apart, and share one
/// prefetch, started by the first open (issue 4). <see cref="Vfs.LmfsFileSystem"/> makes it when it
/// first tracks a file, attaches the chunk table at the first open, and maps every handle of the
/// file to it; the VFS keeps inodes, handles, directories and attributes, this class keeps reading.
///
/// A READ inside one chunk whose buffer is in the memory tier is answered synchronously, with no
/// allocation, straight from that buffer (<see cref="FuseReadResult.FromMemory"/>, the lease released
/// after the reply is written); everything else goes through an async path. A READ across two chunks
/// is copied into the kernel's buffer. A chunk that cannot be had (missing, damaged, store
/// unreachable past the fetch deadline) fails the READ with EIO — never short, never wrong bytes —
/// and is logged with the file's name, inode and chunk. Chunk geometry is the table's
/// (<see cref="ChunkTable.Locate"/>, <see cref="ChunkTable.ChunkRange"/>).
/// </summary>
internal sealed class OpenFileReader
{
    private readonly Node _node;
    private readonly ChunkCache _cache;
    private readonly PrefetchMode _prefetch;
    private readonly ILogger _log;
    private readonly AccessPattern _pattern;
    private readonly ProfileBook? _profiles;
    private ChunkTable? _table;
    private volatile AccessRecording? _rec;
    private int _prefetchStarted;

    /// <param name="profiles">The mount's access profiles (null: no recording and no replay).</param>
    public OpenFileReader(Node node, int chunkSize, ChunkCache cache, PrefetchMode prefetch, long readaheadMax, ILogger log, ProfileBook? profiles = null)
    {
        _node = node;
        _cache = cache;
        _prefetch = prefetch;
        _log = log;
        _profiles = profiles;
        _pattern = new AccessPattern(chunkSize, readaheadMax);
    }

    /// <summary>The file's chunk table, once the first open attached it (checked there against the record).</summary>
    public ChunkTable? Table => _table;

    /// <summary>The name the file was last looked up by, for log lines (an inode may have several).</summary>
    public string? Name { get; private set; }

    /// <summary>Named *.safetensors by some lookup (names live in directory entries, so lookups tell).</summary>
    public bool IsSafetensors { get; private set; }

    /// <summary>A lookup or READDIRPLUS found the file under <paramref name="name"/>.</summary>
    public void NameSeen(string name)
    {
        Name = name;
        if (name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            IsSafetensors = true;
        }
    }

    /// <summary>Gives the file its chunk table (at OPEN, before any handle can READ).</summary>
    public void Attach(ChunkTable table)
    {
        lock (_pattern)
        {
            if (_table is not null)
            {
                return; // two first opens at once (ranks): the one table, the one recording
            }

            _rec = new AccessRecording(table.Count);
            _table = table;
        }
    }

    /// <summary>
    /// A handle was opened by process <paramref name="pid"/>: the first open (or the first after
    /// <see cref="Reset"/>) looks up the file's access profile and starts prefetch.
    /// </summary>
    public void Opened(uint pid = 0)
    {
        if (Interlocked.Exchange(ref _prefetchStarted, 1) == 0)
        {
            StartPrefetch(pid);
        }
    }

    /// <summary>
    /// The last handle was released, or the daemon is letting the file go: what this load recorded so
    /// far is stored (when it grew, and differs from the profile replayed). A file opened again goes on recording.
    /// </summary>
    public void Released()
    {
        if (_rec is { } rec && _table is { } table)
        {
            _profiles?.Flush(rec, table, _node.Ino);
        }
    }

    /// <summary>
    /// Back to how a fresh mount would find the file: readahead streams forgotten, prefetch started
    /// again by the next open (the control socket's <c>forget</c>; the caches are its caller's).
    /// </summary>
    /// <param name="record">Store what the load so far recorded (false: drop it, for a caller removing the file's profiles).</param>
    /// <returns>The load's recording that was replaced (its <see cref="AccessRecording.Stores"/> end its stores), or null.</returns>
    public AccessRecording? Reset(bool record = true)
    {
        _pattern.Reset();
        AccessRecording? old = null;
        if (_table is { } table)
        {
            old = _rec;
            _rec = new AccessRecording(table.Count);
            if (old is not null)
            {
                if (record)
                {
                    _profiles?.Flush(old, table, _node.Ino);
                }
                else
                {
                    old.Dropped = true;
                }
            }
        }

        Interlocked.Exchange(ref _prefetchStarted, 0);
        return old;
    }

    // ------------------------------------------------------------------ READ

    public ValueTask<FuseReadResult> ReadAsync(long offset, Memory<byte> buffer, uint pid = 0)
    {
        if (_table is not { } table)
        {
            return ValueTask.FromResult<FuseReadResult>(Errno.EBADF);
        }

        long size = (long)_node.Size;
        if (offset >= size || buffer.Length == 0)
        {
            return ValueTask.FromResult(FuseReadResult.InBuffer(0));
        }

        int len = (int)Math.Min(buffer.Length, size - offset);
        if (_pattern.OnRead(offset, len, size, out bool sequential) is { } ahead && _prefetch != PrefetchMode.None)
        {
            Readahead(table, ahead.From, ahead.To);
        }

        var at = table.Locate(offset);
        int last = table.Locate(offset + len - 1).Index;
        if (_rec is { } rec)
        {
            // Recording (issue 17): one bit test per chunk touched; the first touch of a chunk does the rest.
            for (int i = at.Index; i <= last; i++)
            {
                if (!rec.Touched(i))
                {
                    FirstTouch(rec, table, i, pid);
                }
            }
        }

        if (at.Index == last)
        {
            var vt = _cache.GetRangeAsync(table[at.Index], at.Within, len, sequential);
            if (!vt.IsCompletedSuccessfully)
            {
                return ReadOneAsync(vt, at.Within, len, at.Index);
            }

            var c = vt.Result;
            if (at.Within + len > c.Data.Length)
            {
                c.Dispose();
                return ValueTask.FromResult(ReadFailed(ShortChunk(at.Index, c.Data.Length, at.Within + len), at.Index));
            }

            _cache.CountServed(c, memoryHit: true, len);
            return ValueTask.FromResult(FuseReadResult.FromMemory(c.Data.Slice(at.Within, len), c)); // zero copy; released after the reply
        }

        return ReadSpanningAsync(table, offset, buffer[..len], sequential);
    }

    private async ValueTask<FuseReadResult> ReadOneAsync(ValueTask<CachedChunk> vt, int within, int len, int index)
    {
        CachedChunk? c = null;
        try
        {
            c = await vt.ConfigureAwait(false);
            if (within + len > c.Data.Length)
            {
                throw ShortChunk(index, c.Data.Length, within + len);
            }

            _cache.CountServed(c, memoryHit: false, len);
            return FuseReadResult.FromMemory(c.Data.Slice(within, len), c);
        }
        catch (Exception ex)
        {
            c?.Dispose();
            return ReadFailed(ex, index);
        }
    }

    /// <summary>
    /// Never reached while the reader checks every chunk against its row and tables are checked at
    /// decode and open; kept so that a chunk shorter than the range is an error, never a loop or a short reply.
    /// </summary>
    private Util.ChunkRowMismatchException ShortChunk(int index, int have, int need) =>
        new($"inode {_node.Ino}: chunk {index} has {have} bytes where the chunk table needs {need}");

    private async ValueTask<FuseReadResult> ReadSpanningAsync(ChunkTable table, long offset, Memory<byte> dest, bool sequential)
    {
        int done = 0;
        while (done < dest.Length)
        {
            var (index, within) = table.Locate(offset + done);
            CachedChunk c;
            bool hit;
            try
            {
                var vt = _cache.GetRangeAsync(table[index], within, Math.Min(dest.Length - done, table[index].PlainLength - within), sequential);
                hit = vt.IsCompletedSuccessfully;
                c = await vt.ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                return ReadFailed(ex, index);
            }

            using (c)
            {
                int n = Math.Min(dest.Length - done, c.Data.Length - within);
                if (n <= 0 || (n < dest.Length - done && within + n != table.ChunkSize))
                {
                    return ReadFailed(ShortChunk(index, c.Data.Length, Math.Min(table.ChunkSize, within + dest.Length - done)), index);
                }

                c.Data.Span.Slice(within, n).CopyTo(dest.Span[done..]);
                _cache.CountServed(c, hit, n);
                done += n;
            }
        }

        return FuseReadResult.InBuffer(done);
    }

    private FuseReadResult ReadFailed(Exception ex, int index)
    {
        _log.LogError(
            "vfs: READ of '{Name}' (inode {Ino}) failed at chunk {Index} ({Chunk}): {Message}",
            Name ?? "?",
            _node.Ino,
            index,
            _table is { } t && index < t.Count ? t[index].Id.ToString() : "?",
            ex.Message);
        return Errno.EIO;
    }

    // ------------------------------------------------------------------ recording and replay (issue 17)

    private void FirstTouch(AccessRecording rec, ChunkTable table, int index, uint pid)
    {
        if (!rec.Touch(index))
        {
            return; // another READ got there first
        }

        try
        {
            rec.Process ??= ProcessName(pid);
            if (rec.WasPrefetched(index))
            {
                _profiles?.CountPrefetchHit(table[index].PlainLength);
            }

            Volatile.Read(ref rec.Replay)?.Reached(index);
            if (rec.Count == rec.Chunks)
            {
                _profiles?.Flush(rec, table, _node.Ino); // every chunk touched: the profile is complete
            }
        }
        catch (Exception ex)
        {
            // Recording and replay only ever order prefetch: whatever fails here must not fail the READ.
            _log.LogDebug("vfs: inode {Ino}: recording chunk {Index} failed: {Message}", _node.Ino, index, ex.Message);
        }
    }

    /// <summary>
    /// The kernel's comm of the process a request came from (what a profile is filed under), "" when it
    /// cannot be read (gone, another pid namespace). FUSE names the calling thread: its thread group
    /// (the process) is looked up first, so a loader's worker threads count as the loader.
    /// </summary>
    internal static string ProcessName(uint pid)
    {
        if (pid == 0)
        {
            return "";
        }

        try
        {
            uint tgid = pid;
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("Tgid:", StringComparison.Ordinal))
                {
                    tgid = uint.TryParse(line.AsSpan(5).Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out uint t) ? t : pid;
                    break;
                }
            }

            return AccessProfile.TrimProcess(File.ReadAllText($"/proc/{tgid}/comm"));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }

    /// <summary>Starts a background fetch of chunk <paramref name="index"/> on behalf of prefetch, counting it for the hit and waste figures.</summary>
    private void PrefetchChunk(AccessRecording? rec, ChunkTable table, int index)
    {
        // A chunk a READ touched first is fetched all the same (that READ may have fetched only its blocks),
        // but it is not counted: prefetch did not bring it early.
        if (_cache.Prefetch(table[index], FetchPriority.Prefetch) && rec is not null && !rec.Touched(index) && rec.MarkPrefetched(index))
        {
            _profiles?.CountPrefetch(table[index].PlainLength);
        }
    }

    /// <summary>
    /// Replays <paramref name="order"/> (chunk indices) ahead of the reader (<see cref="PrefetchReplay"/>):
    /// with a disk cache to fill, all of it at once; without, a quarter of the memory tier ahead.
    /// </summary>
    /// <returns>False when a profile's replay gave way to a plan that came first.</returns>
    private bool StartReplay(AccessRecording rec, ChunkTable table, IReadOnlyList<int> order, bool plan)
    {
        int window = _cache.CachesStoreReads ? int.MaxValue : Math.Max(2, _cache.Memory.Capacity / 4);
        var replay = new PrefetchReplay(order, table.Count, window, i => PrefetchChunk(rec, table, i));
        if (plan)
        {
            rec.Planned = true;
            Volatile.Write(ref rec.Replay, replay);
        }
        else if (Interlocked.CompareExchange(ref rec.Replay, replay, null) is not null)
        {
            return false;
        }

        foreach (int i in order)
        {
            if (rec.Touched(i))
            {
                replay.Reached(i); // READs that came before the replay started move its window too
            }
        }

        replay.Start();
        return true;
    }

    private async Task ReplayOrFallbackAsync(AccessRecording rec, ChunkTable table)
    {
        try
        {
            var profile = rec.Lookup is { } lookup ? await lookup.ConfigureAwait(false) : null;
            if (rec != _rec || rec.Planned)
            {
                return; // reset since, or a plan came first
            }

            if (profile is { Order.Count: > 0, Stable: true })
            {
                if (StartReplay(rec, table, profile.Order, plan: false))
                {
                    _profiles?.CountReplay();
                    _log.LogDebug("vfs: inode {Ino}: replaying the access profile of '{Process}' ({Chunks} of {Count} chunks, recorded {When:u})", _node.Ino, Util.TerminalText.Safe(profile.Process), profile.Order.Count, table.Count, profile.Recorded);
                }
            }
            else
            {
                if (profile is { Stable: false })
                {
                    _log.LogDebug("vfs: inode {Ino}: not replaying its access profile: {Misses} loads in a row read it in another order", _node.Ino, profile.Misses);
                }

                if (_cache.CachesStoreReads && IsSafetensors)
                {
                    await PrefetchSafetensorsAsync(table).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex)
        {
            _log.LogWarning("vfs: prefetch of inode {Ino} stopped: {Message}", _node.Ino, ex.Message);
        }
    }

    /// <summary>
    /// A loader's own read plan (the control socket's <c>plan</c>, <c>lmfs plan</c>): the byte ranges it
    /// will read, in order. Queued background fetches of the file are dropped and the plan's chunks are
    /// prefetched in its order, ahead of the reader, as a profile would be. Returns the chunks planned.
    /// </summary>
    public int Plan(IReadOnlyList<(long Offset, long Length)> ranges)
    {
        if (_table is not { } table || _rec is not { } rec)
        {
            throw new Util.LmfsException($"inode {_node.Ino} has not been opened on this mount", "open the file first (lmfs plan holds it open while it sends the plan)", 2);
        }

        long size = table.PlainSize;
        var order = new List<int>();
        var seen = new bool[table.Count];
        foreach (var (off, len) in ranges)
        {
            if (off < 0 || len <= 0 || off >= size)
            {
                continue;
            }

            var (first, lastChunk) = table.ChunkRange(off, len >= size - off ? size : off + len); // no off + len overflow
            for (int i = first; i <= lastChunk; i++)
            {
                if (!seen[i])
                {
                    seen[i] = true;
                    order.Add(i);
                }
            }
        }

        rec.Planned = true; // before the queue is cleared: a safetensors prefetch still issuing stops
        _cache.CancelQueued(table.Entries.Select(e => e.Id));
        Interlocked.Exchange(ref _prefetchStarted, 1); // a first open after this keeps the plan
        _profiles?.CountPlan();
        _log.LogInformation("vfs: inode {Ino}: a read plan of {Ranges} ranges, {Chunks} of {Count} chunks, replaces its prefetch", _node.Ino, ranges.Count, order.Count, table.Count);
        StartReplay(rec, table, order, plan: true);
        return order.Count;
    }

    // ------------------------------------------------------------------ readahead and prefetch

    private void Readahead(ChunkTable table, long from, long to)
    {
        var (first, last) = table.ChunkRange(from, to);
        for (int i = first; i <= last; i++)
        {
            _cache.Prefetch(table[i], FetchPriority.Readahead);
        }
    }

    private void StartPrefetch(uint pid)
    {
        if (_table is not { Count: > 0 } table)
        {
            return;
        }

        var rec = _rec;
        if (rec is not null && _profiles is not null && (_prefetch == PrefetchMode.Auto || _profiles.Records))
        {
            // Looked up whether or not it is replayed: a load's recording is stored only when it differs from it.
            // Off the OPEN path (an embedded engine answers synchronously); the opener's name is read there too.
            var profiles = _profiles;
            rec.Lookup = Task.Run(() =>
            {
                rec.Opener = ProcessName(pid);
                return profiles.FindAsync(table, rec.Opener, _node.Ino);
            });
        }

        if (_prefetch == PrefetchMode.Auto && rec is not null)
        {
            // Off the OPEN path: an embedded engine answers the lookup synchronously, and issuing a replay
            // asks the disk cache about every chunk.
            _ = Task.Run(() => ReplayOrFallbackAsync(rec, table));
            return;
        }

        if (!_cache.CachesStoreReads)
        {
            return; // without a disk cache to fill, whole-file prefetch would only churn the memory tier
        }

        if (_prefetch == PrefetchMode.WholeFile)
        {
            for (int i = 0; i < table.Count; i++)
            {
                PrefetchChunk(rec, table, i);
            }
        }
        else if (_prefetch == PrefetchMode.Safetensors && IsSafetensors)
        {
            _ = PrefetchSafetensorsAsync(table);
        }
    }

    /// <summary>
    /// The header chunk(s) first (readahead priority), then the chunks holding tensor data, in file
    /// order, at prefetch priority: the scheduler runs them at full concurrency while demand READs
    /// jump the queue. A header that does not parse falls back to whole-file order.
    /// </summary>
    private async Task PrefetchSafetensorsAsync(ChunkTable table)
    {
        long size = (long)_node.Size;
        try
        {
            long? n;
            // The header's blocks only (format v2): the loader's own first READs want the same ones, and
            // a whole-chunk fetch started here would make them wait for all of chunk 0.
            using (var c0 = await _cache.GetRangeAsync(table[0], 0, Math.Min(8, table[0].PlainLength), sequential: false, FetchPriority.Readahead).ConfigureAwait(false))
            {
                n = SafetensorsHeader.HeaderLength(c0.Data.Span, size);
            }

            List<(long Begin, long End)>? ranges = null;
            if (n is { } headerLen)
            {
                var json = new byte[headerLen];
                for (long pos = 8; pos < 8 + headerLen;)
                {
                    var (idx, within) = table.Locate(pos);
                    int want = (int)Math.Min(table[idx].PlainLength - within, 8 + headerLen - pos);
                    using var c = await _cache.GetRangeAsync(table[idx], within, want, sequential: false, FetchPriority.Readahead).ConfigureAwait(false);
                    int take = (int)Math.Min(c.Data.Length - within, want);
                    if (take <= 0)
                    {
                        throw new Util.ChunkRowMismatchException($"inode {_node.Ino}: chunk {idx} is shorter than the safetensors header needs");
                    }

                    c.Data.Span.Slice(within, take).CopyTo(json.AsSpan((int)(pos - 8)));
                    pos += take;
                }

                ranges = SafetensorsHeader.TensorRanges(json, size);
            }

            var order = new List<int>();
            var seen = new HashSet<int>();
            if (ranges is null)
            {
                _log.LogInformation("vfs: inode {Ino} has no readable safetensors header; prefetching it whole", _node.Ino);
                order.AddRange(Enumerable.Range(0, table.Count));
            }
            else
            {
                foreach (var (b, e) in ranges.Where(r => r.End > r.Begin))
                {
                    var (first, last) = table.ChunkRange(b, e);
                    for (int i = first; i <= last; i++)
                    {
                        if (seen.Add(i))
                        {
                            order.Add(i);
                        }
                    }
                }
            }

            var rec = _rec;
            foreach (int i in order)
            {
                if (rec?.Planned == true)
                {
                    break; // a loader's plan came: it orders the rest
                }

                PrefetchChunk(rec, table, i);
            }
        }
        catch (Exception ex)
        {
            _log.LogWarning("vfs: safetensors prefetch of inode {Ino} stopped: {Message}", _node.Ino, ex.Message);
        }
    }
}
