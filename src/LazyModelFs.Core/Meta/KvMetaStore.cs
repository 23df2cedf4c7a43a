using System.Buffers.Binary;
using System.Text;
using LazyModelFs.Chunks;

namespace LazyModelFs.Meta;

/// <summary>
/// The metadata logic over an ordered KV store (SQLite, or memory for unit tests).
/// Key schema (docs/data-format.md):
/// <code>
///   "S"                       settings (JSON)
///   "N"                       last allocated inode (i64 LE)
///   "U"                       usage: bytes i64 LE, inodes i64 LE
///   "A" ino(u64 BE)           node record
///   "D" parent(u64 BE) name   directory entry: ino u64 LE, type u8
///   "C" ino(u64 BE)           chunk table
///   "R" id[32]                chunk reference count (i64 LE)
///   "E"                       reference epoch: advanced by every create and remove (i64 LE)
///   "G" id[32]                lmfs gc's claim on an unreferenced chunk: unix ms when claimed (i64 LE), then the owner (the gc run, UTF-8)
///   "P" content[32] process   an access profile (Read/AccessProfile.cs) of the file whose content key is content, by loader process name (UTF-8)
/// </code>
/// Big-endian inode numbers keep a directory's entries together and ordered by name bytes.
/// </summary>
public sealed class KvMetaStore(IKvStore kv, TimeProvider? time = null) : IMetaStore
{
    private readonly TimeProvider _time = time ?? TimeProvider.System;

    private static readonly byte[] SettingsKey = "S"u8.ToArray();
    private static readonly byte[] NextInodeKey = "N"u8.ToArray();
    private static readonly byte[] UsageKey = "U"u8.ToArray();
    private static readonly byte[] EpochKey = "E"u8.ToArray();

    public string Describe => kv.Describe;

