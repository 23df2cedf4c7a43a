using System.Diagnostics;
using System.Security.Cryptography;
using LazyModelFs.MemFs;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Fuse.Tests;

/// <summary>Real mounts through /dev/fuse of the in-memory filesystem (root only; CI runs as root).</summary>
[Collection("mounts")]
public sealed class MountTests(SharedMount shared) : IClassFixture<SharedMount>
{
    private static readonly byte[] Big = Pattern.Bytes(SharedMount.BigSize);

    private MemMount M => shared.Mount;

    [MountFact]
    public void Stat_symlinks_statfs_and_read_only()
    {
        Assert.Equal(SharedMount.BigSize, new FileInfo(M["big.bin"]).Length);
        Assert.Equal("hello\n", File.ReadAllText(M["hello.txt"]));
        Assert.True(Directory.Exists(M["dir/nested"]));
        Assert.False(File.Exists(M["pytorch_model.bin"]));
        Assert.Equal("dir/nested/deep.txt", new FileInfo(M["link"]).LinkTarget);
        Assert.Equal("deep", File.ReadAllText(M["link"]));
        Assert.True(new DriveInfo(M.Path).TotalSize > 0);
        var write = Assert.ThrowsAny<Exception>(() => File.WriteAllText(M["new.txt"], "x"));
        Assert.True(write is IOException or UnauthorizedAccessException, write.GetType().Name);
        Assert.Contains(M.Path, File.ReadAllText("/proc/self/mounts"), StringComparison.Ordinal);
    }

