using System.Globalization;
using System.Text;
using LazyModelFs.Util;

namespace LazyModelFs.Storage;

/// <summary>Flags that refine a storage URL; credentials are never persisted.</summary>
public sealed record StorageOptions
{
    public string? Endpoint { get; init; }

    public string? Region { get; init; }

    public bool? PathStyle { get; init; }

    public string? AccessKey { get; init; }

    public string? SecretKey { get; init; }

    public TimeSpan? Timeout { get; init; }
}

/// <summary>Opens an object store from its URL: <c>file:///DIR</c> or <c>s3://BUCKET[/PREFIX][?endpoint=…&amp;region=…&amp;path-style=true]</c>.</summary>
public static class ObjectStores
{
    public const string UrlHelp = "use file:///ABSOLUTE/DIR or s3://BUCKET/PREFIX (with --endpoint, --region, --path-style for S3-compatible servers)";

    public static IObjectStore Open(string url, StorageOptions? options = null, bool create = false)
    {
        options ??= new StorageOptions();
        if (url == "memory://")
        {
            return new MemoryObjectStore();
        }

        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri))
        {
            throw new LmfsException($"'{Redact.Url(url)}' is not a storage URL", UrlHelp, 2);
        }

        switch (uri.Scheme)
        {
            case "file":
                if (!string.IsNullOrEmpty(uri.Host))
                {
                    throw new LmfsException($"'{Redact.Url(url)}' names host '{uri.Host}'; a file URL takes a path", "write three slashes: file:///var/lib/lmfs/objects", 2);
                }

                string path = Uri.UnescapeDataString(uri.AbsolutePath);
                if (create)
                {
                    Directory.CreateDirectory(path);
                }

                return new LocalObjectStore(path);
            case "s3":
                return new S3ObjectStore(ParseS3(uri, url, options));
            default:
                throw new LmfsException($"storage URL scheme '{uri.Scheme}' is not supported", UrlHelp, 2);
        }
    }

    /// <summary>The URL to store in volume settings: options folded in, secrets left out.</summary>
    public static string Canonical(string url, StorageOptions options) =>
        Uri.TryCreate(url, UriKind.Absolute, out var uri) && uri.Scheme == "s3" ? Canonical(ParseS3(uri, url, options)) : url;

    public static string Canonical(S3Settings s)
    {
        var sb = new StringBuilder("s3://").Append(s.Bucket);
        if (s.Prefix.Length > 0)
        {
            sb.Append('/').Append(s.Prefix);
        }

        var q = new List<string>();
        if (s.Endpoint is not null)
        {
            q.Add("endpoint=" + Uri.EscapeDataString(s.Endpoint));
        }

        q.Add("region=" + Uri.EscapeDataString(s.Region));
        if (s.PathStyle)
        {
            q.Add("path-style=true");
        }

        return sb.Append('?').Append(string.Join('&', q)).ToString();
    }

    private static S3Settings ParseS3(Uri uri, string raw, StorageOptions o)
    {
        if (!string.IsNullOrEmpty(uri.UserInfo))
        {
            throw new LmfsException("the storage URL contains credentials", "remove them from the URL; pass keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --secret-key-file", 2);
        }

        string bucket = uri.Host;
        if (bucket.Length is < 3 or > 63)
        {
            throw new LmfsException($"'{Redact.Url(raw)}' has no valid bucket name", "write s3://BUCKET/PREFIX", 2);
        }

        var query = ParseQuery(uri.Query);
        string? endpoint = o.Endpoint ?? query.GetValueOrDefault("endpoint");
        if (endpoint is not null && (!Uri.TryCreate(endpoint, UriKind.Absolute, out var ep) || (ep.Scheme != "http" && ep.Scheme != "https")))
        {
            throw new LmfsException($"endpoint '{Redact.Url(endpoint)}' is not an http(s) URL", "write e.g. --endpoint http://127.0.0.1:9000", 2);
        }

        bool pathStyle = o.PathStyle ?? (query.TryGetValue("path-style", out var ps) ? ps is "true" or "1" : endpoint is not null);
        string region = o.Region ?? query.GetValueOrDefault("region") ?? Environment.GetEnvironmentVariable("AWS_REGION") ?? "us-east-1";
        foreach (var k in query.Keys.Where(k => k is not ("endpoint" or "region" or "path-style")))
        {
            throw new LmfsException($"storage URL parameter '{k}' is not known", "known parameters: endpoint, region, path-style", 2);
        }

        return new S3Settings(bucket, Uri.UnescapeDataString(uri.AbsolutePath).Trim('/'), endpoint?.TrimEnd('/'), region, pathStyle)
        {
            AccessKey = o.AccessKey,
            SecretKey = o.SecretKey,
            Timeout = o.Timeout ?? TimeSpan.FromSeconds(30),
        };
    }

    private static Dictionary<string, string> ParseQuery(string query)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string part in query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = part.IndexOf('=');
            string k = eq < 0 ? part : part[..eq];
            d[Uri.UnescapeDataString(k)] = eq < 0 ? "" : Uri.UnescapeDataString(part[(eq + 1)..]);
        }

        return d;
    }

    /// <summary>The endpoint of an S3 storage URL (null for AWS itself and for file:// stores).</summary>
    public static string? EndpointOf(string url) =>
        Uri.TryCreate(url, UriKind.Absolute, out var uri) && uri.Scheme == "s3" ? ParseQuery(uri.Query).GetValueOrDefault("endpoint") : null;
}
