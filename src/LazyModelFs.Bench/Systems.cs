using System.Diagnostics;
using System.Text.Json.Nodes;
using LazyModelFs.Util;
using LazyModelFs.Vfs;

namespace LazyModelFs.Bench;

public enum CacheState
{
    /// <summary>Nothing cached anywhere: every byte comes from the object store.</summary>
    Cold,

    /// <summary>The local (disk) cache holds the file; the page cache and memory tier do not.</summary>
    Warm,

    /// <summary>Whatever the previous read left: the page cache holds the file.</summary>
    Hot,
}

/// <summary>What is being measured, and how to put a file into a cache state before each measurement.</summary>
public interface IBenchTarget
{
    /// <summary>"lmfs", or the name of the other system.</summary>
    string System { get; }

    /// <summary>The process serving the mount now (it can change when a reset remounts), or null.</summary>
    int? ServingPid { get; }

    /// <summary>The mount's memory buffer size, when known (the peak-memory target).</summary>
    long? BufferSize { get; }

    Task ResetAsync(CacheState state, IReadOnlyList<string> files, CancellationToken ct);

    /// <summary>Bytes fetched from the object store so far (lmfs only; null elsewhere).</summary>
    Task<long?> StoreBytesAsync(CancellationToken ct);

    /// <summary>Removes the files' recorded access profiles, so the next cold load has none to replay (lmfs only: false elsewhere).</summary>
    Task<bool> ForgetProfilesAsync(IReadOnlyList<string> files, CancellationToken ct) => Task.FromResult(false);

    /// <summary>Bytes prefetch started fetching, and of those the bytes READs then used, so far (lmfs only).</summary>
    Task<(long Issued, long Used)?> PrefetchBytesAsync(CancellationToken ct) => Task.FromResult<(long, long)?>(null);
}

/// <summary>The page cache, dropped the way the bench can: all of it as root, a file's own pages otherwise.</summary>
public static class PageCache
{
    public static bool CanDropAll => Environment.IsPrivilegedProcess && File.Exists("/proc/sys/vm/drop_caches");

    /// <summary>Flushes dirty pages, then drops the page cache, dentries and inodes (root only).</summary>
    public static void DropAll()
    {
        using (var sync = Process.Start(new ProcessStartInfo("sync") { UseShellExecute = false }))
        {
            sync?.WaitForExit();
        }

        File.WriteAllText("/proc/sys/vm/drop_caches", "3");
    }

    /// <summary>Drops one local file's clean pages (POSIX_FADV_DONTNEED); works unprivileged.</summary>
    public static void DropFile(string path)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        Posix.DropFromPageCache(h);
    }

    /// <summary>As root, drops the whole page cache; otherwise only <paramref name="files"/>' pages.</summary>
    public static void Drop(params IEnumerable<string> files)
    {
        if (CanDropAll)
        {
            DropAll();
            return;
        }

        foreach (var f in files)
        {
            DropFile(f);
        }
    }
}

/// <summary>Which mount holds a path.</summary>
public static class MountInfo
{
    /// <summary>The mount point and filesystem type holding <paramref name="path"/> (the longest mount point that prefixes it; the last listed on a tie).</summary>
    public static (string MountPoint, string FsType) Find(string path)
    {
        string full = Fuse.FuseMount.ResolveMountPoint(path); // the table holds resolved paths
        (string, string) best = ("/", "");
        foreach (var m in Fuse.FuseMount.MountTable())
        {
            bool under = m.MountPoint == "/" || full == m.MountPoint || full.StartsWith(m.MountPoint + "/", StringComparison.Ordinal);
            if (under && m.MountPoint.Length >= best.Item1.Length)
            {
                best = (m.MountPoint, m.FsType);
            }
        }

        return best;
    }
}

/// <summary>
/// An lmfs mount, reset through its control socket: cold = the file's chunks leave the memory tier
/// and the disk cache; warm = they leave the memory tier only; the readahead streams and the
/// prefetch of the file are forgotten either way, as in a fresh mount. Then the page cache is
/// dropped: all of it as root (so the cache files' pages go too), otherwise the file's own pages
/// through FUSE invalidation and the cache files' through fadvise.
/// </summary>
public sealed class LmfsBenchTarget(MountRecord state, JsonObject stats) : IBenchTarget
{
    public string System => "lmfs";

    public MountRecord State { get; } = state;

    public int? ServingPid => State.Pid;

    public long? BufferSize { get; } = (long?)stats["bufferSize"];

    public int ChunkSize { get; } = (int?)stats["chunkSize"] ?? 0;

    public static async Task<LmfsBenchTarget> ConnectAsync(string mountPoint, CancellationToken ct)
    {
        var state = MountRegistry.Load(mountPoint)
            ?? throw new LmfsException($"no record of the lmfs mount at {mountPoint} (started by another user, or by an lmfs without a control socket)", "run lmfs bench as the user who mounted it (or root), or remount with this lmfs");
        var stats = await MountClient.StatsAsync(state.ControlSocket, ct).ConfigureAwait(false);
        return new LmfsBenchTarget(state, stats);
    }

