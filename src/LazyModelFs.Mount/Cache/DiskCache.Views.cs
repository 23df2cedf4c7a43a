using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using LazyModelFs.Chunks;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Cache;

/// <summary>
/// Whole-file views: <c>DIR/files/&lt;key&gt;</c>, a file's plain bytes in one local file, so the
/// kernel can serve it through FUSE passthrough (the daemon never sees its READs, and its page cache
/// is the view's, as fast as a local file's). The key is the SHA-256 of the file's chunk list
/// (<see cref="ViewKey"/>), so a view is shared by every mount and volume that holds the same bytes
/// in the same chunks, and a file replaced by an import gets another key.
///
/// A view is only ever built from chunks this cache holds, each checked against its row (length and
/// CRC32C, as every disk-tier read) on the way, written under a temporary name (through the page
/// cache, so it is hot for the passthrough reads that follow), flushed, and renamed
/// into place: a view is whole or absent. Once it is, the file's chunk files are deleted: the view
/// holds the bytes once, and a read of one of those chunks (a cached-mode open, another file sharing
/// the chunk) is served from the view at the chunk's offset, checked like a chunk file (length and
/// CRC32C). Where a view holds a chunk is known from the file's chunk table, so this process learns
/// it when it builds or opens the view, or opens the file (<see cref="Locate"/>); a process that has
/// not finds the chunk missing and fetches it again. Views share the byte limit and the least-recently-used
/// eviction of chunk files. Trust is the chunk files' (<see cref="TrustedPath"/>): a view that is not
/// a private regular file of ours with one link, or not of the file's length, is discarded unread.
/// Unlike a chunk file, a view is not checked again when read through passthrough: the kernel reads
/// it like any local file (docs/architecture.md, "Passthrough").
/// </summary>
internal sealed partial class DiskCache
{
    private readonly ConcurrentDictionary<ChunkId, Entry> _views = new(); // view key → size, last use
    private readonly ConcurrentDictionary<ChunkId, Located> _located = new(); // chunk id → where a view holds it (its chunk file is gone)

    private readonly record struct Located(ChunkId View, long Offset, int Length);
    private long _viewOpens;
    private long _viewsBuilt;

    public string ViewRoot { get; }

    public int ViewCount => _views.Count;

    public long ViewBytes => _views.Values.Sum(e => e.Size);

    /// <summary>Views handed out to be opened, and built, by this process.</summary>
    public long ViewOpens => Interlocked.Read(ref _viewOpens);

    public long ViewsBuilt => Interlocked.Read(ref _viewsBuilt);

    private static string CreateViewRoot(string directory)
    {
        string root = Path.Combine(Path.GetFullPath(directory), "files");
        try
        {
            Directory.CreateDirectory(root, TrustedPath.PrivateDir);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new LmfsException($"cannot create the cache directory '{root}': {ex.Message}", "choose another --cache-dir, or fix its permissions", 2, ex);
        }

        TrustedPath.CheckChain(root, "--cache-dir");
        return root;
    }

    /// <summary>The name of a file's view: its content key (<see cref="ChunkTable.ContentKey"/>).</summary>
    public static ChunkId ViewKey(ChunkTable table) => table.ContentKey;

    private string ViewPath(ChunkId key) => Path.Combine(ViewRoot, key.ToHex());

    /// <summary>Whether every chunk of the file is in this cache (its view can be built without a fetch).</summary>
    public bool HoldsAll(ChunkTable table) => table.Entries.All(e => Contains(e.Id));

    public bool HasView(ChunkTable table) => HasView(ViewKey(table));

    private bool HasView(ChunkId key) => _views.ContainsKey(key) || File.Exists(ViewPath(key));

    /// <summary>
    /// Opens the file's view for reading (buffered: passthrough reads go through the view's page
    /// cache), or null when there is none or it cannot be trusted (then it is deleted). The caller owns the handle.
    /// </summary>
    public SafeFileHandle? OpenView(ChunkTable table)
    {
        var key = ViewKey(table);
        var h = OpenTrusted(key, direct: false, table.PlainSize);
        if (h is not null)
        {
            var e = _views.GetOrAdd(key, _ => NewViewEntry(table.PlainSize)); // built by another process sharing the directory
            e.LastUse = Interlocked.Increment(ref _clock);
            Interlocked.Increment(ref _viewOpens);
            Register(key, table);
        }

        return h;
    }

