using System.Security.Cryptography;
using System.Text;

namespace LazyModelFs.Util;

/// <summary>
/// The files lmfs keeps for one user outside any volume: mount records and control sockets (in the
/// runtime directory), background-mount logs, bench scratch space.
///
/// Why (issue 11, item 13): when /run/lmfs could not be made, records went to $TMPDIR/lmfs-mounts,
/// a name every user shares. Another user who made that directory first could plant a symbolic link
/// named like a victim's record, and the victim's `lmfs mount` wrote through it; or plant a record
/// (metadata URL, cache directory, control socket) that the victim's `lmfs warmup MOUNTPOINT`
/// trusted. The rules below leave no name another user can take first or swap afterwards:
///
/// - The runtime directory is private to the user: root: /run/lmfs; others: $XDG_RUNTIME_DIR/lmfs,
///   else /run/user/UID/lmfs, else $TMPDIR/lmfs-UID (tmux's rule). Made with mode 0700.
/// - A directory is used only after every level from / down (symbolic links resolved first) passes
///   <see cref="CheckTrusted"/>: a real directory owned by root or by us; one of ours closed to
///   group and others for writing; one of root's not writable by others unless sticky (/tmp: others
///   cannot remove or rename what we own there). Root's group-writable directories (/var/log on
///   Ubuntu, root:syslog 0775) are the administrator's choice and are accepted. A directory we make
///   for ourselves must be ours and is closed to group and others (read and search access taken
///   away; write access refused, as something may have been planted already).
/// - Files are written under a new temporary name (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) and renamed
///   into place: a planted symbolic link is replaced, never followed.
/// - A file is read through O_NOFOLLOW|O_NONBLOCK (a planted FIFO cannot hang the reader) and
///   trusted only as a regular file owned by us or root, not writable by group or others.
/// </summary>
public static class PrivateFiles
{
    private const uint GroupOtherWrite = 0x12; // 022

    private const uint GroupOtherAll = 0x3F;   // 077

    private const uint OtherWrite = 0x2;

    private const int EExist = 17, ENoent = 2;

    /// <summary>The user's private runtime directory (made if missing, checked every time). Throws <see cref="UnsafePathException"/> when it cannot be trusted.</summary>
    public static string RuntimeDirectory()
    {
        uint me = Posix.EUid;
        if (me == 0 && Directory.Exists("/run"))
        {
            try
            {
                return EnsureDirectory("/run/lmfs");
            }
            catch (IOException)
            {
                // /run read-only or not ours to write (a container): use the chain below.
            }
        }

        string? xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        if (!string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg) && Directory.Exists(xdg))
        {
            return EnsureDirectory(Path.Combine(xdg, "lmfs"));
        }

