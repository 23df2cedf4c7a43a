namespace LazyModelFs.Chunks;

/// <summary>
/// Where a chunk comes from when no local tier holds it: the object store (<see cref="ChunkStore"/>)
/// today, a peer tier in front of it next. The chunk cache calls it once per attempt and is the one
/// retry layer above it, so a source makes one attempt per call and classifies its failure
/// (<see cref="Util.TransientException"/>, <see cref="Util.StoreRefusedException"/>, …).
/// </summary>
public interface IChunkSource
{
    /// <summary>
    /// Fetches the chunk into <paramref name="buffer"/> (at least chunk size + 17 bytes) and returns
    /// the offset of its plain bytes there, verified against the whole row (length, SHA-256, CRC32C):
    /// whatever the source, nobody sees bytes that do not match the metadata.
    /// </summary>
    Task<int> ReadIntoAsync(ChunkEntry entry, Memory<byte> buffer, int parts = 1, CancellationToken ct = default);

    /// <summary>
    /// Fetches blocks <paramref name="first"/> to <paramref name="first"/> + <paramref name="count"/> − 1
    /// of a chunk whose row <see cref="ChunkEntry.HasBlocks"/> into <paramref name="dest"/> (their
    /// plain bytes, the first block's at 0), each verified against its block hash; a block that does
    /// not match throws <see cref="Util.ChunkCorruptException"/>. Bytes outside those blocks are never
    /// written, so a caller may fetch into a buffer other readers are reading other blocks of.
    /// </summary>
    Task ReadBlocksAsync(ChunkEntry entry, int first, int count, Memory<byte> dest, CancellationToken ct = default);
}
