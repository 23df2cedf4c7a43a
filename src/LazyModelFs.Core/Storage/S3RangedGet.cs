using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Amazon.Runtime;
using LazyModelFs.Util;

namespace LazyModelFs.Storage;

/// <summary>
/// Ranged GETs without the SDK: the read path's one hot S3 call, signed with AWS Signature V4 and
/// sent on a plain HttpClient that reads the body straight into the caller's buffer.
///
/// Why: on the 2-core development machine, AWSSDK.S3's GetObject cost about 0.5 CPU-s/GB more than
/// an HttpClient GET of the same bytes (wrapper streams, per-request pipeline), and the read path's
/// CPU competes with the object server's (benchmarks.md). Everything else (PUT, HEAD, LIST, DELETE,
/// credential resolution and refresh) stays with the SDK.
///
/// Signing (docs.aws.amazon.com, "Signature Version 4 for S3"): canonical request = method, URI
/// (each key segment percent-encoded, '/' kept), empty query, the signed headers host, range,
/// x-amz-content-sha256 (the empty payload's hash), x-amz-date (and x-amz-security-token for
/// temporary credentials), in lowercase and sorted; string to sign = algorithm, timestamp, scope
/// (date/region/s3/aws4_request), SHA-256 of the canonical request; key = HMAC chain over date,
/// region, "s3", "aws4_request" starting from "AWS4" + secret (cached per day and secret).
/// One attempt per call, bounded by the per-attempt timeout (<see cref="S3Settings.Timeout"/>), its
/// failure classified: <see cref="TransientException"/> for network errors, timeouts, 408, 429 and
/// 5xx; <see cref="StoreRefusedException"/> for refusals that asking again will not change;
/// <see cref="ObjectNotFoundException"/> for a missing key. Retrying is the caller's, in one place
/// (<see cref="RetryPolicy"/>): a loop here under the chunk reader's own made 5 tries of every one of
/// its tries (issue 12, item 2).
/// </summary>
internal sealed class S3RangedGet : IDisposable
{
    private const string EmptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    private readonly S3Settings _s;
    private readonly HttpClient _http;
    private readonly Lazy<AWSCredentials?> _credentials;
    private readonly string _scheme;
    private readonly string _host;   // host[:port] as signed
    private readonly string _pathPrefix;
    private SigningKeyCache? _signingKey;

    private sealed record SigningKeyCache(string Date, string Secret, byte[] Key);

    /// <param name="credentials">Resolved on first use (the default chain may ask instance metadata); null: none found (an error at the first GET).</param>
    public S3RangedGet(S3Settings s, Func<AWSCredentials?> credentials)
    {
        _s = s;
        _credentials = new Lazy<AWSCredentials?>(credentials, LazyThreadSafetyMode.ExecutionAndPublication);
        var endpoint = new Uri(s.Endpoint ?? $"https://s3.{s.Region}.amazonaws.com");
        _scheme = endpoint.Scheme;
        string host = endpoint.IsDefaultPort ? endpoint.Host : $"{endpoint.Host}:{endpoint.Port}";
        // Virtual-hosted style unless asked for path style (or the bucket name cannot be a host label under TLS).
        bool pathStyle = s.PathStyle || s.Bucket.Contains('.', StringComparison.Ordinal);
        _host = pathStyle ? host : s.Bucket + "." + host;
        _pathPrefix = pathStyle ? "/" + Uri.EscapeDataString(s.Bucket) : "";
#pragma warning disable CA2000 // the client owns its handler (disposeHandler) and is disposed with this object
        _http = new HttpClient(new SocketsHttpHandler
        {
            MaxConnectionsPerServer = 64,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(60),
            AutomaticDecompression = DecompressionMethods.None,
            ConnectCallback = ConnectAsync,
        })
        {
            Timeout = Timeout.InfiniteTimeSpan, // per attempt, below
        };
#pragma warning restore CA2000
    }

