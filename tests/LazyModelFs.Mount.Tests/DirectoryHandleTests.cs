using System.Diagnostics;
using System.Globalization;
using LazyModelFs.Import;
using LazyModelFs.Testing;
using LazyModelFs.Vfs;
using Microsoft.Extensions.Logging;
using Xunit;

namespace LazyModelFs.Mount.Tests;

/// <summary>
/// Directory handles of an `--allow-other` mount opened by an unprivileged user (issue 11, item 10):
/// one listing shared per directory version, bounded handles and bytes, ENFILE past the bounds.
/// Memory is read from the daemon's counters (control socket) and its VmRSS, never from timing.
/// </summary>
public sealed partial class DirectoryHandleTests : IDisposable
{
    private const int Nobody = 65534;

    // Opens each DIR COUNT times (argv pairs), prints "opened N errnos=[...]", holds them until a line on stdin.
    private const string HoldScript = """
        import os, sys
        fds, errs = [], []
        for d, n in zip(sys.argv[1::2], sys.argv[2::2]):
            for _ in range(int(n)):
                try:
                    fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY))
                except OSError as e:
                    errs.append(e.errno)
        print("opened", len(fds), "errnos=" + ",".join(map(str, errs)), flush=True)
        sys.stdin.readline()
        """;

    private readonly TempDir _dir = new("lmfs-dirh");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    /// <summary>A volume with directories of <paramref name="entries"/> empty files each, named like shards.</summary>
    private async Task VolumeAsync(params (string Dir, int Entries)[] dirs)
    {
        await LazyModelFs.Volume.FormatAsync(Meta, $"file://{_dir["objects"]}", new(), 1 << 20, "none", "dirs");
        using var v = await LazyModelFs.Volume.OpenAsync(Meta);
        foreach (var (dir, n) in dirs)
        {
            string src = _dir["src/" + dir];
            Directory.CreateDirectory(src);
            for (int i = 0; i < n; i++)
            {
                File.Create(Path.Combine(src, $"shard-{i:D5}-of-{n:D5}.safetensors")).Dispose();
            }

            await new Importer(v, new ImportOptions()).RunAsync([src], "/");
        }
    }

    private string MountPoint()
    {
        string mp = _dir["mnt"];
        Directory.CreateDirectory(mp);
        File.SetUnixFileMode(_dir.Path, (UnixFileMode)0x1ED); // let uid 65534 reach the mount point
        return mp;
    }

    /// <summary>A process of uid 65534 holding directory handles open until disposed.</summary>
    private sealed class Holder : IDisposable
    {
        private readonly Process _p;

        public Holder(params string[] dirsAndCounts)
            : this(Nobody, dirsAndCounts)
        {
        }

        public Holder(int uid, params string[] dirsAndCounts)
        {
            var psi = new ProcessStartInfo("setpriv") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { $"--reuid={uid}", $"--regid={uid}", "--clear-groups", "/usr/bin/python3", "-c", HoldScript }.Concat(dirsAndCounts))
            {
                psi.ArgumentList.Add(a);
            }

            _p = Process.Start(psi)!;
            string line = _p.StandardOutput.ReadLine() ?? throw new InvalidOperationException("holder died: " + _p.StandardError.ReadToEnd());
            var words = line.Split(' ');
            Opened = int.Parse(words[1], CultureInfo.InvariantCulture);
            Errnos = words[2]["errnos=".Length..].Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
        }

        public int Opened { get; }

        public int[] Errnos { get; }

