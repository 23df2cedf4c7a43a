using System.Text;
using LazyModelFs.Util;

namespace LazyModelFs.Meta;

/// <summary>
/// Path-level operations over any <see cref="IMetaStore"/>: resolving paths, mkdir -p, creating and
/// replacing entries with optimistic retries, recursive removal. Engines stay small; the rules live here once.
/// </summary>
public sealed class Namespace(IMetaStore meta, VolumeSettings settings)
{
    private const int MaxRetries = 32;

    public IMetaStore Meta { get; } = meta;

    public VolumeSettings Settings { get; } = settings;

    /// <summary>Splits a volume path ("/a/b", "a/b/", "/") into validated components.</summary>
    public static string[] SplitPath(string path)
    {
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        foreach (var p in parts)
        {
            ValidateName(p);
        }

        return parts;
    }

    /// <summary>Refuses names the namespace cannot hold: empty, ".", "..", containing NUL, over 255 bytes.</summary>
    public static void ValidateName(string name)
    {
        if (name.Length == 0 || name == "." || name == "..")
        {
            throw new LmfsException($"'{name}' is not allowed as a file name in a volume", "use plain names; '.' and '..' are not stored", 2);
        }

        if (name.Contains('\0', StringComparison.Ordinal) || name.Contains('/', StringComparison.Ordinal))
        {
            throw new LmfsException("a file name contains NUL or '/'", "rename the source file", 2);
        }

        if (Encoding.UTF8.GetByteCount(name) > 255)
        {
            throw new LmfsException($"file name '{name[..32]}…' is longer than 255 bytes", "shorten the name", 2);
        }
    }

    public static string Join(IEnumerable<string> parts) => "/" + string.Join('/', parts);

    /// <summary>The node at <paramref name="path"/>, or null if any component is missing. Symlinks are not followed.</summary>
    public async Task<Node?> ResolveAsync(string path, CancellationToken ct = default)
    {
        var node = await Meta.GetNodeAsync(Node.RootIno, ct).ConfigureAwait(false)
            ?? throw new MetaCorruptException("the volume has no root directory");
        foreach (var name in SplitPath(path))
        {
            if (node.Type != NodeType.Directory)
            {
                return null;
            }

            // Entry and record in one round trip per component (IMetaStore.LookupNodeAsync).
            if (await Meta.LookupNodeAsync(node.Ino, name, ct).ConfigureAwait(false) is not { Node: { } next })
            {
                return null; // no such name, or an entry whose record is missing
            }

            node = next;
        }

        return node;
    }

    /// <summary>Creates every missing directory on <paramref name="path"/>; returns the last one's inode.</summary>
    public async Task<ulong> MkdirAllAsync(string path, uint mode = 0x1ED /* 0755 */, uint uid = 0, uint gid = 0, CancellationToken ct = default)
    {
        ulong dir = Node.RootIno;
        string walked = "";
        foreach (var name in SplitPath(path))
        {
            walked += "/" + name;
            dir = await MkdirAsync(dir, name, walked, mode, uid, gid, ct).ConfigureAwait(false);
        }

        return dir;
    }

    private async Task<ulong> MkdirAsync(ulong parent, string name, string shownPath, uint mode, uint uid, uint gid, CancellationToken ct)
    {
        for (int attempt = 0; attempt < MaxRetries; attempt++)
        {
            var e = await Meta.LookupAsync(parent, name, ct).ConfigureAwait(false);
            if (e is { } existing)
            {
                return existing.Type == NodeType.Directory
                    ? existing.Ino
                    : throw new LmfsException($"'{shownPath}' exists in the volume and is not a directory", "choose another destination, or remove it with lmfs rm", 2);
            }

            ulong ino = await Meta.AllocateInodeAsync(ct).ConfigureAwait(false);
            long now = NowNs();
            var node = new Node(ino, NodeType.Directory, mode & 0xFFF, uid, gid, 2, 0, now, now, parent);
            var r = await Meta.CreateAsync(new EntryCreate(parent, name, node, null), ct).ConfigureAwait(false);
            switch (r)
            {
                case MetaResult.Ok:
                    return ino;
                case MetaResult.Exists:
                case MetaResult.Conflict:
                    continue; // someone else created it meanwhile: look again
                default:
                    throw new LmfsException($"cannot create directory '{shownPath}': parent vanished", "retry; another process is changing the volume");
            }
        }

        throw new LmfsException($"cannot create directory '{shownPath}': too many concurrent changes", "retry");
    }

