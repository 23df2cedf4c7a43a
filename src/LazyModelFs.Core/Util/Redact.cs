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

    /// <summary>The URL without its user-info part at all (for files on disk; the password then comes from the environment).</summary>
    public static string StripCredentials(string url)
    {
        string r = Url(url);
        int i = r.IndexOf("***@", StringComparison.Ordinal);
        return i < 0 ? r : r.Remove(i, 4);
    }
}
