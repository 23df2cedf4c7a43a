using System.Runtime.InteropServices;

namespace LazyModelFs.Fuse;

/// <summary>Linux errno values used by the protocol layer (x86_64 and arm64 share them).</summary>
public enum Errno
{
    OK = 0,
    EPERM = 1,
    ENOENT = 2,
    EINTR = 4,
    EIO = 5,
    EBADF = 9,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EBUSY = 16,
    EEXIST = 17,
    ENODEV = 19,
    ENOTDIR = 20,
    EISDIR = 21,
    EINVAL = 22,
    ENFILE = 23,
    EMFILE = 24,
    ENOSPC = 28,
    EROFS = 30,
    ERANGE = 34,
    ENOSYS = 38,
    ENOTEMPTY = 39,
    ENODATA = 61,
    EPROTO = 71,
    EOVERFLOW = 75,
    ENOTSUP = 95,
    ECONNABORTED = 103,
    ENOTCONN = 107,
    ETIMEDOUT = 110,
    ESTALE = 116,
}

/// <summary>
/// The system calls the protocol layer makes, through LibraryImport with SetLastError. Raw
/// open/read/writev/ioctl on /dev/fuse, never FileStream (fuse-protocol.md section 11).
/// Each call is declared once in the tree; layers above use this one through public helpers
/// (<see cref="FuseMount.MountSyscall"/>). Two are also declared in Core's Posix, which this layer
/// may not reference nor Core this one: open (here for /dev/fuse, which .NET would flock; there for
/// O_DIRECT and O_NOFOLLOW, which .NET cannot ask for) and statx (here for a mount point's errno,
/// mode and device; there for owner, mode and times; .NET gives neither the errno nor st_dev).
/// </summary>
internal static unsafe partial class Native
{
    public const int O_RDWR = 2;
    public const int O_CLOEXEC = 0x80000;
    public const ulong MS_RDONLY = 1;
    public const ulong MS_NOSUID = 2;
    public const ulong MS_NODEV = 4;
    public const ulong MS_NOEXEC = 8;
    public const int MNT_DETACH = 2;
    public const short POLLERR = 8;
    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int SOL_SOCKET = 1;
    public const int SCM_RIGHTS = 1;

    [StructLayout(LayoutKind.Sequential)]
    public struct Iovec
    {
        public void* Base;
        public nuint Len;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    /// <summary>struct msghdr (x86_64/arm64 LP64), 56 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name;
        public uint NameLen;
        public Iovec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLen;
        public int Flags;
    }

    public static Errno LastErrno => (Errno)Marshal.GetLastPInvokeError();

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buf, nuint count);

    [LibraryImport("libc", EntryPoint = "writev", SetLastError = true)]
    public static partial nint Writev(int fd, Iovec* iov, int iovcnt);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buf, nuint count);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, void* arg);

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string? source, string target, string? fstype, nuint flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    public const short POLLPRI = 0x2;

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    public static partial long Lseek(int fd, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint nfds, int timeout);

    [LibraryImport("libc", EntryPoint = "getegid")]
    public static partial uint Getegid();

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    public static partial int Socketpair(int domain, int type, int protocol, int* sv);

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint Recvmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    public static partial int PosixSpawnFileActionsInit(void* actions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2")]
    public static partial int PosixSpawnFileActionsAddDup2(void* actions, int fd, int newfd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    public static partial int PosixSpawnFileActionsDestroy(void* actions);

    [LibraryImport("libc", EntryPoint = "posix_spawnp", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int PosixSpawnp(int* pid, string file, void* actions, void* attr, byte** argv, byte** envp);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    public static partial int Waitpid(int pid, int* status, int options);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirfd, string path, int flags, uint mask, byte* buf);

    /// <summary>stat(2) of a path: the errno, and the device (major, minor) it lives on.</summary>
    public static (Errno Error, uint DevMajor, uint DevMinor, uint Mode) Stat(string path)
    {
        // struct statx is 256 bytes; stx_mode u16 @28, stx_dev_major @136, stx_dev_minor @140.
        byte* buf = stackalloc byte[256];
        // SAFETY: buf holds the 256 bytes of struct statx; AT_FDCWD (-100), flags 0, STATX_BASIC_STATS.
        if (Statx(-100, path, 0, 0x7ff, buf) != 0)
        {
            return (LastErrno, 0, 0, 0);
        }

        return (Errno.OK, *(uint*)(buf + 136), *(uint*)(buf + 140), *(ushort*)(buf + 28));
    }

    [LibraryImport("libc", EntryPoint = "statfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatfsRaw(string path, byte* buf);

    /// <summary>statfs(2) of a path, for its errno only. FUSE never caches STATFS, so a dead connection answers ENOTCONN.</summary>
    public static Errno Statfs(string path)
    {
        byte* buf = stackalloc byte[256];
        // SAFETY: struct statfs is 120 bytes on LP64 Linux; buf has 256.
        return StatfsRaw(path, buf) == 0 ? Errno.OK : LastErrno;
    }

    public static string Describe(Errno e) => $"{e} ({Marshal.GetPInvokeErrorMessage((int)e)})";
}