    /// <summary>
    /// Links <paramref name="node"/> (inode already allocated) at <paramref name="name"/> in <paramref name="parent"/>.
    /// If an entry exists: with <paramref name="overwrite"/> it is replaced atomically (directories only if empty),
    /// otherwise <see cref="MetaResult.Exists"/> is returned.
    /// </summary>
    public async Task<MetaResult> LinkAsync(ulong parent, string name, Node node, Chunks.ChunkTable? chunks, bool overwrite, CancellationToken ct = default)
    {
        for (int attempt = 0; attempt < MaxRetries; attempt++)
        {
            Replaced? replace = null;
            if (overwrite && await Meta.LookupAsync(parent, name, ct).ConfigureAwait(false) is { } old)
            {
                replace = await DescribeAsync(old, ct).ConfigureAwait(false);
                if (replace is null)
                {
                    continue;
                }
            }

            var r = await Meta.CreateAsync(new EntryCreate(parent, name, node, chunks, replace), ct).ConfigureAwait(false);
            if (r == MetaResult.Conflict || (r == MetaResult.Exists && overwrite))
            {
                continue;
            }

            return r;
        }

        return MetaResult.Conflict;
    }

    /// <summary>Removes <paramref name="path"/>; directories need <paramref name="recursive"/> unless empty.</summary>
    public async Task<(long Files, long Dirs)> RemoveAsync(string path, bool recursive, CancellationToken ct = default)
    {
        var parts = SplitPath(path);
        if (parts.Length == 0)
        {
            throw new LmfsException("refusing to remove the volume's root directory", "remove its entries one by one, or format a new volume", 2);
        }

        var parent = await ResolveAsync(Join(parts[..^1]), ct).ConfigureAwait(false);
        var entry = parent is { Type: NodeType.Directory } ? await Meta.LookupAsync(parent.Ino, parts[^1], ct).ConfigureAwait(false) : null;
        if (entry is null)
        {
            throw new LmfsException($"'{Join(parts)}' does not exist in the volume", "list it with lmfs ls", 2);
        }

        return await RemoveEntryAsync(parent!.Ino, entry.Value, Join(parts), recursive, ct).ConfigureAwait(false);
    }

    private async Task<(long Files, long Dirs)> RemoveEntryAsync(ulong parent, DirEntry entry, string shownPath, bool recursive, CancellationToken ct)
    {
        long files = 0, dirs = 0;
        if (entry.Type == NodeType.Directory)
        {
            var children = await Meta.ListAsync(entry.Ino, ct).ConfigureAwait(false);
            if (children.Count > 0 && !recursive)
            {
                throw new LmfsException($"'{shownPath}' is a directory that is not empty", "add -r to remove it with everything in it", 2);
            }

            foreach (var child in children)
            {
                var (f, d) = await RemoveEntryAsync(entry.Ino, child, shownPath + "/" + child.Name, recursive, ct).ConfigureAwait(false);
                files += f;
                dirs += d;
            }
        }

        for (int attempt = 0; attempt < MaxRetries; attempt++)
        {
            var expected = await DescribeAsync(entry, ct).ConfigureAwait(false);
            if (expected is null)
            {
                return (files, dirs); // already gone
            }

            var r = await Meta.RemoveAsync(parent, expected, ct).ConfigureAwait(false);
            switch (r)
            {
                case MetaResult.Ok:
                    return entry.Type == NodeType.Directory ? (files, dirs + 1) : (files + 1, dirs);
                case MetaResult.NotEmpty:
                    throw new LmfsException($"'{shownPath}' gained entries while being removed", "retry when other imports are done");
                case MetaResult.Conflict:
                    var again = await Meta.LookupAsync(parent, entry.Name, ct).ConfigureAwait(false);
                    if (again is null)
                    {
                        return (files, dirs);
                    }

                    entry = again.Value;
                    continue;
                default:
                    throw new LmfsException($"cannot remove '{shownPath}': {r}");
            }
        }

        throw new LmfsException($"cannot remove '{shownPath}': too many concurrent changes", "retry");
    }

    /// <summary>Reads what an entry points at (record and chunk table, one round trip), for use as an optimistic condition; null if it vanished.</summary>
    public async Task<Replaced?> DescribeAsync(DirEntry entry, CancellationToken ct = default)
    {
        var (node, chunks) = await Meta.GetNodeAndChunkTableAsync(entry.Ino, Settings.ChunkSize, ct).ConfigureAwait(false);
        return node is null ? null : new Replaced(entry, node, node.Type == NodeType.File ? chunks : null);
    }

    public static long NowNs() => (DateTime.UtcNow - DateTime.UnixEpoch).Ticks * 100;
}
