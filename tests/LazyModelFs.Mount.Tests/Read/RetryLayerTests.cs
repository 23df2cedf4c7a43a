using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// One retry layer on every read path (issue 12, item 2): the store makes one attempt per call and
/// classifies its failure; the caller's <see cref="RetryPolicy"/> asks again. Counted at two levels:
/// requests reaching an HTTP endpoint (<see cref="FixedAnswerEndpoint"/>) and calls reaching the
/// store (<see cref="FaultyObjectStore"/>). Two nested layers would make the first a multiple of the second.
/// </summary>
public sealed class RetryLayerTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(60);
    private readonly TempDir _dir = new("lmfs-retry");

    private static IObjectStore S3At(FixedAnswerEndpoint endpoint) =>
        ObjectStores.Open($"s3://lmfs-test/p?endpoint={Uri.EscapeDataString(endpoint.Url)}", new StorageOptions { AccessKey = "AK", SecretKey = "SK" });

    private static ChunkEntry SomeChunk()
    {
        var plain = TestData.Random(Chunk, 7);
        return new ChunkEntry(ChunkId.Of(plain), plain.Length, plain.Length + ChunkObject.HeaderSize, ChunkCodec.None, Crc32C.Compute(plain));
    }

    [Theory]
    [InlineData(503)]
    [InlineData(500)]
    [InlineData(429)]
    public async Task An_S3_GET_makes_one_attempt_and_calls_a_server_error_transient(int status)
    {
        using var endpoint = new FixedAnswerEndpoint(status);
        using var store = S3At(endpoint);
        var ex = await Assert.ThrowsAsync<TransientException>(() => store.GetAsync("chunks/aa/bb/x", 0, new byte[100]));
        Assert.Contains($"answered {status} for get 'chunks/aa/bb/x'", ex.Message, StringComparison.Ordinal);
        Assert.Equal(1, endpoint.Requests);
    }

    [Fact]
    public async Task An_S3_GET_calls_a_refusal_permanent_and_does_not_ask_again()
    {
        using var endpoint = new FixedAnswerEndpoint(403, "<Error><Code>InvalidAccessKeyId</Code></Error>");
        using var store = S3At(endpoint);
        var ex = await Assert.ThrowsAsync<StoreRefusedException>(() => store.GetAsync("chunks/aa/bb/x", 0, new byte[100]));
        Assert.Contains("(403 InvalidAccessKeyId)", ex.Message, StringComparison.Ordinal);
        Assert.True(RetryPolicy.IsPermanent(ex, 1));
        Assert.Equal(1, endpoint.Requests);

        // The mount's readability check retries transient answers (in one layer), never refusals.
        await Assert.ThrowsAsync<StoreRefusedException>(() => store.CheckReadableAsync());
        Assert.Equal(2, endpoint.Requests);
        endpoint.Status = 503;
        await Assert.ThrowsAsync<TransientException>(() => store.CheckReadableAsync());
        Assert.Equal(2 + RetryPolicy.Bounded.MaxAttempts, endpoint.Requests);
    }

    [Theory]
    [InlineData(400, "RequestTimeout")]
    [InlineData(403, "RequestTimeTooSkewed")]
    [InlineData(400, "ExpiredToken")]
    [InlineData(403, "ExpiredToken")]
    public async Task S3_error_codes_documented_as_retryable_are_transient_whatever_their_status(int status, string code)
    {
        using var endpoint = new FixedAnswerEndpoint(status, $"<Error><Code>{code}</Code></Error>");
        using var store = S3At(endpoint);
        var ex = await Assert.ThrowsAsync<TransientException>(() => store.GetAsync("chunks/aa/bb/x", 0, new byte[100]));
        Assert.Contains(code, ex.Message, StringComparison.Ordinal);
        Assert.False(RetryPolicy.IsPermanent(ex, 1));

        endpoint.Body = "<Error><Code>AccessDenied</Code></Error>"; // the same status with a code that will not get better
        await Assert.ThrowsAsync<StoreRefusedException>(() => store.GetAsync("chunks/aa/bb/x", 0, new byte[100]));
    }

    [Fact]
    public async Task A_transient_fault_under_the_chunk_reader_is_retried_by_one_layer()
    {
        using var endpoint = new FixedAnswerEndpoint(503);
        var faulty = new FaultyObjectStore(S3At(endpoint));
        using var _ = faulty;
        var entry = SomeChunk();
        var log = new ListLogger();
        using (var reader = new ChunkCache(new ChunkStore(faulty), new MemoryTier(4L * CachedChunk.BufferSizeFor(Chunk), Chunk), null, new ChunkCacheOptions { FetchTimeout = TimeSpan.FromSeconds(2), DemandParts = 1 }, log))
        {
            var ex = await Assert.ThrowsAsync<LmfsException>(() => reader.GetAsync(entry).AsTask().WaitAsync(NoHang));
            Assert.Contains("could not be fetched within 2 s", ex.Message, StringComparison.Ordinal);
            Assert.True(SpinWait.SpinUntil(() => reader.Busy == 0, 30_000));
        }

        Assert.True(faulty.Gets >= 2, $"the chunk reader asked {faulty.Gets} time(s)");
        Assert.Equal(faulty.Gets, endpoint.Requests); // each of its attempts is one request: no loop below it
        Assert.Contains(log.Lines, l => l.Contains("retrying", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Lmfs_cat_retries_a_transient_fault_in_one_layer_and_reports_the_stores_error_when_it_lasts()
    {
        var faulty = new FaultyObjectStore(new MemoryObjectStore());
        using var v = await TwinVolume.CreateAsync(faulty, Chunk, "none");
        var data = TestData.Random(Chunk + 5, 3);
        File.WriteAllBytes(_dir["src.bin"], data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/f.bin");
        var node = (await v.Namespace.ResolveAsync("/f.bin"))!;

        // Two 503s on the first chunk, then the bytes: three GETs for it, one for the other chunk.
        var first = (await v.Meta.GetChunkTableAsync(node.Ino, Chunk))![0].Id.ObjectKey();
        int failures = 0;
        faulty.OnGet = (key, _) => key == first && Interlocked.Increment(ref failures) <= 2 ? GetFault.ServerError(503) : null;
        using (var ms = new MemoryStream())
        {
            await FileReader.CopyToAsync(v, node, ms, window: 1).WaitAsync(NoHang);
            Assert.Equal(data, ms.ToArray());
        }

        Assert.Equal(4, faulty.Gets);

        // A fault that lasts: exactly the policy's attempts, then the store's own error.
        faulty.OnGet = (key, _) => key == first ? GetFault.ServerError(503) : null;
        int before = faulty.Gets;
        var ex = await Assert.ThrowsAsync<LmfsException>(() => FileReader.CopyToAsync(v, node, Stream.Null, window: 1).WaitAsync(NoHang));
        Assert.Contains("HTTP 503", ex.Message, StringComparison.Ordinal);
        Assert.Equal(RetryPolicy.Bounded.MaxAttempts, faulty.Gets - before);

        // A missing object is not asked again.
        faulty.OnGet = null;
        await v.Store.DeleteAsync(first);
        before = faulty.Gets;
        await Assert.ThrowsAsync<ObjectNotFoundException>(() => FileReader.CopyToAsync(v, node, Stream.Null, window: 1).WaitAsync(NoHang));
        Assert.Equal(1, faulty.Gets - before);
    }

    public void Dispose() => _dir.Dispose();
}
