using System.CommandLine;
using System.Text.Json.Nodes;
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
        var json = new Option<bool>("--json") { Description = "With --check: print one JSON object (per file and in all: chunks and bytes, cached or not; schema in docs/operations.md)" };
        var profile = new Option<bool>("--profile") { Description = "Replay each file's recorded access profile: only the chunks its loads read, in their order (files without one are warmed whole)" };
        var creds = new Common.Credentials();
        var cmd = new Command("warmup", "Fill the local chunk cache ahead of time, so the next load reads only local disk.\n\nExamples:\n  lmfs warmup /models /models/llama-3-8b\n  lmfs warmup sqlite:///var/lib/lmfs/meta.db /models/llama-3-8b --cache-dir /nvme/lmfs\n  lmfs warmup /models /models/llama-3-8b --profile\n  lmfs warmup /models /models/llama-3-8b --check [--json]") { target, paths, check, cacheDir, jobs, json, profile };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            if (p.GetValue(json) && !p.GetValue(check))
            {
                throw new LmfsException("--json goes with --check: it reports what is cached", "run lmfs warmup … --check --json; warming up itself prints one summary line", 2);
            }

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
            int j = p.GetValue(jobs);
            using var cache = ChunkCache.Open(volume, new ChunkCacheSetup
            {
                Directory = dir ?? "/var/cache/lmfs",
                MemoryBytes = Math.Max(64L << 20, 8L * CachedChunk.BufferSizeFor(volume.Settings.ChunkSize) * j),
                Fetch = new ChunkCacheOptions { MaxFetches = j + Math.Max(1, j / 3) },
            });
            var files = new List<(string Path, ChunkTable Table)>();
            foreach (var vp in volumePaths)
            {
                await CollectAsync(volume, vp, files, ct).ConfigureAwait(false);
            }

            foreach (var (_, table) in files)
            {
                cache.LocateInView(table); // chunks a view holds have no chunk files of their own
            }

            int profiled = 0;
            var wanted = new List<ChunkEntry>();
            foreach (var (_, table) in files)
            {
                // With --profile, a file's chunks in the order its loads read them (the newest profile), and only those.
                var best = p.GetValue(profile) && !p.GetValue(check) && table.Count > 0
                    ? AccessProfile.Choose(await volume.Meta.GetProfilesAsync(table.ContentKey, ct).ConfigureAwait(false), table.Count, process: null)
                    : null;
                if (best is not null)
                {
                    profiled++;
                    wanted.AddRange(best.Order.Select(i => table[i]));
                }
                else
                {
                    wanted.AddRange(table.Entries);
                }
            }

            var have = cache.Check(wanted);
            if (p.GetValue(check) && p.GetValue(json))
            {
                static JsonObject Counts(JsonObject o, CacheCheck c)
                {
                    o["chunks"] = c.Chunks;
                    o["cachedChunks"] = c.CachedChunks;
                    o["bytes"] = c.Bytes;
                    o["cachedBytes"] = c.CachedBytes;
                    return o;
                }

                var list = new JsonArray();
                foreach (var (fp, table) in files)
                {
                    list.Add(Counts(new JsonObject { ["path"] = fp }, cache.Check(table.Entries)));
                }

                var doc = Counts(new JsonObject { ["cacheDir"] = cache.DiskDirectory }, have);
                doc["files"] = list;
                Json.Print(doc);
                return 0;
            }

            if (p.GetValue(check))
            {
                Console.WriteLine($"cached: {Sizes.Format(have.CachedBytes)} of {Sizes.Format(have.Bytes)} ({(have.Bytes == 0 ? 100 : 100.0 * have.CachedBytes / have.Bytes):0.0}%), {have.CachedChunks} of {have.Chunks} chunks");
                return 0;
            }

            long done = 0;
            var work = cache.FillAsync(have, j, n => Interlocked.Add(ref done, n), ct);
            if (!Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive)
            {
                await AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn()).StartAsync(async ctx =>
                {
                    var task = ctx.AddTask("warming up", maxValue: Math.Max(1, have.MissingBytes));
                    while (!work.IsCompleted)
                    {
                        task.Value = Interlocked.Read(ref done);
                        await Task.WhenAny(work, Task.Delay(200, ct)).ConfigureAwait(false);
                    }

                    task.Value = task.MaxValue;
                }).ConfigureAwait(false);
            }

            var r = await work.ConfigureAwait(false);
            if (r.NotStored > 0)
            {
                throw new LmfsException($"{r.NotStored} of {have.Missing.Count} chunks could not be written to the cache {cache.DiskDirectory} (full or not writable; the log says why)", "free space or give another --cache-dir, then run warmup again", 1);
            }

            // Each file's whole-file view, so a mount's first open of it can be passthrough (docs/operations.md).
            int views = 0;
            foreach (var (_, table) in files)
            {
                views += table.Count > 0 && await cache.QueueViewBuild(table).ConfigureAwait(false) ? 1 : 0;
            }

            Console.WriteLine($"warmed up {Sizes.Format(have.MissingBytes)} in {have.Missing.Count} chunks ({Sizes.Format(have.CachedBytes)} was already cached) into {cache.DiskDirectory}; {views} of {files.Count(f => f.Table.Count > 0)} files ready for passthrough{(p.GetValue(profile) ? $"; {profiled} by their access profile" : "")}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Every file at or under <paramref name="path"/>, with its volume path and chunk rows.</summary>
    private static async Task CollectAsync(Volume v, string path, List<(string Path, ChunkTable Table)> into, CancellationToken ct)
    {
        var node = await v.Namespace.ResolveAsync(path, ct).ConfigureAwait(false) ?? throw new LmfsException($"'{path}' does not exist in the volume", "list it with lmfs ls", 2);
        await Walk(node, Namespace.Join(Namespace.SplitPath(path))).ConfigureAwait(false);

        async Task Walk(Node n, string at)
        {
            if (n.Type == NodeType.File)
            {
                var t = await v.Meta.GetChunkTableAsync(n.Ino, v.Settings.ChunkSize, ct).ConfigureAwait(false);
                into.Add((at, t ?? ChunkTable.Empty(v.Settings.ChunkSize)));
            }
            else if (n.Type == NodeType.Directory)
            {
                foreach (var e in await v.Meta.ListAsync(n.Ino, ct).ConfigureAwait(false))
                {
                    if (await v.Meta.GetNodeAsync(e.Ino, ct).ConfigureAwait(false) is { } child)
                    {
                        await Walk(child, at == "/" ? "/" + e.Name : at + "/" + e.Name).ConfigureAwait(false);
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
        var json = new Option<bool>("--json") { Description = "Print one JSON object (directory, chunks, views, bytes, disk free and total; schema in docs/operations.md)" };
        var stats = new Command("stats", "Show what the local chunk cache holds.\n\nExamples:\n  lmfs cache stats --cache-dir /nvme/lmfs\n  lmfs cache stats --json") { dir, json };
        stats.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            var u = ChunkCache.DiskUsage(p.GetValue(dir)!);
            var d = new DriveInfo(u.Root);
            if (p.GetValue(json))
            {
                Json.Print(new JsonObject
                {
                    ["cacheDir"] = u.Directory,
                    ["chunks"] = u.Chunks,
                    ["views"] = u.Views,
                    ["viewBytes"] = u.ViewBytes,
                    ["bytes"] = u.Bytes,
                    ["diskFreeBytes"] = d.AvailableFreeSpace,
                    ["diskTotalBytes"] = d.TotalSize,
                });
                return Task.FromResult(0);
            }

            Console.WriteLine($"cache:  {u.Directory}");
            Console.WriteLine($"chunks: {u.Chunks} files, {Sizes.Format(u.Bytes - u.ViewBytes)}");
            Console.WriteLine($"views:  {u.Views} files, {Sizes.Format(u.ViewBytes)} (whole files for passthrough; their chunks have no files of their own)");
            Console.WriteLine($"disk:   {Sizes.Format(d.AvailableFreeSpace)} free of {Sizes.Format(d.TotalSize)}");
            return Task.FromResult(0);
        }));
        var clear = new Command("clear", "Delete every cached chunk and view (mounts using the cache fetch them again).\n\nExample:\n  lmfs cache clear --cache-dir /nvme/lmfs") { dir };
        clear.SetAction((p, ct) => Cli.Guard(p, () =>
        {
            var (files, bytes) = ChunkCache.ClearDisk(p.GetValue(dir)!);
            Console.WriteLine($"removed {files} chunk files and views ({Sizes.Format(bytes)})");
            return Task.FromResult(0);
        }));
        return new Command("cache", "Inspect or clear the local chunk cache.\n\nExample:\n  lmfs cache stats") { stats, clear };
    }
}
