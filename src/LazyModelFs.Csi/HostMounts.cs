using System.Runtime.InteropServices;

namespace LazyModelFs.Csi;

/// <summary>
/// What the node plugin does to the host's mount table (read through <see cref="Fuse.FuseMount.MountTable"/>): bind mounts into pods and unmounts.
/// </summary>
public static partial class HostMounts
{
    private const nuint MsRdonly = 1, MsNosuid = 2, MsNodev = 4, MsRemount = 32, MsBind = 4096, MsPrivate = 1 << 18;
    private const int MntDetach = 2;

    /// <summary>Bind-mounts <paramref name="source"/> on <paramref name="target"/>; read-only needs a second, remounting call (mount(8) does the same).</summary>
    public static void Bind(string source, string target, bool readOnly)
    {
        if (mount(source, target, null, MsBind, null) != 0)
        {
            throw new IOException($"bind mount of {source} on {target} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }

        if (readOnly && mount(null, target, null, MsBind | MsRemount | MsRdonly | MsNosuid | MsNodev, null) != 0)
        {
            string why = Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError());
            _ = umount2(target, MntDetach);
            throw new IOException($"making the bind mount at {target} read-only failed: {why}");
        }
    }

    /// <summary>
    /// Makes the mount on top at <paramref name="target"/> private: it stops sending and receiving
    /// mount events, so binds of it form peer groups of their own (CsiServices says why).
    /// </summary>
    public static void MakePrivate(string target)
    {
        if (mount(null, target, null, MsPrivate, null) != 0)
        {
            throw new IOException($"making the mount at {target} private failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>Unmounts <paramref name="target"/>; a busy mount is detached (it goes when its last user closes it).</summary>
    public static void Unmount(string target)
    {
        if (umount2(target, 0) == 0)
        {
            return;
        }

        int errno = Marshal.GetLastPInvokeError();
        if (errno == 16 && umount2(target, MntDetach) == 0) // EBUSY
        {
            return;
        }

        throw new IOException($"unmounting {target} failed: {Marshal.GetPInvokeErrorMessage(errno == 16 ? Marshal.GetLastPInvokeError() : errno)}");
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mount(string? source, string target, string? fstype, nuint flags, string? data);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int umount2(string target, int flags);
}
