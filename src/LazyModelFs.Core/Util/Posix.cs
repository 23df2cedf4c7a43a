using System.Runtime.InteropServices;

namespace LazyModelFs.Util;

/// <summary>File facts .NET does not expose: owner, group, mode and mtime of a path, without following a final symlink.</summary>
public readonly record struct PosixStat(uint Mode, uint Uid, uint Gid, long Size, long MtimeNs);

public static partial class Posix
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxBasicStats = 0x7ff;

    /// <summary>lstat(2) through statx(2), whose struct layout is the same on every architecture.</summary>
    public static unsafe PosixStat LStat(string path)
    {
        // struct statx is 256 bytes: uid @20, gid @24, mode u16 @28, size @40, mtime {i64 sec @112, u32 nsec @120}.
        byte* buf = stackalloc byte[256];
        // SAFETY: buf is 256 bytes, the size of struct statx; the kernel writes no more.
        if (statx(AtFdCwd, path, AtSymlinkNoFollow, StatxBasicStats, buf) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot stat '{path}': {Marshal.GetPInvokeErrorMessage(errno)}");
        }

        return new PosixStat(
            *(ushort*)(buf + 28),
            *(uint*)(buf + 20),
            *(uint*)(buf + 24),
            *(long*)(buf + 40),
            (*(long*)(buf + 112) * 1_000_000_000L) + *(uint*)(buf + 120));
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);
}
