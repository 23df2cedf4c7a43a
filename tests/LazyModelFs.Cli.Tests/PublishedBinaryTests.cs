using System.Security.Cryptography;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// The artifact users run: `dotnet publish` as README and the Dockerfile say, then the one binary
/// alone in an empty directory, on the embedded default (SQLite metadata, local object store). The
/// native SQLite library once stayed beside the binary, and the binary alone said "unexpected
/// DllNotFoundException" (issue 18, item 7).
/// </summary>
public sealed class PublishedBinaryTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-publish");

    [Fact]
    public void The_published_single_binary_alone_formats_imports_and_reads_a_sqlite_volume()
    {
        var publish = LmfsRunner.Run(["publish", Path.Combine(Repo.Root, "src/LazyModelFs.Cli"), "-c", "Release", "-r", "linux-x64", "--self-contained", "-p:PublishSingleFile=true", "-o", _dir["pub"], "-nologo", "-v", "q"], timeout: TimeSpan.FromMinutes(8), program: "dotnet");
        Assert.True(publish.ExitCode == 0, publish.ToString());

        // Only the binary, nowhere near the build: no library beside it to lean on.
        Directory.CreateDirectory(_dir["solo"]);
        string lmfs = _dir["solo/lmfs"];
        File.Copy(_dir["pub/lmfs"], lmfs);
        File.SetUnixFileMode(lmfs, (UnixFileMode)0x1ED);
        Assert.Equal(["lmfs"], Directory.GetFiles(_dir["solo"]).Select(Path.GetFileName));

        var data = TestData.Random((5 << 20) + 123, 7);
        File.WriteAllBytes(_dir["src.bin"], data);
        string meta = $"sqlite://{_dir["meta.db"]}";
        var env = new Dictionary<string, string?> { ["DOTNET_BUNDLE_EXTRACT_BASE_DIR"] = _dir["extract"] };
        foreach (var args in new[]
        {
            new[] { "format", meta, "--storage", $"file://{_dir["objects"]}" },
            new[] { "import", meta, _dir["src.bin"], "/m/src.bin", "--no-progress" },
            new[] { "ls", meta, "/m" },
        })
        {
            var r = LmfsRunner.Run(args, env, program: lmfs);
            Assert.True(r.ExitCode == 0, $"lmfs {string.Join(' ', args)}: {r}");
            Assert.DoesNotContain("Exception", r.Stdout + r.Stderr, StringComparison.Ordinal);
        }

        var cat = LmfsRunner.RunBytes(["cat", meta, "/m/src.bin"], env, program: lmfs);
        Assert.True(cat.ExitCode == 0, cat.Stderr);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(cat.Stdout));
    }

    public void Dispose() => _dir.Dispose();
}
