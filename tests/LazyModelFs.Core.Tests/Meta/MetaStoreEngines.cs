using LazyModelFs.Meta;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Meta;

public sealed class MemoryMetaStoreTests : MetaStoreContract
{
    private readonly Dictionary<IMetaStore, MemoryKv> _kvs = [];

    protected override Task<IMetaStore> OpenFreshAsync()
    {
        var kv = new MemoryKv();
        var m = new KvMetaStore(kv);
        _kvs[m] = kv;
        return Task.FromResult<IMetaStore>(m);
    }

    protected override Task DeleteNodeRecordAsync(IMetaStore m, ulong ino) => KvRaw.DeleteNode(_kvs[m], ino);

    protected override Task SetRawEntryAsync(IMetaStore m, ulong parent, string name, byte[] value) => KvRaw.SetEntry(_kvs[m], parent, name, value);
}

/// <summary>Damage behind the port, in the KV engines' key layout (KvMetaStore).</summary>
internal static class KvRaw
{
    public static Task DeleteNode(IKvStore kv, ulong ino)
    {
        kv.Write(tx =>
        {
            tx.Delete(KvMetaStore.NodeKey(ino));
            return 0;
        });
        return Task.CompletedTask;
    }

    public static Task SetEntry(IKvStore kv, ulong parent, string name, byte[] value)
    {
        kv.Write(tx =>
        {
            tx.Set(KvMetaStore.EntryKey(parent, name), value);
            return 0;
        });
        return Task.CompletedTask;
    }
}

public sealed class SqliteMetaStoreTests : MetaStoreContract, IDisposable
{
    private readonly TempDir _dir = new();

    protected override Task<IMetaStore> OpenFreshAsync() => MetaStores.OpenAsync($"sqlite://{_dir[Guid.NewGuid() + ".db"]}", create: true);

    protected override Task DeleteNodeRecordAsync(IMetaStore m, ulong ino)
    {
        using var kv = SqliteKv.Open(m.Describe["sqlite://".Length..], create: false);
        return KvRaw.DeleteNode(kv, ino);
    }

    protected override Task SetRawEntryAsync(IMetaStore m, ulong parent, string name, byte[] value)
    {
        using var kv = SqliteKv.Open(m.Describe["sqlite://".Length..], create: false);
        return KvRaw.SetEntry(kv, parent, name, value);
    }

    [Fact]
    public async Task Two_connections_to_one_file_see_each_others_changes()
    {
        string url = $"sqlite://{_dir["shared.db"]}";
        using var a = await MetaStores.OpenAsync(url, create: true);
        Assert.True(await a.FormatAsync(NewSettings(), new Node(1, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 0, 0, 1)));
        using var b = await MetaStores.OpenAsync(url);
        var ns = new Namespace(b, (await b.LoadSettingsAsync())!);
        await ns.MkdirAllAsync("/x");
        Assert.NotNull(await new Namespace(a, (await a.LoadSettingsAsync())!).ResolveAsync("/x"));
    }