    /// <summary>
    /// The view <paramref name="key"/> opened for reading if it may be trusted (ours, private, one
    /// link; with <paramref name="length"/>, exactly that long), else null: absent (forgotten),
    /// unreadable (logged), or untrusted (deleted unread, counted as corrupt).
    /// </summary>
    private SafeFileHandle? OpenTrusted(ChunkId key, bool direct, long length = -1)
    {
        string path = ViewPath(key);
        SafeFileHandle? h = null;
        try
        {
            h = (direct ? Posix.OpenDirect(path, write: false) : null) ?? File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            string? why = TrustedPath.UntrustedFile(h);
            long actual = why is null && length >= 0 ? RandomAccess.GetLength(h) : length;
            if (why is not null || actual != length)
            {
                Interlocked.Increment(ref _corrupt);
                _log.LogWarning("cache: the view {Path} is {Why}; discarded unread, the file is read from its chunks", path, why ?? $"{actual} bytes long, not {length}");
                DeleteView(key);
                return null;
            }

            var opened = h;
            h = null;
            return opened;
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            ForgetView(key);
            return null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _log.LogWarning("cache: cannot open the view {Path}: {Message}", path, ex.Message);
            return null;
        }
        finally
        {
            h?.Dispose();
        }
    }

    private Entry NewViewEntry(long size)
    {
        Interlocked.Add(ref _bytes, size);
        return new Entry(size, 0);
    }

    /// <summary>
    /// Builds the file's view from the chunks this cache holds (each checked on the way, as every
    /// disk-tier read). True when the view exists afterwards; false when a chunk is missing or
    /// damaged, the disk refuses, or <paramref name="ct"/> is cancelled (nothing is left behind).
    /// Synchronous, and slow (it reads and writes the whole file): call it off the read path.
    /// </summary>
    public unsafe bool BuildView(ChunkTable table, CancellationToken ct)
    {
        var key = ViewKey(table);
        string path = ViewPath(key);
        if (File.Exists(path))
        {
            Register(key, table); // built by another process: its chunk files may be gone already
            return true;
        }

        if (table.PlainSize > Limit() / 2)
        {
            return false; // it would push half the cache out: leave the file to its chunks
        }

        string tmp = path + TempMarker + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8];
        nuint bufferBytes = (nuint)RoundUp(table.ChunkSize);
        byte* mem = (byte*)NativeMemory.AlignedAlloc(bufferBytes, 4096);
        bool done = false;
        try
        {
            var buffer = new Span<byte>(mem, (int)bufferBytes);
            // Written through the page cache, unlike chunk files: the view's pages are what passthrough
            // reads and maps next, so a file just read whole stays hot when its inode turns to passthrough.
            using (var h = File.OpenHandle(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, FileOptions.None, table.PlainSize))
            {
                File.SetUnixFileMode(h, TrustedPath.PrivateFile);
                long at = 0;
                foreach (var e in table.Entries)
                {
                    ct.ThrowIfCancellationRequested();
                    if (!TryRead(e, buffer))
                    {
                        _log.LogInformation("cache: the view of a {Size} file was not built: chunk {Id} is no longer cached", Sizes.Format(table.PlainSize), e.Id);
                        return false;
                    }

                    RandomAccess.Write(h, buffer[..e.PlainLength], at);
                    at += e.PlainLength;
                }

                RandomAccess.FlushToDisk(h);
            }

            File.Move(tmp, path, overwrite: false);
            done = true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ChunkRowMismatchException)
        {
            _log.LogWarning("cache: could not build the view {Path}: {Message}", path, ex.Message);
            return File.Exists(path); // another process may have won the rename
        }
        finally
        {
            NativeMemory.AlignedFree(mem);
            if (!done)
            {
                TryDelete(tmp);
            }
        }

        if (_views.TryAdd(key, new Entry(table.PlainSize, Interlocked.Increment(ref _clock))))
        {
            Interlocked.Add(ref _bytes, table.PlainSize);
        }

