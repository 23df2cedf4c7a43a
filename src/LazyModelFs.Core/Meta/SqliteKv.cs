using LazyModelFs.Util;
using SQLitePCL;

namespace LazyModelFs.Meta;

/// <summary>
/// The embedded engine: one SQLite file in WAL mode with a single table
/// <c>kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID</c>. Several processes may open the same file
/// (mounts and an import on one machine): writes take the database lock up front
/// (BEGIN IMMEDIATE) and wait up to the busy timeout for another writer.
/// Within a process one connection is shared under a lock; statements are prepared once.
///
/// <para><b>Read-only databases</b> (issue 11, item 16): a read-only bind mount, a ConfigMap-like
/// volume, a file mode 0444, a directory the user cannot write. Read commands (`ls`, `cat`, `stat`,
/// `mount`) must work there; writes get a clear error (exit 4). A WAL database is read through two
/// side files, <c>-wal</c> (the log) and <c>-shm</c> (its index, shared memory between processes),
/// and SQLite creates them when they are missing (https://sqlite.org/wal.html, "Read-Only
/// Databases"). So, when this process cannot write the file and its directory:</para>
/// <list type="bullet">
/// <item>both side files exist (a writer has the database open, or died): <c>mode=ro</c>, with
/// SQLite's locking, so the log is read and a live writer is seen;</item>
/// <item>otherwise we never create them: a reader's <c>-shm</c> and <c>-wal</c> would be owned by
/// the reader and keep the owner from writing later (seen: "attempt to write a readonly database"
/// for the owner after uid 65534 read a 0644 file in a shared directory). If no <c>-wal</c> holds a
/// committed transaction, everything is in the main file and it is opened <c>immutable=1</c>
/// (no locks, no side files). Frames after the last commit frame are never visible to any reader
/// (fileformat2 4.3), so a log holding only uncommitted frames (a writer killed mid-transaction) is
/// safe to ignore. Immutable means SQLite trusts nothing to change the file, so each read
/// transaction checks the file's identity, size and mtime and that no <c>-wal</c> appeared, before
/// and after; on a change the connection is opened again (now with the writer's side files) and
/// the read is repeated;</item>
/// <item>a <c>-wal</c> with committed frames and no <c>-shm</c> (a writer killed, then the files
/// copied or mounted read-only) cannot be read without creating the index: a clear error (exit 4)
/// that says how to fold the log into the file. Ignoring it would show the volume as it was before
/// those transactions.</item>
/// </list>
/// </summary>
public sealed class SqliteKv : IKvStore
{
    private const int ErofsErrno = 30;

    private static readonly Lock InitLock = new();
    private static bool s_initialized;

    private readonly Lock _lock = new();
    private Connection _c;
    private bool _disposed;

    private SqliteKv(string path, Connection c, string? readOnlyReason)
    {
        Path = path;
        _c = c;
        ReadOnlyReason = readOnlyReason;
    }

    public string Path { get; }

    public string Describe => $"sqlite://{Path}";

    /// <summary>Why this process cannot write the database (null: it can). Writes then fail with exit code 4.</summary>
    public string? ReadOnlyReason { get; }

    /// <summary>How the file is opened: "read-write", "read-only" (SQLite locking, the writer's side files), or "immutable".</summary>
    public string Mode
    {
        get
        {
            lock (_lock)
            {
                return _c.Mode;
            }
        }
    }

