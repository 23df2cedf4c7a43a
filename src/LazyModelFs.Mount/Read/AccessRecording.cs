namespace LazyModelFs.Read;

/// <summary>
/// What one load of a file did (issue 17): the order in which READs first touched its chunks, which
/// chunks a prefetch was started for, and the profile or plan being replayed. One per file's read
/// side, replaced whole when the file is put back to cold (<see cref="OpenFileReader.Reset"/>), so a
/// READ racing the reset writes into the old one and nothing is torn.
///
/// The READ path pays one bit test per chunk it touches; the first touch of a chunk sets the bit
/// (an atomic OR) and appends under a lock, once per chunk per load.
/// </summary>
internal sealed class AccessRecording(int chunks)
{
    private readonly ulong[] _touched = new ulong[(chunks + 63) / 64];
    private readonly ulong[] _prefetched = new ulong[(chunks + 63) / 64];
    private readonly int[] _order = new int[chunks];
    private int _count;

    public int Chunks => chunks;

    /// <summary>The comm of the process whose READ came first: the name a profile is filed under when the opener's (<see cref="Opener"/>) could not be read.</summary>
    public string? Process;

    /// <summary>The opener's comm, which the profile lookup used.</summary>
    public string Opener = "";

    /// <summary>The profile lookup at the first open (null: none was made): the profile to replay and compare against.</summary>
    public Task<AccessProfile?>? Lookup;

    /// <summary>The replay running (a profile's or a plan's), if any: read with <see cref="Volatile"/>; a profile's is set only where none is (Interlocked), a plan's always.</summary>
    public PrefetchReplay? Replay;

    /// <summary>A loader's plan was given: a profile or the safetensors order found later gives way to it.</summary>
    public volatile bool Planned;

    /// <summary>The file's profiles were removed with this recording (the control socket's profile forget): nothing of it is stored.</summary>
    public volatile bool Dropped;

    /// <summary>Touches stored so far (a flush stores only a recording that grew).</summary>
    public int Flushed;

    /// <summary>This recording was found to disagree with the replayed profile: it is stored in its place from then on.</summary>
    public bool Replacing;

    /// <summary>The replayed profile was found to agree (counted once).</summary>
    public bool Kept;

    /// <summary>The stores of this load's snapshots, chained so they land in order (<see cref="ProfileBook.Flush"/>; changed under lock (this)).</summary>
    public Task Stores = Task.CompletedTask;

    public int Count => Volatile.Read(ref _count);

    /// <summary>Whether a READ touched chunk <paramref name="index"/> before (lock-free).</summary>
    public bool Touched(int index) => (Volatile.Read(ref _touched[index >> 6]) & (1UL << index)) != 0;

    /// <summary>Marks the chunk touched; true only for the call that touched it first (which appended it).</summary>
    public bool Touch(int index)
    {
        ulong bit = 1UL << index;
        if ((Interlocked.Or(ref _touched[index >> 6], bit) & bit) != 0)
        {
            return false;
        }

        lock (_order)
        {
            _order[_count] = index;
            Volatile.Write(ref _count, _count + 1);
        }

        return true;
    }

    /// <summary>Marks that a prefetch was started for the chunk; true the first time.</summary>
    public bool MarkPrefetched(int index)
    {
        ulong bit = 1UL << index;
        return (Interlocked.Or(ref _prefetched[index >> 6], bit) & bit) == 0;
    }

    public bool WasPrefetched(int index) => (Volatile.Read(ref _prefetched[index >> 6]) & (1UL << index)) != 0;

    /// <summary>The touches so far, in order.</summary>
    public int[] Snapshot()
    {
        lock (_order)
        {
            return _order.AsSpan(0, _count).ToArray();
        }
    }
}

/// <summary>
/// Prefetch in a given order (a recorded profile, or a plan a loader handed over), ahead of the
/// reader: at most <c>window</c> chunks past the furthest place in the order the reader has reached.
/// With a disk cache to fill the window is the whole order (fetches run at full concurrency; the
/// memory tier keeps prefetched chunks as the first to evict); without one it is a quarter of the
/// memory tier, so a replay never pushes out what the reader is about to use. Demand READs jump the
/// queue as always (<see cref="Cache.FetchPriority"/>).
/// </summary>
internal sealed class PrefetchReplay
{
    private readonly int[] _order;
    private readonly int[] _place; // chunk index → its place in _order, -1 when absent
    private readonly int _window;
    private readonly Action<int> _issue;
    private readonly Lock _lock = new();
    private int _next;
    private int _reached;

    public PrefetchReplay(IReadOnlyList<int> order, int chunks, int window, Action<int> issue)
    {
        _order = [.. order];
        _place = new int[chunks];
        Array.Fill(_place, -1);
        for (int p = 0; p < _order.Length; p++)
        {
            _place[_order[p]] = p;
        }

        _window = Math.Max(1, window);
        _issue = issue;
    }

    public int Length => _order.Length;

    public void Start() => Advance();

    /// <summary>A READ touched chunk <paramref name="index"/> for the first time: the window moves on when it is in the order.</summary>
    public void Reached(int index)
    {
        int p = (uint)index < (uint)_place.Length ? _place[index] : -1;
        if (p < 0)
        {
            return;
        }

        lock (_lock)
        {
            if (p + 1 <= _reached)
            {
                return;
            }

            _reached = p + 1;
        }

        Advance();
    }

    private void Advance()
    {
        while (true)
        {
            int i;
            lock (_lock)
            {
                if (_next >= _order.Length || _next >= (long)_reached + _window)
                {
                    return;
                }

                i = _order[_next++];
            }

            _issue(i);
        }
    }
}
