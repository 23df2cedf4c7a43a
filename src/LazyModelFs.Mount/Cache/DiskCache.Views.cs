using System.Buffers.Binary;
using System.Collections.Concurrent;
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
/// CRC32C, as every disk-tier read) on the way, written under a temporary name, flushed, and renamed
/// into place: a view is whole or absent. Views share the byte limit and the least-recently-used
/// eviction of chunk files. Trust is the chunk files' (<see cref="TrustedPath"/>): a view that is not
/// a private regular file of ours with one link, or not of the file's length, is discarded unread.
/// Unlike a chunk file, a view is not checked again when read through passthrough: the kernel reads
/// it like any local file (docs/architecture.md, "Passthrough").
/// </summary>
internal sealed partial class DiskCache
{
    private readonly ConcurrentDictionary<ChunkId, Entry> _views = new(); // view key → size, last use
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

    /// <summary>The name of a file's view: SHA-256 over its size and each chunk's id and length.</summary>
    public static ChunkId ViewKey(ChunkTable table)
    {
        var buf = new byte[16 + (table.Count * (ChunkId.Size + 4))];
        "lmfsview"u8.CopyTo(buf);
        BinaryPrimitives.WriteInt64LittleEndian(buf.AsSpan(8), table.PlainSize);
        int at = 16;
        foreach (var e in table.Entries)
        {
            e.Id.WriteTo(buf.AsSpan(at));
            BinaryPrimitives.WriteInt32LittleEndian(buf.AsSpan(at + ChunkId.Size), e.PlainLength);
            at += ChunkId.Size + 4;
        }

        return ChunkId.Of(buf);
    }

    private string ViewPath(ChunkId key) => Path.Combine(ViewRoot, key.ToHex());

    /// <summary>Whether every chunk of the file is in this cache (its view can be built without a fetch).</summary>
    public bool HoldsAll(ChunkTable table) => table.Entries.All(e => Contains(e.Id));

    public bool HasView(ChunkTable table) => _views.ContainsKey(ViewKey(table)) || File.Exists(ViewPath(ViewKey(table)));

    /// <summary>
    /// Opens the file's view for reading (buffered: passthrough reads go through the view's page
    /// cache), or null when there is none or it cannot be trusted (then it is deleted). The caller owns the handle.
    /// </summary>
    public SafeFileHandle? OpenView(ChunkTable table)
    {
        var key = ViewKey(table);
        string path = ViewPath(key);
        SafeFileHandle? h = null;
        try
        {
            h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            string? why = TrustedPath.UntrustedFile(h);
            long length = why is null ? RandomAccess.GetLength(h) : -1;
            if (why is not null || length != table.PlainSize)
            {
                Interlocked.Increment(ref _corrupt);
                _log.LogWarning("cache: the view {Path} is {Why}; discarded unread, the file is read from its chunks", path, why ?? $"{length} bytes long, not {table.PlainSize}");
                DeleteView(key);
                return null;
            }

            var e = _views.GetOrAdd(key, _ => NewViewEntry(length)); // built by another process sharing the directory
            e.LastUse = Interlocked.Increment(ref _clock);
            Interlocked.Increment(ref _viewOpens);
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
#pragma warning disable CA2000 // disposed by the using below
            SafeFileHandle h = (_direct ? Posix.OpenDirect(tmp, write: true) : null)
                ?? File.OpenHandle(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, FileOptions.None, table.PlainSize);
#pragma warning restore CA2000
            using (h)
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

                    // O_DIRECT writes whole pages: the tail of a short last chunk is cut off below.
                    int n = RoundUp(e.PlainLength);
                    buffer[e.PlainLength..n].Clear();
                    RandomAccess.Write(h, buffer[..n], at);
                    at += e.PlainLength;
                }

                RandomAccess.SetLength(h, table.PlainSize);
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
        if (Bytes > Limit())
        {
            Evict();
        }

        return true;
    }

    /// <summary>Deletes the file's view, if there is one (a file that has it open keeps reading it: Linux).</summary>
    public bool RemoveView(ChunkTable table) => DeleteView(ViewKey(table)) || TryDelete(ViewPath(ViewKey(table)));

    private bool DeleteView(ChunkId key)
    {
        if (TryDelete(ViewPath(key)) && _views.TryRemove(key, out var e))
        {
            Interlocked.Add(ref _bytes, -e.Size);
            return true;
        }

        return false;
    }

    private void ForgetView(ChunkId key)
    {
        if (_views.TryRemove(key, out var e))
        {
            Interlocked.Add(ref _bytes, -e.Size);
        }
    }
}