    public Task<VolumeSettings?> LoadSettingsAsync(CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx => tx.Get(SettingsKey) is { } b ? SettingsCodec.Decode(b) : null));

    public Task<bool> FormatAsync(VolumeSettings settings, Node root, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            if (tx.Get(SettingsKey) is not null)
            {
                return false;
            }

            tx.Set(SettingsKey, SettingsCodec.Encode(settings));
            tx.Set(NodeKey(root.Ino), root.Encode());
            tx.Set(NextInodeKey, I64(checked((long)root.Ino)));
            tx.Set(UsageKey, Usage(new VolumeUsage(0, 1)));
            return true;
        }));

    public Task<Node?> GetNodeAsync(ulong ino, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx => tx.Get(NodeKey(ino)) is { } b ? Node.Decode(ino, b) : null));

    public Task<DirEntry?> LookupAsync(ulong parent, string name, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx => tx.Get(EntryKey(parent, name)) is { } b ? DirEntry.DecodeValue(name, b) : (DirEntry?)null));

    public Task<EntryAndNode?> LookupNodeAsync(ulong parent, string name, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx =>
        {
            if (tx.Get(EntryKey(parent, name)) is not { } b)
            {
                return (EntryAndNode?)null;
            }

            var e = DirEntry.DecodeValue(name, b);
            return new EntryAndNode(e, tx.Get(NodeKey(e.Ino)) is { } n ? Node.Decode(e.Ino, n) : null);
        }));

    public Task<IReadOnlyList<DirEntry>> ListAsync(ulong parent, CancellationToken ct = default) =>
        Task.FromResult<IReadOnlyList<DirEntry>>(kv.Read(tx =>
        {
            var rows = tx.Scan(EntryPrefix(parent));
            var list = new List<DirEntry>(rows.Count);
            foreach (var (k, v) in rows)
            {
                list.Add(DirEntry.DecodeValue(Encoding.UTF8.GetString(k.AsSpan(9)), v));
            }

            return list;
        }));

    public Task<ChunkTable?> GetChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx => tx.Get(ChunksKey(ino)) is { } b ? ChunkTable.Decode(b, chunkSize) : null));

    public Task<NodeAndTable> GetNodeAndChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx => new NodeAndTable(
            tx.Get(NodeKey(ino)) is { } n ? Node.Decode(ino, n) : null,
            tx.Get(ChunksKey(ino)) is { } c ? ChunkTable.Decode(c, chunkSize) : null)));

    public Task<ulong> AllocateInodeAsync(CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            long next = (tx.Get(NextInodeKey) is { } b ? BinaryPrimitives.ReadInt64LittleEndian(b) : 1) + 1;
            tx.Set(NextInodeKey, I64(next));
            return (ulong)next;
        }));

    public Task<MetaResult> CreateAsync(EntryCreate change, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            if (!IsDirectory(tx, change.Parent))
            {
                return MetaResult.NoParent;
            }

            if (change.Chunks is { } claimed && IsAnyClaimed(tx, claimed))
            {
                return MetaResult.ChunkClaimed;
            }

            byte[] entryKey = EntryKey(change.Parent, change.Name);
            var usage = ReadUsage(tx);
            if (change.Replace is null)
            {
                if (tx.Get(entryKey) is not null)
                {
                    return MetaResult.Exists;
                }
            }
            else
            {
                var r = Unlink(tx, change.Parent, change.Replace, ref usage);
                if (r != MetaResult.Ok)
                {
                    return r;
                }
            }

            var node = change.Node;
            tx.Set(NodeKey(node.Ino), node.Encode());
            if (change.Chunks is { } chunks)
            {
                tx.Set(ChunksKey(node.Ino), chunks.Encode());
                foreach (var e in chunks.Entries)
                {
                    AddRef(tx, e.Id, 1);
                }
            }

            tx.Set(entryKey, new DirEntry(change.Name, node.Ino, node.Type).EncodeValue());
            tx.Set(UsageKey, Usage(new VolumeUsage(usage.Bytes + SizeOf(node), usage.Inodes + 1)));
            BumpEpoch(tx);
            return MetaResult.Ok;
        }));

    public Task<MetaResult> RemoveAsync(ulong parent, Replaced expected, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            var usage = ReadUsage(tx);
            var r = Unlink(tx, parent, expected, ref usage);
            if (r == MetaResult.Ok)
            {
                tx.Set(UsageKey, Usage(usage));
                BumpEpoch(tx);
            }

            return r;
        }));

    public Task<long> GetChunkRefCountAsync(ChunkId id, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx => tx.Get(RefKey(id)) is { } b ? BinaryPrimitives.ReadInt64LittleEndian(b) : 0));

    public Task<VolumeUsage> GetUsageAsync(CancellationToken ct = default) => Task.FromResult(kv.Read(ReadUsage));

    /// <summary>One read transaction (a snapshot): always consistent.</summary>
    public Task<ReferenceScan> ScanReferencesAsync(int chunkSize, CancellationToken ct = default) =>
        Task.FromResult(kv.Read(tx =>
        {
            var referenced = new Dictionary<ChunkId, long>();
            var contents = new HashSet<ChunkId>();
            var bad = new List<(ulong, string)>();
            var tables = tx.Scan([(byte)'C']);
            foreach (var (k, v) in tables)
            {
                ulong ino = BinaryPrimitives.ReadUInt64BigEndian(k.AsSpan(1));
                try
                {
                    var table = ChunkTable.Decode(v, chunkSize);
                    contents.Add(table.ContentKey);
                    foreach (var e in table.Entries)
                    {
                        referenced[e.Id] = referenced.GetValueOrDefault(e.Id) + 1;
                    }
                }
                catch (Util.MetaCorruptException ex)
                {
                    bad.Add((ino, ex.Message));
                }
            }

            var stored = new Dictionary<ChunkId, long>();
            foreach (var (k, v) in tx.Scan([(byte)'R']))
            {
                stored[ChunkId.FromBytes(k.AsSpan(1))] = BinaryPrimitives.ReadInt64LittleEndian(v);
            }

            return new ReferenceScan(ReadEpoch(tx), true, tables.Count, referenced, stored, bad) { ContentKeys = contents };
        }));

    public Task<bool> SetChunkRefCountsAsync(long epoch, IReadOnlyList<KeyValuePair<ChunkId, long>> counts, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            if (ReadEpoch(tx) != epoch)
            {
                return false;
            }

            foreach (var (id, n) in counts)
            {
                if (n > 0)
                {
                    tx.Set(RefKey(id), I64(n));
                }
                else
                {
                    tx.Delete(RefKey(id));
                }
            }

            return true;
        }));

    public Task<bool> ClaimUnreferencedChunkAsync(ChunkId id, string owner, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            if (tx.Get(RefKey(id)) is { } b && BinaryPrimitives.ReadInt64LittleEndian(b) > 0)
            {
                return false;
            }

            long now = _time.GetUtcNow().ToUnixTimeMilliseconds();
            if (tx.Get(ClaimKey(id)) is { } c && c.Length >= 8
                && BinaryPrimitives.ReadInt64LittleEndian(c) > now - (long)IMetaStore.ChunkClaimLifetime.TotalMilliseconds
                && !c.AsSpan(8).SequenceEqual(Encoding.UTF8.GetBytes(owner)))
            {
                return false; // another gc's live claim
            }

            tx.Set(ClaimKey(id), [.. I64(now), .. Encoding.UTF8.GetBytes(owner)]);
            return true;
        }));

    public Task ReleaseChunkClaimAsync(ChunkId id, string owner, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            if (tx.Get(ClaimKey(id)) is { } c && c.Length >= 8 && c.AsSpan(8).SequenceEqual(Encoding.UTF8.GetBytes(owner)))
            {
                tx.Delete(ClaimKey(id));
            }

            return true;
        }));

    public Task<IReadOnlyDictionary<string, byte[]>> GetProfilesAsync(ChunkId content, CancellationToken ct = default) =>
        Task.FromResult<IReadOnlyDictionary<string, byte[]>>(kv.Read(tx =>
        {
            var all = new Dictionary<string, byte[]>();
            foreach (var r in tx.Scan(IdKey((byte)'P', content)))
            {
                all[Encoding.UTF8.GetString(r.Key.AsSpan(1 + ChunkId.Size))] = r.Value; // two names that decode alike: the later one
            }

            return all;
        }));

    public Task PutProfileAsync(ChunkId content, string process, byte[] profile, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            var prefix = IdKey((byte)'P', content);
            byte[] key = [.. prefix, .. Encoding.UTF8.GetBytes(process)];
            var rows = tx.Scan(prefix);
            if (rows.Count >= Read.AccessProfile.MaxPerFile && !rows.Any(r => r.Key.AsSpan().SequenceEqual(key)))
            {
                tx.Delete(rows[0].Key);
            }

            tx.Set(key, profile);
            return true;
        }));

    public Task<int> DeleteProfilesAsync(ChunkId content, CancellationToken ct = default) =>
        Task.FromResult(kv.Write(tx =>
        {
            var rows = tx.Scan(IdKey((byte)'P', content));
            foreach (var r in rows)
            {
                tx.Delete(r.Key);
            }

            return rows.Count;
        }));

    public Task<IReadOnlyList<ChunkId>> ListProfiledAsync(CancellationToken ct = default) =>
        Task.FromResult<IReadOnlyList<ChunkId>>(kv.Read(tx =>
            tx.Scan("P"u8.ToArray()).Where(r => r.Key.Length > ChunkId.Size).Select(r => ChunkId.FromBytes(r.Key.AsSpan(1, ChunkId.Size))).Distinct().ToList()));

    public void Dispose() => kv.Dispose();

    /// <summary>Removes the entry if it is still exactly <paramref name="old"/>; adjusts <paramref name="usage"/>.</summary>
    private static MetaResult Unlink(IKvTxn tx, ulong parent, Replaced old, ref VolumeUsage usage)
    {
        byte[] entryKey = EntryKey(parent, old.Entry.Name);
        var cur = tx.Get(entryKey);
        if (cur is null || !cur.AsSpan().SequenceEqual(old.Entry.EncodeValue()))
        {
            return MetaResult.Conflict;
        }

        ulong ino = old.Entry.Ino;
        var rec = tx.Get(NodeKey(ino));
        if (rec is null || !rec.AsSpan().SequenceEqual(old.Node.Encode()))
        {
            return MetaResult.Conflict;
        }

        if (old.Node.Type == NodeType.Directory && tx.Scan(EntryPrefix(ino), 1).Count > 0)
        {
            return MetaResult.NotEmpty;
        }

        if (old.Chunks is { } chunks)
        {
            foreach (var e in chunks.Entries)
            {
                AddRef(tx, e.Id, -1);
            }
        }

        tx.Delete(entryKey);
        tx.Delete(NodeKey(ino));
        tx.Delete(ChunksKey(ino));
        usage = new VolumeUsage(usage.Bytes - SizeOf(old.Node), usage.Inodes - 1);
        return MetaResult.Ok;
    }

    /// <summary>Whether a live gc claim (younger than <see cref="IMetaStore.ChunkClaimLifetime"/>) is on any of the table's chunks.</summary>
    private bool IsAnyClaimed(IKvTxn tx, ChunkTable chunks)
    {
        long horizon = (_time.GetUtcNow() - IMetaStore.ChunkClaimLifetime).ToUnixTimeMilliseconds();
        foreach (var e in chunks.Entries)
        {
            if (tx.Get(ClaimKey(e.Id)) is { } b && BinaryPrimitives.ReadInt64LittleEndian(b) > horizon)
            {
                return true;
            }
        }

        return false;
    }

    private static long ReadEpoch(IKvTxn tx) => tx.Get(EpochKey) is { Length: 8 } b ? BinaryPrimitives.ReadInt64LittleEndian(b) : 0;

    private static void BumpEpoch(IKvTxn tx) => tx.Set(EpochKey, I64(ReadEpoch(tx) + 1));

    private static bool IsDirectory(IKvTxn tx, ulong ino) =>
        tx.Get(NodeKey(ino)) is { Length: >= Node.FixedSize } rec && rec[1] == (byte)NodeType.Directory;

    private static long SizeOf(Node n) => n.Type == NodeType.File ? (long)n.Size : 0;

    private static void AddRef(IKvTxn tx, ChunkId id, long delta)
    {
        byte[] key = RefKey(id);
        long n = (tx.Get(key) is { } b ? BinaryPrimitives.ReadInt64LittleEndian(b) : 0) + delta;
        if (n > 0)
        {
            tx.Set(key, I64(n));
        }
        else
        {
            tx.Delete(key);
        }
    }

    private static VolumeUsage ReadUsage(IKvTxn tx) =>
        tx.Get(UsageKey) is { Length: 16 } b
            ? new VolumeUsage(BinaryPrimitives.ReadInt64LittleEndian(b), BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(8)))
            : default;

    private static byte[] Usage(VolumeUsage u)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteInt64LittleEndian(b, u.Bytes);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(8), u.Inodes);
        return b;
    }

    private static byte[] I64(long v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(b, v);
        return b;
    }

    private static byte[] InoKey(byte tag, ulong ino, int extra = 0)
    {
        var k = new byte[9 + extra];
        k[0] = tag;
        BinaryPrimitives.WriteUInt64BigEndian(k.AsSpan(1), ino);
        return k;
    }

    internal static byte[] NodeKey(ulong ino) => InoKey((byte)'A', ino);

    private static byte[] ChunksKey(ulong ino) => InoKey((byte)'C', ino);

    private static byte[] EntryPrefix(ulong parent) => InoKey((byte)'D', parent);

    internal static byte[] EntryKey(ulong parent, string name)
    {
        int n = Encoding.UTF8.GetByteCount(name);
        var k = InoKey((byte)'D', parent, n);
        Encoding.UTF8.GetBytes(name, k.AsSpan(9));
        return k;
    }

    private static byte[] RefKey(ChunkId id) => IdKey((byte)'R', id);

    private static byte[] ClaimKey(ChunkId id) => IdKey((byte)'G', id);

    private static byte[] IdKey(byte tag, ChunkId id)
    {
        var k = new byte[1 + ChunkId.Size];
        k[0] = tag;
        id.WriteTo(k.AsSpan(1));
        return k;
    }
}
