using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Cli.Tests.Faults;

/// <summary>
/// Issue 11, item 13: nothing lmfs writes or trusts may sit where another user can plant a name first
/// (mount records, control sockets, background-mount logs). The attacker is uid 65533 or 65534, the
/// victim root or uid 65534; "no writable /run" is made real with a private mount namespace whose
/// /run is a fresh tmpfs (read-only for root, root-owned for others), as on hosts without /run/lmfs.
/// </summary>
public sealed class SharedDirectoryTests : IDisposable
{
    private const int Attacker = 65533, Victim = 65534;

    private readonly TempDir _dir = new("lmfs-shared");

    public SharedDirectoryTests()
    {
        // Everyone may read the test's files; the shared directory is like /tmp (1777).
        File.SetUnixFileMode(_dir.Path, (UnixFileMode)0x1ED);
        Directory.CreateDirectory(Shared);
        File.SetUnixFileMode(Shared, (UnixFileMode)0x3FF); // 1777
    }

    private string Shared => _dir["shared"];

    private string Meta => $"sqlite://{_dir["vol/meta.db"]}";

    private static string Hash(string mountPoint) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(mountPoint)))[..16];

    /// <summary>A private mount namespace with a fresh tmpfs on /run (read-only, so root cannot make /run/lmfs either), then exec.</summary>
    private static string[] WithoutRun(bool readOnly) =>
        ["unshare", "-m", "--propagation", "private", "sh", "-c", $"mount -t tmpfs -o {(readOnly ? "ro," : "")}mode=0755 tmpfs /run && exec \"$@\"", "sh"];

    private Dictionary<string, string?> Env() => new() { ["TMPDIR"] = Shared, ["XDG_RUNTIME_DIR"] = null };

    private void Volume(string owner = "0")
    {
        Directory.CreateDirectory(_dir["vol"]);
        Assert.Equal(0, LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["vol/objects"]}", "--chunk-size", "1M").ExitCode);
        File.WriteAllBytes(_dir["a.bin"], TestData.Random((2 << 20) + 5, 3));
        Assert.Equal(0, LmfsRunner.Run("import", Meta, _dir["a.bin"], "/a.bin").ExitCode);
        Proc.Run("chown", "-R", $"{owner}:{owner}", _dir["vol"]);
    }

    private static void Plant(string path, int uid, bool directory = false, string? linkTo = null, string? text = null)
    {
        if (directory)
        {
            Directory.CreateDirectory(path);
            File.SetUnixFileMode(path, (UnixFileMode)0x1FF); // 0777
        }
        else if (linkTo is not null)
        {
            File.CreateSymbolicLink(path, linkTo);
        }
        else
        {
            File.WriteAllText(path, text ?? "");
            File.SetUnixFileMode(path, (UnixFileMode)0x1B6); // 0666
        }

        Proc.Run("chown", "-h", $"{uid}:{uid}", path);
    }

    [MountFact]
    public void A_root_mount_without_a_writable_run_keeps_its_record_private_and_never_writes_through_a_planted_link()
    {
        Volume();
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        File.WriteAllText(_dir["precious"], "precious\n");
        Plant(Path.Combine(Shared, "lmfs-mounts"), Attacker, directory: true);
        Plant(Path.Combine(Shared, "lmfs-mounts", Hash(mp) + ".json"), Attacker, linkTo: _dir["precious"]);

        var r = LmfsRunner.RunWrapped(WithoutRun(readOnly: true), ["mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]], Env());
        string record = Path.Combine(Shared, "lmfs-0", "mounts", Hash(mp) + ".json");
        try
        {
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal("precious\n", File.ReadAllText(_dir["precious"]));
            Assert.Equal(_dir["precious"], new FileInfo(Path.Combine(Shared, "lmfs-mounts", Hash(mp) + ".json")).LinkTarget);

            // The record went to root's own directory, closed to everyone else.
            foreach (var (path, mode) in new[] { (Path.Combine(Shared, "lmfs-0"), 0x1C0u), (Path.Combine(Shared, "lmfs-0", "mounts"), 0x1C0u), (record, 0x180u) })
            {
                var st = Posix.LStat(path);
                Assert.True((st.Uid, st.Mode & 0xFFF) == (0u, mode), $"{path}: uid {st.Uid} mode {Convert.ToString(st.Mode & 0xFFF, 8)}");
            }

            Assert.Contains($"\"mountPoint\":\"{mp}\"", File.ReadAllText(record), StringComparison.Ordinal);
        }
        finally
        {
            // The mount lives in the namespace of its daemon: SIGTERM unmounts it and ends both.
            int? pid = null;
            foreach (var f in new[] { record, _dir["precious"] })
            {
                try
                {
                    pid = int.Parse(JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(f))!["pid"], System.Globalization.CultureInfo.InvariantCulture);
                    break;
                }
                catch (Exception ex) when (ex is IOException or JsonException or KeyNotFoundException)
                {
                }
            }

            if (pid is { } id && Directory.Exists($"/proc/{id}"))
            {
                Proc.Run("kill", "-TERM", id.ToString(System.Globalization.CultureInfo.InvariantCulture));
                Assert.True(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{id}"), 30_000), "the daemon did not end on SIGTERM");
            }
        }
    }

    [MountFact]
    public void Warmup_by_another_user_never_trusts_a_record_planted_in_the_shared_temporary_directory()
    {
        // Root serves the volume; an attacker plants a record for that mount point naming its own volume and cache.
        Volume();
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        Assert.Equal(0, LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]).ExitCode);
        try
        {
            Directory.CreateDirectory(_dir["evil"]);
            string evilMeta = $"sqlite://{_dir["evil/meta.db"]}";
            Assert.Equal(0, LmfsRunner.Run("format", evilMeta, "--storage", $"file://{_dir["evil/objects"]}", "--chunk-size", "1M").ExitCode);
            Assert.Equal(0, LmfsRunner.Run("import", evilMeta, _dir["a.bin"], "/a.bin").ExitCode);
            Proc.Run("chmod", "-R", "a+rwX", _dir["evil"]);
            Plant(Path.Combine(Shared, "lmfs-mounts"), Attacker, directory: true);
            string evilCache = Path.Combine(Shared, "attacker-cache");
            Plant(
                Path.Combine(Shared, "lmfs-mounts", Hash(mp) + ".json"),
                Attacker,
                text: JsonSerializer.Serialize(new Dictionary<string, string> { ["mountPoint"] = mp, ["metaUrl"] = evilMeta, ["cacheDir"] = evilCache, ["pid"] = "1" }));

            var r = LmfsRunner.RunWrapped([.. WithoutRun(readOnly: false), .. LmfsRunner.AsUser(Victim)], ["warmup", mp, "/a.bin"], Env());
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains("no record of the mount", r.Stderr, StringComparison.Ordinal);
            Assert.False(Directory.Exists(evilCache), "the victim filled a cache directory the attacker chose");
            var own = Posix.LStat(Path.Combine(Shared, $"lmfs-{Victim}"));
            Assert.Equal(((uint)Victim, 0x1C0u), (own.Uid, own.Mode & 0xFFF));
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
        }
    }

    [MountFact]
    public void A_runtime_directory_made_by_someone_else_or_open_to_others_is_refused_before_mounting()
    {
        Volume(owner: Victim.ToString(System.Globalization.CultureInfo.InvariantCulture));
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        Proc.Run("chown", $"{Victim}:{Victim}", mp);
        string[] mount = ["mount", Meta, mp, "--background", "--cache-dir", Path.Combine(Shared, "cache"), "--log-file", Path.Combine(Shared, "victim.log")];
        string[] victim = [.. WithoutRun(readOnly: false), .. LmfsRunner.AsUser(Victim)];

        string fallback = Path.Combine(Shared, $"lmfs-{Victim}");
        Plant(fallback, Attacker, directory: true);
        var r = LmfsRunner.RunWrapped(victim, mount, Env());
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains($"refusing to use '{fallback}': it is owned by uid {Attacker}, not by you (uid {Victim})", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(fallback));

        Proc.Run("chown", $"{Victim}:{Victim}", fallback); // the victim's own, but writable by everyone
        r = LmfsRunner.RunWrapped(victim, mount, Env());
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains($"refusing to use '{fallback}': it is writable by group or others (mode 0777)", r.Stderr, StringComparison.Ordinal);

        // XDG_RUNTIME_DIR is trusted only if it is the user's own.
        string xdg = _dir["xdg"];
        Plant(xdg, Attacker, directory: true);
        File.SetUnixFileMode(xdg, (UnixFileMode)0x1ED); // 0755, someone else's
        r = LmfsRunner.RunWrapped(victim, mount, new Dictionary<string, string?> { ["TMPDIR"] = Shared, ["XDG_RUNTIME_DIR"] = xdg });
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains($"refusing to use '{xdg}': it is owned by uid {Attacker}", r.Stderr, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(xdg, "lmfs")));
        Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
    }

    [MountFact]
    public void A_background_mount_refuses_a_log_file_planted_as_a_link_or_owned_by_another_user()
    {
        Volume();
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        File.WriteAllText(_dir["precious"], "precious\n");
        string link = Path.Combine(Shared, "mount.log"), foreign = Path.Combine(Shared, "other.log");
        Plant(link, Victim, linkTo: _dir["precious"]);
        Plant(foreign, Victim, text: "attacker's file\n");
        try
        {
            var r = LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", link);
            Assert.True(r.ExitCode == 1, r.ToString());
            Assert.Contains($"refusing to use '{link}': it is a symbolic link", r.Stderr, StringComparison.Ordinal);
            Assert.Equal("precious\n", File.ReadAllText(_dir["precious"]));

            r = LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", foreign);
            Assert.True(r.ExitCode == 1, r.ToString());
            Assert.Contains($"it is owned by uid {Victim}, not by you (uid 0)", r.Stderr, StringComparison.Ordinal);
            Assert.Equal("attacker's file\n", File.ReadAllText(foreign));
            Assert.Null(Fuse.FuseMount.MountTypeAt(mp));

            // A new log in the same shared directory is ours and fine.
            string ok = Path.Combine(Shared, "ok.log");
            r = LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", ok);
            Assert.True(r.ExitCode == 0, r.ToString());
            var st = Posix.LStat(ok);
            Assert.Equal((0u, 0u), (st.Uid, st.Mode & 0x12)); // root's, not writable by group or others
            Assert.True(SpinWait.SpinUntil(() => File.ReadAllText(ok).Contains("mounted volume", StringComparison.Ordinal), 30_000), File.ReadAllText(ok));
        }
        finally
        {
            if (Fuse.FuseMount.MountTypeAt(mp) is not null)
            {
                LmfsRunner.Run("umount", mp);
            }
        }
    }

    [MountFact]
    public void Private_files_replace_planted_links_and_trust_only_their_owners_files()
    {
        string dir = _dir["own"];
        Directory.CreateDirectory(dir);
        File.SetUnixFileMode(dir, (UnixFileMode)0x1C0);
        File.WriteAllText(_dir["precious"], "precious\n");

        // Written under a new name and renamed: the planted link is replaced, its target untouched.
        string rec = Path.Combine(dir, "r.json");
        File.CreateSymbolicLink(rec, _dir["precious"]);
        PrivateFiles.WriteAtomic(rec, "{}");
        Assert.Equal("precious\n", File.ReadAllText(_dir["precious"]));
        Assert.Null(new FileInfo(rec).LinkTarget);
        Assert.Equal(0x180u, Posix.LStat(rec).Mode & 0xFFF);
        Assert.Equal("{}", PrivateFiles.ReadTrusted(rec));
        Assert.Single(Directory.EnumerateFileSystemEntries(dir)); // no temporary file left behind

        // Read only from regular files of ours or root's that nobody else can write.
        Assert.Null(PrivateFiles.ReadTrusted(Path.Combine(dir, "absent.json")));
        string link = Path.Combine(dir, "link.json");
        File.CreateSymbolicLink(link, rec);
        Assert.Contains("symbolic link", Assert.Throws<UnsafePathException>(() => PrivateFiles.ReadTrusted(link)).Message, StringComparison.Ordinal);
        string fifo = Path.Combine(dir, "fifo.json");
        Proc.Run("mkfifo", fifo);
        Assert.Contains("not a regular file", Assert.Throws<UnsafePathException>(() => PrivateFiles.ReadTrusted(fifo)).Message, StringComparison.Ordinal); // and no hang
        Proc.Run("chown", $"{Victim}:{Victim}", rec);
        Assert.Contains($"owned by uid {Victim}", Assert.Throws<UnsafePathException>(() => PrivateFiles.ReadTrusted(rec)).Message, StringComparison.Ordinal);
        Proc.Run("chown", "0:0", rec);
        File.SetUnixFileMode(rec, (UnixFileMode)0x1B6);
        Assert.Contains("writable by group or others", Assert.Throws<UnsafePathException>(() => PrivateFiles.ReadTrusted(rec)).Message, StringComparison.Ordinal);

        // Directories: ours are closed to others (read access taken away, write access refused); others' refused.
        string readable = _dir["readable"];
        Directory.CreateDirectory(readable);
        File.SetUnixFileMode(readable, (UnixFileMode)0x1ED);
        PrivateFiles.EnsureDirectory(readable);
        Assert.Equal(0x1C0u, Posix.LStat(readable).Mode & 0xFFF);
        string open = _dir["open"];
        Plant(open, 0, directory: true);
        Assert.Contains("writable by group or others", Assert.Throws<UnsafePathException>(() => PrivateFiles.EnsureDirectory(open)).Message, StringComparison.Ordinal);
        string theirs = _dir["theirs"];
        Plant(theirs, Attacker, directory: true);
        File.SetUnixFileMode(theirs, (UnixFileMode)0x1C0);
        Assert.Contains($"owned by uid {Attacker}", Assert.Throws<UnsafePathException>(() => PrivateFiles.EnsureDirectory(theirs)).Message, StringComparison.Ordinal);
        Assert.Contains($"owned by uid {Attacker}", Assert.Throws<UnsafePathException>(() => PrivateFiles.EnsureDirectory(Path.Combine(theirs, "sub"))).Message, StringComparison.Ordinal);
        string dirLink = _dir["dirlink"];
        File.CreateSymbolicLink(dirLink, readable);
        Assert.Equal(readable, PrivateFiles.EnsureDirectory(Path.Combine(dirLink, "x"))[..readable.Length]); // a link above is resolved, then checked

        // Ancestors: root's sticky /tmp is fine; a root directory anyone may write without the sticky bit is not.
        PrivateFiles.CheckTrusted(Path.GetTempPath());
        Assert.Contains("writable by others", Assert.Throws<UnsafePathException>(() => PrivateFiles.CheckTrusted(open)).Message, StringComparison.Ordinal);
    }

    public void Dispose() => _dir.Dispose();
}
