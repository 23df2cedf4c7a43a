using System.Buffers;
using System.Runtime.InteropServices;
using LazyModelFs.Chunks;

namespace LazyModelFs.Cache;

/// <summary>
/// One chunk held in native memory. Each lease is one reference; <see cref="Dispose"/> gives one
/// back. The bytes stay valid and unmoved while any reference is held, so a READ can be answered
/// straight from here (the dispatcher disposes the lease after its writev).
/// </summary>
public sealed unsafe class CachedChunk : IDisposable
{
    private readonly Manager _memory;
    private readonly MemoryTier _tier;

    internal CachedChunk(MemoryTier tier, int capacity)
    {
        _tier = tier;
        _memory = new Manager(capacity);
    }

    public ChunkId Id { get; internal set; }

    /// <summary>The chunk's plain bytes.</summary>
    public ReadOnlyMemory<byte> Data => _memory.Memory.Slice(Offset, Length);

    /// <summary>
    /// Where a chunk's plain bytes start in its buffer: page aligned, so the disk cache can move them
    /// with O_DIRECT, and with room before it for the 16-byte object header a fetch reads in front.
    /// </summary>
    public const int DataStart = 4096;

    /// <summary>Bytes of buffer per chunk: the header page, the chunk, and a page of slack (a fetch asks for one byte more than the object).</summary>
    public static int BufferSizeFor(int chunkSize) => DataStart + chunkSize + 4096;

    /// <summary>The whole native buffer, for fetching an object into.</summary>
    internal Memory<byte> Buffer => _memory.Memory;

    internal int Offset { get; set; }

    internal int Length { get; set; }

    /// <summary>CRC32C of <see cref="Data"/>, as verified when the chunk was published.</summary>
    internal uint Crc { get; set; }

    /// <summary>Whether the fetch that filled this buffer read it from the disk cache (else from the store): the tier a READ that waited for it was served from.</summary>
    internal bool FromDisk { get; set; }

    /// <summary>
    /// Whether these bytes are what <paramref name="row"/> asks for. The tier is keyed by chunk id
    /// only, so a damaged row naming this chunk with another length or CRC32C would otherwise be
    /// answered with these bytes (or, shorter than the row, spin a read loop): issue 11, items 2 and 4.
    /// </summary>
    public bool Matches(in ChunkEntry row) => row.Id == Id && row.PlainLength == Length && row.Crc32C == Crc;

    internal int RefCount;

    internal bool Published;

    internal LinkedListNode<CachedChunk>? LruNode;

    public void Dispose() => _tier.Release(this);

    internal void Free() => ((IDisposable)_memory).Dispose();

    private sealed class Manager(int capacity) : MemoryManager<byte>
    {
        // SAFETY: 2 MiB-aligned anonymous memory of `capacity` bytes (huge pages where the kernel
        // allows), unmapped once in Dispose after the tier drops it.
        private byte* _ptr = Util.Posix.MapHuge((nuint)capacity);

        public override Span<byte> GetSpan() => new(_ptr, capacity);

        // SAFETY: native memory never moves; pinning is a no-op.
        public override MemoryHandle Pin(int elementIndex = 0) => new(_ptr + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
            if (_ptr != null)
            {
                Util.Posix.Unmap(_ptr, (nuint)capacity);
                _ptr = null;
            }
        }
    }
}

/// <summary>
/// The memory tier: a bounded, least-recently-used set of chunk buffers in native memory (so the GC
/// never scans or moves them), reused instead of freed. Capacity is <c>--buffer-size</c>; buffers
/// of in-flight fetches come out of the same budget. A buffer with references is never evicted; if
/// every buffer is referenced, a fetch still gets one (soft limit) rather than deadlocking, and the
/// excess is freed when released. Chunks published by prefetch go to the cold end of the LRU so a
/// long prefetch does not push out what readers are using.
/// </summary>
internal sealed class MemoryTier : IDisposable
{
    private readonly Dictionary<ChunkId, CachedChunk> _map = [];
    private readonly LinkedList<CachedChunk> _lru = new(); // First = most recent
    private readonly Stack<CachedChunk> _free = new();
    private readonly Lock _lock = new();
    private readonly int _bufferSize;
    private int _allocated;
    private bool _disposed;
    private long _hits;
    private long _misses;
    private long _evictions;

    public MemoryTier(long capacityBytes, int chunkSize)
    {
        _bufferSize = CachedChunk.BufferSizeFor(chunkSize);
        Capacity = (int)Math.Max(4, capacityBytes / _bufferSize);
    }

    /// <summary>Buffers the tier may hold.</summary>
    public int Capacity { get; }

    public int Allocated => Volatile.Read(ref _allocated);

    public long Hits => Interlocked.Read(ref _hits);

    public long Misses => Interlocked.Read(ref _misses);

