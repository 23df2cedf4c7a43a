using System.Runtime.InteropServices;
using LazyModelFs.Fuse;

namespace LazyModelFs.Csi;

/// <summary>
/// What the node plugin does to the host's mount table (read through <see cref="Fuse.FuseMount.MountTable"/>): bind mounts into pods and unmounts.
/// </summary>
public static class HostMounts
{
    private const ulong MsRdonly = 1, MsNosuid = 2, MsNodev = 4, MsRemount = 32, MsBind = 4096, MsPrivate = 1 << 18;
    private const int MntDetach = 2;

    /// <summary>Bind-mounts <paramref name="source"/> on <paramref name="target"/>; read-only needs a second, remounting call (mount(8) does the same).</summary>
    public static void Bind(string source, string target, bool readOnly)
    {
        if (FuseMount.MountSyscall(source, target, null, MsBind, null) is var bind and not Errno.OK)
        {
            throw new IOException($"bind mount of {source} on {target} failed: {Message(bind)}");
        }

        if (readOnly && FuseMount.MountSyscall(null, target, null, MsBind | MsRemount | MsRdonly | MsNosuid | MsNodev, null) is var remount and not Errno.OK)
        {
            _ = FuseMount.UnmountSyscall(target, MntDetach);
            throw new IOException($"making the bind mount at {target} read-only failed: {Message(remount)}");
        }
    }

    /// <summary>
    /// Makes the mount on top at <paramref name="target"/> private: it stops sending and receiving
    /// mount events, so binds of it form peer groups of their own (CsiServices says why).
    /// </summary>
    public static void MakePrivate(string target)
    {
        if (FuseMount.MountSyscall(null, target, null, MsPrivate, null) is var e and not Errno.OK)
        {
            throw new IOException($"making the mount at {target} private failed: {Message(e)}");
        }
    }

    /// <summary>Unmounts <paramref name="target"/>; a busy mount is detached (it goes when its last user closes it).</summary>
    public static void Unmount(string target)
    {
        var e = FuseMount.UnmountSyscall(target, 0);
        if (e == Errno.EBUSY)
        {
            e = FuseMount.UnmountSyscall(target, MntDetach);
        }

        if (e != Errno.OK)
        {
            throw new IOException($"unmounting {target} failed: {Message(e)}");
        }
    }

    private static string Message(Errno e) => Marshal.GetPInvokeErrorMessage((int)e);
}
