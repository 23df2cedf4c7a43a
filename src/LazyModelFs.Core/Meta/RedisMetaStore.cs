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
///   lmfs{VOL}:refsepoch      string  reference epoch: INCR by every create and remove
///   lmfs{VOL}:gcclaims       hash    chunk id → unix ms (the server's TIME) when lmfs gc claimed it for deletion
///   lmfs{VOL}:gcowners       hash    chunk id → the gc run holding that claim
///   lmfs{VOL}:p&lt;content&gt;     hash    loader process name → access profile (Read/AccessProfile.cs) of the file with that content key (hex)
///   lmfs{VOL}:profiled       set     content keys (32 raw bytes) that have profiles (for lmfs gc)
/// </code>
/// Changes run as Lua scripts (atomic on the server) that first re-check what the client read —
/// the entry, the node record — and answer 'conflict' when anything moved, so callers retry.
/// Reads that need two keys take one round trip: a lookup is a script (the entry names the node's
/// key), an open is one MGET (issue 14, item 3; docs/architecture.md, "Metadata round trips").
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

    // KEYS: d<parent> i<parent> i<new> c<new> refs usage i<old> c<old> d<old> gcclaims refsepoch
    // ARGV: name entry node chunks size nNew replace expEntry expNode negOldSize nOld ids(new) ids(old) claimLifetimeMs
    private const string CreateLua = UnlinkLua + """

        local p = redis.call('GET', KEYS[2])
        if not p or string.byte(p, 2) ~= 1 then return 'noparent' end
        local nNew = tonumber(ARGV[6])
        local nOld = tonumber(ARGV[11])
        local t = redis.call('TIME')
        local horizon = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[#ARGV])
        for i = 12, 11 + nNew do
          local c = redis.call('HGET', KEYS[10], ARGV[i])
          if c and tonumber(c) > horizon then return 'claimed' end
        end
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
        redis.call('INCR', KEYS[11])
        return 'ok'
        """;

    // KEYS: d<parent> i<old> c<old> d<old> refs usage refsepoch
    // ARGV: name expEntry expNode negOldSize ids(old)
    private const string RemoveLua = UnlinkLua + """

        local r = unlink(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[3], KEYS[3], KEYS[4], KEYS[5], 5, #ARGV, KEYS[6], ARGV[4])
        if r == 'ok' then redis.call('INCR', KEYS[7]) end
        return r
        """;

    // KEYS: d<parent>; ARGV: name, the node keys' prefix (lmfs{VOL}:i).
    // The entry and the record it names, at one moment: {entry, record}, {entry} when the record is
    // missing or the entry is not 9 bytes (the client's decoding names the damage), false when there
    // is no entry. The node key is built here, where the inode is known; it is not in KEYS, but it
    // carries the volume's hash tag, so it is in KEYS[1]'s slot and legal on a Cluster. The inode is
    // a u64 little-endian, written in decimal by long division over its bytes: Lua's numbers are
    // doubles, exact only below 2^53.
    private const string LookupLua = """
        local e = redis.call('HGET', KEYS[1], ARGV[1])
        if not e then return false end
        if #e ~= 9 then return {e} end
        local b = {string.byte(e, 1, 8)}
        local digits = ''
        repeat
          local rem, more = 0, false
          for i = 8, 1, -1 do
            local v = rem * 256 + b[i]
            b[i] = math.floor(v / 10)
            rem = v % 10
            if b[i] ~= 0 then more = true end
          end
          digits = string.char(48 + rem) .. digits
        until not more
        return {e, redis.call('GET', ARGV[2] .. digits)}
        """;

    // KEYS: refs refsepoch; ARGV: epoch (id count)...
    private const string SetRefsLua = """
        if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
        for i = 2, #ARGV, 2 do
          local n = tonumber(ARGV[i + 1])
          if n > 0 then redis.call('HSET', KEYS[1], ARGV[i], n) else redis.call('HDEL', KEYS[1], ARGV[i]) end
        end
        return 1
        """;

    // The server's clock, in ms: every claim is stamped and judged by it, so hosts' clocks do not matter.
    private const string NowMsLua = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

    // KEYS: refs gcclaims gcowners; ARGV: id owner lifetimeMs
    private const string ClaimLua = NowMsLua + """
        local n = redis.call('HGET', KEYS[1], ARGV[1])
        if n and tonumber(n) > 0 then return 0 end
        local c = redis.call('HGET', KEYS[2], ARGV[1])
        if c and tonumber(c) > now - tonumber(ARGV[3]) and redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
        redis.call('HSET', KEYS[2], ARGV[1], now)
        redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
        return 1
        """;

    // KEYS: gcclaims gcowners; ARGV: id owner
    private const string ReleaseLua = """
        if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
          redis.call('HDEL', KEYS[1], ARGV[1])
          redis.call('HDEL', KEYS[2], ARGV[1])
        end
        return 1
        """;

    // KEYS: p<content> profiled; ARGV: process profile content max
    private const string PutProfileLua = """
        if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
          local f = redis.call('HKEYS', KEYS[1])
          redis.call('HDEL', KEYS[1], f[1])
        end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('SADD', KEYS[2], ARGV[3])
        return 1
        """;

    // KEYS: p<content> profiled; ARGV: content
    private const string DeleteProfilesLua = """
        local n = redis.call('HLEN', KEYS[1])
        redis.call('DEL', KEYS[1])
        redis.call('SREM', KEYS[2], ARGV[1])
        return n
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
    private readonly RedisKey _epochKey;
    private readonly RedisKey _claimsKey;
    private readonly RedisKey _ownersKey;
    private readonly RedisKey _profiledKey;
    private readonly RedisValue _nodePrefix;

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
        _epochKey = _prefix + "refsepoch";
        _claimsKey = _prefix + "gcclaims";
        _ownersKey = _prefix + "gcowners";
        _profiledKey = _prefix + "profiled";
        _nodePrefix = _prefix + "i";
    }

    public string Volume { get; }

    public string Describe { get; }

    /// <summary>
    /// Connects to one of the forms <see cref="RedisUrl"/> parses: one server, seeds of a primary and its
    /// replicas or of a Cluster (the client asks each for its role and sends every command to a primary),
    /// or Sentinels that name the primary (the client follows a failover by itself).
    /// Without a password in the URL, <paramref name="password"/>, else LMFS_REDIS_PASSWORD or REDIS_PASSWORD, is used when set.
    /// Errors are the project's (issue 18, item 10): what was tried and what to check, exit 4 — or 2 for a
    /// URL that cannot work (a database number on a Cluster); the client's own text only behind --verbose.
    /// </summary>
    public static async Task<RedisMetaStore> ConnectAsync(string rawUrl, string? password = null, CancellationToken ct = default)
    {
        var url = RedisUrl.Parse(rawUrl);
        password = url.Password ?? password ?? Environment.GetEnvironmentVariable("LMFS_REDIS_PASSWORD") ?? Environment.GetEnvironmentVariable("REDIS_PASSWORD");
        var opts = new ConfigurationOptions
        {
            User = url.User,
            Password = string.IsNullOrEmpty(password) ? null : password,
            DefaultDatabase = url.Database,
            Ssl = url.Tls,
            ServiceName = url.Service,
            AbortOnConnectFail = true,
            ConnectTimeout = 5000,
            SyncTimeout = 10000,
            AsyncTimeout = 10000,
            ConnectRetry = 2,
            ClientName = "lmfs",
        };
        foreach (var (host, port) in url.Hosts)
        {
            opts.EndPoints.Add(host, port);
        }

        string describe = Redact.Url(rawUrl);
        string tried = url.Sentinel
            ? $"the sentinel{(url.Hosts.Count > 1 ? "s" : "")} at {url.HostList} for master '{url.Service}'"
            : url.Hosts.Count > 1 ? $"any of {url.HostList}" : url.HostList;
        ConnectionMultiplexer conn;
        var connecting = ConnectionMultiplexer.ConnectAsync(opts, TextWriter.Null);
        try
        {
            conn = await connecting.WaitAsync(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException or OperationCanceledException)
        {
            // Given up on (timeout, Ctrl-C): a connection that still arrives later is closed, not left
            // reconnecting for the life of the process (the CSI plugin lives long).
            _ = connecting.ContinueWith(static t => t.Result.Dispose(), CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
            if (ex is OperationCanceledException)
            {
                throw;
            }

            throw ConnectFailed(ex, url, describe, tried, opts.Password is not null);
        }

        var store = new RedisMetaStore(conn, url.Database, url.Volume, describe);
        try
        {
            if (url.Database != 0 && conn.GetServers().Any(s => s.IsConnected && s.ServerType == ServerType.Cluster))
            {
                throw new LmfsException(
                    $"Redis at {describe} is a Redis Cluster, which has only database 0; the URL names database {url.Database}",
                    $"drop /{url.Database} from the URL (volumes on one Cluster are told apart by ?volume=NAME)",
                    2);
            }

            // Surface a wrong password, a missing database or an unusable server now, not at the first real command.
            await store._db.PingAsync().WaitAsync(CommandTimeout, ct).ConfigureAwait(false);
        }
        catch (RedisServerException ex) when (ex.Message.Contains("DB index is out of range", StringComparison.OrdinalIgnoreCase))
        {
            store.Dispose();
            throw new LmfsException($"Redis at {describe} has no database {url.Database}", "use a database the server has (0 to its `databases` setting - 1; 0-15 by default), or raise `databases` in redis.conf", 2, ex);
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException)
        {
            store.Dispose();
            throw ConnectFailed(ex, url, describe, tried, opts.Password is not null);
        }
        catch
        {
            store.Dispose();
            throw;
        }

        return store;
    }

    /// <summary>
    /// What a failed connection means, in the project's words: wrong credentials, or nothing usable at
    /// the addresses tried (server down, wrong port, TLS on one side only, a sentinel that does not know
    /// the master). The client's message ("UnableToConnect", "disable AbortOnConnectFail") stays in the
    /// inner exception, which only --verbose prints.
    /// </summary>
    private static LmfsException ConnectFailed(Exception ex, RedisUrl url, string describe, string tried, bool havePassword)
    {
        string text = ex.ToString();
        bool auth = ex is RedisConnectionException { FailureType: ConnectionFailureType.AuthenticationFailure }
            || text.Contains("NOAUTH", StringComparison.Ordinal) || text.Contains("WRONGPASS", StringComparison.Ordinal)
            || text.Contains("invalid password", StringComparison.OrdinalIgnoreCase) || text.Contains("invalid username-password", StringComparison.OrdinalIgnoreCase);
        if (auth)
        {
            return new LmfsException(
                havePassword ? $"Redis at {describe} refused the password{(url.User is null ? "" : $" of user '{url.User}'")}" : $"Redis at {describe} needs a password",
                "give the right one in LMFS_REDIS_PASSWORD (or redis://[USER]:PASSWORD@HOST in the URL, visible in ps); for an ACL user, redis://USER:@HOST with the password in LMFS_REDIS_PASSWORD",
                4,
                ex);
        }

        string check = url.Sentinel
            ? $"check that the sentinels run there (redis-cli -p PORT SENTINEL get-master-addr-by-name {url.Service} names the master), that '{url.Service}' is the name they monitor, and that the master they name is reachable from here"
            : "check that redis-server runs there and listens on that port (redis-cli -h HOST -p PORT ping), and that a firewall lets this host through";
        string tls = url.Tls ? $"; {url.Scheme}:// speaks TLS: the server needs tls-port" : $"; a server that only speaks TLS needs {url.Scheme.Replace("redis", "rediss", StringComparison.Ordinal)}://";
        return new LmfsException($"cannot connect to Redis at {describe}: no answer from {tried}", check + tls + "; a password goes in LMFS_REDIS_PASSWORD", 4, ex);
    }

    /// <summary>
    /// The names of the volumes formatted in this database (those with a settings key), sorted, at most
    /// <paramref name="max"/>: what a URL without the right ?volume= is told about. SCAN, on every primary
    /// (a Cluster spreads volumes over its nodes), so a large database is walked without blocking it.
    /// Null when the server would not say (an ACL user without SCAN): then nothing is claimed about them.
    /// </summary>
    public async Task<IReadOnlyList<string>?> ListVolumesAsync(int max = 50, CancellationToken ct = default)
    {
        var names = new SortedSet<string>(StringComparer.Ordinal);
        // A hint on an error path (CSI NodeStage among them): a few seconds in all, however large the database.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(TimeSpan.FromSeconds(5));
        try
        {
            foreach (var server in _conn.GetServers().Where(s => s.IsConnected && !s.IsReplica))
            {
                await foreach (var key in server.KeysAsync(_db.Database, "lmfs{*}:setting", pageSize: 1000).WithCancellation(deadline.Token).ConfigureAwait(false))
                {
                    string k = key.ToString();
                    if (k.StartsWith("lmfs{", StringComparison.Ordinal) && k.EndsWith("}:setting", StringComparison.Ordinal))
                    {
                        names.Add(k[5..^9]);
                    }

                    if (names.Count >= max)
                    {
                        return [.. names];
                    }
                }
            }
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException)
        {
            return null; // only a hint depends on this list; the error it is part of stands without it
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return names.Count > 0 ? [.. names] : null; // out of time: what was found, or no claim at all
        }

        return [.. names];
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

    public async Task<EntryAndNode?> LookupNodeAsync(ulong parent, string name, CancellationToken ct = default)
    {
        var r = await Run(() => _db.ScriptEvaluateAsync(LookupLua, [DirKey(parent)], [Encoding.UTF8.GetBytes(name), _nodePrefix])).ConfigureAwait(false);
        if (r.IsNull)
        {
            return null;
        }

        var parts = (RedisResult[])r!;
        var e = DirEntry.DecodeValue(name, (byte[])parts[0]!);
        return new EntryAndNode(e, parts.Length > 1 && !parts[1].IsNull ? Node.Decode(e.Ino, (byte[])parts[1]!) : null);
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

    public async Task<NodeAndTable> GetNodeAndChunkTableAsync(ulong ino, int chunkSize, CancellationToken ct = default)
    {
        // One MGET: both keys carry the volume's hash tag, so they are in one slot.
        var v = await Run(() => _db.StringGetAsync([NodeKey(ino), ChunksKey(ino)])).ConfigureAwait(false);
        return new NodeAndTable(
            v[0].IsNull ? null : Node.Decode(ino, (byte[])v[0]!),
            v[1].IsNull ? null : ChunkTable.Decode((byte[])v[1]!, chunkSize));
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
        args.Add((long)IMetaStore.ChunkClaimLifetime.TotalMilliseconds);
        RedisKey[] keys =
        [
            DirKey(c.Parent), NodeKey(c.Parent), NodeKey(c.Node.Ino), ChunksKey(c.Node.Ino), _refsKey, _usageKey,
            NodeKey(oldIno), ChunksKey(oldIno), DirKey(oldIno), _claimsKey, _epochKey,
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
        RedisKey[] keys = [DirKey(parent), NodeKey(ino), ChunksKey(ino), DirKey(ino), _refsKey, _usageKey, _epochKey];
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

    /// <summary>
    /// SCAN of the volume's chunk-table keys (on the server that holds the volume's slot) and HSCAN of
    /// its counts, between two reads of the epoch: consistent when they agree, since every change of a
    /// table or a count advances the epoch in the same script.
    /// </summary>
    public async Task<ReferenceScan> ScanReferencesAsync(int chunkSize, CancellationToken ct = default)
    {
        long before = await ReadEpochAsync().ConfigureAwait(false);
        var referenced = new Dictionary<ChunkId, long>();
        var contents = new HashSet<ChunkId>();
        var stored = new Dictionary<ChunkId, long>();
        var bad = new List<(ulong, string)>();
        long tables = 0;
        await Run(() => Task.Run(
            () =>
            {
                var server = _conn.GetServer(_db.IdentifyEndpoint(_refsKey) ?? _conn.GetEndPoints()[0]);
                var batch = new List<RedisKey>(500);
                foreach (var key in server.Keys(_db.Database, _prefix + "c*", pageSize: 1000))
                {
                    ct.ThrowIfCancellationRequested();
                    string tail = ((string)key!)[(_prefix.Length + 1)..];
                    if (tail.Length > 0 && tail.All(char.IsAsciiDigit))
                    {
                        batch.Add(key);
                    }

                    if (batch.Count == batch.Capacity)
                    {
                        Count(batch);
                    }
                }

                Count(batch);
                foreach (var h in _db.HashScan(_refsKey, pageSize: 1000))
                {
                    stored[ChunkId.FromBytes((byte[])h.Name!)] = (long)h.Value;
                }

                return 0;
            },
            ct),
            whole: true).ConfigureAwait(false);
        long after = await ReadEpochAsync().ConfigureAwait(false);
        return new ReferenceScan(after, before == after, tables, referenced, stored, bad) { ContentKeys = contents };

        void Count(List<RedisKey> keys)
        {
            var values = _db.StringGet([.. keys]);
            for (int i = 0; i < keys.Count; i++)
            {
                if (values[i].IsNull)
                {
                    continue; // removed since the SCAN saw it
                }

                tables++;
                try
                {
                    var table = ChunkTable.Decode((byte[])values[i]!, chunkSize);
                    contents.Add(table.ContentKey);
                    foreach (var e in table.Entries)
                    {
                        referenced[e.Id] = referenced.GetValueOrDefault(e.Id) + 1;
                    }
                }
                catch (MetaCorruptException ex)
                {
                    bad.Add((ulong.Parse(((string)keys[i]!)[(_prefix.Length + 1)..], CultureInfo.InvariantCulture), ex.Message));
                }
            }

            keys.Clear();
        }
    }

    public async Task<bool> SetChunkRefCountsAsync(long epoch, IReadOnlyList<KeyValuePair<ChunkId, long>> counts, CancellationToken ct = default)
    {
        foreach (var part in counts.Chunk(500))
        {
            var args = new List<RedisValue>((part.Length * 2) + 1) { epoch };
            foreach (var (id, n) in part)
            {
                args.Add(id.ToBytes());
                args.Add(n);
            }

            var r = await Run(() => _db.ScriptEvaluateAsync(SetRefsLua, [_refsKey, _epochKey], args.ToArray())).ConfigureAwait(false);
            if ((long)r != 1)
            {
                return false;
            }
        }

        return true;
    }

    public async Task<bool> ClaimUnreferencedChunkAsync(ChunkId id, string owner, CancellationToken ct = default) =>
        (long)await Run(() => _db.ScriptEvaluateAsync(ClaimLua, [_refsKey, _claimsKey, _ownersKey], [id.ToBytes(), owner, (long)IMetaStore.ChunkClaimLifetime.TotalMilliseconds])).ConfigureAwait(false) == 1;

    public Task ReleaseChunkClaimAsync(ChunkId id, string owner, CancellationToken ct = default) =>
        Run(() => _db.ScriptEvaluateAsync(ReleaseLua, [_claimsKey, _ownersKey], [id.ToBytes(), owner]));

    public async Task<IReadOnlyDictionary<string, byte[]>> GetProfilesAsync(ChunkId content, CancellationToken ct = default)
    {
        var all = new Dictionary<string, byte[]>();
        foreach (var e in await Run(() => _db.HashGetAllAsync(ProfileKey(content))).ConfigureAwait(false))
        {
            all[(string?)e.Name ?? ""] = (byte[])e.Value!; // two names that decode alike: the later one
        }

        return all;
    }

    public Task PutProfileAsync(ChunkId content, string process, byte[] profile, CancellationToken ct = default) =>
        Run(() => _db.ScriptEvaluateAsync(PutProfileLua, [ProfileKey(content), _profiledKey], [process, profile, content.ToBytes(), Read.AccessProfile.MaxPerFile]));

    public async Task<int> DeleteProfilesAsync(ChunkId content, CancellationToken ct = default) =>
        (int)(long)await Run(() => _db.ScriptEvaluateAsync(DeleteProfilesLua, [ProfileKey(content), _profiledKey], [content.ToBytes()])).ConfigureAwait(false);

    public async Task<IReadOnlyList<ChunkId>> ListProfiledAsync(CancellationToken ct = default)
    {
        var all = await Run(() => _db.SetMembersAsync(_profiledKey), whole: true).ConfigureAwait(false);
        return [.. all.Select(v => (byte[])v!).Where(b => b.Length == ChunkId.Size).Select(b => ChunkId.FromBytes(b))];
    }

    private RedisKey ProfileKey(ChunkId content) => _prefix + "p" + content.ToHex();

    private async Task<long> ReadEpochAsync()
    {
        var v = await Run(() => _db.StringGetAsync(_epochKey)).ConfigureAwait(false);
        return v.IsNull ? 0 : (long)v;
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
        "claimed" => MetaResult.ChunkClaimed,
        var other => throw new LmfsException($"unexpected answer '{other}' from the Redis metadata script"),
    };

    private static string FirstLine(string s) => s.Split('\n')[0].Trim();

    private RedisKey NodeKey(ulong ino) => _prefix + "i" + ino.ToString(CultureInfo.InvariantCulture);

    private RedisKey DirKey(ulong ino) => _prefix + "d" + ino.ToString(CultureInfo.InvariantCulture);

    private RedisKey ChunksKey(ulong ino) => _prefix + "c" + ino.ToString(CultureInfo.InvariantCulture);

    /// <summary>Every command's deadline, the same for every client version: a FUSE request must never wait forever.</summary>
    public static TimeSpan CommandTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Turns the client's connection and timeout errors into one clear message.</summary>
    private async Task<T> Run<T>(Func<Task<T>> op, bool whole = false)
    {
        try
        {
            // A whole-volume scan has no overall deadline: each of its commands has the client's sync timeout.
            return await op().WaitAsync(whole ? Timeout.InfiniteTimeSpan : CommandTimeout).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RedisConnectionException or RedisTimeoutException or TimeoutException)
        {
            // The client's text (endpoint dumps, "No connection is active/available") stays behind --verbose.
            string what = ex is RedisConnectionException ? "the connection is lost" : $"no answer within {CommandTimeout.TotalSeconds:0.#} s";
            throw new LmfsException($"Redis at {Describe} is unavailable: {what}", "check that redis-server is running and reachable; lmfs reconnects by itself when it returns", 4, ex);
        }
        catch (RedisServerException ex)
        {
            string first = FirstLine(ex.Message);
            throw new LmfsException(
                $"Redis at {Describe} answered an error: {first}",
                first.StartsWith("READONLY", StringComparison.Ordinal)
                    ? "the URL names only replicas: list the primary too (redis://PRIMARY:6379,REPLICA:6379/DB), or use redis+sentinel:// so lmfs finds it"
                    : "check the server version (Redis 6 or later) and its ACL",
                4,
                ex);
        }
    }
}
