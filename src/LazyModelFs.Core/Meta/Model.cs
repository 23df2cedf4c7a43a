using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Serialization;
using LazyModelFs.Chunks;
using LazyModelFs.Util;

namespace LazyModelFs.Meta;

public enum NodeType : byte
{
    Directory = 1,
    File = 2,
    Symlink = 3,
}

/// <summary>An inode's attributes. Times are nanoseconds since the Unix epoch.</summary>
public sealed record Node(
    ulong Ino,
    NodeType Type,
    uint Mode,
    uint Uid,
    uint Gid,
    uint Nlink,
    ulong Size,
    long MtimeNs,
    long CtimeNs,
    ulong Parent,
    string? SymlinkTarget = null)
{
    public const ulong RootIno = 1;

    /// <summary>Record layout (little-endian), see docs/data-format.md.</summary>
    public const int FixedSize = 56;
    private const byte Version = 1;

    public byte[] Encode()
    {
        byte[] target = SymlinkTarget is null ? [] : Encoding.UTF8.GetBytes(SymlinkTarget);
        var buf = new byte[FixedSize + target.Length];
        var s = buf.AsSpan();
        s[0] = Version;
        s[1] = (byte)Type;
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Mode);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], Uid);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], Gid);
        BinaryPrimitives.WriteUInt32LittleEndian(s[16..], Nlink);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], Size);
        BinaryPrimitives.WriteInt64LittleEndian(s[32..], MtimeNs);
        BinaryPrimitives.WriteInt64LittleEndian(s[40..], CtimeNs);
        BinaryPrimitives.WriteUInt64LittleEndian(s[48..], Parent);
        target.CopyTo(s[FixedSize..]);
        return buf;
    }

    public static Node Decode(ulong ino, ReadOnlySpan<byte> s)
    {
        if (s.Length < FixedSize)
        {
            throw new MetaCorruptException($"inode {ino}: record is {s.Length} bytes, expected at least {FixedSize}");
        }

        if (s[0] != Version)
        {
            throw new MetaCorruptException($"inode {ino}: record version {s[0]} is not supported (this lmfs reads version {Version})");
        }

        var type = (NodeType)s[1];
        if (type is not (NodeType.Directory or NodeType.File or NodeType.Symlink))
        {
            throw new MetaCorruptException($"inode {ino}: unknown node type {s[1]}");
        }

        if (type != NodeType.Symlink && s.Length != FixedSize)
        {
            throw new MetaCorruptException($"inode {ino}: {type} record has {s.Length - FixedSize} trailing bytes");
        }

        string? target = null;
        if (type == NodeType.Symlink)
        {
            try
            {
                target = new UTF8Encoding(false, true).GetString(s[FixedSize..]);
            }
            catch (DecoderFallbackException)
            {
                throw new MetaCorruptException($"inode {ino}: symlink target is not UTF-8");
            }
        }

        return new Node(
            ino,
            type,
            BinaryPrimitives.ReadUInt32LittleEndian(s[4..]),
            BinaryPrimitives.ReadUInt32LittleEndian(s[8..]),
            BinaryPrimitives.ReadUInt32LittleEndian(s[12..]),
            BinaryPrimitives.ReadUInt32LittleEndian(s[16..]),
            BinaryPrimitives.ReadUInt64LittleEndian(s[24..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[32..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[40..]),
            BinaryPrimitives.ReadUInt64LittleEndian(s[48..]),
            target);
    }
}

/// <summary>A name in a directory. Listings are ordered by the name's UTF-8 bytes.</summary>
public readonly record struct DirEntry(string Name, ulong Ino, NodeType Type)
{
    /// <summary>Stored value of a directory entry: inode (u64 LE) then type (u8).</summary>
    public byte[] EncodeValue()
    {
        var v = new byte[9];
        BinaryPrimitives.WriteUInt64LittleEndian(v, Ino);
        v[8] = (byte)Type;
        return v;
    }

    public static DirEntry DecodeValue(string name, ReadOnlySpan<byte> v)
    {
        if (v.Length != 9 || v[8] is < 1 or > 3)
        {
            throw new MetaCorruptException($"directory entry '{name}' is damaged ({v.Length} bytes)");
        }

        return new DirEntry(name, BinaryPrimitives.ReadUInt64LittleEndian(v), (NodeType)v[8]);
    }
}

/// <summary>
/// What <see cref="IMetaStore.LookupNodeAsync"/> found: the entry, and the record of the inode it names
/// (null when that record is missing: damaged metadata).
/// </summary>
public readonly record struct EntryAndNode(DirEntry Entry, Node? Node);

/// <summary>What <see cref="IMetaStore.GetNodeAndChunkTableAsync"/> read: an inode's record and its chunk table, each null when absent.</summary>
public readonly record struct NodeAndTable(Node? Node, ChunkTable? Table);

/// <summary>Totals kept up to date by every namespace change (for statfs and `lmfs stat /`).</summary>
public readonly record struct VolumeUsage(long Bytes, long Inodes);

/// <summary>
/// Volume settings, written once by `lmfs format` and read by every later command.
/// Stored as JSON; <see cref="FormatVersion"/> guards against metadata from a newer lmfs.
/// </summary>
public sealed record VolumeSettings
{
    /// <summary>The newest format this lmfs writes and reads: 2 adds block hashes (<see cref="BlockSize"/>).</summary>
    public const int CurrentFormatVersion = 2;

    /// <summary>The oldest format this lmfs still reads and writes (1: whole-chunk reads only).</summary>
    public const int OldestFormatVersion = 1;

    /// <summary>1: chunk tables without block hashes; 2: with them (<see cref="BlockSize"/> above 0).</summary>
    public int FormatVersion { get; init; } = CurrentFormatVersion;

    /// <summary>Bytes per hashed block in every chunk-table row (format 2); 0 in a format 1 volume (decoding a version 1 document sets it so).</summary>
    public int BlockSize { get; init; } = DefaultBlockSize;

    /// <summary>Block size of a new volume's block hashes (docs/benchmarks.md, issue 14: why this size).</summary>
    public const int DefaultBlockSize = 256 << 10;

    public required string Name { get; init; }

    public required Guid Uuid { get; init; }

    public required int ChunkSize { get; init; }

    /// <summary>"none" or "zstd".</summary>
    public required string Compression { get; init; }

    /// <summary>Object-store URL without secrets (endpoint, region and path style as query parameters).</summary>
    public required string Storage { get; init; }

    public required DateTimeOffset CreatedAt { get; init; }
}

[JsonSerializable(typeof(VolumeSettings))]
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = false)]
internal sealed partial class MetaJsonContext : JsonSerializerContext;

