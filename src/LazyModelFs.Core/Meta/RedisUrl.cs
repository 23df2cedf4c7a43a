using System.Globalization;
using LazyModelFs.Util;

namespace LazyModelFs.Meta;

/// <summary>
/// A Redis metadata URL, parsed by hand because System.Uri refuses the fleet forms (a comma list of
/// seeds is not an RFC 3986 authority; issue 18, item 10):
/// <code>
///   redis://[[USER]:[PASSWORD]@]HOST[:PORT][,HOST2[:PORT2]…][/DB][?volume=NAME]              one server, or seeds of a
///                                                                                          primary and its replicas, or of a Cluster
///   redis+sentinel://[[USER]:[PASSWORD]@]HOST[:PORT][,HOST2[:PORT2]…][/DB]?service=MASTER[&amp;volume=NAME]
///                                                                                          Sentinels that name the primary
///   rediss://, rediss+sentinel://                                                          the same over TLS
/// </code>
/// Why a scheme of its own for Sentinel, with the master's name in `service=`: the hosts of such a URL
/// are sentinels (default port 26379), not data servers, and a reader of the URL should see that before
/// the query; `service` is the client's own word (StackExchange.Redis `serviceName`) for what
/// `SENTINEL MONITOR` calls the master name. The form follows redis-py and Lettuce (`redis+sentinel://`,
/// `redis-sentinel://`) rather than JuiceFS's (`redis://MASTER,host1,host2:26379/1`), where the first
/// name of the host list is no host at all.
///
/// The user-info ends at the last '@' after "://", the rule <see cref="Redact"/> hides by, so a message
/// never shows more of a password than it would. A password without a ':' (`redis://PASSWORD@host`) is
/// the password, as before Redis 6 ACLs; `redis://USER:@host` names an ACL user whose password comes
/// from the environment (LMFS_REDIS_PASSWORD), which keeps it off the command line.
/// </summary>
public sealed record RedisUrl(string Scheme, string? User, string? Password, IReadOnlyList<(string Host, int Port)> Hosts, int Database, string Volume, string? Service)
{
    public const string Help = "write redis://HOST:PORT[,HOST2:PORT2][/DB][?volume=NAME], or redis+sentinel://SENTINEL:26379[,SENTINEL2:26379][/DB]?service=MASTER[&volume=NAME] (rediss:// for TLS)";

    public bool Sentinel => Service is not null;

    public bool Tls => Scheme.StartsWith("rediss", StringComparison.Ordinal);

    /// <summary>The hosts as the user wrote them, for messages: `10.0.0.5:6379, 10.0.0.6:6379`.</summary>
    public string HostList => string.Join(", ", Hosts.Select(h => Endpoint(h.Host, h.Port)));

    /// <summary>Whether the URL names one of the Redis schemes (and so goes to this parser, not System.Uri).</summary>
    public static bool IsRedis(string url) =>
        url.StartsWith("redis://", StringComparison.OrdinalIgnoreCase) || url.StartsWith("rediss://", StringComparison.OrdinalIgnoreCase)
        || url.StartsWith("redis+sentinel://", StringComparison.OrdinalIgnoreCase) || url.StartsWith("rediss+sentinel://", StringComparison.OrdinalIgnoreCase);

    public static string Endpoint(string host, int port) => (host.Contains(':', StringComparison.Ordinal) ? $"[{host}]" : host) + ":" + port.ToString(CultureInfo.InvariantCulture);