    [MountFact]
    public void Readdir_lists_ten_thousand_entries_exactly_once()
    {
        var names = Directory.GetFiles(M["many"]).Select(Path.GetFileName).ToList();
        Assert.Equal(10_000, names.Count);
        Assert.Equal(Enumerable.Range(0, 10_000).Select(i => $"entry-{i:D5}.json"), names.Order(StringComparer.Ordinal));
        var ls = Proc.Run("ls", "-la", M["many"]);
        Assert.Equal(10_000 + 3, ls.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // total, ., .. and the entries
    }

    [MountFact]
    public void Cat_of_a_large_file_is_byte_for_byte()
    {
        string copy = Path.Combine(Path.GetTempPath(), $"lmfs-cat-{Guid.NewGuid():N}");
        try
        {
            Proc.Run("sh", "-c", $"cat '{M["big.bin"]}' > '{copy}'");
            Assert.Equal(SHA256.HashData(Big), SHA256.HashData(File.ReadAllBytes(copy)));
        }
        finally
        {
            File.Delete(copy);
        }
    }

    [MountFact]
    public void Pread_at_random_offsets_matches()
    {
        using var h = File.OpenHandle(M["big.bin"]);
        var rnd = new Random(7);
        var buf = new byte[3 << 20];
        for (int i = 0; i < 300; i++)
        {
            long off = rnd.NextInt64(0, SharedMount.BigSize);
            int len = rnd.Next(1, buf.Length);
            int n = RandomAccess.Read(h, buf.AsSpan(0, len), off);
            int expected = (int)Math.Min(len, SharedMount.BigSize - off);
            Assert.Equal(expected, n);
            Assert.True(buf.AsSpan(0, n).SequenceEqual(Big.AsSpan((int)off, n)), $"mismatch at {off}+{n}");
        }
    }

    [MountFact]
    public void Mmap_with_random_access_matches()
    {
        // In another process: faulting pages of this process's own mount can deadlock with the GC (MmapProbe).
        var ranges = MmapProbe.RandomRanges(SharedMount.BigSize, 500, 64 * 1024, 8);
        Assert.Equal(MmapProbe.Expected(Big, ranges), MmapProbe.Sha256(M["big.bin"], ranges));
    }

    [MountFact]
    public void Sixteen_concurrent_readers_all_see_the_same_bytes()
    {
        byte[] want = SHA256.HashData(Big);
        var hashes = new byte[16][];
        Parallel.For(0, 16, new ParallelOptions { MaxDegreeOfParallelism = 16 }, i =>
        {
            using var f = new FileStream(M["big.bin"], FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buf = new byte[(i + 1) * 37 * 1024]; // different request sizes per reader
            int n;
            while ((n = f.Read(buf)) > 0)
            {
                sha.AppendData(buf, 0, n);
            }

            hashes[i] = sha.GetHashAndReset();
        });
        Assert.All(hashes, h => Assert.Equal(want, h));
    }
}

/// <summary>Mount lifecycles: unmount under load, a killed daemon, fusermount3, passthrough, notifications.</summary>
[Collection("mounts")]
public sealed class MountLifecycleTests
{
    [MountFact]
    public void Unmount_while_a_reader_is_blocked_does_not_hang()
    {
        var gate = new TaskCompletionSource();
        var fs = new MemoryFileSystem { ReadGate = gate.Task };
        fs.AddFile("/slow.bin", new byte[1 << 20]);
        var m = new MemMount(fs, new FuseMountOptions { UnmountGrace = TimeSpan.FromSeconds(1) });
        Exception? readerError = null;
        var reader = new Thread(() =>
        {
            try
            {
                File.ReadAllBytes(m["slow.bin"]);
            }
            catch (Exception e)
            {
                readerError = e;
            }
        }) { IsBackground = true };
        reader.Start();
        Assert.True(SpinWait.SpinUntil(() => fs.OpenFiles > 0, 10_000), "the reader never opened the file");
        Thread.Sleep(200); // let its READ reach the daemon and block on the gate

        var unmount = Task.Run(m.Dispose);
        Assert.True(unmount.Wait(TimeSpan.FromSeconds(60)), "unmount hung");
        Assert.True(reader.Join(TimeSpan.FromSeconds(60)), "the blocked reader hung after unmount");
        Assert.NotNull(readerError); // the aborted READ failed instead of returning bytes
        Assert.True(m.Session.Completion.IsCompleted);
        gate.SetResult();
    }

    [MountFact]
    public void A_killed_daemon_leaves_a_dead_mount_that_the_next_mount_cleans_up()
    {
        string dir = Directory.CreateTempSubdirectory("lmfs-dead-").FullName;
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "LazyModelFs.MemFs.dll"));
        psi.ArgumentList.Add(dir);
        psi.ArgumentList.Add("--file-mib");
        psi.ArgumentList.Add("1");
        using (var daemon = Process.Start(psi)!)
        {
            Assert.Equal("ready", daemon.StandardOutput.ReadLine());
            Assert.True(File.Exists(Path.Combine(dir, "hello.txt")));
            daemon.Kill(); // SIGKILL: no unmount, the connection dies with the process
            daemon.WaitForExit();
        }

        var dead = Assert.ThrowsAny<IOException>(() => Directory.GetFiles(dir));
        Assert.Contains("not connected", dead.Message, StringComparison.OrdinalIgnoreCase);

        var fs = new MemoryFileSystem();
        fs.AddFile("/again.txt", "back"u8.ToArray());
        using var m = new MemMount(fs, path: dir);
        Assert.True(m.Log.Contains("dead FUSE mount"), string.Join('\n', m.Log.Lines));
        Assert.Equal("back", File.ReadAllText(m["again.txt"]));
    }

    [MountFact]
    public void A_live_mount_is_not_mounted_over()
    {
        using var first = new MemMount(new MemoryFileSystem());
        var ex = Assert.Throws<FuseMountException>(() => new MemMount(new MemoryFileSystem(), path: first.Path));
        Assert.Contains("already has a fuse.lazymodelfs filesystem", ex.Message, StringComparison.Ordinal);
    }

