using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Meta;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Cli.Tests.Faults;

/// <summary>
/// Processes that die (the mount daemon, an import) and input that is hostile (damaged metadata,
/// names that escape, other users): the embedded volume through the real `lmfs` command.
/// </summary>
public sealed class ProcessFaultTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-pfault");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    private byte[] Volume(string name = "m.bin", int size = (3 << 20) + 99)
    {
        var data = TestData.Random(size, 3);
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/" + name], data);
        if (!File.Exists(_dir["meta.db"]))
        {
            Ok(LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        }

        Ok(LmfsRunner.Run("import", Meta, _dir["src/" + name], "/d/", "--no-progress"));
        return data;
    }

    private RunResult MountBackground(string mp) =>
        LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]);

    /// <summary>Mounts the volume in the background on a fresh directory, runs <paramref name="body"/>, and unmounts whatever is left.</summary>
    private void WithBackgroundMount(Action<string> body)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-pmp-").FullName;
        try
        {
            Ok(MountBackground(mp));
            body(mp);
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp);
        }
    }

    private static void WaitExit(int pid) => Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{pid}"), 30_000), $"process {pid} did not exit");

    [MountFact]
    public void A_killed_daemon_leaves_a_dead_mount_that_mount_and_umount_both_recover()
    {
        var data = Volume();
        WithBackgroundMount(mp =>
        {
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/m.bin")));
            int pid = MountRegistry.Load(mp)!.Pid;
            Assert.Equal(0, Signals.Kill(pid, Signals.SIGKILL));
            WaitExit(pid);
            Assert.ThrowsAny<IOException>(() => File.ReadAllBytes(Path.Combine(mp, "d/m.bin"))); // "Transport endpoint is not connected"

            Ok(MountBackground(mp)); // the dead mount is detached and the volume mounted again
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/m.bin")));
            Assert.Contains("dead FUSE mount", File.ReadAllText(_dir["mount.log"]), StringComparison.Ordinal);

            pid = MountRegistry.Load(mp)!.Pid;
            Assert.Equal(0, Signals.Kill(pid, Signals.SIGKILL));
            WaitExit(pid);
            Ok(LmfsRunner.Run("umount", mp)); // umount works on a dead mount too
            Assert.Null(FuseMount.MountTypeAt(mp));
        });
    }

    [MountFact]
    public void Sigterm_unmounts_cleanly_and_the_daemon_exits()
    {
        var data = Volume();
        WithBackgroundMount(mp =>
        {
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/m.bin")));
            int pid = MountRegistry.Load(mp)!.Pid;
            Assert.Equal(0, Signals.Kill(pid, Signals.SIGTERM));
            WaitExit(pid);
            Assert.Null(FuseMount.MountTypeAt(mp));
            Assert.Null(MountRegistry.Load(mp));
            Assert.Contains("unmounted", File.ReadAllText(_dir["mount.log"]), StringComparison.Ordinal);
        });
    }

    [Fact]
    public void An_import_killed_midway_leaves_no_visible_file_and_a_rerun_completes_it()
    {
        Volume("small.bin", 1000); // formats the volume
        var big = TestData.Random(192 << 20, 4);
        File.WriteAllBytes(_dir["src/big.bin"], big);
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { LmfsRunner.Dll, "import", Meta, _dir["src/big.bin"], "/d/big.bin", "--no-progress", "-j", "1" })
        {
            psi.ArgumentList.Add(a);
        }

        using (var p = Process.Start(psi)!)
        {
            // Kill it once a few chunks are stored, well before the last one.
            string chunks = _dir["objects/chunks"];
            bool midway = SpinWait.SpinUntil(() => Directory.Exists(chunks) && Directory.EnumerateFiles(chunks, "*", SearchOption.AllDirectories).Count() >= 4, 60_000);
            Assert.False(p.HasExited, "the import finished before it could be killed; make the file larger");
            Assert.True(midway);
            p.Kill();
            p.WaitForExit();
        }

        var ls = LmfsRunner.Run("ls", Meta, "/d");
        Ok(ls);
        Assert.DoesNotContain("big.bin", ls.Stdout, StringComparison.Ordinal);
        Ok(LmfsRunner.Run("import", Meta, _dir["src/big.bin"], "/d/big.bin", "--no-progress"));
        Assert.Equal(big, LmfsRunner.RunBytes(["cat", Meta, "/d/big.bin"]).Stdout);
    }

    [Fact]
    public void Destinations_with_dot_segments_are_refused_and_change_nothing()
    {
        Volume();
        foreach (var dest in new[] { "/d/../../etc/passwd", "/d/./x.bin", "../x" })
        {
            var r = LmfsRunner.Run("import", Meta, _dir["src/m.bin"], dest, "--no-progress");
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains("not allowed", r.Stderr, StringComparison.Ordinal);
        }

        Assert.Equal("m.bin", LmfsRunner.Run("ls", Meta, "/d").Stdout.Trim());
        Assert.Equal(["d/"], LmfsRunner.Run("ls", Meta, "/").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task Names_with_nul_slash_or_dot_segments_never_reach_the_metadata()
    {
        var v = await TwinVolume.CreateAsync(new MemoryObjectStore(), 1 << 20, "none");
        foreach (var bad in new[] { "a\0b", "a/b", ".", "..", "", new string('x', 256) })
        {
            Assert.Throws<LmfsException>(() => Namespace.ValidateName(bad));
        }

        await Assert.ThrowsAsync<LmfsException>(() => v.Namespace.ResolveAsync("/a/\0/b"));
    }

    [Fact]
    public void Damaged_metadata_records_decode_to_a_clear_error_never_a_crash()
    {
        var rng = new Random(42);
        var node = new Node(7, NodeType.File, 0x1A4, 1000, 1000, 1, 123456, 1, 2, 1).Encode();
        var link = new Node(8, NodeType.Symlink, 0x1FF, 0, 0, 1, 0, 1, 2, 1, "target/é").Encode();
        var entry = new DirEntry("x", 7, NodeType.File).EncodeValue();
        var rows = Enumerable.Range(0, 5).Select(i => new ChunkEntry(ChunkId.Of(BitConverter.GetBytes(i)), i < 4 ? 1 << 20 : 5, (i < 4 ? 1 << 20 : 5) + ChunkObject.HeaderSize, ChunkCodec.None, (uint)i)).ToList();
        var table = new ChunkTable(rows, 1 << 20).Encode();
        var settings = SettingsCodec.Encode(new VolumeSettings { Name = "v", Uuid = Guid.NewGuid(), ChunkSize = 1 << 20, Compression = "none", Storage = "file:///x", CreatedAt = DateTimeOffset.UnixEpoch });
        Assert.Equal(5, ChunkTable.Decode(table, 1 << 20).Count); // the originals decode

        Action<byte[]>[] decoders =
        [
            b => Node.Decode(7, b),
            b => DirEntry.DecodeValue("x", b),
            b => ChunkTable.Decode(b, 1 << 20),
            b => SettingsCodec.Decode(b),
        ];
        byte[][] originals = [node, link, entry, table, settings];
        int errors = 0;
        for (int i = 0; i < 20_000; i++)
        {
            int which = rng.Next(originals.Length);
            var b = Mutate(originals[which], rng);
            try
            {
                decoders[which switch { 0 or 1 => 0, 2 => 1, 3 => 2, _ => 3 }](b);
            }
            catch (LmfsException)
            {
                errors++; // MetaCorruptException and version errors: clear, typed, expected
            }
        }

        Assert.True(errors > 1000, $"only {errors} of the mutations were caught; the fuzzer is not reaching the checks");

        // The table's own checks: a stored length that cannot be, a newer version.
        var bad = (byte[])table.Clone();
        BinaryPrimitives.WriteInt32LittleEndian(bad.AsSpan(ChunkTable.HeaderSize + 36), int.MaxValue);
        Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(bad, 1 << 20));
        var newer = (byte[])table.Clone();
        newer[4] = 99;
        Assert.Contains("version 99", Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(newer, 1 << 20)).Message, StringComparison.Ordinal);
        var future = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(settings).Replace($"\"formatVersion\":{VolumeSettings.CurrentFormatVersion}", "\"formatVersion\":9", StringComparison.Ordinal));
        Assert.Contains("upgrade lmfs", Assert.Throws<LmfsException>(() => SettingsCodec.Decode(future)).Hint, StringComparison.Ordinal);
    }

    private static byte[] Mutate(byte[] original, Random rng)
    {
        var b = new List<byte>(original);
        int edits = rng.Next(1, 4);
        for (int e = 0; e < edits; e++)
        {
            switch (rng.Next(4))
            {
                case 0 when b.Count > 0:
                    b[rng.Next(b.Count)] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1 when b.Count > 0:
                    int at = rng.Next(b.Count);
                    b.RemoveRange(at, 1 + rng.Next(Math.Min(8, b.Count - at)));
                    break;
                case 2:
                    b.Insert(rng.Next(b.Count + 1), (byte)rng.Next(256));
                    break;
                default:
                    if (b.Count > 0)
                    {
                        b[rng.Next(b.Count)] = (byte)rng.Next(256);
                    }

                    break;
            }
        }

        return [.. b];
    }

    [MountFact]
    public async Task Owners_and_modes_are_kept_default_permissions_enforced_and_other_users_let_in_only_when_asked()
    {
        Directory.CreateDirectory(_dir["perm"]);
        File.WriteAllText(_dir["perm/public.txt"], "for everyone\n");
        File.WriteAllText(_dir["perm/secret.txt"], "for uid 1234 only\n");
        File.SetUnixFileMode(_dir["perm/public.txt"], (UnixFileMode)0x1A4); // 0644
        File.SetUnixFileMode(_dir["perm/secret.txt"], (UnixFileMode)0x180); // 0600
        Proc.Run("chown", "1234:1234", _dir["perm/public.txt"], _dir["perm/secret.txt"]);
        Ok(LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["objects"]}"));
        Ok(LmfsRunner.Run("import", Meta, _dir["perm"], "/", "--no-progress"));

        using var v = await LazyModelFs.Volume.OpenAsync(Meta);
        foreach (bool allowOther in new[] { false, true })
        {
            string mp = Directory.CreateTempSubdirectory("lmfs-perm-").FullName;
            File.SetUnixFileMode(mp, (UnixFileMode)0x1ED);
            using (var m = MountHost.Start(v, mp, new MountOptions { CacheDir = _dir["cache"], AllowOther = allowOther, BufferSize = 32L << 20 }))
            {
                string pub = Path.Combine(mp, "perm/public.txt"), secret = Path.Combine(mp, "perm/secret.txt");
                var st = Posix.Stat(secret);
                Assert.Equal((1234u, 1234u, 0x180u), (st.Uid, st.Gid, st.Mode & 0xFFF));
                Assert.Equal(0x1A4u, Posix.Stat(pub).Mode & 0xFFF);
                Assert.Equal("for everyone\n", File.ReadAllText(pub)); // root
                if (!allowOther)
                {
                    // Without --allow-other the kernel lets no other user in, not even the files' owner.
                    Assert.NotEqual(0, As(1234, "cat", pub).Code);
                }
                else
                {
                    Assert.Equal((0, "for everyone\n"), As(4321, "cat", pub));
                    Assert.Equal((0, "for uid 1234 only\n"), As(1234, "cat", secret));
                    var denied = As(4321, "cat", secret); // default_permissions: mode 0600 of uid 1234
                    Assert.NotEqual(0, denied.Code);
                    Assert.Contains("Permission denied", denied.Output, StringComparison.Ordinal);
                }
            }

            Directory.Delete(mp);
        }
    }

    [MountFact]
    public void A_mount_without_allow_other_says_who_can_use_it_and_how_to_share_it()
    {
        // Other users got "Permission denied" and nothing anywhere named --allow-other (issue 18, item 12);
        // the kernel answers them itself, so the mount says it when it comes up.
        Volume();
        foreach (bool allowOther in new[] { false, true })
        {
            string mp = Directory.CreateTempSubdirectory("lmfs-pnote-").FullName;
            File.SetUnixFileMode(mp, (UnixFileMode)0x1ED);
            File.Delete(_dir["mount.log"]);
            try
            {
                string[] args = ["mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]];
                var r = LmfsRunner.Run(allowOther ? [.. args, "--allow-other"] : args);
                Ok(r);
                string note = $"only uid 0 can use {mp}: the kernel refuses every other user (Permission denied); to share it, mount with --allow-other";
                string log = File.ReadAllText(_dir["mount.log"]);
                Assert.Equal(!allowOther, r.Stdout.Contains(note, StringComparison.Ordinal));
                Assert.Equal(!allowOther, log.Contains(note, StringComparison.Ordinal));
                Assert.Contains("mounted volume", log, StringComparison.Ordinal);
                Assert.Equal(allowOther, As(65534, "cat", Path.Combine(mp, "d/m.bin")).Code == 0);
            }
            finally
            {
                if (FuseMount.MountTypeAt(mp) is not null)
                {
                    Ok(LmfsRunner.Run("umount", mp));
                }

                Directory.Delete(mp);
            }
        }
    }

    [MountFact]
    public void A_mount_through_a_symlink_comes_up_is_not_stacked_and_unmounts_through_the_link()
    {
        var data = Volume();
        string real = Directory.CreateTempSubdirectory("lmfs-preal-").FullName;
        string link = real + "-link";
        File.CreateSymbolicLink(link, real);
        try
        {
            Ok(MountBackground(link)); // readiness compares the kernel's (resolved) path
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(link, "d/m.bin")));
            Assert.Equal(real, MountRegistry.Load(real)!.MountPoint);

            // A retrying supervisor: a second mount, through the link or not, is refused with exit 2.
            var again = MountBackground(link);
            Assert.True(again.ExitCode == 2, again.ToString());
            Assert.Contains("already has a fuse.lazymodelfs filesystem", again.Stderr, StringComparison.Ordinal);
            Assert.Equal(2, LmfsRunner.Run("mount", Meta, real, "--cache-dir", _dir["cache"]).ExitCode);
            Assert.Single(FuseMount.MountTable(), e => e.MountPoint == real);

            var check = LmfsRunner.Run("warmup", link, Path.Combine(link, "d/m.bin"), "--check");
            Assert.True(check.ExitCode == 0, check.ToString());
            Assert.Contains("cached:", check.Stdout, StringComparison.Ordinal);

            var u = LmfsRunner.Run("umount", link);
            Assert.True(u.ExitCode == 0, u.ToString());
            Assert.Null(FuseMount.MountTypeAt(real));
        }
        finally
        {
            LmfsRunner.Run("umount", real);
            File.Delete(link);
            Directory.Delete(real);
        }
    }

    [MountFact]
    public void Umount_leaves_other_filesystems_alone_unless_forced()
    {
        string dir = Directory.CreateTempSubdirectory("lmfs-other-").FullName;
        var session = FuseSession.Mount(dir, new LazyModelFs.MemFs.MemoryFileSystem(), new FuseMountOptions { Subtype = "memfs", FsName = "memfs" });
        try
        {
            var r = LmfsRunner.Run("umount", dir);
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains("is a fuse.memfs mount, not an lmfs mount", r.Stderr, StringComparison.Ordinal);
            Assert.Equal("fuse.memfs", FuseMount.MountTypeAt(dir));

            Ok(LmfsRunner.Run("umount", "--force", dir));
            Assert.Null(FuseMount.MountTypeAt(dir));
            Assert.True(session.Completion.Wait(TimeSpan.FromSeconds(30)));
        }
        finally
        {
            session.Dispose();
            Directory.Delete(dir);
        }

        string tmpfs = Directory.CreateTempSubdirectory("lmfs-tmpfs-").FullName;
        Proc.Run("mount", "-t", "tmpfs", "lmfs-test", tmpfs);
        try
        {
            var r = LmfsRunner.Run("umount", tmpfs);
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Equal("tmpfs", FuseMount.MountTypeAt(tmpfs));
        }
        finally
        {
            Proc.Run("umount", tmpfs);
            Directory.Delete(tmpfs);
        }
    }

    [MountFact]
    public void A_non_empty_mount_point_is_refused_unless_nonempty()
    {
        var data = Volume();
        string mp = Directory.CreateTempSubdirectory("lmfs-pfull-").FullName;
        File.WriteAllText(Path.Combine(mp, "keep.txt"), "mine");
        try
        {
            foreach (var r in new[] { MountBackground(mp), LmfsRunner.Run("mount", Meta, mp, "--cache-dir", _dir["cache"]) })
            {
                Assert.True(r.ExitCode == 2, r.ToString());
                Assert.Contains("is not empty", r.Stderr, StringComparison.Ordinal);
                Assert.Contains("--nonempty", r.Stderr, StringComparison.Ordinal);
            }

            Assert.Null(FuseMount.MountTypeAt(mp));
            Ok(LmfsRunner.Run("mount", Meta, mp, "--background", "--nonempty", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]));
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/m.bin")));
            Assert.False(File.Exists(Path.Combine(mp, "keep.txt")));
            Ok(LmfsRunner.Run("umount", mp));
            Assert.True(SpinWait.SpinUntil(() => FuseMount.MountTypeAt(mp) is null, 10_000));
            Assert.Equal("mine", File.ReadAllText(Path.Combine(mp, "keep.txt")));
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp, recursive: true);
        }
    }

    [MountFact]
    public void A_redis_password_in_the_url_stays_off_command_lines_records_and_logs()
    {
        const string Password = "Zq7/secret@x";
        using var redis = new RedisServer(Password);
        string url = $"redis://:{Uri.EscapeDataString(Password)}@127.0.0.1:{redis.Port}/0?volume=sec";
        var data = TestData.Random((2 << 20) + 5, 4);
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/s.bin"], data);
        Ok(LmfsRunner.Run("format", url, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", url, _dir["src/s.bin"], "/d/", "--no-progress"));
        string mp = Directory.CreateTempSubdirectory("lmfs-psec-").FullName;
        try
        {
            var mounted = LmfsRunner.Run("mount", url, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]);
            Ok(mounted);
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/s.bin"))); // the password reached the daemon
            var record = MountRegistry.Load(mp)!;
            // Any user can read a command line; the daemon's must not hold the password, encoded or not.
            var cmdline = As(65534, "cat", $"/proc/{record.Pid}/cmdline");
            Assert.Equal(0, cmdline.Code);
            Assert.Contains("mount", cmdline.Output, StringComparison.Ordinal);
            Assert.NotEqual(0, As(65534, "cat", $"/proc/{record.Pid}/environ").Code); // where it went instead: owner-only
            foreach (var text in new[] { cmdline.Output, record.MetaUrl, File.ReadAllText(_dir["mount.log"]), mounted.Stdout + mounted.Stderr })
            {
                Assert.DoesNotContain("Zq7", text, StringComparison.Ordinal);
            }
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            SpinWait.SpinUntil(() => FuseMount.MountTypeAt(mp) is null, 10_000);
            Directory.Delete(mp);
        }
    }

    private static (int Code, string Output) As(int uid, string file, params string[] args) => Proc.As(uid, file, args);

    public void Dispose() => _dir.Dispose();
}
