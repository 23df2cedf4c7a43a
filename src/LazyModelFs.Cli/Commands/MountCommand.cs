using System.CommandLine;
using System.CommandLine.Parsing;
using LazyModelFs.Fuse;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Cli.Commands;

internal static class MountCommand
{
    private const string FsType = "fuse.lazymodelfs";

    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var mountPoint = new Argument<string>("MOUNTPOINT") { Description = "An existing empty directory (a symbolic link to one is resolved)" };
        var background = new Option<bool>("--background", "-d") { Description = "Return once the mount is serving; the daemon keeps running and logs to --log-file" };
        var logFile = new Option<string?>("--log-file") { Description = "Log file of a --background mount (default /var/log/lmfs/mount-<dir>.log for root, else in the private runtime directory)" };
        var debug = new Option<bool>("--debug") { Description = "Log every FUSE request and reply" };
        var nonEmpty = new Option<bool>("--nonempty") { Description = "Mount even if MOUNTPOINT is not empty (what it holds is hidden while the volume is mounted)" };
        var noExec = new Option<bool>("--noexec") { Description = "Nothing on the mount can be executed (mount -o noexec)" };
        var metrics = Common.MetricsOption("this mount's reads, tiers, fetch latency, cache and errors");
        var peerListen = new Option<string?>("--peer-listen") { Description = "Join the volume's cache group and serve this node's chunks to it on ADDR:PORT (needs the peer secret: LMFS_PEER_SECRET or --peer-secret-file)", HelpName = "ADDR:PORT" };
        var peerAdvertise = new Option<string?>("--peer-advertise") { Description = "HOST:PORT the other members reach this node at, when it differs from --peer-listen (which must then not be a wildcard address)", HelpName = "HOST:PORT" };
        var peers = new Option<string?>("--peers") { Description = "The cache group's members, HOST:PORT,... (a static list, the same on every member, this node included as the others reach it): chunks are asked of their owner before the object store", HelpName = "HOST:PORT,..." };
        var peerSecretFile = new Option<string?>("--peer-secret-file") { Description = "File holding the volume's peer secret (its first line; chmod 600); default: LMFS_PEER_SECRET", HelpName = "FILE" };
        var opts = new MountOptionsBinder();
        var creds = new Common.Credentials();
        var cmd = new Command("mount", "Mount a volume read-only. Reads fetch only the chunks they touch, with readahead and\nsafetensors-aware prefetch, and keep them in the local cache; a second start reads local disk.\nRuns in the foreground until unmounted (lmfs umount, Ctrl-C, SIGTERM) unless --background.\n\nExamples:\n  lmfs mount sqlite:///var/lib/lmfs/meta.db /models\n  lmfs mount redis://10.0.0.5:6379/1 /models --background --cache-dir /nvme/lmfs --allow-other\n  lmfs mount sqlite:///var/lib/lmfs/meta.db /models --background --metrics 127.0.0.1:9567")
        {
            meta, mountPoint, background, logFile, debug, nonEmpty, noExec, metrics, peerListen, peerAdvertise, peers, peerSecretFile,
        };
        opts.AddTo(cmd);
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            MountRegistry.ReportStarting(); // a daemon that MountLauncher started: its pid, before anything can fail
            // The kernel's mount table names the resolved path: every check and record below uses it.
            string target = FuseMount.ResolveMountPoint(p.GetValue(mountPoint)!);
            var (peerOptions, listenAt) = PeerGroup(p.GetValue(peerListen), p.GetValue(peerAdvertise), p.GetValue(peers), p.GetValue(peerSecretFile));
            var mountOptions = opts.Read(p) with { NonEmpty = p.GetValue(nonEmpty), NoExec = p.GetValue(noExec), Metrics = p.GetValue(metrics), Peers = peerOptions, PeerListen = listenAt }; // validate before anything starts
            string metaUrl = p.GetValue(meta)!;
            MountHost.CheckMountPoint(target, mountOptions.NonEmpty); // bad input answers exit 2 before anything reaches the network
            _ = MountRegistry.RecordDirectory; // a runtime directory that cannot be trusted stops the mount here, not after it
            if (p.GetValue(background))
            {
                // Refuse here, with the documented exit code, what the daemon would refuse: metadata
                // unreachable (4), the store unreadable (5).
                using (var v = await Volume.OpenAsync(metaUrl, creds.Read(p), ct).ConfigureAwait(false))
                {
                    await v.Store.CheckReadableAsync(ct).ConfigureAwait(false);
                }

                return await StartBackgroundAsync(p, meta, mountPoint, background, opts.AllowOther, target, p.GetValue(logFile), ct).ConfigureAwait(false);
            }

            if (Redact.HasCredentials(metaUrl))
            {
                await Console.Error.WriteLineAsync("warning: the password in the metadata URL is visible to every user (ps, /proc/PID/cmdline) while this mount runs; give it in LMFS_REDIS_PASSWORD instead (--background does that for its daemon)").ConfigureAwait(false);
            }

