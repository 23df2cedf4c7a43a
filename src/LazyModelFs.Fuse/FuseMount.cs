using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Fuse;

/// <summary>A mount could not be made or removed; <see cref="Hint"/> says what to do.</summary>
public sealed class FuseMountException(string message, string hint) : IOException(message)
{
    public string Hint { get; } = hint;
}

/// <summary>Mounting and unmounting (fuse-protocol.md section 3).</summary>
/// <summary>One line of /proc/self/mountinfo: device (major:minor), root within the filesystem, mount point, type, per-mount options.</summary>
public sealed record MountEntry(string Device, string Root, string MountPoint, string FsType, string Options);

public static class FuseMount
{
    /// <summary>
    /// The path as the kernel's mount table names it: absolute, "." and ".." applied, every symbolic
    /// link resolved, as realpath(3) does. Every comparison of a mount point with /proc/self/mountinfo
    /// (mount, umount, readiness, mount records, bench, CSI) must use this form: the kernel records
    /// the resolved path, so a path through a link never matches (issue 11, item 11).
    ///
    /// Unlike realpath it does not fail where a component cannot be read: a dead FUSE mount (ENOTCONN),
    /// a directory without search permission, or a path that does not exist yet. Resolution stops
    /// there and the rest is kept as written. Resolving a mount point itself never reaches its
    /// filesystem: readlink of a mount's root is answered by the VFS (EINVAL), so a hung or dead
    /// daemon cannot block it.
    /// </summary>
    public static string ResolveMountPoint(string path)
    {
        // Not Path.GetFullPath: it applies ".." before links are resolved, the kernel after.
        string absolute = path.StartsWith('/') ? path : Environment.CurrentDirectory + "/" + path;
        var pending = new Stack<string>(absolute.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse());
        string resolved = "";
        int links = 0;
        while (pending.Count > 0)
        {
            string c = pending.Pop();
            if (c == ".")
            {
                continue;
            }

            if (c == "..")
            {
                resolved = resolved[..Math.Max(0, resolved.LastIndexOf('/'))];
                continue;
            }

            string candidate = resolved + "/" + c;
            var (err, link) = ReadLink(candidate);
            if (err == Errno.OK && link is { Length: > 0 } && ++links <= 40)
            {
                if (link.StartsWith('/'))
                {
                    resolved = "";
                }

                foreach (var part in link.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse())
                {
                    pending.Push(part);
                }

                continue;
            }

            resolved = candidate;
            if (err != Errno.EINVAL)
            {
                // Cannot look further (ENOENT, ENOTCONN, EACCES, ELOOP): keep the rest as written.
                while (pending.Count > 0)
                {
                    string rest = pending.Pop();
                    resolved = rest switch
                    {
                        "." => resolved,
                        ".." => resolved[..Math.Max(0, resolved.LastIndexOf('/'))],
                        _ => resolved + "/" + rest,
                    };
                }
            }
        }

        return resolved.Length == 0 ? "/" : resolved;
    }

    /// <summary>
    /// readlink(2) through .NET: the target, or EINVAL for a component that is not a link (ResolveLinkTarget
    /// answers null only for that errno), or EIO for any other failure (ENOENT, ENOTCONN, EACCES, ELOOP:
    /// the exception .NET makes of it). A link is read twice (ResolveLinkTarget, then its text).
    /// </summary>
    private static (Errno Error, string? Target) ReadLink(string path)
    {
        try
        {
            return File.ResolveLinkTarget(path, returnFinalTarget: false) is null
                ? (Errno.EINVAL, null)
                : (Errno.OK, new FileInfo(path).LinkTarget);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return (Errno.EIO, null);
        }
    }

    /// <summary>
    /// Checks the mount point before mounting (see <see cref="CheckMountPoint"/>). A dead FUSE mount
    /// there (its daemon was killed: "Transport endpoint is not connected") is detached first, and
    /// the log says so. <paramref name="target"/> must be resolved (<see cref="ResolveMountPoint"/>).
    /// </summary>
    public static void PrepareMountPoint(string target, ILogger log, bool allowNonEmpty = false)
    {
        if (IsDeadFuseMount(target))
        {
            log.LogWarning("fuse: {Target} is a dead FUSE mount (transport endpoint is not connected); unmounting it first", target);
            Detach(target, log);
        }

        CheckMountPoint(target, allowNonEmpty);
    }

