using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;
using LazyModelFs.Util;

namespace LazyModelFs.Storage;

/// <summary>Connection settings of an S3 store; secrets never appear in <see cref="ObjectStores.Canonical"/>.</summary>
public sealed record S3Settings(string Bucket, string Prefix, string? Endpoint, string Region, bool PathStyle)
{
    public string? AccessKey { get; init; }

    public string? SecretKey { get; init; }

    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);

    public int MaxRetries { get; init; } = 4;
}

/// <summary>
/// Any S3-compatible service through AWSSDK.S3 4.x. For servers that do not speak the newer flexible
/// checksums or aws-chunked uploads (s3rver, older MinIO, Ceph), checksums are computed only when an
/// operation requires them and uploads are sent unchunked (dependencies.md). Retries with exponential
/// backoff and jitter are the SDK's "standard" mode; each attempt has a deadline.
/// </summary>
public sealed class S3ObjectStore : IObjectStore
{
    private readonly AmazonS3Client _client;
    private readonly S3Settings _s;

    public S3ObjectStore(S3Settings s)
    {
        _s = s;
        var config = new AmazonS3Config
        {
            ForcePathStyle = s.PathStyle,
            AuthenticationRegion = s.Region,
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
            Timeout = s.Timeout,
            MaxErrorRetry = s.MaxRetries,
            RetryMode = RequestRetryMode.Standard,
            MaxConnectionsPerServer = 64,
        };
        if (s.Endpoint is not null)
        {
            config.ServiceURL = s.Endpoint;
        }
        else
        {
            config.RegionEndpoint = Amazon.RegionEndpoint.GetBySystemName(s.Region);
        }

        AWSCredentials? explicitKeys = s.AccessKey is not null && s.SecretKey is not null ? new BasicAWSCredentials(s.AccessKey, s.SecretKey) : null;
        _client = explicitKeys is not null ? new AmazonS3Client(explicitKeys, config) : new AmazonS3Client(config);
        _get = new S3RangedGet(s, () => explicitKeys ?? ResolveDefault(config));
        Describe = ObjectStores.Canonical(s);
    }

    private readonly S3RangedGet _get;

    /// <summary>The SDK's default chain (environment, profile, web identity, instance metadata); null when it finds nothing.</summary>
    private static AWSCredentials? ResolveDefault(AmazonS3Config config)
    {
        try
        {
            return Amazon.Runtime.Credentials.DefaultAWSCredentialsIdentityResolver.GetCredentials(config);
        }
        catch (AmazonClientException)
        {
            return null;
        }
    }

    public string Describe { get; }

