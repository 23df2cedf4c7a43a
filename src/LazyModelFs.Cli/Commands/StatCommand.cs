using System.CommandLine;
using System.Text.Json.Nodes;
using LazyModelFs.Chunks;
using LazyModelFs.Read;
using LazyModelFs.Meta;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

internal static class StatCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var path = new Argument<string>("PATH") { Description = "Path in the volume", DefaultValueFactory = _ => "/" };
        var chunks = new Option<bool>("--chunks") { Description = "List every chunk of a file" };
        var quoting = Common.QuotingStyle();
        var json = new Option<bool>("--json") { Description = "Print one JSON object (the record; for a file its chunk table; for / the volume; schema in docs/operations.md)" };
        var cmd = new Command("stat", "Show a path's attributes; for a file, its chunk-table summary; for /, the volume's settings and usage.\nNames are quoted on a terminal as lmfs ls quotes them.\n\nExamples:\n  lmfs stat sqlite:///var/lib/lmfs/meta.db /models/m/model.safetensors --chunks\n  lmfs stat --json sqlite:///var/lib/lmfs/meta.db /models/m/model.safetensors") { meta, path, chunks, quoting, json };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var (m, ns) = await Common.OpenNamespaceAsync(p.GetValue(meta)!, ct).ConfigureAwait(false);
            using var _ = m;
            var settings = ns.Settings;
            string at = p.GetValue(path)!;
            var n = await ns.ResolveAsync(at, ct).ConfigureAwait(false) ?? throw ListCommand.Missing(at);
            if (p.GetValue(json))
            {
                string shown = Namespace.Join(Namespace.SplitPath(at));
                var o = ListCommand.Entry(n, n.Ino == Node.RootIno ? "/" : Path.GetFileName(shown), shown);
                if (n.Ino == Node.RootIno)
                {
                    var u = await m.GetUsageAsync(ct).ConfigureAwait(false);
                    var v = new JsonObject
                    {
                        ["name"] = settings.Name,
                        ["uuid"] = settings.Uuid.ToString(),
                        ["formatVersion"] = settings.FormatVersion,
                        ["storage"] = settings.Storage,
                        ["chunkSize"] = settings.ChunkSize,
                        ["blockSize"] = settings.BlockSize,
                        ["compression"] = settings.Compression,
                        ["usageBytes"] = u.Bytes,
                        ["usageInodes"] = u.Inodes,
                    };
                    Json.AddTime(v, "createdAt", Json.UnixNs(settings.CreatedAt.UtcDateTime));
                    o["volume"] = v;
                }

                if (n.Type == NodeType.File)
                {
                    var t = await m.GetChunkTableAsync(n.Ino, settings.ChunkSize, ct).ConfigureAwait(false) ?? ChunkTable.Empty(settings.ChunkSize);
                    o["chunkSize"] = settings.ChunkSize;
                    o["blockSize"] = t.BlockSize;
                    o["chunkCount"] = t.Count;
                    o["storedBytes"] = t.StoredSize;
                    var rows = new JsonArray();
                    for (int i = 0; i < t.Count; i++)
                    {
                        var e = t[i];
                        rows.Add(new JsonObject
                        {
                            ["index"] = i,
                            ["offset"] = t.StartOf(i),
                            ["id"] = e.Id.ToHex(),
                            ["plainLength"] = e.PlainLength,
                            ["storedLength"] = e.StoredLength,
                            ["codec"] = e.Codec.ToString().ToLowerInvariant(),
                            ["crc32c"] = e.Crc32C.ToString("x8", System.Globalization.CultureInfo.InvariantCulture),
                        });
                    }

                    o["chunks"] = rows;
                    var profiles = new JsonArray();
                    foreach (var (process, profile, why) in await ProfilesAsync(m, t, ct).ConfigureAwait(false))
                    {
                        var e = new JsonObject { ["process"] = process, ["valid"] = profile is not null };
                        if (profile is not null)
                        {
                            e["chunks"] = profile.Order.Count;
                            Json.AddTime(e, "recordedAt", Json.UnixNs(profile.Recorded.UtcDateTime));
                        }
                        else
                        {
                            e["error"] = why;
                        }

                        profiles.Add(e);
                    }

                    o["profiles"] = profiles;
                }

                Json.Print(o);
                return 0;
            }

            var show = Common.Names(p, quoting);
            Console.WriteLine($"path:     {show(Namespace.Join(Namespace.SplitPath(at)))}");
            Console.WriteLine($"inode:    {n.Ino}");
            Console.WriteLine($"type:     {n.Type.ToString().ToLowerInvariant()}");
            Console.WriteLine($"mode:     {ListCommand.ModeString(n)} (0{Convert.ToString(n.Mode, 8)})");
            Console.WriteLine($"owner:    uid {n.Uid}, gid {n.Gid}");
            Console.WriteLine($"size:     {n.Size} ({Sizes.Format(n.Size)})");
            Console.WriteLine($"modified: {ListCommand.Time(n.MtimeNs)} UTC");
            Console.WriteLine($"changed:  {ListCommand.Time(n.CtimeNs)} UTC");
            if (n.Type == NodeType.Symlink)
            {
                Console.WriteLine($"target:   {show(n.SymlinkTarget ?? "")}");
            }

            if (n.Ino == Node.RootIno)
            {
                var u = await m.GetUsageAsync(ct).ConfigureAwait(false);
                Console.WriteLine($"volume:   {show(settings.Name)} {settings.Uuid}, format version {settings.FormatVersion}, created {settings.CreatedAt:yyyy-MM-dd HH:mm:ss} UTC");
                Console.WriteLine($"storage:  {settings.Storage}");
                Console.WriteLine($"chunks:   {Sizes.Format(settings.ChunkSize)}, compression {settings.Compression}, {(settings.BlockSize == 0 ? "no block hashes" : $"block hashes every {Sizes.Format(settings.BlockSize)}")}");
                Console.WriteLine($"usage:    {u.Bytes} bytes ({Sizes.Format(u.Bytes)}) in {u.Inodes} inodes");
            }

            if (n.Type == NodeType.File)
            {
                var t = await m.GetChunkTableAsync(n.Ino, settings.ChunkSize, ct).ConfigureAwait(false) ?? ChunkTable.Empty(settings.ChunkSize);
                int zstd = t.Entries.Count(e => e.Codec == ChunkCodec.Zstd);
                Console.WriteLine($"chunks:   {t.Count} of {Sizes.Format(settings.ChunkSize)}; {zstd} zstd, {t.Count - zstd} plain; stored {Sizes.Format(t.StoredSize)} for {Sizes.Format(t.PlainSize)}{(t.BlockSize == 0 ? "" : $"; block hashes every {Sizes.Format(t.BlockSize)}")}");
                var profiles = await ProfilesAsync(m, t, ct).ConfigureAwait(false);
                Console.WriteLine("profiles: " + (profiles.Count == 0 ? "none (the first load through a mount records one)" : string.Join("; ", profiles.Select(x => x.Profile is { } pr
                    ? $"{show(x.Process.Length == 0 ? "?" : x.Process)}: {pr.Order.Count} of {t.Count} chunks, recorded {pr.Recorded.UtcDateTime:yyyy-MM-dd HH:mm:ss} UTC"
                    : $"{show(x.Process)}: ignored ({x.Why})"))));
                if (p.GetValue(chunks))
                {
                    for (int i = 0; i < t.Count; i++)
                    {
                        var e = t[i];
                        Console.WriteLine($"  {i,6} @{t.StartOf(i),14} {e.Id} plain {e.PlainLength} stored {e.StoredLength} {e.Codec.ToString().ToLowerInvariant()} crc32c {e.Crc32C:x8}");
                    }
                }
            }

            return 0;
        }));
        return cmd;
    }

    /// <summary>The file's access profiles (issue 17), by process name, decoded against its table; one that does not decode comes with why.</summary>
    internal static async Task<List<(string Process, AccessProfile? Profile, string? Why)>> ProfilesAsync(IMetaStore m, ChunkTable t, CancellationToken ct)
    {
        var list = new List<(string, AccessProfile?, string?)>();
        if (t.Count == 0)
        {
            return list;
        }

        foreach (var (process, bytes) in (await m.GetProfilesAsync(t.ContentKey, ct).ConfigureAwait(false)).OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var profile = AccessProfile.TryDecode(bytes, t.Count, out var why);
            list.Add((process, profile, why));
        }

        return list;
    }
}
