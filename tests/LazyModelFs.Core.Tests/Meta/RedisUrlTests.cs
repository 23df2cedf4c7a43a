using LazyModelFs.Meta;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Meta;

/// <summary>The Redis URL forms of docs/operations.md (issue 18, item 10), parsed without a server.</summary>
public sealed class RedisUrlTests
{
    [Fact]
    public void One_host_with_defaults()
    {
        var u = RedisUrl.Parse("redis://10.0.0.5");
        Assert.Equal([("10.0.0.5", 6379)], u.Hosts);
        Assert.Equal(0, u.Database);
        Assert.Equal("default", u.Volume);
        Assert.Null(u.User);
        Assert.Null(u.Password);
        Assert.False(u.Sentinel);
        Assert.False(u.Tls);
    }

    [Fact]
    public void Seeds_database_volume_and_ipv6()
    {
        var u = RedisUrl.Parse("redis://h1:6380,h2,[::1]:7000/3?volume=models");
        Assert.Equal([("h1", 6380), ("h2", 6379), ("::1", 7000)], u.Hosts);
        Assert.Equal(3, u.Database);
        Assert.Equal("models", u.Volume);
        Assert.Equal("h1:6380, h2:6379, [::1]:7000", u.HostList);
    }

    [Fact]
    public void Sentinel_hosts_default_to_26379_and_need_a_service()
    {
        var u = RedisUrl.Parse("rediss+sentinel://s1,s2:26380/1?service=mymaster&volume=v");
        Assert.True(u.Sentinel);
        Assert.True(u.Tls);
        Assert.Equal("mymaster", u.Service);
        Assert.Equal([("s1", 26379), ("s2", 26380)], u.Hosts);
        Assert.Equal(1, u.Database);
        Assert.Equal("v", u.Volume);

        var ex = Assert.Throws<LmfsException>(() => RedisUrl.Parse("redis+sentinel://s1/0?volume=v"));
        Assert.Contains("?service=MASTER", ex.Message, StringComparison.Ordinal);
        Assert.Equal(2, ex.ExitCode);
    }

    [Theory]
    [InlineData("redis://:pw@h", null, "pw")]
    [InlineData("redis://pw@h", null, "pw")] // no ':': the password, as before Redis 6 ACLs
    [InlineData("redis://lmfs:pw@h", "lmfs", "pw")]
    [InlineData("redis://lmfs:@h", "lmfs", null)] // an ACL user; the password from LMFS_REDIS_PASSWORD
    [InlineData("redis://:pa%2Fss%40x@h", null, "pa/ss@x")]
    [InlineData("redis://:pa/ss@h/2", null, "pa/ss")] // a raw '/' in a password: the user-info ends at the last '@', as Redact hides it
    public void User_and_password(string url, string? user, string? password)
    {
        var u = RedisUrl.Parse(url);
        Assert.Equal(user, u.User);
        Assert.Equal(password, u.Password);
        Assert.Equal("h", u.Hosts[0].Host);
    }

    [Theory]
    [InlineData("redis://h:0", "is not a port")]
    [InlineData("redis://h:65536", "is not a port")]
    [InlineData("redis://h:x", "is not a port")]
    [InlineData("redis://h1,,h2", "empty entry")]
    [InlineData("redis://", "empty entry")]
    [InlineData("redis://h/db1", "is not a database number")]
    [InlineData("redis://h/-1", "is not a database number")]
    [InlineData("redis://::1:6379", "in brackets")]
    [InlineData("redis://[::1:6379", "does not close it")]
    [InlineData("redis://h?volume=a&volume=b", "given twice")]
    [InlineData("redis://h?volum=a", "'volum' is not a parameter")]
    [InlineData("redis://h?service=m", "redis+sentinel://")]
    [InlineData("redis://h#frag", "fragment")]
    [InlineData("redis://h?volume=a/b", "volume name 'a/b' is not allowed")]
    public void Malformed_urls_say_what_is_wrong(string url, string part)
    {
        var ex = Assert.Throws<LmfsException>(() => RedisUrl.Parse(url));
        Assert.Contains(part, ex.Message, StringComparison.Ordinal);
        Assert.Equal(2, ex.ExitCode);
        Assert.NotNull(ex.Hint);
    }

    [Fact]
    public void A_password_never_reaches_a_parse_error()
    {
        var ex = Assert.Throws<LmfsException>(() => RedisUrl.Parse("redis://u:s3cr/et@h:99999/0"));
        Assert.DoesNotContain("s3cr", ex.Message + ex.Hint, StringComparison.Ordinal);
    }

    [Fact]
    public void Only_the_redis_schemes_go_to_this_parser()
    {
        Assert.True(RedisUrl.IsRedis("redis://h"));
        Assert.True(RedisUrl.IsRedis("REDISS://h"));
        Assert.True(RedisUrl.IsRedis("redis+sentinel://h?service=m"));
        Assert.False(RedisUrl.IsRedis("sqlite:///a.db"));
        Assert.False(RedisUrl.IsRedis("redisx://h"));
    }
}