    public async Task CheckAsync(CancellationToken ct = default)
    {
        await Run("list", "", async () =>
        {
            await _client.ListObjectsV2Async(new ListObjectsV2Request { BucketName = _s.Bucket, Prefix = FullKey(""), MaxKeys = 1 }, ct).ConfigureAwait(false);
            return 0;
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// A ranged GET of a key that does not exist, on the read path's own client: "no such key" proves
    /// the endpoint answers, the bucket exists and the credentials are accepted. Without
    /// s3:ListBucket, S3 answers a missing key with AccessDenied instead: that is not an error here
    /// (the mount needs only s3:GetObject), while refused keys (InvalidAccessKeyId,
    /// SignatureDoesNotMatch…) and a missing bucket are.
    /// </summary>
    public async Task CheckReadableAsync(CancellationToken ct = default)
    {
        var probe = new byte[1];
        try
        {
            // The one retry layer of this call (RetryPolicy): a 503 at mount time is asked again, a refusal is not.
            _ = await RetryPolicy.Bounded.RunAsync(t => _get.GetAsync(FullKey(".lmfs-read-probe"), ".lmfs-read-probe", 0, probe, t), ct).ConfigureAwait(false);
        }
        catch (ObjectNotFoundException)
        {
        }
        catch (StoreRefusedException ex) when (ex.Code == "AccessDenied")
        {
        }
    }

    /// <summary>
    /// Ranged GET on the lean signed path (<see cref="S3RangedGet"/>), not the SDK: the read path's hot
    /// call. One attempt: the caller retries (<see cref="RetryPolicy"/>), unlike the SDK calls below.
    /// </summary>
    public Task<int> GetAsync(string key, long offset, Memory<byte> dest, CancellationToken ct = default) => _get.GetAsync(FullKey(key), key, offset, dest, ct);

    public Task PutAsync(string key, ReadOnlyMemory<byte> data, CancellationToken ct = default) =>
        Run("put", key, async () =>
        {
            using var body = AsStream(data);
            var req = new PutObjectRequest
            {
                BucketName = _s.Bucket,
                Key = FullKey(key),
                InputStream = body,
                AutoCloseStream = false,
                UseChunkEncoding = false,
                ContentType = "application/octet-stream",
            };
            await _client.PutObjectAsync(req, ct).ConfigureAwait(false);
            return 0;
        });

    public Task<long?> HeadAsync(string key, CancellationToken ct = default) =>
        Run("head", key, async () =>
        {
            try
            {
                var r = await _client.GetObjectMetadataAsync(new GetObjectMetadataRequest { BucketName = _s.Bucket, Key = FullKey(key) }, ct).ConfigureAwait(false);
                return (long?)r.ContentLength;
            }
            catch (AmazonS3Exception ex) when (ex.StatusCode == HttpStatusCode.NotFound)
            {
                return null;
            }
        });

    public async IAsyncEnumerable<ObjectInfo> ListAsync(string prefix, [EnumeratorCancellation] CancellationToken ct = default)
    {
        string? token = null;
        string full = FullKey(prefix);
        do
        {
            var req = new ListObjectsV2Request { BucketName = _s.Bucket, Prefix = full, ContinuationToken = token, MaxKeys = 1000 };
            var resp = await Run("list", prefix, () => _client.ListObjectsV2Async(req, ct)).ConfigureAwait(false);
            foreach (var o in resp.S3Objects ?? [])
            {
                // A listing without a time (no S3 service we know omits it) reads as not yet old: lmfs gc
                // keeps the object whatever its grace, rather than take an import's fresh one for old.
                var modified = o.LastModified is { } m ? new DateTimeOffset(m.ToUniversalTime(), TimeSpan.Zero) : DateTimeOffset.MaxValue;
                yield return new ObjectInfo(o.Key[FullKey("").Length..], o.Size ?? 0, modified);
            }

            token = resp.IsTruncated == true ? resp.NextContinuationToken : null;
        }
        while (token is not null);
    }

    public Task DeleteAsync(string key, CancellationToken ct = default) =>
        Run("delete", key, async () =>
        {
            await _client.DeleteObjectAsync(new DeleteObjectRequest { BucketName = _s.Bucket, Key = FullKey(key) }, ct).ConfigureAwait(false);
            return 0;
        });

    public void Dispose()
    {
        _client.Dispose();
        _get.Dispose();
    }

    private static MemoryStream AsStream(ReadOnlyMemory<byte> data) =>
        System.Runtime.InteropServices.MemoryMarshal.TryGetArray(data, out var seg)
            ? new MemoryStream(seg.Array!, seg.Offset, seg.Count, writable: false)
            : new MemoryStream(data.ToArray(), writable: false);

    private string FullKey(string key) => _s.Prefix.Length == 0 ? key : _s.Prefix + "/" + key;

    /// <summary>Maps SDK and network failures to one clear message each; a missing key to <see cref="ObjectNotFoundException"/>.</summary>
    private async Task<T> Run<T>(string op, string key, Func<Task<T>> body)
    {
        try
        {
            return await body().ConfigureAwait(false);
        }
        catch (AmazonS3Exception ex) when (ex.ErrorCode == "NoSuchKey" || (ex.StatusCode == HttpStatusCode.NotFound && ex.ErrorCode != "NoSuchBucket"))
        {
            throw new ObjectNotFoundException(key);
        }
        catch (AmazonS3Exception ex) when (ex.ErrorCode == "NoSuchBucket")
        {
            throw new LmfsException($"bucket '{_s.Bucket}' does not exist at {Describe}", "create the bucket first (aws s3 mb s3://" + _s.Bucket + "), or fix the storage URL", 5, ex);
        }
        catch (AmazonS3Exception ex) when (ex.ErrorCode is "InvalidAccessKeyId" or "SignatureDoesNotMatch" or "AccessDenied" or "InvalidToken" or "ExpiredToken"
                                           || ex.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized)
        {
            throw new LmfsException(
                $"{Describe} refused the credentials for {op} ({ex.ErrorCode ?? ex.StatusCode.ToString()})",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --access-key / --secret-key-file) to keys allowed on this bucket",
                5,
                ex);
        }
        catch (AmazonServiceException ex) when (IsNetwork(ex) || ex.InnerException is TaskCanceledException)
        {
            throw new LmfsException($"cannot reach {Describe} for {op} '{key}': {Inner(ex).Message}", "check the endpoint address and that the S3 service is running", 5, ex);
        }
        catch (HttpRequestException ex)
        {
            throw new LmfsException($"cannot reach {Describe} for {op} '{key}': {Inner(ex).Message}", "check the endpoint address and that the S3 service is running", 5, ex);
        }
        catch (AmazonClientException ex) when (ex.Message.Contains("credentials", StringComparison.OrdinalIgnoreCase))
        {
            throw new LmfsException($"no S3 credentials found for {Describe} (tried the environment, the AWS profile and instance metadata)", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, an AWS profile, or --access-key / --secret-key-file", 5, ex);
        }
        catch (AmazonServiceException ex)
        {
            throw new LmfsException($"{Describe} failed {op} '{key}': {ex.ErrorCode} {ex.Message}", "retry; if it persists, check the S3 service's logs", 5, ex);
        }
    }

    private static bool IsNetwork(Exception ex)
    {
        for (var e = ex.InnerException; e is not null; e = e.InnerException)
        {
            if (e is HttpRequestException or SocketException or IOException)
            {
                return true;
            }
        }

        return false;
    }

    private static Exception Inner(Exception ex)
    {
        var e = ex;
        while (e.InnerException is not null)
        {
            e = e.InnerException;
        }

        return e;
    }
}
