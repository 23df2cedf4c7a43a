using System.Runtime.CompilerServices;
using LazyModelFs.Util;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Storage;

/// <summary>
/// Objects as files under a local (or NFS) directory. A PUT writes a temporary file in the target
/// directory, flushes it to disk and renames it over the final name, so a reader sees the old
/// object, the new one, or none — never a partial one.
/// </summary>
public sealed class LocalObjectStore : IObjectStore
{
    private const string TempMarker = ".lmfs-tmp-";

    public LocalObjectStore(string root)
    {
        Root = Path.GetFullPath(root);
    }

    public string Root { get; }

    public string Describe => "file://" + Root;

    public Task CheckReadableAsync(CancellationToken ct = default)
    {
        try
        {
            using var e = Directory.EnumerateFileSystemEntries(Root).GetEnumerator();
            _ = e.MoveNext();
        }
        catch (DirectoryNotFoundException)
        {
            throw new LmfsException($"object-store directory '{Root}' does not exist", "check the volume's storage directory (lmfs stat META_URL /)", 5);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
        {
            throw new LmfsException($"object-store directory '{Root}' cannot be read: {ex.Message}", "fix its permissions, or mount as a user who can read it", 5, ex);
        }

        return Task.CompletedTask;
    }

    public Task CheckAsync(CancellationToken ct = default)
    {
        if (!Directory.Exists(Root))
        {
            throw new LmfsException($"object-store directory '{Root}' does not exist", "create it, or format the volume again (format creates it)", 5);
        }

        string probe = Path.Combine(Root, TempMarker + "probe-" + Guid.NewGuid().ToString("N"));
        try
        {
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
        {
            throw new LmfsException($"object-store directory '{Root}' is not writable: {ex.Message}", "fix its permissions or choose another directory", 5, ex);
        }

        return Task.CompletedTask;
    }

    public async Task<int> GetAsync(string key, long offset, Memory<byte> dest, CancellationToken ct = default)
    {
        SafeFileHandle h;
        try
        {
            h = File.OpenHandle(PathOf(key), FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, FileOptions.Asynchronous);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ObjectNotFoundException(key);
        }

        using (h)
        {
            int total = 0;
            while (total < dest.Length)
            {
                int n = await RandomAccess.ReadAsync(h, dest[total..], offset + total, ct).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }

                total += n;
            }

            return total;
        }
    }

    public async Task PutAsync(string key, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        string final = PathOf(key);
        string dir = Path.GetDirectoryName(final)!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, TempMarker + Guid.NewGuid().ToString("N"));
        try
        {
            using (var h = File.OpenHandle(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, FileOptions.Asynchronous, data.Length))
            {
                await RandomAccess.WriteAsync(h, data, 0, ct).ConfigureAwait(false);
                RandomAccess.FlushToDisk(h);
            }

            File.Move(tmp, final, overwrite: true);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    public Task<long?> HeadAsync(string key, CancellationToken ct = default)
    {
        var fi = new FileInfo(PathOf(key));
        return Task.FromResult(fi.Exists ? fi.Length : (long?)null);
    }

    public async IAsyncEnumerable<ObjectInfo> ListAsync(string prefix, [EnumeratorCancellation] CancellationToken ct = default)
    {
        await Task.Yield();
        if (!Directory.Exists(Root))
        {
            yield break;
        }

        // Walk from the deepest directory the prefix names, then filter by the full prefix.
        int slash = prefix.LastIndexOf('/');
        string start = slash < 0 ? Root : PathOf(prefix[..slash]);
        if (!Directory.Exists(start))
        {
            yield break;
        }

        var files = Directory.EnumerateFiles(start, "*", SearchOption.AllDirectories)
            .Select(f => (Key: Path.GetRelativePath(Root, f).Replace(Path.DirectorySeparatorChar, '/'), Path: f))
            .Where(f => f.Key.StartsWith(prefix, StringComparison.Ordinal) && !Path.GetFileName(f.Path).StartsWith(TempMarker, StringComparison.Ordinal))
            .OrderBy(f => f.Key, StringComparer.Ordinal);
        foreach (var (k, p) in files)
        {
            ct.ThrowIfCancellationRequested();
            var fi = new FileInfo(p);
            if (!fi.Exists)
            {
                continue; // deleted since the directory was read
            }

            yield return new ObjectInfo(k, fi.Length, new DateTimeOffset(fi.LastWriteTimeUtc, TimeSpan.Zero));
        }
    }

    public Task DeleteAsync(string key, CancellationToken ct = default)
    {
        TryDelete(PathOf(key));
        return Task.CompletedTask;
    }

    public void Dispose()
    {
    }

    private string PathOf(string key)
    {
        if (key.Length == 0 || key.StartsWith('/') || key.Split('/').Any(p => p is "" or "." or ".."))
        {
            throw new ArgumentException($"object key '{key}' is not a relative path", nameof(key));
        }

        return Path.Combine(Root, key);
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}
