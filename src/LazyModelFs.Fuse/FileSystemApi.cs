using System.Runtime.InteropServices;
using LazyModelFs.Fuse.Abi;

namespace LazyModelFs.Fuse;

/// <summary>Who asked: the caller's ids from fuse_in_header (0 for kernel-internal requests).</summary>
public readonly record struct FuseContext(ulong Unique, ulong NodeId, uint Uid, uint Gid, uint Pid);

/// <summary>A value or an errno: what every handler returns. Implicit from either.</summary>
public readonly struct FuseResult<T>
    where T : struct
{
    private FuseResult(Errno error, T value)
    {
        Error = error;
        Value = value;
    }

    public Errno Error { get; }

    public T Value { get; }

    public bool IsOk => Error == Errno.OK;

    public static implicit operator FuseResult<T>(T value) => new(Errno.OK, value);

    public static implicit operator FuseResult<T>(Errno error) => new(error == Errno.OK ? Errno.EIO : error, default);
}

/// <summary>Timeouts as fuse_entry_out/fuse_attr_out carry them: whole seconds plus nanoseconds.</summary>
public static class FuseTime
{
    /// <summary>"Indefinite" for immutable trees: 100 years, as mountpoint-s3 uses.</summary>
    public static readonly TimeSpan Forever = TimeSpan.FromDays(36500);

    public static (ulong Seconds, uint Nanos) Split(TimeSpan t)
    {
        if (t <= TimeSpan.Zero)
        {
            return (0, 0);
        }

        long ticks = t.Ticks;
        return ((ulong)(ticks / TimeSpan.TicksPerSecond), (uint)(ticks % TimeSpan.TicksPerSecond * 100));
    }
}

/// <summary>A LOOKUP-style answer. NodeId 0 with an EntryTimeout is a cacheable negative entry.</summary>
public record struct FuseEntry(ulong NodeId, ulong Generation, fuse_attr Attr, TimeSpan EntryTimeout, TimeSpan AttrTimeout)
{
    public static FuseEntry Negative(TimeSpan timeout) => new(0, 0, default, timeout, TimeSpan.Zero);

    public readonly fuse_entry_out ToAbi()
    {
        var (es, en) = FuseTime.Split(EntryTimeout);
        var (as_, an) = FuseTime.Split(AttrTimeout);
        return new fuse_entry_out
        {
            nodeid = NodeId,
            generation = Generation,
            entry_valid = es,
            entry_valid_nsec = en,
            attr_valid = as_,
            attr_valid_nsec = an,
            attr = Attr,
        };
    }
}

public record struct FuseAttrReply(fuse_attr Attr, TimeSpan Timeout);

/// <summary>An OPEN/OPENDIR answer: our handle, FOPEN_* flags, and a backing id for passthrough.</summary>
public record struct FuseOpen(ulong Fh, FopenFlags Flags, int BackingId = 0);

public record struct FuseCreate(FuseEntry Entry, FuseOpen Open);

/// <summary>
/// A READ answer: <see cref="Length"/> bytes written into the buffer the dispatcher lent, or
/// <see cref="External"/> memory (which must stay valid and unmoved until <see cref="Lease"/> is
/// disposed, right after the reply is written). Short only at end of file: a short reply mid-file
/// makes the kernel shrink i_size (fuse_short_read) and mmap readers get SIGBUS.
/// </summary>
public readonly struct FuseReadResult
{
    private FuseReadResult(Errno error, int length, ReadOnlyMemory<byte> external, IDisposable? lease)
    {
        Error = error;
        Length = length;
        External = external;
        Lease = lease;
    }

    public Errno Error { get; }

    public int Length { get; }

    public ReadOnlyMemory<byte> External { get; }

    public IDisposable? Lease { get; }

    public bool IsExternal => Lease is not null || !External.IsEmpty;

    public static FuseReadResult InBuffer(int length) => new(Errno.OK, length, default, null);

    public static FuseReadResult FromMemory(ReadOnlyMemory<byte> data, IDisposable? lease = null) => new(Errno.OK, data.Length, data, lease);

    public static implicit operator FuseReadResult(Errno error) => new(error == Errno.OK ? Errno.EIO : error, 0, default, null);
}

/// <summary>What INIT settled, for the filesystem to know what it may use.</summary>
public sealed record FuseConnectionInfo(uint Major, uint Minor, FuseInitFlags KernelFlags, FuseInitFlags Flags, uint MaxWrite, uint MaxReadahead, ushort MaxPages, ushort MaxBackground)
{
    public bool Passthrough => Flags.HasFlag(FuseInitFlags.PASSTHROUGH);

    public bool ReaddirPlus => Flags.HasFlag(FuseInitFlags.DO_READDIRPLUS);
}

/// <summary>
/// The filesystem the protocol layer serves: async and inode based. Every method returns its
/// reply as a value, and the dispatcher turns that value into exactly one reply on the /dev/fuse
/// descriptor the request came from — a handler cannot answer twice or forget to answer. Names
/// arrive as bytes copied out of the request (the read buffer is reused as soon as the handler
/// returns), never decoded. Exceptions become EIO at the dispatcher.
/// Write-path methods default to EROFS; optional features (xattrs, access, fsync) to ENOSYS,
/// which the kernel remembers and stops asking.
/// </summary>
public interface IFuseFileSystem
{
    /// <summary>Called once INIT is answered, before any other request.</summary>
    void Init(FuseConnectionInfo info, FuseConnection? connection)
    {
    }

