using LazyModelFs.Util;
using SQLitePCL;

namespace LazyModelFs.Meta;

/// <summary>
/// The embedded engine: one SQLite file in WAL mode with a single table
/// <c>kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID</c>. Several processes may open the same file
/// (mounts and an import on one machine): writes take the database lock up front
/// (BEGIN IMMEDIATE) and wait up to the busy timeout for another writer.
/// Within a process one connection is shared under a lock; statements are prepared once.
/// </summary>
public sealed class SqliteKv : IKvStore
{
    private static readonly Lock InitLock = new();
    private static bool s_initialized;

    private readonly sqlite3 _db;
    private readonly Lock _lock = new();
    private readonly sqlite3_stmt _get;
    private readonly sqlite3_stmt _set;
    private readonly sqlite3_stmt _del;
    private readonly sqlite3_stmt _scan;
    private readonly sqlite3_stmt _scanAll;
    private bool _disposed;

    private SqliteKv(string path, sqlite3 db)
    {
        Path = path;
        _db = db;
        Exec("PRAGMA journal_mode=WAL");
        Exec("PRAGMA synchronous=NORMAL");
        Exec("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID");
        _get = Prepare("SELECT v FROM kv WHERE k = ?1");
        _set = Prepare("INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v");
        _del = Prepare("DELETE FROM kv WHERE k = ?1");
        _scan = Prepare("SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT ?3");
        _scanAll = Prepare("SELECT k, v FROM kv WHERE k >= ?1 ORDER BY k LIMIT ?2");
    }

    public string Path { get; }

    public string Describe => $"sqlite://{Path}";

    /// <summary>Opens (creating if <paramref name="create"/>) the database file.</summary>
    public static SqliteKv Open(string path, bool create)
    {
        lock (InitLock)
        {
            if (!s_initialized)
            {
                Batteries_V2.Init();
                s_initialized = true;
            }
        }

        if (!create && !File.Exists(path))
        {
            throw new LmfsException($"metadata file '{path}' does not exist", "format a volume there first: lmfs format sqlite://" + path + " --storage file:///DIR", 2);
        }

        string? dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (create && dir is not null && !Directory.Exists(dir))
        {
            Directory.CreateDirectory(dir);
        }

        int flags = raw.SQLITE_OPEN_READWRITE | raw.SQLITE_OPEN_NOMUTEX | (create ? raw.SQLITE_OPEN_CREATE : 0);
        int rc = raw.sqlite3_open_v2(path, out var db, flags, null);
        if (rc != raw.SQLITE_OK)
        {
            string msg = db is null ? $"error {rc}" : raw.sqlite3_errmsg(db).utf8_to_string();
            db?.Dispose();
            throw new LmfsException($"cannot open metadata file '{path}': {msg}", "check that the path is writable and not on a network filesystem without locking");
        }

        raw.sqlite3_busy_timeout(db, 10_000);
        try
        {
            return new SqliteKv(path, db);
        }
        catch (LmfsException)
        {
            db.Dispose();
            throw;
        }
    }

    public T Read<T>(Func<IKvTxn, T> body)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Exec("BEGIN DEFERRED");
            try
            {
                T result = body(new Txn(this));
                Exec("COMMIT");
                return result;
            }
            catch
            {
                raw.sqlite3_exec(_db, "ROLLBACK");
                throw;
            }
        }
    }

    public T Write<T>(Func<IKvTxn, T> body)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Exec("BEGIN IMMEDIATE");
            try
            {
                T result = body(new Txn(this));
                Exec("COMMIT");
                return result;
            }
            catch
            {
                raw.sqlite3_exec(_db, "ROLLBACK");
                throw;
            }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (var s in new[] { _get, _set, _del, _scan, _scanAll })
            {
                s.Dispose();
            }

            raw.sqlite3_close_v2(_db);
            _db.Dispose();
        }
    }

    private void Exec(string sql)
    {
        int rc = raw.sqlite3_exec(_db, sql, out string? err);
        if (rc != raw.SQLITE_OK)
        {
            throw Error(rc, sql, err);
        }
    }

    private sqlite3_stmt Prepare(string sql)
    {
        int rc = raw.sqlite3_prepare_v2(_db, sql, out var stmt);
        if (rc != raw.SQLITE_OK)
        {
            throw Error(rc, sql, null);
        }

        return stmt;
    }

    private LmfsException Error(int rc, string what, string? err)
    {
        string msg = err ?? raw.sqlite3_errmsg(_db).utf8_to_string();
        string hint = rc is raw.SQLITE_BUSY or raw.SQLITE_LOCKED
            ? "another process holds the metadata database's write lock; retry when it is done"
            : rc == raw.SQLITE_NOTADB ? "the file is not an lmfs SQLite metadata database" : "check the metadata file and the disk it is on";
        return new LmfsException($"SQLite metadata '{Path}': {msg} (code {rc}, during '{what}')", hint);
    }

    private void Step(sqlite3_stmt stmt, string what)
    {
        int rc = raw.sqlite3_step(stmt);
        raw.sqlite3_reset(stmt);
        if (rc != raw.SQLITE_DONE)
        {
            throw Error(rc, what, null);
        }
    }

    private static byte[]? UpperBound(byte[] prefix)
    {
        var upper = prefix.ToArray();
        for (int i = upper.Length - 1; i >= 0; i--)
        {
            if (upper[i] != 0xFF)
            {
                upper[i]++;
                return upper[..(i + 1)];
            }
        }

        return null;
    }

    private sealed class Txn(SqliteKv kv) : IKvTxn
    {
        public byte[]? Get(byte[] key)
        {
            var s = kv._get;
            raw.sqlite3_bind_blob(s, 1, key);
            try
            {
                int rc = raw.sqlite3_step(s);
                return rc switch
                {
                    raw.SQLITE_ROW => raw.sqlite3_column_blob(s, 0).ToArray(),
                    raw.SQLITE_DONE => null,
                    _ => throw kv.Error(rc, "get", null),
                };
            }
            finally
            {
                raw.sqlite3_reset(s);
            }
        }

        public void Set(byte[] key, byte[] value)
        {
            raw.sqlite3_bind_blob(kv._set, 1, key);
            raw.sqlite3_bind_blob(kv._set, 2, value);
            kv.Step(kv._set, "set");
        }

        public void Delete(byte[] key)
        {
            raw.sqlite3_bind_blob(kv._del, 1, key);
            kv.Step(kv._del, "delete");
        }

        public List<KeyValuePair<byte[], byte[]>> Scan(byte[] prefix, int limit = int.MaxValue)
        {
            byte[]? upper = UpperBound(prefix);
            var s = upper is null ? kv._scanAll : kv._scan;
            raw.sqlite3_bind_blob(s, 1, prefix);
            if (upper is null)
            {
                raw.sqlite3_bind_int64(s, 2, limit);
            }
            else
            {
                raw.sqlite3_bind_blob(s, 2, upper);
                raw.sqlite3_bind_int64(s, 3, limit);
            }

            var result = new List<KeyValuePair<byte[], byte[]>>();
            try
            {
                while (true)
                {
                    int rc = raw.sqlite3_step(s);
                    if (rc == raw.SQLITE_DONE)
                    {
                        return result;
                    }

                    if (rc != raw.SQLITE_ROW)
                    {
                        throw kv.Error(rc, "scan", null);
                    }

                    result.Add(new(raw.sqlite3_column_blob(s, 0).ToArray(), raw.sqlite3_column_blob(s, 1).ToArray()));
                }
            }
            finally
            {
                raw.sqlite3_reset(s);
            }
        }
    }
}
