using System.Collections.Concurrent;
using LazyModelFs.Chunks;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Cache;

internal sealed record DiskCacheOptions
{
    public required string Directory { get; init; }

    /// <summary>Most bytes of chunk files (capped further by the free-space floor).</summary>
    public long MaxBytes { get; init; } = 100L << 30;

    /// <summary>Keep at least this fraction of the cache disk free.</summary>
    public double FreeSpaceRatio { get; init; } = 0.1;
}

/// <summary>
/// The local (NVMe) chunk cache. Layout: <c>DIR/chunks/ab/cd/&lt;sha256 hex&gt;</c>, each file the chunk's
/// plain bytes, nothing else (docs/data-format.md). Files are content addressed, so any number of
/// volumes and mount processes can share one directory: a file is written to a temporary name and
/// renamed into place, so readers see a whole chunk or none, and two writers of one chunk write the
/// same bytes. A cached file is checked against the chunk table's length and CRC32C every time it
/// is read; a bad one is deleted and reported as a miss, so the chunk is fetched again.
///
/// The index (id → size, last use) is rebuilt by scanning the directory at start, so the cache
/// survives restarts. Total size is held under <see cref="DiskCacheOptions.MaxBytes"/> and above the
/// free-space floor: when either is crossed, the directory is re-scanned (other processes add files
/// too) and the least recently used files are deleted until the total is 90 % of the limit.
/// Deleting a file another process is reading is safe on Linux (open files outlive unlink).
/// If the disk fills, caching stops (with one warning) and reads keep coming from object storage.
///
/// Trust: CRC32C finds damage, not forgery, so only root and the owner may write here
/// (<see cref="TrustedPath"/>): the directory chain is checked at start, lmfs's directories are
/// 0700 and its files 0600, and a file not owned by root or us (or writable by others, or hard
/// linked) is discarded unread.
/// </summary>
internal sealed partial class DiskCache
{
    private const string TempMarker = ".tmp-";
    private readonly ConcurrentDictionary<ChunkId, Entry> _index = new();
    private readonly ILogger _log;
    private readonly Lock _evictLock = new();
    private long _bytes;
    private long _hits;
    private long _corrupt;
    private long _evictions;
    private long _evictedBytes;
    private long _clock;
    private int _paused; // 1 while writes are paused (disk full); changed with Interlocked so each change is logged once
    private long _disabledUntil;
    private long _lastPauseWarning;

    private sealed class Entry(long size, long lastUse)
    {
        public long Size { get; } = size;

        public long LastUse = lastUse;
    }

