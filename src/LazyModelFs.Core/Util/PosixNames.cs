using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Util;

/// <summary>
/// Names as the kernel has them: bytes. .NET decodes file names as UTF-8 and replaces bytes that are
/// not UTF-8 with U+FFFD, so a name such as <c>model-\xff.bin</c> comes back as a path that names no
/// file, and a symlink target as a different string. The importer lists directories and reads links
/// through these calls so it can tell such names apart and report them (issue 11, item 15).
/// </summary>
public static partial class Posix
{
    private const int AtEmptyPath = 0x1000;
    private const int AtEaccess = 0x200;

    /// <summary>access(2) modes.</summary>
    public const int R_OK = 4, W_OK = 2;

    /// <summary>The names in a directory, as bytes, without "." and "..".</summary>
    /// <exception cref="IOException">The directory cannot be opened or read (the message says why).</exception>
    public static unsafe List<byte[]> ReadDirectory(string path)
    {
        nint dir = opendir(path);
        if (dir == 0)
        {
            throw Failed("cannot read directory", path, Marshal.GetLastPInvokeError());
        }

        var names = new List<byte[]>();
        try
        {
            while (true)
            {
                Marshal.SetLastPInvokeError(0);
                byte* d = readdir(dir);
                if (d == null)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    return errno == 0 ? names : throw Failed("cannot read directory", path, errno);
                }

                // struct dirent (glibc and musl, 64-bit): d_ino u64 @0, d_off i64 @8, d_reclen u16 @16, d_type u8 @18, d_name @19.
                // SAFETY: readdir returned a record the C library owns until the next readdir/closedir; d_name is NUL-terminated within d_reclen.
                var name = MemoryMarshal.CreateReadOnlySpanFromNullTerminated(d + 19);
                if (!(name.SequenceEqual("."u8) || name.SequenceEqual(".."u8)))
                {
                    names.Add(name.ToArray());
                }
            }
        }
        finally
        {
            _ = closedir(dir);
        }
    }

    /// <summary>The target of a symlink, as the bytes readlink(2) returns.</summary>
    public static unsafe byte[] ReadLink(string path)
    {
        byte* buf = stackalloc byte[4096];
        // SAFETY: readlink writes at most 4096 bytes (PATH_MAX) into buf and returns how many.
        nint n = readlink(path, buf, 4096);
        if (n < 0)
        {
            throw Failed("cannot read symlink", path, Marshal.GetLastPInvokeError());
        }

        return new ReadOnlySpan<byte>(buf, (int)n).ToArray();
    }

    /// <summary>fstat(2) of an open file, through statx(AT_EMPTY_PATH).</summary>
    public static unsafe PosixStat FStat(SafeFileHandle handle)
    {
        byte* buf = stackalloc byte[256];
        bool added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            // SAFETY: buf is 256 bytes, the size of struct statx; the descriptor stays open while referenced.
            if (statx((int)handle.DangerousGetHandle(), "", AtEmptyPath, StatxBasicStats, buf) != 0)
            {
                throw Failed("cannot stat", "open file", Marshal.GetLastPInvokeError());
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }

        return FromStatx(buf);
    }

    /// <summary>realpath(3): the path with every symbolic link, "." and ".." resolved; the path must exist (IOException otherwise).</summary>
    public static string RealPath(string path) =>
        TryRealPath(path, out int errno) ?? throw new IOException($"cannot resolve '{ShowName(path)}': {Marshal.GetPInvokeErrorMessage(errno)}", errno);

    /// <summary>realpath(3), or null when the path does not resolve.</summary>
    public static string? TryRealPath(string path) => TryRealPath(path, out _);

    private static unsafe string? TryRealPath(string path, out int errno)
    {
        errno = 0;
        byte* p = realpath(path, null);
        if (p == null)
        {
            errno = Marshal.GetLastPInvokeError();
            return null;
        }

        try
        {
            // SAFETY: realpath returned a NUL-terminated string it allocated with malloc; freed below.
            return System.Text.Encoding.UTF8.GetString(MemoryMarshal.CreateReadOnlySpanFromNullTerminated(p));
        }
        finally
        {
            free(p);
        }
    }

    /// <summary>faccessat(2) with the effective ids: 0 when allowed, else the errno (EACCES, EROFS, ENOENT…).</summary>
    public static int Access(string path, int mode) =>
        faccessat(AtFdCwd, path, mode, AtEaccess) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>
    /// A name shown to a person: UTF-8 text as is, except control characters and backslash; bytes
    /// that are not UTF-8 and control characters as <c>\xNN</c>. Safe to print on a terminal.
    /// </summary>
    public static string ShowName(ReadOnlySpan<byte> name)
    {
        // Text goes through the one terminal escaper (TerminalText); only bytes that are not UTF-8,
        // which a string cannot hold, are written here, as \xNN (so a backslash is doubled).
        var sb = new StringBuilder(name.Length + 8);
        var text = new StringBuilder();
        while (!name.IsEmpty)
        {
            var status = System.Text.Rune.DecodeFromUtf8(name, out var rune, out int used);
            if (status != System.Buffers.OperationStatus.Done)
            {
                sb.Append(TerminalText.Safe(text.ToString()));
                text.Clear();
                sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\x{name[0]:x2}");
                name = name[1..];
                continue;
            }

            text.Append(rune.Value == '\\' ? @"\\" : rune.ToString());
            name = name[used..];
        }

        return sb.Append(TerminalText.Safe(text.ToString())).ToString();
    }

    /// <summary><see cref="ShowName(ReadOnlySpan{byte})"/> of a path held as a string.</summary>
    public static string ShowName(string path) => ShowName(Encoding.UTF8.GetBytes(path));

    private static IOException Failed(string what, string path, int errno) =>
        new($"{what} '{ShowName(path)}': {Marshal.GetPInvokeErrorMessage(errno)}", errno);

    private static unsafe PosixStat FromStatx(byte* buf) => new(
        *(ushort*)(buf + 28),
        *(uint*)(buf + 20),
        *(uint*)(buf + 24),
        *(long*)(buf + 40),
        (*(long*)(buf + 112) * 1_000_000_000L) + *(uint*)(buf + 120),
        *(ulong*)(buf + 32),
        ((ulong)*(uint*)(buf + 136) << 32) | *(uint*)(buf + 140),
        *(uint*)(buf + 16));

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint opendir(string path);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial byte* readdir(nint dir);

    [LibraryImport("libc")]
    private static partial int closedir(nint dir);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial nint readlink(string path, byte* buf, nint size);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial byte* realpath(string path, byte* resolved);

    [LibraryImport("libc")]
    private static unsafe partial void free(void* p);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int faccessat(int dirfd, string path, int mode, int flags);
}
