using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;
using LazyModelFs.Fuse.Abi;

namespace LazyModelFs.Fuse;

/// <summary>
/// What a filesystem may ask of its live connection: notifications (invalidate an inode's attrs and
/// pages, or a directory entry) and passthrough backing files.
///
/// Notifications are written by a dedicated thread, never inline: the kernel handles a notify write
/// synchronously and may need locks that a request being served holds (libfuse
/// doc/README.notifications). Call these from anywhere; await the task for the kernel's answer.
/// </summary>
public sealed class FuseConnection : IDisposable
{
    private readonly int _fd;
    private readonly BlockingCollection<(byte[] Message, TaskCompletionSource<Errno> Done)> _queue = new();
    private readonly Thread _notifier;

    internal FuseConnection(int fd)
    {
        _fd = fd;
        _notifier = new Thread(NotifyLoop) { IsBackground = true, Name = "fuse-notify" };
        _notifier.Start();
    }

    /// <summary>Drops cached attributes; with <paramref name="offset"/> ≥ 0 also cached pages in [offset, offset+length) (length ≤ 0: to EOF).</summary>
    public Task<Errno> InvalidateInodeAsync(ulong nodeId, long offset = -1, long length = 0)
    {
        var body = new fuse_notify_inval_inode_out { ino = nodeId, off = offset, len = length };
        return Enqueue(FuseNotifyCode.INVAL_INODE, MemoryMarshal.AsBytes(new ReadOnlySpan<fuse_notify_inval_inode_out>(in body)), default);
    }

    /// <summary>Drops the dentry <paramref name="name"/> in <paramref name="parent"/> (expireOnly: mark stale, needs HAS_EXPIRE_ONLY).</summary>
    public Task<Errno> InvalidateEntryAsync(ulong parent, ReadOnlySpan<byte> name, bool expireOnly = false)
    {
        var body = new fuse_notify_inval_entry_out { parent = parent, namelen = (uint)name.Length, flags = expireOnly ? FuseConstants.FUSE_EXPIRE_ONLY : 0 };
        return Enqueue(FuseNotifyCode.INVAL_ENTRY, MemoryMarshal.AsBytes(new ReadOnlySpan<fuse_notify_inval_entry_out>(in body)), name);
    }

    public Task<Errno> InvalidateEntryAsync(ulong parent, string name, bool expireOnly = false) =>
        InvalidateEntryAsync(parent, Encoding.UTF8.GetBytes(name), expireOnly);

    /// <summary>
    /// Registers a local file as a passthrough backing file (FUSE_DEV_IOC_BACKING_OPEN; needs
    /// CAP_SYS_ADMIN and PASSTHROUGH negotiated). Reply to OPEN with FOPEN_PASSTHROUGH and the id;
    /// close the id with <see cref="CloseBacking"/> once no further opens will use it.
    /// </summary>
    public unsafe int OpenBacking(int backingFd)
    {
        var map = new fuse_backing_map { fd = backingFd };
        // SAFETY: the kernel reads the 16-byte fuse_backing_map from &map, which lives for the call.
        int id = Native.Ioctl(_fd, FuseConstants.FUSE_DEV_IOC_BACKING_OPEN, &map);
        if (id < 0)
        {
            throw new IOException($"FUSE_DEV_IOC_BACKING_OPEN failed: {Native.Describe(Native.LastErrno)}");
        }

        return id;
    }

    public unsafe void CloseBacking(int backingId)
    {
        uint id = (uint)backingId;
        // SAFETY: the kernel reads a u32 backing id from &id.
        if (Native.Ioctl(_fd, FuseConstants.FUSE_DEV_IOC_BACKING_CLOSE, &id) < 0)
        {
            throw new IOException($"FUSE_DEV_IOC_BACKING_CLOSE failed: {Native.Describe(Native.LastErrno)}");
        }
    }

    public void Dispose()
    {
        _queue.CompleteAdding();
        _notifier.Join(TimeSpan.FromSeconds(5));
        _queue.Dispose();
    }

    private Task<Errno> Enqueue(FuseNotifyCode code, ReadOnlySpan<byte> body, ReadOnlySpan<byte> name)
    {
        // out header (unique 0, error = +code), body, then name + NUL (the kernel copies namelen + 1).
        int nameLen = name.IsEmpty ? 0 : name.Length + 1;
        var msg = new byte[fuse_out_header.Size + body.Length + nameLen];
        var h = new fuse_out_header { len = (uint)msg.Length, error = (int)code, unique = 0 };
        MemoryMarshal.Write(msg, in h);
        body.CopyTo(msg.AsSpan(fuse_out_header.Size));
        name.CopyTo(msg.AsSpan(fuse_out_header.Size + body.Length));
        var tcs = new TaskCompletionSource<Errno>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            _queue.Add((msg, tcs));
        }
        catch (InvalidOperationException)
        {
            tcs.SetResult(Errno.ENODEV);
        }

        return tcs.Task;
    }

    private unsafe void NotifyLoop()
    {
        foreach (var (msg, done) in _queue.GetConsumingEnumerable())
        {
            fixed (byte* p = msg)
            {
                // SAFETY: msg is pinned by `fixed` and its whole length is written in one call.
                nint n = Native.Write(_fd, p, (nuint)msg.Length);
                done.SetResult(n < 0 ? Native.LastErrno : Errno.OK);
            }
        }
    }
}