    /// <summary>
    /// What <see cref="PrepareMountPoint"/> checks, changing nothing: the mount point must be an
    /// existing directory with nothing mounted on it (a second mount would hide the first, and its
    /// daemon would keep running unseen), and empty unless <paramref name="allowNonEmpty"/> (a mount
    /// hides what the directory holds). A dead FUSE mount passes: mounting detaches it.
    /// </summary>
    public static void CheckMountPoint(string target, bool allowNonEmpty = false)
    {
        if (IsDeadFuseMount(target))
        {
            return;
        }

        var (err, _, _, mode) = Native.Stat(target);
        if (err == Errno.ENOENT)
        {
            throw new FuseMountException($"mount point '{target}' does not exist", $"create it first: mkdir -p {target}");
        }

        if (err != Errno.OK)
        {
            throw new FuseMountException($"cannot use mount point '{target}': {Native.Describe(err)}", "check the path and its permissions");
        }

        if ((mode & 0xF000) != 0x4000)
        {
            throw new FuseMountException($"mount point '{target}' is not a directory", "mount on an empty directory");
        }

        if (MountTypeAt(target) is { } type)
        {
            throw new FuseMountException($"'{target}' already has a {type} filesystem mounted on it", $"unmount it first (lmfs umount {target}), or choose another directory");
        }

        if (!allowNonEmpty && HasEntries(target))
        {
            throw new FuseMountException($"mount point '{target}' is not empty: the mount would hide what it holds", "mount on an empty directory, or pass --nonempty to mount over it anyway");
        }
    }

    /// <summary>
    /// Whether <paramref name="path"/> is a FUSE mount whose connection is gone (the daemon died or
    /// the connection was aborted): stat or statfs answer ENOTCONN. A daemon that is merely slow or
    /// whose backend fails (EIO) is not dead. A dead FUSE mount may still stat fine (the root's
    /// attributes are cached), but STATFS always reaches the connection.
    /// </summary>
    public static bool IsDeadFuseMount(string path) =>
        Native.Stat(path).Error == Errno.ENOTCONN
        || (MountTypeAt(path) is { } t && t.StartsWith("fuse", StringComparison.Ordinal) && Native.Statfs(path) == Errno.ENOTCONN);

    private static bool HasEntries(string dir)
    {
        try
        {
            return Directory.EnumerateFileSystemEntries(dir).Any();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false; // unreadable: mounting needs no read permission, and nothing of it is then visible anyway
        }
    }

    /// <summary>The mount table of this process's namespace (/proc/self/mountinfo), in order: a later entry at a path is on top.</summary>
    public static IReadOnlyList<MountEntry> MountTable()
    {
        var list = new List<MountEntry>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // id parent maj:min root mountpoint options [optional...] - fstype source superoptions
            var f = line.Split(' ');
            int dash = Array.IndexOf(f, "-");
            if (dash > 5 && dash + 1 < f.Length)
            {
                list.Add(new MountEntry(f[2], Unescape(f[3]), Unescape(f[4]), f[dash + 1], f[5]));
            }
        }

