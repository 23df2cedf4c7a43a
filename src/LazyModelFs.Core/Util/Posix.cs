using System.Runtime.InteropServices;

namespace LazyModelFs.Util;

/// <summary>File facts .NET does not expose: owner, group, mode and mtime of a path, without following a final symlink.</summary>
public readonly record struct PosixStat(uint Mode, uint Uid, uint Gid, long Size, long MtimeNs, ulong Ino);

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
        // struct statx is 256 bytes: uid @20, gid @24, mode u16 @28, ino @32, size @40, mtime {i64 sec @112, u32 nsec @120}.
        byte* buf = stackalloc byte[256];
        // SAFETY: buf is 256 bytes, the size of struct statx; the kernel writes no more.
        if (statx(AtFdCwd, path, follow ? 0 : AtSymlinkNoFollow, StatxBasicStats, buf) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot stat '{path}': {Marshal.GetPInvokeErrorMessage(errno)}");
        }

        return new PosixStat(
            *(ushort*)(buf + 28),
            *(uint*)(buf + 20),
            *(uint*)(buf + 24),
            *(long*)(buf + 40),
            (*(long*)(buf + 112) * 1_000_000_000L) + *(uint*)(buf + 120),
            *(ulong*)(buf + 32));
    }

    /// <summary>Drops the file's clean pages from the page cache (posix_fadvise POSIX_FADV_DONTNEED); false when refused.</summary>
    public static bool DropFromPageCache(Microsoft.Win32.SafeHandles.SafeFileHandle h) =>
        posix_fadvise((int)h.DangerousGetHandle(), 0, 0, 4) == 0;

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long len, int advice);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);
}
