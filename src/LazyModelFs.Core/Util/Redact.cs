namespace LazyModelFs.Util;

/// <summary>
/// Removes secrets from URLs before they reach a log, an error message, stored settings or a
/// command line.
///
/// Where the user-info of a URL ends is not always decidable: users write passwords with a raw
/// '/', '?', '#' or '@' in them (`redis://:pa/ss@host`, which RFC 3986 forbids and System.Uri then
/// refuses — the error message must still not show it). A parse that stops at the first '/' (the
/// RFC's end of the authority) would print such a password in full; any rule that stops before the
/// last '@' leaks the rest of a password holding both '@' and '/'. So the user-info is taken to end
/// at the last '@' after "scheme://", whatever the scheme, unless the authority is empty
/// (`sqlite:///…`, `file:///…`, which cannot carry credentials). An '@' in a path or query is then
/// hidden along with what precedes it: shown too little, never too much. Percent-encoding needs
/// no decoding here: everything of the user-info goes, encoded or not.
/// </summary>
public static class Redact
{
    /// <summary>Replaces the user-info part (<c>user:password@</c>) of a URL with <c>***@</c>.</summary>
    public static string Url(string url)
    {
        var (start, at) = UserInfo(url);
        return at < 0 ? url : string.Concat(url.AsSpan(0, start), "***", url.AsSpan(at));
    }

    /// <summary>
    /// The URL without its password (for files on disk and command lines; the password then comes from
    /// the environment). A Redis ACL user name stays, as <c>USER:@</c> (<see cref="Meta.RedisUrl"/>): it is
    /// no secret, and without it the password would be tried for the default user (issue 18, item 10).
    /// </summary>
    public static string StripCredentials(string url)
    {
        var (start, at) = UserInfo(url);
        if (at < 0)
        {
            return url;
        }

        string? user = UserName(url[start..at]);
        return string.Concat(url.AsSpan(0, start), user is null ? "" : user + ":@", url.AsSpan(at + 1));
    }

    /// <summary>Whether the URL carries a password (or a user-info without ':', which lmfs takes as one); a bare ACL user name (<c>USER:@</c>) is none.</summary>
    public static bool HasCredentials(string url)
    {
        var (start, at) = UserInfo(url);
        return at >= 0 && !(UserName(url[start..at]) is { } u && u.Length + 1 == at - start);
    }

    /// <summary>The user name of a user-info part: before its first ':', when there is one and something before it.</summary>
    private static string? UserName(string userInfo)
    {
        int colon = userInfo.IndexOf(':', StringComparison.Ordinal);
        return colon > 0 ? userInfo[..colon] : null;
    }

    /// <summary>
    /// The URL without its password (<see cref="StripCredentials"/>), and the password it held (percent-decoded; after the first ':'
    /// of the user-info, or all of it when there is no ':', as the Redis engine reads it); null when none.
    /// </summary>
    public static (string Url, string? Password) SplitPassword(string url)
    {
        var (start, at) = UserInfo(url);
        if (at < 0)
        {
            return (url, null);
        }

        string ui = url[start..at];
        int colon = ui.IndexOf(':', StringComparison.Ordinal);
        string pw = colon >= 0 ? ui[(colon + 1)..] : ui;
        try
        {
            pw = Uri.UnescapeDataString(pw);
        }
        catch (UriFormatException)
        {
            // left as written
        }

        return (StripCredentials(url), pw.Length == 0 ? null : pw); // USER:@: the password comes from the environment
    }

    /// <summary>
    /// Free text (an exception message from a library, a child's error output) with every URL in it
    /// redacted. A URL is taken to run from its scheme to the next white space or quote.
    /// </summary>
    public static string Text(string text)
    {
        if (!text.Contains("://", StringComparison.Ordinal))
        {
            return text;
        }

        var sb = new System.Text.StringBuilder(text.Length);
        int i = 0;
        while (i < text.Length)
        {
            int sep = text.IndexOf("://", i, StringComparison.Ordinal);
            if (sep < 0)
            {
                sb.Append(text, i, text.Length - i);
                break;
            }

            int begin = sep;
            while (begin > i && (char.IsAsciiLetterOrDigit(text[begin - 1]) || text[begin - 1] is '+' or '.' or '-'))
            {
                begin--;
            }

            int end = sep + 3;
            while (end < text.Length && !char.IsWhiteSpace(text[end]) && text[end] is not ('\'' or '"' or '`' or '<' or '>'))
            {
                end++;
            }

            // A password may hold a quote or '<' itself: when an '@' follows before the next white
            // space, the user-info runs past that character, so the whole token is redacted.
            int token = end;
            while (token < text.Length && !char.IsWhiteSpace(text[token]))
            {
                token++;
            }

            if (token > end && text.AsSpan(end, token - end).Contains('@'))
            {
                end = token;
            }

            sb.Append(text, i, begin - i);
            sb.Append(Url(text[begin..end]));
            i = end;
        }

        return sb.ToString();
    }

    /// <summary>Where the user-info starts (after "://") and the index of the '@' that ends it; At = -1 when there is none.</summary>
    private static (int Start, int At) UserInfo(string url)
    {
        int scheme = url.IndexOf("://", StringComparison.Ordinal);
        if (scheme <= 0)
        {
            return (0, -1);
        }

        int start = scheme + 3;
        if (start >= url.Length || url[start] == '/')
        {
            return (start, -1); // empty authority: scheme:///path
        }

        int at = url.LastIndexOf('@');
        return (start, at >= start ? at : -1);
    }
}
