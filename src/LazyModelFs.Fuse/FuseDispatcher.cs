using System.Diagnostics;
using System.Runtime.InteropServices;
using LazyModelFs.Fuse.Abi;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Fuse;

/// <summary>Where replies go: the /dev/fuse descriptor a request came from, or a fake kernel in tests.</summary>
public interface IReplySink
{
    /// <summary>Writes one reply (header and up to two body parts) in one atomic write; returns OK or the write's errno.</summary>
    Errno Send(ReadOnlySpan<byte> header, ReadOnlySpan<byte> body, ReadOnlySpan<byte> body2);
}

/// <summary>What we ask of the kernel at INIT.</summary>
public sealed record FuseProtocolOptions
{
    /// <summary>Largest WRITE payload (what the kernel sizes our /dev/fuse reads by; reads never carry more).</summary>
    public int MaxWrite { get; init; } = 1 << 20;

    /// <summary>
    /// Largest READ, in 4 KiB pages (max_pages; also the mount's max_read). The kernel clamps it to
    /// fs.fuse.max_pages_limit (256 = 1 MiB unless root raises it; a fixed 256 before Linux 6.13).
    /// Larger READs mean fewer round trips per byte; see <see cref="FuseKernel.MaxPagesLimit"/>.
    /// </summary>
    public ushort MaxPages { get; init; } = 256;

    /// <summary>Largest READ in bytes (<see cref="MaxPages"/> × 4096).</summary>
    public int MaxRead => MaxPages * 4096;

    /// <summary>Kernel background requests (readahead) in flight; the default 12 starves readahead (fuse-protocol.md 12).</summary>
    public ushort MaxBackground { get; init; } = 128;

    /// <summary>Negotiate passthrough when the kernel offers it (also needs CAP_SYS_ADMIN for BACKING_OPEN).</summary>
    public bool Passthrough { get; init; }

    /// <summary>Flags requested (fuse-protocol.md 5.3): what this layer implements, nothing more.</summary>
    public FuseInitFlags Wanted { get; init; } =
        FuseInitFlags.ASYNC_READ | FuseInitFlags.BIG_WRITES | FuseInitFlags.PARALLEL_DIROPS | FuseInitFlags.DO_READDIRPLUS
        | FuseInitFlags.READDIRPLUS_AUTO | FuseInitFlags.ABORT_ERROR | FuseInitFlags.MAX_PAGES | FuseInitFlags.CACHE_SYMLINKS
        | FuseInitFlags.EXPLICIT_INVAL_DATA;
}

/// <summary>
/// Turns one request (bytes read from /dev/fuse) into a call on <see cref="IFuseFileSystem"/> and
/// its result into exactly one reply.
///
/// Rules it keeps (fuse-protocol.md sections 4, 7, 8):
/// - Requests are parsed from the read buffer by offset; a request whose length, body or names do
///   not add up is answered with EINVAL/EIO, never a crash. Arguments a handler keeps (names, write
///   data) are copied out, because the read buffer is reused when <see cref="Dispatch"/> returns.
/// - A handler that completes synchronously is answered inline on the reader thread; one that goes
///   async is answered by its continuation, on the same sink (the request's own descriptor).
/// - The out header's error is 0 or −errno with 0 &lt; errno &lt; 512, and an error reply is exactly 16
///   bytes; anything else would leave the caller hanging forever, so a bad errno becomes EIO.
/// - Exceptions become EIO here, and only here.
/// - A reply that carries node references (LOOKUP, CREATE, MKDIR, SYMLINK, READDIRPLUS) and is
///   refused with ENOENT (the request was interrupted or aborted) gives the references back.
/// - FORGET, BATCH_FORGET and NOTIFY_REPLY get no reply; INTERRUPT gets ENOSYS once, after which
///   the kernel sends no more (v1 policy, fuse-protocol.md 8.7).
/// </summary>
public sealed class FuseDispatcher
{
    private readonly IFuseFileSystem _fs;
    private readonly FuseProtocolOptions _options;
    private readonly ILogger _log;
    private readonly bool _trace;
    private readonly FuseConnection? _connection;
    private volatile FuseConnectionInfo? _info;
    private readonly int _maxPagesLimit;
    private readonly ushort _maxPages;
    private int _inFlight;
    private long _reads, _readBytes, _readErrors;