        Interlocked.Increment(ref _viewsBuilt);
        Register(key, table);
        foreach (var e in table.Entries)
        {
            if (_index.ContainsKey(e.Id))
            {
                Delete(e.Id, PathOf(e.Id)); // the view holds it now; a reader that has it open keeps reading (Linux)
            }
        }

        if (Bytes > Limit())
        {
            Evict();
        }

        return true;
    }

    /// <summary>Deletes the file's view, if there is one (a file that has it open keeps reading it: Linux).</summary>
    public bool RemoveView(ChunkTable table)
    {
        var key = ViewKey(table);
        return DeleteView(key) || TryDelete(ViewPath(key));
    }

    private bool DeleteView(ChunkId key)
    {
        Unregister(key);
        if (TryDelete(ViewPath(key)) && _views.TryRemove(key, out var e))
        {
            Interlocked.Add(ref _bytes, -e.Size);
            return true;
        }

        return false;
    }

    private void ForgetView(ChunkId key)
    {
        Unregister(key);
        if (_views.TryRemove(key, out var e))
        {
            Interlocked.Add(ref _bytes, -e.Size);
        }
    }

    /// <summary>
    /// Learns where the file's view (if it has one) holds each of its chunks, so reads of chunks
    /// whose files were deleted when the view was built are served from it. True when it has a view.
    /// </summary>
    public bool Locate(ChunkTable table)
    {
        var key = ViewKey(table);
        if (!HasView(key))
        {
            return false;
        }

        Register(key, table);
        return true;
    }

    private void Register(ChunkId key, ChunkTable table)
    {
        long at = 0;
        foreach (var e in table.Entries)
        {
            _located.TryAdd(e.Id, new Located(key, at, e.PlainLength));
            at += e.PlainLength;
        }
    }

    private void Unregister(ChunkId key)
    {
        foreach (var kv in _located)
        {
            if (kv.Value.View == key)
            {
                _located.TryRemove(kv);
            }
        }
    }

    /// <summary>
    /// A chunk read from the view that holds it, with the checks of a chunk file: a view that is not
    /// ours or reads back short or with another CRC32C is deleted, and the chunk is a miss.
    /// </summary>
    private bool TryReadLocated(in ChunkEntry entry, Span<byte> dest)
    {
        if (!_located.TryGetValue(entry.Id, out var at))
        {
            return false;
        }

        string path = ViewPath(at.View);
        int aligned = RoundUp(at.Length);
        bool direct = _direct && dest.Length >= aligned && IsAligned(dest) && (at.Offset & 4095) == 0;
        if (dest.Length < at.Length)
        {
            throw new ChunkRowMismatchException($"chunk {entry.Id}: the cached chunk is {at.Length} bytes, but the chunk table row says {entry.PlainLength} (the row is damaged)");
        }

        using var h = OpenTrusted(at.View, direct);
        if (h is null)
        {
            return false;
        }

        try
        {
            int n = ReadAll(h, direct ? dest[..aligned] : dest[..at.Length], at.Length, at.Offset);
            var got = dest[..Math.Min(n, at.Length)];
            if (n >= at.Length && at.Length == entry.PlainLength && Crc32C.Compute(got) == entry.Crc32C)
            {
                Interlocked.Increment(ref _hits);
                if (_views.TryGetValue(at.View, out var v))
                {
                    v.LastUse = Interlocked.Increment(ref _clock);
                }

                return true;
            }

            if (n >= at.Length && ChunkId.Of(got) == entry.Id)
            {
                throw new ChunkRowMismatchException($"chunk {entry.Id}: the cached chunk matches its id ({at.Length} bytes), but the chunk table row says {entry.PlainLength} bytes with CRC32C {entry.Crc32C:x8} (the row is damaged)");
            }

            Interlocked.Increment(ref _corrupt);
            _log.LogWarning("cache: the view {Path} is damaged at {Offset} (short, or a CRC32C mismatch); discarded, the chunk is fetched again", path, at.Offset);
            DeleteView(at.View);
            return false;
        }
        catch (IOException ex)
        {
            _log.LogWarning("cache: reading the view {Path} failed: {Message}; the chunk is fetched again", path, ex.Message);
            return false;
        }
    }
}
