using LazyModelFs.Meta;
using LazyModelFs.Testing;
using LazyModelFs.Vfs;
using SQLitePCL;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// SQLite metadata that this process cannot write (issue 11, item 16): a read-only bind mount, a
/// file mode 0444 read by another uid, a log left by a killed writer. Reading commands work; writes
/// fail with exit 4 and say why; no side file is created that would lock the owner out later.
/// </summary>
public sealed class ReadOnlySqliteTests : IDisposable
{
    private const int Nobody = 65534;
    private readonly TempDir _dir = new("lmfs-rosql");
    private readonly List<string> _mounts = [];

    private static RunResult Ok(RunResult r)
    {
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    private static RunResult Fails(RunResult r, int code, string part)
    {
        Assert.True(r.ExitCode == code, $"expected exit {code}: {r}");
        Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
        Assert.Contains(part, r.Stderr, StringComparison.Ordinal);
        Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", r.Stderr, StringComparison.Ordinal);
        return r;
    }

    /// <summary>A volume in DIR (meta.db, objects/) holding /d/a.bin; every connection closed, so the log is folded in and gone.</summary>
    private byte[] Volume(string dir)
    {
        Directory.CreateDirectory(dir);
        string meta = $"sqlite://{dir}/meta.db";
        Ok(LmfsRunner.Run("format", meta, "--storage", $"file://{dir}/objects", "--chunk-size", "1M"));
        var data = TestData.Random((2 << 20) + 5, 7);
        File.WriteAllBytes(_dir["a.bin"], data);
        Ok(LmfsRunner.Run("import", meta, _dir["a.bin"], "/d/", "--no-progress"));
        Assert.False(File.Exists($"{dir}/meta.db-wal"));
        return data;
    }

    private string ReadOnlyView(string dir, string name)
    {
        string view = _dir[name];
        Directory.CreateDirectory(view);
        Proc.Run("mount", "--bind", "-o", "ro", dir, view);
        _mounts.Add(view);
        return view;
    }

    [RootFact]
    public void Reading_commands_work_through_a_read_only_bind_mount_and_writes_say_why()
    {
        var data = Volume(_dir["vol"]);
        string ro = ReadOnlyView(_dir["vol"], "ro");
        string meta = $"sqlite://{ro}/meta.db";

        Assert.Equal("a.bin", Ok(LmfsRunner.Run("ls", meta, "/d")).Stdout.Trim());
        Assert.Contains("usage:", Ok(LmfsRunner.Run("stat", meta, "/")).Stdout, StringComparison.Ordinal);
        Assert.Equal(data, LmfsRunner.RunBytes(["cat", meta, "/d/a.bin"]).Stdout);
        Fails(LmfsRunner.Run("import", meta, _dir["a.bin"], "/e/", "--no-progress"), 4, "is read-only: it is on a read-only file system");
        Fails(LmfsRunner.Run("rm", meta, "/d/a.bin"), 4, "is read-only");
        Fails(LmfsRunner.Run("format", $"sqlite://{ro}/other.db", "--storage", $"file://{_dir["o2"]}"), 4, "read-only file system");

        // The daemon too: mount the read-only database and read through the mount.
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        Ok(LmfsRunner.Run("mount", meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]));
        try
        {
            Assert.Equal(data, File.ReadAllBytes(Path.Combine(mp, "d/a.bin")));
        }
        finally
        {
            int? pid = LazyModelFs.Vfs.MountRegistry.Load(mp)?.Pid;
            LmfsRunner.Run("umount", mp);

            // The unmount is lazy: the daemon exits just after, and until then holds the database
            // open on the read-only view, which the tear-down unmounts (it would be busy).
            Assert.True(pid is null || SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{pid}"), 30_000), "the daemon did not exit after its unmount");
        }

        Assert.Equal(["meta.db", "objects"], Directory.GetFileSystemEntries(_dir["vol"]).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [RootFact]
    public void A_0444_database_is_read_by_another_user_who_leaves_no_side_files_behind()
    {
        var data = Volume(_dir["vol"]);
        string meta = $"sqlite://{_dir["vol"]}/meta.db";
        File.SetUnixFileMode(_dir["vol/meta.db"], UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);

        // The directory is root's (0755): uid 65534 can write nothing there.
        Assert.Equal("a.bin", Ok(LmfsRunner.RunAs(Nobody, "ls", meta, "/d")).Stdout.Trim());
        Fails(LmfsRunner.RunAs(Nobody, "import", meta, _dir["a.bin"], "/e/", "--no-progress"), 4, "is read-only: the file is not writable by this user");
        Fails(LmfsRunner.RunAs(Nobody, "format", $"sqlite://{_dir["vol"]}/sub/new.db", "--storage", $"file://{_dir["o2"]}"), 4, "cannot create the metadata database");
        Assert.False(Directory.Exists(_dir["vol/sub"]) || Directory.Exists(_dir["o2"]));

        // A directory anyone may write (as /tmp): SQLite would create -wal and -shm owned by the reader,
        // and the owner could then no longer write. A reader must create nothing.
        File.SetUnixFileMode(_dir["vol"], (UnixFileMode)0x1FF);
        Assert.Equal("a.bin", Ok(LmfsRunner.RunAs(Nobody, "ls", meta, "/d")).Stdout.Trim());
        Assert.False(File.Exists(_dir["vol/meta.db-wal"]) || File.Exists(_dir["vol/meta.db-shm"]), "a reader created side files");
        Assert.Equal(data, RunBytesAs(meta, "/d/a.bin"));

        Proc.Run("chown", "-R", "1000:1000", _dir["vol"]);
        File.SetUnixFileMode(_dir["vol/meta.db"], (UnixFileMode)0x1A4); // 0644 for its owner, uid 1000
        Ok(LmfsRunner.RunAs(Nobody, "ls", meta, "/d"));
        Ok(LmfsRunner.RunAs(1000, "import", meta, _dir["a.bin"], "/e/", "--no-progress")); // the owner still writes
        Assert.Equal("a.bin", Ok(LmfsRunner.RunAs(Nobody, "ls", meta, "/e")).Stdout.Trim());
    }

    private static byte[] RunBytesAs(string meta, string path)
    {
        var r = LmfsRunner.RunAs(Nobody, "stat", meta, path);
        Ok(r);
        return LmfsRunner.RunBytes(["cat", meta, path]).Stdout;
    }

    [RootFact]
    public void A_log_left_by_a_killed_writer_is_read_with_its_index_and_refused_clearly_without_it()
    {
        Volume(_dir["vol"]);
        string copy = _dir["copy"];
        Directory.CreateDirectory(copy);

        // A writer with the log not yet folded in (a connection still open), copied as it is: the state a kill -9 leaves.
        using (var v = LazyModelFs.Volume.OpenAsync($"sqlite://{_dir["vol"]}/meta.db").GetAwaiter().GetResult())
        {
            v.Namespace.MkdirAllAsync("/after-the-checkpoint").GetAwaiter().GetResult();
            Assert.True(WalLog.HasCommittedFrames(_dir["vol/meta.db-wal"]));
            foreach (var f in new[] { "meta.db", "meta.db-wal", "meta.db-shm" })
            {
                File.Copy(_dir["vol/" + f], Path.Combine(copy, f));
            }
        }

        string ro = ReadOnlyView(copy, "ro");
        string meta = $"sqlite://{ro}/meta.db";
        Assert.Contains("after-the-checkpoint/", Ok(LmfsRunner.Run("ls", meta, "/")).Stdout, StringComparison.Ordinal); // -wal and -shm: read with SQLite's locking

        Proc.Run("umount", ro);
        _mounts.Remove(ro);
        File.Delete(Path.Combine(copy, "meta.db-shm"));
        ro = ReadOnlyView(copy, "ro2");
        var r = Fails(LmfsRunner.Run("ls", $"sqlite://{ro}/meta.db", "/"), 4, "holds transactions not yet in the file");
        Assert.Contains("folds the log into the file", r.Stderr, StringComparison.Ordinal); // never the volume as it was before them
    }

    [Fact]
    public void A_log_with_only_uncommitted_frames_counts_as_empty()
    {
        string path = _dir["spill.db"];
        Assert.False(WalLog.HasCommittedFrames(path + "-wal")); // missing
        using (var kv = SqliteKv.Open(path, create: true))
        {
            kv.Write(tx =>
            {
                tx.Set([1], [1]);
                return 0;
            });
        }

        Batteries_V2.Init();
        Assert.Equal(raw.SQLITE_OK, raw.sqlite3_open(path, out var db));
        using (db)
        {
            Assert.Equal(raw.SQLITE_OK, raw.sqlite3_exec(db, "PRAGMA cache_size=2; BEGIN; CREATE TABLE big(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) INSERT INTO big SELECT randomblob(1000) FROM n;"));
            Assert.True(new FileInfo(path + "-wal").Length > 100_000, "the transaction spilled into the log");
            Assert.False(WalLog.HasCommittedFrames(path + "-wal")); // spilled pages of an open transaction: no commit frame
            Assert.Equal(raw.SQLITE_OK, raw.sqlite3_exec(db, "COMMIT"));
            Assert.True(WalLog.HasCommittedFrames(path + "-wal"));
        }
    }

    [RootFact]
    public async Task An_immutable_reader_notices_a_writer_and_reads_through_its_log()
    {
        Volume(_dir["vol"]);
        string ro = ReadOnlyView(_dir["vol"], "ro");
        using var reader = SqliteKv.Open($"{ro}/meta.db", create: false);
        Assert.Equal("immutable", reader.Mode);
        var store = new KvMetaStore(reader);
        var ns = new Namespace(store, (await store.LoadSettingsAsync())!);
        Assert.Null(await ns.ResolveAsync("/new"));

        using (var writer = await MetaStores.OpenAsync($"sqlite://{_dir["vol"]}/meta.db"))
        {
            await new Namespace(writer, (await writer.LoadSettingsAsync())!).MkdirAllAsync("/new");
            Assert.NotNull(await ns.ResolveAsync("/new")); // the writer's log appeared: opened again, with its index
            Assert.Equal("read-only", reader.Mode);
        }
    }

    public void Dispose()
    {
        foreach (var m in _mounts)
        {
            Proc.Run("umount", m);
        }

        _dir.Dispose();
    }
}
