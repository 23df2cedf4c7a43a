using System.Diagnostics;
using System.Globalization;
using LazyModelFs.Fuse;
using LazyModelFs.Util;

namespace LazyModelFs.Vfs;

/// <summary>A daemon to launch: the whole `lmfs mount` command line (executable first, no --background), its resolved mount point and log file.</summary>
public sealed record MountLaunch(IReadOnlyList<string> Command, string MountPoint, string LogFile)
{
    /// <summary>Variables added to the daemon's environment: secrets go here, never into <see cref="Command"/> (every user can read a command line in /proc/PID/cmdline).</summary>
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();

    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>How a launch ended: <see cref="ExitCode"/> 0 when the mount serves, else the daemon's documented exit code (docs/operations.md) with its error and hint, or 1 when it died or hung without saying why.</summary>
public sealed record LaunchResult(int ExitCode, string? Message, string? Hint, int Pid)
{
    public bool Ready => ExitCode == 0;
}

/// <summary>
/// Starts an `lmfs mount` daemon and waits until it serves or gives up: the one launcher behind
/// `lmfs mount --background`, the bench's mount and the CSI plugin's staged volumes.
///
/// The daemon runs in its own session (setsid -f), not as a child the caller must keep: it outlives
/// the caller (a restarted CSI plugin finds it in the mount table and the registry). Its output is
/// appended to the log file by name, which <see cref="PrivateFiles.PrepareLogFile"/> checked first.
/// The caller learns the outcome from the daemon's launch record (<see cref="MountRegistry"/>), never
/// from its output: ready (and the kernel's mount table shows a live fuse.lazymodelfs mount whose
/// registry record names the new pid: a dead mount left by a killed daemon has the same type until
/// the new one replaces it), failed with its exit code and message, or the process gone without a
/// word (then the log says why, and the result names it).
/// </summary>
public static class MountLauncher
{
    private const string FsType = "fuse.lazymodelfs";

    public static async Task<LaunchResult> StartAsync(MountLaunch launch, CancellationToken ct)
    {
        string log = Path.GetFullPath(launch.LogFile);
        PrivateFiles.PrepareLogFile(log); // the daemon's shell appends to it by name: no link, nobody else's file
        _ = MountRegistry.RecordDirectory; // where the daemon will report: refused here if it cannot be trusted
        string id = MountRegistry.NewLaunchId();

        // sh prints its pid (the daemon's, after exec) on the pipe, then exec points stdout at the log.
        var psi = new ProcessStartInfo("setsid") { UseShellExecute = false, RedirectStandardOutput = true };
        foreach (var a in new[] { "-f", "sh", "-c", "echo $$; exec \"$0\" \"$@\" </dev/null >>\"$LMFS_LOG\" 2>&1" }.Concat(launch.Command))
        {
            psi.ArgumentList.Add(a);
        }

        foreach (var (k, v) in launch.Environment)
        {
            psi.Environment[k] = v;
        }

        psi.Environment["LMFS_LOG"] = log;
        psi.Environment[MountRegistry.LaunchVariable] = id;
        int pid;
        try
        {
            using var setsid = Process.Start(psi) ?? throw new LmfsException("cannot start the mount daemon", "check that setsid (util-linux) is installed");
            string? line = await setsid.StandardOutput.ReadLineAsync(ct).ConfigureAwait(false);
            await setsid.WaitForExitAsync(ct).ConfigureAwait(false);
            if (!int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out pid))
            {
                throw new LmfsException($"the mount daemon did not start (setsid exited {setsid.ExitCode})", $"see {log}; check that setsid (util-linux) and sh are installed");
            }
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new LmfsException($"cannot start the mount daemon: {ex.Message}", "check that setsid (util-linux) is installed", 1, ex);
        }

        try
        {
            return await WaitAsync(launch, id, pid, log, ct).ConfigureAwait(false);
        }
        finally
        {
            MountRegistry.RemoveLaunch(id);
        }
    }

    private static async Task<LaunchResult> WaitAsync(MountLaunch launch, string id, int pid, string log, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            bool alive = Alive(pid); // before the record: a report written just before the exit is then seen below
            var state = MountRegistry.ReadLaunch(id);
            if (state is { Phase: LaunchPhase.Failed })
            {
                return new LaunchResult(state.ExitCode, state.Message, state.Hint, pid);
            }

            if (state is { Phase: LaunchPhase.Ready } && Serving(launch.MountPoint, pid))
            {
                return new LaunchResult(0, null, null, pid);
            }

            if (!alive)
            {
                return new LaunchResult(1, $"the mount daemon (pid {pid}) ended before the mount at {launch.MountPoint} was ready, without saying why", $"see its log, {log}", pid);
            }

            if (clock.Elapsed > launch.Timeout)
            {
                // Never leave a daemon behind that may still mount later: a supervisor that retries (the
                // kubelet, a systemd unit) would otherwise pile them up. SIGTERM unmounts, if it got that far.
                bool stopped = false;
                try
                {
                    using var p = Process.GetProcessById(pid);
                    stopped = Posix.Terminate(pid);
                    stopped = stopped && p.WaitForExit(TimeSpan.FromSeconds(10));
                }
                catch (ArgumentException)
                {
                    stopped = true; // ended meanwhile
                }

                return new LaunchResult(1, $"the mount at {launch.MountPoint} did not come up within {launch.Timeout.TotalSeconds:0} s; the daemon (pid {pid}) {(stopped ? "was stopped" : "did not stop when asked (SIGTERM)")}", $"see its log, {log}", pid);
            }

            await Task.Delay(50, ct).ConfigureAwait(false);
        }
    }

    /// <summary>The mount at <paramref name="target"/> is ours and answers: the kernel lists it, the registry names <paramref name="pid"/>, statfs works.</summary>
    private static bool Serving(string target, int pid) =>
        FuseMount.MountTypeAt(target) == FsType && MountRegistry.Load(target)?.Pid == pid && FuseMount.IsLive(target);

    /// <summary>Whether <paramref name="pid"/> runs (a zombie has ended: its parent, not us, reaps it).</summary>
    public static bool Alive(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            int close = stat.LastIndexOf(')');
            return close < 0 || close + 2 >= stat.Length || stat[close + 2] is not ('Z' or 'X');
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
