namespace LazyModelFs.Read;

/// <summary>
/// Sequential detection for one inode (shared by every handle and process reading it).
///
/// The kernel hands us READs of up to 1 MiB, sent in readahead batches (up to read_ahead_kb, 16 MiB
/// by default) with several in flight, so they arrive out of order; mmap loaders fault wherever
/// tensors are. Several readers of one file — processes, tensor-parallel ranks — each read
/// sequentially from their own place, interleaved, so one "last offset" would make them all look
/// random. So up to <see cref="MaxStreams"/> streams are tracked (issue 14, item 5):
///
/// - A READ continues the stream whose end (<c>Next</c>) is <b>nearest</b> to it, if it lies within
///   that stream's slack: one kernel readahead batch either way for a stream that has no window yet
///   (its READs may arrive that far out of order), and for a sequential one its window, at most one
///   batch, either way (a late READ of one rank is never taken by another rank's stream far ahead,
///   and a random READ far ahead of a sequential stream does not join it). A READ that continues no stream starts one, replacing the least recently used stream
///   that has no window (a sequential stream is replaced only when every one is).
/// - A stream earns its readahead window (one chunk, doubling up to the readahead limit) when it spans
///   more than <see cref="RunBeforeWindow"/> and its READs cover at least three quarters of the span:
///   reordered sequential READs are dense, random READs that happen to land near each other are not.
///   The kernel turns one random 1 MiB pread into up to 2 MiB of sequential READs (its initial
///   readahead), and opening a window on that made every random read fetch a neighbouring chunk too
///   (measured: cold random p99 110 ms with it, 40 ms without), hence the run of at least a chunk.
///   A stream without a window that grows wider than two batches while staying sparse starts again
///   at the READ that widened it.
///
/// <see cref="OnRead"/> returns the byte range to fetch ahead, only the part not already requested,
/// and says whether the READ is part of a sequential stream (its chunk is then fetched whole; any
/// other READ fetches only the blocks it touches first).
/// </summary>
internal sealed class AccessPattern(long chunkSize, long maxWindow, long kernelBatch = AccessPattern.DefaultKernelBatch)
{
    public const int MaxStreams = 16;

    /// <summary>The kernel's readahead batch the mount sets by default (<c>--readahead-kb</c> 16384).</summary>
    public const long DefaultKernelBatch = 16L << 20;

    private readonly Stream[] _streams = new Stream[MaxStreams];
    private readonly Lock _lock = new();
    private readonly long _batch = Math.Max(MinSlack, kernelBatch);
    private long _clock;

    private struct Stream
    {
        public long Start;      // the lowest offset the stream has read
        public long Next;       // the highest end of a READ it has seen
        public long Seen;       // bytes its READs covered (at most Next − Start)
        public long Window;     // bytes to keep requested ahead of Next (0: not yet sequential)
        public long RequestedTo; // readahead already asked for up to here
        public long GrowAt;     // the window doubles when the stream's end passes this
        public long LastUse;
    }

    /// <summary>Largest READ the kernel sends (max_pages × 4 KiB): the least slack a stream gets.</summary>
    public const long MinSlack = 1L << 20;

    /// <summary>Sequential bytes a stream must cover before it gets a readahead window: two chunks, at least 2 MiB (the kernel's own readahead around a random read can send a chunk's worth of READs in a row).</summary>
    public long RunBeforeWindow { get; } = Math.Max(2 * chunkSize, 2 * MinSlack);

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
            long bestDistance = long.MaxValue;
            for (int i = 0; i < MaxStreams; i++)
            {
                ref var s = ref _streams[i];
                if (s.LastUse == 0)
                {
                    continue;
                }

                // The kernel's READs of one reader stay within one readahead batch of each other, however
                // far our own window reaches: a wider slack let random reads join a sequential stream (each
                // doubling its window) and turned them into whole-chunk readahead (measured: 4.3× the bytes).
                long slack = s.Window == 0 ? _batch : Math.Min(_batch, Math.Max(MinSlack, s.Window));
                long distance = Math.Abs(offset - s.Next);
                if (offset >= s.Next - slack && offset <= s.Next + slack && distance < bestDistance)
                {
                    best = i;
                    bestDistance = distance;
                }
            }

            if (best < 0)
            {
                _streams[Victim()] = new Stream { Start = offset, Next = end, Seen = size, Window = 0, RequestedTo = end, LastUse = _clock };
                return null;
            }

            ref var st = ref _streams[best];
            st.LastUse = _clock;
            st.Next = Math.Max(st.Next, end);
            st.Start = Math.Min(st.Start, offset);
            st.Seen = Math.Min(st.Seen + size, st.Next - st.Start);
            long span = st.Next - st.Start;
            if (st.Window == 0 && span > 2 * _batch && st.Seen * 4 < span * 3)
            {
                // Random reads gathered into a wide, sparse stream: start it again here, so a sequential
                // reader that begins in such a region earns its window within two batches.
                st = new Stream { Start = offset, Next = end, Seen = size, Window = 0, RequestedTo = end, LastUse = _clock };
                return null;
            }

            if (st.Window == 0 && (span <= RunBeforeWindow || st.Seen * 4 < span * 3))
            {
                st.RequestedTo = Math.Max(st.RequestedTo, st.Next);
                return null; // not yet told from a random read's kernel readahead, or sparse: random reads near each other
            }

            // The window opens at one chunk and doubles each time the reader has consumed a quarter of
            // it: a burst of READs (the kernel's own readahead around a random read) grows it once or
            // twice, not to the limit, while a real reader reaches the limit within a few windows.
            if (st.Window == 0 || st.Next >= st.GrowAt)
            {
                st.Window = st.Window == 0 ? chunkSize : Math.Min(st.Window * 2, maxWindow);
                st.GrowAt = st.Next + (st.Window / 4);
            }

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

    /// <summary>Caller holds _lock. The slot a new stream takes: an empty one, else the least recently used without a window, else the least recently used.</summary>
    private int Victim()
    {
        int victim = -1;
        for (int pass = 0; pass < 2 && victim < 0; pass++)
        {
            for (int i = 0; i < MaxStreams; i++)
            {
                ref var s = ref _streams[i];
                if (s.LastUse == 0)
                {
                    return i;
                }

                if ((pass == 1 || s.Window == 0) && (victim < 0 || s.LastUse < _streams[victim].LastUse))
                {
                    victim = i;
                }
            }
        }

        return victim;
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