    public Task<JsonObject> StatsAsync(CancellationToken ct) => MountClient.StatsAsync(State.ControlSocket, ct);

    public async Task<long?> StoreBytesAsync(CancellationToken ct) => (long?)(await StatsAsync(ct).ConfigureAwait(false))["storeBytes"];

    public async Task<bool> ForgetProfilesAsync(IReadOnlyList<string> files, CancellationToken ct)
    {
        await WaitIdleAsync(ct).ConfigureAwait(false); // a recording still being stored would come back after the forget
        foreach (var f in files)
        {
            await MountClient.ForgetProfilesAsync(State.ControlSocket, Posix.Stat(f).Ino, ct).ConfigureAwait(false);
        }

        return true;
    }

    public async Task<(long Issued, long Used)?> PrefetchBytesAsync(CancellationToken ct)
    {
        var s = await StatsAsync(ct).ConfigureAwait(false);
        return (long?)s["prefetchIssuedBytes"] is { } issued && (long?)s["prefetchUsedBytes"] is { } used ? (issued, used) : null;
    }

    public async Task ResetAsync(CacheState state, IReadOnlyList<string> files, CancellationToken ct)
    {
        if (state == CacheState.Hot)
        {
            return;
        }

        // Forget (which also drops queued fetches), let the fetches already running finish, then
        // forget again what they brought in.
        var inos = files.Select(f => Posix.Stat(f).Ino).ToList();
        for (int pass = 0; pass < 2; pass++)
        {
            foreach (ulong ino in inos)
            {
                await MountClient.ForgetAsync(State.ControlSocket, ino, disk: state == CacheState.Cold, ct).ConfigureAwait(false);
            }

            await WaitIdleAsync(ct).ConfigureAwait(false);
        }

        if (!PageCache.CanDropAll)
        {
            foreach (ulong ino in inos)
            {
                await MountClient.InvalidateAsync(State.ControlSocket, ino, ct).ConfigureAwait(false);
            }
        }

        if (PageCache.CanDropAll)
        {
            PageCache.DropAll();
        }
        else
        {
            foreach (var chunkFile in Directory.Exists(Path.Combine(State.CacheDir, "chunks")) ? Directory.EnumerateFiles(Path.Combine(State.CacheDir, "chunks"), "*", SearchOption.AllDirectories) : [])
            {
                try
                {
                    PageCache.DropFile(chunkFile);
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
                {
                    // evicted meanwhile, or not ours to read
                }
            }
        }
    }

    /// <summary>Waits (up to 60 s) until no fetch, cache write, view build or profile write of the previous measurement is still running.</summary>
    private async Task WaitIdleAsync(CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(60))
        {
            var s = await StatsAsync(ct).ConfigureAwait(false);
            if ((long?)s["busy"] is null or 0 && (long?)s["viewBuildsRunning"] is null or 0 && (long?)s["profileWritesPending"] is null or 0)
            {
                return;
            }

            await Task.Delay(50, ct).ConfigureAwait(false);
        }
    }
}

/// <summary>
/// Any other mounted filesystem (rclone mount, s3fs…): cold and warm are reached by running the
/// commands the caller gave (typically: unmount, empty or keep the peer's cache, mount again), then
/// dropping the page cache. The serving process is found by its command line after each reset.
/// </summary>
public sealed class CommandBenchTarget(string system, string mountPoint, string? coldCommand, string? warmCommand) : IBenchTarget
{
    public string System { get; } = system;

    public int? ServingPid => ProcessMeter.FindByArgument(mountPoint);

    public long? BufferSize => null;

    public Task<long?> StoreBytesAsync(CancellationToken ct) => Task.FromResult<long?>(null);

    public async Task ResetAsync(CacheState state, IReadOnlyList<string> files, CancellationToken ct)
    {
        if (state == CacheState.Hot)
        {
            return;
        }

        string? cmd = state == CacheState.Cold ? coldCommand : warmCommand;
        if (cmd is not null)
        {
            var psi = new ProcessStartInfo("sh") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(cmd);
            psi.Environment["LMFS_BENCH_STATE"] = state.ToString().ToLowerInvariant();
            using var p = Process.Start(psi) ?? throw new LmfsException($"cannot run the {state} reset command", "check --cold-cmd / --warm-cmd");
            var err = p.StandardError.ReadToEndAsync(ct);
            var outText = p.StandardOutput.ReadToEndAsync(ct);
            await p.WaitForExitAsync(ct).ConfigureAwait(false);
            if (p.ExitCode != 0)
            {
                throw new LmfsException($"the {state.ToString().ToLowerInvariant()} reset command exited {p.ExitCode}: {(await err.ConfigureAwait(false)).Trim()}", "run it by hand to see what fails");
            }

            await outText.ConfigureAwait(false);
        }

        PageCache.Drop(files);
    }
}