    /// <summary>Parses <paramref name="url"/>; every error names what is wrong (the URL shown redacted) and exits 2.</summary>
    public static RedisUrl Parse(string url)
    {
        string shown = Redact.Url(url);
        LmfsException Bad(string what) => new($"Redis URL '{shown}': {what}", Help, 2);

        int sep = url.IndexOf("://", StringComparison.Ordinal);
        string scheme = sep > 0 ? url[..sep].ToLowerInvariant() : "";
        if (scheme is not ("redis" or "rediss" or "redis+sentinel" or "rediss+sentinel"))
        {
            throw Bad($"'{scheme}' is not a Redis scheme");
        }

        bool sentinel = scheme.EndsWith("+sentinel", StringComparison.Ordinal);
        string rest = url[(sep + 3)..];

        string? user = null, password = null;
        int at = rest.LastIndexOf('@');
        if (at >= 0)
        {
            string ui = rest[..at];
            rest = rest[(at + 1)..];
            int colon = ui.IndexOf(':', StringComparison.Ordinal);
            user = colon > 0 ? Unescape(ui[..colon]) : null;
            password = colon >= 0 ? Unescape(ui[(colon + 1)..]) : Unescape(ui);
            password = password.Length == 0 ? null : password;
        }

        int q = rest.IndexOf('?', StringComparison.Ordinal);
        string query = q >= 0 ? rest[(q + 1)..] : "";
        rest = q >= 0 ? rest[..q] : rest;
        if (rest.Contains('#', StringComparison.Ordinal))
        {
            throw Bad("a '#' fragment means nothing here");
        }

        int slash = rest.IndexOf('/', StringComparison.Ordinal);
        string authority = slash >= 0 ? rest[..slash] : rest;
        string path = slash >= 0 ? rest[(slash + 1)..].TrimEnd('/') : "";

        int defaultPort = sentinel ? 26379 : 6379;
        var hosts = new List<(string, int)>();
        foreach (string h in authority.Split(','))
        {
            hosts.Add(ParseHost(h.Trim(), defaultPort, Bad));
        }

        int db = 0;
        if (path.Length > 0 && (!int.TryParse(path, NumberStyles.None, CultureInfo.InvariantCulture, out db) || db > 1_000_000))
        {
            throw Bad($"'{path}' is not a database number (a number from 0, e.g. redis://127.0.0.1:6379/1)");
        }

        string? volume = null, service = null;
        foreach (string part in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = part.IndexOf('=', StringComparison.Ordinal);
            string key = eq >= 0 ? part[..eq] : part;
            string value = eq >= 0 ? Unescape(part[(eq + 1)..]) : "";
            switch (key)
            {
                case "volume" when volume is null:
                    volume = value;
                    break;
                case "service" when sentinel && service is null:
                    service = value;
                    break;
                case "service" when !sentinel:
                    throw Bad("'service=' names a Sentinel master; a URL of sentinels starts with redis+sentinel://");
                case "volume" or "service":
                    throw Bad($"'{key}=' is given twice");
                default:
                    throw Bad($"'{key}' is not a parameter of a Redis URL ({(sentinel ? "they are volume=NAME and service=MASTER" : "the only one is volume=NAME")})");
            }
        }

        if (sentinel && string.IsNullOrEmpty(service))
        {
            throw Bad("a redis+sentinel:// URL needs ?service=MASTER, the master name the sentinels monitor (SENTINEL MONITOR MASTER …)");
        }

        volume ??= "default";
        if (volume.Length is 0 or > 64 || !volume.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
        {
            throw new LmfsException($"volume name '{volume}' is not allowed", "use 1-64 letters, digits, '-', '_' or '.'", 2);
        }

        return new RedisUrl(scheme, user, password, hosts, db, volume, service);
    }

    private static (string, int) ParseHost(string h, int defaultPort, Func<string, LmfsException> bad)
    {
        if (h.Length == 0)
        {
            throw bad("names no host (an empty entry in the host list)");
        }

        string host;
        string? port = null;
        if (h.StartsWith('['))
        {
            int close = h.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
            {
                throw bad($"'{h}' opens an IPv6 address with '[' and does not close it");
            }

            host = h[1..close];
            string after = h[(close + 1)..];
            if (after.Length > 0 && !after.StartsWith(':'))
            {
                throw bad($"'{h}' is not HOST:PORT");
            }

            port = after.Length > 0 ? after[1..] : null;
        }
        else
        {
            int colon = h.LastIndexOf(':');
            if (colon >= 0 && h.IndexOf(':', StringComparison.Ordinal) != colon)
            {
                throw bad($"'{h}' is not HOST:PORT (write an IPv6 address in brackets: [::1]:6379)");
            }

            host = colon >= 0 ? h[..colon] : h;
            port = colon >= 0 ? h[(colon + 1)..] : null;
        }

        if (host.Length == 0 || host.Any(c => char.IsWhiteSpace(c) || c is '/' or '\\' or '@'))
        {
            throw bad($"'{h}' names no valid host");
        }

        int p = defaultPort;
        if (port is not null && (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out p) || p is < 1 or > 65535))
        {
            throw bad($"'{port}' in '{h}' is not a port (1 to 65535)");
        }

        return (host, p);
    }

    private static string Unescape(string s)
    {
        try
        {
            return Uri.UnescapeDataString(s);
        }
        catch (UriFormatException)
        {
            return s;
        }
    }
}
