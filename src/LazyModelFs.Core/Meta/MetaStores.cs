using LazyModelFs.Util;

namespace LazyModelFs.Meta;

/// <summary>Opens a metadata engine from its URL.</summary>
public static class MetaStores
{
    public const string UrlHelp = "use sqlite:///ABSOLUTE/PATH/meta.db (embedded), redis://HOST:PORT[,HOST2:PORT2][/DB][?volume=NAME] or redis+sentinel://SENTINEL:26379[,…][/DB]?service=MASTER[&volume=NAME]";

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

        // Before System.Uri, which refuses a comma list of hosts (the fleet forms).
        if (RedisUrl.IsRedis(url))
        {
            return await RedisMetaStore.ConnectAsync(url, redisPassword, ct).ConfigureAwait(false);
        }

        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || url.StartsWith('/'))
        {
            throw NotAVolume(url, null) ?? new LmfsException($"'{Redact.Url(url)}' is not a metadata URL", UrlHelp, 2);
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
            default:
                throw NotAVolume(url, uri) ?? new LmfsException($"metadata URL scheme '{uri.Scheme}' is not supported", UrlHelp, 2);
        }
    }

    /// <summary>
    /// The error for a metadata URL that holds no formatted volume. On Redis, where one database holds
    /// many volumes told apart by ?volume=, it names the volumes that are there and the URL of one of
    /// them (a URL without ?volume= means 'default', which a fleet rarely formats; issue 18, item 10).
    /// </summary>
    public static async Task<LmfsException> NotFormattedAsync(IMetaStore meta, string metaUrl, CancellationToken ct = default)
    {
        string url = Redact.Url(metaUrl);
        string format = $"lmfs format {url} --storage STORAGE_URL";
        if (meta is not RedisMetaStore redis)
        {
            return new LmfsException($"no volume is formatted at {meta.Describe}", $"run: {format}", 2);
        }

        var volumes = await redis.ListVolumesAsync(ct: ct).ConfigureAwait(false);
        if (volumes is null)
        {
            return new LmfsException($"no volume is formatted at {meta.Describe} under the name '{redis.Volume}'", $"check ?volume=NAME in the URL, or run: {format}", 2);
        }

        if (volumes.Count == 0)
        {
            return new LmfsException($"no volume is formatted at {meta.Describe}, under any name", $"run: {format}", 2);
        }

        string named = Redact.Url(metaUrl).Contains("volume=", StringComparison.Ordinal) ? "" : " (a URL without ?volume= means 'default')";
        string list = string.Join(", ", volumes.Select(v => $"'{v}'"));
        return new LmfsException(
            $"no volume is formatted at {meta.Describe} under the name '{redis.Volume}'{named}; that database holds {(volumes.Count == 1 ? "volume" : "volumes")} {list}",
            $"name one with ?volume=NAME, e.g. {WithVolume(url, volumes[0])}; or make '{redis.Volume}': {format}",
            2);
    }

    /// <summary>The URL with its volume= parameter set to <paramref name="volume"/>.</summary>
    private static string WithVolume(string url, string volume)
    {
        int q = url.IndexOf('?', url.LastIndexOf('@') + 1);
        string head = q >= 0 ? url[..q] : url;
        var parts = (q >= 0 ? url[(q + 1)..] : "").Split('&', StringSplitOptions.RemoveEmptyEntries).Where(p => !p.StartsWith("volume=", StringComparison.Ordinal)).Append("volume=" + volume);
        return head + "?" + string.Join('&', parts);
    }

    /// <summary>
    /// Where an object store or a directory was given in place of a metadata URL (`lmfs mount
    /// s3://bucket/models /models`, what an s3fs or rclone user types first; issue 18, item 13): lmfs
    /// serves a volume, which `lmfs format` makes and `lmfs import` fills; the hint shows both commands.
    /// An existing file is likely the SQLite database itself, named without its scheme.
    /// </summary>
    private static LmfsException? NotAVolume(string url, Uri? uri)
    {
        const string Meta = "sqlite:///var/lib/lmfs/meta.db";
        string shown = Redact.Url(url);
        if (uri?.Scheme is "s3" or "gs" or "s3a" or "http" or "https")
        {
            string bucket = uri.Scheme == "s3" && uri.Host.Length > 0 ? uri.Host : "BUCKET";
            return new LmfsException(
                $"'{shown}' is an object-store URL, not a metadata URL: lmfs mounts a volume, which is formatted and imported first (files already in a bucket are not served in place)",
                $"make one whose chunks go to the bucket, then mount its metadata URL: lmfs format {Meta} --storage s3://{bucket}/lmfs [--endpoint URL]; lmfs import {Meta} ./my-model /models/; lmfs mount {Meta} MOUNTPOINT",
                2);
        }

        string? path = uri?.Scheme == "file" && !url.StartsWith('/') ? Uri.UnescapeDataString(uri.AbsolutePath) : uri is null || url.StartsWith('/') ? url : null;
        if (path is null)
        {
            return null;
        }

        string full = Path.GetFullPath(path);
        if (File.Exists(full))
        {
            return new LmfsException($"'{shown}' is a file, not a metadata URL", $"if it is a volume's SQLite database, write sqlite://{full}", 2);
        }

        bool exists = Directory.Exists(full);
        if (uri?.Scheme != "file" && !exists)
        {
            return null;
        }

        return new LmfsException(
            $"'{shown}' is {(exists ? "a directory" : "a storage URL")}, not a metadata URL: lmfs mounts a volume, which is formatted and imported first",
            $"make one from the directory's files, then mount its metadata URL: lmfs format {Meta} --storage file:///var/lib/lmfs/objects; lmfs import {Meta} {full}/ /models/; lmfs mount {Meta} MOUNTPOINT",
            2);
    }
}
