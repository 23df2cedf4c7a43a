namespace LazyModelFs.Fuse;

/// <summary>
/// Pinned (pinned object heap) buffers of one size, for READ and READDIR replies: rented per
/// request, returned right after the reply is written, so the read path allocates nothing once warm.
/// <see cref="Outstanding"/> counts leases so tests can prove every buffer comes back.
/// </summary>
public sealed class FuseBufferPool(int bufferSize, int retain = 64)
{
    private readonly Stack<byte[]> _free = new();
    private readonly Lock _lock = new();
    private int _outstanding;

    public int BufferSize { get; } = bufferSize;

    public int Outstanding => Volatile.Read(ref _outstanding);

    public byte[] Rent()
    {
        Interlocked.Increment(ref _outstanding);
        lock (_lock)
        {
            if (_free.TryPop(out var b))
            {
                return b;
            }
        }

        return GC.AllocateUninitializedArray<byte>(BufferSize, pinned: true);
    }

    public void Return(byte[] buffer)
    {
        if (buffer.Length != BufferSize)
        {
            throw new ArgumentException("buffer does not belong to this pool", nameof(buffer));
        }

        Interlocked.Decrement(ref _outstanding);
        lock (_lock)
        {
            if (_free.Count < retain)
            {
                _free.Push(buffer);
            }
        }
    }
}
