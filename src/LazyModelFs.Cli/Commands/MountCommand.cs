using System.CommandLine;
using System.Diagnostics;
using LazyModelFs.Fuse;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Cli.Commands;

internal static class MountCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var mountPoint = new Argument<string>("MOUNTPOINT") { Description = "An existing empty directory" };
        var background = new Option<bool>("--background", "-d") { Description = "Return once the mount is serving; the daemon keeps running and logs to --log-file" };
        var logFile = new Option<string?>("--log-file") { Description = "Log file of a --background mount (default /var/log/lmfs/mount-<dir>.log for root, else in the private runtime directory)" };
        var debug = new Option<bool>("--debug") { Description = "Log every FUSE request and reply" };
        var opts = new MountOptionsBinder();
        var creds = new Common.Credentials();
        var cmd = new Command("mount", "Mount a volume read-only. Reads fetch only the chunks they touch, with readahead and\nsafetensors-aware prefetch, and keep them in the local cache; a second start reads local disk.\nRuns in the foreground until unmounted (lmfs umount, Ctrl-C, SIGTERM) unless --background.\n\nExamples:\n  lmfs mount sqlite:///var/lib/lmfs/meta.db /models\n  lmfs mount redis://10.0.0.5:6379/1 /models --background --cache-dir /nvme/lmfs --allow-other")
        {
            meta, mountPoint, background, logFile, debug,
        };
        opts.AddTo(cmd);
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            string target = Path.GetFullPath(p.GetValue(mountPoint)!);
            var mountOptions = opts.Read(p); // validate before anything starts
            LmfsMount.CheckMountPoint(target);
            _ = MountState.RecordDirectory; // a runtime directory that cannot be trusted stops the mount here, not after it
            if (p.GetValue(background))
            {
                // Refuse here, with the documented exit code, what the daemon would refuse: metadata
                // unreachable (4), the store unreadable (5).
                using (var v = await Volume.OpenAsync(p.GetValue(meta)!, creds.Read(p), ct).ConfigureAwait(false))
                {
                    await v.Store.CheckReadableAsync(ct).ConfigureAwait(false);
                }

                return await StartBackgroundAsync(target, p.GetValue(logFile), ct).ConfigureAwait(false);
            }

            using var loggers = Logs.Create(p.GetValue(debug) ? LogLevel.Debug : LogLevel.Information);
            var log = loggers.CreateLogger("lmfs");
            string metaUrl = p.GetValue(meta)!;
            using var volume = await Volume.OpenAsync(metaUrl, creds.Read(p), ct).ConfigureAwait(false);

            // A store that refuses us (wrong keys, no bucket, unreadable directory) fails the mount now,
            // not every cold read later (issue 11, item 7).
            await volume.Store.CheckReadableAsync(ct).ConfigureAwait(false);
            using var mount = LmfsMount.Start(volume, target, mountOptions with { ControlSocket = MountState.ControlSocketFor(target) }, loggers);
            new MountState(target, Redact.StripCredentials(metaUrl), Path.GetFullPath(mountOptions.CacheDir), Environment.ProcessId).Save();
            log.LogInformation(
                "mounted volume '{Name}' ({Meta}) at {Target}: chunks {Chunk}, cache {Cache} ({CacheSize}), memory {Buffer}, prefetch {Prefetch}",
                volume.Settings.Name,
                Redact.Url(metaUrl),
                target,
                Sizes.Format(volume.Settings.ChunkSize),
                mountOptions.CacheSize > 0 ? mountOptions.CacheDir : "off",
                Sizes.Format(mountOptions.CacheSize),
                Sizes.Format(mountOptions.BufferSize),
                mountOptions.Vfs.Prefetch);

            // Ctrl-C / SIGTERM cancel the token: unmount (lazily; open files finish, then the session ends).
            using var reg = ct.Register(() => ThreadPool.QueueUserWorkItem(_ => mount.Session.Unmount()));
            await mount.Session.Completion.ConfigureAwait(false);
            MountState.Remove(target);
            log.LogInformation("unmounted {Target}", target);
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// Starts the same command without --background in a new session (setsid), its output appended
    /// to the log file, and returns once the mount answers — or fails with the daemon's error.
    /// </summary>
    private static async Task<int> StartBackgroundAsync(string target, string? logFile, CancellationToken ct)
    {
        logFile ??= MountState.LogFileFor(MountState.DefaultLogDirectory, target);
        PrivateFiles.PrepareLogFile(logFile); // the daemon's shell appends to it by name: no link, nobody else's file
        long logStart = File.Exists(logFile) ? new FileInfo(logFile).Length : 0;
        int? previousPid = MountState.Load(target)?.Pid;

        var args = SelfExec.Arguments(Environment.GetCommandLineArgs().Skip(1).Where(a => a is not ("--background" or "-d")));
        string exe = Environment.ProcessPath!;

        var psi = new ProcessStartInfo("setsid") { UseShellExecute = false };
        foreach (var a in new[] { "-f", "sh", "-c", "exec \"$0\" \"$@\" </dev/null >>\"$LMFS_LOG\" 2>&1", exe }.Concat(args))
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["LMFS_LOG"] = Path.GetFullPath(logFile);
        using (var p = Process.Start(psi) ?? throw new LmfsException("cannot start the background mount", "check that setsid (util-linux) is installed"))
        {
            await p.WaitForExitAsync(ct).ConfigureAwait(false);
        }

        // Done when the mount at the target is served by the new daemon: a dead mount left there by a
        // killed daemon has the same type in the mount table until the new daemon replaces it.
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            if (FuseMount.MountTypeAt(target) == "fuse.lazymodelfs" && MountState.Load(target) is { } st && st.Pid != previousPid && Directory.Exists($"/proc/{st.Pid}") && FuseMount.IsLive(target))
            {
                Console.WriteLine($"mounted {target} in the background; log: {logFile}");
                return 0;
            }

            string tail = ReadFrom(logFile, logStart);
            int err = tail.IndexOf("error: ", StringComparison.Ordinal);
            if (err >= 0)
            {
                await Console.Error.WriteAsync(tail[err..]).ConfigureAwait(false);
                return 1;
            }

            await Task.Delay(100, ct).ConfigureAwait(false);
        }

        throw new LmfsException($"the background mount of {target} did not come up within 60 s", $"see {logFile}");
    }

    private static string ReadFrom(string path, long offset)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            f.Seek(Math.Min(offset, f.Length), SeekOrigin.Begin);
            return new StreamReader(f).ReadToEnd();
        }
        catch (FileNotFoundException)
        {
            return "";
        }
    }
}

internal static class UmountCommand
{
    public static Command Build()
    {
        var mountPoint = new Argument<string>("MOUNTPOINT");
        var cmd = new Command("umount", "Unmount an lmfs mount, live or dead (a killed daemon leaves a mount that says\n'Transport endpoint is not connected'). Lazy: open files finish first.\n\nExample:\n  lmfs umount /models") { mountPoint };
        cmd.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            string target = Path.GetFullPath(p.GetValue(mountPoint)!);
            var type = FuseMount.MountTypeAt(target);
            if (type is null)
            {
                throw new LmfsException($"nothing is mounted at {target}", "check the path (see /proc/mounts)", 2);
            }

            if (!type.StartsWith("fuse", StringComparison.Ordinal))
            {
                throw new LmfsException($"{target} is a {type} mount, not an lmfs mount", "use umount(8) for other filesystems", 2);
            }

            FuseMount.UnmountPath(target, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            MountState.Remove(target);
            Console.WriteLine($"unmounted {target}");
            return Task.FromResult(0);
        }));
        return cmd;
    }
}
