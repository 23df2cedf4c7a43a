using System.Collections.Concurrent;
using System.Text;
using LazyModelFs.Fuse;
using LazyModelFs.Fuse.Abi;

namespace LazyModelFs.MemFs;

/// <summary>
/// A small in-memory filesystem over <see cref="IFuseFileSystem"/>: directories, files, symlinks,
/// per-handle directory snapshots, kernel lookup counts, optional passthrough. It exists to test
/// and measure the protocol layer; it knows nothing of chunks or object stores.
/// </summary>
public sealed class MemoryFileSystem : IFuseFileSystem
{
    public sealed class Node
    {
        internal long _lookups;

        public required ulong Ino { get; init; }

        public required ulong Parent { get; init; }

        public required uint Mode { get; init; } // with S_IFMT bits

        public byte[] Content { get; set; } = [];

        public byte[]? Target { get; init; }

        /// <summary>A local file to serve through passthrough (when negotiated) instead of <see cref="Content"/>.</summary>
        public string? BackingPath { get; init; }

        public SortedDictionary<byte[], Node> Children { get; } = new(Comparer<byte[]>.Create((a, b) => a.AsSpan().SequenceCompareTo(b)));

        public bool IsDir => (Mode & 0xF000) == 0x4000;

        public long Lookups => Interlocked.Read(ref _lookups);
    }

    private readonly ConcurrentDictionary<ulong, Node> _nodes = new();
    private readonly ConcurrentDictionary<ulong, List<(byte[] Name, Node Node)>> _dirHandles = new();
    private readonly ConcurrentDictionary<ulong, int> _backingIds = new();
    private readonly Lock _backingLock = new();
    private readonly ConcurrentDictionary<ulong, int> _openPerInode = new();
    private long _nextIno = 1;
    private long _nextFh;
    private FuseConnection? _connection;

    public MemoryFileSystem()
    {
        Root = new Node { Ino = 1, Parent = 1, Mode = 0x4000 | 0x1ED };
        _nodes[1] = Root;
    }

    public Node Root { get; }

    public FuseConnectionInfo? Info { get; private set; }

    /// <summary>Entry and attribute timeout given to the kernel.</summary>
    public TimeSpan Timeout { get; set; } = FuseTime.Forever;

    /// <summary>When set, READs wait for this task first (to hold a request in flight).</summary>
    public Task? ReadGate { get; set; }

    /// <summary>Serve READs asynchronously (Task.Yield) to exercise the dispatcher's async path.</summary>
    public bool AsyncReads { get; set; }

    /// <summary>Answer READs from the content array itself instead of copying into the lent buffer.</summary>
    public bool ZeroCopy { get; set; }

    public int OpenFiles => _openPerInode.Values.Sum();

    public Node AddDir(string path) => Add(path, 0x4000 | 0x1ED, null, null);

    public Node AddFile(string path, byte[] content, string? backingPath = null) => Add(path, 0x8000 | 0x1A4, null, backingPath, content);

    public Node AddSymlink(string path, string target) => Add(path, 0xA000 | 0x1FF, Encoding.UTF8.GetBytes(target), null);

    public Node? Find(ulong ino) => _nodes.GetValueOrDefault(ino);

    private Node Add(string path, uint mode, byte[]? target, string? backing, byte[]? content = null)
    {
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var dir = Root;
        foreach (var p in parts[..^1])
        {
            var key = Encoding.UTF8.GetBytes(p);
            lock (dir.Children)
            {
                if (!dir.Children.TryGetValue(key, out var next))
                {
                    next = NewNode(dir.Ino, 0x4000 | 0x1ED, null, null);
                    dir.Children[key] = next;
                }

                dir = next;
            }
        }

        var node = NewNode(dir.Ino, mode, target, backing);
        node.Content = content ?? [];
        lock (dir.Children)
        {
            dir.Children[Encoding.UTF8.GetBytes(parts[^1])] = node;
        }

        return node;
    }

    private Node NewNode(ulong parent, uint mode, byte[]? target, string? backing)
    {
        var n = new Node { Ino = (ulong)Interlocked.Increment(ref _nextIno), Parent = parent, Mode = mode, Target = target, BackingPath = backing };
        _nodes[n.Ino] = n;
        return n;
    }

    public void Init(FuseConnectionInfo info, FuseConnection? connection)
    {
        Info = info;
        _connection = connection;
    }

