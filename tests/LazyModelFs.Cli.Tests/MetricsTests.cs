using System.Net;
using System.Net.Sockets;
using System.Text;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>`lmfs mount --metrics ADDR:PORT`: real background mounts scraped over HTTP (issue 18, item 5).</summary>
public sealed class MetricsTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-metrics");

    private string Meta => $"sqlite://{_dir["meta.db"]}";

    public void Dispose() => _dir.Dispose();

    private static void Ok(RunResult r) => Assert.True(r.ExitCode == 0, r.ToString());

    /// <summary>A volume holding /d/m.bin: 3 MiB + 99 bytes in 1 MiB chunks (4 chunks).</summary>
    private byte[] Volume()
    {
        var data = TestData.Random((3 << 20) + 99, 11);
        Directory.CreateDirectory(_dir["src"]);
        File.WriteAllBytes(_dir["src/m.bin"], data);
        Ok(LmfsRunner.Run("format", Meta, "--storage", $"file://{_dir["objects"]}", "--chunk-size", "1M"));
        Ok(LmfsRunner.Run("import", Meta, _dir["src/m.bin"], "/d/", "--no-progress"));
        return data;
    }

    private void WithMount(int port, Func<string, Task> body, params string[] extra)
    {
        string mp = Directory.CreateTempSubdirectory("lmfs-mmp-").FullName;
        try
        {
            Ok(LmfsRunner.Run(["mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"], "--metrics", $"127.0.0.1:{port}", .. extra]));
            body(mp).GetAwaiter().GetResult();
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp);
        }
    }

    [MountFact]
    public void A_scrape_counts_the_bytes_read_by_tier_and_each_store_fetch_in_the_latency_histogram()
    {
        var data = Volume();
        int port = Ports.Free();
        string url = $"http://127.0.0.1:{port}/metrics";

        // --prefetch none: every chunk is fetched by the READ that first needs it, so the counts are exact.
        WithMount(port, async mp =>
        {
            var before = await PrometheusScrape.ScrapeAsync(url);
            Assert.Equal(1, before.Sum("lmfs_build_info"));
            foreach (var family in new[] { "lmfs_reads_total", "lmfs_read_bytes_total", "lmfs_served_bytes_total", "lmfs_store_fetches_total", "lmfs_store_fetch_seconds", "lmfs_fetches_in_flight", "lmfs_fetch_errors_total", "lmfs_memory_cache_bytes", "lmfs_memory_cache_evictions_total", "lmfs_disk_cache_bytes", "lmfs_disk_cache_evictions_total", "lmfs_uptime_seconds" })
            {
                Assert.True(before.Types.ContainsKey(family), $"no family {family}");
            }

            Assert.Equal("histogram", before.Types["lmfs_store_fetch_seconds"]);
            Assert.Equal(0, before.Sum("lmfs_read_bytes_total"));

            // Cold: every byte from the store, one fetch per chunk, each timed.
            string file = Path.Combine(mp, "d/m.bin");
            Assert.Equal(data, File.ReadAllBytes(file));
            var cold = await PrometheusScrape.ScrapeAsync(url);
            Assert.Equal(data.Length, cold.Value("lmfs_read_bytes_total"));
            Assert.Equal(data.Length, cold.Value("lmfs_served_bytes_total", ("tier", "store")));
            Assert.Equal(0, cold.Value("lmfs_served_bytes_total", ("tier", "memory")));
            Assert.Equal(0, cold.Value("lmfs_served_bytes_total", ("tier", "disk")));
            Assert.Equal(4, cold.Value("lmfs_store_fetches_total"));
            Assert.Equal(4, cold.Value("lmfs_store_fetch_seconds_count"));
            Assert.True(cold.Value("lmfs_store_fetch_seconds_sum") > 0);
            Assert.True(cold.Value("lmfs_store_fetched_bytes_total") >= data.Length);
            Assert.True(cold.Value("lmfs_reads_total") > before.Value("lmfs_reads_total"));
            Assert.Equal(0, cold.Sum("lmfs_fetch_errors_total"));
            Assert.Equal(0, cold.Value("lmfs_read_errors_total"));

            // The kernel's pages dropped, the daemon's memory tier kept: every byte from memory, no fetch.
            await MountClient.InvalidateAsync(MountRegistry.ControlSocketFor(mp), Posix.Stat(file).Ino);
            Assert.Equal(data, File.ReadAllBytes(file));
            var warm = await PrometheusScrape.ScrapeAsync(url);
            Assert.Equal(2L * data.Length, warm.Value("lmfs_read_bytes_total"));
            Assert.Equal(data.Length, warm.Value("lmfs_served_bytes_total", ("tier", "memory")));
            Assert.Equal(data.Length, warm.Value("lmfs_served_bytes_total", ("tier", "store")));
            Assert.Equal(4, warm.Value("lmfs_store_fetch_seconds_count"));
            Assert.True(warm.Value("lmfs_memory_cache_hits_total") > cold.Value("lmfs_memory_cache_hits_total"));
            Assert.True(warm.Value("lmfs_memory_cache_bytes") >= data.Length);

            // lmfs stats reads the same counters.
            var stats = System.Text.Json.Nodes.JsonNode.Parse(LmfsRunner.Run("stats", mp, "--json").Stdout)!;
            Assert.Equal(data.Length, (long)stats["servedMemoryBytes"]!);
            Assert.Equal(4, (long)stats["fetchSeconds"]!["count"]!);
        }, "--prefetch", "none");
    }

    [MountFact]
    public void Other_paths_are_404_other_methods_405_and_stalled_or_oversized_requests_hurt_no_scrape()
    {
        Volume();
        int port = Ports.Free();
        WithMount(port, async mp =>
        {
            var (status, _, _) = await PrometheusScrape.GetAsync($"http://127.0.0.1:{port}/");
            Assert.Equal(HttpStatusCode.NotFound, status);
            (status, _, _) = await PrometheusScrape.GetAsync($"http://127.0.0.1:{port}/metricsx");
            Assert.Equal(HttpStatusCode.NotFound, status);
            (status, _, _) = await PrometheusScrape.GetAsync($"http://127.0.0.1:{port}/metrics", HttpMethod.Post);
            Assert.Equal(HttpStatusCode.MethodNotAllowed, status);
            (status, _, _) = await PrometheusScrape.GetAsync($"http://127.0.0.1:{port}/metrics", HttpMethod.Delete);
            Assert.Equal(HttpStatusCode.MethodNotAllowed, status);
            (status, _, var page) = await PrometheusScrape.GetAsync($"http://127.0.0.1:{port}/metrics?name[]=x");
            Assert.Equal(HttpStatusCode.OK, status);

            // Counters only: no metadata URL, cache or mount path, file name reaches the page.
            foreach (var leak in new[] { _dir.Path, mp, "sqlite", "m.bin", _dir["cache"] })
            {
                Assert.DoesNotContain(leak, page, StringComparison.Ordinal);
            }

            // Scrapers that connect and stall (nothing sent, half a request line): a scrape beside them is answered.
            var stalled = new List<TcpClient>();
            try
            {
                for (int i = 0; i < 4; i++)
                {
                    var c = new TcpClient();
                    await c.ConnectAsync(IPAddress.Loopback, port);
                    if (i % 2 == 1)
                    {
                        await c.GetStream().WriteAsync("GET /met"u8.ToArray());
                    }

                    stalled.Add(c);
                }

                var scrape = await PrometheusScrape.ScrapeAsync($"http://127.0.0.1:{port}/metrics");
                Assert.True(scrape.Has("lmfs_reads_total"));

                // A request head past the bound is refused, and the reads of the mount go on.
                using (var big = new TcpClient())
                {
                    await big.ConnectAsync(IPAddress.Loopback, port);
                    var s = big.GetStream();
                    await s.WriteAsync(Encoding.ASCII.GetBytes("GET /metrics HTTP/1.1\r\nX-Pad: " + new string('a', 20_000) + "\r\n\r\n"));
                    using var reader = new StreamReader(s);
                    Assert.StartsWith("HTTP/1.1 431 ", await reader.ReadLineAsync());
                }

                Assert.Equal(File.ReadAllBytes(_dir["src/m.bin"]), File.ReadAllBytes(Path.Combine(mp, "d/m.bin")));
            }
            finally
            {
                stalled.ForEach(c => c.Dispose());
            }
        });
    }

    [Fact]
    public void A_malformed_metrics_address_is_refused_with_exit_2_before_anything_starts()
    {
        string mp = _dir["mp"];
        Directory.CreateDirectory(mp);
        foreach (var (addr, says) in new[]
        {
            ("nonsense", "--metrics 'nonsense' is not ADDR:PORT"),
            ("127.0.0.1:99999", "the port '99999' is not a number from 1 to 65535"),
            ("127.0.0.1:0", "the port '0' is not a number"),
            ("example.com:9567", "'example.com' is not an IP address"),
            ("::1:9567", "is not an IP address (IPv6 goes in brackets"),
            (":9567", "is not ADDR:PORT"),
        })
        {
            var r = LmfsRunner.Run("mount", "sqlite:///nonexistent/meta.db", mp, "--metrics", addr);
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains(says, r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
        }
    }

    [MountFact]
    public void An_address_that_cannot_be_bound_fails_the_mount_with_exit_2_naming_it_and_nothing_is_mounted()
    {
        Volume();
        string mp = Directory.CreateTempSubdirectory("lmfs-mmp-").FullName;
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        try
        {
            foreach (var background in new[] { true, false })
            {
                string[] args = ["mount", Meta, mp, "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"], "--metrics", $"127.0.0.1:{port}"];
                var r = LmfsRunner.Run(background ? [.. args, "--background"] : args, timeout: TimeSpan.FromSeconds(60));
                Assert.True(r.ExitCode == 2, r.ToString());
                Assert.Contains($"cannot listen for --metrics on 127.0.0.1:{port}: the address is already in use", r.Stderr, StringComparison.Ordinal);
                Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
            }

            // An address of no interface of this host (TEST-NET-1, RFC 5737).
            var r2 = LmfsRunner.Run(["mount", Meta, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"], "--metrics", "192.0.2.1:9567"]);
            Assert.True(r2.ExitCode == 2, r2.ToString());
            Assert.Contains("cannot listen for --metrics on 192.0.2.1:9567: the address is not one of this host's", r2.Stderr, StringComparison.Ordinal);
            Assert.Null(Fuse.FuseMount.MountTypeAt(mp));
        }
        finally
        {
            if (Fuse.FuseMount.MountTypeAt(mp) is not null)
            {
                LmfsRunner.Run("umount", mp);
            }

            Directory.Delete(mp);
        }
    }
}