            using var loggers = Logs.Create(p.GetValue(debug) ? LogLevel.Debug : LogLevel.Information);
            var log = loggers.CreateLogger("lmfs");
            using var volume = await Volume.OpenAsync(metaUrl, creds.Read(p), ct).ConfigureAwait(false);

            // A store that refuses us (wrong keys, no bucket, unreadable directory) fails the mount now,
            // not every cold read later (issue 11, item 7).
            await volume.Store.CheckReadableAsync(ct).ConfigureAwait(false);
            using var mount = MountHost.Start(volume, target, mountOptions with { ControlSocket = MountRegistry.ControlSocketFor(target) }, loggers);
            MountRegistry.Save(new MountRecord(target, Redact.StripCredentials(metaUrl), Path.GetFullPath(mountOptions.CacheDir), Environment.ProcessId));
            MountRegistry.ReportReady(); // after the record: a launcher that reads ready finds the record and the control socket
            log.LogInformation(
                "mounted volume '{Name}' ({Meta}) at {Target}: chunks {Chunk}, cache {Cache} ({CacheSize}), memory {Buffer}, prefetch {Prefetch}; {Access}",
                volume.Settings.Name,
                Redact.Url(metaUrl),
                target,
                Sizes.Format(volume.Settings.ChunkSize),
                mountOptions.CacheSize > 0 ? mountOptions.CacheDir : "off",
                Sizes.Format(mountOptions.CacheSize),
                Sizes.Format(mountOptions.BufferSize),
                mountOptions.Vfs.Prefetch,
                mountOptions.AllowOther ? "other users may use it (--allow-other; file owners and modes apply)" : PrivateMountNote(target));

            // Ctrl-C / SIGTERM cancel the token: unmount (lazily; open files finish, then the session ends).
            using var reg = ct.Register(() => ThreadPool.QueueUserWorkItem(_ => mount.Unmount()));
            await mount.Completion.ConfigureAwait(false);

            // A daemon that started at this path after ours died (a remount, the CSI plugin healing a
            // staged volume) owns the record and control socket now: leave them.
            if (MountRegistry.Load(target) is not { } record || record.Pid == Environment.ProcessId)
            {
                MountRegistry.Remove(target);
            }

            log.LogInformation("unmounted {Target}", target);
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// Starts the same command without --background through <see cref="MountLauncher"/> and returns
    /// once the mount serves, or with the daemon's exit code and error. The daemon gets the resolved
    /// mount point and the metadata URL without its password, which goes through its environment
    /// instead: a command line is readable by every user (/proc/PID/cmdline) for as long as the
    /// daemon runs.
    /// </summary>
    private static async Task<int> StartBackgroundAsync(ParseResult p, Argument<string> meta, Argument<string> mountPoint, Option<bool> background, Option<bool> allowOther, string target, string? logFile, CancellationToken ct)
    {
        logFile ??= MountRegistry.LogFileFor(MountRegistry.DefaultLogDirectory, target);
        var (url, password) = Redact.SplitPassword(p.GetValue(meta)!);
        var metaToken = p.GetResult(meta)?.Tokens is [var m0, ..] ? m0 : null;
        var mountToken = p.GetResult(mountPoint)?.Tokens is [var t0, ..] ? t0 : null;
        var skip = new HashSet<Token>(ReferenceEqualityComparer.Instance);
        if (p.GetResult(background) is { } b)
        {
            if (b.IdentifierToken is { } id)
            {
                skip.Add(id);
            }

            skip.UnionWith(b.Tokens);
        }

        var childArgs = p.Tokens.Where(t => !skip.Contains(t))
            .Select(t => ReferenceEquals(t, metaToken) ? url : ReferenceEquals(t, mountToken) ? target : t.Value);
        var env = new Dictionary<string, string>();
        if (password is not null)
        {
            env["LMFS_REDIS_PASSWORD"] = password; // the URL's password wins, as it would in the URL
        }

        var r = await MountLauncher.StartAsync(new MountLaunch(SelfExec.Command(childArgs), target, logFile) { Environment = env }, ct).ConfigureAwait(false);
        if (!r.Ready)
        {
            throw new LmfsException(r.Message ?? "the background mount failed", r.Hint, r.ExitCode); // already redacted and escaped: printing them again changes nothing
        }

        Console.WriteLine($"mounted {target} in the background; log: {logFile}");
        if (p.GetValue(allowOther) is false)
        {
            Console.WriteLine(PrivateMountNote(target));
        }

        return 0;
    }

