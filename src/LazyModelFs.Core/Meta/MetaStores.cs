using LazyModelFs.Util;

namespace LazyModelFs.Meta;

/// <summary>Opens a metadata engine from its URL.</summary>
public static class MetaStores
{
    public const string UrlHelp = "use sqlite:///ABSOLUTE/PATH/meta.db (embedded) or redis://[:PASSWORD@]HOST:PORT[/DB][?volume=NAME]";

    /// <summary>The database path of an sqlite:/// URL, or null for other engines or malformed URLs.</summary>
    public static string? SqlitePath(string url) =>
        Uri.TryCreate(url, UriKind.Absolute, out var u) && u.Scheme == "sqlite" && string.IsNullOrEmpty(u.Host) ? Uri.UnescapeDataString(u.AbsolutePath) : null;

    /// <param name="create">For SQLite: create the database file if missing (only `lmfs format` does).</param>
    public static Task<IMetaStore> OpenAsync(string url, bool create = false, CancellationToken ct = default) => OpenAsync(url, create, null, ct);

    /// <param name="create">For SQLite: create the database file if missing (only `lmfs format` does).</param>
    /// <param name="redisPassword">For Redis without a password in the URL (else LMFS_REDIS_PASSWORD).</param>
    public static async Task<IMetaStore> OpenAsync(string url, bool create, string? redisPassword, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(url))
        {
            throw new LmfsException("no metadata URL given", UrlHelp, 2);
        }

        if (url == "memory://")
        {
#pragma warning disable CA2000 // the store owns its key-value engine and disposes it
            return new KvMetaStore(new MemoryKv());
#pragma warning restore CA2000
        }

        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri))
        {
            throw new LmfsException($"'{Redact.Url(url)}' is not a metadata URL", UrlHelp, 2);
        }

        switch (uri.Scheme)
        {
            case "sqlite":
                // sqlite:///abs/path → host "" and path "/abs/path"; sqlite://rel/path is refused as ambiguous.
                if (!string.IsNullOrEmpty(uri.Host))
                {
                    throw new LmfsException($"'{Redact.Url(url)}' names host '{uri.Host}'; an SQLite URL takes a path", "write three slashes: sqlite:///var/lib/lmfs/meta.db", 2);
                }

                string path = Uri.UnescapeDataString(uri.AbsolutePath);
                if (path.Length <= 1 || path.EndsWith('/'))
                {
                    throw new LmfsException($"'{Redact.Url(url)}' has no database file name", "write sqlite:///var/lib/lmfs/meta.db", 2);
                }

#pragma warning disable CA2000 // the store owns its key-value engine and disposes it
                return new KvMetaStore(SqliteKv.Open(path, create));
#pragma warning restore CA2000
            case "redis":
            case "rediss":
                return await RedisMetaStore.ConnectAsync(uri, url, redisPassword, ct).ConfigureAwait(false);
            default:
                throw new LmfsException($"metadata URL scheme '{uri.Scheme}' is not supported", UrlHelp, 2);
        }
    }
}
