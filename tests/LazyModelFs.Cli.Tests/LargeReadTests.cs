using System.Text.Json.Nodes;
using LazyModelFs.Fuse;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// READs as large as a chunk where the kernel allows them (fs.fuse.max_pages_limit): a real
/// background mount of a 4 MiB-chunk volume, read once with the limit at the kernel's default and
/// once raised, the READ sizes taken from the daemon's own counters (issue 13).
/// </summary>
public sealed class LargeReadTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-bigread");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    public void Dispose() => _dir.Dispose();

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    /// <summary>Reads the file through a fresh mount with the limit set to <paramref name="limit"/>; returns (READs, bytes they carried, the mount log).</summary>
    private (long Reads, long Bytes, string Log) ReadThrough(int limit, byte[] expected)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-bigread-mp-").FullName;
        string log = _dir[$"mount-{limit}.log"];
        string old = File.ReadAllText(FuseKernel.MaxPagesLimitPath).Trim();
        try
        {
            File.WriteAllText(FuseKernel.MaxPagesLimitPath, limit.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Ok(LmfsRunner.Run("mount", Meta, mp, "--background", "--cache-dir", _dir[$"cache-{limit}"], "--log-file", log));
            File.WriteAllText(FuseKernel.MaxPagesLimitPath, old); // the limit counts at INIT only
            Assert.Equal(expected, File.ReadAllBytes(Path.Combine(mp, "m.bin")));
            var r = LmfsRunner.Run("stats", mp, "--json");
            Ok(r);
            var s = JsonNode.Parse(r.Stdout)!.AsObject();
            return ((long)s["reads"]!, (long)s["readBytes"]!, File.ReadAllText(log));
        }
        finally
        {
            File.WriteAllText(FuseKernel.MaxPagesLimitPath, old);
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp);
        }
    }

    [MountFact]
    public void Reads_are_as_large_as_a_chunk_when_the_kernel_allows_and_1_MiB_when_it_does_not()
    {
        if (!File.Exists(FuseKernel.MaxPagesLimitPath))
        {
            Assert.Equal(256, FuseKernel.MaxPagesLimit()); // before Linux 6.13: the fixed 1 MiB
            return;
        }

        var data = TestData.Random(24 << 20, 5);
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/m.bin"], data);
        Ok(LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "4M"));
        Ok(LmfsRunner.Run("import", Meta, _dir["src/m.bin"], "/m.bin", "--no-progress"));

        var (reads, bytes, log) = ReadThrough(256, data);
        Assert.Contains("largest READ 1048576 (max_pages 256 of 1024 wanted, fs.fuse.max_pages_limit 256)", log, StringComparison.Ordinal);
        Assert.True(reads >= bytes / (1 << 20), $"{reads} READs carried {bytes} bytes: one was larger than 1 MiB at the default limit");

        (reads, bytes, log) = ReadThrough(1024, data);
        Assert.Contains("largest READ 4194304 (max_pages 1024 of 1024 wanted, fs.fuse.max_pages_limit 1024)", log, StringComparison.Ordinal);
        Assert.True(bytes >= data.Length, $"only {bytes} bytes went through READs");
        Assert.True(reads < bytes / (1 << 20), $"{reads} READs carried {bytes} bytes: none was larger than 1 MiB with the limit at 1024 pages");
    }
}
