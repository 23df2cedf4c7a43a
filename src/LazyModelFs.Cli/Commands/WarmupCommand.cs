using System.CommandLine;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Spectre.Console;

namespace LazyModelFs.Cli.Commands;

internal static class WarmupCommand
{
    public static Command Build()
    {
        var target = new Argument<string>("META_URL|MOUNTPOINT") { Description = "A metadata URL, or the directory a volume is mounted on" };
        var paths = new Argument<string[]>("PATH") { Description = "Files or directories (volume paths, or paths under the mount point)", Arity = ArgumentArity.OneOrMore };
        var check = new Option<bool>("--check") { Description = "Only report how much is cached" };
        var cacheDir = new Option<string?>("--cache-dir") { Description = "Cache directory to fill (default: the mount's, or /var/cache/lmfs)" };
        var jobs = Numeric.Int("--concurrency", "Concurrent object GETs", 16, 1, 256, "-j");
        var creds = new Common.Credentials();
        var cmd = new Command("warmup", "Fill the local chunk cache ahead of time, so the next load reads only local disk.\n\nExamples:\n  lmfs warmup /models /models/llama-3-8b\n  lmfs warmup sqlite:///var/lib/lmfs/meta.db /models/llama-3-8b --cache-dir /nvme/lmfs\n  lmfs warmup /models /models/llama-3-8b --check") { target, paths, check, cacheDir, jobs };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            string t = p.GetValue(target)!;
            string metaUrl = t;
            string? dir = p.GetValue(cacheDir);
            var volumePaths = p.GetValue(paths)!.ToList();
            if (!t.Contains("://", StringComparison.Ordinal))
            {
                string mp = FuseMount.ResolveMountPoint(t); // the mount table and the mount records hold resolved paths
                if (FuseMount.MountTypeAt(mp) != "fuse.lazymodelfs")
                {
                    throw new LmfsException($"'{t}' is neither a metadata URL nor an lmfs mount point", "give sqlite:///… or redis://…, or the directory lmfs is mounted on", 2);
                }

                var state = MountRegistry.Load(mp) ?? throw new LmfsException($"no record of the mount at {mp} (it was started by another user or an older lmfs)", "give the metadata URL and --cache-dir instead", 2);
                metaUrl = state.MetaUrl;
                dir ??= state.CacheDir;
                // Paths under the mount point, as given (perhaps through a link) or resolved, become volume paths.
                string givenMp = Path.GetFullPath(t);
                static string? Under(string full, string root) =>
                    full == root ? "/" : full.StartsWith(root.TrimEnd('/') + "/", StringComparison.Ordinal) ? full[root.TrimEnd('/').Length..] : null;
                volumePaths = volumePaths.Select(x => Path.IsPathRooted(x) ? Under(Path.GetFullPath(x), givenMp) ?? Under(Path.GetFullPath(x), mp) ?? x : x).ToList();
            }

            using var volume = await Volume.OpenAsync(metaUrl, creds.Read(p), ct).ConfigureAwait(false);
            var disk = new DiskCache(new DiskCacheOptions { Directory = dir ?? "/var/cache/lmfs" });
            var entries = new List<ChunkEntry>();
            foreach (var vp in volumePaths)
            {
                await CollectAsync(volume, vp, entries, ct).ConfigureAwait(false);
            }

            var unique = entries.DistinctBy(e => e.Id).ToList();
            long total = unique.Sum(e => (long)e.PlainLength);
            var missing = unique.Where(e => !disk.Contains(e.Id)).ToList();
            long missingBytes = missing.Sum(e => (long)e.PlainLength);
            if (p.GetValue(check))
            {
                Console.WriteLine($"cached: {Sizes.Format(total - missingBytes)} of {Sizes.Format(total)} ({(total == 0 ? 100 : 100.0 * (total - missingBytes) / total):0.0}%), {unique.Count - missing.Count} of {unique.Count} chunks");
                return 0;
            }

            using var memory = new MemoryTier(Math.Max(64L << 20, 8L * CachedChunk.BufferSizeFor(volume.Settings.ChunkSize) * p.GetValue(jobs)), volume.Settings.ChunkSize);
            using var reader = new ChunkCache(volume.Chunks, memory, disk, new ChunkCacheOptions { MaxFetches = p.GetValue(jobs) + Math.Max(1, p.GetValue(jobs) / 3) });
            long done = 0;
            var work = Parallel.ForEachAsync(missing, new ParallelOptions { MaxDegreeOfParallelism = p.GetValue(jobs), CancellationToken = ct }, async (e, _) =>
            {
                using (await reader.GetAsync(e, FetchPriority.Prefetch).ConfigureAwait(false))
                {
                }

                Interlocked.Add(ref done, e.PlainLength);
            });
            if (!Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
            {
                await AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn()).StartAsync(async ctx =>
                {
                    var task = ctx.AddTask("warming up", maxValue: Math.Max(1, missingBytes));
                    while (!work.IsCompleted)
                    {
                        task.Value = Interlocked.Read(ref done);
                        await Task.WhenAny(work, Task.Delay(200, ct)).ConfigureAwait(false);
                    }

                    task.Value = task.MaxValue;
                }).ConfigureAwait(false);
            }

            await work.ConfigureAwait(false);

            // Chunks go to disk just after their readers get them: wait for the last writes.
            for (int i = 0; i < 100 && missing.Any(e => !disk.Contains(e.Id)); i++)
            {
                await Task.Delay(50, ct).ConfigureAwait(false);
            }

            Console.WriteLine($"warmed up {Sizes.Format(missingBytes)} in {missing.Count} chunks ({Sizes.Format(total - missingBytes)} was already cached) into {disk.Options.Directory}");
            return 0;
        }));
        return cmd;
    }

    private static async Task CollectAsync(Volume v, string path, List<ChunkEntry> into, CancellationToken ct)
    {
        var node = await v.Namespace.ResolveAsync(path, ct).ConfigureAwait(false) ?? throw new LmfsException($"'{path}' does not exist in the volume", "list it with lmfs ls", 2);
        await Walk(node).ConfigureAwait(false);

        async Task Walk(Node n)
        {
            if (n.Type == NodeType.File)
            {
                var t = await v.Meta.GetChunkTableAsync(n.Ino, v.Settings.ChunkSize, ct).ConfigureAwait(false);
                into.AddRange(t?.Entries ?? []);
            }
            else if (n.Type == NodeType.Directory)
            {
                foreach (var e in await v.Meta.ListAsync(n.Ino, ct).ConfigureAwait(false))
                {
                    if (await v.Meta.GetNodeAsync(e.Ino, ct).ConfigureAwait(false) is { } child)
                    {
                        await Walk(child).ConfigureAwait(false);
                    }
                }
            }
        }
    }
}