        public void Dispose()
        {
            _p.StandardInput.WriteLine();
            _p.StandardInput.Close();
            _p.WaitForExit();
            _p.Dispose();
        }
    }

    private static long VmRssKb(int pid) =>
        long.Parse(File.ReadAllLines($"/proc/{pid}/status").Single(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

    [MountFact]
    public async Task Nine_hundred_handles_on_a_big_directory_share_one_listing_and_the_daemon_stays_small()
    {
        const int Entries = 20_000, Handles = 900;
        await VolumeAsync(("big", Entries));
        string mp = MountPoint();
        var r = LmfsRunner.Run("mount", Meta, mp, "--background", "--allow-other", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        try
        {
            int pid = MountRegistry.Load(mp)!.Pid;
            string socket = MountRegistry.ControlSocketFor(mp);
            string big = Path.Combine(mp, "big");
            Assert.Equal((0, $"{Entries + 2}\n"), Proc.As(Nobody, "/bin/sh", "-c", $"ls -f '{big}' | wc -l")); // read whole, as that user
            long before = VmRssKb(pid);

            using (var h = new Holder(big, Handles.ToString(CultureInfo.InvariantCulture)))
            {
                Assert.Equal((Handles, 0), (h.Opened, h.Errnos.Length));
                var s = await MountClient.StatsAsync(socket);
                Assert.Equal(Handles, (int)s["dirHandles"]!);
                Assert.Equal(1, (int)s["dirSnapshots"]!);
                long bytes = (long)s["dirSnapshotBytes"]!;
                Assert.InRange(bytes, Entries * 30L, Entries * 60L); // ~46 bytes an entry, once
                long grown = VmRssKb(pid) - before;
                Assert.True(grown < 256 * 1024, $"the daemon grew by {grown} KiB for {Handles} handles"); // one listing per handle was ~2 GiB
            }

            // Closing them releases everything (RELEASEDIR comes after close(2) returns).
            Assert.True(SpinWait.SpinUntil(() => (int)MountClient.StatsAsync(socket).GetAwaiter().GetResult()["dirSnapshots"]! == 0, 30_000));
            Assert.Equal(0, (int)(await MountClient.StatsAsync(socket))["dirHandles"]!);
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
        }
    }

    [MountFact]
    public async Task Past_the_handle_and_byte_bounds_opendir_fails_with_ENFILE_and_says_so_in_the_log()
    {
        await VolumeAsync(("a", 200), ("b", 200));
        string mp = MountPoint();
        using var v = await LazyModelFs.Volume.OpenAsync(Meta);
        var logs = new ListLoggerProvider();
        var o = new MountOptions
        {
            CacheDir = _dir["cache"],
            AllowOther = true,
            BufferSize = 32L << 20,
            Vfs = new VfsOptions { MaxDirectoryHandles = 20, MaxDirectoryBytes = 10_000 }, // one 200-entry listing is ~9 KB
        };
        using var m = MountHost.Start(v, mp, o, new LoggerFactory([logs]));
        string a = Path.Combine(mp, "a"), b = Path.Combine(mp, "b");
        const int ENFILE = 23;

        // One user gets at most half the handles, so another user can still list directories; the mount's bound holds for all.
        using (var greedy = new Holder(a, "25"))
        using (var other = new Holder(Nobody - 1, a, "8"))
        using (var third = new Holder(Nobody - 2, a, "5"))
        {
            Assert.Equal(10, greedy.Opened);
            Assert.Equal(Enumerable.Repeat(ENFILE, 15), greedy.Errnos);
            Assert.Equal(8, other.Opened);
            Assert.Empty(other.Errnos);
            Assert.Equal(2, third.Opened);
            Assert.Equal(Enumerable.Repeat(ENFILE, 3), third.Errnos);
            Assert.Equal((20, 1), (m.FileSystem.Directories.Open, m.FileSystem.Directories.Snapshots));
        }

        Assert.True(SpinWait.SpinUntil(() => m.FileSystem.Directories.Open == 0, 30_000));
        Assert.True(logs.Logger.Lines.Any(l => l.Contains($"uid {Nobody} holds 10 directory handles, its share (10)", StringComparison.Ordinal)), string.Join("\n", logs.Logger.Lines));
        Assert.True(logs.Logger.Lines.Any(l => l.Contains("refused with ENFILE: 20 directory handles are open, the limit of this mount", StringComparison.Ordinal) && l.Contains($"uid {Nobody - 2}", StringComparison.Ordinal)), string.Join("\n", logs.Logger.Lines));

        // Bytes: /a's listing is held; /b's does not fit beside it, /a again shares it.
        using (var h = new Holder(a, "1", b, "1", a, "1"))
        {
            Assert.Equal(2, h.Opened);
            Assert.Equal([ENFILE], h.Errnos);
            Assert.Equal((2, 1), (m.FileSystem.Directories.Open, m.FileSystem.Directories.Snapshots));
        }

        Assert.True(SpinWait.SpinUntil(() => m.FileSystem.Directories.Open == 0, 30_000));
        Assert.Equal(0L, m.FileSystem.Directories.Bytes);
        Assert.Equal(202, Directory.EnumerateFileSystemEntries(b).Count() + 2); // alone, a listing bigger than the rest of the budget is fine
        Assert.Contains(logs.Logger.Lines, l => l.Contains("open directory listings hold", StringComparison.Ordinal));
        Assert.Equal(19, m.FileSystem.Directories.Refused);
    }

    [MountFact]
    public async Task A_directory_changed_between_two_opens_gives_each_handle_its_own_version()
    {
        await VolumeAsync(("a", 3));
        string mp = MountPoint();
        using var v = await LazyModelFs.Volume.OpenAsync(Meta);
        using var m = MountHost.Start(v, mp, new MountOptions { CacheDir = _dir["cache"], BufferSize = 32L << 20 });
        string a = Path.Combine(mp, "a");
        using var first = new DirectoryReader(a);
        using var same = new DirectoryReader(a);
        Assert.Equal((2, 1), (m.FileSystem.Directories.Open, m.FileSystem.Directories.Snapshots));

        File.WriteAllText(_dir["new.bin"], "new");
        await new Importer(v, new ImportOptions()).RunAsync([_dir["new.bin"]], "/a/");
        using var after = new DirectoryReader(a);
        Assert.Equal((3, 2), (m.FileSystem.Directories.Open, m.FileSystem.Directories.Snapshots));
        Assert.DoesNotContain("new.bin", first.Names());
        Assert.Equal(first.Names(), same.Names());
        Assert.Contains("new.bin", after.Names());
    }

    /// <summary>An open directory handle (opendir(3)), read with readdir(3) through libc.</summary>
    private sealed partial class DirectoryReader : IDisposable
    {
        private nint _dir;

        public DirectoryReader(string path)
        {
            _dir = opendir(path);
            Assert.NotEqual(0, _dir);
        }

        public unsafe List<string> Names()
        {
            rewinddir(_dir);
            var names = new List<string>();
            for (byte* d = readdir(_dir); d != null; d = readdir(_dir))
            {
                // SAFETY: struct dirent's d_name at offset 19 on 64-bit glibc/musl, NUL-terminated; valid until the next readdir.
                names.Add(System.Text.Encoding.UTF8.GetString(System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpanFromNullTerminated(d + 19)));
            }

            return names;
        }

        public void Dispose()
        {
            if (_dir != 0)
            {
                _ = closedir(_dir);
                _dir = 0;
            }
        }

        [System.Runtime.InteropServices.LibraryImport("libc", StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
        private static partial nint opendir(string path);

        [System.Runtime.InteropServices.LibraryImport("libc")]
        private static unsafe partial byte* readdir(nint dir);

        [System.Runtime.InteropServices.LibraryImport("libc")]
        private static partial void rewinddir(nint dir);

        [System.Runtime.InteropServices.LibraryImport("libc")]
        private static partial int closedir(nint dir);
    }

    public void Dispose() => _dir.Dispose();
}
