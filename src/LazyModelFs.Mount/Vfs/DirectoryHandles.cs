using System.Text;
using LazyModelFs.Fuse;
using LazyModelFs.Meta;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Vfs;

/// <summary>
/// The open directory handles of a mount, and the listings they read.
///
/// Why this exists (issue 11, item 10): a READDIR cookie must stay valid however the kernel replays
/// a directory (fuse-protocol.md 8.5), so each handle reads one listing taken at OPENDIR. Kept per
/// handle, a 20,000-entry directory opened 900 times by an unprivileged user of an `--allow-other`
/// mount (as CSI stages) took the daemon from 52 MiB to 3.1 GiB: anyone on the node could OOM the
/// shared mount. So:
/// <list type="bullet">
/// <item>a listing is encoded once, compactly (names as one UTF-8 byte array, inodes and types in
/// arrays: about 13 bytes plus the name per entry), into a <see cref="DirectorySnapshot"/>;</item>
/// <item>handles of the same directory share one snapshot while its content is the same: every
/// OPENDIR still lists the directory (so it sees what was imported before it), and a listing equal
/// to the directory's current snapshot is dropped in favour of it. Memory then grows with the
/// number of distinct directory versions held open, which an unprivileged user cannot create;</item>
/// <item>OPENDIRs of one directory that wait for a listing slot share the listing that runs next:
/// it starts after all of them arrived, so it is fresh for each. At most
/// <see cref="ConcurrentListings"/> listings run at once, so a storm of OPENDIRs (async with Redis)
/// cannot hold thousands of transient listings in memory at once;</item>
/// <item>the number of open handles and the bytes of all snapshots are bounded
/// (<see cref="VfsOptions.MaxDirectoryHandles"/>, <see cref="VfsOptions.MaxDirectoryBytes"/>); past
/// a bound OPENDIR answers ENFILE ("Too many open files in system") and the log says so, at most
/// every 10 s per bound. One snapshot is admitted whatever its size when no other is held, so a directory
/// larger than the budget can still be listed.</item>
/// </list>
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "its one disposable, a SemaphoreSlim whose wait handle is never asked for, holds nothing to free; it lives as long as the mount")]
internal sealed class DirectoryHandles(IMetaStore meta, VfsOptions options, ILogger log)
{
    /// <summary>Listings fetched from the metadata engine at once.</summary>
    public const int ConcurrentListings = 4;

    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, DirectorySnapshot> _handles = [];
    private readonly Dictionary<ulong, uint> _owners = [];   // handle → uid that opened it
    private readonly Dictionary<uint, int> _perUid = [];      // uid → handles open (reserved ones included)
    private readonly Dictionary<ulong, DirectorySnapshot> _current = [];
    private readonly Dictionary<ulong, TaskCompletionSource<DirectorySnapshot>> _waiting = [];
    private readonly SemaphoreSlim _slots = new(ConcurrentListings);
    private ulong _nextFh;
    private int _reserved;
    private int _snapshots;
    private long _bytes;
    private long _refused;
    private readonly long[] _lastRefusalLog = [-10_000, -10_000, -10_000]; // per bound: handles, bytes, one user's share of handles

    /// <summary>Open directory handles.</summary>
    public int Open
    {
        get
        {
            lock (_lock)
            {
                return _handles.Count;
            }
        }
    }

    /// <summary>Distinct listings held by open handles.</summary>
    public int Snapshots
    {
        get
        {
            lock (_lock)
            {
                return _snapshots;
            }
        }
    }

    /// <summary>Bytes those listings take (their arrays).</summary>
    public long Bytes
    {
        get
        {
            lock (_lock)
            {
                return _bytes;
            }
        }
    }

    /// <summary>OPENDIRs refused with ENFILE since the mount started.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Opens a handle on directory <paramref name="dir"/>: its number, or ENFILE past a bound. Metadata errors throw.</summary>
    public async ValueTask<FuseResult<ulong>> OpenAsync(FuseContext ctx, ulong dir)
    {
        lock (_lock)
        {
            if (_handles.Count + _reserved >= options.MaxDirectoryHandles)
            {
                return Refuse(ctx, dir, 0, $"{_handles.Count + _reserved} directory handles are open, the limit of this mount");
            }

            // One user (a pod's uid on a shared --allow-other mount) may hold at most half of the
            // handles, so it cannot lock every other user out of listing directories. Root is not bounded here.
            int mine = _perUid.GetValueOrDefault(ctx.Uid);
            if (ctx.Uid != 0 && mine >= PerUserHandles)
            {
                return Refuse(ctx, dir, 2, $"uid {ctx.Uid} holds {mine} directory handles, its share ({PerUserHandles}) of this mount's {options.MaxDirectoryHandles}");
            }

            _perUid[ctx.Uid] = mine + 1;
            _reserved++;
        }

        bool reserved = true, counted = true;
        try
        {
            var fresh = await ListAsync(dir).ConfigureAwait(false);
            lock (_lock)
            {
                _reserved--;
                reserved = false;
                if (!(_current.TryGetValue(dir, out var snap) && snap.SameAs(fresh)))
                {
                    if (_bytes > 0 && _bytes + fresh.Bytes > options.MaxDirectoryBytes)
                    {
                        return Refuse(ctx, dir, 1, $"open directory listings hold {_bytes} bytes and this one needs {fresh.Bytes}; the limit of this mount is {options.MaxDirectoryBytes}");
                    }

                    snap = fresh;
                    _current[dir] = snap; // an older version stays alive as long as its handles
                    _bytes += snap.Bytes;
                    _snapshots++;
                }

                snap.Handles++;
                ulong fh = ++_nextFh;
                _handles[fh] = snap;
                _owners[fh] = ctx.Uid;
                counted = false; // the handle carries the uid's count from here; Release gives it back
                return fh;
            }
        }
        finally
        {
            lock (_lock)
            {
                if (reserved)
                {
                    _reserved--;
                }

                if (counted)
                {
                    Uncount(ctx.Uid);
                }
            }
        }
    }

