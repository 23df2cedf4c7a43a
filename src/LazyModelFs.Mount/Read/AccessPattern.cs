namespace LazyModelFs.Read;

/// <summary>
/// Sequential detection for one inode (shared by every handle and process reading it).
///
/// The kernel hands us READs of up to 1 MiB, several in flight and slightly out of order (async
/// readahead), and mmap loaders fault wherever tensors are. Several readers of one file — processes,
/// tensor-parallel ranks — each read sequentially from their own place, so one "last offset" would
/// make them all look random. So up to <see cref="MaxStreams"/> streams are tracked: a READ that
/// starts near where a stream left off continues it — within one READ (1 MiB) for a new stream,
/// within the stream's window once it is sequential (async READs arrive reordered up to that far) —
/// and that stream's
/// window doubles (from one chunk up to the readahead limit); a READ that continues no stream
/// starts a new one (replacing the least recently used) with no window, so random reads fetch only
/// what they touch. A stream earns a window once it has run sequentially for more than
/// <see cref="RunBeforeWindow"/>: the kernel turns one random 1 MiB pread into about 2 MiB of
/// sequential READs (its initial readahead), and opening a window on that made every random read
/// fetch a neighbouring chunk too (measured: cold random p99 110 ms with it, 40 ms without).
///
/// <see cref="OnRead"/> returns the byte range to fetch ahead, only the part not already requested.
/// </summary>
internal sealed class AccessPattern(long chunkSize, long maxWindow)
{
    public const int MaxStreams = 8;

    private readonly Stream[] _streams = new Stream[MaxStreams];
    private readonly Lock _lock = new();
    private long _clock;

    private struct Stream
    {
        public long Start;      // where the stream began
        public long Next;       // where the stream's last READ ended
        public long Window;     // bytes to keep requested ahead of Next (0: not yet sequential)
        public long RequestedTo; // readahead already asked for up to here
        public long LastUse;
    }

    /// <summary>Largest READ the kernel sends (max_pages × 4 KiB): the least slack a stream gets.</summary>
    public const long MinSlack = 1L << 20;

    /// <summary>Sequential bytes a stream must cover before it gets a readahead window: a chunk, at least 2 MiB.</summary>
    public long RunBeforeWindow { get; } = Math.Max(chunkSize, 2 * MinSlack);

    public (long From, long To)? OnRead(long offset, int size, long fileSize) => OnRead(offset, size, fileSize, out _);

    /// <param name="sequential">
    /// Set when the READ continues a stream that has earned a readahead window: its chunk will be read
    /// on, so it is fetched whole; any other READ (random, or the start of a stream) fetches only the
    /// blocks it touches first (ChunkCache.GetRangeAsync).
    /// </param>
    public (long From, long To)? OnRead(long offset, int size, long fileSize, out bool sequential)
    {
        sequential = false;
        long end = offset + size;
        lock (_lock)
        {
            _clock++;
            int best = -1;
            for (int i = 0; i < MaxStreams; i++)
            {
                ref var s = ref _streams[i];
                long slack = Math.Max(MinSlack, s.Window);
                if (s.LastUse != 0 && offset >= s.Next - slack && offset <= s.Next + slack)
                {
                    best = i;
                    break;
                }
            }

            if (best < 0)
            {
                int victim = 0;
                for (int i = 1; i < MaxStreams; i++)
                {
                    if (_streams[i].LastUse < _streams[victim].LastUse)
                    {
                        victim = i;
                    }
                }

                _streams[victim] = new Stream { Start = offset, Next = end, Window = 0, RequestedTo = end, LastUse = _clock };
                return null;
            }

            ref var st = ref _streams[best];
            st.LastUse = _clock;
            st.Next = Math.Max(st.Next, end);
            st.Start = Math.Min(st.Start, offset);
            if (st.Window == 0 && st.Next - st.Start <= RunBeforeWindow)
            {
                st.RequestedTo = Math.Max(st.RequestedTo, st.Next);
                return null; // sequential, but not long enough yet to tell from a random read's kernel readahead
            }

            st.Window = st.Window == 0 ? chunkSize : Math.Min(st.Window * 2, maxWindow);
            sequential = true;
            long from = Math.Max(st.RequestedTo, st.Next);
            long to = Math.Min(fileSize, st.Next + st.Window);
            if (to <= from)
            {
                return null;
            }

            st.RequestedTo = to;
            return (from, to);
        }
    }

    /// <summary>Forgets every stream, as a fresh mount would (lmfs bench resets a file this way).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            Array.Clear(_streams);
        }
    }
}
