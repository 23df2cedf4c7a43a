using System.Globalization;
using System.Security.Cryptography;
using LazyModelFs.Import;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// Issue 14, item 4: the page-fault storm that deadlocked a loader on another FUSE filesystem
/// (transformers#45547: mmap, kernel readahead and a parallel loader filled the FUSE queue). A real
/// `lmfs mount` daemon (its own process, so its memory is its own) on redis-server and s3rver, so every
/// cold fetch is network I/O; the readers are other processes (MmapProbe says why). Nothing here is
/// timed: the deadline only turns a hang into a failure that says so, and memory is the daemon's VmHWM.
/// </summary>
public sealed class FaultStormTests(RedisAndS3 servers) : IClassFixture<RedisAndS3>, IDisposable
{
    private const int Chunk = 1 << 20;

    /// <summary>Only a hang takes this long: the storm and the load together take seconds.</summary>
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(180);

    private readonly TempDir _dir = new("lmfs-storm");

    private static StorageOptions Creds => new() { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey };

    /// <summary>A fresh volume of 1 MiB chunks holding /m/model.safetensors (<paramref name="dataBytes"/> of tensors); its metadata URL and the source bytes.</summary>
    private async Task<(string Meta, byte[] Source)> VolumeAsync(int dataBytes)
    {
        string meta = servers.Redis.NewVolumeUrl();
        await Volume.FormatAsync(meta, servers.S3.NewStorageUrl(), Creds, Chunk, "none", "storm");
        using var v = await Volume.OpenAsync(meta, Creds);
        Directory.CreateDirectory(_dir["src/m"]);
        var source = TestData.Safetensors(dataBytes, tensors: 24, seed: 14);
        File.WriteAllBytes(_dir["src/m/model.safetensors"], source);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src/m"]], "/");
        return (meta, source);
    }

    private static long VmHwmKb(int pid) =>
        long.Parse(File.ReadAllLines($"/proc/{pid}/status").Single(l => l.StartsWith("VmHWM:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

    /// <param name="readaheadKb">The mount's read_ahead_kb: 16384 (the default) turns faults into 1 MiB background READs
    /// (max_background), 128 (the kernel's own default) into many small ones, 0 into one synchronous 4 KiB READ per page.</param>
    /// <param name="bufferMiB">--buffer-size: 32 MiB is less than the file; 5 MiB is four chunk buffers, the least allowed, so chunks are evicted and fetched again while READs wait.</param>
    /// <param name="maxFetches">--max-fetches: 1 or 2 make every READ queue behind the others.</param>
    /// <param name="cacheMiB">--cache-size: 0 leaves no disk tier (and no prefetch) behind the memory tier.</param>
    [MountTheory]
    [InlineData(16384, 32, 16, 100)]
    [InlineData(0, 32, 16, 100)]
    [InlineData(128, 5, 2, 0)]
    [InlineData(0, 5, 1, 0)]
    public async Task Sixty_four_threads_faulting_a_cold_mmap_beside_a_sequential_loader_finish_bit_exact_in_bounded_memory(int readaheadKb, int bufferMiB, int maxFetches, int cacheMiB)
    {
        long bufferSize = (long)bufferMiB << 20;
        const int Threads = 64;
        var (meta, source) = await VolumeAsync(48 * Chunk);
        string mp = Directory.CreateTempSubdirectory("lmfs-storm-mp-").FullName;
        var r = LmfsRunner.Run(
            ["mount", meta, mp, "--background", "--cache-dir", _dir["cache"], "--buffer-size", bufferSize.ToString(CultureInfo.InvariantCulture), "--max-fetches", maxFetches.ToString(CultureInfo.InvariantCulture), "--cache-size", cacheMiB + "M", "--log-file", _dir["mount.log"], "--readahead-kb", readaheadKb.ToString(CultureInfo.InvariantCulture)],
            LmfsRunner.S3Env());
        Assert.True(r.ExitCode == 0, r + "\n--- log\n" + (File.Exists(_dir["mount.log"]) ? File.ReadAllText(_dir["mount.log"]) : ""));
        int pid = MountRegistry.Load(mp)!.Pid;
        string socket = MountRegistry.ControlSocketFor(mp);
        ProbeProcess? storm = null, load = null;
        try
        {
            string file = Path.Combine(mp, "m/model.safetensors");
            var ranges = MmapProbe.RandomRanges(source.Length, Threads * 48, 64 * 1024, 14, minLength: 4096);
            storm = MmapProbe.StartStorm(file, Threads, ranges);
            load = MmapProbe.StartSafetensorsLoad(file);

            var deadline = DateTime.UtcNow + NoHang;
            bool stormDone = storm.WaitForExit(NoHang);
            bool loadDone = load.WaitForExit(TimeSpan.FromTicks(Math.Max(0, (deadline - DateTime.UtcNow).Ticks)));
            if (!stormDone || !loadDone)
            {
                string stats;
                try
                {
                    stats = (await MountClient.StatsAsync(socket).WaitAsync(TimeSpan.FromSeconds(5))).ToJsonString();
                }
                catch (Exception ex) when (ex is TimeoutException or IOException or System.Net.Sockets.SocketException)
                {
                    stats = "(the control socket did not answer: " + ex.Message + ")";
                }

                Assert.Fail($"hang: after {NoHang.TotalSeconds:0} s the 64-thread mmap storm {(stormDone ? "had finished" : "was still running")} and the sequential loader {(loadDone ? "had finished" : "was still running")} on a {source.Length >> 20} MiB file; daemon stats: {stats}");
            }

            Assert.Equal(MmapProbe.ExpectedStorm(source, Threads, ranges), storm.Result("the mmap storm").Trim());
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(source)), load.Result("the safetensors loader").Trim());

            long hwm = VmHwmKb(pid);
            long bound = (bufferSize >> 10) + (150 << 10);
            Assert.True(hwm <= bound, $"the daemon's peak RSS (VmHWM) was {hwm >> 10} MiB, over --buffer-size {bufferSize >> 20} MiB + 150 MiB");
            var s = await MountClient.StatsAsync(socket);
            Assert.Equal(0L, (long)s["fetchErrors"]!);
        }
        finally
        {
            // Children first (their waits on the mount are killable), then the mount; a daemon that
            // will not go is killed by its pid, so a hang never outlives the test.
            storm?.Dispose();
            load?.Dispose();
            LmfsRunner.Run("umount", mp);
            if (!SpinWait.SpinUntil(() => !MountLauncher.Alive(pid), 15_000))
            {
                Signals.Kill(pid, Signals.SIGKILL);
                LmfsRunner.Run("umount", mp);
            }

            try
            {
                Directory.Delete(mp);
            }
            catch (IOException)
            {
            }
        }
    }

    public void Dispose() => _dir.Dispose();
}