    ValueTask<FuseResult<FuseEntry>> LookupAsync(FuseContext ctx, ulong parent, byte[] name);

    /// <summary>FORGET and each BATCH_FORGET item: drop <paramref name="nlookup"/> kernel references.</summary>
    void Forget(ulong nodeId, ulong nlookup);

    ValueTask<FuseResult<FuseAttrReply>> GetAttrAsync(FuseContext ctx, ulong nodeId, ulong? fh);

    ValueTask<FuseResult<FuseOpen>> OpenAsync(FuseContext ctx, ulong nodeId, int flags);

    /// <summary>Fill <paramref name="buffer"/> (pinned, lent until the reply is written) or return external memory.</summary>
    ValueTask<FuseReadResult> ReadAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, Memory<byte> buffer);

    ValueTask<Errno> ReleaseAsync(FuseContext ctx, ulong nodeId, ulong fh) => ValueTask.FromResult(Errno.OK);

    ValueTask<FuseResult<FuseOpen>> OpenDirAsync(FuseContext ctx, ulong nodeId, int flags) =>
        ValueTask.FromResult<FuseResult<FuseOpen>>(new FuseOpen(0, FopenFlags.None));

    /// <summary>Add entries after cookie <paramref name="offset"/> until the buffer is full (READDIR and READDIRPLUS).</summary>
    ValueTask<Errno> ReadDirAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, FuseDirBuffer buffer);

    ValueTask<Errno> ReleaseDirAsync(FuseContext ctx, ulong nodeId, ulong fh) => ValueTask.FromResult(Errno.OK);

    ValueTask<FuseResult<fuse_kstatfs>> StatFsAsync(FuseContext ctx, ulong nodeId);

    ValueTask<FuseResult<ReadOnlyMemory<byte>>> ReadLinkAsync(FuseContext ctx, ulong nodeId) => Fail<ReadOnlyMemory<byte>>(Errno.EINVAL);

    /// <summary>The attribute's value; the dispatcher applies the size-probe and ERANGE rules.</summary>
    ValueTask<FuseResult<ReadOnlyMemory<byte>>> GetXattrAsync(FuseContext ctx, ulong nodeId, byte[] name) => Fail<ReadOnlyMemory<byte>>(Errno.ENOSYS);

    /// <summary>NUL-separated names; the dispatcher applies the size-probe and ERANGE rules.</summary>
    ValueTask<FuseResult<ReadOnlyMemory<byte>>> ListXattrAsync(FuseContext ctx, ulong nodeId) => Fail<ReadOnlyMemory<byte>>(Errno.ENOSYS);

    ValueTask<Errno> AccessAsync(FuseContext ctx, ulong nodeId, uint mask) => ValueTask.FromResult(Errno.ENOSYS);

    ValueTask<Errno> FlushAsync(FuseContext ctx, ulong nodeId, ulong fh) => ValueTask.FromResult(Errno.ENOSYS);

    ValueTask<Errno> FsyncAsync(FuseContext ctx, ulong nodeId, ulong fh, bool dataOnly) => ValueTask.FromResult(Errno.ENOSYS);

    // ---- write path: a read-only filesystem answers EROFS (MS_RDONLY stops most before they arrive).

    ValueTask<FuseResult<FuseAttrReply>> SetAttrAsync(FuseContext ctx, ulong nodeId, fuse_setattr_in change) => Fail<FuseAttrReply>(Errno.EROFS);

    ValueTask<FuseResult<FuseEntry>> MkdirAsync(FuseContext ctx, ulong parent, byte[] name, uint mode, uint umask) => Fail<FuseEntry>(Errno.EROFS);

    ValueTask<FuseResult<FuseEntry>> SymlinkAsync(FuseContext ctx, ulong parent, byte[] name, byte[] target) => Fail<FuseEntry>(Errno.EROFS);

    ValueTask<FuseResult<FuseCreate>> CreateAsync(FuseContext ctx, ulong parent, byte[] name, uint flags, uint mode, uint umask) => Fail<FuseCreate>(Errno.EROFS);

    ValueTask<FuseResult<uint>> WriteAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, ReadOnlyMemory<byte> data) => Fail<uint>(Errno.EROFS);

    ValueTask<Errno> UnlinkAsync(FuseContext ctx, ulong parent, byte[] name) => ValueTask.FromResult(Errno.EROFS);

    ValueTask<Errno> RmdirAsync(FuseContext ctx, ulong parent, byte[] name) => ValueTask.FromResult(Errno.EROFS);

    ValueTask<Errno> RenameAsync(FuseContext ctx, ulong parent, byte[] name, ulong newParent, byte[] newName, uint flags) => ValueTask.FromResult(Errno.EROFS);

    private static ValueTask<FuseResult<T>> Fail<T>(Errno e)
        where T : struct => ValueTask.FromResult<FuseResult<T>>(e);
}