        return list;
    }

    /// <summary>The mount on top at exactly <paramref name="target"/>, or null.</summary>
    public static MountEntry? MountAt(string target) => MountTable().LastOrDefault(m => m.MountPoint == target);

    /// <summary>The filesystem type mounted exactly at <paramref name="target"/>, or null.</summary>
    public static string? MountTypeAt(string target) => MountAt(target)?.FsType;

    /// <summary>
    /// Whether the filesystem at <paramref name="path"/> answers: STATFS always reaches a FUSE
    /// connection, so a mount whose daemon died fails it (ENOTCONN) even while cached attributes
    /// still let stat succeed.
    /// </summary>
    public static bool IsLive(string path) => Native.Statfs(path) == Errno.OK;

    /// <summary>
    /// Unmounts whatever lmfs mounted at <paramref name="target"/>, live or dead: a lazy unmount, so
    /// open files and mappings finish first. Returns false when nothing is mounted there.
    /// </summary>
    public static bool UnmountPath(string target, ILogger log)
    {
        if (MountTypeAt(target) is null)
        {
            return false;
        }

        Detach(target, log);
        return true;
    }

    /// <summary>
    /// mount(2) as it is, for the layers above that mount other things (the CSI plugin's bind
    /// mounts): OK, or the errno. The call is declared once, here, where FUSE mounts are made.
    /// </summary>
    public static Errno MountSyscall(string? source, string target, string? fsType, ulong flags, string? data) =>
        Native.Mount(source, target, fsType, (nuint)flags, data) == 0 ? Errno.OK : Native.LastErrno;

    /// <summary>umount2(2) as it is (flags 0, or MNT_DETACH = 2): OK, or the errno.</summary>
    public static Errno UnmountSyscall(string target, int flags) =>
        Native.Umount2(target, flags) == 0 ? Errno.OK : Native.LastErrno;

    /// <summary>mount(2) of a new FUSE connection, as root only (<see cref="FuseSession.IsRoot"/>; others go through fusermount3).</summary>
    internal static int MountDirect(string target, FuseMountOptions o)
    {
        Debug.Assert(FuseSession.IsRoot, "a direct mount needs root");
        int fd = Native.Open("/dev/fuse", Native.O_RDWR | Native.O_CLOEXEC);
        if (fd < 0)
        {
            var e = Native.LastErrno;
            throw new FuseMountException($"cannot open /dev/fuse: {Native.Describe(e)}", "load the fuse module (modprobe fuse) and make /dev/fuse available to this process");
        }

        // Only root mounts directly (FuseSession.Mount), so the owner's uid is 0; the group is the effective one.
        var data = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"fd={fd},rootmode=40000,user_id=0,group_id={Native.Getegid()}"));
        if (o.DefaultPermissions)
        {
            data.Append(",default_permissions");
        }

        if (o.AllowOther)
        {
            data.Append(",allow_other");
        }

        // max_read caps READ sizes; never set it below max_pages × 4096 (fuse-protocol.md 3.1). Never pass blksize on plain fuse.
        data.Append(CultureInfo.InvariantCulture, $",max_read={o.Protocol.MaxRead}");
        nuint flags = (nuint)(Native.MS_NOSUID | Native.MS_NODEV | (o.ReadOnly ? Native.MS_RDONLY : 0) | (o.NoExec ? Native.MS_NOEXEC : 0));
        if (Native.Mount(o.FsName, target, "fuse." + o.Subtype, flags, data.ToString()) != 0)
        {
            var e = Native.LastErrno;
            Native.Close(fd);
            throw new FuseMountException($"mount of {target} failed: {Native.Describe(e)}", e == Errno.EPERM ? "mounting needs root (or fusermount3 for unprivileged mounts)" : "check the mount point and the kernel log (dmesg)");
        }

        return fd;
    }

    /// <summary>
    /// The unprivileged path: fusermount3 mounts and passes the /dev/fuse descriptor back over a
    /// unix socket (SCM_RIGHTS), as libfuse, go-fuse and fuser do. The child end is mapped to fd 3
    /// with posix_spawn (Process.Start cannot map descriptors).
    /// </summary>
    internal static unsafe int MountWithFusermount(string target, FuseMountOptions o)
    {
        int* sv = stackalloc int[2];
        // SAFETY: sv has room for the two descriptors socketpair writes.
        if (Native.Socketpair(Native.AF_UNIX, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0, sv) != 0)
        {
            throw new FuseMountException($"socketpair failed: {Native.Describe(Native.LastErrno)}", "check the process's descriptor limit");
        }

        var opts = new List<string> { "fsname=" + Escape(o.FsName), "subtype=" + Escape(o.Subtype), $"max_read={o.Protocol.MaxRead}", "nosuid", "nodev" };
        if (o.NoExec)
        {
            opts.Add("noexec");
        }

        if (o.DefaultPermissions)
        {
            opts.Add("default_permissions");
        }

        if (o.AllowOther)
        {
            opts.Add("allow_other");
        }

        if (o.ReadOnly)
        {
            opts.Add("ro");
        }

        try
        {
            int pid = Spawn("fusermount3", ["fusermount3", "-o", string.Join(',', opts), "--", target], sv[1], 3, "_FUSE_COMMFD=3");
            Native.Close(sv[1]);
            sv[1] = -1;
            int fd = ReceiveFd(sv[0]);
            int status;
            Native.Waitpid(pid, &status, 0);
            if (fd < 0)
            {
                throw new FuseMountException($"fusermount3 could not mount {target} (exit status {status >> 8})", "see its message above; unprivileged allow_other needs 'user_allow_other' in /etc/fuse.conf");
            }

            return fd;
        }
        finally
        {
            Native.Close(sv[0]);
            if (sv[1] >= 0)
            {
                Native.Close(sv[1]);
            }
        }
    }

    internal static unsafe bool IsConnectionAlive(int fd)
    {
        var p = new Native.PollFd { Fd = fd, Events = 0 };
        // SAFETY: one pollfd on the stack, nfds = 1.
        int n = Native.Poll(&p, 1, 0);
        return n >= 0 && (p.Revents & Native.POLLERR) == 0;
    }

    internal static void Unmount(string target, bool fusermount, ILogger log)
    {
        if (!fusermount)
        {
            if (Native.Umount2(target, Native.MNT_DETACH) != 0)
            {
                var e = Native.LastErrno;
                if (e != Errno.EINVAL)
                {
                    log.LogWarning("fuse: umount2({Target}) failed: {Errno}", target, Native.Describe(e));
                }
            }

            return;
        }

        RunFusermountUnmount(target, log);
    }

    /// <summary>Aborts connection <paramref name="minor"/> through fusectl: pending requests fail, readers see ECONNABORTED.</summary>
    internal static void Abort(uint minor, ILogger log)
    {
        const string root = "/sys/fs/fuse/connections";
        string path = $"{root}/{minor}/abort";
        try
        {
            if (!File.Exists(path) && MountTypeAt(root) is null)
            {
                Native.Mount("fusectl", root, "fusectl", 0, "");
            }

            File.WriteAllText(path, "1");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            log.LogError("fuse: cannot abort connection {Minor} through {Path}: {Message}", minor, path, ex.Message);
        }
    }

    private static void Detach(string target, ILogger log)
    {
        if (FuseSession.IsRoot && Native.Umount2(target, Native.MNT_DETACH) == 0)
        {
            return;
        }

        RunFusermountUnmount(target, log);
    }

    private static void RunFusermountUnmount(string target, ILogger log)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("fusermount3") { ArgumentList = { "-u", "-z", "-q", "--", target }, RedirectStandardError = true, UseShellExecute = false })!;
            string err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0)
            {
                log.LogWarning("fuse: fusermount3 -u {Target} failed: {Error}", target, err.Trim());
            }
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new FuseMountException($"cannot unmount {target}: fusermount3 is not available ({ex.Message})", "install fuse3, or unmount as root");
        }
    }

    private static unsafe int Spawn(string file, string[] argv, int fd, int targetFd, string extraEnv)
    {
        var env = Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .Select(e => $"{e.Key}={e.Value}").Where(e => !e.StartsWith("_FUSE_COMMFD=", StringComparison.Ordinal)).Append(extraEnv).ToArray();
        var handles = new List<nint>();
        byte** argvP = stackalloc byte*[argv.Length + 1];
        byte** envP = (byte**)NativeMemory.Alloc((nuint)(env.Length + 1), (nuint)sizeof(byte*));
        byte* actions = stackalloc byte[256]; // posix_spawn_file_actions_t is 80 bytes on glibc x86_64
        try
        {
            for (int i = 0; i < argv.Length; i++)
            {
                argvP[i] = (byte*)Marshal.StringToCoTaskMemUTF8(argv[i]);
                handles.Add((nint)argvP[i]);
            }

            argvP[argv.Length] = null;
            for (int i = 0; i < env.Length; i++)
            {
                envP[i] = (byte*)Marshal.StringToCoTaskMemUTF8(env[i]);
                handles.Add((nint)envP[i]);
            }

            envP[env.Length] = null;

            // SAFETY: actions is a zeroed buffer larger than posix_spawn_file_actions_t; argv and envp are
            // NUL-terminated arrays of NUL-terminated strings that outlive the call.
            int rc = Native.PosixSpawnFileActionsInit(actions);
            int pid = 0;
            if (rc == 0)
            {
                rc = Native.PosixSpawnFileActionsAddDup2(actions, fd, targetFd);
                if (rc == 0)
                {
                    rc = Native.PosixSpawnp(&pid, file, actions, null, argvP, envP);
                }

                _ = Native.PosixSpawnFileActionsDestroy(actions);
            }

            if (rc != 0)
            {
                throw new FuseMountException($"cannot run {file}: {Native.Describe((Errno)rc)}", "install fuse3 (apt-get install fuse3), or mount as root");
            }

            return pid;
        }
        finally
        {
            foreach (var h in handles)
            {
                Marshal.FreeCoTaskMem(h);
            }

            NativeMemory.Free(envP);
        }
    }

    private static unsafe int ReceiveFd(int sock)
    {
        byte data;
        var iov = new Native.Iovec { Base = &data, Len = 1 };
        // CMSG_SPACE(sizeof(int)) = 24 on LP64: a 16-byte cmsghdr {len, level, type} + 4 bytes, aligned to 8.
        byte* control = stackalloc byte[64];
        new Span<byte>(control, 64).Clear();
        var msg = new Native.MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = 64 };
        nint n;
        do
        {
            // SAFETY: msg points at stack buffers (iov, control) that live for the call; their sizes are in msg.
            n = Native.Recvmsg(sock, &msg, 0);
        }
        while (n < 0 && Native.LastErrno == Errno.EINTR);

        if (n <= 0 || msg.ControlLen < 20)
        {
            return -1;
        }

        int level = *(int*)(control + 8);
        int type = *(int*)(control + 12);
        return level == Native.SOL_SOCKET && type == Native.SCM_RIGHTS ? *(int*)(control + 16) : -1;
    }

    private static string Escape(string s) => s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace(",", "\\,", StringComparison.Ordinal);

    private static string Unescape(string s)
    {
        if (!s.Contains('\\', StringComparison.Ordinal))
        {
            return s;
        }

        var sb = new StringBuilder();
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length)
            {
                sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                sb.Append(s[i]);
            }
        }

        return sb.ToString();
    }
}