    public fuse_attr Attr(Node n) => new()
    {
        ino = n.Ino,
        size = (ulong)(n.Target?.Length ?? (n.BackingPath is { } b ? new FileInfo(b).Length : n.Content.Length)),
        blocks = (ulong)((n.Content.Length + 511) / 512),
        mode = n.Mode,
        nlink = n.IsDir ? 2u : 1u,
        uid = 0,
        gid = 0,
        blksize = 4096,
        mtime = 1_700_000_000,
        ctime = 1_700_000_000,
        atime = 1_700_000_000,
    };

    private FuseEntry Entry(Node n) => new(n.Ino, 0, Attr(n), Timeout, Timeout);

    public ValueTask<FuseResult<FuseEntry>> LookupAsync(FuseContext ctx, ulong parent, byte[] name)
    {
        if (!_nodes.TryGetValue(parent, out var dir) || !dir.IsDir)
        {
            return ValueTask.FromResult<FuseResult<FuseEntry>>(Errno.ENOTDIR);
        }

        Node? child;
        lock (dir.Children)
        {
            dir.Children.TryGetValue(name, out child);
        }

        if (child is null)
        {
            // A cacheable negative entry: loaders probe for many absent files.
            return ValueTask.FromResult<FuseResult<FuseEntry>>(FuseEntry.Negative(Timeout));
        }

        Interlocked.Increment(ref child._lookups); // before the reply is written (fuse-protocol.md 8.1)
        return ValueTask.FromResult<FuseResult<FuseEntry>>(Entry(child));
    }

    public void Forget(ulong nodeId, ulong nlookup)
    {
        if (_nodes.TryGetValue(nodeId, out var n) && nodeId != 1)
        {
            Interlocked.Add(ref n._lookups, -(long)nlookup);
        }
    }

    public ValueTask<FuseResult<FuseAttrReply>> GetAttrAsync(FuseContext ctx, ulong nodeId, ulong? fh) =>
        ValueTask.FromResult<FuseResult<FuseAttrReply>>(_nodes.TryGetValue(nodeId, out var n) ? new FuseAttrReply(Attr(n), Timeout) : Errno.ENOENT);

    public ValueTask<FuseResult<FuseOpen>> OpenAsync(FuseContext ctx, ulong nodeId, int flags)
    {
        if (!_nodes.TryGetValue(nodeId, out var n))
        {
            return ValueTask.FromResult<FuseResult<FuseOpen>>(Errno.ENOENT);
        }

        if ((flags & 3) != 0)
        {
            return ValueTask.FromResult<FuseResult<FuseOpen>>(Errno.EROFS);
        }

        ulong fh = (ulong)Interlocked.Increment(ref _nextFh);
        _openPerInode.AddOrUpdate(nodeId, 1, (_, c) => c + 1);
        if (n.BackingPath is { } path && Info?.Passthrough == true && _connection is not null)
        {
            // One backing id per inode, opened at its first open, closed at its last release (fuse-protocol.md 10).
            lock (_backingLock)
            {
                if (!_backingIds.TryGetValue(nodeId, out int id))
                {
                    using var h = File.OpenHandle(path);
                    id = _connection.OpenBacking((int)h.DangerousGetHandle());
                    _backingIds[nodeId] = id;
                }

                return ValueTask.FromResult<FuseResult<FuseOpen>>(new FuseOpen(fh, FopenFlags.PASSTHROUGH | FopenFlags.NOFLUSH, id));
            }
        }

        return ValueTask.FromResult<FuseResult<FuseOpen>>(new FuseOpen(fh, FopenFlags.KEEP_CACHE | FopenFlags.NOFLUSH));
    }

