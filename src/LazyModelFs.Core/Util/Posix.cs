using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Util;

/// <summary>File facts .NET does not expose: owner, group, mode and mtime of a path, without following a final symlink.</summary>
public readonly record struct PosixStat(uint Mode, uint Uid, uint Gid, long Size, long MtimeNs, ulong Ino, ulong Dev = 0, uint Nlink = 0);

public static partial class Posix
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxBasicStats = 0x7ff;

    /// <summary>lstat(2) through statx(2), whose struct layout is the same on every architecture.</summary>
    public static PosixStat LStat(string path) => Stat(path, follow: false);

    /// <summary>stat(2) through statx(2): follows a final symlink unless <paramref name="follow"/> is false.</summary>
    public static unsafe PosixStat Stat(string path, bool follow = true)
    {
        // struct statx is 256 bytes: uid @20, gid @24, mode u16 @28, ino @32, size @40, mtime {i64 sec @112, u32 nsec @120},
        // dev_major @136, dev_minor @140.
        byte* buf = stackalloc byte[256];
        // SAFETY: buf is 256 bytes, the size of struct statx; the kernel writes no more.
        if (statx(AtFdCwd, path, follow ? 0 : AtSymlinkNoFollow, StatxBasicStats, buf) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot stat '{path}': {Marshal.GetPInvokeErrorMessage(errno)}");
        }

        return FromStatx(buf);
    }

    /// <summary>Drops the file's clean pages from the page cache (posix_fadvise POSIX_FADV_DONTNEED); false when refused.</summary>
    public static bool DropFromPageCache(Microsoft.Win32.SafeHandles.SafeFileHandle h) =>
        posix_fadvise((int)h.DangerousGetHandle(), 0, 0, 4) == 0;

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long len, int advice);

    private static int ODirect => System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x10000 : 0x4000;

    /// <summary>
    /// Opens a file with O_DIRECT (reads and writes go between the disk and the caller's buffer, not
    /// through the page cache; buffers, offsets and lengths must be 4 KiB aligned). Null when the
    /// filesystem refuses O_DIRECT (tmpfs, some FUSE and network filesystems): use buffered I/O there.
    /// Other failures throw like File.OpenHandle (FileNotFoundException, IOException…).
    /// </summary>
    public static SafeFileHandle? OpenDirect(string path, bool write)
    {
        const int ORdonly = 0, OWronly = 1, OCreat = 0x40, OExcl = 0x80, OCloexec = 0x80000;
        int flags = (write ? OWronly | OCreat | OExcl : ORdonly) | ODirect | OCloexec;
        int fd = open(path, flags, 0x180); // 0600: cache files are private (TrustedPath)
        if (fd >= 0)
        {
            return new SafeFileHandle(fd, ownsHandle: true);
        }

        int errno = Marshal.GetLastPInvokeError();
        string why = Marshal.GetPInvokeErrorMessage(errno);
        return errno switch
        {
            22 => null, // EINVAL: O_DIRECT not supported here
            2 => throw new FileNotFoundException($"'{path}': {why}", path),
            13 or 1 => throw new UnauthorizedAccessException($"'{path}': {why}"),
            _ => throw new IOException($"cannot open '{path}': {why}", errno),
        };
    }

    /// <summary>
    /// Anonymous memory, 2 MiB aligned and marked for transparent huge pages (MADV_HUGEPAGE), so a
    /// 4 MiB chunk buffer is faulted in with two faults instead of a thousand. Freed with <see cref="Unmap"/>.
    /// </summary>
    public static unsafe byte* MapHuge(nuint size)
    {
        const int ProtRw = 3, MapPrivateAnon = 0x02 | 0x20, MadvHugepage = 14;
        const nuint Huge = 2 << 20;
        nuint len = size + Huge;
        byte* p = (byte*)mmap(null, len, ProtRw, MapPrivateAnon, -1, 0);
        if (p == (byte*)-1)
        {
            throw new OutOfMemoryException($"mmap of {size} bytes failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }

        // Trim to a 2 MiB-aligned start; give the head and the tail back.
        byte* start = (byte*)(((nuint)p + Huge - 1) & ~(Huge - 1));
        nuint head = (nuint)(start - p);
        nuint used = (size + 4095) & ~(nuint)4095;
        // munmap of a range inside our own mapping cannot fail; madvise is advisory (no THP: ordinary pages).
        _ = head > 0 ? munmap(p, head) : 0;
        nuint tail = len - head - used;
        _ = tail > 0 ? munmap(start + used, tail) : 0;
        _ = madvise(start, used, MadvHugepage);
        return start;
    }

    public static unsafe void Unmap(byte* p, nuint size) => _ = munmap(p, (size + 4095) & ~(nuint)4095);

    // open and statx are also declared in the FUSE layer (Fuse/Native.cs says why): neither project may reference the other.
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags, int mode);

    /// <summary>The effective user id (whose files this process creates).</summary>
    public static uint EUid => geteuid();

    public const uint SIfmt = 0xF000, SIfdir = 0x4000, SIfreg = 0x8000, SIflnk = 0xA000, SIsvtx = 0x200;

    /// <summary>O_NOFOLLOW: open(2) fails with ELOOP when the final component is a symbolic link (its value differs by architecture).</summary>
    public static int ONoFollow => RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x8000 : 0x20000;

    public const int ORdonly = 0, OWronly = 1, OCreat = 0x40, OExcl = 0x80, OAppend = 0x400, ONonblock = 0x800, OCloexec = 0x80000;

    /// <summary>open(2) as it is, for the flags .NET cannot ask for (O_NOFOLLOW, O_NONBLOCK). Throws IOException with the errno in HResult.</summary>
    public static SafeFileHandle Open(string path, int flags, int mode = 0)
    {
        int fd = open(path, flags, mode);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot open '{path}': {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }

        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>mkdir(2): 0 when made, else the errno (EEXIST = 17 when something is there already).</summary>
    public static int MkDir(string path, uint mode) => mkdir(path, mode) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>rename(2): replaces <paramref name="to"/> itself (a symbolic link there is replaced, not followed).</summary>
    public static void Rename(string from, string to)
    {
        if (rename(from, to) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot rename '{from}' to '{to}': {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
    }

    /// <summary>kill(pid, SIGTERM); false when it could not be sent.</summary>
    public static bool Terminate(int pid) => kill(pid, 15) == 0;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int sig);

    [LibraryImport("libc")]
    private static partial uint geteuid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mkdir(string path, uint mode);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int rename(string from, string to);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc")]
    private static unsafe partial int munmap(void* addr, nuint length);

    [LibraryImport("libc")]
    private static unsafe partial int madvise(void* addr, nuint length, int advice);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);
}