/// <summary>
/// The reply buffer of one READDIR/READDIRPLUS: packed, 8-byte-aligned records, never split, at
/// most the size the kernel asked for. A record's offset is the cookie of the *next* entry
/// (fuse-protocol.md 8.5). PLUS entries with a nonzero node id take a kernel reference each; the
/// buffer remembers them so the dispatcher can give them back if the reply cannot be delivered.
/// </summary>
public sealed class FuseDirBuffer
{
    private readonly Memory<byte> _buffer;
    private List<ulong>? _referenced;

    /// <summary>
    /// A reply buffer of <paramref name="buffer"/>'s size. The dispatcher makes one per request; a
    /// filesystem's own tests make theirs to call <see cref="IFuseFileSystem.ReadDirAsync"/> without a kernel.
    /// </summary>
    public FuseDirBuffer(Memory<byte> buffer, bool plus)
    {
        _buffer = buffer;
        Plus = plus;
    }

    /// <summary>True for READDIRPLUS: add entries with <see cref="TryAddPlus"/>.</summary>
    public bool Plus { get; }

    public int Length { get; private set; }

    public int Count { get; private set; }

    internal IReadOnlyList<ulong> Referenced => (IReadOnlyList<ulong>?)_referenced ?? [];

    /// <summary>The records added so far, as the reply carries them.</summary>
    public ReadOnlyMemory<byte> Written => _buffer[..Length];

    /// <summary>Adds a READDIR record; false when it does not fit (stop there).</summary>
    /// <param name="type">File type: <c>(mode &amp; S_IFMT) &gt;&gt; 12</c> (DT_DIR 4, DT_REG 8, DT_LNK 10).</param>
    public bool TryAdd(ReadOnlySpan<byte> name, ulong ino, uint type, long nextOffset)
    {
        if (Plus)
        {
            throw new InvalidOperationException("READDIRPLUS needs TryAddPlus");
        }

        int size = Align8(fuse_dirent.Size + name.Length);
        if (!ValidName(name) || Length + size > _buffer.Length)
        {
            return false;
        }

        var span = _buffer.Span.Slice(Length, size);
        span.Clear();
        var d = new fuse_dirent { ino = ino, off = (ulong)nextOffset, namelen = (uint)name.Length, type = type };
        MemoryMarshal.Write(span, in d);
        name.CopyTo(span[fuse_dirent.Size..]);
        Length += size;
        Count++;
        return true;
    }

    /// <summary>
    /// Adds a READDIRPLUS record. A nonzero <c>entry.NodeId</c> counts as a lookup (the caller must
    /// have taken the reference); use NodeId 0 for "." and "..", whose entry the kernel ignores.
    /// </summary>
    public bool TryAddPlus(ReadOnlySpan<byte> name, in FuseEntry entry, long nextOffset)
    {
        if (!Plus)
        {
            throw new InvalidOperationException("READDIR needs TryAdd");
        }

        int size = Align8(fuse_direntplus.Size + name.Length);
        if (!ValidName(name) || Length + size > _buffer.Length)
        {
            return false;
        }

        var span = _buffer.Span.Slice(Length, size);
        span.Clear();
        var d = new fuse_direntplus
        {
            entry_out = entry.ToAbi(),
            dirent = new fuse_dirent { ino = entry.Attr.ino, off = (ulong)nextOffset, namelen = (uint)name.Length, type = (entry.Attr.mode & 0xF000) >> 12 },
        };
        MemoryMarshal.Write(span, in d);
        name.CopyTo(span[fuse_direntplus.Size..]);
        Length += size;
        Count++;
        if (entry.NodeId != 0)
        {
            (_referenced ??= []).Add(entry.NodeId);
        }

        return true;
    }

    /// <summary>
    /// Adds "." (<paramref name="index"/> 0, <paramref name="ino"/> = the directory) or ".."
    /// (index 1, ino = its parent) with cookie index + 1. In READDIRPLUS their entry carries no node
    /// id (the kernel ignores it, and no reference is taken).
    /// </summary>
    public bool TryAddDot(long index, ulong ino)
    {
        var name = index == 0 ? "."u8 : ".."u8;
        return Plus
            ? TryAddPlus(name, new FuseEntry(0, 0, new fuse_attr { ino = ino, mode = 0x4000 }, TimeSpan.Zero, TimeSpan.Zero), index + 1)
            : TryAdd(name, ino, 4, index + 1);
    }

    /// <summary>Whether a record of this name would still fit.</summary>
    public bool Fits(int nameLength) => Length + Align8((Plus ? fuse_direntplus.Size : fuse_dirent.Size) + nameLength) <= _buffer.Length;

    private static int Align8(int n) => (n + 7) & ~7;

    // The kernel fails the whole reply for an empty name, one with '/', or one over FUSE_NAME_MAX (parse_dirfile).
    private static bool ValidName(ReadOnlySpan<byte> name) =>
        name.Length is > 0 and <= FuseConstants.NameMax && name.IndexOf((byte)'/') < 0 && name.IndexOf((byte)0) < 0;
}
