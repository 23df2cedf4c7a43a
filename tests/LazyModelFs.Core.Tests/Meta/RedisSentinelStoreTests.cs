using LazyModelFs.Meta;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Core.Tests.Meta;

/// <summary>
/// A store opened through Sentinel, as a long-running mount holds it, across a failover: the client
/// hears of the new primary from the sentinel and sends its commands there (issue 18, item 10).
/// </summary>
public sealed class RedisSentinelStoreTests
{
    [Fact]
    public async Task An_open_store_follows_a_failover_to_the_new_primary()
    {
        using var primary = new RedisServer();
        using var replica = new RedisServer(null, args: ["--replicaof", "127.0.0.1", primary.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        replica.WaitFor(() => replica.Cli("INFO", "replication").Contains("master_link_status:up", StringComparison.Ordinal), "replication link up");
        using var sentinel = new RedisSentinel(primary.Port);
        string vol = "fo" + Guid.NewGuid().ToString("N")[..8];
        using var m = await MetaStores.OpenAsync($"redis+sentinel://127.0.0.1:{sentinel.Port}/0?service={sentinel.Service}&volume={vol}");
        Assert.True(await m.FormatAsync(MetaStoreContract.NewSettingsForTests(), new Node(1, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 0, 0, 1)));
        ulong before = await m.AllocateInodeAsync();

        string port = replica.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        sentinel.WaitFor(() => sentinel.Cli("SENTINEL", "replicas", sentinel.Service).Contains(port, StringComparison.Ordinal), "the replica known");
        sentinel.WaitFor(() => sentinel.Cli("SENTINEL", "failover", sentinel.Service).StartsWith("OK", StringComparison.Ordinal) || sentinel.MasterPortNow() == replica.Port, "failover accepted");
        sentinel.WaitFor(() => sentinel.MasterPortNow() == replica.Port && replica.Cli("ROLE").StartsWith("master", StringComparison.Ordinal), "the replica promoted");

        // Commands during the switch may fail (EIO through a mount); the store must come to the new primary by itself.
        ulong after = 0;
        sentinel.WaitFor(
            () =>
            {
                try
                {
                    after = m.AllocateInodeAsync().GetAwaiter().GetResult();
                    return replica.Cli("GET", $"lmfs{{{vol}}}:nextinode").Trim() == after.ToString(System.Globalization.CultureInfo.InvariantCulture);
                }
                catch (LazyModelFs.Util.LmfsException)
                {
                    return false;
                }
            },
            "a write through the open store reaching the new primary");
        Assert.True(after > before);
        Assert.NotNull(await m.LoadSettingsAsync());
    }
}
