using LazyModelFs.Meta;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// The metadata round trips in front of a cold file's first byte (issue 14, item 3), counted on a real
/// redis-server with MONITOR (commands, not time): a freshly started `lmfs mount` of a Redis volume,
/// then open(2) of /m/w.bin and its first read(2). Each path component's LOOKUP is one command (the
/// lookup script: entry and record), the OPEN one (MGET of record and chunk table), the READ none.
/// </summary>
public sealed class MetadataRoundTripTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-rtt");

    public void Dispose() => _dir.Dispose();

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    [MountFact]
    public async Task A_cold_open_and_first_read_cost_one_redis_command_per_lookup_and_one_for_the_open()
    {
        using var redis = new RedisServer();
        string vol = "rtt" + Guid.NewGuid().ToString("N")[..8];
        string url = $"redis://127.0.0.1:{redis.Port}/0?volume={vol}";
        byte[] data = TestData.Random((2 << 20) + 5, 14);
        File.WriteAllBytes(_dir["w.bin"], data);
        Ok(LmfsRunner.Run("format", url, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", url, _dir["w.bin"], "/m/w.bin", "--no-progress"));
        ulong dir, file;
        using (var v = await Volume.OpenAsync(url))
        {
            dir = (await v.Namespace.ResolveAsync("/m"))!.Ino;
            file = (await v.Namespace.ResolveAsync("/m/w.bin"))!.Ino;
        }

        string mp = Directory.CreateTempSubdirectory("lmfs-rttmp-").FullName;
        try
        {
            // --record off: the load's access profile would be stored after the release (a write, not part of the open).
            Ok(LmfsRunner.Run("mount", url, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"], "--record", "off"));
            IReadOnlyList<string[]> sent;
            var head = new byte[4096];
            using (var monitor = RedisMonitor.Start(redis))
            {
                using (var h = File.OpenHandle(Path.Combine(mp, "m/w.bin"))) // LOOKUP m, LOOKUP w.bin, OPEN
                {
                    Assert.Equal(head.Length, RandomAccess.Read(h, head, 0)); // the first READ
                }

                sent = monitor.Stop();
            }

            Assert.Equal(data.AsSpan(0, head.Length).ToArray(), head);

            // What the daemon sent about this path, in order. The kernel may also ask for the root's
            // attributes again (GETATTR: GET i1, its 1 s timeout having passed); that is no part of the
            // lookup or the open. SCRIPT LOAD goes out in the same write as the first script call (the
            // client's script cache), so it adds no round trip; it is listed so the count is complete.
            string p = $"lmfs{{{vol}}}:";
            string[] ours = [$"{p}d1", $"{p}i{dir}", $"{p}d{dir}", $"{p}i{file}", $"{p}c{file}"];
            var shown = sent
                .Where(a => a is ["SCRIPT", ..] || a.Any(ours.Contains) || a.Any(x => x.StartsWith(p + "p", StringComparison.Ordinal)))
                .Select(a => a switch
                {
                    ["EVAL" or "EVALSHA", _, "1", var key, var name, var prefix] => $"lookup {key[p.Length..]} {name} {prefix[p.Length..]}",
                    ["SCRIPT", var sub, ..] => $"SCRIPT {sub.ToUpperInvariant()}",
                    ["HGETALL", var key] when key.StartsWith(p + "p", StringComparison.Ordinal) => "HGETALL profile",
                    _ => string.Join(' ', a.Select(x => x.StartsWith(p, StringComparison.Ordinal) ? x[p.Length..] : x)),
                })
                .ToList();
            string[] want =
            [
                "SCRIPT LOAD",
                "lookup d1 m i", // LOOKUP m: one command
                $"lookup d{dir} w.bin i", // LOOKUP w.bin: one command
                $"MGET i{file} c{file}", // OPEN: one command
            ];
            // The first open also looks up the file's access profile (issue 17): one command, sent after the
            // open's answer, off the open's path (a READ does not wait for it).
            var lookupAndOpen = shown.Where(x => x != "HGETALL profile").ToList();
            Assert.True(want.SequenceEqual(lookupAndOpen), $"expected [{string.Join(", ", want)}], the daemon sent [{string.Join(", ", shown)}]");
            Assert.True(shown.Count(x => x == "HGETALL profile") == 1 && shown.IndexOf("HGETALL profile") > shown.IndexOf(want[^1]), $"expected one profile lookup after the open, the daemon sent [{string.Join(", ", shown)}]");
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp);
        }
    }
}
