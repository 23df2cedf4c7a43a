using System.Text.Json.Nodes;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>`lmfs mounts` and `lmfs stats MOUNTPOINT` against real background mounts of the embedded volume (issue 18, item 4).</summary>
public sealed class MountsStatsTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-mstats");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    public void Dispose() => _dir.Dispose();

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    private byte[] Volume()
    {
        var data = TestData.Random((3 << 20) + 99, 7);
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/m.bin"], data);
        Ok(LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", Meta, _dir["src/m.bin"], "/d/", "--no-progress"));
        return data;
    }

    private void WithBackgroundMount(Action<string> body)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-smp-").FullName;
        try
        {
            Ok(LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]));
            body(mp);
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp);
        }
    }

    private static JsonObject? Listed(string mp)
    {
        var r = LmfsRunner.Run("mounts", "--json");
        Ok(r);
        return JsonNode.Parse(r.Stdout)!.AsArray().Select(n => n!.AsObject()).SingleOrDefault(o => (string?)o["path"] == mp);
    }

    private static JsonObject Stats(string mp)
    {
        var r = LmfsRunner.Run("stats", mp, "--json");
        Ok(r);
        return JsonNode.Parse(r.Stdout)!.AsObject();
    }

    [MountFact]
    public void Mounts_lists_a_live_mount_with_its_pid_and_not_after_umount()
    {
        Volume();
        string? gone = null;
        WithBackgroundMount(mp =>
        {
            int pid = MountRegistry.Load(mp)!.Pid;
            var e = Listed(mp);
            Assert.NotNull(e);
            Assert.Equal("live", (string?)e["state"]);
            Assert.Equal(pid, (int)e["pid"]!);
            Assert.Equal(Meta, (string?)e["volume"]);
            Assert.Equal(_dir["cache"], (string?)e["cacheDir"]);
            Assert.True((double)e["uptimeSeconds"]! >= 0);

            var text = LmfsRunner.Run("mounts");
            Ok(text);
            var line = text.Stdout.Split('\n').Single(l => l.StartsWith(mp + " ", StringComparison.Ordinal));
            Assert.Contains(" live ", line, StringComparison.Ordinal);
            Assert.Contains(pid.ToString(System.Globalization.CultureInfo.InvariantCulture), line, StringComparison.Ordinal);

            Ok(LmfsRunner.Run("umount", mp));
            gone = mp;
            Assert.Null(Listed(mp));
        });
        Assert.NotNull(gone);
    }

    [MountFact]
    public void Mounts_shows_the_record_of_a_killed_daemon_as_stale_never_live()
    {
        Volume();
        WithBackgroundMount(mp =>
        {
            int pid = MountRegistry.Load(mp)!.Pid;
            Assert.Equal(0, Signals.Kill(pid, Signals.SIGKILL));
            Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{pid}"), 30_000), $"process {pid} did not exit");

            var e = Listed(mp);
            Assert.NotNull(e);
            Assert.Equal("stale", (string?)e["state"]);
            Assert.Null(e["uptimeSeconds"]);
            var line = LmfsRunner.Run("mounts").Stdout.Split('\n').Single(l => l.StartsWith(mp + " ", StringComparison.Ordinal));
            Assert.Contains(" stale ", line, StringComparison.Ordinal);

            // stats on it says the daemon is gone, not a socket error
            var s = LmfsRunner.Run("stats", mp, "--json");
            Assert.Equal(1, s.ExitCode);
            Assert.Contains("is gone", s.Stderr, StringComparison.Ordinal);

            Assert.True((bool)e["mounted"]!);

            Ok(LmfsRunner.Run("umount", mp)); // detaches the dead mount and removes its record
            Assert.Null(Listed(mp));
        });
    }

    [MountFact]
    public void Umount_removes_the_stale_record_of_a_killed_daemon_whose_mount_was_detached_by_hand()
    {
        Volume();
        WithBackgroundMount(mp =>
        {
            int pid = MountRegistry.Load(mp)!.Pid;
            Assert.Equal(0, Signals.Kill(pid, Signals.SIGKILL));
            Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{pid}"), 30_000), $"process {pid} did not exit");
            Assert.Equal("", Proc.Run("umount", "-l", mp));

            var e = Listed(mp);
            Assert.NotNull(e);
            Assert.Equal("stale", (string?)e["state"]);
            Assert.False((bool)e["mounted"]!);

            var r = LmfsRunner.Run("umount", mp);
            Ok(r);
            Assert.Contains("stale mount record", r.Stdout, StringComparison.Ordinal);
            Assert.Null(Listed(mp));
            Assert.Equal(2, LmfsRunner.Run("umount", mp).ExitCode); // nothing mounted, no record: as before
        });
    }

    [MountFact]
    public void Stats_json_parses_and_its_store_and_read_counters_grow_after_a_read_through_the_mount()
    {
        var data = Volume();
        WithBackgroundMount(mp =>
        {
            var before = Stats(mp);
            Assert.Equal(mp, (string?)before["mountPoint"]);
            Assert.Equal(MountRegistry.Load(mp)!.Pid, (int)before["pid"]!);
            foreach (var k in new[] { "reads", "readBytes", "readErrors", "storeFetches", "storeBytes", "fetchErrors", "busy", "memoryHits", "diskHits" })
            {
                Assert.True(before[k] is JsonValue, $"no counter {k} in {before}");
            }

            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/m.bin")));
            var after = Stats(mp);
            Assert.True((long)after["storeFetches"]! > (long)before["storeFetches"]!, after.ToJsonString());
            Assert.True((long)after["storeBytes"]! - (long)before["storeBytes"]! >= data.Length, after.ToJsonString());
            Assert.True((long)after["reads"]! > (long)before["reads"]!, after.ToJsonString());
            Assert.Equal(data.Length, (long)after["readBytes"]! - (long)before["readBytes"]!);
            Assert.Equal(0, (long)after["readErrors"]!);
        });
    }

    [MountFact]
    public void Stats_refuses_a_path_that_is_not_an_lmfs_mount_with_exit_2()
    {
        foreach (var path in new[] { _dir.Path, _dir["missing"], "/proc" })
        {
            var r = LmfsRunner.Run("stats", path);
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains("is not an lmfs mount point", r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        }
    }

    [MountFact]
    public void Stats_refuses_another_users_mount_with_exit_2()
    {
        Volume();
        WithBackgroundMount(mp =>
        {
            var r = LmfsRunner.RunAs(65534, "stats", mp, "--json");
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains("started by another user", r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain(MountRegistry.Load(mp)!.ControlSocket, r.Stdout, StringComparison.Ordinal);
        });
    }
}
