using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Storage;

/// <summary>The one contract every object store passes (memory twin, local directory, S3 via s3rver).</summary>
public abstract class ObjectStoreContract
{
    protected abstract IObjectStore OpenFresh();

    private static byte[] Bytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public async Task Put_then_get_whole_ranged_and_past_the_end()
    {
        using var s = OpenFresh();
        await s.CheckAsync();
        var data = Bytes(300_000, 1);
        await s.PutAsync("chunks/aa/bb/obj", data);

        var whole = new byte[data.Length + 10];
        Assert.Equal(data.Length, await s.GetAsync("chunks/aa/bb/obj", 0, whole));
        Assert.Equal(data, whole[..data.Length]);

        var part = new byte[1000];
        Assert.Equal(1000, await s.GetAsync("chunks/aa/bb/obj", 12345, part));
        Assert.Equal(data[12345..13345], part);

        var tail = new byte[100];
        Assert.Equal(40, await s.GetAsync("chunks/aa/bb/obj", data.Length - 40, tail));
        Assert.Equal(data[^40..], tail[..40]);
        Assert.Equal(0, await s.GetAsync("chunks/aa/bb/obj", data.Length, tail));
        Assert.Equal(data.Length, await s.HeadAsync("chunks/aa/bb/obj"));
    }

    [Fact]
    public async Task Missing_objects_are_reported_as_missing()
    {
        using var s = OpenFresh();
        var ex = await Assert.ThrowsAsync<ObjectNotFoundException>(() => s.GetAsync("chunks/00/00/none", 0, new byte[10]));
        Assert.Equal("chunks/00/00/none", ex.Key);
        Assert.Null(await s.HeadAsync("chunks/00/00/none"));
        await s.DeleteAsync("chunks/00/00/none"); // deleting what is not there succeeds
    }

    [Fact]
    public async Task Put_replaces_list_filters_by_prefix_in_order_and_delete_removes()
    {
        using var s = OpenFresh();
        var before = DateTimeOffset.UtcNow;
        await s.PutAsync("chunks/01/x", Bytes(10, 2));
        await s.PutAsync("chunks/00/y", Bytes(20, 3));
        await s.PutAsync("other/z", Bytes(5, 4));
        await s.PutAsync("chunks/01/x", Bytes(11, 5));
        var listed = new List<ObjectInfo>();
        await foreach (var o in s.ListAsync("chunks/"))
        {
            listed.Add(o);
        }

        var after = DateTimeOffset.UtcNow;
        Assert.Equal([("chunks/00/y", 20L), ("chunks/01/x", 11L)], listed.Select(o => (o.Key, o.Size)));

        // Last-modified is the time of the PUT (S3 keeps whole seconds, so a second either side).
        Assert.All(listed, o => Assert.InRange(o.LastModified, before.AddSeconds(-1), after.AddSeconds(1)));
        await s.DeleteAsync("chunks/01/x");
        Assert.Null(await s.HeadAsync("chunks/01/x"));
        Assert.Equal(20, await s.HeadAsync("chunks/00/y"));
    }

    [Fact]
    public async Task Empty_and_concurrent_puts_work()
    {
        using var s = OpenFresh();
        await s.PutAsync("e/empty", Array.Empty<byte>());
        Assert.Equal(0, await s.HeadAsync("e/empty"));
        await Task.WhenAll(Enumerable.Range(0, 32).Select(i => s.PutAsync($"c/{i}", Bytes(4096 + i, i))));
        for (int i = 0; i < 32; i++)
        {
            var b = new byte[5000];
            Assert.Equal(4096 + i, await s.GetAsync($"c/{i}", 0, b));
            Assert.Equal(Bytes(4096 + i, i), b[..(4096 + i)]);
        }
    }
}

public sealed class MemoryObjectStoreTests : ObjectStoreContract
{
    protected override IObjectStore OpenFresh() => new MemoryObjectStore();
}

public sealed class LocalObjectStoreTests : ObjectStoreContract, IDisposable
{
    private readonly TempDir _dir = new();

    protected override IObjectStore OpenFresh() => ObjectStores.Open($"file://{_dir[Guid.NewGuid().ToString("N")]}", create: true);

    [Fact]
    public async Task Puts_leave_no_temporary_files_and_keys_cannot_escape_the_root()
    {
        using var s = (LocalObjectStore)OpenFresh();
        await s.PutAsync("chunks/ab/cd/k", new byte[100]);
        Assert.Equal(["k"], Directory.GetFiles(Path.Combine(s.Root, "chunks/ab/cd")).Select(Path.GetFileName));
        await Assert.ThrowsAsync<ArgumentException>(() => s.PutAsync("../escape", new byte[1]));
        await Assert.ThrowsAsync<ArgumentException>(() => s.GetAsync("/etc/passwd", 0, new byte[1]));
    }

    [Fact]
    public async Task A_missing_directory_fails_the_check()
    {
        using var s = ObjectStores.Open($"file://{_dir["never-created"]}");
        var ex = await Assert.ThrowsAsync<LmfsException>(() => s.CheckAsync());
        Assert.Contains("does not exist", ex.Message, StringComparison.Ordinal);
    }

    public void Dispose() => _dir.Dispose();
}

public sealed class S3ObjectStoreTests(S3ObjectStoreTests.Server server) : ObjectStoreContract, IClassFixture<S3ObjectStoreTests.Server>
{
    public sealed class Server : IDisposable
    {
        public S3rverServer S3 { get; } = new();

        public void Dispose() => S3.Dispose();
    }

    private static StorageOptions Creds => new() { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey };

    protected override IObjectStore OpenFresh() => ObjectStores.Open(server.S3.NewStorageUrl(), Creds);

    [Fact]
    public async Task Missing_bucket_is_reported_as_such()
    {
        using var s = ObjectStores.Open($"s3://no-such-bucket/p?endpoint={server.S3.Endpoint}", Creds);
        var ex = await Assert.ThrowsAsync<LmfsException>(() => s.CheckAsync());
        Assert.Contains("bucket 'no-such-bucket' does not exist", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Wrong_credentials_are_reported_without_the_secret()
    {
        using var s = ObjectStores.Open(server.S3.NewStorageUrl(), new StorageOptions { AccessKey = "WRONG", SecretKey = "very-secret-value" });
        var ex = await Assert.ThrowsAsync<LmfsException>(() => s.CheckAsync());
        Assert.Contains("refused the credentials", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("very-secret-value", ex.Message + ex.Hint, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Unreachable_endpoint_fails_fast_with_a_clear_error()
    {
        using var s = ObjectStores.Open($"s3://lmfs-test/p?endpoint=http://127.0.0.1:{Ports.Free()}", Creds with { Timeout = TimeSpan.FromSeconds(5) });
        var ex = await Assert.ThrowsAsync<LmfsException>(() => s.CheckAsync());
        Assert.Contains("cannot reach", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Canonical_url_keeps_settings_and_drops_secrets()
    {
        string c = ObjectStores.Canonical("s3://bucket/some/prefix", new StorageOptions { Endpoint = "http://127.0.0.1:9000/", Region = "eu-west-1", AccessKey = "AK", SecretKey = "SK" });
        Assert.Equal("s3://bucket/some/prefix?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1&path-style=true", c);
        Assert.Throws<LmfsException>(() => ObjectStores.Open("s3://ak:sk@bucket/p"));
        Assert.Throws<LmfsException>(() => ObjectStores.Open("s3://bucket/p?colour=blue"));
        Assert.Throws<LmfsException>(() => ObjectStores.Open("s3://bucket/p?endpoint=ftp://x"));
    }
}
