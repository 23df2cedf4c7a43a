using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LazyModelFs.Util;

namespace LazyModelFs.Vfs;

/// <summary>What the registry knows of a live mount: its volume (metadata URL without credentials), cache directory and daemon.</summary>
public sealed record MountRecord(string MountPoint, string MetaUrl, string CacheDir, int Pid)
{
    public string ControlSocket => MountRegistry.ControlSocketFor(MountPoint);
}

/// <summary>Where a daemon started by <see cref="MountLauncher"/> stands.</summary>
public enum LaunchPhase
{
    /// <summary>Running, not serving yet.</summary>
    Starting,

    /// <summary>Mounted, listening on its control socket, recorded.</summary>
    Ready,

    /// <summary>Gave up: <see cref="LaunchState.ExitCode"/> is the code it exits with.</summary>
    Failed,
}

/// <summary>
/// A launched daemon's report. <see cref="Message"/> and <see cref="Hint"/> are what its `error:` and
/// `hint:` lines say: credentials already removed (<see cref="Redact.Text"/>) and control characters
/// already escaped (<see cref="TerminalText.Safe"/>).
/// </summary>
public sealed record LaunchState(LaunchPhase Phase, int Pid, int ExitCode = 0, string? Message = null, string? Hint = null);

/// <summary>
/// The mount registry: a small file per live mount (<c>RUNTIME/mounts/&lt;hash&gt;.json</c>) so `lmfs
/// warmup MOUNTPOINT`, `lmfs bench MOUNTPOINT/…` and `lmfs cache` can find the mount's volume, cache
/// directory, daemon and control socket (<c>&lt;hash&gt;.sock</c> beside it, <see cref="MountControl"/>);
/// and a file per daemon being launched (<c>RUNTIME/mounts/launch-&lt;id&gt;.json</c>) in which the daemon
/// says starting, ready, or failed with its exit code and error (<see cref="MountLauncher"/> waits on
/// it). A launch record is named by the launch, not the mount point: a daemon that fails because the
/// mount point is taken, or before it knows its mount point, never touches the live mount's record.
///
/// Nothing here holds secrets: the metadata URL is stored without credentials (a password then comes
/// from LMFS_REDIS_PASSWORD). RUNTIME is the user's private runtime directory (root: /run/lmfs; others:
/// $XDG_RUNTIME_DIR/lmfs…): every file is written, read and trusted by the rules of
/// <see cref="PrivateFiles"/>, so no other user can plant a record or redirect one (issue 11, item 13).
/// </summary>
public static class MountRegistry
{
    /// <summary>The environment variable through which <see cref="MountLauncher"/> names the launch record a daemon reports to.</summary>
    public const string LaunchVariable = "LMFS_MOUNT_LAUNCH";

    private static readonly object Gate = new();

    private static string? _launch = TakeLaunchId();

    /// <summary>Where the records and control sockets live (made and checked on every use). Throws <see cref="UnsafePathException"/> when it cannot be trusted.</summary>
    public static string RecordDirectory => PrivateFiles.EnsureDirectory(Path.Combine(PrivateFiles.RuntimeDirectory(), "mounts"));

    /// <summary>Where background-mount logs go by default: /var/log/lmfs for root, the private runtime directory for others.</summary>
    public static string DefaultLogDirectory => Posix.EUid == 0 ? "/var/log/lmfs" : PrivateFiles.RuntimeDirectory();

    /// <summary>Whether this process is a daemon that <see cref="MountLauncher"/> started and that has not reported ready or failed yet.</summary>
    public static bool Launched
    {
        get
        {
            lock (Gate)
            {
                return _launch is not null;
            }
        }
    }