    /// <summary>Chunks evicted (least recently used, nobody holding them) to make room for another.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>Bytes of native memory per buffer.</summary>
    public int BufferBytes => _bufferSize;

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _map.Count;
            }
        }
    }

    /// <summary>A lease on a cached chunk, or false.</summary>
    public bool TryGet(ChunkId id, out CachedChunk chunk)
    {
        lock (_lock)
        {
            if (_map.TryGetValue(id, out chunk!))
            {
                chunk.RefCount++;
                _lru.Remove(chunk.LruNode!);
                _lru.AddFirst(chunk.LruNode!);
                _hits++;
                return true;
            }

            _misses++;
            return false;
        }
    }

    public bool Contains(ChunkId id)
    {
        lock (_lock)
        {
            return _map.ContainsKey(id);
        }
    }

    /// <summary>True when a buffer can be had without going over capacity (prefetch waits otherwise).</summary>
    public bool HasRoom
    {
        get
        {
            lock (_lock)
            {
                return _free.Count > 0 || _allocated < Capacity || _lru.Last is { Value.RefCount: 0 };
            }
        }
    }

    /// <summary>An unpublished buffer with one reference, for a fetch to fill.</summary>
    public CachedChunk Rent()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            CachedChunk? c = null;
            if (_free.Count > 0)
            {
                c = _free.Pop();
            }
            else if (_allocated >= Capacity)
            {
                // Evict the least recently used buffer nobody holds.
                for (var n = _lru.Last; n is not null; n = n.Previous)
                {
                    if (n.Value.RefCount == 0)
                    {
                        c = n.Value;
                        _lru.Remove(n);
                        _map.Remove(c.Id);
                        c.Published = false;
                        _evictions++;
                        break;
                    }
                }
            }

            if (c is null)
            {
#pragma warning disable CA2000 // the tier owns every buffer it makes: leased out here, freed by Release or Dispose
                c = new CachedChunk(this, _bufferSize);
#pragma warning restore CA2000
                c.LruNode = new LinkedListNode<CachedChunk>(c);
                _allocated++;
            }

            c.RefCount = 1;
            c.Id = default;
            return c;
        }
    }

    /// <summary>Makes a filled buffer findable; the caller keeps its reference.</summary>
    public void Publish(CachedChunk c, in ChunkEntry row, int offset, bool cold)
    {
        lock (_lock)
        {
            c.Id = row.Id;
            c.Offset = offset;
            c.Length = row.PlainLength;
            c.Crc = row.Crc32C;
            var id = row.Id;
            if (_disposed || (_map.TryGetValue(id, out var existing) && existing != c))
            {
                return; // published meanwhile by another path (or the tier is gone); this buffer is freed on release
            }

            _map[id] = c;
            c.Published = true;
            if (cold)
            {
                _lru.AddLast(c.LruNode!);
            }
            else
            {
                _lru.AddFirst(c.LruNode!);
            }
        }
    }

    /// <summary>Adds references for waiters of a fetch.</summary>
    internal void AddRefs(CachedChunk c, int n)
    {
        lock (_lock)
        {
            c.RefCount += n;
        }
    }

    internal void Release(CachedChunk c)
    {
        lock (_lock)
        {
            if (--c.RefCount > 0)
            {
                return;
            }

            if (c.RefCount < 0)
            {
                throw new InvalidOperationException("chunk lease released twice");
            }

            if (_disposed)
            {
                c.Free(); // the tier is gone; the last lease frees the memory
                return;
            }

            if (c.Published)
            {
                return; // stays cached, evictable
            }

            if (_allocated > Capacity)
            {
                _allocated--;
                c.Free();
            }
            else
            {
                _free.Push(c);
            }
        }
    }

    /// <summary>
    /// Drops chunks from the tier as if it had never held them (<c>lmfs bench</c> resets a file to
    /// cold or warm this way): <paramref name="ids"/>, or everything when null. The buffers stay
    /// allocated for reuse, as in a mount that has been running a while; a buffer still leased leaves
    /// the map now and is recycled at its last release. Returns how many chunks were dropped.
    /// </summary>
    public int Drop(IEnumerable<ChunkId>? ids = null)
    {
        lock (_lock)
        {
            var victims = ids is null ? _map.Values.ToList() : ids.Distinct().Select(id => _map.GetValueOrDefault(id)).OfType<CachedChunk>().ToList();
            foreach (var c in victims)
            {
                _map.Remove(c.Id);
                _lru.Remove(c.LruNode!);
                c.Published = false;
                if (c.RefCount == 0)
                {
                    _free.Push(c);
                }
            }

            return victims.Count;
        }
    }

    /// <summary>Frees every buffer nobody holds; a buffer still leased (a fetch or a reply in flight) is freed at its last release.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (var c in _map.Values.Where(c => c.RefCount == 0).Concat(_free))
            {
                c.Free();
            }

            _map.Clear();
            _lru.Clear();
            _free.Clear();
        }
    }
}
