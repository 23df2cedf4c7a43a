namespace LazyModelFs.Storage;

/// <summary>One listed object: its key (relative to the store's prefix), its size, and when it was last written (UTC).</summary>
public readonly record struct ObjectInfo(string Key, long Size, DateTimeOffset LastModified);

/// <summary>
/// The object-store port. Keys are relative to the store's prefix ("chunks/ab/cd/…").
/// Implementations: <see cref="LocalObjectStore"/>, <see cref="S3ObjectStore"/>, <see cref="MemoryObjectStore"/>;
/// all pass tests/…/ObjectStoreContract.
/// </summary>
public interface IObjectStore : IDisposable
{
    /// <summary>The store's URL without secrets, for messages.</summary>
    string Describe { get; }

    /// <summary>Verifies that the store is reachable, exists and accepts the credentials.</summary>
    Task CheckAsync(CancellationToken ct = default);

    /// <summary>
    /// Verifies that the store can be read with these credentials: what a mount needs, which may
    /// have read access only (a read-only directory, a bucket policy with s3:GetObject alone).
    /// Throws an <see cref="Util.LmfsException"/> (exit 5) saying what is wrong.
    /// </summary>
    Task CheckReadableAsync(CancellationToken ct = default) => CheckAsync(ct);

    /// <summary>
    /// Reads up to <c>dest.Length</c> bytes starting at <paramref name="offset"/> (a ranged GET); returns the
    /// count, which is short only at the object's end. A missing object throws <see cref="Util.ObjectNotFoundException"/>.
    /// </summary>
    Task<int> GetAsync(string key, long offset, Memory<byte> dest, CancellationToken ct = default);

    /// <summary>Stores the object whole; readers never see a partial object.</summary>
    Task PutAsync(string key, ReadOnlyMemory<byte> data, CancellationToken ct = default);

    /// <summary>The object's size, or null when it does not exist.</summary>
    Task<long?> HeadAsync(string key, CancellationToken ct = default);

    /// <summary>
    /// Every object whose key starts with <paramref name="prefix"/>, in key order, with its size and
    /// last-modified time (lmfs gc); a store pages through as many requests as it needs. An object
    /// deleted while the listing runs may or may not be listed.
    /// </summary>
    IAsyncEnumerable<ObjectInfo> ListAsync(string prefix, CancellationToken ct = default);

    /// <summary>Deletes the object; deleting a missing object succeeds.</summary>
    Task DeleteAsync(string key, CancellationToken ct = default);
}
