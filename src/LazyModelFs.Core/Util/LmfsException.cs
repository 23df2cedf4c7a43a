namespace LazyModelFs.Util;

/// <summary>
/// An error meant for the person at the terminal: <see cref="Exception.Message"/> says what was
/// wrong, <see cref="Hint"/> says what to do about it. The command line prints both without a stack
/// trace and exits with <see cref="ExitCode"/>.
/// </summary>
public class LmfsException : Exception
{
    public LmfsException(string message, string? hint = null, int exitCode = 1, Exception? inner = null)
        : base(message, inner)
    {
        Hint = hint;
        ExitCode = exitCode;
    }

    public string? Hint { get; }

    public int ExitCode { get; }
}

/// <summary>Stored data failed an integrity check (chunk id, CRC32C, header). Never returned as data.</summary>
public sealed class ChunkCorruptException(string message) : LmfsException(message, "the stored object is damaged: run lmfs fsck --verify --repair META_URL to remove it, then import the file's source again with lmfs import --overwrite (docs/operations.md, failure modes)", 3);

/// <summary>
/// A chunk's bytes verified against its id, but the chunk-table row asking for them says another
/// length or CRC32C: the row (the metadata) is wrong, not the data. Never retried: it will not get better.
/// </summary>
public sealed class ChunkRowMismatchException(string message) : LmfsException(message, "the file's chunk table is damaged or was edited; restore the metadata from a backup or import the file again", 3);

/// <summary>
/// The object store refused the request in a way that retrying will not change (credentials
/// refused, bucket missing, request rejected): a READ fails at once instead of retrying to its deadline.
/// </summary>
public sealed class StoreRefusedException(string message, string hint, Exception? inner = null) : LmfsException(message, hint, 5, inner)
{
    /// <summary>The store's error code (S3: AccessDenied, InvalidAccessKeyId, NoSuchBucket…) when it gave one.</summary>
    public string Code { get; init; } = "";
}

/// <summary>An object the metadata references is missing from the object store.</summary>
public sealed class ObjectNotFoundException(string key) : LmfsException($"object '{key}' is missing from the object store", "the volume references data that is gone: check the bucket/prefix, or import the file's source again with lmfs import --overwrite (lmfs fsck lists every file affected)", 3)
{
    public string Key { get; } = key;
}

/// <summary>Bytes of a metadata record could not be decoded (wrong magic, length or version).</summary>
public sealed class MetaCorruptException(string message) : LmfsException(message, "the metadata record is damaged or was written by a newer lmfs; restore the metadata from a backup, or upgrade lmfs", 3);

/// <summary>
/// One attempt at the object store failed in a way that asking again may mend (S3: 408, 429, 5xx, a
/// network error, the attempt's own timeout). The store makes one attempt per call and throws this;
/// the caller's one retry layer (<see cref="Storage.RetryPolicy"/>) decides whether to ask again.
/// </summary>
public sealed class TransientException(string message, string hint = "retry; if it persists, check the S3 service", Exception? inner = null) : LmfsException(message, hint, 5, inner);
