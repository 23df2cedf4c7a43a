using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Util;

/// <summary>
/// Checks that a directory (the disk cache) can be trusted: nobody but its owner and root can put,
/// replace or change anything in it.
///
/// The disk cache is checked with CRC32C, which finds damage, not forgery: anyone who can write a
/// cache file can make the mount serve bytes of their choosing with the right length and CRC
/// (four patched bytes suffice). So the trust model is the filesystem's (issue 11, item 3): the
/// cache directory and every directory above it must pass the rule lmfs uses for every private
/// place (<see cref="PrivateFiles.CheckTrusted"/>: owned by root or the user lmfs runs as, ours not
/// writable by group or others, root's not writable by others unless sticky like /tmp, where others
/// cannot rename or delete what is ours), and the cache directory itself must not be writable by
/// group or others whoever owns it. lmfs makes its own directories
/// 0700 and its files 0600, and each cache file is checked when it is opened (owned by root or us,
/// not writable by others, one link): a file planted by another uid is discarded, never served.
/// The owner and root remain trusted; what they write is theirs to answer for.
/// </summary>
public static class TrustedPath
{
    public const UnixFileMode PrivateDir = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    public const UnixFileMode PrivateFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private const uint GroupOtherWrite = 0x12; // 0022

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

    /// <summary>
    /// Checks <paramref name="realDir"/> (symlinks resolved) and its ancestors with the one rule lmfs
    /// uses for every private place (<see cref="PrivateFiles.CheckTrusted"/>), and the directory itself
    /// more strictly: nobody but its owner may write it, whoever owns it.
    /// </summary>
    public static void CheckChain(string realDir, string option)
    {
        try
        {
            PrivateFiles.CheckTrusted(realDir);
        }
        catch (Exception ex) when (ex is UnsafePathException or IOException)
        {
            throw new LmfsException($"{ex.Message}: others could plant or replace what lmfs keeps in '{realDir}' ({option})", $"use a {option} that only you (uid {Posix.EUid}) or root can write, all the way up, e.g. a new directory under /var/cache or your home", 2, ex);
        }

        var st = Posix.LStat(realDir);
        if ((st.Mode & GroupOtherWrite) != 0)
        {
            throw new LmfsException(
                $"refusing to use '{realDir}' ({option}): it is writable by group or others (mode {Convert.ToString(st.Mode & 0xFFF, 8)})",
                $"chmod go-w '{realDir}', or choose another {option}",
                2);
        }
    }

    /// <summary>
    /// Whether an opened file may be trusted as lmfs's own: a regular file owned by root or us, not
    /// writable by group or others, with one link (not a hard link to something else). Null when it
    /// may; otherwise what is wrong with it.
    /// </summary>
    public static string? UntrustedFile(SafeFileHandle h)
    {
        PosixStat st;
        try
        {
            st = Posix.FStat(h);
        }
        catch (IOException ex)
        {
            return ex.Message;
        }

        if ((st.Mode & 0xF000) != 0x8000)
        {
            return "not a regular file";
        }

        if (st.Uid != 0 && st.Uid != Posix.EUid)
        {
            return $"owned by uid {st.Uid}";
        }

        if ((st.Mode & GroupOtherWrite) != 0)
        {
            return $"writable by others (mode {Convert.ToString(st.Mode & 0xFFF, 8)})";
        }

        return st.Nlink != 1 ? $"{st.Nlink} hard links" : null;
    }

    /// <summary>realpath(3) as an <see cref="LmfsException"/> (exit 2) when it fails.</summary>
    private static string RealPath(string path)
    {
        try
        {
            return Posix.RealPath(path);
        }
        catch (IOException ex)
        {
            throw new LmfsException(ex.Message, "check the path", 2, ex);
        }
    }
}