    public ValueTask<FuseReadResult> ReadAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, Memory<byte> buffer)
    {
        if (ReadGate is { IsCompleted: false } gate || AsyncReads)
        {
            return ReadSlowAsync(nodeId, offset, buffer);
        }

        return ValueTask.FromResult(Copy(nodeId, offset, buffer));
    }

    private async ValueTask<FuseReadResult> ReadSlowAsync(ulong nodeId, long offset, Memory<byte> buffer)
    {
        if (ReadGate is { } gate)
        {
            await gate.ConfigureAwait(false);
        }

        await Task.Yield();
        return Copy(nodeId, offset, buffer);
    }

    private FuseReadResult Copy(ulong nodeId, long offset, Memory<byte> buffer)
    {
        if (!_nodes.TryGetValue(nodeId, out var n))
        {
            return Errno.ENOENT;
        }

        var data = n.Content;
        if (offset >= data.Length)
        {
            return FuseReadResult.InBuffer(0);
        }

        int len = (int)Math.Min(buffer.Length, data.Length - offset);
        if (ZeroCopy)
        {
            // Reply straight from the file's array (pinned by the writev): no copy into the lent buffer.
            return FuseReadResult.FromMemory(data.AsMemory((int)offset, len));
        }

        data.AsSpan((int)offset, len).CopyTo(buffer.Span);
        return FuseReadResult.InBuffer(len);
    }

    public ValueTask<Errno> ReleaseAsync(FuseContext ctx, ulong nodeId, ulong fh)
    {
        int left = _openPerInode.AddOrUpdate(nodeId, 0, (_, c) => c - 1);
        if (left == 0)
        {
            lock (_backingLock)
            {
                if (_backingIds.TryRemove(nodeId, out int id))
                {
                    _connection?.CloseBacking(id);
                }
            }
        }

        return ValueTask.FromResult(Errno.OK);
    }

    public ValueTask<FuseResult<FuseOpen>> OpenDirAsync(FuseContext ctx, ulong nodeId, int flags)
    {
        if (!_nodes.TryGetValue(nodeId, out var n) || !n.IsDir)
        {
            return ValueTask.FromResult<FuseResult<FuseOpen>>(Errno.ENOTDIR);
        }

        // A snapshot per open handle: cookies stay valid whatever the kernel replays (fuse-protocol.md 8.5).
        ulong fh = (ulong)Interlocked.Increment(ref _nextFh);
        lock (n.Children)
        {
            _dirHandles[fh] = n.Children.Select(kv => (kv.Key, kv.Value)).ToList();
        }

        return ValueTask.FromResult<FuseResult<FuseOpen>>(new FuseOpen(fh, FopenFlags.KEEP_CACHE | FopenFlags.CACHE_DIR));
    }

    public ValueTask<Errno> ReadDirAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, FuseDirBuffer buffer)
    {
        if (!_dirHandles.TryGetValue(fh, out var entries) || !_nodes.TryGetValue(nodeId, out var dir))
        {
            return ValueTask.FromResult(Errno.EBADF);
        }

        // Cookies: 1 after ".", 2 after "..", k + 3 after entries[k].
        for (long i = offset; i < entries.Count + 2; i++)
        {
            if (i < 2)
            {
                if (!buffer.TryAddDot(i, i == 0 ? dir.Ino : dir.Parent))
                {
                    break;
                }

                continue;
            }

            var (childName, child) = entries[(int)(i - 2)];
            if (buffer.Plus)
            {
                if (!buffer.Fits(childName.Length))
                {
                    break;
                }

                Interlocked.Increment(ref child._lookups);
                buffer.TryAddPlus(childName, Entry(child), i + 1);
            }
            else if (!buffer.TryAdd(childName, child.Ino, (child.Mode & 0xF000) >> 12, i + 1))
            {
                break;
            }
        }

        return ValueTask.FromResult(Errno.OK);
    }

    public ValueTask<Errno> ReleaseDirAsync(FuseContext ctx, ulong nodeId, ulong fh)
    {
        _dirHandles.TryRemove(fh, out _);
        return ValueTask.FromResult(Errno.OK);
    }

    public ValueTask<FuseResult<fuse_kstatfs>> StatFsAsync(FuseContext ctx, ulong nodeId)
    {
        long used = _nodes.Values.Sum(n => (long)n.Content.Length);
        var s = new fuse_kstatfs { bsize = 4096, frsize = 4096, namelen = 255, blocks = (ulong)((used + 4095) / 4096) + 1024, bfree = 1024, bavail = 1024, files = (ulong)_nodes.Count, ffree = 1_000_000 };
        return ValueTask.FromResult<FuseResult<fuse_kstatfs>>(s);
    }

    public ValueTask<FuseResult<ReadOnlyMemory<byte>>> ReadLinkAsync(FuseContext ctx, ulong nodeId) =>
        ValueTask.FromResult<FuseResult<ReadOnlyMemory<byte>>>(_nodes.TryGetValue(nodeId, out var n) && n.Target is { } t ? (ReadOnlyMemory<byte>)t : Errno.EINVAL);
}
