using System.Security.Cryptography;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>The `lmfs` executable as users run it: a separate process, real engines, real exit codes.</summary>
public sealed class CliTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    private readonly TempDir _dir = new("lmfs-cli");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    private string Objects => $"file://{_dir["objects"]}";

    /// <summary>Asserts a failure as users should see it: non-zero, "error:" and "hint:", no stack trace.</summary>
    private static RunResult Fails(RunResult r, int code, string messagePart)
    {
        Assert.True(r.ExitCode == code, $"expected exit {code}: {r}");
        Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
        Assert.Contains(messagePart, r.Stderr, StringComparison.Ordinal);
        Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", r.Stderr, StringComparison.Ordinal);
        return r;
    }

    private static RunResult Ok(RunResult r)
    {
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    private string Source(string name, int size) => _dir.WriteRandom(name, size);

    [Fact]
    public void Warmup_into_a_cache_that_cannot_take_the_chunks_fails_and_reports_nothing_cached_that_is_not()
    {
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects, "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", Meta, Source("w.bin", (3 << 20) + 5), "/w.bin"));

        // Where every chunk's shard directory would go, a file: no chunk can be written (root too).
        string chunks = Path.Combine(_dir["cache"], "chunks");
        Directory.CreateDirectory(chunks, (UnixFileMode)0x1C0);
        File.SetUnixFileMode(_dir["cache"], (UnixFileMode)0x1C0);
        for (int i = 0; i < 256; i++)
        {
            File.WriteAllText(Path.Combine(chunks, i.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)), "not a directory");
        }

        var r = Fails(LmfsRunner.Run("warmup", Meta, "/w.bin", "--cache-dir", _dir["cache"]), 1, "4 of 4 chunks could not be written to the cache");
        Assert.DoesNotContain("warmed up", r.Stdout, StringComparison.Ordinal);
        Assert.Contains("cached: 0 B of", Ok(LmfsRunner.Run("warmup", Meta, "/w.bin", "--cache-dir", _dir["cache"], "--check")).Stdout, StringComparison.Ordinal);

        // Once the cache can take them, warmup fills it and says so.
        Directory.Delete(chunks, recursive: true);
        Assert.Contains("warmed up", Ok(LmfsRunner.Run("warmup", Meta, "/w.bin", "--cache-dir", _dir["cache"])).Stdout, StringComparison.Ordinal);
        Assert.Contains("(100.0%)", Ok(LmfsRunner.Run("warmup", Meta, "/w.bin", "--cache-dir", _dir["cache"], "--check")).Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Format_import_ls_stat_cat_rm_on_the_embedded_default()
    {
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects, "--chunk-size", "1M"));
        string model = _dir["model"];
        Source("model/model.safetensors", (3 << 20) + 17);
        File.WriteAllText(_dir["model/config.json"], "{\"a\": 1}");
        var import = Ok(LmfsRunner.Run("import", Meta, model, "/models/"));
        Assert.Contains("imported 2 file(s)", import.Stdout, StringComparison.Ordinal);
        Assert.Contains("chunks: 5 total", import.Stdout, StringComparison.Ordinal);

        var ls = Ok(LmfsRunner.Run("ls", "-l", Meta, "/models/model"));
        Assert.Contains("config.json", ls.Stdout, StringComparison.Ordinal);
        Assert.Contains("3145745 ", ls.Stdout, StringComparison.Ordinal);
        var stat = Ok(LmfsRunner.Run("stat", Meta, "/models/model/model.safetensors", "--chunks"));
        Assert.Contains("chunks:   4 of 1.0 MiB", stat.Stdout, StringComparison.Ordinal);
        Assert.Contains("     3 @       3145728 ", stat.Stdout, StringComparison.Ordinal); // the last chunk starts at 3 × 1 MiB

        var cat = LmfsRunner.RunBytes(["cat", Meta, "/models/model/model.safetensors"]);
        Assert.Equal(0, cat.ExitCode);
        Assert.Equal(SHA256.HashData(File.ReadAllBytes(_dir["model/model.safetensors"])), SHA256.HashData(cat.Stdout));

        Fails(LmfsRunner.Run("rm", Meta, "/models"), 2, "not empty");
        Ok(LmfsRunner.Run("rm", "-r", Meta, "/models"));
        Assert.Equal("", Ok(LmfsRunner.Run("ls", Meta, "/")).Stdout);
    }

    [Fact]
    public void Redis_and_s3_with_credentials_from_the_environment()
    {
        string meta = servers.Redis.NewVolumeUrl();
        string storage = $"s3://{servers.S3.Bucket}/cli{Guid.NewGuid():N}";
        Ok(LmfsRunner.Run(["format", meta, "--storage", storage, "--endpoint", servers.S3.Endpoint, "--compression", "zstd"], LmfsRunner.S3Env()));
        string src = Source("w.bin", (5 << 20) + 3);
        Ok(LmfsRunner.Run(["import", meta, src, "/w.bin"], LmfsRunner.S3Env()));
        var cat = LmfsRunner.RunBytes(["cat", meta, "/w.bin"], LmfsRunner.S3Env());
        Assert.Equal(0, cat.ExitCode);
        Assert.Equal(File.ReadAllBytes(src), cat.Stdout);

        // Without credentials the message says how to provide them.
        Fails(LmfsRunner.Run("cat", meta, "/w.bin"), 5, "no S3 credentials found");
        // With a secret file instead of the environment.
        File.WriteAllText(_dir["secret"], S3rverServer.SecretKey + "\n");
        Assert.Equal(0, LmfsRunner.RunBytes(["cat", meta, "/w.bin", "--access-key", S3rverServer.AccessKey, "--secret-key-file", _dir["secret"]]).ExitCode);
    }

    [Fact]
    public void Malformed_urls_are_refused_and_create_nothing()
    {
        Fails(LmfsRunner.Run("format", "not-a-url", "--storage", Objects), 2, "is not a metadata URL");
        Fails(LmfsRunner.Run("format", "ftp://x/y", "--storage", Objects), 2, "scheme 'ftp' is not supported");
        Fails(LmfsRunner.Run("format", "sqlite://relative/meta.db", "--storage", Objects), 2, "names host");
        Fails(LmfsRunner.Run("format", Meta, "--storage", "nope"), 2, "is not a storage URL");
        Fails(LmfsRunner.Run("format", Meta, "--storage", Objects, "--chunk-size", "3M"), 2, "chunk size");
        Fails(LmfsRunner.Run("format", Meta, "--storage", Objects, "--compression", "lz4"), 2, "lz4");
        Assert.False(File.Exists(_dir["meta.db"]));
        Assert.False(Directory.Exists(_dir["objects"]));
    }

    [Fact]
    public void A_bucket_or_a_directory_given_as_the_volume_is_answered_with_format_and_import()
    {
        // `lmfs mount s3://bucket/...` said only "scheme 's3' is not supported" (issue 18, item 13).
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        string models = _dir["models"];
        Directory.CreateDirectory(models);
        foreach (var (url, what) in new[] { ("s3://my-bucket/models", "is an object-store URL, not a metadata URL"), ($"file://{models}", "is a directory, not a metadata URL"), (models, "is a directory, not a metadata URL") })
        {
            var r = Fails(LmfsRunner.Run("mount", url, mp), 2, $"'{url}' {what}: lmfs mounts a volume, which is formatted and imported first");
            string hint = r.Stderr.Split('\n').Single(l => l.StartsWith("hint: ", StringComparison.Ordinal));
            Assert.Contains("lmfs format sqlite:///var/lib/lmfs/meta.db --storage ", hint, StringComparison.Ordinal);
            Assert.Contains("lmfs import sqlite:///var/lib/lmfs/meta.db ", hint, StringComparison.Ordinal);
            Assert.Contains(url.StartsWith("s3:", StringComparison.Ordinal) ? "--storage s3://my-bucket/lmfs" : $"import sqlite:///var/lib/lmfs/meta.db {models}/ /models/", hint, StringComparison.Ordinal);
        }

        Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
        Assert.Empty(Directory.EnumerateFileSystemEntries(mp));

        // The SQLite file itself, without its scheme.
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects));
        Fails(LmfsRunner.Run("ls", _dir["meta.db"]), 2, "is a file, not a metadata URL");
        Assert.Contains($"hint: if it is a volume's SQLite database, write {Meta}", LmfsRunner.Run("ls", _dir["meta.db"]).Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Unreachable_services_missing_bucket_and_wrong_credentials_are_explained()
    {
        Fails(LmfsRunner.Run("format", $"redis://127.0.0.1:{Ports.Free()}/0", "--storage", Objects), 4, "cannot connect to Redis");
        Fails(LmfsRunner.Run(["format", Meta, "--storage", "s3://lmfs-test/x", "--endpoint", $"http://127.0.0.1:{Ports.Free()}"], LmfsRunner.S3Env()), 5, "cannot reach");
        Fails(LmfsRunner.Run(["format", Meta, "--storage", "s3://missing-bucket/x", "--endpoint", servers.S3.Endpoint], LmfsRunner.S3Env()), 5, "bucket 'missing-bucket' does not exist");
        var wrong = Fails(
            LmfsRunner.Run(["format", Meta, "--storage", "s3://lmfs-test/x", "--endpoint", servers.S3.Endpoint], new Dictionary<string, string?> { ["AWS_ACCESS_KEY_ID"] = "nobody", ["AWS_SECRET_ACCESS_KEY"] = "hunter2-secret" }),
            5,
            "refused the credentials");
        Assert.DoesNotContain("hunter2-secret", wrong.Stdout + wrong.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(_dir["meta.db"]), "a failed format must not leave a metadata file behind");
    }

    [Fact]
    public void Redis_password_never_appears_in_output()
    {
        var r = Fails(LmfsRunner.Run("ls", $"redis://:sup3r-secret@127.0.0.1:{Ports.Free()}/0"), 4, "cannot connect to Redis");
        Assert.DoesNotContain("sup3r-secret", r.Stdout + r.Stderr, StringComparison.Ordinal);
        Assert.Contains("***@127.0.0.1", r.Stderr, StringComparison.Ordinal);

        // Passwords that are not valid in a URL (a raw '/', '?', '@') and URLs that cannot carry one:
        // the error names the URL, never the password.
        foreach (var url in new[] { $"redis://:sup3r/secret@127.0.0.1:{Ports.Free()}/0", $"redis://:sup3r@x?y@127.0.0.1:{Ports.Free()}/0", "sqlite://user:sup3r@host/meta.db" })
        {
            var bad = LmfsRunner.Run("ls", url);
            Assert.NotEqual(0, bad.ExitCode);
            Assert.StartsWith("error: ", bad.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("sup3r", bad.Stdout + bad.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("secret", bad.Stdout + bad.Stderr, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Unformatted_and_already_formatted_volumes_are_refused()
    {
        Fails(LmfsRunner.Run("ls", Meta), 2, "does not exist");
        Fails(LmfsRunner.Run("ls", servers.Redis.NewVolumeUrl()), 2, "no volume is formatted");
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects));
        var before = File.ReadAllBytes(_dir["meta.db"]);
        Fails(LmfsRunner.Run("format", Meta, "--storage", Objects), 2, "already holds volume");
        Assert.Equal(before, File.ReadAllBytes(_dir["meta.db"]));
    }

    [Fact]
    public void Missing_source_and_existing_destination_change_nothing()
    {
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects));
        string a = Source("a.bin", 1000);
        Ok(LmfsRunner.Run("import", Meta, a, "/a.bin"));
        string usage = Ok(LmfsRunner.Run("stat", Meta, "/")).Stdout;

        Fails(LmfsRunner.Run("import", Meta, _dir["nope.bin"], "/b.bin"), 2, "does not exist");
        string b = Source("other/a.bin", 2000);
        Fails(LmfsRunner.Run("import", Meta, b, "/a.bin"), 2, "already exist");
        Fails(LmfsRunner.Run("import", Meta, a, "/x/../a.bin"), 2, "'..' is not allowed");
        Assert.Equal(usage.Split('\n').Single(l => l.StartsWith("usage:", StringComparison.Ordinal)), Ok(LmfsRunner.Run("stat", Meta, "/")).Stdout.Split('\n').Single(l => l.StartsWith("usage:", StringComparison.Ordinal)));

        Ok(LmfsRunner.Run("import", Meta, b, "/a.bin", "--overwrite"));
        Assert.Equal(File.ReadAllBytes(b), LmfsRunner.RunBytes(["cat", Meta, "/a.bin"]).Stdout);
        Fails(LmfsRunner.Run("cat", Meta, "/"), 2, "not a file");
    }

    [RootFact]
    public void Import_reports_each_entry_it_cannot_import_imports_the_rest_and_exits_2()
    {
        // An unprivileged user imports a tree with an unreadable file, an unreadable directory and a
        // name that is not UTF-8 (issue 11, item 15): the rest is imported, each one is named, exit 2.
        const int Nobody = 65534;
        string vol = _dir["nobody"];
        Directory.CreateDirectory(vol);
        Proc.Run("chown", $"{Nobody}:{Nobody}", vol);
        string meta = $"sqlite://{vol}/meta.db";
        Ok(LmfsRunner.RunAs(Nobody, "format", meta, "--storage", $"file://{vol}/objects"));
        string ok = Source("tree/ok.bin", 5000);
        Source("tree/secret.bin", 10);
        File.SetUnixFileMode(_dir["tree/secret.bin"], UnixFileMode.UserRead | UnixFileMode.UserWrite);
        Source("tree/private/inner.bin", 10);
        File.SetUnixFileMode(_dir["tree/private"], UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Proc.Run("bash", "-c", "printf x > \"$(printf '%s/bad-\\xff.bin' \"$1\")\"", "bash", _dir["tree"]);

        var r = Fails(LmfsRunner.RunAs(Nobody, "import", meta, _dir["tree"], "/t/", "--no-progress"), 2, "3 source entries were not imported (listed above); everything else was");
        Assert.Contains("imported 1 file(s)", r.Stdout, StringComparison.Ordinal);
        Assert.Contains($"error: not imported: '{_dir["tree"]}/bad-\\xff.bin': the name is not valid UTF-8", r.Stderr, StringComparison.Ordinal);
        Assert.Contains($"error: not imported: '{_dir["tree/private"]}': cannot read directory", r.Stderr, StringComparison.Ordinal);
        Assert.Contains($"error: not imported: '{_dir["tree/secret.bin"]}': it cannot be read: Permission denied", r.Stderr, StringComparison.Ordinal);
        Assert.Equal(File.ReadAllBytes(ok), LmfsRunner.RunBytes(["cat", meta, "/t/tree/ok.bin"]).Stdout);
        Assert.Equal("ok.bin", Ok(LmfsRunner.Run("ls", meta, "/t/tree")).Stdout.Trim());
    }

    [Fact]
    public void Numbers_out_of_range_are_refused_naming_the_option_and_range_before_anything_starts()
    {
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects, "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", Meta, Source("a.bin", 5000), "/a.bin"));
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        string[] mount = ["mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]];
        try
        {
            // Each of these mounted (and then failed every cold read), or died with "unexpected OverflowException".
            Fails(LmfsRunner.Run([.. mount, "--fetch-timeout", "10000000"]), 2, "--fetch-timeout 10000000 is out of range: use 0.1 to 86400 seconds");
            Fails(LmfsRunner.Run([.. mount, "--entry-timeout", "1e12"]), 2, "--entry-timeout 1e12 is out of range: use 0 to 31536000 seconds");
            Fails(LmfsRunner.Run([.. mount, "--fetch-timeout", "Infinity"]), 2, "--fetch-timeout 'Infinity' is not a number");
            Fails(LmfsRunner.Run([.. mount, "--free-space-ratio", "NaN"]), 2, "--free-space-ratio 'NaN' is not a number: use 0 to 0.99");
            Fails(LmfsRunner.Run([.. mount, "--threads", "0"]), 2, "--threads 0 is out of range: use 1 to 1024");
            Fails(LmfsRunner.Run([.. mount, "--readahead-kb", "-5"]), 2, "--readahead-kb -5 is out of range");
            Fails(LmfsRunner.Run([.. mount, "--cache-size", "99999999999T"]), 2, "--cache-size '99999999999T' is too large: use 0 to 1024T");
            Fails(LmfsRunner.Run([.. mount, "--max-fetches", "99999999999"]), 2, "--max-fetches 99999999999 is out of range: use 1 to 256");
            Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
            Assert.False(File.Exists(_dir["mount.log"]), "a refused option must stop the mount before a daemon starts");

            // The same parser serves every command.
            Fails(LmfsRunner.Run("warmup", Meta, "/a.bin", "-j", "0", "--cache-dir", _dir["cache"]), 2, "-j 0 is out of range: use 1 to 256");
            Fails(LmfsRunner.Run("import", Meta, _dir["a.bin"], "/b.bin", "-j", "1000"), 2, "-j 1000 is out of range: use 1 to 256");
            Fails(LmfsRunner.Run("bench", _dir["a.bin"], "--read-size", "100T"), 2, "--read-size 100T is out of range: use 1 to 64M");
            Fails(LmfsRunner.Run("format", $"sqlite://{_dir["other.db"]}", "--storage", Objects, "--chunk-size", "128M"), 2, "--chunk-size 128M is out of range: use 1M to 64M");
            Assert.False(Directory.Exists(_dir["cache"]));
        }
        finally
        {
            if (Fuse.FuseMount.MountTypeAt(mp) is not null)
            {
                LmfsRunner.Run("umount", mp);
            }
        }
    }

    [Fact]
    public void A_mistyped_option_is_refused_with_a_suggestion_and_changes_nothing()
    {
        // `lmfs import META file --overwite` imported the file as /--overwite and exited 0 (issue 18, item 8).
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects));
        string a = Source("a.bin", 1000);
        var r = Fails(LmfsRunner.Run("import", Meta, a, "--overwite"), 2, "unknown option '--overwite' for `lmfs import`");
        Assert.Contains("hint: did you mean --overwrite?", r.Stderr, StringComparison.Ordinal);
        Fails(LmfsRunner.Run("import", Meta, a, "/a.bin", "--overwrite=yes", "--dereferense"), 2, "did you mean --dereference?");
        Assert.Equal("", Ok(LmfsRunner.Run("ls", Meta, "/")).Stdout);

        // Every command: an option it does not have is a usage error, never an argument.
        foreach (string[] cmd in new string[][]
        {
            ["format", Meta, "--storage", Objects], ["import", Meta, a, "/a.bin"], ["ls", Meta], ["stat", Meta], ["cat", Meta, "/a.bin"], ["rm", Meta, "/a.bin"],
            ["mount", Meta, _dir["mp"]], ["umount", _dir["mp"]], ["warmup", Meta, "/a.bin"], ["cache", "stats"], ["bench", a], ["bench", "compare", a], ["csi", "--node-id", "n"],
        })
        {
            var bad = Fails(LmfsRunner.Run([.. cmd, "--no-such-option"]), 2, "unknown option '--no-such-option'");
            Assert.DoesNotContain("did you mean", bad.Stderr, StringComparison.Ordinal);
            Assert.Contains("goes after `--`", bad.Stderr, StringComparison.Ordinal);
        }

        Fails(LmfsRunner.Run("umount", _dir["mp"], "--forse"), 2, "did you mean --force?");
        Fails(LmfsRunner.Run("ls", "--verbos", Meta), 2, "did you mean --verbose?");
        Fails(LmfsRunner.Run("warmup", Meta, "/a.bin", "--buffer-size", "5X"), 2, "unknown option '--buffer-size' for `lmfs warmup`"); // mount's option, not warmup's
        Assert.Equal("", Ok(LmfsRunner.Run("ls", Meta, "/")).Stdout);
        Assert.False(Directory.Exists(_dir["mp"]));

        // A negative number is an option's value, not an unknown option.
        Fails(LmfsRunner.Run("bench", a, "--seed", "-5", "--runs", "0"), 2, "--runs 0 is out of range");
    }

    [Fact]
    public void A_destination_must_be_absolute_and_a_name_that_starts_with_a_dash_goes_after_double_dash()
    {
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects));
        Source("-dash.bin", 1000);
        Fails(LmfsRunner.Run(["import", Meta, "--", "-dash.bin", "relative.bin"], cwd: _dir.Path), 2, "destination 'relative.bin' is not allowed: a destination is an absolute path in the volume");
        Fails(LmfsRunner.Run(["import", Meta, "-dash.bin", "/d.bin"], cwd: _dir.Path), 2, "unknown option '-dash.bin'");
        Assert.Equal("", Ok(LmfsRunner.Run("ls", Meta, "/")).Stdout);

        Ok(LmfsRunner.Run(["import", Meta, "--", "-dash.bin", "/-dash.bin"], cwd: _dir.Path));
        Assert.Equal(File.ReadAllBytes(_dir["-dash.bin"]), LmfsRunner.RunBytes(["cat", Meta, "--", "/-dash.bin"]).Stdout);
        Assert.Equal("-dash.bin", Ok(LmfsRunner.Run("ls", Meta, "/")).Stdout.Trim());
    }

    [Fact]
    public void Lmfs_alone_prints_the_commands_and_a_mistyped_command_gets_a_suggestion()
    {
        // `lmfs` printed "Required command was not provided" and "see `lmfs  --help`" (issue 18, item 9).
        var usage = LmfsRunner.Run();
        Assert.True(usage.ExitCode == 2, usage.ToString());
        Assert.StartsWith("usage: lmfs COMMAND", usage.Stderr, StringComparison.Ordinal);
        foreach (var cmd in new[] { "format", "import", "ls", "stat", "cat", "rm", "mount", "umount", "mounts", "stats", "warmup", "cache", "bench", "csi" })
        {
            Assert.Single(usage.Stderr.Split('\n'), l => l.StartsWith($"  {cmd} ", StringComparison.Ordinal) && l.Length <= 100);
        }

        Assert.Contains("`lmfs COMMAND --help`", usage.Stderr, StringComparison.Ordinal);
        Assert.True(usage.Stderr.Split('\n').Length <= 24, usage.Stderr); // one 24-line terminal screen

        Assert.Contains("hint: did you mean `lmfs mount`?", Fails(LmfsRunner.Run("moutn", Meta, _dir["mp"]), 2, "'moutn' is not a command of `lmfs`").Stderr, StringComparison.Ordinal);
        Assert.Contains("hint: did you mean `lmfs cache stats`?", Fails(LmfsRunner.Run("cache", "stat"), 2, "'stat' is not a command of `lmfs cache`").Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("did you mean", Fails(LmfsRunner.Run("xyzzy"), 2, "'xyzzy' is not a command of `lmfs`").Stderr, StringComparison.Ordinal);
        Fails(LmfsRunner.Run("cache"), 2, "`lmfs cache` needs a command: stats, clear");
        Assert.False(Directory.Exists(_dir["mp"]));
    }

    [MountFact]
    public void The_smallest_buffer_size_is_stated_as_one_that_is_accepted()
    {
        // "--buffer-size 16 MiB too small ... use at least 16.0 MiB" (issue 18, item 9): 4 buffers of a
        // 4 MiB chunk are a little over 16 MiB; the hint now names a size that mounts.
        Ok(LmfsRunner.Run("format", Meta, "--storage", Objects, "--chunk-size", "4M"));
        Ok(LmfsRunner.Run("import", Meta, Source("a.bin", 5000), "/a.bin"));
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        string[] mount = ["mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]];
        try
        {
            var r = Fails(LmfsRunner.Run([.. mount, "--buffer-size", "16M"]), 2, "--buffer-size 16M is too small for the volume's 4M chunks");
            Assert.Contains("hint: use --buffer-size 17M or more", r.Stderr, StringComparison.Ordinal);
            Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
            Fails(LmfsRunner.Run([.. mount, "--buffer-size", "5X"]), 2, "--buffer-size '5X' has an unknown unit 'X'");

            Ok(LmfsRunner.Run([.. mount, "--buffer-size", "17M"]));
            Assert.Equal(File.ReadAllBytes(_dir["a.bin"]), File.ReadAllBytes(Path.Combine(mp, "a.bin")));
        }
        finally
        {
            if (Fuse.FuseMount.MountTypeAt(mp) is not null)
            {
                Ok(LmfsRunner.Run("umount", mp));
            }
        }
    }

    [Fact]
    public void Every_command_has_help_with_an_example_and_usage_errors_exit_2()
    {
        foreach (var cmd in new[] { "format", "import", "ls", "stat", "cat", "rm" })
        {
            var h = Ok(LmfsRunner.Run(cmd, "--help"));
            Assert.Contains("Example", h.Stdout, StringComparison.Ordinal);
        }

        var r = LmfsRunner.Run("format");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--storage", r.Stderr, StringComparison.Ordinal);
        Assert.Equal(2, LmfsRunner.Run("no-such-command").ExitCode);
    }

    public void Dispose() => _dir.Dispose();
}