    /// <summary>Handles one non-root uid may hold: half the mount's bound.</summary>
    private int PerUserHandles => Math.Max(1, options.MaxDirectoryHandles / 2);

    /// <summary>Caller holds _lock.</summary>
    private void Uncount(uint uid)
    {
        if (_perUid.TryGetValue(uid, out int n) && --n <= 0)
        {
            _perUid.Remove(uid);
        }
        else if (n > 0)
        {
            _perUid[uid] = n;
        }
    }

    /// <summary>The listing a handle reads, or null for a handle that is not open.</summary>
    public DirectorySnapshot? Get(ulong fh)
    {
        lock (_lock)
        {
            return _handles.GetValueOrDefault(fh);
        }
    }

    public void Release(ulong fh)
    {
        lock (_lock)
        {
            if (!_handles.Remove(fh, out var snap))
            {
                return;
            }

            if (_owners.Remove(fh, out uint uid))
            {
                Uncount(uid);
            }

            if (--snap.Handles > 0)
            {
                return;
            }

            _bytes -= snap.Bytes;
            _snapshots--;
            if (_current.TryGetValue(snap.Dir, out var cur) && ReferenceEquals(cur, snap))
            {
                _current.Remove(snap.Dir);
            }
        }
    }

    /// <summary>Counts and logs a refusal (under the lock); the log says so at most every 10 s per bound.</summary>
    private Errno Refuse(FuseContext ctx, ulong dir, int bound, string why)
    {
        long n = Interlocked.Increment(ref _refused);
        long now = Environment.TickCount64;
        if (now - _lastRefusalLog[bound] >= 10_000)
        {
            _lastRefusalLog[bound] = now;
            log.LogWarning("vfs: opendir of inode {Ino} by uid {Uid} (pid {Pid}) refused with ENFILE: {Why} ({Refused} refused so far)", dir, ctx.Uid, ctx.Pid, why, n);
        }

        return Errno.ENFILE;
    }

    /// <summary>A listing that starts after this call: shared with the other OPENDIRs of the directory still waiting for a slot.</summary>
    private Task<DirectorySnapshot> ListAsync(ulong dir)
    {
        TaskCompletionSource<DirectorySnapshot>? mine = null;
        Task<DirectorySnapshot> task;
        lock (_lock)
        {
            if (_waiting.TryGetValue(dir, out var waiting))
            {
                task = waiting.Task;
            }
            else
            {
                mine = new(TaskCreationOptions.RunContinuationsAsynchronously);
                _waiting[dir] = mine;
                task = mine.Task;
            }
        }

        if (mine is not null)
        {
            _ = RunListingAsync(dir, mine);
        }

        return task;
    }

    private async Task RunListingAsync(ulong dir, TaskCompletionSource<DirectorySnapshot> done)
    {
        try
        {
            await _slots.WaitAsync().ConfigureAwait(false);
            try
            {
                lock (_lock)
                {
                    _waiting.Remove(dir); // from here on, a new OPENDIR needs a listing that starts after it
                }

                var entries = await meta.ListAsync(dir).ConfigureAwait(false);
                done.SetResult(new DirectorySnapshot(dir, entries));
            }
            finally
            {
                _slots.Release();
            }
        }
        catch (Exception ex)
        {
            lock (_lock)
            {
                if (_waiting.TryGetValue(dir, out var w) && ReferenceEquals(w, done))
                {
                    _waiting.Remove(dir);
                }
            }

            done.TrySetException(ex);
        }
    }
}

/// <summary>One directory listing, encoded once and shared by every handle that reads that version of the directory.</summary>
internal sealed class DirectorySnapshot
{
    private readonly byte[] _names;
    private readonly int[] _ends;
    private readonly ulong[] _inos;
    private readonly byte[] _types;

    internal DirectorySnapshot(ulong dir, IReadOnlyList<DirEntry> entries)
    {
        Dir = dir;
        int total = 0;
        foreach (var e in entries)
        {
            total += Encoding.UTF8.GetByteCount(e.Name);
        }

        _names = new byte[total];
        _ends = new int[entries.Count];
        _inos = new ulong[entries.Count];
        _types = new byte[entries.Count];
        int at = 0;
        for (int i = 0; i < entries.Count; i++)
        {
            at += Encoding.UTF8.GetBytes(entries[i].Name, _names.AsSpan(at));
            _ends[i] = at;
            _inos[i] = entries[i].Ino;
            _types[i] = (byte)entries[i].Type;
        }

        // The arrays, their headers and this object; what the budget counts.
        Bytes = _names.Length + (13L * entries.Count) + (4 * 24) + 64;
    }

    public ulong Dir { get; }

    public int Count => _inos.Length;

    public long Bytes { get; }

    /// <summary>Open handles reading it (under the owner's lock).</summary>
    internal int Handles { get; set; }

    public ReadOnlySpan<byte> Name(int i) => _names.AsSpan(i == 0 ? 0 : _ends[i - 1], _ends[i] - (i == 0 ? 0 : _ends[i - 1]));

    public ulong Ino(int i) => _inos[i];

    public NodeType Type(int i) => (NodeType)_types[i];

    public bool SameAs(DirectorySnapshot other) =>
        Dir == other.Dir && _names.AsSpan().SequenceEqual(other._names) && _ends.AsSpan().SequenceEqual(other._ends)
        && _inos.AsSpan().SequenceEqual(other._inos) && _types.AsSpan().SequenceEqual(other._types);
}
