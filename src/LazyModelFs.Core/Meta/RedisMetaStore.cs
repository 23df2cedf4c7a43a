using System.Globalization;
using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Util;
using StackExchange.Redis;

namespace LazyModelFs.Meta;

/// <summary>
/// The fleet engine: Redis 6+ through StackExchange.Redis 3.x (Directory.Packages.props).
///
/// Every key carries the volume as a hash tag, <c>lmfs{VOL}:…</c>, so all of a volume's keys hash to
/// one Redis Cluster slot and multi-key scripts are legal there (docs/data-format.md):
/// <code>
///   lmfs{VOL}:setting        string  volume settings (JSON)
///   lmfs{VOL}:nextinode      string  INCR counter, last allocated inode
///   lmfs{VOL}:usage          hash    bytes, inodes
///   lmfs{VOL}:i&lt;ino&gt;         string  node record
///   lmfs{VOL}:d&lt;ino&gt;         hash    name → entry (ino u64 LE, type u8)
///   lmfs{VOL}:c&lt;ino&gt;         string  chunk table
///   lmfs{VOL}:refs           hash    chunk id (32 raw bytes) → reference count
/// </code>
/// Changes run as Lua scripts (atomic on the server) that first re-check what the client read —
/// the entry, the node record — and answer 'conflict' when anything moved, so callers retry.
/// </summary>
public sealed class RedisMetaStore : IMetaStore
{
    // Shared by the create and remove scripts: unlink the entry the caller saw, if it is unchanged.
    private const string UnlinkLua = """
        local function unlink(dkey, name, expEntry, nodeKey, expNode, chunkKey, childDir, refs, first, last, usage, negSize)
          if redis.call('HGET', dkey, name) ~= expEntry then return 'conflict' end
          if redis.call('GET', nodeKey) ~= expNode then return 'conflict' end
          if string.byte(expNode, 2) == 1 and redis.call('EXISTS', childDir) == 1 then return 'notempty' end
          for i = first, last do
            if redis.call('HINCRBY', refs, ARGV[i], -1) <= 0 then redis.call('HDEL', refs, ARGV[i]) end
          end
          redis.call('HDEL', dkey, name)
          redis.call('DEL', nodeKey, chunkKey)
          redis.call('HINCRBY', usage, 'bytes', negSize)
          redis.call('HINCRBY', usage, 'inodes', -1)
          return 'ok'
        end
        """;

    // KEYS: d<parent> i<parent> i<new> c<new> refs usage i<old> c<old> d<old>
    // ARGV: name entry node chunks size nNew replace expEntry expNode negOldSize nOld ids(new) ids(old)
    private const string CreateLua = UnlinkLua + """

        local p = redis.call('GET', KEYS[2])
        if not p or string.byte(p, 2) ~= 1 then return 'noparent' end
        local nNew = tonumber(ARGV[6])
        local nOld = tonumber(ARGV[11])
        if ARGV[7] == '1' then
          local r = unlink(KEYS[1], ARGV[1], ARGV[8], KEYS[7], ARGV[9], KEYS[8], KEYS[9], KEYS[5], 12 + nNew, 11 + nNew + nOld, KEYS[6], ARGV[10])
          if r ~= 'ok' then return r end
        elseif redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
          return 'exists'
        end
        redis.call('SET', KEYS[3], ARGV[3])
        if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4]) end
        for i = 12, 11 + nNew do redis.call('HINCRBY', KEYS[5], ARGV[i], 1) end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('HINCRBY', KEYS[6], 'bytes', ARGV[5])
        redis.call('HINCRBY', KEYS[6], 'inodes', 1)
        return 'ok'
        """;

    // KEYS: d<parent> i<old> c<old> d<old> refs usage
    // ARGV: name expEntry expNode negOldSize ids(old)
    private const string RemoveLua = UnlinkLua + """

        return unlink(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[3], KEYS[3], KEYS[4], KEYS[5], 5, #ARGV, KEYS[6], ARGV[4])
        """;

    // KEYS: setting i<root> nextinode usage; ARGV: settings root-record root-ino
    private const string FormatLua = """
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SET', KEYS[2], ARGV[2])
        redis.call('SET', KEYS[3], ARGV[3])
        redis.call('HSET', KEYS[4], 'bytes', 0, 'inodes', 1)
        return 1
        """;

