using LazyModelFs.Fuse;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests;

/// <summary>
/// `lmfs mount --background` through <see cref="Vfs.MountLauncher"/>: failures that only the daemon can
/// see come back with the daemon's documented exit code and error (docs/operations.md, "Exit codes"),
/// read from its launch record, not from its output; a daemon that dies without a word is reported
/// with its log. The daemon is held at a chosen point by a FIFO given as --secret-key-file: the parent
/// reads it once (its pre-checks), the daemon reads it again, and opening the FIFO for writing returns
/// only once the daemon is reading it.
/// </summary>
public sealed class MountLauncherTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-launch");

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    private void Volume(string meta)
    {
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/a.bin"], TestData.Random(4096, 7));
        Ok(LmfsRunner.Run("format", meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", meta, _dir["src/a.bin"], "/d/", "--no-progress"));
    }

    private string MountPoint()
    {
        Directory.CreateDirectory(_dir["mp"]);
        return _dir["mp"];
    }

    private string Fifo()
    {
        string fifo = _dir["key.fifo"];
        Assert.Equal("", Proc.Run("mkfifo", "-m", "600", fifo));
        return fifo;
    }

    /// <summary>Opens <paramref name="fifo"/> for writing (returns once a reader has it open) unless <paramref name="mount"/> ends first.</summary>
    private static FileStream OpenWriter(string fifo, Task<RunResult> mount)
    {
        var open = Task.Run(() => new FileStream(fifo, FileMode.Open, FileAccess.Write));
        int done = Task.WaitAny([open, mount], TimeSpan.FromMinutes(2));
        Assert.True(done == 0, done == 1 ? mount.Result.ToString() : "nobody opened the FIFO");
        return open.Result;
    }

    private static void Write(FileStream w)
    {
        using (w)
        {
            w.Write("secret\n"u8);
        }
    }

    private Task<RunResult> MountInBackground(string meta, string mp, string fifo) =>
        Task.Run(() => LmfsRunner.Run(
            ["mount", meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"], "--access-key", "k", "--secret-key-file", fifo],
            timeout: TimeSpan.FromMinutes(3)));

    [MountFact]
    public void A_cache_directory_the_daemon_refuses_answers_exit_2_with_its_message()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        Volume(meta);
        string mp = MountPoint();
        Directory.CreateDirectory(_dir["open-cache"]);
        File.SetUnixFileMode(_dir["open-cache"], (UnixFileMode)0x1FF); // 0777: anyone could plant chunks

        // The parent's pre-checks (mount point, options, metadata, store) pass; only the daemon opens the cache.
        var r = LmfsRunner.Run("mount", meta, mp, "--background", "--cache-dir", _dir["open-cache"], "--log-file", _dir["mount.log"]);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("--cache-dir", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
        Assert.Null(FuseMount.MountTypeAt(mp));
        Assert.Null(Vfs.MountRegistry.Load(mp));
    }

    [MountFact]
    public void Metadata_that_goes_away_before_the_daemon_connects_answers_exit_4()
    {
        using var redis = new RedisServer();
        string meta = redis.NewVolumeUrl();
        Volume(meta);
        string mp = MountPoint();
        string fifo = Fifo();
        var mount = MountInBackground(meta, mp, fifo);
        Write(OpenWriter(fifo, mount)); // the parent's pre-check reads the key, then connects to Redis
        var daemon = OpenWriter(fifo, mount); // the daemon is reading the key: the parent's checks are done
        redis.Stop();
        Write(daemon);

        var r = mount.Result;
        Assert.True(r.ExitCode == 4, r.ToString());
        Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
        Assert.Null(FuseMount.MountTypeAt(mp));
    }

    [MountFact]
    public void A_daemon_killed_before_it_is_ready_is_reported_with_its_log()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        Volume(meta);
        string mp = MountPoint();
        string fifo = Fifo();
        var mount = MountInBackground(meta, mp, fifo);
        Write(OpenWriter(fifo, mount));
        // Kill the daemon while it reads the key, never the launcher: the launcher may still hold the FIFO
        // from its own read, or read it again, so a writer may pair with it; feed it and try again.
        int pid = 0;
        for (int round = 0; round < 10 && pid == 0; round++)
        {
            using var w = OpenWriter(fifo, mount);
            if (SpinWait.SpinUntil(() => (pid = Readers(fifo).FirstOrDefault(IsDaemon)) != 0, 5_000))
            {
                Signals.Kill(pid, 9);
                break;
            }

            w.Write("secret\n"u8);
        }

        Assert.True(pid != 0, "the daemon never opened the FIFO");

        var r = mount.Result;
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains("ended before the mount", r.Stderr, StringComparison.Ordinal);
        Assert.Contains(_dir["mount.log"], r.Stderr, StringComparison.Ordinal);
        Assert.Null(FuseMount.MountTypeAt(mp));
    }

    private static bool IsDaemon(int pid)
    {
        try
        {
            return !File.ReadAllText($"/proc/{pid}/cmdline").Split('\0').Contains("--background");
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>The processes (other than this one) that have <paramref name="path"/> open.</summary>
    private static List<int> Readers(string path)
    {
        var pids = new List<int>();
        foreach (var proc in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out int pid) || pid == Environment.ProcessId)
            {
                continue;
            }

            try
            {
                if (Directory.GetFiles(Path.Combine(proc, "fd")).Any(fd => new FileInfo(fd).LinkTarget == path))
                {
                    pids.Add(pid);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // ended meanwhile, or not ours to look at
            }
        }

        return pids;
    }

    public void Dispose()
    {
        if (Directory.Exists(_dir["mp"]) && FuseMount.MountTypeAt(_dir["mp"]) is not null)
        {
            LmfsRunner.Run("umount", _dir["mp"]);
        }

        _dir.Dispose();
    }
}
