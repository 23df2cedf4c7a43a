using System.Diagnostics;
using LazyModelFs.Csi.Grpc;
using LazyModelFs.Fuse;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Csi;

/// <summary>
/// Starts and stops the `lmfs mount` daemons behind staged volumes. A daemon is started by
/// <see cref="MountLauncher"/>, as `lmfs mount --background` daemons are: it runs in its own session (setsid),
/// not as a child the plugin must keep, so it outlives a restart of the plugin process; a restarted
/// plugin finds it in the mount table and the mount registry (/run/lmfs/mounts, root's private
/// runtime directory). Secrets reach the daemon through its environment, never its command line
/// (which every user can read in ps) or a log. A daemon that fails says so, with its exit code, in
/// its launch record: 2 (bad input) answers INVALID_ARGUMENT, anything else INTERNAL.
/// </summary>
public sealed class StageMounter(CsiOptions options, ILogger log)
{
    /// <summary>Volume-context keys passed through as `lmfs mount` options.</summary>
    public static readonly IReadOnlyDictionary<string, string> ContextOptions = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["cacheDir"] = "--cache-dir",
        ["cacheSize"] = "--cache-size",
        ["bufferSize"] = "--buffer-size",
        ["prefetch"] = "--prefetch",
        ["maxFetches"] = "--max-fetches",
        ["readahead"] = "--readahead",
        ["readaheadKb"] = "--readahead-kb",
        ["fetchTimeout"] = "--fetch-timeout",
        ["entryTimeout"] = "--entry-timeout",
    };

    /// <summary>Secret keys accepted in node-stage secrets, each given to the daemon as the environment variable of the same name.</summary>
    public static readonly IReadOnlySet<string> SecretKeys = new HashSet<string>(StringComparer.Ordinal)
    {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "LMFS_REDIS_PASSWORD",
    };

    public async Task MountAsync(string metaUrl, string staging, IReadOnlyDictionary<string, string> context, IReadOnlyDictionary<string, string> secrets, CancellationToken ct)
    {
        // CsiServices refuses a metaUrl with credentials; stripped again here, because this argv is
        // readable by every user for as long as the daemon runs.
        string target = FuseMount.ResolveMountPoint(staging);
        var args = new List<string> { "mount", Redact.StripCredentials(metaUrl), target, "--allow-other" };
        bool cacheGiven = false;
        foreach (var (k, v) in context)
        {
            if (ContextOptions.TryGetValue(k, out var flag))
            {
                args.AddRange([flag, v]);
                cacheGiven |= k == "cacheDir";
            }
        }

        if (!cacheGiven)
        {
            args.AddRange(["--cache-dir", options.CacheDir]);
        }

        string logFile = MountRegistry.LogFileFor(options.LogDir, staging);
        log.LogInformation("csi: mounting {Meta} at {Staging} (log {Log})", Redact.Url(metaUrl), staging, logFile);
        LaunchResult r;
        try
        {
            r = await MountLauncher.StartAsync(new MountLaunch([.. options.LmfsCommand, .. args], target, logFile) { Environment = new Dictionary<string, string>(secrets) }, ct).ConfigureAwait(false);
        }
        catch (LmfsException e)
        {
            throw new RpcException(e.ExitCode == 2 ? StatusCode.InvalidArgument : StatusCode.Internal, $"lmfs mount failed: {Redact.Text(e.Message)}");
        }

        if (!r.Ready)
        {
            string first = r.Message ?? "";
            // Name the volume attribute the flag came from: the message reaches the pod's events.
            if (ContextOptions.FirstOrDefault(o => first.StartsWith(o.Value + " ", StringComparison.Ordinal)) is { Key: { } key })
            {
                first = $"volume attribute {key}: {first}";
            }

            throw new RpcException(r.ExitCode == 2 ? StatusCode.InvalidArgument : StatusCode.Internal, $"lmfs mount failed: {Redact.Text(first)}");
        }
    }

    /// <summary>Unmounts a staged volume and waits (up to 10 s) for its daemon to end.</summary>
    public async Task UnmountAsync(string staging, CancellationToken ct)
    {
        int? pid = MountRegistry.Load(staging)?.Pid;
        FuseMount.UnmountPath(staging, log);
        MountRegistry.Remove(staging);
        if (pid is { } id)
        {
            var deadline = Stopwatch.StartNew();
            while (Directory.Exists($"/proc/{id}") && deadline.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(50, ct).ConfigureAwait(false);
            }
        }
    }
}