internal static class CacheCommand
{
    public static Command Build()
    {
        var dir = new Option<string>("--cache-dir") { Description = "Cache directory", DefaultValueFactory = _ => "/var/cache/lmfs" };
        var stats = new Command("stats", "Show what the local chunk cache holds.\n\nExample:\n  lmfs cache stats --cache-dir /nvme/lmfs") { dir };
        stats.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            var c = Open(p.GetValue(dir)!);
            var d = new DriveInfo(c.Root);
            Console.WriteLine($"cache:  {c.Options.Directory}");
            Console.WriteLine($"chunks: {c.Count} files, {Sizes.Format(c.Bytes)}");
            Console.WriteLine($"disk:   {Sizes.Format(d.AvailableFreeSpace)} free of {Sizes.Format(d.TotalSize)}");
            return Task.FromResult(0);
        }));
        var clear = new Command("clear", "Delete every cached chunk (mounts using the cache fetch them again).\n\nExample:\n  lmfs cache clear --cache-dir /nvme/lmfs") { dir };
        clear.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            var (files, bytes) = Open(p.GetValue(dir)!).Clear();
            Console.WriteLine($"removed {files} chunk files ({Sizes.Format(bytes)})");
            return Task.FromResult(0);
        }));
        return new Command("cache", "Inspect or clear the local chunk cache.\n\nExample:\n  lmfs cache stats") { stats, clear };
    }

    private static DiskCache Open(string dir)
    {
        if (!Directory.Exists(dir))
        {
            throw new LmfsException($"cache directory '{dir}' does not exist", "give the --cache-dir the mount uses", 2);
        }

        return new DiskCache(new DiskCacheOptions { Directory = dir });
    }
}