    public FuseDispatcher(IFuseFileSystem fs, FuseProtocolOptions? options = null, ILogger? logger = null, FuseConnection? connection = null)
    {
        _fs = fs;
        _options = options ?? new FuseProtocolOptions();
        _log = logger ?? NullLogger.Instance;
        _trace = _log.IsEnabled(LogLevel.Debug);
        _connection = connection;
        // READs as large as asked only where the kernel allows them (read once: INIT asks for no more,
        // so a READ never outgrows these buffers, also when the sysctl changes meanwhile).
        _maxPagesLimit = FuseKernel.MaxPagesLimit();
        _maxPages = (ushort)Math.Min(_options.MaxPages, _maxPagesLimit);
        Pool = new FuseBufferPool(Math.Max(_options.MaxWrite, _maxPages * 4096));
    }

    /// <summary>Set once INIT has been answered.</summary>
    public FuseConnectionInfo? Info => _info;

    public FuseBufferPool Pool { get; }

    /// <summary>Size a read buffer must have: the kernel refuses smaller ones before dequeuing (fuse_dev_do_read).</summary>
    public int ReadBufferSize => _options.MaxWrite + 4096;

    /// <summary>Requests whose handler went async and whose reply is not written yet.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>READ requests answered with data (a short or empty read at the end of a file counts), since the mount. Reads the kernel answers from its page cache, or through passthrough, never arrive here.</summary>
    public long Reads => Interlocked.Read(ref _reads);

    /// <summary>Bytes those READ answers carried to the kernel.</summary>
    public long ReadBytes => Interlocked.Read(ref _readBytes);

    /// <summary>READ requests answered with an error (EIO from a failed fetch, EBADF, ...).</summary>
    public long ReadErrors => Interlocked.Read(ref _readErrors);

    /// <summary>Set when a DESTROY arrived; the session then stops.</summary>
    public bool Destroyed { get; private set; }

    private readonly record struct Req(ulong Unique, FuseOpcode Op, ulong NodeId, long Start);

    private delegate void Replier<T>(FuseDispatcher d, IReplySink sink, in Req req, T result);

