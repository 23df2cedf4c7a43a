using System.Collections.Concurrent;
using System.Text;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Fuse.Abi;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Vfs;

public sealed record VfsOptions
{
    public PrefetchMode Prefetch { get; init; } = PrefetchMode.Auto;

    /// <summary>Record the order each file's chunks are first read in, as its access profile in the metadata (<c>--record</c>; issue 17).</summary>
    public bool Record { get; init; } = true;

    /// <summary>Largest readahead window per stream.</summary>
    public long ReadaheadMax { get; init; } = 128L << 20;

    /// <summary>How long the kernel keeps a name → inode entry (imports can add or replace names).</summary>
    public TimeSpan EntryTimeout { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long a "no such file" answer is cached by the kernel (0: not cached).</summary>
    public TimeSpan NegativeTimeout { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long directory attributes are cached; file attributes never change (content is immutable per inode).</summary>
    public TimeSpan DirectoryTimeout { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Open directory handles of the mount, all users together; past it OPENDIR fails with ENFILE (<see cref="DirectoryHandles"/>).</summary>
    public int MaxDirectoryHandles { get; init; } = 65536;

    /// <summary>Bytes of the directory listings those handles hold (shared per directory version); past it OPENDIR fails with ENFILE.</summary>
    public long MaxDirectoryBytes { get; init; } = 128L << 20;
}

/// <summary>
/// The filesystem `lmfs mount` serves: a read-only view of a volume.
///
/// Inodes are the metadata engine's inode numbers (dense, below 2^32 in practice, root = 1). A file's
/// bytes never change under its inode — an import that replaces a file links a new inode — so file
/// attributes are cached by the kernel indefinitely and files are opened with FOPEN_KEEP_CACHE:
/// pages read once stay in the page cache across opens and processes. Names and directories can
/// change (imports), so entries, directory attributes and negative lookups expire after
/// <see cref="VfsOptions.EntryTimeout"/> and friends.
///
/// A node id plus generation never names two different files to the kernel. Node ids are the
/// engine's inode numbers, and an engine can hand a number out again after its metadata went back in
/// time (failover to an async replica, a restore of an older RDB or SQLite file): the file that gets
/// it is another file. Each node's generation is therefore derived from its record (its type and
/// birth time, and for files and symlinks the whole immutable record), and every LOOKUP compares the
/// record it reads with the one the daemon holds: a changed record replaces the daemon's state for
/// that number (chunk table included), and the new generation makes the kernel drop its old inode
/// and its pages (fs/fuse/inode.c, fuse_iget: a cached inode with another generation is made bad).
/// OPEN re-reads the record with the chunk table (one read of both: IMetaStore.GetNodeAndChunkTableAsync),
/// so a name looked up before the change cannot open the other file's bytes (ESTALE). Issue 11, item 1.
///
/// READ is the read side's: each file the daemon tracks has one <see cref="OpenFileReader"/>, shared
/// by every handle the kernel opens on it (readahead streams and prefetch are per file, not per
/// handle), and a handle maps straight to it. This class keeps filesystem semantics only: inodes
/// and their generations, lookup counts, handles, directory snapshots, attributes.
/// </summary>
internal sealed class LmfsFileSystem : IFuseFileSystem
{
    private readonly Volume _volume;
    private readonly ChunkCache _reader;
    private readonly VfsOptions _options;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<ulong, NodeState> _nodes = new(); // changed under _nodesLock; read without it
    private readonly Lock _nodesLock = new();
    private readonly ConcurrentDictionary<ulong, (NodeState Node, bool Passthrough)> _handles = new(); // file handle → its node (whose read side answers READ) and mode
    private FuseConnection? _fuse; // set at INIT when the kernel granted passthrough
    private volatile bool _passthrough; // and still on (off after the kernel refused a backing file)
    private long _passthroughOpens;
    private long _switched;
    private readonly int _chunkSize;
    private long _nextFh;

    public LmfsFileSystem(Volume volume, ChunkCache reader, VfsOptions? options = null, ILogger? logger = null)
    {
        _volume = volume;
        _reader = reader;
        _options = options ?? new VfsOptions();
        _log = logger ?? NullLogger.Instance;
        _chunkSize = volume.Settings.ChunkSize;
        Directories = new DirectoryHandles(volume.Meta, _options, _log);
        Profiles = new ProfileBook(volume.Meta, _options.Record, _log);
    }

    /// <summary>The mount's access profiles: lookups at first opens, recordings stored, replays (issue 17).</summary>
    public ProfileBook Profiles { get; }

    /// <summary>Open directory handles and the listings they share (counters for the control socket's stats).</summary>
    public DirectoryHandles Directories { get; }

    /// <summary>Kernel references per inode (lookup counts), for tests and diagnostics.</summary>
    public long LookupCount(ulong ino)
    {
        lock (_nodesLock)
        {
            return _nodes.TryGetValue(ino, out var s) ? s.Lookups.Count : 0;
        }
    }

    /// <summary>Node ids the daemon holds state for: those the kernel holds references to (a node forgotten to zero is dropped).</summary>
    public int Nodes => _nodes.Count;

    public int OpenFiles => _handles.Count;

    /// <summary>File opens answered with FUSE passthrough (the kernel reads the file's view itself).</summary>
    public long PassthroughOpens => Interlocked.Read(ref _passthroughOpens);

    /// <summary>Inodes read in cached mode whose pages were dropped once their view was built, so their next open may be passthrough.</summary>
    public long Switched => Interlocked.Read(ref _switched);

    public void Init(FuseConnectionInfo info, FuseConnection? connection)
    {
        if (info.Passthrough && connection is not null && _reader.HasViews)
        {
            _fuse = connection;
            _passthrough = true;
            _log.LogInformation("vfs: passthrough on: a file whose chunks are all in the disk cache gets a view there, and its later opens are served by the kernel");
        }
    }

    /// <summary>
    /// The kernel's references to a node id. FORGET names only the id, so the count is per id and is
    /// carried over when the id's state is replaced by another incarnation.
    /// </summary>
    private sealed class LookupCounter
    {
        public long Count;
    }

    private sealed class NodeState(Node node, LookupCounter lookups, OpenFileReader? reads)
    {
        public Node Node { get; } = node;

        public uint Generation { get; } = GenerationOf(node);

        public LookupCounter Lookups { get; } = lookups;

        /// <summary>A file's read side (chunk table, readahead, prefetch, its name for log lines); null for directories and symlinks.</summary>
        public OpenFileReader? Reads { get; } = reads;

        // The kernel's I/O mode of the inode (fs/fuse/iomode.c), changed under lock (this): a passthrough
        // open while cached opens exist fails, and so does a cached open while passthrough ones exist.
        public int CachedOpens;
        public int PassthroughOpens;
        public int BackingId;

        /// <summary>Whether the disk cache was told where this file's view holds its chunks (once per node, once there is a view).</summary>
        public bool Located;

        /// <summary>
        /// Opened in cached mode since the kernel looked it up (or since its view was built and its
        /// pages dropped): its pages are in the kernel's page cache of this inode, so later opens stay cached.
        /// </summary>
        public bool ServedCached;
    }

    private NodeState NewState(Node n, LookupCounter lookups) =>
        new(n, lookups, n.Type == NodeType.File ? new OpenFileReader(n, _chunkSize, _reader, _options.Prefetch, _options.ReadaheadMax, _log, Profiles) : null);

    // ------------------------------------------------------------------ attributes

    private static uint TypeBits(NodeType t) => t switch { NodeType.Directory => 0x4000u, NodeType.Symlink => 0xA000u, _ => 0x8000u };

    public static fuse_attr Attr(Node n)
    {
        ulong size = n.Type == NodeType.Symlink ? (ulong)Encoding.UTF8.GetByteCount(n.SymlinkTarget ?? "") : n.Size;
        long mtime = Math.DivRem(n.MtimeNs, 1_000_000_000L, out long mns);
        long ctime = Math.DivRem(n.CtimeNs, 1_000_000_000L, out long cns);
        return new fuse_attr
        {
            ino = n.Ino,
            size = size,
            blocks = (size + 511) / 512,
            atime = mtime,
            atimensec = (uint)Math.Max(0, mns),
            mtime = mtime,
            mtimensec = (uint)Math.Max(0, mns),
            ctime = ctime,
            ctimensec = (uint)Math.Max(0, cns),
            mode = TypeBits(n.Type) | (n.Mode & 0xFFF),
            nlink = Math.Max(1, n.Nlink),
            uid = n.Uid,
            gid = n.Gid,
            blksize = 4096,
        };
    }

    private TimeSpan AttrTimeout(Node n) => n.Type == NodeType.Directory ? _options.DirectoryTimeout : FuseTime.Forever;

    private FuseEntry EntryFor(NodeState st) => new(st.Node.Ino, st.Generation, Attr(st.Node), _options.EntryTimeout, AttrTimeout(st.Node));

    /// <summary>
    /// The generation the kernel gets with a node id: the same for the same file, another one for
    /// another file that got the same number. The kernel keeps it in a 32-bit field and compares it as
    /// an int (fs/fuse/inode.c, fuse_stale_inode), so only 32 bits are used. Directories' records never
    /// change in this format, but only their type and birth time count, so a future attribute update
    /// cannot make the kernel drop a directory someone is inside. The root is always 0, as the kernel
    /// made it at mount.
    /// </summary>
    internal static uint GenerationOf(Node n)
    {
        if (n.Ino == Node.RootIno)
        {
            return 0;
        }

        Span<byte> hash = stackalloc byte[32];
        if (n.Type == NodeType.Directory)
        {
            Span<byte> id = stackalloc byte[9];
            id[0] = (byte)n.Type;
            System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(id[1..], n.CtimeNs);
            System.Security.Cryptography.SHA256.HashData(id, hash);
        }
        else
        {
            System.Security.Cryptography.SHA256.HashData(n.Encode(), hash);
        }

        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(hash) | 1; // never 0, which is the root's
    }

    /// <summary>
    /// Whether two records of one number are the same file: by what <see cref="GenerationOf"/> is made of
    /// (a directory: type and birth time; anything else: the whole record), compared directly, not hashed.
    /// </summary>
    private static bool SameFile(Node a, Node b) =>
        a.Type == NodeType.Directory ? b.Type == NodeType.Directory && a.CtimeNs == b.CtimeNs : a == b;

    /// <summary>
    /// The daemon's state for <paramref name="n"/>'s number, replaced when the record shows another
    /// file; with <paramref name="lookup"/>, one kernel reference is counted in the same step (under
    /// the lock FORGET takes), so a FORGET racing a LOOKUP can never drop the state the kernel is
    /// about to hold (fuse-protocol.md 8.1: counted before the reply).
    /// </summary>
    private NodeState Track(Node n, string? name = null, bool lookup = false)
    {
        NodeState st;
        NodeState? replaced = null;
        lock (_nodesLock)
        {
            if (!_nodes.TryGetValue(n.Ino, out st!))
            {
                st = NewState(n, new LookupCounter());
                _nodes[n.Ino] = st;
            }
            else if (!ReferenceEquals(st.Node, n) && !SameFile(st.Node, n))
            {
                // Another file under a number the daemon knows (metadata went back in time and the number
                // was handed out again): forget everything about the old one but the kernel's references.
                replaced = st;
                st = NewState(n, st.Lookups);
                _nodes[n.Ino] = st;
            }

            if (lookup)
            {
                st.Lookups.Count++;
            }
        }

        if (replaced is not null)
        {
            _log.LogWarning(
                "vfs: inode {Ino} now names another {Type} ('{Name}', generation {Gen}) than before; the metadata engine reused the number (was it restored or failed over?). The old file's state is dropped",
                n.Ino,
                n.Type.ToString().ToLowerInvariant(),
                name ?? "?",
                st.Generation);
        }

        if (name is not null)
        {
            st.Reads?.NameSeen(name);
        }

        return st;
    }

    private async ValueTask<Node?> NodeAsync(ulong ino)
    {
        if (_nodes.TryGetValue(ino, out var s) && s.Node.Type != NodeType.Directory)
        {
            return s.Node;
        }

        return await _volume.Meta.GetNodeAsync(ino).ConfigureAwait(false);
    }

    // ------------------------------------------------------------------ namespace

    public async ValueTask<FuseResult<FuseEntry>> LookupAsync(FuseContext ctx, ulong parent, byte[] name)
    {
        try
        {
            if (!TryDecode(name, out string s))
            {
                return Negative();
            }

            // The entry and the record it names in one round trip (IMetaStore.LookupNodeAsync): no name, or
            // an entry whose record is missing, is a negative answer.
            if (await _volume.Meta.LookupNodeAsync(parent, s).ConfigureAwait(false) is not { Node: { } node })
            {
                return Negative();
            }

            var st = Track(node, s, lookup: true); // counted before the reply (fuse-protocol.md 8.1)
            return EntryFor(st);
        }
        catch (Exception ex)
        {
            return Fail(ex, "lookup", parent);
        }
    }

    private FuseResult<FuseEntry> Negative() =>
        _options.NegativeTimeout > TimeSpan.Zero ? FuseEntry.Negative(_options.NegativeTimeout) : (FuseResult<FuseEntry>)Errno.ENOENT;

    public void Forget(ulong nodeId, ulong nlookup)
    {
        if (nodeId == Node.RootIno)
        {
            return;
        }

        NodeState? dropped = null;
        lock (_nodesLock)
        {
            if (_nodes.TryGetValue(nodeId, out var s) && (s.Lookups.Count -= (long)nlookup) <= 0)
            {
                _nodes.TryRemove(nodeId, out _);
                dropped = s;
            }
        }

        dropped?.Reads?.Released(); // what its loads recorded is stored before the state goes
    }

    /// <summary>Stores what every file's current load recorded (at unmount), and waits up to <paramref name="wait"/> for the writes.</summary>
    public void FlushProfiles(TimeSpan wait)
    {
        foreach (var st in _nodes.Values)
        {
            st.Reads?.Released();
        }

        var until = DateTime.UtcNow + wait;
        while (Profiles.PendingWrites > 0 && DateTime.UtcNow < until)
        {
            Thread.Sleep(10);
        }
    }

    public async ValueTask<FuseResult<FuseAttrReply>> GetAttrAsync(FuseContext ctx, ulong nodeId, ulong? fh)
    {
        try
        {
            var n = await NodeAsync(nodeId).ConfigureAwait(false);
            return n is null ? Errno.ENOENT : new FuseAttrReply(Attr(n), AttrTimeout(n));
        }
        catch (Exception ex)
        {
            return Fail(ex, "getattr", nodeId);
        }
    }

    public async ValueTask<FuseResult<ReadOnlyMemory<byte>>> ReadLinkAsync(FuseContext ctx, ulong nodeId)
    {
        try
        {
            var n = await NodeAsync(nodeId).ConfigureAwait(false);
            return n is { Type: NodeType.Symlink, SymlinkTarget: { } t } ? (ReadOnlyMemory<byte>)Encoding.UTF8.GetBytes(t) : Errno.EINVAL;
        }
        catch (Exception ex)
        {
            return Fail(ex, "readlink", nodeId);
        }
    }

    public async ValueTask<FuseResult<fuse_kstatfs>> StatFsAsync(FuseContext ctx, ulong nodeId)
    {
        try
        {
            var u = await _volume.Meta.GetUsageAsync().ConfigureAwait(false);
            ulong blocks = (ulong)Math.Max(1, (u.Bytes + 4095) / 4096);
            return new fuse_kstatfs { bsize = 4096, frsize = 4096, namelen = 255, blocks = blocks, bfree = 0, bavail = 0, files = (ulong)Math.Max(1, u.Inodes), ffree = 0 };
        }
        catch (Exception ex)
        {
            return Fail(ex, "statfs", nodeId);
        }
    }

    // ------------------------------------------------------------------ directories

    public async ValueTask<FuseResult<FuseOpen>> OpenDirAsync(FuseContext ctx, ulong nodeId, int flags)
    {
        try
        {
            // One listing per handle, shared by handles of the same directory version: cookies (index + 3) stay
            // valid however the kernel replays (fuse-protocol.md 8.5); memory and handles are bounded (DirectoryHandles).
            var r = await Directories.OpenAsync(ctx, nodeId).ConfigureAwait(false);
            return r.IsOk ? new FuseOpen(r.Value, FopenFlags.None) : r.Error;
        }
        catch (Exception ex)
        {
            return Fail(ex, "opendir", nodeId);
        }
    }

    public async ValueTask<Errno> ReadDirAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, FuseDirBuffer buffer)
    {
        if (Directories.Get(fh) is not { } entries)
        {
            return Errno.EBADF;
        }

        try
        {
            // Cookies: 1 after ".", 2 after "..", k + 3 after entries[k].
            for (long i = offset; i < entries.Count + 2; i++)
            {
                if (i < 2)
                {
                    if (!buffer.TryAddDot(i, i == 0 ? nodeId : await ParentAsync(nodeId).ConfigureAwait(false)))
                    {
                        break;
                    }

                    continue;
                }

                int k = (int)(i - 2);
                if (!buffer.Plus)
                {
                    if (!buffer.TryAdd(entries.Name(k), entries.Ino(k), TypeBits(entries.Type(k)) >> 12, i + 1))
                    {
                        break;
                    }

                    continue;
                }

                if (!buffer.Fits(entries.Name(k).Length))
                {
                    break;
                }

                // The record itself, never the daemon's copy: an entry may name another file under a
                // number the daemon knows (metadata rolled back), and only a fresh record shows it.
                var node = await _volume.Meta.GetNodeAsync(entries.Ino(k)).ConfigureAwait(false);
                if (node is null)
                {
                    continue; // removed since the snapshot
                }

                var st = Track(node, Encoding.UTF8.GetString(entries.Name(k)), lookup: true);
                buffer.TryAddPlus(entries.Name(k), EntryFor(st), i + 1);
            }

            return Errno.OK;
        }
        catch (Exception ex)
        {
            return Fail(ex, "readdir", nodeId);
        }
    }

    private async ValueTask<ulong> ParentAsync(ulong dir) => (await NodeAsync(dir).ConfigureAwait(false))?.Parent ?? dir;

    public ValueTask<Errno> ReleaseDirAsync(FuseContext ctx, ulong nodeId, ulong fh)
    {
        Directories.Release(fh);
        return ValueTask.FromResult(Errno.OK);
    }

    // ------------------------------------------------------------------ files

    public async ValueTask<FuseResult<FuseOpen>> OpenAsync(FuseContext ctx, ulong nodeId, int flags)
    {
        if ((flags & 3) != 0)
        {
            return Errno.EROFS; // O_WRONLY / O_RDWR
        }

        try
        {
            var node = await NodeAsync(nodeId).ConfigureAwait(false);
            if (node is null)
            {
                return Errno.ENOENT;
            }

            if (node.Type != NodeType.File)
            {
                return Errno.EISDIR;
            }

            var st = Track(node);
            var reads = st.Reads ?? throw new InvalidOperationException($"inode {nodeId} is a file without a read side"); // Track gives every file one
            if (reads.Table is null)
            {
                // The record is read again with the table (one command, one moment: no extra round trip), so a
                // table that belongs to another file under this number is never attached to this one.
                var (current, table) = await _volume.Meta.GetNodeAndChunkTableAsync(nodeId, _chunkSize).ConfigureAwait(false);
                if (current is null || !SameFile(current, st.Node))
                {
                    _log.LogWarning("vfs: inode {Ino} ('{Name}') changed or vanished in the metadata since the kernel looked it up; open refused (ESTALE)", nodeId, reads.Name ?? "?");
                    return Errno.ESTALE;
                }

                if (table is null || table.PlainSize != (long)node.Size)
                {
                    _log.LogError("vfs: inode {Ino} has {What}; refusing to open it", nodeId, table is null ? "no chunk table" : $"a chunk table of {table.PlainSize} bytes for size {node.Size}");
                    return Errno.EIO;
                }

                reads.Attach(table);
            }

            if (!st.Located)
            {
                // A view built earlier (here, by warmup, by another mount) holds the chunks whose files it
                // replaced; asked again at each open until there is one (one stat).
                st.Located = _reader.LocateInView(reads.Table!);
            }

            ulong fh = (ulong)Interlocked.Increment(ref _nextFh);
            if (OpenPassthrough(st, reads.Table!, fh) is { } passthrough)
            {
                return passthrough;
            }

            lock (st)
            {
                st.CachedOpens++;
                st.ServedCached = true;
            }

            _handles[fh] = (st, false);
            reads.Opened(ctx.Pid); // the file's first open looks up its profile and starts prefetch
            if (_passthrough)
            {
                BuildViewThenSwitch(st, nodeId, reads.Table!); // a cache filled earlier (another mount, before a restart) may hold it all
            }

            return new FuseOpen(fh, FopenFlags.KEEP_CACHE | FopenFlags.NOFLUSH);
        }
        catch (Exception ex)
        {
            return Fail(ex, "open", nodeId);
        }
    }

    /// <summary>
    /// A passthrough answer to OPEN when the file has a view and the inode may change to (or is in)
    /// passthrough mode; null to open it in cached mode. One backing id per inode, registered at its
    /// first passthrough open and closed at its last release (fuse-protocol.md, section 10).
    /// </summary>
    private FuseOpen? OpenPassthrough(NodeState st, ChunkTable table, ulong fh)
    {
        if (!_passthrough || _fuse is not { } conn)
        {
            return null;
        }

        lock (st)
        {
            if (st.PassthroughOpens == 0)
            {
                if (st.CachedOpens > 0 || st.ServedCached)
                {
                    return null;
                }

                using var view = _reader.OpenView(table);
                if (view is null)
                {
                    return null;
                }

                try
                {
                    st.BackingId = conn.OpenBacking((int)view.DangerousGetHandle()); // the kernel holds its own reference to the file from here
                }
                catch (IOException ex)
                {
                    _passthrough = false;
                    _log.LogWarning("vfs: passthrough turned off for this mount: {Message}", ex.Message);
                    return null;
                }
            }

            st.PassthroughOpens++;
        }

        _handles[fh] = (st, true);
        Interlocked.Increment(ref _passthroughOpens);
        return new FuseOpen(fh, FopenFlags.PASSTHROUGH | FopenFlags.NOFLUSH, st.BackingId);
    }

    public ValueTask<Errno> ReleaseAsync(FuseContext ctx, ulong nodeId, ulong fh)
    {
        if (_handles.TryRemove(fh, out var h))
        {
            var st = h.Node;
            bool lastCached = false;
            lock (st)
            {
                if (!h.Passthrough)
                {
                    lastCached = --st.CachedOpens == 0;
                }
                else if (--st.PassthroughOpens == 0)
                {
                    try
                    {
                        _fuse?.CloseBacking(st.BackingId);
                    }
                    catch (IOException ex)
                    {
                        _log.LogWarning("vfs: closing the passthrough backing file of inode {Ino} failed: {Message}", nodeId, ex.Message);
                    }

                    st.BackingId = 0;
                }
            }

            if (lastCached)
            {
                st.Reads?.Released(); // what the load recorded is stored (when it grew and differs from the profile)
            }

            if (lastCached && _passthrough && st.Reads?.Table is { } table)
            {
                BuildViewThenSwitch(st, nodeId, table); // the file may be all on disk now: the next opener gets passthrough
            }
        }

        return ValueTask.FromResult(Errno.OK);
    }

    /// <summary>
    /// Queues the file's view; once it exists and the inode has no opens, the inode may turn to
    /// passthrough at its next open: its cached pages are dropped (the view's, written through the
    /// page cache, hold the same bytes) and it no longer counts as served in cached mode.
    /// </summary>
    private void BuildViewThenSwitch(NodeState st, ulong nodeId, ChunkTable table)
    {
        _ = _reader.QueueViewBuild(table).ContinueWith(
            t =>
            {
                if (!t.Result || _fuse is not { } fuse)
                {
                    return;
                }

                lock (st)
                {
                    if (!st.ServedCached || st.CachedOpens > 0 || st.PassthroughOpens > 0)
                    {
                        return;
                    }

                    st.ServedCached = false;
                }

                Interlocked.Increment(ref _switched);
                _ = fuse.InvalidateInodeAsync(nodeId, 0, 0); // frees the pages; the bytes are the same, so a race with a read is harmless
            },
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously | TaskContinuationOptions.OnlyOnRanToCompletion,
            TaskScheduler.Default);
    }

    /// <summary>The handle's file answers (<see cref="OpenFileReader.ReadAsync"/>): a memory hit stays synchronous and allocation-free.</summary>
    public ValueTask<FuseReadResult> ReadAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, Memory<byte> buffer) =>
        _handles.TryGetValue(fh, out var h) && !h.Passthrough && h.Node.Reads is { } reads ? reads.ReadAsync(offset, buffer, ctx.Pid) : ValueTask.FromResult<FuseReadResult>(Errno.EBADF);

    // ------------------------------------------------------------------ control (lmfs bench)

    /// <summary>
    /// Puts a file back to how a fresh mount would find it: its queued fetches are dropped, its chunks
    /// leave the memory tier (and, with <paramref name="disk"/>, the disk cache), its readahead streams
    /// are forgotten, and its next open starts prefetch again. Fetches already running finish and
    /// publish; a caller that needs them gone waits for the reader to be idle and forgets again. The kernel's page cache is the caller's to drop
    /// (drop_caches, or <see cref="FuseConnection.InvalidateInodeAsync"/>).
    /// </summary>
    public async Task<(int Memory, int Disk)> ForgetCachedAsync(ulong ino, bool disk, CancellationToken ct = default)
    {
        var (st, table) = await FileOfAsync(ino, ct).ConfigureAwait(false);
        var (memory, removed) = _reader.Evict(table.Entries.Select(e => e.Id).ToList(), disk);
        if (disk)
        {
            removed += _reader.RemoveView(table) ? 1 : 0; // an open in passthrough mode keeps reading the deleted view; later ones read the chunks
        }

        st?.Reads?.Reset(); // its readahead streams forgotten, its next open prefetches again

        return (memory, removed);
    }

    /// <summary>Hands the file a loader's read plan (<see cref="OpenFileReader.Plan"/>); the chunks planned.</summary>
    public int Plan(ulong ino, IReadOnlyList<(long Offset, long Length)> ranges) =>
        (_nodes.TryGetValue(ino, out var s) ? s.Reads : null)?.Plan(ranges)
        ?? throw new Util.LmfsException($"inode {ino} is not a file this mount has open", "open the file first (lmfs plan holds it open while it sends the plan)", 2);

    /// <summary>Removes the file's access profiles from the metadata, and what its current load recorded (lmfs bench, before a load without replay).</summary>
    public async Task<int> ForgetProfilesAsync(ulong ino, CancellationToken ct = default)
    {
        var (st, table) = await FileOfAsync(ino, ct).ConfigureAwait(false);
        if (st?.Reads?.Reset(record: false) is { } old)
        {
            await old.Stores.WaitAsync(ct).ConfigureAwait(false); // a store of it already under way lands before the delete, not after
        }

        return await Profiles.DeleteAsync(table).ConfigureAwait(false);
    }

    /// <summary>A control command's file: the daemon's state for it (null when it tracks none) and its chunk table (the one attached, else the metadata's).</summary>
    private async Task<(NodeState? State, ChunkTable Table)> FileOfAsync(ulong ino, CancellationToken ct)
    {
        var st = _nodes.TryGetValue(ino, out var s) ? s : null;
        var table = st?.Reads?.Table ?? await _volume.Meta.GetChunkTableAsync(ino, _chunkSize, ct).ConfigureAwait(false)
            ?? throw new Util.LmfsException($"inode {ino} is not a file of this volume", "give the inode number of a file (stat -c %i FILE)", 2);
        return (st, table);
    }

    // ------------------------------------------------------------------ helpers

    private static bool TryDecode(byte[] name, out string s)
    {
        try
        {
            s = new UTF8Encoding(false, true).GetString(name);
            return true;
        }
        catch (DecoderFallbackException)
        {
            s = "";
            return false;
        }
    }

    private Errno Fail(Exception ex, string op, ulong ino)
    {
        _log.LogError("vfs: {Op} on inode {Ino} failed: {Message}", op, ino, ex.Message);
        return ex is Util.LmfsException { ExitCode: 2 } ? Errno.ENOENT : Errno.EIO;
    }
}