    private static string BaseFor(string mountPoint) => Path.Combine(RecordDirectory, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Path.GetFullPath(mountPoint))))[..16]);

    private static string FileFor(string mountPoint) => BaseFor(mountPoint) + ".json";

    private static string LaunchFileFor(string id) => Path.Combine(RecordDirectory, $"launch-{id}.json");

    /// <summary>The mount's control socket (owner-only).</summary>
    public static string ControlSocketFor(string mountPoint) => BaseFor(mountPoint) + ".sock";

    /// <summary>The log file of a background mount at <paramref name="mountPoint"/>: <c>DIR/mount-&lt;path with non-alphanumerics as _&gt;.log</c>.</summary>
    public static string LogFileFor(string directory, string mountPoint) =>
        Path.Combine(directory, "mount-" + string.Concat(mountPoint.Trim('/').Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_')) + ".log");

    public static void Save(MountRecord record)
    {
        string file = FileFor(record.MountPoint);
        try
        {
            PrivateFiles.WriteAtomic(file, JsonSerializer.Serialize(new Dictionary<string, string> { ["mountPoint"] = record.MountPoint, ["metaUrl"] = record.MetaUrl, ["cacheDir"] = record.CacheDir, ["pid"] = record.Pid.ToString(CultureInfo.InvariantCulture) }));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"warning: cannot record the mount in {file}: {ex.Message}");
        }
    }

    /// <summary>The record of the mount at <paramref name="mountPoint"/>; null when there is none (or it names another mount point).</summary>
    public static MountRecord? Load(string mountPoint)
    {
        string full = Path.GetFullPath(mountPoint);
        try
        {
            var r = Parse(PrivateFiles.ReadTrusted(FileFor(full)));
            return r is null || r.MountPoint != full ? null : r;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or FormatException or OverflowException)
        {
            return null;
        }
    }

    /// <summary>
    /// Every mount record of this user (root: those in /run/lmfs), live or left by a daemon that was
    /// killed, with the time its file was written (the daemon writes it once it serves). A record
    /// that cannot be read, is damaged, or is not to be trusted is left out.
    /// </summary>
    public static IReadOnlyList<(MountRecord Record, DateTime Written)> All()
    {
        var list = new List<(MountRecord, DateTime)>();
        foreach (var f in Directory.EnumerateFiles(RecordDirectory, "*.json"))
        {
            if (Path.GetFileName(f).StartsWith("launch-", StringComparison.Ordinal))
            {
                continue;
            }

            try
            {
                if (Parse(PrivateFiles.ReadTrusted(f)) is { } r && FileFor(r.MountPoint) == f)
                {
                    list.Add((r, File.GetLastWriteTimeUtc(f)));
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or FormatException or OverflowException)
            {
            }
        }

        return list.OrderBy(x => x.Item1.MountPoint, StringComparer.Ordinal).ToList();
    }

    private static MountRecord? Parse(string? text)
    {
        var d = text is null ? null : JsonSerializer.Deserialize<Dictionary<string, string>>(text);
        return d is null ? null : new MountRecord(d["mountPoint"], d["metaUrl"], d["cacheDir"], int.Parse(d["pid"], CultureInfo.InvariantCulture));
    }

    public static void Remove(string mountPoint)
    {
        foreach (var f in new[] { FileFor(mountPoint), ControlSocketFor(mountPoint) })
        {
            TryDelete(f);
        }
    }

    /// <summary>A new launch id, for the <see cref="LaunchVariable"/> of a daemon about to start.</summary>
    public static string NewLaunchId() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));

    /// <summary>In a launched daemon: says it is running (its pid), not serving yet. Does nothing in any other process.</summary>
    public static void ReportStarting() => Report(new LaunchState(LaunchPhase.Starting, Environment.ProcessId), last: false);

    /// <summary>In a launched daemon: says it serves (after its mount record is saved). Later reports are not made.</summary>
    public static void ReportReady() => Report(new LaunchState(LaunchPhase.Ready, Environment.ProcessId), last: true);

    /// <summary>
    /// In a launched daemon: says it gives up with <paramref name="exitCode"/>; <paramref name="message"/>
    /// and <paramref name="hint"/> are its `error:` and `hint:` lines as printed (redacted and escaped).
    /// Later reports are not made.
    /// </summary>
    public static void ReportFailed(int exitCode, string message, string? hint) =>
        Report(new LaunchState(LaunchPhase.Failed, Environment.ProcessId, exitCode, message, hint), last: true);

    /// <summary>The report of launch <paramref name="id"/>; null while there is none. Throws <see cref="UnsafePathException"/> for a file that is not to be trusted.</summary>
    public static LaunchState? ReadLaunch(string id)
    {
        string? text = PrivateFiles.ReadTrusted(LaunchFileFor(id));
        if (text is null)
        {
            return null;
        }

        try
        {
            var d = JsonSerializer.Deserialize<Dictionary<string, string?>>(text)!;
            return new LaunchState(
                Enum.Parse<LaunchPhase>(d["phase"]!),
                int.Parse(d["pid"]!, CultureInfo.InvariantCulture),
                int.Parse(d["exitCode"]!, CultureInfo.InvariantCulture),
                d.GetValueOrDefault("message"),
                d.GetValueOrDefault("hint"));
        }
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or FormatException or OverflowException or ArgumentException or NullReferenceException)
        {
            throw new LmfsException($"the launch record {LaunchFileFor(id)} is damaged: {ex.Message}", "remove it and mount again", 1, ex);
        }
    }

    public static void RemoveLaunch(string id) => TryDelete(LaunchFileFor(id));

    private static void Report(LaunchState state, bool last)
    {
        lock (Gate)
        {
            if (_launch is not { } id)
            {
                return;
            }

            if (last)
            {
                _launch = null;
            }

            string? file = null;
            try
            {
                file = LaunchFileFor(id);
                PrivateFiles.WriteAtomic(file, JsonSerializer.Serialize(new Dictionary<string, string?>
                {
                    ["phase"] = state.Phase.ToString(),
                    ["pid"] = state.Pid.ToString(CultureInfo.InvariantCulture),
                    ["exitCode"] = state.ExitCode.ToString(CultureInfo.InvariantCulture),
                    ["message"] = state.Message,
                    ["hint"] = state.Hint,
                }));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or LmfsException)
            {
                // The launcher then learns of the failure from the process's exit and names the log.
                Console.Error.WriteLine($"warning: cannot report to the launcher in {file ?? "the runtime directory"}: {ex.Message}");
            }
        }
    }

    /// <summary>The launch id from the environment, removed from it so that nothing this process starts reports in its name. Only hex ids are taken: the id becomes part of a file name.</summary>
    private static string? TakeLaunchId()
    {
        string? id = Environment.GetEnvironmentVariable(LaunchVariable);
        if (id is null)
        {
            return null;
        }

        Environment.SetEnvironmentVariable(LaunchVariable, null);
        return id.Length is > 0 and <= 64 && id.All(char.IsAsciiHexDigitLower) ? id : null;
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path); // unlink(2): a link is removed, never followed
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }
}
