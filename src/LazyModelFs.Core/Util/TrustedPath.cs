using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Util;

/// <summary>
/// Checks that a directory (the disk cache) can be trusted: nobody but its owner and root can put,
/// replace or change anything in it.
///
/// The disk cache is checked with CRC32C, which finds damage, not forgery: anyone who can write a
/// cache file can make the mount serve bytes of their choosing with the right length and CRC
/// (four patched bytes suffice). So the trust model is the filesystem's (issue 11, item 3): the
/// cache directory and every directory above it must be owned by root or by the user lmfs runs as,
/// and must not be writable by group or others — except that an ancestor may be a sticky directory
/// such as /tmp, where others cannot rename or delete what is ours. lmfs makes its own directories
/// 0700 and its files 0600, and each cache file is checked when it is opened (owned by root or us,
/// not writable by others, one link): a file planted by another uid is discarded, never served.
/// The owner and root remain trusted; what they write is theirs to answer for.
/// </summary>
public static partial class TrustedPath
{
    public const UnixFileMode PrivateDir = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    public const UnixFileMode PrivateFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private const uint GroupOtherWrite = 0x12; // 0022

    private const uint Sticky = 0x200; // 01000

    public static uint EffectiveUid => geteuid();

    /// <summary>
    /// Creates <paramref name="dir"/> (0700, parents too) if missing, then checks it and every
    /// directory above it. Throws an <see cref="LmfsException"/> (exit 2) naming the directory at fault and what to do.
    /// </summary>
    public static string EnsurePrivateDirectory(string dir, string option)
    {
        string full = Path.GetFullPath(dir);
        if (!Directory.Exists(full))
        {
            try
            {
                Directory.CreateDirectory(full, PrivateDir);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new LmfsException($"cannot create the directory '{full}' ({option}): {ex.Message}", $"choose another {option}, or fix the permissions of its parent", 2, ex);
            }
        }

        string real = RealPath(full);
        CheckChain(real, option);
        return real;
    }

    /// <summary>Checks <paramref name="realDir"/> (symlinks resolved) and its ancestors; see the class summary.</summary>
    public static void CheckChain(string realDir, string option)
    {
        uint me = EffectiveUid;
        string? at = realDir;
        bool leaf = true;
        while (at is not null)
        {
            PosixStat st;
            try
            {
                st = Posix.LStat(at);
            }
            catch (IOException ex)
            {
                throw new LmfsException($"cannot check '{at}' ({option}): {ex.Message}", $"choose another {option}", 2, ex);
            }

            if (st.Uid != 0 && st.Uid != me)
            {
                throw new LmfsException(
                    $"'{at}' is owned by uid {st.Uid}, so {(leaf ? "its owner" : "that user")} could replace what lmfs keeps in '{realDir}' ({option})",
                    $"use a {option} that you (uid {me}) or root own all the way up, e.g. a new directory under your home or /var/cache",
                    2);
            }

            bool writableByOthers = (st.Mode & GroupOtherWrite) != 0;
            if (writableByOthers && (leaf || (st.Mode & Sticky) == 0))
            {
                throw new LmfsException(
                    $"'{at}' is writable by {((st.Mode & 0x2) != 0 ? "every user" : "its group")} (mode {Convert.ToString(st.Mode & 0xFFF, 8)}), so others could plant or replace what lmfs keeps in '{realDir}' ({option})",
                    leaf ? $"chmod go-w '{at}', or choose another {option}" : $"choose a {option} whose parent directories only you or root can write",
                    2);
            }

            leaf = false;
            at = at == "/" ? null : Path.GetDirectoryName(at);
        }
    }

    /// <summary>
    /// Whether an opened file may be trusted as lmfs's own: a regular file owned by root or us, not
    /// writable by group or others, with one link (not a hard link to something else). Null when it
    /// may; otherwise what is wrong with it.
    /// </summary>
    public static unsafe string? UntrustedFile(SafeFileHandle h)
    {
        const int AtEmptyPath = 0x1000;
        const uint StatxBasicStats = 0x7ff;
        byte* buf = stackalloc byte[256];
        // SAFETY: buf is 256 bytes, the size of struct statx; the kernel writes no more. The handle
        // stays open (and its descriptor valid) for the call: the caller holds it.
        if (statx((int)h.DangerousGetHandle(), "", AtEmptyPath, StatxBasicStats, buf) != 0)
        {
            return $"fstat failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}";
        }

        uint nlink = *(uint*)(buf + 16), uid = *(uint*)(buf + 20), mode = *(ushort*)(buf + 28);
        if ((mode & 0xF000) != 0x8000)
        {
            return "not a regular file";
        }

        if (uid != 0 && uid != EffectiveUid)
        {
            return $"owned by uid {uid}";
        }

        if ((mode & GroupOtherWrite) != 0)
        {
            return $"writable by others (mode {Convert.ToString(mode & 0xFFF, 8)})";
        }

        return nlink != 1 ? $"{nlink} hard links" : null;
    }

    /// <summary>realpath(3): the path with every symlink resolved.</summary>
    public static string RealPath(string path)
    {
        nint p = realpath(path, 0);
        if (p == 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new LmfsException($"cannot resolve '{path}': {Marshal.GetPInvokeErrorMessage(errno)}", "check the path", 2);
        }

        try
        {
            return Marshal.PtrToStringUTF8(p)!;
        }
        finally
        {
            unsafe
            {
                // SAFETY: realpath(3) returned a malloc'd buffer that nothing else references.
                NativeMemory.Free((void*)p);
            }
        }
    }

    [LibraryImport("libc")]
    private static partial uint geteuid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint realpath(string path, nint resolved);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);
}