    /// <summary>
    /// What a mount without --allow-other says when it comes up (issue 18, item 12). The kernel lets
    /// no other user into such a mount (fuse_allow_current_process, fs/fuse/dir.c) and answers them
    /// EACCES itself: the daemon never sees those requests, so this line is the only hint lmfs can give.
    /// </summary>
    /// <summary>
    /// The cache group of <c>--peer-listen</c>, <c>--peer-advertise</c>, <c>--peers</c> (issue 15), checked
    /// before anything starts (exit 2): none of them, no group; any of them, the peer secret is required.
    /// </summary>
    internal static (Peer.PeerOptions? Options, System.Net.IPEndPoint? Listen) PeerGroup(string? listen, string? advertise, string? members, string? secretFile)
    {
        if (listen is null && members is null)
        {
            if (advertise is not null || secretFile is not null)
            {
                throw new LmfsException("--peer-advertise and --peer-secret-file go with --peer-listen or --peers", "give --peer-listen ADDR:PORT to join a cache group, --peers HOST:PORT,... to ask one", 2);
            }

            return (null, null);
        }

        if (listen is null && advertise is not null)
        {
            throw new LmfsException("--peer-advertise goes with --peer-listen: a node that only asks (--peers alone) is reached by nobody", "add --peer-listen ADDR:PORT, or leave out --peer-advertise", 2);
        }

        var at = listen is null ? null : LazyModelFs.Metrics.MetricsServer.ParseAddress(listen, "--peer-listen");
        string? self = advertise ?? listen;
        if (advertise is not null)
        {
            Peer.PeerProtocol.ParseMember(advertise, "--peer-advertise");
        }
        else if (at is not null && (at.Address.Equals(System.Net.IPAddress.Any) || at.Address.Equals(System.Net.IPAddress.IPv6Any)))
        {
            throw new LmfsException($"--peer-listen {at} is every address of this host: the other members need one to reach it", "add --peer-advertise HOST:PORT (this node's address on the group's network)", 2);
        }

        var list = (members ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        foreach (var m in list)
        {
            Peer.PeerProtocol.ParseMember(m, "--peers");
        }

        // A member's address is its id: this node must be listed exactly as it is reached, or it would count
        // twice (and ask itself for the chunks its other spelling owns).
        if (at is not null && list.Count > 0 && !list.Contains(self!, StringComparer.Ordinal))
        {
            throw new LmfsException($"--peers does not list this node as '{TerminalText.Excerpt(self!, 80)}'", "list every member, this one included, spelled the same on every node (give --peer-advertise HOST:PORT if the others reach it by another name)", 2);
        }

        var secret = Peer.PeerProtocol.LoadSecret(secretFile);
        return (new Peer.PeerOptions { Secret = secret, Self = at is null ? null : self, Members = list }, at);
    }

    private static string PrivateMountNote(string target) =>
        $"only uid {Posix.EUid} can use {target}: the kernel refuses every other user (Permission denied); to share it, mount with --allow-other"
        + (Environment.IsPrivilegedProcess ? "" : " (as a user other than root that needs user_allow_other in /etc/fuse.conf)");
}

internal static class UmountCommand
{
    public static Command Build()
    {
        var mountPoint = new Argument<string>("MOUNTPOINT");
        var force = new Option<bool>("--force") { Description = "Detach whatever is mounted at MOUNTPOINT, even if it is not an lmfs mount" };
        var cmd = new Command("umount", "Unmount an lmfs mount, live or dead (a killed daemon leaves a mount that says\n'Transport endpoint is not connected'). Open files get the daemon's grace period (5 s), then its connection is aborted.\nOther filesystems are left alone unless --force.\n\nExample:\n  lmfs umount /models") { mountPoint, force };
        cmd.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            string given = p.GetValue(mountPoint)!;
            string target = FuseMount.ResolveMountPoint(given);
            string shown = target == Path.GetFullPath(given) ? target : $"{target} (where {given} leads)";
            var type = FuseMount.MountTypeAt(target);
            if (type is null && MountRegistry.Load(target) is not null)
            {
                // The mount is gone but its record was left (a daemon killed, then the mount detached by hand): `lmfs mounts` lists it as stale until this.
                MountRegistry.Remove(target);
                Console.WriteLine($"nothing is mounted at {target}; removed its stale mount record");
                return Task.FromResult(0);
            }

            if (type is null)
            {
                throw new LmfsException($"nothing is mounted at {shown}", "check the path (see /proc/mounts)", 2);
            }

            if (type != "fuse.lazymodelfs" && !p.GetValue(force))
            {
                throw new LmfsException($"{shown} is a {type} mount, not an lmfs mount; leaving it alone", type.StartsWith("fuse", StringComparison.Ordinal) ? $"use fusermount3 -u {target}, or lmfs umount --force {target}" : "use umount(8) for other filesystems", 2);
            }

            var before = FuseMount.MountAt(target);
            FuseMount.UnmountPath(target, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            if (FuseMount.MountAt(target) is { } after && after.Device == before?.Device)
            {
                throw new LmfsException($"could not unmount {shown}", Environment.IsPrivilegedProcess ? "see dmesg" : "only root or the user who mounted it can unmount it", 1);
            }

            MountRegistry.Remove(target);
            Console.WriteLine($"unmounted {target}");
            return Task.FromResult(0);
        }));
        return cmd;
    }
}