    public DiskCache(DiskCacheOptions options, ILogger? logger = null)
    {
        Options = options;
        _log = logger ?? NullLogger.Instance;
        // Trust model (TrustedPath): only root and the owner may write anything here.
        Root = Path.Combine(TrustedPath.EnsurePrivateDirectory(options.Directory, "--cache-dir"), "chunks");
        try
        {
            System.IO.Directory.CreateDirectory(Root, TrustedPath.PrivateDir);
            if (Posix.LStat(Root) is { } st && st.Uid == Posix.EUid && (st.Mode & 0x3F) != 0)
            {
                File.SetUnixFileMode(Root, TrustedPath.PrivateDir); // a cache made by an older lmfs: keep other users out of it
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new LmfsException($"cannot create the cache directory '{options.Directory}': {ex.Message}", "choose another --cache-dir, or fix its permissions", 2, ex);
        }

        TrustedPath.CheckChain(Root, "--cache-dir");
        ViewRoot = CreateViewRoot(options.Directory);
        Rescan();
    }

    public DiskCacheOptions Options { get; }

    public string Root { get; }

    public long Bytes => Interlocked.Read(ref _bytes);

    public int Count => _index.Count;

    public long Hits => Interlocked.Read(ref _hits);

    /// <summary>Cached files found damaged (and discarded) so far.</summary>
    public long Corrupt => Interlocked.Read(ref _corrupt);

    /// <summary>Chunk files this process evicted to stay under the limit, and their bytes.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    public long EvictedBytes => Interlocked.Read(ref _evictedBytes);

    public bool Contains(ChunkId id) => _index.ContainsKey(id) || _located.ContainsKey(id) || File.Exists(PathOf(id));

    /// <summary>
    /// Reads a cached chunk into <paramref name="dest"/> and checks its length and CRC32C against the
    /// chunk table. False when absent or damaged (a damaged file is removed). When <paramref name="dest"/>
    /// is page aligned with room for the chunk rounded up to a page, the file is read with O_DIRECT:
    /// straight from the disk, no copy through the page cache (which would hold the bytes a second
    /// time beside the memory tier and the mount's own page cache).
    /// </summary>
    public bool TryRead(in ChunkEntry entry, Span<byte> dest)
    {
        if (!_index.ContainsKey(entry.Id) && _located.ContainsKey(entry.Id))
        {
            return TryReadLocated(entry, dest); // its chunk file went when its file's view was built
        }

        string path = PathOf(entry.Id);
        SafeFileHandle? h = null;
        int aligned = RoundUp(entry.PlainLength);
        bool direct = _direct && dest.Length >= aligned && IsAligned(dest);
        try
        {
#pragma warning disable CA2000 // opened in the try, disposed by the using (h) below
            if (direct)
            {
                h = Posix.OpenDirect(path, write: false);
                if (h is null)
                {
                    DirectRefused();
                    direct = false;
                }
            }

            h ??= File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
#pragma warning restore CA2000
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            Forget(entry.Id);
            return TryReadLocated(entry, dest);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _log.LogWarning("cache: cannot open {Path}: {Message}", path, ex.Message);
            return false;
        }

        using (h)
        {
            if (TrustedPath.UntrustedFile(h) is { } why)
            {
                Interlocked.Increment(ref _corrupt);
                _log.LogWarning("cache: {Path} is {Why}, not a file this cache wrote; discarded unread, the chunk is fetched again", path, why);
                Delete(entry.Id, path);
                return false;
            }

            long length = RandomAccess.GetLength(h);
            int n = -1;
            if (length == entry.PlainLength)
            {
                try
                {
                    n = ReadAll(h, direct ? dest[..aligned] : dest[..entry.PlainLength], entry.PlainLength);
                }
                catch (IOException ex)
                {
                    _log.LogWarning("cache: reading {Path} failed: {Message}; the chunk is fetched again", path, ex.Message);
                    return false;
                }
            }

            if (n != entry.PlainLength || Crc32C.Compute(dest[..entry.PlainLength]) != entry.Crc32C)
            {
                // Before deleting, make sure the file is the one that is wrong: a damaged row naming this
                // chunk with another length or CRC32C must not cost honest files their cached copy.
                if (length <= dest.Length && IsTheChunk(path, entry.Id, (int)length))
                {
                    throw new ChunkRowMismatchException($"chunk {entry.Id}: the cached chunk matches its id ({length} bytes), but the chunk table row says {entry.PlainLength} bytes with CRC32C {entry.Crc32C:x8} (the row is damaged)");
                }

                Interlocked.Increment(ref _corrupt);
                _log.LogWarning("cache: {Path} is damaged ({Length} bytes, CRC32C mismatch or short); discarded, the chunk is fetched again", path, length);
                Delete(entry.Id, path);
                return false;
            }
        }

        Interlocked.Increment(ref _hits);
        if (!_index.TryGetValue(entry.Id, out var e))
        {
            e = new Entry(entry.PlainLength, 0); // written by another process sharing the directory
            if (_index.TryAdd(entry.Id, e))
            {
                Interlocked.Add(ref _bytes, e.Size);
            }
        }

        e.LastUse = Interlocked.Increment(ref _clock);
        return true;
    }

    /// <summary>
    /// Stores a verified chunk (temporary name, then rename). <paramref name="data"/> starts with the
    /// chunk's plain bytes (<c>entry.PlainLength</c> of them); when it is page aligned and long enough
    /// for the length rounded up to a page, the file is written with O_DIRECT (the padding is cut off
    /// with ftruncate). Never throws: a cache that cannot write just stops caching (false: not stored;
    /// true: stored now or already there).
    /// </summary>
    public bool Write(in ChunkEntry entry, ReadOnlySpan<byte> data)
    {
        if (_index.ContainsKey(entry.Id) || _located.ContainsKey(entry.Id))
        {
            return true;
        }

        if (Volatile.Read(ref _paused) == 1 && Environment.TickCount64 < Interlocked.Read(ref _disabledUntil))
        {
            return false;
        }

        int plainLength = entry.PlainLength;
        var plain = data[..plainLength];
        int aligned = RoundUp(plainLength);
        string path = PathOf(entry.Id);
        string tmp = path + TempMarker + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!, TrustedPath.PrivateDir);
            SafeFileHandle? direct = null;
            if (_direct && data.Length >= aligned && IsAligned(data))
            {
#pragma warning disable CA2000 // disposed by the using (direct) below
                direct = Posix.OpenDirect(tmp, write: true);
#pragma warning restore CA2000
                if (direct is null)
                {
                    DirectRefused();
                }
            }

            if (direct is not null)
            {
                using (direct)
                {
                    RandomAccess.Write(direct, data[..aligned], 0);
                    if (aligned != plainLength)
                    {
                        RandomAccess.SetLength(direct, plainLength);
                    }
                }
            }
            else
            {
                using var f = new FileStream(tmp, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None, PreallocationSize = plainLength, UnixCreateMode = TrustedPath.PrivateFile });
                RandomAccess.Write(f.SafeFileHandle, plain, 0);
            }

