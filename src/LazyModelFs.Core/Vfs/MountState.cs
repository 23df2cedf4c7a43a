using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LazyModelFs.Util;

namespace LazyModelFs.Vfs;

/// <summary>
/// A small file per live mount (<c>RUNTIME/mounts/&lt;hash&gt;.json</c>) so `lmfs warmup MOUNTPOINT`,
/// `lmfs bench MOUNTPOINT/…` and `lmfs cache` can find the mount's volume, cache directory, daemon and
/// control socket (<c>&lt;hash&gt;.sock</c> beside it, <see cref="MountControl"/>). It holds no secrets: the
/// metadata URL is stored without credentials (a password then comes from LMFS_REDIS_PASSWORD).
/// RUNTIME is the user's private runtime directory (root: /run/lmfs; others: $XDG_RUNTIME_DIR/lmfs…):
/// records are written, read and trusted by the rules of <see cref="PrivateFiles"/>, so no other user
/// can plant a record or redirect one (issue 11, item 13).
/// </summary>
public sealed record MountState(string MountPoint, string MetaUrl, string CacheDir, int Pid)
{
    /// <summary>Where the records and control sockets live (made and checked on every use). Throws <see cref="UnsafePathException"/> when it cannot be trusted.</summary>
    public static string RecordDirectory => PrivateFiles.EnsureDirectory(Path.Combine(PrivateFiles.RuntimeDirectory(), "mounts"));

    /// <summary>Where background-mount logs go by default: /var/log/lmfs for root, the private runtime directory for others.</summary>
    public static string DefaultLogDirectory => Posix.EUid == 0 ? "/var/log/lmfs" : PrivateFiles.RuntimeDirectory();

    private static string BaseFor(string mountPoint) => Path.Combine(RecordDirectory, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Path.GetFullPath(mountPoint))))[..16]);

    private static string FileFor(string mountPoint) => BaseFor(mountPoint) + ".json";

    /// <summary>The mount's control socket (owner-only).</summary>
    public static string ControlSocketFor(string mountPoint) => BaseFor(mountPoint) + ".sock";

    public string ControlSocket => ControlSocketFor(MountPoint);

    /// <summary>The log file of a background mount at <paramref name="mountPoint"/>: <c>DIR/mount-&lt;path with non-alphanumerics as _&gt;.log</c>.</summary>
    public static string LogFileFor(string directory, string mountPoint) =>
        Path.Combine(directory, "mount-" + string.Concat(mountPoint.Trim('/').Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_')) + ".log");

    public void Save()
    {
        string file = FileFor(MountPoint);
        try
        {
            PrivateFiles.WriteAtomic(file, JsonSerializer.Serialize(new Dictionary<string, string> { ["mountPoint"] = MountPoint, ["metaUrl"] = MetaUrl, ["cacheDir"] = CacheDir, ["pid"] = Pid.ToString(CultureInfo.InvariantCulture) }));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"warning: cannot record the mount in {file}: {ex.Message}");
        }
    }

    /// <summary>The record of the mount at <paramref name="mountPoint"/>; null when there is none (or it names another mount point).</summary>
    public static MountState? Load(string mountPoint)
    {
        string full = Path.GetFullPath(mountPoint);
        try
        {
            string? text = PrivateFiles.ReadTrusted(FileFor(full));
            var d = text is null ? null : JsonSerializer.Deserialize<Dictionary<string, string>>(text);
            return d is null || d["mountPoint"] != full ? null : new MountState(d["mountPoint"], d["metaUrl"], d["cacheDir"], int.Parse(d["pid"], CultureInfo.InvariantCulture));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or FormatException or OverflowException)
        {
            return null;
        }
    }

    public static void Remove(string mountPoint)
    {
        foreach (var f in new[] { FileFor(mountPoint), ControlSocketFor(mountPoint) })
        {
            try
            {
                File.Delete(f); // unlink(2): a link is removed, never followed
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }
    }
}