    [MountFact]
    public void A_mount_through_a_symlink_is_recorded_under_the_resolved_path_and_not_mounted_over()
    {
        string real = Directory.CreateTempSubdirectory("lmfs-real-").FullName;
        string link = real + "-link";
        File.CreateSymbolicLink(link, real);
        try
        {
            using (var m = new MemMount(new MemoryFileSystem(), path: link))
            {
                Assert.Equal(real, m.Session.MountPoint); // the kernel's name for it
                Assert.Equal("fuse.lazymodelfs", FuseMount.MountTypeAt(real));
                var ex = Assert.Throws<FuseMountException>(() => new MemMount(new MemoryFileSystem(), path: link));
                Assert.Contains("already has a fuse.lazymodelfs filesystem", ex.Message, StringComparison.Ordinal);
                Assert.Single(FuseMount.MountTable(), e => e.MountPoint == real); // no second daemon stacked
            }

            Assert.Null(FuseMount.MountTypeAt(real));
        }
        finally
        {
            File.Delete(link);
            if (Directory.Exists(real))
            {
                Directory.Delete(real);
            }
        }
    }

    [MountFact]
    public void A_non_empty_directory_is_mounted_over_only_when_allowed()
    {
        string dir = Directory.CreateTempSubdirectory("lmfs-full-").FullName;
        File.WriteAllText(Path.Combine(dir, "keep.txt"), "mine");
        try
        {
            var ex = Assert.Throws<FuseMountException>(() => new MemMount(new MemoryFileSystem(), path: dir));
            Assert.Contains("is not empty", ex.Message, StringComparison.Ordinal);
            Assert.Contains("--nonempty", ex.Hint, StringComparison.Ordinal);
            Assert.Null(FuseMount.MountTypeAt(dir));

            var fs = new MemoryFileSystem();
            fs.AddFile("/served.txt", "volume"u8.ToArray());
            var m = new MemMount(fs, new FuseMountOptions { AllowNonEmpty = true }, path: dir);
            Assert.Equal("volume", File.ReadAllText(Path.Combine(dir, "served.txt")));
            Assert.False(File.Exists(Path.Combine(dir, "keep.txt"))); // hidden while mounted
            m.Session.Unmount();
            m.Session.Dispose();
            Assert.Equal("mine", File.ReadAllText(Path.Combine(dir, "keep.txt")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [MountFact]
    public void Unmounting_a_session_leaves_a_filesystem_mounted_over_it_alone()
    {
        var m = new MemMount(new MemoryFileSystem(), new FuseMountOptions { UnmountGrace = TimeSpan.FromSeconds(1) });
        Proc.Run("mount", "-t", "tmpfs", "lmfs-test-over", m.Path);
        try
        {
            m.Session.Unmount(); // by path it would detach the tmpfs on top (fuser #658's sibling)
            Assert.Equal("tmpfs", FuseMount.MountTypeAt(m.Path));
            Assert.True(m.Session.Completion.Wait(TimeSpan.FromSeconds(30)), "the session did not end (its connection should have been aborted)");
            Assert.Contains(m.Log.Lines, l => l.Contains("mounted over", StringComparison.Ordinal));
        }
        finally
        {
            Proc.Run("umount", m.Path); // the tmpfs
            Proc.Run("umount", "-l", m.Path); // our aborted mount under it
            m.Dispose();
        }
    }

    [Fact]
    public void Mount_points_resolve_like_realpath_and_keep_what_cannot_be_looked_up()
    {
        string root = Directory.CreateTempSubdirectory("lmfs-resolve-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "a/b"));
            File.CreateSymbolicLink(Path.Combine(root, "abs"), Path.Combine(root, "a"));
            File.CreateSymbolicLink(Path.Combine(root, "a/rel"), "../a/b");
            File.CreateSymbolicLink(Path.Combine(root, "chain"), "abs/rel");
            File.CreateSymbolicLink(Path.Combine(root, "loop"), "loop");
            string real = Proc.Run("realpath", root).Trim();
            foreach (var p in new[] { "abs", "abs/", "a/rel", "chain", "chain/..", "abs/./b", "a/b" })
            {
                Assert.Equal(Proc.Run("realpath", Path.Combine(root, p)).Trim(), FuseMount.ResolveMountPoint(Path.Combine(root, p)));
            }

            Assert.Equal(real + "/a/b/not/yet", FuseMount.ResolveMountPoint(Path.Combine(root, "chain/not/yet")));
            Assert.Equal(real + "/loop/x", FuseMount.ResolveMountPoint(Path.Combine(root, "loop/x"))); // ELOOP: kept as written
            Assert.Equal("/", FuseMount.ResolveMountPoint("/"));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [MountFact]
    public void Sigterm_unmounts_a_daemon_cleanly()
    {
        string dir = Directory.CreateTempSubdirectory("lmfs-term-").FullName;
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "LazyModelFs.MemFs.dll"));
        psi.ArgumentList.Add(dir);
        using var daemon = Process.Start(psi)!;
        Assert.Equal("ready", daemon.StandardOutput.ReadLine());
        Proc.Run("kill", "-TERM", daemon.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(daemon.WaitForExit(30_000), "the daemon did not exit after SIGTERM");
        Assert.Equal(0, daemon.ExitCode);
        Assert.Null(FuseMount.MountTypeAt(dir));
        Directory.Delete(dir);
    }

    [MountFact]
    public void Fusermount3_mounts_and_unmounts_with_the_descriptor_passed_back()
    {
        var fs = new MemoryFileSystem();
        fs.AddFile("/f.bin", Pattern.Bytes(3 << 20));
        string path;
        using (var m = new MemMount(fs, new FuseMountOptions { UseFusermount = true }))
        {
            path = m.Path;
            Assert.Equal(Pattern.Bytes(3 << 20), File.ReadAllBytes(m["f.bin"]));
            Assert.Equal("fuse.lazymodelfs", FuseMount.MountTypeAt(path));
        }

        Assert.Null(FuseMount.MountTypeAt(path));
    }

    [MountFact]
    public void Passthrough_serves_a_local_backing_file_without_the_daemon()
    {
        string backing = Path.Combine(Path.GetTempPath(), $"lmfs-backing-{Guid.NewGuid():N}");
        File.WriteAllBytes(backing, Pattern.Bytes(5 << 20));
        try
        {
            var fs = new MemoryFileSystem();
            fs.AddFile("/pt.bin", [], backingPath: backing);
            using var m = new MemMount(fs, new FuseMountOptions { Protocol = new FuseProtocolOptions { Passthrough = true } });
            Assert.True(fs.Info!.Passthrough, "the kernel did not grant FUSE_PASSTHROUGH (needs CONFIG_FUSE_PASSTHROUGH and root)");
            Assert.Equal(Pattern.Bytes(5 << 20), File.ReadAllBytes(m["pt.bin"]));
            var ranges = MmapProbe.RandomRanges(5 << 20, 50, 100_000, 9);
            Assert.Equal(MmapProbe.Expected(Pattern.Bytes(5 << 20), ranges), MmapProbe.Sha256(m["pt.bin"], ranges));
        }
        finally
        {
            File.Delete(backing);
        }
    }

    [MountFact]
    public async Task Notifications_invalidate_cached_pages_and_negative_entries()
    {
        var fs = new MemoryFileSystem();
        var file = fs.AddFile("/v.txt", "one"u8.ToArray());
        using var m = new MemMount(fs);
        Assert.Equal("one", File.ReadAllText(m["v.txt"]));
        Assert.False(File.Exists(m["late.txt"])); // now a cached negative entry

        file.Content = "two"u8.ToArray();
        fs.AddFile("/late.txt", "here"u8.ToArray());
        Assert.Equal("one", File.ReadAllText(m["v.txt"])); // kept page cache (KEEP_CACHE + EXPLICIT_INVAL_DATA)
        Assert.False(File.Exists(m["late.txt"]));

        var conn = m.Session.Connection;
        Assert.Equal(Errno.OK, await conn.InvalidateInodeAsync(file.Ino, 0, 0));
        Assert.Equal(Errno.OK, await conn.InvalidateEntryAsync(1, "late.txt"));
        Assert.Equal("two", File.ReadAllText(m["v.txt"]));
        Assert.Equal("here", File.ReadAllText(m["late.txt"]));
    }
}
