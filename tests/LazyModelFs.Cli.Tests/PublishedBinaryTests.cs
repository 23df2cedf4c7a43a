using System.Diagnostics;
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
        var publish = Run("dotnet", ["publish", Path.Combine(Repo.Root, "src/LazyModelFs.Cli"), "-c", "Release", "-r", "linux-x64", "--self-contained", "-p:PublishSingleFile=true", "-o", _dir["pub"], "-nologo", "-v", "q"], null, TimeSpan.FromMinutes(8));
        Assert.True(publish.Code == 0, publish.Output);

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
            var r = Run(lmfs, args, env, TimeSpan.FromMinutes(2));
            Assert.True(r.Code == 0, $"lmfs {string.Join(' ', args)}: {r.Output}");
            Assert.DoesNotContain("Exception", r.Output, StringComparison.Ordinal);
        }

        string copy = _dir["out.bin"];
        var cat = Run("sh", ["-c", $"'{lmfs}' cat '{meta}' /m/src.bin > '{copy}'"], env, TimeSpan.FromMinutes(2));
        Assert.True(cat.Code == 0, cat.Output);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(File.ReadAllBytes(copy)));
    }

    private static (int Code, string Output) Run(string file, IEnumerable<string> args, IDictionary<string, string?>? env, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        foreach (var (k, v) in env ?? new Dictionary<string, string?>())
        {
            psi.Environment[k] = v;
        }

        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            return (-1, $"{file} timed out after {timeout}");
        }

        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    public void Dispose() => _dir.Dispose();
}
