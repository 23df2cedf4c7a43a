using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace LazyModelFs.Vfs;

/// <summary>
/// A small file per live mount (<c>/run/lmfs/mounts/&lt;hash&gt;.json</c>) so `lmfs warmup MOUNTPOINT`,
/// `lmfs bench MOUNTPOINT/…` and `lmfs cache` can find the mount's volume, cache directory, daemon and
/// control socket (<c>&lt;hash&gt;.sock</c> beside it, <see cref="MountControl"/>). It holds no secrets: the
/// metadata URL is stored without credentials (a password then comes from LMFS_REDIS_PASSWORD).
/// </summary>
public sealed record MountState(string MountPoint, string MetaUrl, string CacheDir, int Pid)
{
    private static string Dir => Directory.Exists("/run") && IsWritable("/run") ? "/run/lmfs/mounts" : Path.Combine(Path.GetTempPath(), "lmfs-mounts");

    private static string BaseFor(string mountPoint) => Path.Combine(Dir, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Path.GetFullPath(mountPoint))))[..16]);

    private static string FileFor(string mountPoint) => BaseFor(mountPoint) + ".json";

    /// <summary>The mount's control socket (owner-only).</summary>
    public static string ControlSocketFor(string mountPoint) => BaseFor(mountPoint) + ".sock";

    public string ControlSocket => ControlSocketFor(MountPoint);

    /// <summary>The log file of a background mount at <paramref name="mountPoint"/>: <c>DIR/mount-&lt;path with non-alphanumerics as _&gt;.log</c>.</summary>
    public static string LogFileFor(string directory, string mountPoint) =>
        Path.Combine(directory, "mount-" + string.Concat(mountPoint.Trim('/').Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_')) + ".log");

    public void Save()
    {
        try
        {
            Directory.CreateDirectory(Dir);
            File.WriteAllText(FileFor(MountPoint), JsonSerializer.Serialize(new Dictionary<string, string> { ["mountPoint"] = MountPoint, ["metaUrl"] = MetaUrl, ["cacheDir"] = CacheDir, ["pid"] = Pid.ToString(CultureInfo.InvariantCulture) }));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"warning: cannot record the mount in {Dir}: {ex.Message}");
        }
    }

    public static MountState? Load(string mountPoint)
    {
        try
        {
            var d = JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(FileFor(mountPoint)));
            return d is null ? null : new MountState(d["mountPoint"], d["metaUrl"], d["cacheDir"], int.Parse(d["pid"], CultureInfo.InvariantCulture));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or FormatException)
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
                File.Delete(f);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }
    }

    private static bool IsWritable(string dir)
    {
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "lmfs"));
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