public static class SettingsCodec
{
    public static byte[] Encode(VolumeSettings s) => System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(s, MetaJsonContext.Default.VolumeSettings);

    public static VolumeSettings Decode(ReadOnlySpan<byte> json)
    {
        VolumeSettings? s;
        try
        {
            // Read the version first so a newer layout fails on the version, not on a missing field.
            using var doc = System.Text.Json.JsonDocument.Parse(json.ToArray());
            if (doc.RootElement.TryGetProperty("formatVersion", out var v) && v.TryGetInt32(out int version)
                && version is < VolumeSettings.OldestFormatVersion or > VolumeSettings.CurrentFormatVersion)
            {
                throw new LmfsException(
                    $"the volume's metadata format version is {version}; this lmfs understands versions {VolumeSettings.OldestFormatVersion} to {VolumeSettings.CurrentFormatVersion}",
                    version > VolumeSettings.CurrentFormatVersion ? "upgrade lmfs to a release that reads this volume" : "migrate the volume with the lmfs release that created it",
                    3);
            }

            s = System.Text.Json.JsonSerializer.Deserialize(json, MetaJsonContext.Default.VolumeSettings);
            if (s is { FormatVersion: 1 })
            {
                s = s with { BlockSize = 0 }; // version 1 documents have no block size: the default is not theirs
            }

            if (s is not null)
            {
                // Version 1 has no block hashes; version 2 names a block size its chunks can be split into.
                string? why = s.FormatVersion == 1
                    ? (s.BlockSize == 0 ? null : "format version 1 has no block size")
                    : s.BlockSize == 0 ? "format version 2 needs a block size" : Chunks.ChunkTable.CheckBlockSize(s.BlockSize, s.ChunkSize);
                if (why is not null)
                {
                    throw new MetaCorruptException($"volume settings have format version {s.FormatVersion} and block size {s.BlockSize}: {why}");
                }
            }
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new MetaCorruptException($"volume settings are not valid JSON: {e.Message}");
        }

        return s ?? throw new MetaCorruptException("volume settings are empty");
    }
}

/// <summary>Outcome of a conditional namespace change.</summary>
public enum MetaResult
{
    Ok,

    /// <summary>The name exists and the change did not expect it to.</summary>
    Exists,

    /// <summary>The entry changed since the caller read it (optimistic condition failed); re-read and retry.</summary>
    Conflict,

    /// <summary>The parent is not an existing directory.</summary>
    NoParent,

    /// <summary>A directory to remove still has entries.</summary>
    NotEmpty,

    /// <summary>
    /// Nothing changed: a chunk the new table references is claimed by <c>lmfs gc</c>, which is
    /// deleting its object (<see cref="IMetaStore.ClaimUnreferencedChunkAsync"/>). Retry after a
    /// moment, then make sure the object is there (the importer stores it again).
    /// </summary>
    ChunkClaimed,
}

/// <summary>
/// What <see cref="IMetaStore.ScanReferencesAsync"/> saw: every chunk table's references counted,
/// and the reference counts as stored. <see cref="Consistent"/>: no create or remove committed while
/// the scan ran, so the two can be compared and the counts fixed under <see cref="Epoch"/>.
/// </summary>
public sealed record ReferenceScan(
    long Epoch,
    bool Consistent,
    long Tables,
    IReadOnlyDictionary<Chunks.ChunkId, long> Referenced,
    IReadOnlyDictionary<Chunks.ChunkId, long> Stored,
    IReadOnlyList<(ulong Ino, string Problem)> Undecodable)
{
    /// <summary>The content keys of the tables read (<see cref="Chunks.ChunkTable.ContentKey"/>): access profiles of other keys belong to no file.</summary>
    public IReadOnlySet<Chunks.ChunkId> ContentKeys { get; init; } = new HashSet<Chunks.ChunkId>();
}

/// <summary>What a change replaces: the entry the caller saw, with its node and chunk table.</summary>
public sealed record Replaced(DirEntry Entry, Node Node, ChunkTable? Chunks);

/// <summary>
/// Creates <paramref name="Name"/> in <paramref name="Parent"/> pointing at <paramref name="Node"/>
/// (its Ino comes from <see cref="IMetaStore.AllocateInodeAsync"/>), storing <paramref name="Chunks"/>
/// for files and taking one reference on each of its chunks. With <paramref name="Replace"/> set,
/// the existing entry must still be exactly that one, and it is removed in the same transaction.
/// </summary>
public sealed record EntryCreate(ulong Parent, string Name, Node Node, ChunkTable? Chunks, Replaced? Replace = null);
