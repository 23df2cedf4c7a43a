using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Cli.Tests;

/// <summary>
/// Redis as a fleet runs it (issue 18, item 10): a primary with replicas listed as seeds, Sentinel
/// with a failover, a Redis Cluster, and the errors a user meets on the way; every server real, on
/// loopback, stopped by pid.
/// </summary>
public sealed class RedisFleetTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-fleet");

    private string Objects => $"file://{_dir["objects"]}";

    private static RunResult Ok(RunResult r)
    {
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    /// <summary>A failure in the project's words: the code, the error and hint lines, none of the client's internals.</summary>
    private static RunResult Fails(RunResult r, int code, params string[] parts)
    {
        Assert.True(r.ExitCode == code, $"expected exit {code}: {r}");
        Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("hint: ", r.Stderr, StringComparison.Ordinal);
        foreach (string p in parts)
        {
            Assert.Contains(p, r.Stderr, StringComparison.Ordinal);
        }

        foreach (string internals in new[] { "AbortOnConnectFail", "UnableToConnect", "StackExchange", "Exception", "   at ", "SocketFailure", "multiplexer" })
        {
            Assert.DoesNotContain(internals, r.Stderr, StringComparison.OrdinalIgnoreCase);
        }

        return r;
    }

    private static RedisServer ReplicaOf(RedisServer primary)
    {
        var r = new RedisServer(null, args: ["--replicaof", "127.0.0.1", primary.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        r.WaitFor(() => r.Cli("INFO", "replication").Contains("master_link_status:up", StringComparison.Ordinal), "replication link up");
        return r;
    }

    private void ImportAndRead(string url, string name, int size)
    {
        string src = _dir.WriteRandom(name, size);
        Ok(LmfsRunner.Run("import", url, src, "/" + name));
        var cat = LmfsRunner.RunBytes(["cat", url, "/" + name]);
        Assert.True(cat.ExitCode == 0, cat.Stderr);
        Assert.Equal(File.ReadAllBytes(src), cat.Stdout);
    }

    [Fact]
    public void Seeds_that_list_a_replica_first_send_writes_to_the_primary()
    {
        using var primary = new RedisServer();
        using var replica = ReplicaOf(primary);
        string vol = "seeds" + Guid.NewGuid().ToString("N")[..8];
        string url = $"redis://127.0.0.1:{replica.Port},127.0.0.1:{primary.Port}/0?volume={vol}";

        Ok(LmfsRunner.Run("format", url, "--storage", Objects));
        ImportAndRead(url, "a.bin", (1 << 20) + 7);

        Assert.Equal("1", primary.Cli("EXISTS", $"lmfs{{{vol}}}:setting").Trim());
        Assert.Contains("a.bin", primary.Cli("HKEYS", $"lmfs{{{vol}}}:d1"), StringComparison.Ordinal);
    }

    [Fact]
    public void Only_a_replica_in_the_url_says_to_list_the_primary()
    {
        using var primary = new RedisServer();
        using var replica = ReplicaOf(primary);
        Fails(LmfsRunner.Run("format", $"redis://127.0.0.1:{replica.Port}/0?volume=r", "--storage", Objects), 4, "READONLY", "list the primary too");
    }

    [Fact]
    public void Sentinel_finds_the_primary_and_a_failover_moves_writes_to_the_new_one()
    {
        using var primary = new RedisServer();
        using var replica = ReplicaOf(primary);
        using var sentinel = new RedisSentinel(primary.Port);
        string vol = "sent" + Guid.NewGuid().ToString("N")[..8];
        string url = $"redis+sentinel://127.0.0.1:{sentinel.Port}/0?service={sentinel.Service}&volume={vol}";

        Ok(LmfsRunner.Run("format", url, "--storage", Objects));
        ImportAndRead(url, "before.bin", (1 << 20) + 3);
        Assert.Equal("1", primary.Cli("EXISTS", $"lmfs{{{vol}}}:setting").Trim());

        // The sentinel learns of the replica from the primary's INFO; a failover needs one.
        sentinel.WaitFor(() => sentinel.Cli("SENTINEL", "replicas", sentinel.Service).Contains(replica.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal), "the replica known");
        sentinel.WaitFor(() => sentinel.Cli("SENTINEL", "failover", sentinel.Service).StartsWith("OK", StringComparison.Ordinal) || sentinel.MasterPortNow() == replica.Port, "failover accepted");
        sentinel.WaitFor(() => sentinel.MasterPortNow() == replica.Port && replica.Cli("ROLE").StartsWith("master", StringComparison.Ordinal), "the replica promoted");

        ImportAndRead(url, "after.bin", (2 << 20) + 1);
        Assert.Contains("after.bin", replica.Cli("HKEYS", $"lmfs{{{vol}}}:d1"), StringComparison.Ordinal);
        var before = LmfsRunner.RunBytes(["cat", url, "/before.bin"]);
        Assert.True(before.ExitCode == 0, before.Stderr);
        Assert.Equal(File.ReadAllBytes(_dir["before.bin"]), before.Stdout);
    }

    [Fact]
    public void Sentinel_with_a_password_on_the_primary_only()
    {
        string pw = "prim-" + Guid.NewGuid().ToString("N")[..8];
        using var primary = new RedisServer(pw);
        using var sentinel = new RedisSentinel(primary.Port, masterPassword: pw);
        string url = $"redis+sentinel://127.0.0.1:{sentinel.Port}?service={sentinel.Service}&volume=pw";
        var env = new Dictionary<string, string?> { ["LMFS_REDIS_PASSWORD"] = pw };
        Ok(LmfsRunner.Run(["format", url, "--storage", Objects], env));
        Ok(LmfsRunner.Run(["ls", url], env));
        Fails(LmfsRunner.Run("ls", url), 4, "needs a password");
    }

    [Fact]
    public void A_sentinel_that_does_not_know_the_service_or_is_not_there_gets_a_clear_error()
    {
        using var primary = new RedisServer();
        using var sentinel = new RedisSentinel(primary.Port);
        Fails(LmfsRunner.Run("ls", $"redis+sentinel://127.0.0.1:{sentinel.Port}/0?service=nosuch"), 4, "sentinel", "'nosuch'", $"127.0.0.1:{sentinel.Port}");
        int none = Ports.Free();
        Fails(LmfsRunner.Run("ls", $"redis+sentinel://127.0.0.1:{none}?service=mymaster"), 4, "sentinel", $"127.0.0.1:{none}");
        Fails(LmfsRunner.Run("ls", $"redis+sentinel://127.0.0.1:{none}"), 2, "?service=MASTER");
    }

    [Fact]
    public void A_database_number_on_a_cluster_is_refused_with_the_reason_and_database_0_works()
    {
        using var cluster = RedisServer.Cluster();
        var r = Fails(LmfsRunner.Run("ls", $"redis://127.0.0.1:{cluster.Port}/1?volume=c"), 2, "Redis Cluster", "only database 0", "drop /1");
        Assert.DoesNotContain("redis-server is running", r.Stderr, StringComparison.Ordinal);

        string url = $"redis://127.0.0.1:{cluster.Port}?volume=c{Guid.NewGuid():N}";
        Ok(LmfsRunner.Run("format", url, "--storage", Objects));
        ImportAndRead(url, "c.bin", 4096);
    }

    [Fact]
    public void Connection_errors_name_the_hosts_tried_and_what_to_check_without_the_clients_words()
    {
        int a = Ports.Free(), b = Ports.Free();
        var r = Fails(LmfsRunner.Run("ls", $"redis://:s3cret-pw@127.0.0.1:{a},127.0.0.1:{b}/0"), 4, "cannot connect to Redis", $"127.0.0.1:{a}", $"127.0.0.1:{b}", "redis-server", "port", "TLS", "LMFS_REDIS_PASSWORD");
        Assert.DoesNotContain("s3cret-pw", r.Stderr + r.Stdout, StringComparison.Ordinal);

        // --verbose keeps the client's own account, for a bug report.
        var v = LmfsRunner.Run("ls", "--verbose", $"redis://127.0.0.1:{a}/0");
        Assert.Equal(4, v.ExitCode);
        Assert.Contains("RedisConnectionException", v.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void A_url_without_the_right_volume_names_the_volumes_there()
    {
        using var redis = new RedisServer();
        string db = $"redis://127.0.0.1:{redis.Port}/0";
        Ok(LmfsRunner.Run("format", db + "?volume=models", "--storage", Objects));
        Ok(LmfsRunner.Run("format", db + "?volume=llm-7b", "--storage", $"file://{_dir["objects2"]}"));

        var r = Fails(LmfsRunner.Run("ls", db), 2, "no volume is formatted", "'default'", "'llm-7b', 'models'", $"{db}?volume=llm-7b");
        Fails(LmfsRunner.Run("ls", db + "?volume=modles"), 2, "'modles'", "'llm-7b', 'models'");
        Assert.DoesNotContain("without ?volume=", LmfsRunner.Run("ls", db + "?volume=modles").Stderr, StringComparison.Ordinal);
        Assert.Contains("without ?volume=", r.Stderr, StringComparison.Ordinal);

        using var empty = new RedisServer();
        Fails(LmfsRunner.Run("ls", $"redis://127.0.0.1:{empty.Port}/0"), 2, "no volume is formatted", "lmfs format");
    }

    [Fact]
    public void An_acl_user_with_its_password_from_the_environment_connects()
    {
        // The default user needs a password too, or a refused one would let the client on as 'default'.
        using var redis = new RedisServer("default-" + Guid.NewGuid().ToString("N")[..8]);
        string pw = "acl-" + Guid.NewGuid().ToString("N")[..10];
        Assert.Equal("OK", redis.Cli("ACL", "SETUSER", "lmfs", "on", ">" + pw, "~lmfs{*", "+@all").Trim());
        string url = $"redis://lmfs:@127.0.0.1:{redis.Port}/0?volume=acl";
        var env = new Dictionary<string, string?> { ["LMFS_REDIS_PASSWORD"] = pw };
        Ok(LmfsRunner.Run(["format", url, "--storage", Objects], env));
        Ok(LmfsRunner.Run(["ls", url], env));
        var wrong = Fails(LmfsRunner.Run(["ls", url], new Dictionary<string, string?> { ["LMFS_REDIS_PASSWORD"] = "nope-" + pw }), 4, "refused the password of user 'lmfs'");
        Assert.DoesNotContain(pw, wrong.Stderr, StringComparison.Ordinal);

        // A user that may not SCAN is told nothing about which volumes exist, rather than 'none'.
        Assert.Equal("OK", redis.Cli("ACL", "SETUSER", "noscan", "on", ">" + pw, "~lmfs{*", "+@all", "-scan").Trim());
        var r = Fails(LmfsRunner.Run(["ls", $"redis://noscan:@127.0.0.1:{redis.Port}/0?volume=other"], env), 2, "no volume is formatted", "'other'");
        Assert.DoesNotContain("under any name", r.Stderr, StringComparison.Ordinal);
    }

    [MountFact]
    public void A_background_mount_as_an_acl_user_keeps_the_user_when_the_password_moves_to_the_environment()
    {
        using var redis = new RedisServer("default-" + Guid.NewGuid().ToString("N")[..8]);
        string pw = "acl-" + Guid.NewGuid().ToString("N")[..10];
        Assert.Equal("OK", redis.Cli("ACL", "SETUSER", "lmfs", "on", ">" + pw, "~lmfs{*", "+@all").Trim());
        string url = $"redis://lmfs:{pw}@127.0.0.1:{redis.Port}/0?volume=bg";
        Ok(LmfsRunner.Run("format", url, "--storage", Objects));
        string src = _dir.WriteRandom("m.bin", (1 << 20) + 11);
        Ok(LmfsRunner.Run("import", url, src, "/m.bin", "--no-progress"));

        string mp = Directory.CreateTempSubdirectory("lmfs-aclmp-").FullName;
        try
        {
            // The daemon gets redis://lmfs:@…, the password in its environment; without the user it would be tried for 'default'.
            Ok(LmfsRunner.Run("mount", url, mp, "--background", "--cache-dir", _dir["cache"], "--log-file", _dir["mount.log"]));
            Assert.Equal(File.ReadAllBytes(src), File.ReadAllBytes(Path.Combine(mp, "m.bin")));
            Assert.DoesNotContain(pw, File.ReadAllText(_dir["mount.log"]), StringComparison.Ordinal);
        }
        finally
        {
            LmfsRunner.Run("umount", mp);
            Directory.Delete(mp);
        }
    }

    public void Dispose() => _dir.Dispose();
}
