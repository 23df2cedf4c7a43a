using System.Diagnostics;
using LazyModelFs.Cli.Commands;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// `mount -t fuse.lazymodelfs` and /etc/fstab lines through the mount helper (issue 18, item 11).
/// mount(8) looks for its helper only in /sbin (and runs mount.fuse3's `lazymodelfs` only from the
/// default PATH), so the mount tests run in a private mount namespace (unshare -m) where a directory
/// holding the link is bind-mounted over /sbin's (or /usr/local/bin): the real mount(8), the real
/// helper lookup, and nothing changed on the machine.
/// </summary>
public sealed class MountHelperTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-helper");

    public void Dispose() => _dir.Dispose();

    /// <summary>The built lmfs executable (the apphost beside lmfs.dll): what the link points to.</summary>
    private static string Binary => Path.Combine(Path.GetDirectoryName(LmfsRunner.Dll)!, "lmfs");

    private (string Meta, string Source) Volume()
    {
        string meta = $"sqlite://{_dir["meta.db"]}";
        Assert.Equal(0, LmfsRunner.Run("format", meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M").ExitCode);
        string src = _dir.WriteRandom("src/a.bin", (3 << 20) + 17);
        Assert.Equal(0, LmfsRunner.Run("import", meta, src, "/m/a.bin").ExitCode);
        return (meta, src);
    }

    /// <summary>A directory <paramref name="dir"/> holding <paramref name="name"/> linked to the lmfs binary, and an empty mount point.</summary>
    private (string Bin, string Mnt) Linked(string dir, string name)
    {
        string bin = _dir[dir];
        Directory.CreateDirectory(bin);
        File.CreateSymbolicLink(Path.Combine(bin, name), Binary);
        string mp = _dir["mnt"];
        Directory.CreateDirectory(mp);
        return (bin, mp);
    }

    /// <summary>Runs <paramref name="script"/> with bash in a private mount namespace; its exit code and output.</summary>
    private static (int Code, string Output) InNamespace(string script)
    {
        var psi = new ProcessStartInfo("unshare") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-m", "--propagation", "private", "bash", "-c", "set -e\n" + script })
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(2)), "the mount script did not finish");
        return (p.ExitCode, output + err.Result);
    }

    [MountFact]
    public void Mount_t_and_an_fstab_line_mount_through_the_helper_in_sbin_and_read_back_bit_for_bit()
    {
        var (meta, src) = Volume();
        var (bin, mp) = Linked("sbin", "mount.fuse.lazymodelfs");
        File.WriteAllText(_dir["fstab"], $"{meta} {mp} fuse.lazymodelfs ro,allow_other,noexec,cache_dir={_dir["cache"]},buffer_size=64M,_netdev,nofail,x-systemd.requires=network-online.target 0 0\n");
        var (code, output) = InNamespace($"""
            trap 'umount -l {mp} 2>/dev/null || true' EXIT
            mount --bind {bin} "$(readlink -f /sbin)"
            mount -t fuse.lazymodelfs {meta} {mp} -o ro,allow_other,cache_dir={_dir["cache"]}
            echo "table: $(grep " {mp} " /proc/self/mounts)"
            cmp {src} {mp}/m/a.bin && echo same-bytes-1
            umount {mp}
            mount -T {_dir["fstab"]} {mp}
            echo "fstab: $(grep " {mp} " /proc/self/mounts)"
            cmp {src} {mp}/m/a.bin && echo same-bytes-2
            umount {mp}
            echo done
            """);
        Assert.True(code == 0, output);
        Assert.Contains($"table: lmfs:lmfs {mp} fuse.lazymodelfs ro,nosuid,nodev,", output, StringComparison.Ordinal);
        Assert.Contains("allow_other", output, StringComparison.Ordinal);
        Assert.Contains("same-bytes-1", output, StringComparison.Ordinal);
        Assert.Matches($"fstab: lmfs:lmfs {mp} fuse.lazymodelfs ro,nosuid,nodev,noexec,", output);
        Assert.Contains("same-bytes-2", output, StringComparison.Ordinal);
        Assert.Contains("done", output, StringComparison.Ordinal);
        Assert.DoesNotContain(File.ReadAllLines("/proc/mounts"), l => l.Contains($" {mp} ", StringComparison.Ordinal));
    }

    [MountFact]
    public void An_fstab_line_for_a_redis_volume_takes_the_password_from_redis_password_file_and_no_command_line_shows_it()
    {
        const string password = "fstab-secret-7f3a";
        using var redis = new RedisServer(password);
        string meta = redis.NewVolumeUrl();
        var env = new Dictionary<string, string?> { ["LMFS_REDIS_PASSWORD"] = password };
        Assert.Equal(0, LmfsRunner.Run(["format", meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"], env).ExitCode);
        string src = _dir.WriteRandom("src/a.bin", (2 << 20) + 5);
        Assert.Equal(0, LmfsRunner.Run(["import", meta, src, "/m/a.bin"], env).ExitCode);
        string file = _dir["redis.pass"];
        File.WriteAllText(file, password + "\n");
        File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        var (bin, mp) = Linked("sbin", "mount.fuse.lazymodelfs");
        File.WriteAllText(_dir["fstab"], $"{meta} {mp} fuse.lazymodelfs ro,cache_dir={_dir["cache"]},redis_password_file={file},_netdev,nofail 0 0\n");
        var (code, output) = InNamespace($"""
            trap 'umount -l {mp} 2>/dev/null || true' EXIT
            mount --bind {bin} "$(readlink -f /sbin)"
            mount -T {_dir["fstab"]} {mp}
            cmp {src} {mp}/m/a.bin && echo same-bytes
            for p in $(pgrep -f -- "mount {meta.Replace("?", "\\?", StringComparison.Ordinal)}"); do echo "cmdline: $(tr '\0' ' ' < /proc/$p/cmdline)"; done
            umount {mp}
            """);
        Assert.True(code == 0, output);
        Assert.Contains("same-bytes", output, StringComparison.Ordinal);
        Assert.Contains("cmdline: ", output, StringComparison.Ordinal); // the daemon was found
        Assert.DoesNotContain(password, output, StringComparison.Ordinal);
    }

    [MountFuse3Fact]
    public void Mount_t_without_the_sbin_helper_goes_through_mount_fuse3_and_the_lazymodelfs_program()
    {
        var (meta, src) = Volume();
        var (bin, mp) = Linked("localbin", "lazymodelfs");
        var (code, output) = InNamespace($"""
            trap 'umount -l {mp} 2>/dev/null || true' EXIT
            mount --bind {bin} /usr/local/bin
            mount -t fuse.lazymodelfs {meta} {mp} -o ro,cache_dir={_dir["cache"]},_netdev,nofail
            cmp {src} {mp}/m/a.bin && echo same-bytes
            umount {mp}
            """);
        Assert.True(code == 0, output);
        Assert.Contains("same-bytes", output, StringComparison.Ordinal);
    }

    [MountFact]
    public void A_binary_copied_to_the_helper_name_mounts_and_its_daemon_is_not_taken_for_a_helper()
    {
        // The daemon is started as this same executable (its real path, not the link's): a copy named
        // lazymodelfs starts `lazymodelfs mount …`, which must run as lmfs, not as mount(8)'s helper.
        var (meta, src) = Volume();
        string copy = Path.Combine(Path.GetDirectoryName(Binary)!, "lazymodelfs"); // beside lmfs.dll, which the executable loads
        File.Copy(Binary, copy, overwrite: true);
        string mp = _dir["mnt"];
        Directory.CreateDirectory(mp);
        try
        {
            var r = LmfsRunner.Run([meta, mp, "-o", $"ro,cache_dir={_dir["cache"]}"], program: copy);
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal(File.ReadAllBytes(src), File.ReadAllBytes(Path.Combine(mp, "m/a.bin")));
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            File.Delete(copy);
        }
    }

    [Fact]
    public void The_helper_refuses_bad_options_with_the_reason_and_exit_2_as_mount_runs_it()
    {
        string link = _dir["mount.fuse.lazymodelfs"];
        File.CreateSymbolicLink(link, Binary);
        string mp = _dir["mnt"];
        Directory.CreateDirectory(mp);
        string shared = _dir["password"];
        File.WriteAllText(shared, "hunter2x\n");
        File.SetUnixFileMode(shared, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        foreach (var (args, expect) in new (string[], string)[]
        {
            (["redis://127.0.0.1:1/0", mp, "-o", "redis_password_file=" + shared], $"error: redis_password_file '{shared}' is readable (or writable) by other users"),
            (["sqlite:///nowhere/meta.db", mp, "-o", "rw,cache_dri=/x", "-t", "fuse.lazymodelfs"], "error: unknown mount option 'cache_dri=/x' for lazymodelfs"),
            (["sqlite:///nowhere/meta.db", mp, "-o", "allow_other=yes"], "error: mount.fuse.lazymodelfs: mount option 'allow_other=yes' takes no value"),
            (["sqlite:///nowhere/meta.db", mp, "-o", "cache_dir"], "error: mount.fuse.lazymodelfs: mount option 'cache_dir' needs a value"),
            (["sqlite:///nowhere/meta.db", mp, "-o", "buffer_size=lots"], "error: --buffer-size 'lots' is not a size"),
            (["sqlite:///nowhere/meta.db"], "error: mount.fuse.lazymodelfs: the metadata URL and the mount point are both needed"),
            (["redis://:hunter2x@127.0.0.1:1/0", mp, "-o", "ro"], "carries a password"),
            (["sqlite:///nowhere/meta.db", mp, "-o", "redis_password_file=" + _dir["no-such-file"]], "does not exist"),
        })
        {
            var r = LmfsRunner.Run(args, program: link);
            Assert.True(r.ExitCode == 2, $"{string.Join(' ', args)}: {r}");
            Assert.Contains(expect, r.Stderr, StringComparison.Ordinal);
            Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("hunter2x", r.Stdout + r.Stderr, StringComparison.Ordinal);
        }

        Assert.Contains("did you mean cache_dir?", LmfsRunner.Run(["sqlite:///x/meta.db", mp, "-o", "cache_dri=/x"], program: link).Stderr, StringComparison.Ordinal);
        // -f (mount's fake mount) does nothing and succeeds.
        Assert.Equal(0, LmfsRunner.Run(["sqlite:///nowhere/meta.db", mp, "-f", "-o", "ro"], program: link).ExitCode);
    }

    [Fact]
    public void Mount_options_become_lmfs_mount_options_and_what_mount_passes_for_itself_is_accepted()
    {
        var args = MountHelper.Translate(
            ["redis://10.0.0.5:6379/1?volume=models", "/models", "-n", "-o", "rw,dev,suid,allow_other,cache_dir=/nvme/lmfs,buffer-size=8G,prefetch=whole-file,_netdev,nofail,defaults,noexec,nosuid,nodev,noatime,x-systemd.automount", "-t", "fuse.lazymodelfs"],
            "mount.fuse.lazymodelfs");
        Assert.Equal(["mount", "redis://10.0.0.5:6379/1?volume=models", "/models", "--background", "--allow-other", "--cache-dir", "/nvme/lmfs", "--buffer-size", "8G", "--prefetch", "whole-file", "--noexec"], args);
        Assert.Null(MountHelper.Translate(["sqlite:///m.db", "/models", "-f"], "lazymodelfs"));
        // -s: unknown options are ignored with a warning instead of refused.
        Assert.Equal(["mount", "sqlite:///m.db", "/models", "--background"], MountHelper.Translate(["sqlite:///m.db", "/models", "-s", "-o", "mystery=1"], "lazymodelfs"));
    }
}

/// <summary>A <see cref="MountFactAttribute"/> test that also needs mount(8) to fall back to fuse3's mount.fuse for fuse.lazymodelfs.</summary>
public sealed class MountFuse3FactAttribute : FactAttribute
{
    public MountFuse3FactAttribute()
    {
        Skip = new MountFactAttribute().Skip
            ?? (!File.Exists("/sbin/mount.fuse") ? "needs fuse3's /sbin/mount.fuse (mount(8) runs it for fuse.* types without a helper of their own)"
            : File.Exists("/sbin/mount.fuse.lazymodelfs") ? "/sbin/mount.fuse.lazymodelfs is installed here: mount(8) would run it instead of mount.fuse" : null);
    }
}