    /// <summary>Handles one request. Never throws for anything the request contains.</summary>
    public void Dispatch(ReadOnlySpan<byte> request, IReplySink sink)
    {
        if (request.Length < fuse_in_header.Size)
        {
            _log.LogWarning("fuse: dropped a {Length}-byte request, shorter than its header", request.Length);
            return;
        }

        var h = MemoryMarshal.Read<fuse_in_header>(request);
        var op = (FuseOpcode)h.opcode;
        var req = new Req(h.unique, op, h.nodeid, Stopwatch.GetTimestamp());
        if (_trace)
        {
            _log.LogDebug("fuse rx {Unique} {Op} node={Node} len={Len} uid={Uid} pid={Pid}", h.unique, op, h.nodeid, h.len, h.uid, h.pid);
        }

        if (h.len != request.Length)
        {
            SendError(sink, req, Errno.EIO);
            return;
        }

        var body = request[fuse_in_header.Size..];
        var ctx = new FuseContext(h.unique, h.nodeid, h.uid, h.gid, h.pid);
        try
        {
            if (_info is null && op != FuseOpcode.INIT)
            {
                SendError(sink, req, Errno.EIO);
                return;
            }

            Handle(op, body, ctx, req, sink);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "fuse: {Op} on node {Node} failed", op, h.nodeid);
            SendError(sink, req, Errno.EIO);
        }
    }

    private void Handle(FuseOpcode op, ReadOnlySpan<byte> body, FuseContext ctx, in Req req, IReplySink sink)
    {
        switch (op)
        {
            case FuseOpcode.INIT:
                Init(body, sink, req);
                return;
            case FuseOpcode.DESTROY:
                Destroyed = true;
                SendEmpty(sink, req);
                return;
            case FuseOpcode.FORGET:
                if (TryRead(body, out fuse_forget_in f))
                {
                    _fs.Forget(ctx.NodeId, f.nlookup);
                }

                return;
            case FuseOpcode.BATCH_FORGET:
                BatchForget(body);
                return;
            case FuseOpcode.INTERRUPT:
            case FuseOpcode.SETXATTR:
            case FuseOpcode.REMOVEXATTR:
            case FuseOpcode.FSYNCDIR:
                SendError(sink, req, Errno.ENOSYS);
                return;
            case FuseOpcode.NOTIFY_REPLY:
                return; // only after NOTIFY_RETRIEVE, which we never send; it expects no reply
            case FuseOpcode.LOOKUP:
                {
                    if (CString(body, out _) is not { } name)
                    {
                        break;
                    }

                    Run(_fs.LookupAsync(ctx, ctx.NodeId, name), sink, req, static (d, s, in r, v) => d.SendEntry(s, r, v));
                    return;
                }

            case FuseOpcode.GETATTR:
                {
                    if (!TryRead(body, out fuse_getattr_in g))
                    {
                        break;
                    }

                    ulong? fh = (g.getattr_flags & fuse_getattr_in.FUSE_GETATTR_FH) != 0 ? g.fh : null;
                    Run(_fs.GetAttrAsync(ctx, ctx.NodeId, fh), sink, req, static (d, s, in r, v) => d.SendAttr(s, r, v));
                    return;
                }

            case FuseOpcode.SETATTR:
                {
                    if (!TryRead(body, out fuse_setattr_in sa))
                    {
                        break;
                    }

                    Run(_fs.SetAttrAsync(ctx, ctx.NodeId, sa), sink, req, static (d, s, in r, v) => d.SendAttr(s, r, v));
                    return;
                }

            case FuseOpcode.READLINK:
                Run(_fs.ReadLinkAsync(ctx, ctx.NodeId), sink, req, static (d, s, in r, v) =>
                {
                    if (v.IsOk)
                    {
                        d.Send(s, r, v.Value.Span, default);
                    }
                    else
                    {
                        d.SendError(s, r, v.Error);
                    }
                });
                return;
            case FuseOpcode.OPEN:
            case FuseOpcode.OPENDIR:
                {
                    if (!TryRead(body, out fuse_open_in o))
                    {
                        break;
                    }

                    var vt = op == FuseOpcode.OPEN ? _fs.OpenAsync(ctx, ctx.NodeId, (int)o.flags) : _fs.OpenDirAsync(ctx, ctx.NodeId, (int)o.flags);
                    Run(vt, sink, req, static (d, s, in r, v) => d.SendOpen(s, r, v));
                    return;
                }

            case FuseOpcode.READ:
                {
                    if (!TryRead(body, out fuse_read_in rd) || rd.size > Pool.BufferSize || rd.offset > long.MaxValue)
                    {
                        break;
                    }

                    Read(ctx, rd, sink, req);
                    return;
                }

            case FuseOpcode.READDIR:
            case FuseOpcode.READDIRPLUS:
                {
                    if (!TryRead(body, out fuse_read_in rd) || rd.offset > long.MaxValue)
                    {
                        break;
                    }

                    ReadDir(ctx, rd, op == FuseOpcode.READDIRPLUS, sink, req);
                    return;
                }

            case FuseOpcode.RELEASE:
            case FuseOpcode.RELEASEDIR:
                {
                    if (!TryRead(body, out fuse_release_in rl))
                    {
                        break;
                    }

                    var vt = op == FuseOpcode.RELEASE ? _fs.ReleaseAsync(ctx, ctx.NodeId, rl.fh) : _fs.ReleaseDirAsync(ctx, ctx.NodeId, rl.fh);
                    Run(vt, sink, req, static (d, s, in r, v) => d.SendStatus(s, r, v));
                    return;
                }

            case FuseOpcode.STATFS:
                Run(_fs.StatFsAsync(ctx, ctx.NodeId), sink, req, static (d, s, in r, v) => d.SendStruct(s, r, v, fuse_kstatfs.Size));
                return;
            case FuseOpcode.GETXATTR:
                {
                    if (!TryRead(body, out fuse_getxattr_in gx) || CString(body[fuse_getxattr_in.Size..], out _) is not { } name)
                    {
                        break;
                    }

                    uint size = gx.size;
                    Run(_fs.GetXattrAsync(ctx, ctx.NodeId, name), sink, req, (d, s, in r, v) => d.SendXattr(s, r, v, size));
                    return;
                }

            case FuseOpcode.LISTXATTR:
                {
                    if (!TryRead(body, out fuse_getxattr_in gx))
                    {
                        break;
                    }

                    uint size = gx.size;
                    Run(_fs.ListXattrAsync(ctx, ctx.NodeId), sink, req, (d, s, in r, v) => d.SendXattr(s, r, v, size));
                    return;
                }

            case FuseOpcode.ACCESS:
                {
                    if (!TryRead(body, out fuse_access_in a))
                    {
                        break;
                    }

                    Run(_fs.AccessAsync(ctx, ctx.NodeId, a.mask), sink, req, static (d, s, in r, v) => d.SendStatus(s, r, v));
                    return;
                }

            case FuseOpcode.FLUSH:
                {
                    if (!TryRead(body, out fuse_flush_in fl))
                    {
                        break;
                    }

                    Run(_fs.FlushAsync(ctx, ctx.NodeId, fl.fh), sink, req, static (d, s, in r, v) => d.SendStatus(s, r, v));
                    return;
                }

            case FuseOpcode.FSYNC:
                {
                    if (!TryRead(body, out fuse_fsync_in fs))
                    {
                        break;
                    }

                    Run(_fs.FsyncAsync(ctx, ctx.NodeId, fs.fh, (fs.fsync_flags & 1) != 0), sink, req, static (d, s, in r, v) => d.SendStatus(s, r, v));
                    return;
                }

            case FuseOpcode.MKDIR:
                {
                    if (!TryRead(body, out fuse_mkdir_in m) || CString(body[fuse_mkdir_in.Size..], out _) is not { } name)
                    {
                        break;
                    }

                    Run(_fs.MkdirAsync(ctx, ctx.NodeId, name, m.mode, m.umask), sink, req, static (d, s, in r, v) => d.SendEntry(s, r, v));
                    return;
                }

            case FuseOpcode.SYMLINK:
                {
                    if (CString(body, out var rest) is not { } name || CString(rest, out _) is not { } target)
                    {
                        break;
                    }

                    Run(_fs.SymlinkAsync(ctx, ctx.NodeId, name, target), sink, req, static (d, s, in r, v) => d.SendEntry(s, r, v));
                    return;
                }

            case FuseOpcode.CREATE:
                {
                    if (!TryRead(body, out fuse_create_in c) || CString(body[fuse_create_in.Size..], out _) is not { } name)
                    {
                        break;
                    }

                    Run(_fs.CreateAsync(ctx, ctx.NodeId, name, c.flags, c.mode, c.umask), sink, req, static (d, s, in r, v) => d.SendCreate(s, r, v));
                    return;
                }

            case FuseOpcode.WRITE:
                {
                    if (!TryRead(body, out fuse_write_in w) || body.Length - fuse_write_in.Size != w.size || w.offset > long.MaxValue)
                    {
                        break;
                    }

                    byte[] data = body.Slice(fuse_write_in.Size, (int)w.size).ToArray();
                    Run(_fs.WriteAsync(ctx, ctx.NodeId, w.fh, (long)w.offset, data), sink, req, static (d, s, in r, v) =>
                    {
                        if (v.IsOk)
                        {
                            d.SendStruct(s, r, new fuse_write_out { size = v.Value }, fuse_write_out.Size);
                        }
                        else
                        {
                            d.SendError(s, r, v.Error);
                        }
                    });
                    return;
                }

            case FuseOpcode.UNLINK:
            case FuseOpcode.RMDIR:
                {
                    if (CString(body, out _) is not { } name)
                    {
                        break;
                    }

                    var vt = op == FuseOpcode.UNLINK ? _fs.UnlinkAsync(ctx, ctx.NodeId, name) : _fs.RmdirAsync(ctx, ctx.NodeId, name);
                    Run(vt, sink, req, static (d, s, in r, v) => d.SendStatus(s, r, v));
                    return;
                }

            case FuseOpcode.RENAME:
            case FuseOpcode.RENAME2:
                {
                    ulong newDir;
                    uint flags = 0;
                    ReadOnlySpan<byte> names;
                    if (op == FuseOpcode.RENAME && TryRead(body, out fuse_rename_in rn))
                    {
                        newDir = rn.newdir;
                        names = body[fuse_rename_in.Size..];
                    }
                    else if (op == FuseOpcode.RENAME2 && TryRead(body, out fuse_rename2_in rn2))
                    {
                        newDir = rn2.newdir;
                        flags = rn2.flags;
                        names = body[fuse_rename2_in.Size..];
                    }
                    else
                    {
                        break;
                    }

                    if (CString(names, out var rest) is not { } oldName || CString(rest, out _) is not { } newName)
                    {
                        break;
                    }

                    Run(_fs.RenameAsync(ctx, ctx.NodeId, oldName, newDir, newName, flags), sink, req, static (d, s, in r, v) => d.SendStatus(s, r, v));
                    return;
                }

            default:
                // GETLK/SETLK, BMAP, IOCTL, POLL, LSEEK, COPY_FILE_RANGE, STATX, SYNCFS, TMPFILE, FALLOCATE,
                // MKNOD, LINK and anything newer: ENOSYS, which the kernel remembers for most of them.
                SendError(sink, req, Errno.ENOSYS);
                return;
        }

        // A body too short for its opcode, or a name without its NUL.
        _log.LogWarning("fuse: malformed {Op} request ({Length} body bytes) answered EINVAL", op, body.Length);
        SendError(sink, req, Errno.EINVAL);
    }

    // ------------------------------------------------------------------ INIT

    private void Init(ReadOnlySpan<byte> body, IReplySink sink, in Req req)
    {
        if (body.Length < fuse_init_in.CompatSize)
        {
            SendError(sink, req, Errno.EINVAL);
            return;
        }

        // Kernels before 7.36 send 16 bytes; zero-extend.
        Span<byte> full = stackalloc byte[fuse_init_in.Size];
        full.Clear();
        body[..Math.Min(body.Length, fuse_init_in.Size)].CopyTo(full);
        var init = MemoryMarshal.Read<fuse_init_in>(full);

        if (init.major > FuseConstants.KernelVersion)
        {
            // A newer major: answer with ours only and wait for the kernel to retry (fuser reply_version_only).
            SendStruct(sink, req, new fuse_init_out { major = FuseConstants.KernelVersion, minor = FuseConstants.KernelMinorVersion }, fuse_init_out.Size);
            return;
        }

        if (init.major < FuseConstants.KernelVersion || init.minor < FuseConstants.MinKernelMinorVersion)
        {
            _log.LogError("fuse: kernel protocol {Major}.{Minor} is older than the 7.{Min} this daemon needs", init.major, init.minor, FuseConstants.MinKernelMinorVersion);
            SendError(sink, req, Errno.EPROTO);
            return;
        }

        ulong offered = init.flags;
        if ((offered & (ulong)FuseInitFlags.INIT_EXT) != 0)
        {
            offered |= (ulong)init.flags2 << 32;
        }

        ulong wanted = (ulong)_options.Wanted;
        if (_options.Passthrough)
        {
            wanted |= (ulong)FuseInitFlags.PASSTHROUGH;
        }

        ulong granted = wanted & offered;
        uint minor = Math.Min(init.minor, FuseConstants.KernelMinorVersion);
        var reply = new fuse_init_out
        {
            major = FuseConstants.KernelVersion,
            minor = minor,
            max_readahead = init.max_readahead,
            // flags2 is read only when INIT_EXT is set in flags; leaving it out silently drops passthrough.
            flags = (uint)(granted & 0xFFFF_FFFF) | (uint)FuseInitFlags.INIT_EXT,
            flags2 = (uint)(granted >> 32),
            max_background = _options.MaxBackground,
            congestion_threshold = (ushort)(_options.MaxBackground * 3 / 4),
            max_write = (uint)_options.MaxWrite,
            time_gran = 1,
            max_pages = _maxPages,
            max_stack_depth = (granted & (ulong)FuseInitFlags.PASSTHROUGH) != 0 ? 1u : 0u,
        };

        var info = new FuseConnectionInfo(init.major, minor, (FuseInitFlags)offered, (FuseInitFlags)granted, reply.max_write, reply.max_readahead, _maxPages, reply.max_background);
        _fs.Init(info, _connection);
        _info = info;
        SendStruct(sink, req, reply, minor <= 22 ? fuse_init_out.Compat22Size : fuse_init_out.Size);
        _log.LogInformation(
            "fuse: INIT kernel {Major}.{KMinor}, using 7.{Minor}; flags {Flags}; max_write {MaxWrite}, max_readahead {Readahead}, largest READ {MaxRead} (max_pages {MaxPages} of {Wanted} wanted, fs.fuse.max_pages_limit {Limit})",
            init.major,
            init.minor,
            minor,
            (FuseInitFlags)granted,
            reply.max_write,
            init.max_readahead,
            _maxPages * 4096,
            _maxPages,
            _options.MaxPages,
            _maxPagesLimit);
    }

    private void BatchForget(ReadOnlySpan<byte> body)
    {
        if (!TryRead(body, out fuse_batch_forget_in b))
        {
            return;
        }

        // Parse all `count` entries, capped by the bytes actually present (go-fuse does the same).
        var items = body[fuse_batch_forget_in.Size..];
        int n = (int)Math.Min(b.count, (uint)(items.Length / fuse_forget_one.Size));
        for (int i = 0; i < n; i++)
        {
            var one = MemoryMarshal.Read<fuse_forget_one>(items.Slice(i * fuse_forget_one.Size));
            _fs.Forget(one.nodeid, one.nlookup);
        }
    }

    // ------------------------------------------------------------------ READ and READDIR

    private void Read(FuseContext ctx, in fuse_read_in rd, IReplySink sink, in Req req)
    {
        byte[] buf = Pool.Rent();
        int size = (int)rd.size;
        ValueTask<FuseReadResult> vt;
        try
        {
            vt = _fs.ReadAsync(ctx, ctx.NodeId, rd.fh, (long)rd.offset, buf.AsMemory(0, size));
        }
        catch
        {
            Pool.Return(buf);
            throw;
        }

        if (vt.IsCompletedSuccessfully)
        {
            FinishRead(sink, req, vt.Result, buf, size);
        }
        else
        {
            Interlocked.Increment(ref _inFlight);
            _ = ReadSlow(vt, sink, req, buf, size);
        }
    }

    private async Task ReadSlow(ValueTask<FuseReadResult> vt, IReplySink sink, Req req, byte[] buf, int size)
    {
        try
        {
            FuseReadResult r;
            try
            {
                r = await vt.ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                Pool.Return(buf);
                _log.LogError(ex, "fuse: READ on node {Node} failed", req.NodeId);
                Interlocked.Increment(ref _readErrors);
                SendError(sink, req, Errno.EIO);
                return;
            }

            FinishRead(sink, req, r, buf, size);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private void FinishRead(IReplySink sink, in Req req, in FuseReadResult r, byte[] buf, int size)
    {
        try
        {
            // The counters are lock-free (Interlocked): this runs on the memory-hit path, synchronously.
            if (r.Error != Errno.OK)
            {
                Interlocked.Increment(ref _readErrors);
                SendError(sink, req, r.Error);
            }
            else if (r.Length < 0 || r.Length > size)
            {
                Interlocked.Increment(ref _readErrors);
                _log.LogError("fuse: READ handler returned {Length} bytes for a {Size}-byte request", r.Length, size);
                SendError(sink, req, Errno.EIO);
            }
            else
            {
                Interlocked.Increment(ref _reads);
                Interlocked.Add(ref _readBytes, r.Length);
                Send(sink, req, r.IsExternal ? r.External.Span : buf.AsSpan(0, r.Length), default);
            }
        }
        finally
        {
            r.Lease?.Dispose();
            Pool.Return(buf);
        }
    }

    private void ReadDir(FuseContext ctx, in fuse_read_in rd, bool plus, IReplySink sink, in Req req)
    {
        byte[] buf = Pool.Rent();
        var dir = new FuseDirBuffer(buf.AsMemory(0, (int)Math.Min(rd.size, (uint)buf.Length)), plus);
        ValueTask<Errno> vt;
        try
        {
            vt = _fs.ReadDirAsync(ctx, ctx.NodeId, rd.fh, (long)rd.offset, dir);
        }
        catch
        {
            Pool.Return(buf);
            throw;
        }

        if (vt.IsCompletedSuccessfully)
        {
            FinishReadDir(sink, req, vt.Result, dir, buf);
        }
        else
        {
            Interlocked.Increment(ref _inFlight);
            _ = ReadDirSlow(vt, sink, req, dir, buf);
        }
    }

    private async Task ReadDirSlow(ValueTask<Errno> vt, IReplySink sink, Req req, FuseDirBuffer dir, byte[] buf)
    {
        Errno e;
        try
        {
            e = await vt.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "fuse: READDIR on node {Node} failed", req.NodeId);
            e = Errno.EIO;
        }

        try
        {
            FinishReadDir(sink, req, e, dir, buf);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private void FinishReadDir(IReplySink sink, in Req req, Errno e, FuseDirBuffer dir, byte[] buf)
    {
        try
        {
            if (e != Errno.OK)
            {
                ForgetAll(dir.Referenced);
                SendError(sink, req, e);
            }
            else if (Send(sink, req, dir.Written.Span, default) == Errno.ENOENT)
            {
                ForgetAll(dir.Referenced);
            }
        }
        finally
        {
            Pool.Return(buf);
        }
    }

    private void ForgetAll(IReadOnlyList<ulong> nodes)
    {
        foreach (var n in nodes)
        {
            _fs.Forget(n, 1);
        }
    }

    // ------------------------------------------------------------------ replies

    private void Run<T>(ValueTask<T> vt, IReplySink sink, in Req req, Replier<T> reply)
    {
        if (vt.IsCompletedSuccessfully)
        {
            reply(this, sink, req, vt.Result);
        }
        else
        {
            Interlocked.Increment(ref _inFlight);
            _ = RunSlow(vt, sink, req, reply);
        }
    }

    private async Task RunSlow<T>(ValueTask<T> vt, IReplySink sink, Req req, Replier<T> reply)
    {
        try
        {
            await RunSlowCore(vt, sink, req, reply).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private async Task RunSlowCore<T>(ValueTask<T> vt, IReplySink sink, Req req, Replier<T> reply)
    {
        T result;
        try
        {
            result = await vt.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "fuse: {Op} on node {Node} failed", req.Op, req.NodeId);
            SendError(sink, req, Errno.EIO);
            return;
        }

        try
        {
            reply(this, sink, req, result);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "fuse: replying to {Op} failed", req.Op);
            SendError(sink, req, Errno.EIO);
        }
    }

    private void SendEntry(IReplySink sink, in Req req, in FuseResult<FuseEntry> r)
    {
        if (!r.IsOk)
        {
            SendError(sink, req, r.Error);
            return;
        }

        var e = r.Value.ToAbi();
        if (SendStruct(sink, req, e, fuse_entry_out.Size) == Errno.ENOENT && e.nodeid != 0)
        {
            _fs.Forget(e.nodeid, 1); // the kernel took no reference (fuse-protocol.md 8.1)
        }
    }

    private void SendCreate(IReplySink sink, in Req req, in FuseResult<FuseCreate> r)
    {
        if (!r.IsOk)
        {
            SendError(sink, req, r.Error);
            return;
        }

        var e = r.Value.Entry.ToAbi();
        var o = new fuse_open_out { fh = r.Value.Open.Fh, open_flags = (uint)r.Value.Open.Flags, backing_id = r.Value.Open.BackingId };
        if (Send(sink, req, AsBytes(e, fuse_entry_out.Size), AsBytes(o, fuse_open_out.Size)) == Errno.ENOENT && e.nodeid != 0)
        {
            _fs.Forget(e.nodeid, 1);
        }
    }

    private void SendAttr(IReplySink sink, in Req req, in FuseResult<FuseAttrReply> r)
    {
        if (!r.IsOk)
        {
            SendError(sink, req, r.Error);
            return;
        }

        var (s, n) = FuseTime.Split(r.Value.Timeout);
        SendStruct(sink, req, new fuse_attr_out { attr_valid = s, attr_valid_nsec = n, attr = r.Value.Attr }, fuse_attr_out.Size);
    }

    private void SendOpen(IReplySink sink, in Req req, in FuseResult<FuseOpen> r)
    {
        if (!r.IsOk)
        {
            SendError(sink, req, r.Error);
            return;
        }

        SendStruct(sink, req, new fuse_open_out { fh = r.Value.Fh, open_flags = (uint)r.Value.Flags, backing_id = r.Value.BackingId }, fuse_open_out.Size);
    }

    private void SendXattr(IReplySink sink, in Req req, in FuseResult<ReadOnlyMemory<byte>> r, uint size)
    {
        if (!r.IsOk)
        {
            SendError(sink, req, r.Error);
        }
        else if (size == 0)
        {
            SendStruct(sink, req, new fuse_getxattr_out { size = (uint)r.Value.Length }, fuse_getxattr_out.Size);
        }
        else if (r.Value.Length > size)
        {
            SendError(sink, req, Errno.ERANGE);
        }
        else
        {
            Send(sink, req, r.Value.Span, default);
        }
    }

    private void SendStruct<T>(IReplySink sink, in Req req, FuseResult<T> r, int size)
        where T : unmanaged
    {
        if (!r.IsOk)
        {
            SendError(sink, req, r.Error);
            return;
        }

        SendStruct(sink, req, r.Value, size);
    }

    private Errno SendStruct<T>(IReplySink sink, in Req req, in T value, int size)
        where T : unmanaged => Send(sink, req, AsBytes(value, size), default);

    private void SendStatus(IReplySink sink, in Req req, Errno e)
    {
        if (e == Errno.OK)
        {
            SendEmpty(sink, req);
        }
        else
        {
            SendError(sink, req, e);
        }
    }

    private void SendEmpty(IReplySink sink, in Req req) => Send(sink, req, default, default);

    private Errno Send(IReplySink sink, in Req req, ReadOnlySpan<byte> body, ReadOnlySpan<byte> body2) => Write(sink, req, 0, body, body2);

    private void SendError(IReplySink sink, in Req req, Errno e)
    {
        // The kernel accepts 0 < errno < 512 only; anything else would leave the caller hanging (fuse_dev_do_write).
        if (e <= Errno.OK || (int)e >= 512)
        {
            e = Errno.EIO;
        }

        Write(sink, req, -(int)e, default, default);
    }

    private Errno Write(IReplySink sink, in Req req, int error, ReadOnlySpan<byte> body, ReadOnlySpan<byte> body2)
    {
        var h = new fuse_out_header { len = (uint)(fuse_out_header.Size + body.Length + body2.Length), error = error, unique = req.Unique };
        Errno result = sink.Send(AsBytes(h, fuse_out_header.Size), body, body2);
        if (_trace)
        {
            double us = Stopwatch.GetElapsedTime(req.Start).TotalMicroseconds;
            _log.LogDebug("fuse tx {Unique} {Op} node={Node} -> {Result} {Bytes}B {Micros:0}us{Write}", req.Unique, req.Op, req.NodeId, error == 0 ? "OK" : ((Errno)(-error)).ToString(), body.Length + body2.Length, us, result == Errno.OK ? "" : " write=" + result);
        }

        if (result is not (Errno.OK or Errno.ENOENT or Errno.ENODEV or Errno.ECONNABORTED))
        {
            _log.LogError("fuse: writing the reply to {Op} {Unique} failed: {Errno}", req.Op, req.Unique, result);
        }

        return result;
    }

    private static ReadOnlySpan<byte> AsBytes<T>(in T value, int size)
        where T : unmanaged
    {
        var bytes = MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));
        return bytes[..size];
    }

    private static bool TryRead<T>(ReadOnlySpan<byte> body, out T value)
        where T : unmanaged
    {
        if (body.Length < System.Runtime.CompilerServices.Unsafe.SizeOf<T>())
        {
            value = default;
            return false;
        }

        value = MemoryMarshal.Read<T>(body);
        return true;
    }

    /// <summary>A NUL-terminated name copied out of the request, or null when the NUL is missing.</summary>
    private static byte[]? CString(ReadOnlySpan<byte> s, out ReadOnlySpan<byte> rest)
    {
        int nul = s.IndexOf((byte)0);
        if (nul < 0)
        {
            rest = default;
            return null;
        }

        rest = s[(nul + 1)..];
        return s[..nul].ToArray();
    }
}