    /// <summary>TCP_NODELAY and a large receive buffer, so a 4 MiB body arrives in few reads.</summary>
    private static async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext ctx, CancellationToken ct)
    {
#pragma warning disable CA2000 // owned by the returned stream, or disposed in the catch
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveBufferSize = 4 << 20 };
#pragma warning restore CA2000
        try
        {
            await socket.ConnectAsync(ctx.DnsEndPoint, ct).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Reads up to dest.Length bytes of <paramref name="key"/> (the full key, prefix included) from <paramref name="offset"/>; <paramref name="name"/> is the key as messages show it.</summary>
    public async Task<int> GetAsync(string key, string name, long offset, Memory<byte> dest, CancellationToken ct)
    {
        if (dest.Length == 0)
        {
            return 0;
        }

        // One attempt, with its own timeout; the caller's one retry layer asks again (RetryPolicy).
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(_s.Timeout);
        try
        {
            return await AttemptAsync(key, name, offset, dest, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (!ct.IsCancellationRequested)
        {
            throw new TransientException($"GET of '{name}' from {_s.Endpoint ?? "S3"} timed out after {_s.Timeout.TotalSeconds:0} s", "check that the S3 service is running and reachable", ex);
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException)
        {
            throw new TransientException($"cannot reach {_s.Endpoint ?? "S3"} for get '{name}': {(ex.InnerException ?? ex).Message}", "check the endpoint address and that the S3 service is running", ex);
        }
    }

    private async Task<int> AttemptAsync(string key, string name, long offset, Memory<byte> dest, CancellationToken ct)
    {
        string path = _pathPrefix + "/" + string.Join('/', key.Split('/').Select(Uri.EscapeDataString));
        using var req = new HttpRequestMessage(HttpMethod.Get, new Uri($"{_scheme}://{_host}{path}", UriKind.Absolute));
        req.Headers.Range = new RangeHeaderValue(offset, offset + dest.Length - 1);
        await SignAsync(req, path, $"bytes={offset}-{offset + dest.Length - 1}").ConfigureAwait(false);
        using var resp = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
        switch (resp.StatusCode)
        {
            case HttpStatusCode.PartialContent:
                break;
            case HttpStatusCode.OK when offset == 0:
                break; // a server that ignores Range sends the object from its start
            case HttpStatusCode.RequestedRangeNotSatisfiable:
                return 0; // offset at or past the end
            case HttpStatusCode.NotFound:
                string body = await resp.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
                throw body.Contains("NoSuchBucket", StringComparison.Ordinal)
                    ? new StoreRefusedException($"bucket '{_s.Bucket}' does not exist at {_s.Endpoint ?? "S3"}", "create the bucket, or fix the storage URL")
                    : new ObjectNotFoundException(name);
            case HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized or HttpStatusCode.BadRequest
                when ErrorCode(await resp.Content.ReadAsStringAsync(ct).ConfigureAwait(false)) is var retryable && TransientCodes.Contains(retryable):
                // S3 says these get better by asking again (a clock skew corrected, temporary credentials
                // refreshed on the next signing, a request the server timed out).
                throw new TransientException($"{_s.Endpoint ?? "S3"} answered {(int)resp.StatusCode} {retryable} for get '{name}'");
            case HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized:
                // Permanent: retrying with the same credentials gets the same answer (issue 11, item 7).
                // The S3 error code (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch…) tells the
                // operator which; it holds no secret.
                string code = ErrorCode(await resp.Content.ReadAsStringAsync(ct).ConfigureAwait(false));
                throw new StoreRefusedException(
                    $"{_s.Endpoint ?? "S3"} refused the request for '{name}' ({(int)resp.StatusCode}{(code.Length > 0 ? " " + code : "")})",
                    code == "AccessDenied"
                        ? "the credentials are valid but not allowed to read this bucket/prefix: grant s3:GetObject on it"
                        : "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --access-key / --secret-key-file) to keys allowed on this bucket")
                { Code = code };
            case HttpStatusCode.TooManyRequests or >= HttpStatusCode.InternalServerError:
                throw new TransientException($"{_s.Endpoint ?? "S3"} answered {(int)resp.StatusCode} for get '{name}'");
            case HttpStatusCode.RequestTimeout:
                throw new TransientException($"{_s.Endpoint ?? "S3"} answered 408 for get '{name}'");
            default:
                throw new StoreRefusedException($"{_s.Endpoint ?? "S3"} answered {(int)resp.StatusCode} {resp.ReasonPhrase} for get '{name}'", "check the storage URL and the S3 service's logs");
        }

        await using var stream = await resp.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
        int total = 0;
        while (total < dest.Length)
        {
            int n = await stream.ReadAsync(dest[total..], ct).ConfigureAwait(false);
            if (n == 0)
            {
                break;
            }

            total += n;
        }

        return total;
    }

    /// <summary>4xx error codes that S3 documents as worth retrying (error responses, "retryable" errors).</summary>
    private static readonly HashSet<string> TransientCodes = new(StringComparer.Ordinal)
    {
        "RequestTimeout", "RequestTimeTooSkewed", "ExpiredToken", "TokenRefreshRequired", "SlowDown", "InternalError", "ServiceUnavailable", "IDPCommunicationError",
    };

    /// <summary>The &lt;Code&gt; of an S3 XML error body, or "" (the body is short; nothing in it is secret).</summary>
    internal static string ErrorCode(string body)
    {
        int a = body.IndexOf("<Code>", StringComparison.Ordinal), b = a < 0 ? -1 : body.IndexOf("</Code>", a, StringComparison.Ordinal);
        string code = a < 0 || b < 0 ? "" : body[(a + 6)..b];
        return code.Length <= 64 && code.All(char.IsAsciiLetterOrDigit) ? code : "";
    }

    private async Task SignAsync(HttpRequestMessage req, string path, string range)
    {
        ImmutableCredentials? c = null;
        if (_credentials.Value is { } creds)
        {
            c = await creds.GetCredentialsAsync().ConfigureAwait(false);
        }

        var now = DateTime.UtcNow;
        string amzDate = now.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture);
        string date = amzDate[..8];
        req.Headers.TryAddWithoutValidation("x-amz-date", amzDate);
        req.Headers.TryAddWithoutValidation("x-amz-content-sha256", EmptyHash);
        if (c is null || string.IsNullOrEmpty(c.AccessKey))
        {
            // As the SDK does for every other call: no credentials is an error, not an anonymous request.
            throw new StoreRefusedException($"no S3 credentials found for {_s.Endpoint ?? "S3"} (tried the environment, the AWS profile and instance metadata)", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, an AWS profile, or --access-key / --secret-key-file");
        }

        var headers = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["host"] = _host,
            ["range"] = range,
            ["x-amz-content-sha256"] = EmptyHash,
            ["x-amz-date"] = amzDate,
        };
        if (c.UseToken)
        {
            headers["x-amz-security-token"] = c.Token;
            req.Headers.TryAddWithoutValidation("x-amz-security-token", c.Token);
        }

        string signed = string.Join(';', headers.Keys);
        var canonical = new StringBuilder("GET\n").Append(path).Append("\n\n");
        foreach (var (k, v) in headers)
        {
            canonical.Append(k).Append(':').Append(v).Append('\n');
        }

        canonical.Append('\n').Append(signed).Append('\n').Append(EmptyHash);
        string scope = $"{date}/{_s.Region}/s3/aws4_request";
        string toSign = $"AWS4-HMAC-SHA256\n{amzDate}\n{scope}\n{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(canonical.ToString())))}";
        string signature = Convert.ToHexStringLower(HMACSHA256.HashData(SigningKey(date, c.SecretKey), Encoding.UTF8.GetBytes(toSign)));
        req.Headers.TryAddWithoutValidation("Authorization", $"AWS4-HMAC-SHA256 Credential={c.AccessKey}/{scope}, SignedHeaders={signed}, Signature={signature}");
    }

    private byte[] SigningKey(string date, string secret)
    {
        if (_signingKey is { } k && k.Date == date && k.Secret == secret) // one reference read: never torn
        {
            return k.Key;
        }

        byte[] key = Encoding.UTF8.GetBytes("AWS4" + secret);
        foreach (var part in new[] { date, _s.Region, "s3", "aws4_request" })
        {
            key = HMACSHA256.HashData(key, Encoding.UTF8.GetBytes(part));
        }

        _signingKey = new SigningKeyCache(date, secret, key);
        return key;
    }

    public void Dispose() => _http.Dispose();
}