    [Fact]
    public async Task A_missing_database_is_not_created_by_readers()
    {
        string path = _dir["absent.db"];
        var ex = await Assert.ThrowsAsync<LmfsException>(() => MetaStores.OpenAsync($"sqlite://{path}"));
        Assert.Contains("does not exist", ex.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task A_file_that_is_not_a_database_gives_a_clear_error()
    {
        string path = _dir["garbage.db"];
        await File.WriteAllTextAsync(path, new string('x', 4096));
        var ex = await Assert.ThrowsAsync<LmfsException>(() => MetaStores.OpenAsync($"sqlite://{path}"));
        Assert.Contains("not an lmfs SQLite metadata database", ex.Hint, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Settings_of_an_unknown_format_version_are_refused()
    {
        string path = _dir["v9.db"];
        using (var kv = SqliteKv.Open(path, create: true))
        {
            kv.Write(tx =>
            {
                tx.Set("S"u8.ToArray(), """{"formatVersion":9,"name":"x"}"""u8.ToArray());
                return 0;
            });
        }

        using var m = await MetaStores.OpenAsync($"sqlite://{path}");
        var ex = await Assert.ThrowsAsync<LmfsException>(() => m.LoadSettingsAsync());
        Assert.Contains("version is 9", ex.Message, StringComparison.Ordinal);
    }

    public void Dispose() => _dir.Dispose();
}

public sealed class RedisMetaStoreTests(RedisMetaStoreTests.Server server) : MetaStoreContract, IClassFixture<RedisMetaStoreTests.Server>
{
    public sealed class Server : IDisposable
    {
        public RedisServer Redis { get; } = new("pw-" + Guid.NewGuid().ToString("N")[..8]);

        public string Url(string volume) => $"redis://:{Redis.Password}@127.0.0.1:{Redis.Port}/0?volume={volume}";

        public void Dispose() => Redis.Dispose();
    }

    protected override async Task<IMetaStore> OpenFreshAsync() => await MetaStores.OpenAsync(server.Url("t" + Guid.NewGuid().ToString("N")));

    protected override async Task DeleteNodeRecordAsync(IMetaStore m, ulong ino)
    {
        using var conn = await RawAsync();
        await conn.GetDatabase(0).KeyDeleteAsync($"lmfs{{{((RedisMetaStore)m).Volume}}}:i{ino}");
    }

    protected override async Task SetRawEntryAsync(IMetaStore m, ulong parent, string name, byte[] value)
    {
        using var conn = await RawAsync();
        await conn.GetDatabase(0).HashSetAsync($"lmfs{{{((RedisMetaStore)m).Volume}}}:d{parent}", System.Text.Encoding.UTF8.GetBytes(name), value);
    }

    private Task<StackExchange.Redis.ConnectionMultiplexer> RawAsync() =>
        StackExchange.Redis.ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{server.Redis.Port},password={server.Redis.Password}");

    [Fact]
    public async Task A_lookup_after_the_servers_script_cache_was_flushed_loads_its_script_again()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        ulong dir = await ns.MkdirAllAsync("/d");
        Assert.Equal(dir, (await m.LookupNodeAsync(Node.RootIno, "d"))!.Value.Node!.Ino);
        Assert.Equal("OK", RedisCli(server.Redis, "SCRIPT", "FLUSH").Trim()); // a restart or failover loses the cache too
        Assert.Equal(dir, (await m.LookupNodeAsync(Node.RootIno, "d"))!.Value.Node!.Ino); // NOSCRIPT: the client loads it again
    }

    [Fact]
    public async Task Keys_carry_the_volume_hash_tag()
    {
        string vol = "tag" + Guid.NewGuid().ToString("N")[..8];
        using var m = await MetaStores.OpenAsync(server.Url(vol));
        Assert.True(await m.FormatAsync(NewSettings(), new Node(1, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 0, 0, 1)));
        await new Namespace(m, (await m.LoadSettingsAsync())!).MkdirAllAsync("/d");
        var keys = RedisCli(server.Redis, "--scan", "--pattern", $"*{vol}*").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains($"lmfs{{{vol}}}:setting", keys);
        Assert.Contains($"lmfs{{{vol}}}:d1", keys);
        Assert.All(keys, k => Assert.StartsWith($"lmfs{{{vol}}}:", k, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Wrong_password_and_unreachable_server_give_clear_errors()
    {
        var wrong = await Assert.ThrowsAsync<LmfsException>(() => MetaStores.OpenAsync($"redis://:nope@127.0.0.1:{server.Redis.Port}/0"));
        Assert.DoesNotContain("nope", wrong.Message, StringComparison.Ordinal);
        Assert.Equal(4, wrong.ExitCode);
        var down = await Assert.ThrowsAsync<LmfsException>(() => MetaStores.OpenAsync($"redis://127.0.0.1:{Ports.Free()}/0"));
        Assert.Contains("cannot connect to Redis", down.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Password_can_come_from_the_environment()
    {
        Environment.SetEnvironmentVariable("LMFS_REDIS_PASSWORD", server.Redis.Password);
        try
        {
            using var m = await MetaStores.OpenAsync($"redis://127.0.0.1:{server.Redis.Port}/0?volume=env{Guid.NewGuid():N}");
            Assert.Null(await m.LoadSettingsAsync());
        }
        finally
        {
            Environment.SetEnvironmentVariable("LMFS_REDIS_PASSWORD", null);
        }
    }

    private static string RedisCli(RedisServer r, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("redis-cli") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-p", r.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-a", r.Password!, "--no-auth-warning" }.Concat(args))
        {
            psi.ArgumentList.Add(a);
        }

        using var p = System.Diagnostics.Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return o;
    }
}