        string user = $"/run/user/{me}";
        return Directory.Exists(user)
            ? EnsureDirectory(Path.Combine(user, "lmfs"))
            : EnsureDirectory(Path.Combine(Path.GetTempPath(), $"lmfs-{me}"));
    }

    /// <summary>
    /// Makes <paramref name="path"/> (mode 0700) if it is missing, under a parent that must pass
    /// <see cref="CheckTrusted"/>, and checks that it is a directory of ours closed to group and others.
    /// Returns the resolved path.
    /// </summary>
    public static string EnsureDirectory(string path)
    {
        string full = Path.GetFullPath(path).TrimEnd('/');
        string parent = Posix.RealPath(Path.GetDirectoryName(full) ?? "/");
        CheckTrusted(parent);
        string dir = Path.Combine(parent, Path.GetFileName(full));
        int err = Posix.MkDir(dir, 0x1C0); // 0700
        if (err != 0 && err != EExist)
        {
            throw new IOException($"cannot make '{dir}': {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(err)}", err);
        }

        var st = Posix.LStat(dir);
        uint me = Posix.EUid;
        if ((st.Mode & Posix.SIfmt) != Posix.SIfdir)
        {
            throw new UnsafePathException(dir, (st.Mode & Posix.SIfmt) == Posix.SIflnk ? "it is a symbolic link" : "it is not a directory");
        }

        if (st.Uid != me)
        {
            throw new UnsafePathException(dir, $"it is owned by uid {st.Uid}, not by you (uid {me})");
        }

        if ((st.Mode & GroupOtherWrite) != 0)
        {
            throw new UnsafePathException(dir, $"it is writable by group or others (mode {Octal(st.Mode)})");
        }

        if ((st.Mode & GroupOtherAll) != 0)
        {
            File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        return dir;
    }

    /// <summary>
    /// Checks every level of <paramref name="path"/> (an existing directory; symbolic links are resolved
    /// first) from / down: each a directory owned by root or by us; ours not writable by group or others;
    /// root's not writable by others unless sticky. Throws <see cref="UnsafePathException"/> naming the
    /// first level that fails.
    /// </summary>
    public static void CheckTrusted(string path)
    {
        string real = Posix.RealPath(path);
        uint me = Posix.EUid;
        string level = "/";
        foreach (var part in real.Split('/', StringSplitOptions.RemoveEmptyEntries).Prepend(""))
        {
            level = part.Length == 0 ? "/" : Path.Combine(level, part);
            var st = Posix.LStat(level);
            if ((st.Mode & Posix.SIfmt) != Posix.SIfdir)
            {
                throw new UnsafePathException(level, "it is not a directory");
            }

            if (st.Uid != 0 && st.Uid != me)
            {
                throw new UnsafePathException(level, $"it is owned by uid {st.Uid}, not by you (uid {me}) or root");
            }

            bool open = st.Uid == 0 ? (st.Mode & OtherWrite) != 0 && (st.Mode & Posix.SIsvtx) == 0 : (st.Mode & GroupOtherWrite) != 0;
            if (open)
            {
                throw new UnsafePathException(level, $"it is writable by {(st.Uid == 0 ? "others" : "group or others")} (mode {Octal(st.Mode)})");
            }
        }
    }

    /// <summary>Writes <paramref name="content"/> to <paramref name="path"/> (mode 0600): a new temporary name beside it, then rename(2) over the old name.</summary>
    public static void WriteAtomic(string path, string content)
    {
        string tmp = $"{path}.tmp-{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}";
        try
        {
            using (var h = Posix.Open(tmp, Posix.OWronly | Posix.OCreat | Posix.OExcl | Posix.ONoFollow | Posix.OCloexec, 0x180))
            using (var f = new FileStream(h, FileAccess.Write))
            {
                f.Write(Encoding.UTF8.GetBytes(content));
                f.Flush(flushToDisk: false);
            }

            Posix.Rename(tmp, path);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>
    /// The text of <paramref name="path"/>, or null when there is no such file. Throws
    /// <see cref="UnsafePathException"/> when the name is a symbolic link or not a regular file, or the
    /// file is owned by someone other than us or root, or writable by group or others.
    /// </summary>
    public static string? ReadTrusted(string path)
    {
        Microsoft.Win32.SafeHandles.SafeFileHandle h;
        try
        {
#pragma warning disable CA2000 // disposed by the using below; the try only explains a failed open
            h = Posix.Open(path, Posix.ORdonly | Posix.ONoFollow | Posix.ONonblock | Posix.OCloexec);
#pragma warning restore CA2000
        }
        catch (IOException ex) when (ex.HResult == ENoent)
        {
            return null;
        }
        catch (IOException ex)
        {
            throw (Exception?)Explain(path, owner: false) ?? ex;
        }

        using var _ = h;
        var st = Posix.FStat(h);
        uint me = Posix.EUid;
        if ((st.Mode & Posix.SIfmt) != Posix.SIfreg)
        {
            throw new UnsafePathException(path, "it is not a regular file");
        }

        if (st.Uid != 0 && st.Uid != me)
        {
            throw new UnsafePathException(path, $"it is owned by uid {st.Uid}, not by you (uid {me}) or root");
        }

        if ((st.Mode & GroupOtherWrite) != 0)
        {
            throw new UnsafePathException(path, $"it is writable by group or others (mode {Octal(st.Mode)})");
        }

        using var f = new FileStream(h, FileAccess.Read);
        using var r = new StreamReader(f, Encoding.UTF8);
        return r.ReadToEnd();
    }

    /// <summary>
    /// Checks a log file before a child process appends to it by name: its directory passes
    /// <see cref="CheckTrusted"/>, and the file is made (O_EXCL|O_NOFOLLOW, mode 0640) or is already a
    /// regular file of ours, not a symbolic link. Nobody else can then swap it (the directory is closed
    /// to them, or sticky and the file is ours).
    /// </summary>
    public static void PrepareLogFile(string path)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        CheckTrusted(dir);
        try
        {
            using var h = Posix.Open(full, Posix.OWronly | Posix.OAppend | Posix.OCreat | Posix.ONoFollow | Posix.ONonblock | Posix.OCloexec, 0x1A0); // 0640
            var st = Posix.FStat(h);
            uint me = Posix.EUid;
            if ((st.Mode & Posix.SIfmt) != Posix.SIfreg)
            {
                throw new UnsafePathException(full, "it is not a regular file");
            }

            if (st.Uid != me)
            {
                throw new UnsafePathException(full, $"it is owned by uid {st.Uid}, not by you (uid {me})");
            }
        }
        catch (IOException ex) when (ex.HResult != ENoent)
        {
            // ELOOP for a link; EACCES where the kernel protects sticky directories (fs.protected_regular, protected_symlinks).
            throw (Exception?)Explain(full, owner: true) ?? ex;
        }
    }

    /// <summary>Why a name that could not be opened is not ours to use: a link, or (with <paramref name="owner"/>) someone else's file; null when it is neither.</summary>
    private static UnsafePathException? Explain(string path, bool owner)
    {
        try
        {
            var st = Posix.LStat(path);
            uint me = Posix.EUid;
            return (st.Mode & Posix.SIfmt) == Posix.SIflnk ? new UnsafePathException(path, "it is a symbolic link")
                : owner && st.Uid != me ? new UnsafePathException(path, $"it is owned by uid {st.Uid}, not by you (uid {me})")
                : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>A new directory of ours (mode 0700) under <paramref name="parent"/>, named <paramref name="prefix"/> and random characters (mkdtemp(3)).</summary>
    public static string CreateUniqueDirectory(string parent, string prefix)
    {
        Directory.CreateDirectory(parent);
        CheckTrusted(parent);
        while (true)
        {
            string dir = Path.Combine(Posix.RealPath(parent), prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)));
            int err = Posix.MkDir(dir, 0x1C0);
            if (err == 0)
            {
                return dir;
            }

            if (err != EExist)
            {
                throw new IOException($"cannot make '{dir}': {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(err)}", err);
            }
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    private static string Octal(uint mode) => "0" + Convert.ToString(mode & 0xFFF, 8);
}

/// <summary>A file or directory lmfs would have to trust but must not (owned by another user, writable by others, a planted link).</summary>
public sealed class UnsafePathException(string path, string why)
    : LmfsException(
        $"refusing to use '{path}': {why}",
        "another user may have made it to redirect lmfs: remove it (check who made it first), or point lmfs elsewhere (XDG_RUNTIME_DIR for mount records, --log-file for logs)",
        1)
{
    public string Path { get; } = path;
}
