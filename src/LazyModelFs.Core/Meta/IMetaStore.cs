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

    /// <summary>
    /// The entry <paramref name="name"/> in <paramref name="parent"/> and the node record it names, read
    /// together at one moment, in one round trip (Redis: one script; SQLite: one read transaction): what a
    /// path walk and a FUSE LOOKUP need. Null when there is no such entry; <see cref="EntryAndNode.Node"/>
    /// is null when the entry names an inode whose record does not exist (damaged metadata). Both are
    /// returned as stored: a record of another type than the entry says is the caller's to judge.
    /// </summary>
    Task<EntryAndNode?> LookupNodeAsync(ulong parent, string name, CancellationToken ct = default);

    /// <summary>Entries ordered by the UTF-8 bytes of their names (a stable order for readdir cookies).</summary>
    Task<IReadOnlyList<DirEntry>> ListAsync(ulong parent, CancellationToken ct = default);

    /// <summary>The file's chunk table, or null for an inode that has none.</summary>
    Task<ChunkTable?> GetChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default);

    /// <summary>
    /// An inode's record and its chunk table, read together at one moment, in one round trip (Redis: MGET
    /// of the two keys; SQLite: one read transaction): what OPEN needs. Either is null when absent.
    /// </summary>
    Task<NodeAndTable> GetNodeAndChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default);

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

    // ---- access profiles (issue 17; Read/AccessProfile.cs): hints for prefetch, never file data

    /// <summary>
    /// The encoded access profiles recorded for the content <paramref name="content"/> (a chunk table's
    /// <see cref="ChunkTable.ContentKey"/>), by loader process name; empty when there are none. One round trip.
    /// </summary>
    Task<IReadOnlyDictionary<string, byte[]>> GetProfilesAsync(ChunkId content, CancellationToken ct = default);

    /// <summary>
    /// Stores (or replaces) the profile of <paramref name="process"/> for the content, atomically. A
    /// content keeps at most <see cref="Read.AccessProfile.MaxPerFile"/>: a new process name beyond that replaces another's.
    /// </summary>
    Task PutProfileAsync(ChunkId content, string process, byte[] profile, CancellationToken ct = default);

    /// <summary>Removes every profile of the content; how many there were.</summary>
    Task<int> DeleteProfilesAsync(ChunkId content, CancellationToken ct = default);

    /// <summary>The content keys that have profiles (lmfs gc removes those no file has any more).</summary>
    Task<IReadOnlyList<ChunkId>> ListProfiledAsync(CancellationToken ct = default);

    // ---- lmfs gc (src/LazyModelFs.Core/Gc/GarbageCollector.cs explains how these fit together)

    /// <summary>
    /// Reads every chunk table (counting the references each chunk has) and every stored reference
    /// count, with the reference epoch: a counter every create and remove advances in its own
    /// transaction. The scan is <see cref="ReferenceScan.Consistent"/> when the epoch did not move
    /// while it ran. A table that does not decode is listed, not thrown.
    /// </summary>
    Task<ReferenceScan> ScanReferencesAsync(int chunkSize, CancellationToken ct = default);

    /// <summary>
    /// Sets reference counts (0 removes the count) if the reference epoch is still
    /// <paramref name="epoch"/>, atomically; false (nothing changed) when it moved.
    /// </summary>
    Task<bool> SetChunkRefCountsAsync(long epoch, IReadOnlyList<KeyValuePair<ChunkId, long>> counts, CancellationToken ct = default);

    /// <summary>
    /// If no chunk table references the chunk (its count is 0) and no other owner holds a live claim
    /// on it, claims it for deletion for <paramref name="owner"/> (one gc run), atomically, and
    /// returns true: until <see cref="ReleaseChunkClaimAsync"/> or <see cref="ChunkClaimLifetime"/>
    /// passes, a create whose table references it answers <see cref="MetaResult.ChunkClaimed"/>. Two
    /// gc runs at once therefore never both hold one chunk, and one's release never ends the other's
    /// claim. Claims are timed by the metadata engine's clock (Redis: its TIME), not the caller's.
    /// </summary>
    Task<bool> ClaimUnreferencedChunkAsync(ChunkId id, string owner, CancellationToken ct = default);

    /// <summary>Ends <paramref name="owner"/>'s claim on the chunk; a claim another owner holds is left alone.</summary>
    Task ReleaseChunkClaimAsync(ChunkId id, string owner, CancellationToken ct = default);

    /// <summary>How long a claim holds when it is not released (its gc was killed); gc never deletes on a claim half this old.</summary>
    static TimeSpan ChunkClaimLifetime { get; } = TimeSpan.FromMinutes(10);
}