    private readonly ConnectionMultiplexer _conn;
    private readonly IDatabase _db;
    private readonly string _prefix;
    private readonly RedisKey _settingKey;
    private readonly RedisKey _nextInodeKey;
    private readonly RedisKey _usageKey;
    private readonly RedisKey _refsKey;

    private RedisMetaStore(ConnectionMultiplexer conn, int db, string volume, string describe)
    {
        _conn = conn;
        _db = conn.GetDatabase(db);
        Volume = volume;
        Describe = describe;
        _prefix = $"lmfs{{{volume}}}:";
        _settingKey = _prefix + "setting";
        _nextInodeKey = _prefix + "nextinode";
        _usageKey = _prefix + "usage";
        _refsKey = _prefix + "refs";
    }

    public string Volume { get; }

    public string Describe { get; }

    /// <summary>
    /// Connects to <c>redis://[:password@]host:port[,host2:port2][/db][?volume=NAME]</c> (or rediss:// for TLS).
    /// Without a password in the URL, <paramref name="password"/>, else LMFS_REDIS_PASSWORD or REDIS_PASSWORD, is used when set.
    /// </summary>
    public static async Task<RedisMetaStore> ConnectAsync(Uri url, string rawUrl, string? password = null, CancellationToken ct = default)
    {
        if (!string.IsNullOrEmpty(url.UserInfo))
        {
            string ui = Uri.UnescapeDataString(url.UserInfo);
            int colon = ui.IndexOf(':');
            password = colon >= 0 ? ui[(colon + 1)..] : ui; // the URL's password wins
        }

        password ??= Environment.GetEnvironmentVariable("LMFS_REDIS_PASSWORD") ?? Environment.GetEnvironmentVariable("REDIS_PASSWORD");

        int db = 0;
        string path = url.AbsolutePath.Trim('/');
        if (path.Length > 0 && !int.TryParse(path, NumberStyles.None, CultureInfo.InvariantCulture, out db))
        {
            throw new LmfsException($"Redis URL '{Redact.Url(rawUrl)}': '{path}' is not a database number", "write redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/1", 2);
        }

        string volume = QueryValue(url, "volume") ?? "default";
        if (volume.Length is 0 or > 64 || !volume.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
        {
            throw new LmfsException($"volume name '{volume}' is not allowed", "use 1-64 letters, digits, '-', '_' or '.'", 2);
        }

        var opts = new ConfigurationOptions
        {
            Password = string.IsNullOrEmpty(password) ? null : password,
            DefaultDatabase = db,
            Ssl = url.Scheme == "rediss",
            AbortOnConnectFail = true,
            ConnectTimeout = 5000,
            SyncTimeout = 10000,
            ConnectRetry = 2,
            ClientName = "lmfs",
        };

        // Hosts: the URL's authority may list several, comma-separated (cluster seeds).
        string authority = rawUrl[(rawUrl.IndexOf("://", StringComparison.Ordinal) + 3)..];
        int at = authority.LastIndexOf('@', authority.IndexOfAny(['/', '?']) is var e and >= 0 ? e : authority.Length - 1);
        authority = authority[(at + 1)..];
        int end = authority.IndexOfAny(['/', '?']);
        foreach (string host in (end < 0 ? authority : authority[..end]).Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            string hostPort = host.Contains(':', StringComparison.Ordinal) ? host : host + ":6379";
            int colon = hostPort.LastIndexOf(':');
            if (colon == 0 || !ushort.TryParse(hostPort[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out ushort port) || port == 0)
            {
                throw new LmfsException($"Redis URL '{Redact.Url(rawUrl)}' has no valid host:port in '{host}'", "write redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/1", 2);
            }

            opts.EndPoints.Add(hostPort);
        }

        if (opts.EndPoints.Count == 0)
        {
            throw new LmfsException($"Redis URL '{Redact.Url(rawUrl)}' names no host", "write redis://HOST:PORT/DB", 2);
        }

        string describe = Redact.Url(rawUrl);
        ConnectionMultiplexer conn;
        try
        {
            using var log = new StringWriter();
            conn = await ConnectionMultiplexer.ConnectAsync(opts, log).WaitAsync(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisConnectionException or TimeoutException or RedisException)
        {
            bool auth = ex.Message.Contains("auth", StringComparison.OrdinalIgnoreCase) || ex.Message.Contains("NOAUTH", StringComparison.Ordinal);
            throw new LmfsException(
                $"cannot connect to Redis at {describe}: {FirstLine(ex.Message)}",
                auth
                    ? "check the password (in the URL as redis://:PASSWORD@host, or in LMFS_REDIS_PASSWORD)"
                    : "check that redis-server is running and reachable at that address and port",
                4,
                ex);
        }

        var store = new RedisMetaStore(conn, db, volume, describe);
        try
        {
            // Surface a wrong password or an unusable server now, not at the first real command.
            await store._db.PingAsync().ConfigureAwait(false);
        }
        catch (RedisException ex)
        {
            store.Dispose();
            throw new LmfsException($"Redis at {describe} refused the connection: {FirstLine(ex.Message)}", "check the password (LMFS_REDIS_PASSWORD) and the server's ACL", 4, ex);
        }

        return store;
    }

    public async Task<VolumeSettings?> LoadSettingsAsync(CancellationToken ct = default)
    {
        var v = await Run(() => _db.StringGetAsync(_settingKey)).ConfigureAwait(false);
        return v.IsNull ? null : SettingsCodec.Decode((byte[])v!);
    }

    public async Task<bool> FormatAsync(VolumeSettings settings, Node root, CancellationToken ct = default)
    {
        var r = await Run(() => _db.ScriptEvaluateAsync(
            FormatLua,
            [_settingKey, NodeKey(root.Ino), _nextInodeKey, _usageKey],
            [SettingsCodec.Encode(settings), root.Encode(), (long)root.Ino])).ConfigureAwait(false);
        return (long)r == 1;
    }

    public async Task<Node?> GetNodeAsync(ulong ino, CancellationToken ct = default)
    {
        var v = await Run(() => _db.StringGetAsync(NodeKey(ino))).ConfigureAwait(false);
        return v.IsNull ? null : Node.Decode(ino, (byte[])v!);
    }

    public async Task<DirEntry?> LookupAsync(ulong parent, string name, CancellationToken ct = default)
    {
        var v = await Run(() => _db.HashGetAsync(DirKey(parent), Encoding.UTF8.GetBytes(name))).ConfigureAwait(false);
        return v.IsNull ? null : DirEntry.DecodeValue(name, (byte[])v!);
    }

    public async Task<IReadOnlyList<DirEntry>> ListAsync(ulong parent, CancellationToken ct = default)
    {
        var all = await Run(() => _db.HashGetAllAsync(DirKey(parent))).ConfigureAwait(false);
        var rows = new List<(byte[] Name, byte[] Value)>(all.Length);
        foreach (var h in all)
        {
            rows.Add(((byte[])h.Name!, (byte[])h.Value!));
        }

        // Hashes are unordered; sort by name bytes, the order every engine lists in.
        rows.Sort((a, b) => a.Name.AsSpan().SequenceCompareTo(b.Name));
        var list = new List<DirEntry>(rows.Count);
        foreach (var (n, v) in rows)
        {
            list.Add(DirEntry.DecodeValue(Encoding.UTF8.GetString(n), v));
        }

        return list;
    }

    public async Task<ChunkTable?> GetChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default)
    {
        var v = await Run(() => _db.StringGetAsync(ChunksKey(ino))).ConfigureAwait(false);
        return v.IsNull ? null : ChunkTable.Decode((byte[])v!, chunkSize);
    }

    public async Task<ulong> AllocateInodeAsync(CancellationToken ct = default) =>
        (ulong)await Run(() => _db.StringIncrementAsync(_nextInodeKey)).ConfigureAwait(false);

    public async Task<MetaResult> CreateAsync(EntryCreate c, CancellationToken ct = default)
    {
        var rep = c.Replace;
        ulong oldIno = rep?.Entry.Ino ?? 0;
        var newIds = c.Chunks?.Entries ?? [];
        var oldIds = rep?.Chunks?.Entries ?? [];
        var args = new List<RedisValue>(11 + newIds.Count + oldIds.Count)
        {
            Encoding.UTF8.GetBytes(c.Name),
            new DirEntry(c.Name, c.Node.Ino, c.Node.Type).EncodeValue(),
            c.Node.Encode(),
            c.Chunks?.Encode() ?? [],
            SizeOf(c.Node),
            newIds.Count,
            rep is null ? "0" : "1",
            rep?.Entry.EncodeValue() ?? [],
            rep?.Node.Encode() ?? [],
            rep is null ? 0 : -SizeOf(rep.Node),
            oldIds.Count,
        };
        AddIds(args, newIds);
        AddIds(args, oldIds);
        RedisKey[] keys =
        [
            DirKey(c.Parent), NodeKey(c.Parent), NodeKey(c.Node.Ino), ChunksKey(c.Node.Ino), _refsKey, _usageKey,
            NodeKey(oldIno), ChunksKey(oldIno), DirKey(oldIno),
        ];
        var r = await Run(() => _db.ScriptEvaluateAsync(CreateLua, keys, args.ToArray())).ConfigureAwait(false);
        return ParseResult(r);
    }

    public async Task<MetaResult> RemoveAsync(ulong parent, Replaced expected, CancellationToken ct = default)
    {
        ulong ino = expected.Entry.Ino;
        var oldIds = expected.Chunks?.Entries ?? [];
        var args = new List<RedisValue>(4 + oldIds.Count)
        {
            Encoding.UTF8.GetBytes(expected.Entry.Name),
            expected.Entry.EncodeValue(),
            expected.Node.Encode(),
            -SizeOf(expected.Node),
        };
        AddIds(args, oldIds);
        RedisKey[] keys = [DirKey(parent), NodeKey(ino), ChunksKey(ino), DirKey(ino), _refsKey, _usageKey];
        var r = await Run(() => _db.ScriptEvaluateAsync(RemoveLua, keys, args.ToArray())).ConfigureAwait(false);
        return ParseResult(r);
    }

    public async Task<long> GetChunkRefCountAsync(ChunkId id, CancellationToken ct = default)
    {
        var v = await Run(() => _db.HashGetAsync(_refsKey, id.ToBytes())).ConfigureAwait(false);
        return v.IsNull ? 0 : (long)v;
    }

    public async Task<VolumeUsage> GetUsageAsync(CancellationToken ct = default)
    {
        var v = await Run(() => _db.HashGetAsync(_usageKey, ["bytes", "inodes"])).ConfigureAwait(false);
        return new VolumeUsage(v[0].IsNull ? 0 : (long)v[0], v[1].IsNull ? 0 : (long)v[1]);
    }

    public void Dispose()
    {
        // Dispose() alone waits up to the sync timeout for in-flight commands;
        // every call of ours is awaited before Dispose, so close without waiting.
        _conn.Close(allowCommandsToComplete: false);
        _conn.Dispose();
    }

    private static long SizeOf(Node n) => n.Type == NodeType.File ? (long)n.Size : 0;

    private static void AddIds(List<RedisValue> args, IReadOnlyList<ChunkEntry> entries)
    {
        foreach (var e in entries)
        {
            args.Add(e.Id.ToBytes());
        }
    }

    private static MetaResult ParseResult(RedisResult r) => (string?)r switch
    {
        "ok" => MetaResult.Ok,
        "exists" => MetaResult.Exists,
        "conflict" => MetaResult.Conflict,
        "noparent" => MetaResult.NoParent,
        "notempty" => MetaResult.NotEmpty,
        var other => throw new LmfsException($"unexpected answer '{other}' from the Redis metadata script"),
    };

    private static string? QueryValue(Uri url, string name)
    {
        foreach (string part in url.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = part.IndexOf('=');
            if (eq > 0 && part[..eq] == name)
            {
                return Uri.UnescapeDataString(part[(eq + 1)..]);
            }
        }

        return null;
    }

    private static string FirstLine(string s) => s.Split('\n')[0].Trim();

    private RedisKey NodeKey(ulong ino) => _prefix + "i" + ino.ToString(CultureInfo.InvariantCulture);

    private RedisKey DirKey(ulong ino) => _prefix + "d" + ino.ToString(CultureInfo.InvariantCulture);

    private RedisKey ChunksKey(ulong ino) => _prefix + "c" + ino.ToString(CultureInfo.InvariantCulture);

    /// <summary>Every command's deadline, the same for every client version: a FUSE request must never wait forever.</summary>
    public static TimeSpan CommandTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Turns the client's connection and timeout errors into one clear message.</summary>
    private async Task<T> Run<T>(Func<Task<T>> op)
    {
        try
        {
            return await op().WaitAsync(CommandTimeout).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisConnectionException or RedisTimeoutException or TimeoutException)
        {
            throw new LmfsException($"Redis at {Describe} is unavailable: {FirstLine(ex.Message)}", "check that redis-server is running; lmfs reconnects by itself when it returns", 4, ex);
        }
        catch (RedisServerException ex)
        {
            throw new LmfsException($"Redis at {Describe} answered an error: {FirstLine(ex.Message)}", "check the server version (Redis 6 or later) and its ACL", 4, ex);
        }
    }
}