            File.Move(tmp, path, overwrite: true);
            if (_index.TryAdd(entry.Id, new Entry(plainLength, Interlocked.Increment(ref _clock))))
            {
                Interlocked.Add(ref _bytes, plainLength);
            }

            if (Interlocked.Exchange(ref _paused, 0) == 1)
            {
                _log.LogInformation("cache: writing to {Dir} works again", Options.Directory);
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            TryDelete(tmp);
            Interlocked.Exchange(ref _disabledUntil, Environment.TickCount64 + 30_000);
            // Warn once per episode, not at every flap: a nearly full disk pauses, frees a little by
            // eviction, resumes and pauses again within seconds.
            long now = Environment.TickCount64, last = Interlocked.Read(ref _lastPauseWarning);
            if (Interlocked.Exchange(ref _paused, 1) == 0 && (last == 0 || now - last > 300_000) && Interlocked.CompareExchange(ref _lastPauseWarning, now, last) == last)
            {
                _log.LogWarning("cache: cannot write to {Dir} ({Message}); caching paused, reads continue from object storage", Options.Directory, ex.Message);
            }
            return false;
        }

        if (Bytes > Limit())
        {
            Evict();
        }

        return true;
    }

    private volatile bool _direct = true;

    /// <summary>Whether cache files are read and written with O_DIRECT (false once the filesystem refused it).</summary>
    public bool DirectIo => _direct;

    private void DirectRefused()
    {
        if (_direct)
        {
            _direct = false;
            _log.LogInformation("cache: {Dir} does not support O_DIRECT; using buffered I/O", Options.Directory);
        }
    }

    private static int RoundUp(int n) => (n + 4095) & ~4095;

    private static unsafe bool IsAligned(ReadOnlySpan<byte> s)
    {
        // SAFETY: only the address is taken, nothing is read through it.
        fixed (byte* p = s)
        {
            return ((nuint)p & 4095) == 0;
        }
    }

    /// <summary>The byte limit now: --cache-size, lowered so the disk keeps its free-space floor.</summary>
    public long Limit()
    {
        try
        {
            var d = new DriveInfo(Root);
            long floor = (long)(d.TotalSize * Options.FreeSpaceRatio);
            long room = Bytes + d.AvailableFreeSpace - floor;
            return Math.Max(0, Math.Min(Options.MaxBytes, room));
        }
        catch (IOException)
        {
            return Options.MaxBytes;
        }
    }

    /// <summary>Deletes least recently used files until the cache is at 90 % of its limit.</summary>
    public void Evict()
    {
        lock (_evictLock)
        {
            Rescan(); // other processes sharing the directory add files this index has not seen
            long limit = Limit();
            if (Bytes <= limit)
            {
                return;
            }

            long target = limit / 10 * 9;
            long freed = 0;
            int files = 0;
            var oldestFirst = _index.Select(kv => (Id: kv.Key, kv.Value, View: false))
                .Concat(_views.Select(kv => (Id: kv.Key, kv.Value, View: true)))
                .OrderBy(x => x.Value.LastUse).ToList();
            foreach (var (id, e, view) in oldestFirst)
            {
                if (Bytes <= target)
                {
                    break;
                }

                if (view ? DeleteView(id) : Delete(id, PathOf(id)))
                {
                    freed += e.Size;
                    files++;
                }
            }

            Interlocked.Add(ref _evictions, files);
            Interlocked.Add(ref _evictedBytes, freed);
            _log.LogInformation("cache: evicted {Files} chunk files and views ({Bytes}) to stay under {Limit}", files, Sizes.Format(freed), Sizes.Format(limit));
        }
    }

    /// <summary>Deletes one chunk's cached file, if there is one (another process may hold it open: harmless on Linux).</summary>
    public bool Remove(ChunkId id)
    {
        string path = PathOf(id);
        bool removed = File.Exists(path) && TryDelete(path);
        Forget(id);
        removed |= _located.TryRemove(id, out _);
        return removed;
    }

    /// <summary>Removes every cached chunk file and view.</summary>
    public (int Files, long Bytes) Clear()
    {
        lock (_evictLock)
        {
            Rescan();
            long bytes = Bytes;
            int files = 0;
            foreach (var id in _index.Keys.ToList())
            {
                if (Delete(id, PathOf(id)))
                {
                    files++;
                }
            }

            foreach (var key in _views.Keys.ToList())
            {
                files += DeleteView(key) ? 1 : 0;
            }

            return (files, bytes);
        }
    }

    /// <summary>Rebuilds the indexes from the directory (start, eviction): sizes from the files, age from their mtime. Chunk files and views both count in <see cref="Bytes"/>.</summary>
    private void Rescan()
    {
        long total = Scan(Root, SearchOption.AllDirectories, _index);
        total += Scan(ViewRoot, SearchOption.TopDirectoryOnly, _views);
        Interlocked.Exchange(ref _bytes, total);
    }

    private static long Scan(string dir, SearchOption depth, ConcurrentDictionary<ChunkId, Entry> index)
    {
        var seen = new HashSet<ChunkId>();
        long total = 0;
        foreach (var f in new DirectoryInfo(dir).EnumerateFiles("*", depth))
        {
            if (f.Name.Contains(TempMarker, StringComparison.Ordinal))
            {
                // A temporary file older than a minute was left by a crash (a view being built is written to continuously).
                if (DateTime.UtcNow - f.LastWriteTimeUtc > TimeSpan.FromMinutes(1))
                {
                    TryDelete(f.FullName);
                }

                continue;
            }

            if (f.Name.Length != 64 || !IsHex(f.Name))
            {
                continue;
            }

            var id = ChunkId.FromHex(f.Name);
            seen.Add(id);
            long size;
            try
            {
                size = f.Length;
            }
            catch (FileNotFoundException)
            {
                continue;
            }

            total += size;
            // Files this process never used order by age, before anything it used.
            index.GetOrAdd(id, _ => new Entry(size, -(long)(DateTime.UtcNow - f.LastWriteTimeUtc).TotalSeconds));
        }

        foreach (var id in index.Keys)
        {
            if (!seen.Contains(id))
            {
                index.TryRemove(id, out _);
            }
        }

        return total;
    }

    private bool Delete(ChunkId id, string path)
    {
        if (TryDelete(path) && _index.TryRemove(id, out var e))
        {
            Interlocked.Add(ref _bytes, -e.Size);
            return true;
        }

        return false;
    }

    private void Forget(ChunkId id)
    {
        if (_index.TryRemove(id, out var e))
        {
            Interlocked.Add(ref _bytes, -e.Size);
        }
    }

    private string PathOf(ChunkId id)
    {
        string h = id.ToHex();
        return Path.Combine(Root, h[..2], h[2..4], h);
    }

    /// <summary>Whether the cache file holds exactly the chunk <paramref name="id"/> (SHA-256; only on the rare mismatch path, buffered).</summary>
    private static bool IsTheChunk(string path, ChunkId id, int length)
    {
        try
        {
            var buf = new byte[length];
            using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return ReadAll(h, buf, length) == length && ChunkId.Of(buf) == id;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Reads into <paramref name="dest"/> until <paramref name="want"/> bytes are in (or end of file); an O_DIRECT read asks for whole pages.</summary>
    private static int ReadAll(SafeFileHandle h, Span<byte> dest, int want, long offset = 0)
    {
        int total = 0;
        while (total < want)
        {
            int n = RandomAccess.Read(h, dest[total..], offset + total);
            if (n == 0)
            {
                break;
            }

            total += n;
        }

        return total;
    }

    private static bool TryDelete(string path)
    {
        try
        {
            File.Delete(path);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static bool IsHex(string s) => s.All(c => char.IsAsciiHexDigitLower(c) || char.IsAsciiDigit(c));
}