    /// <summary>Opens (creating if <paramref name="create"/>) the database file; read-only when this process cannot write it.</summary>
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

        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path)) ?? "/";
        string? why = WhyReadOnly(path, dir, create);
        if (create)
        {
            if (why is not null)
            {
                throw new LmfsException($"cannot create the metadata database '{path}': {why}", "format the volume where the file and its directory are writable", 4);
            }

            Directory.CreateDirectory(dir);
        }

        if (why is null)
        {
            try
            {
                return new SqliteKv(path, Connection.OpenReadWrite(path, create), null);
            }
            catch (LmfsException e) when (!create && e.InnerException is SqliteResult { Code: raw.SQLITE_READONLY or raw.SQLITE_CANTOPEN or raw.SQLITE_PERM or raw.SQLITE_AUTH } r)
            {
                why = r.Detail; // refused although access(2) allowed it (a security module, a file system that lies): read it as read-only
            }
        }

        return new SqliteKv(path, Connection.OpenReadOnly(path, why), why);
    }

    /// <summary>Null when this process can write the database (the file, and the directory for the side files); else why not.</summary>
    private static string? WhyReadOnly(string path, string dir, bool create)
    {
        bool exists = File.Exists(path);
        int file = exists ? Posix.Access(path, Posix.W_OK) : 0;
        string? existing = dir;
        while (create && existing is not null && !Directory.Exists(existing))
        {
            existing = System.IO.Path.GetDirectoryName(existing); // format makes the missing directories: the first one there must be writable
        }

        int directory = existing is not null && Directory.Exists(existing) ? Posix.Access(existing, Posix.W_OK) : 2;
        if (file == ErofsErrno || directory == ErofsErrno)
        {
            return "it is on a read-only file system";
        }

        if (file != 0)
        {
            return "the file is not writable by this user";
        }

        if (directory != 0 && !(create && !exists) && SideFilesWritable(path))
        {
            return null; // SQLite writes the side files that are there; it needs the directory only to make them
        }

        return directory != 0 ? "its directory is not writable by this user (SQLite keeps its -wal and -shm files beside it)" : null;
    }

    private static bool SideFilesWritable(string path) =>
        File.Exists(path + "-wal") && File.Exists(path + "-shm") && Posix.Access(path + "-wal", Posix.W_OK) == 0 && Posix.Access(path + "-shm", Posix.W_OK) == 0;

    public T Read<T>(Func<IKvTxn, T> body)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            for (int attempt = 0; ; attempt++)
            {
                if (_c.Changed())
                {
                    Reopen();
                }

                T result = Transaction("BEGIN DEFERRED", body);
                if (!_c.Changed())
                {
                    return result; // an immutable file must not have changed under the read
                }

                if (attempt == 2)
                {
                    throw new LmfsException($"the read-only metadata database '{Path}' changed during every read", "something writes it without a -wal log; stop that writer, or give this process write access", 4);
                }
            }
        }
    }

    public T Write<T>(Func<IKvTxn, T> body)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (ReadOnlyReason is { } why)
            {
                throw new LmfsException(
                    $"the metadata database '{Path}' is read-only: {why}; this command changes the volume",
                    "run it where the file and its directory are writable (not through a read-only mount); reading commands (ls, cat, stat, mount) work as they are",
                    4);
            }

            return Transaction("BEGIN IMMEDIATE", body);
        }
    }

    private T Transaction<T>(string begin, Func<IKvTxn, T> body)
    {
        Exec(begin);
        try
        {
            T result = body(new Txn(this));
            Exec("COMMIT");
            return result;
        }
        catch
        {
            raw.sqlite3_exec(_c.Db, "ROLLBACK");
            throw;
        }
    }

    /// <summary>The immutable file changed (a writer appeared): open it again, choosing the mode again.</summary>
    private void Reopen()
    {
        var next = Connection.OpenReadOnly(Path, ReadOnlyReason ?? "read-only");
        _c.Dispose();
        _c = next;
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
            _c.Dispose();
        }
    }

    private void Exec(string sql)
    {
        int rc = raw.sqlite3_exec(_c.Db, sql, out string? err);
        if (rc != raw.SQLITE_OK)
        {
            throw Error(rc, sql, err);
        }
    }

    private LmfsException Error(int rc, string what, string? err) => Connection.Error(_c.Db, Path, rc, what, err);

    private void Step(sqlite3_stmt stmt, string what)
    {
        int rc = raw.sqlite3_step(stmt);
        raw.sqlite3_reset(stmt);
        if (rc != raw.SQLITE_DONE)
        {
            throw Error(rc, what, null);
        }
    }

    /// <summary>The SQLite result of a failed call, as the inner exception of the <see cref="LmfsException"/> users see (the read-only fallback looks at it).</summary>
    private sealed class SqliteResult(int code, string detail) : Exception($"SQLite result {code}: {detail}")
    {
        /// <summary>The primary result code.</summary>
        public int Code { get; } = code & 0xFF;

        /// <summary>SQLite's own message.</summary>
        public string Detail { get; } = detail;
    }

    private static LmfsException SqliteError(string message, string hint, int code, string detail, int exitCode = 1) =>
        new(message, hint, exitCode, new SqliteResult(code, detail));

    /// <summary>One sqlite3 connection and its prepared statements.</summary>
    private sealed class Connection : IDisposable
    {
        private readonly string _path;
        private readonly (ulong Dev, ulong Ino, long Size, long MtimeNs)? _stamp;

        private Connection(string path, sqlite3 db, string mode, bool writable)
        {
            _path = path;
            Db = db;
            Mode = mode;
            try
            {
                raw.sqlite3_busy_timeout(db, 10_000);
                if (writable)
                {
                    Exec("PRAGMA journal_mode=WAL");
                    Exec("PRAGMA synchronous=NORMAL");
                    Exec("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID");
                }

                Get = Prepare("SELECT v FROM kv WHERE k = ?1");
                Set = Prepare("INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v");
                Del = Prepare("DELETE FROM kv WHERE k = ?1");
                Scan = Prepare("SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT ?3");
                ScanAll = Prepare("SELECT k, v FROM kv WHERE k >= ?1 ORDER BY k LIMIT ?2");
                if (mode == "immutable")
                {
                    _stamp = StampOf(path);
                }
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public sqlite3 Db { get; }

        public string Mode { get; }

        public sqlite3_stmt Get { get; } = null!;

        public sqlite3_stmt Set { get; } = null!;

        public sqlite3_stmt Del { get; } = null!;

        public sqlite3_stmt Scan { get; } = null!;

        public sqlite3_stmt ScanAll { get; } = null!;

        public static Connection OpenReadWrite(string path, bool create) =>
            Open(path, path, raw.SQLITE_OPEN_READWRITE | (create ? raw.SQLITE_OPEN_CREATE : 0), "read-write", writable: true);

        /// <summary>Read-only, creating no file: SQLite's locking when the side files exist, else immutable (see the type's remarks).</summary>
        public static Connection OpenReadOnly(string path, string why)
        {
            string uri = "file:" + Uri.EscapeDataString(System.IO.Path.GetFullPath(path)).Replace("%2F", "/", StringComparison.Ordinal);
            const int flags = raw.SQLITE_OPEN_READONLY | raw.SQLITE_OPEN_URI;
            if (File.Exists(path + "-wal") && File.Exists(path + "-shm"))
            {
                try
                {
                    return Open(path, uri + "?mode=ro", flags, "read-only", writable: false);
                }
                catch (LmfsException e) when (e.InnerException is SqliteResult r)
                {
                    throw SqliteError($"cannot read the read-only metadata database '{path}' ({why}) through its -wal and -shm files: {r.Detail}", $"check that {System.IO.Path.GetFileName(path)}-wal and -shm are readable by this user", r.Code, r.Detail, 4);
                }
            }

            if (WalLog.HasCommittedFrames(path + "-wal"))
            {
                throw new LmfsException(
                    $"the metadata database '{path}' is read-only ({why}) and its log '{path}-wal' holds transactions not yet in the file; SQLite can read them only by creating '{path}-shm' beside it",
                    $"open it once where it is writable: any lmfs command (e.g. lmfs ls sqlite://{path} /) folds the log into the file when it exits; or copy {System.IO.Path.GetFileName(path)} and {System.IO.Path.GetFileName(path)}-wal together to a writable directory",
                    4);
            }

            return Open(path, uri + "?immutable=1", flags, "immutable", writable: false);
        }

        private static Connection Open(string path, string name, int flags, string mode, bool writable)
        {
            int rc = raw.sqlite3_open_v2(name, out var db, flags | raw.SQLITE_OPEN_NOMUTEX, null);
            if (rc != raw.SQLITE_OK)
            {
                string msg = db is null ? $"error {rc}" : raw.sqlite3_errmsg(db).utf8_to_string();
                db?.Dispose();
                throw SqliteError($"cannot open metadata file '{path}': {msg}", "check that the path is readable and not on a network filesystem without locking", rc, msg, 4);
            }

            return new Connection(path, db, mode, writable);
        }

        /// <summary>True when an immutable file is no longer what was opened (a writer changed it or started a log).</summary>
        public bool Changed()
        {
            if (_stamp is not { } was)
            {
                return false;
            }

            try
            {
                return StampOf(_path) != was || File.Exists(_path + "-wal");
            }
            catch (IOException)
            {
                return true;
            }
        }

        private static (ulong, ulong, long, long) StampOf(string path)
        {
            var st = Posix.Stat(path);
            return (st.Dev, st.Ino, st.Size, st.MtimeNs);
        }

        public static LmfsException Error(sqlite3 db, string path, int rc, string what, string? err)
        {
            string msg = err ?? raw.sqlite3_errmsg(db).utf8_to_string();
            string hint = rc is raw.SQLITE_BUSY or raw.SQLITE_LOCKED
                ? "another process holds the metadata database's write lock; retry when it is done"
                : rc == raw.SQLITE_NOTADB || msg.Contains("no such table", StringComparison.Ordinal) ? "the file is not an lmfs SQLite metadata database" : "check the metadata file and the disk it is on";
            return SqliteError($"SQLite metadata '{path}': {msg} (code {rc}, during '{what}')", hint, rc, msg);
        }

        private void Exec(string sql)
        {
            int rc = raw.sqlite3_exec(Db, sql, out string? err);
            if (rc != raw.SQLITE_OK)
            {
                throw Error(Db, _path, rc, sql, err);
            }
        }

        private sqlite3_stmt Prepare(string sql)
        {
            int rc = raw.sqlite3_prepare_v2(Db, sql, out var stmt);
            return rc == raw.SQLITE_OK ? stmt : throw Error(Db, _path, rc, sql, null);
        }

        public void Dispose()
        {
            foreach (var s in new[] { Get, Set, Del, Scan, ScanAll })
            {
                s?.Dispose();
            }

            raw.sqlite3_close_v2(Db);
            Db.Dispose();
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
            var s = kv._c.Get;
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
            raw.sqlite3_bind_blob(kv._c.Set, 1, key);
            raw.sqlite3_bind_blob(kv._c.Set, 2, value);
            kv.Step(kv._c.Set, "set");
        }

        public void Delete(byte[] key)
        {
            raw.sqlite3_bind_blob(kv._c.Del, 1, key);
            kv.Step(kv._c.Del, "delete");
        }

        public List<KeyValuePair<byte[], byte[]>> Scan(byte[] prefix, int limit = int.MaxValue)
        {
            byte[]? upper = UpperBound(prefix);
            var s = upper is null ? kv._c.ScanAll : kv._c.Scan;
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
