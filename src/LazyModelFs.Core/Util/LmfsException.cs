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
public sealed class ChunkCorruptException(string message) : LmfsException(message, "the object or cache file is damaged; run `lmfs fsck` or re-import the file", 3);

/// <summary>An object the metadata references is missing from the object store.</summary>
public sealed class ObjectNotFoundException(string key) : LmfsException($"object '{key}' is missing from the object store", "the volume references data that is gone; check the bucket/prefix, or re-import the file", 3)
{
    public string Key { get; } = key;
}

/// <summary>Bytes of a metadata record could not be decoded (wrong magic, length or version).</summary>
public sealed class MetaCorruptException(string message) : LmfsException(message, "the metadata record is damaged or written by a newer lmfs; run `lmfs fsck`", 3);
