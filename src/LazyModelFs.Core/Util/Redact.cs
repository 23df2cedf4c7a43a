namespace LazyModelFs.Util;

/// <summary>Removes secrets from URLs before they reach a log, an error message or stored settings.</summary>
public static class Redact
{
    /// <summary>Replaces the user-info part (<c>user:password@</c>) of a URL with <c>***@</c>.</summary>
    public static string Url(string url)
    {
        int scheme = url.IndexOf("://", StringComparison.Ordinal);
        if (scheme < 0)
        {
            return url;
        }

        int start = scheme + 3;
        int slash = url.IndexOf('/', start);
        int end = slash < 0 ? url.Length : slash;
        int at = url.LastIndexOf('@', end - 1, end - start);
        return at < 0 ? url : string.Concat(url.AsSpan(0, start), "***", url.AsSpan(at));
    }
}
