using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using LazyModelFs.Util;

namespace LazyModelFs.Storage;

/// <summary>The in-memory twin, for unit tests.</summary>
public sealed class MemoryObjectStore : IObjectStore
{
    private readonly ConcurrentDictionary<string, (byte[] Data, DateTimeOffset Modified)> _objects = new(StringComparer.Ordinal);

    /// <summary>The clock stamped on each PUT (tests move it to make objects old).</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    public string Describe => "memory://";

    public int Count => _objects.Count;

    public Task CheckAsync(CancellationToken ct = default) => Task.CompletedTask;

    public Task<int> GetAsync(string key, long offset, Memory<byte> dest, CancellationToken ct = default)
    {
        if (!_objects.TryGetValue(key, out var o))
        {
            throw new ObjectNotFoundException(key);
        }

        var data = o.Data;
        int n = (int)Math.Clamp(data.Length - offset, 0, dest.Length);
        data.AsSpan((int)Math.Min(offset, data.Length), n).CopyTo(dest.Span);
        return Task.FromResult(n);
    }

    public Task PutAsync(string key, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        _objects[key] = (data.ToArray(), Time.GetUtcNow());
        return Task.CompletedTask;
    }

    public Task<long?> HeadAsync(string key, CancellationToken ct = default) =>
        Task.FromResult(_objects.TryGetValue(key, out var d) ? d.Data.Length : (long?)null);

    public async IAsyncEnumerable<ObjectInfo> ListAsync(string prefix, [EnumeratorCancellation] CancellationToken ct = default)
    {
        await Task.Yield();
        foreach (var (k, v) in _objects.Where(p => p.Key.StartsWith(prefix, StringComparison.Ordinal)).OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            yield return new ObjectInfo(k, v.Data.Length, v.Modified);
        }
    }

    public Task DeleteAsync(string key, CancellationToken ct = default)
    {
        _objects.TryRemove(key, out _);
        return Task.CompletedTask;
    }

    /// <summary>Test hook: replace an object's bytes in place (to simulate corruption).</summary>
    public void Overwrite(string key, byte[] data) => _objects[key] = (data, Time.GetUtcNow());

    public void Dispose()
    {
    }
}
