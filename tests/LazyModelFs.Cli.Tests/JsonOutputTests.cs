using System.Globalization;
using System.Text.Json;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// `--json` on ls, stat, import, warmup --check and cache stats (issue 18, item 6), run as users run
/// them: each document parsed, and its values compared with what was imported.
/// </summary>
public sealed class JsonOutputTests : IDisposable
{
    private const int Mi = 1 << 20;
    private readonly TempDir _dir = new("lmfs-json");
    private readonly string _meta;

    public JsonOutputTests()
    {
        _meta = $"sqlite://{_dir["meta.db"]}";
        Exit(0, LmfsRunner.Run("format", _meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
    }

    public void Dispose() => _dir.Dispose();

    private static RunResult Exit(int code, RunResult r)
    {
        Assert.True(r.ExitCode == code, $"expected exit {code}: {r}");
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        return r;
    }

    private static JsonElement Parse(RunResult r)
    {
        using var doc = JsonDocument.Parse(r.Stdout);
        return doc.RootElement.Clone();
    }

    /// <summary>src/a.bin (2 MiB + 9, mode 0640), src/b.txt (4000 bytes), src/link -> b.txt.</summary>
    private string Tree()
    {
        string a = _dir.WriteRandom("src/a.bin", (2 * Mi) + 9);
        File.SetUnixFileMode(a, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
        File.SetLastWriteTimeUtc(a, new DateTime(2025, 3, 4, 5, 6, 7, DateTimeKind.Utc).AddTicks(1234567));
        _dir.WriteRandom("src/b.txt", 4000);
        File.CreateSymbolicLink(_dir["src/link"], "b.txt");
        return _dir["src"] + "/";
    }

    [Fact]
    public void Import_json_counts_files_bytes_and_chunks_stored_deduplicated_and_unchanged()
    {
        string src = Tree();
        var first = Parse(Exit(0, LmfsRunner.Run("import", "--json", _meta, src, "/m")));
        Assert.Equal(2, first.GetProperty("files").GetInt64());
        Assert.Equal(1, first.GetProperty("symlinks").GetInt64());
        Assert.Equal(0, first.GetProperty("unchangedFiles").GetInt64());
        Assert.Equal((2 * Mi) + 9 + 4000, first.GetProperty("bytes").GetInt64());
        Assert.Equal(4, first.GetProperty("chunks").GetInt64()); // 3 of a.bin, 1 of b.txt
        Assert.Equal(4, first.GetProperty("storedChunks").GetInt64());
        Assert.Equal(0, first.GetProperty("deduplicatedChunks").GetInt64());
        Assert.True(first.GetProperty("storedBytes").GetInt64() >= first.GetProperty("bytes").GetInt64()); // plain chunks plus their headers
        Assert.True(first.GetProperty("seconds").GetDouble() >= 0);
        Assert.Equal(0, first.GetProperty("problems").GetArrayLength());

        // The same bytes elsewhere: every chunk deduplicated, nothing stored.
        var again = Parse(Exit(0, LmfsRunner.Run("import", "--json", _meta, src, "/n")));
        Assert.Equal(4, again.GetProperty("deduplicatedChunks").GetInt64());
        Assert.Equal(0, again.GetProperty("storedChunks").GetInt64());
        Assert.Equal(0, again.GetProperty("storedBytes").GetInt64());

        // The same files into the same directory again: both unchanged.
        var same = Parse(Exit(0, LmfsRunner.Run("import", "--json", _meta, _dir["src/a.bin"], _dir["src/b.txt"], "/m/")));
        Assert.Equal(0, same.GetProperty("files").GetInt64());
        Assert.Equal(2, same.GetProperty("unchangedFiles").GetInt64());
        Assert.Equal(0, same.GetProperty("storedChunks").GetInt64());
    }

    [Fact]
    public void Ls_and_stat_json_give_the_imported_names_sizes_modes_times_and_chunk_tables()
    {
        string src = Tree();
        Exit(0, LmfsRunner.Run("import", _meta, src, "/m"));
        var entries = Parse(Exit(0, LmfsRunner.Run("ls", "--json", _meta, "/m"))).EnumerateArray().ToDictionary(e => e.GetProperty("name").GetString()!);
        Assert.Equal(["a.bin", "b.txt", "link"], entries.Keys.Order(StringComparer.Ordinal));
        var a = entries["a.bin"];
        Assert.Equal(("/m/a.bin", "file", (2L * Mi) + 9, "0640"), (a.GetProperty("path").GetString(), a.GetProperty("type").GetString(), a.GetProperty("size").GetInt64(), a.GetProperty("mode").GetString()));
        var mtime = File.GetLastWriteTimeUtc(_dir["src/a.bin"]);
        Assert.Equal(DateTime.SpecifyKind(mtime, DateTimeKind.Utc), DateTimeOffset.Parse(a.GetProperty("mtime").GetString()!, CultureInfo.InvariantCulture).UtcDateTime);
        Assert.Equal((mtime - DateTime.UnixEpoch).Ticks / 1e7m, a.GetProperty("mtimeUnix").GetDecimal());
        Assert.Equal(JsonValueKind.Null, a.GetProperty("target").ValueKind);
        Assert.Equal(4000, entries["b.txt"].GetProperty("size").GetInt64());
        Assert.Equal(("symlink", "b.txt"), (entries["link"].GetProperty("type").GetString(), entries["link"].GetProperty("target").GetString()));

        // ls of a file: that one entry.
        var one = Assert.Single(Parse(Exit(0, LmfsRunner.Run("ls", "--json", _meta, "/m/b.txt"))).EnumerateArray().ToList());
        Assert.Equal(("b.txt", "/m/b.txt"), (one.GetProperty("name").GetString(), one.GetProperty("path").GetString()));

        var st = Parse(Exit(0, LmfsRunner.Run("stat", "--json", _meta, "/m/a.bin")));
        Assert.Equal(((2L * Mi) + 9, Mi, 3, "0640"), (st.GetProperty("size").GetInt64(), st.GetProperty("chunkSize").GetInt32(), st.GetProperty("chunkCount").GetInt32(), st.GetProperty("mode").GetString()));
        Assert.Equal(a.GetProperty("mtime").GetString(), st.GetProperty("mtime").GetString());
        var rows = st.GetProperty("chunks").EnumerateArray().ToList();
        Assert.Equal([0L, Mi, 2L * Mi], rows.Select(r => r.GetProperty("offset").GetInt64()));
        Assert.Equal([Mi, Mi, 9], rows.Select(r => r.GetProperty("plainLength").GetInt32()));
        Assert.All(rows, r => Assert.Equal(64, r.GetProperty("id").GetString()!.Length));
        Assert.Equal(rows.Sum(r => r.GetProperty("storedLength").GetInt64()), st.GetProperty("storedBytes").GetInt64());

        var root = Parse(Exit(0, LmfsRunner.Run("stat", "--json", _meta, "/")));
        var volume = root.GetProperty("volume");
        Assert.Equal((Mi, "none", (2L * Mi) + 9 + 4000), (volume.GetProperty("chunkSize").GetInt32(), volume.GetProperty("compression").GetString(), volume.GetProperty("usageBytes").GetInt64()));
        Assert.Equal($"file://{_dir["objects"]}", volume.GetProperty("storage").GetString());
    }

    [Fact]
    public void Warmup_check_and_cache_stats_json_count_what_the_cache_holds_per_file()
    {
        Exit(0, LmfsRunner.Run("import", _meta, Tree(), "/m"));
        string cache = _dir["cache"];
        Exit(0, LmfsRunner.Run("warmup", _meta, "/m/a.bin", "--cache-dir", cache));
        var check = Parse(Exit(0, LmfsRunner.Run("warmup", _meta, "/m", "--check", "--json", "--cache-dir", cache)));
        Assert.Equal(cache, check.GetProperty("cacheDir").GetString());
        Assert.Equal((4, 3, (2L * Mi) + 9 + 4000, (2L * Mi) + 9), (check.GetProperty("chunks").GetInt32(), check.GetProperty("cachedChunks").GetInt32(), check.GetProperty("bytes").GetInt64(), check.GetProperty("cachedBytes").GetInt64()));
        var files = check.GetProperty("files").EnumerateArray().ToDictionary(f => f.GetProperty("path").GetString()!);
        Assert.Equal(["/m/a.bin", "/m/b.txt"], files.Keys.Order(StringComparer.Ordinal));
        Assert.Equal((3, 3, (2L * Mi) + 9), (files["/m/a.bin"].GetProperty("chunks").GetInt32(), files["/m/a.bin"].GetProperty("cachedChunks").GetInt32(), files["/m/a.bin"].GetProperty("cachedBytes").GetInt64()));
        Assert.Equal((1, 0, 4000L, 0L), (files["/m/b.txt"].GetProperty("chunks").GetInt32(), files["/m/b.txt"].GetProperty("cachedChunks").GetInt32(), files["/m/b.txt"].GetProperty("bytes").GetInt64(), files["/m/b.txt"].GetProperty("cachedBytes").GetInt64()));

        var stats = Parse(Exit(0, LmfsRunner.Run("cache", "stats", "--json", "--cache-dir", cache)));
        Assert.Equal(cache, stats.GetProperty("cacheDir").GetString());
        Assert.Equal(0, stats.GetProperty("chunks").GetInt32()); // warmup built a.bin's view, which replaced its chunk files
        Assert.Equal((1, (2L * Mi) + 9), (stats.GetProperty("views").GetInt32(), stats.GetProperty("viewBytes").GetInt64()));
        long onDisk = Directory.EnumerateFiles(cache, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        Assert.Equal(onDisk, stats.GetProperty("bytes").GetInt64());
        Assert.True(stats.GetProperty("diskFreeBytes").GetInt64() <= stats.GetProperty("diskTotalBytes").GetInt64());
    }

    [Fact]
    public void Json_commands_that_fail_print_their_error_on_stderr_and_nothing_on_stdout()
    {
        Exit(0, LmfsRunner.Run("import", _meta, Tree(), "/m"));
        foreach (var args in new[] { new[] { "ls", "--json", _meta, "/m/nope" }, ["stat", "--json", _meta, "/m/nope"], ["warmup", _meta, "/m/nope", "--check", "--json", "--cache-dir", _dir["cache"]] })
        {
            var r = Exit(2, LmfsRunner.Run(args));
            Assert.Equal("", r.Stdout);
            Assert.Contains("error: '/m/nope' does not exist in the volume", r.Stderr, StringComparison.Ordinal);
        }

        var noCheck = Exit(2, LmfsRunner.Run("warmup", _meta, "/m", "--json", "--cache-dir", _dir["cache"]));
        Assert.Equal("", noCheck.Stdout);
        Assert.Contains("error: --json goes with --check", noCheck.Stderr, StringComparison.Ordinal);
        var import = Exit(2, LmfsRunner.Run("import", "--json", _meta, _dir["missing"], "/x"));
        Assert.Equal("", import.Stdout);
    }
}
