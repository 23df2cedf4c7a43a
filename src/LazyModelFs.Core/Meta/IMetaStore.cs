using LazyModelFs.Chunks;

namespace LazyModelFs.Meta;

/// <summary>
/// The metadata engine port: a few atomic primitives over inodes, directory entries, chunk tables
/// and chunk reference counts. Path walking, mkdir -p, overwrite rules and retries live once in
/// <see cref="Namespace"/>, above every engine. Implementations: <see cref="KvMetaStore"/> over
/// SQLite or memory, and <see cref="RedisMetaStore"/>. All pass tests/…/MetaStoreContract.
/// </summary>
public interface IMetaStore : IDisposable
{
    /// <summary>The engine's URL with secrets removed, for messages.</summary>
    string Describe { get; }

    /// <summary>Null when the volume was never formatted.</summary>
    Task<VolumeSettings?> LoadSettingsAsync(CancellationToken ct = default);

    /// <summary>Writes settings and the root directory atomically; false if already formatted.</summary>
    Task<bool> FormatAsync(VolumeSettings settings, Node root, CancellationToken ct = default);

    Task<Node?> GetNodeAsync(ulong ino, CancellationToken ct = default);

    Task<DirEntry?> LookupAsync(ulong parent, string name, CancellationToken ct = default);

    /// <summary>Entries ordered by the UTF-8 bytes of their names (a stable order for readdir cookies).</summary>
    Task<IReadOnlyList<DirEntry>> ListAsync(ulong parent, CancellationToken ct = default);

    /// <summary>The file's chunk table, or null for an inode that has none.</summary>
    Task<ChunkTable?> GetChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default);

    Task<ulong> AllocateInodeAsync(CancellationToken ct = default);

    Task<MetaResult> CreateAsync(EntryCreate change, CancellationToken ct = default);

    /// <summary>
    /// Removes the entry <paramref name="expected"/> describes (node, chunk table, entry; one reference
    /// dropped per chunk) if it is still exactly that. Directories must be empty.
    /// </summary>
    Task<MetaResult> RemoveAsync(ulong parent, Replaced expected, CancellationToken ct = default);

    /// <summary>How many chunk-table rows reference this chunk (0 if none).</summary>
    Task<long> GetChunkRefCountAsync(ChunkId id, CancellationToken ct = default);

    Task<VolumeUsage> GetUsageAsync(CancellationToken ct = default);
}
