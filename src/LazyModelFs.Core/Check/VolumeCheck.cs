using System.Collections.Concurrent;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Storage;
using LazyModelFs.Util;

namespace LazyModelFs.Check;

/// <summary>What <see cref="VolumeCheck"/> does beyond checking that every chunk object exists with its stored size.</summary>
public sealed record CheckOptions
{
    /// <summary>Read every object and verify it against its whole row (length, SHA-256, CRC32C).</summary>
    public bool Verify { get; init; }

    /// <summary>
    /// Delete the objects found damaged that are not the bytes their key names (they serve no one),
    /// so that importing the file's source again stores them again. An object that is whole and
    /// right for its id is never deleted, even when a row disagrees with it (then the row is wrong).
    /// </summary>
    public bool Repair { get; init; }

    /// <summary>Object requests (HEAD, GET, DELETE) at once.</summary>
    public int Concurrency { get; init; } = 16;
}

/// <summary>What is wrong with one chunk of a file.</summary>
public enum ChunkProblem
{
    /// <summary>The object does not exist.</summary>
    Missing,

    /// <summary>The object's size is not the row's stored length (truncated, or another object).</summary>
    WrongSize,

    /// <summary>The object's bytes fail verification (header, SHA-256, or the row's CRC32C).</summary>
    FailsVerification,
}

/// <summary>A damaged chunk of a file: its index in the chunk table, its id, what is wrong, the detail, and whether --repair removed its object.</summary>
public sealed record DamagedChunk(int Index, ChunkId Id, ChunkProblem Problem, string Detail, bool Removed);

/// <summary>A damaged file: its volume path and inode; <see cref="Problem"/> when its record or chunk table is damaged, else the damaged chunks.</summary>
public sealed record DamagedFile(string Path, ulong Ino, string? Problem, IReadOnlyList<DamagedChunk> Chunks);

/// <summary>What a check found. Chunks count rows (a chunk shared by two files counts twice); objects count distinct chunk ids.</summary>
public sealed record CheckSummary(long Files, long Chunks, long Objects, long Bytes, long BytesRead, bool Verified, IReadOnlyList<DamagedFile> Damaged)
{
    public int DamagedFiles => Damaged.Count;

    public int DamagedChunks => Damaged.Sum(d => d.Chunks.Count);

    public int RemovedObjects => Damaged.SelectMany(d => d.Chunks).Where(c => c.Removed).Select(c => c.Id).Distinct().Count();

    public bool Healthy => Damaged.Count == 0;
}

/// <summary>Live counters of a running check (for a progress bar).</summary>
public sealed class CheckProgress
{
    internal long _objectsDone;

    public long TotalObjects { get; internal set; }

    public long FilesSeen { get; internal set; }

    public long ObjectsDone => Interlocked.Read(ref _objectsDone);
}

/// <summary>
/// <c>lmfs fsck</c>: walks a volume (or a subtree) through its namespace and checks, for every file,
/// that its record and chunk table decode and cover its size, and that every chunk object exists
/// with the stored size its row says (one HEAD per distinct chunk id, in parallel); with
/// <see cref="CheckOptions.Verify"/> it reads each object and verifies it against the whole row
/// (<see cref="ChunkStore.ReadAsync"/>). Reads retry in the one retry layer,
/// <see cref="RetryPolicy.Bounded"/>, as <c>lmfs cat</c> does; HEAD and DELETE are the SDK's calls,
/// whose own retry mode is their one layer (RetryPolicy's remarks). A store or metadata engine that
/// cannot be reached fails the check with its own error (exit 5 / 4); damage is reported, not thrown.
/// </summary>
public sealed class VolumeCheck(Volume volume, CheckOptions options)
{
    public CheckProgress Progress { get; } = new();

    private sealed class FileRows(string path, Node node, ChunkTable table)
    {
        public string Path { get; } = path;

        public Node Node { get; } = node;

        public ChunkTable Table { get; } = table;
    }

    public async Task<CheckSummary> RunAsync(string path = "/", CancellationToken ct = default)
    {
        var start = await volume.Namespace.ResolveAsync(path, ct).ConfigureAwait(false)
            ?? throw new LmfsException($"'{path}' does not exist in the volume", "list its parent with lmfs ls", 2);
        var files = new List<FileRows>();
        var damaged = new List<DamagedFile>();
        await WalkAsync(Namespace.Join(Namespace.SplitPath(path)), start, files, damaged, ct).ConfigureAwait(false);

        // One HEAD per distinct chunk id; one verifying read per distinct row.
        var ids = files.SelectMany(f => f.Table.Entries).Select(e => e.Id).Distinct().ToList();
        var rows = files.SelectMany(f => f.Table.Entries).Distinct().ToList();
        Progress.TotalObjects = ids.Count + (options.Verify ? rows.Count : 0);
        var sizes = await volume.Chunks.StoredSizesAsync(ids, options.Concurrency, () => Interlocked.Increment(ref Progress._objectsDone), ct).ConfigureAwait(false);
        var par = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Concurrency), CancellationToken = ct };

        var bad = new ConcurrentDictionary<ChunkEntry, (ChunkProblem Problem, string Detail)>();
        foreach (var e in rows)
        {
            if (sizes[e.Id] is not { } size)
            {
                bad[e] = (ChunkProblem.Missing, $"object {e.Id.ObjectKey()} is missing from the object store");
            }
            else if (size != e.StoredLength)
            {
                bad[e] = (ChunkProblem.WrongSize, $"object is {size} bytes, the chunk table says {e.StoredLength}");
            }
        }

        long read = 0;
        if (options.Verify)
        {
            await Parallel.ForEachAsync(rows, par, async (e, t) =>
            {
                if (!bad.ContainsKey(e))
                {
                    byte[] plain = new byte[e.PlainLength];
                    try
                    {
                        await RetryPolicy.Bounded.RunAsync(c => volume.Chunks.ReadAsync(e, plain, c), t).ConfigureAwait(false);
                        ChunkObject.VerifyBlocks(plain, e);
                    }
                    catch (ObjectNotFoundException ex)
                    {
                        bad[e] = (ChunkProblem.Missing, ex.Message);
                    }
                    catch (Exception ex) when (ex is ChunkCorruptException or ChunkRowMismatchException)
                    {
                        bad[e] = (ChunkProblem.FailsVerification, ex.Message);
                    }

                    Interlocked.Add(ref read, e.StoredLength);
                }

                Interlocked.Increment(ref Progress._objectsDone);
            }).ConfigureAwait(false);
        }

        var removed = new ConcurrentDictionary<ChunkId, bool>();
        if (options.Repair)
        {
            var suspects = bad.Where(b => b.Value.Problem != ChunkProblem.Missing).Select(b => b.Key.Id).Distinct().ToList();
            await Parallel.ForEachAsync(suspects, par, async (id, t) => removed[id] = await RemoveIfBrokenAsync(id, t).ConfigureAwait(false)).ConfigureAwait(false);
        }

        foreach (var f in files)
        {
            var chunks = new List<DamagedChunk>();
            for (int i = 0; i < f.Table.Count; i++)
            {
                var e = f.Table[i];
                if (bad.TryGetValue(e, out var b))
                {
                    chunks.Add(new DamagedChunk(i, e.Id, b.Problem, b.Detail, removed.TryGetValue(e.Id, out bool r) && r));
                }
            }

            if (chunks.Count > 0)
            {
                damaged.Add(new DamagedFile(f.Path, f.Node.Ino, null, chunks));
            }
        }

        damaged.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return new CheckSummary(
            Progress.FilesSeen,
            files.Sum(f => (long)f.Table.Count),
            ids.Count,
            files.Sum(f => f.Table.PlainSize),
            read,
            options.Verify,
            damaged);
    }

    /// <summary>
    /// Reads the object and deletes it when it is not the bytes its key names (no header, a header
    /// that lies, a payload whose SHA-256 is not the id). Returns whether it was deleted. An object
    /// that is whole for its id stays: the row naming it is what is wrong.
    /// </summary>
    private async Task<bool> RemoveIfBrokenAsync(ChunkId id, CancellationToken ct)
    {
        string key = id.ObjectKey();
        var buf = new byte[ChunkObject.MaxObjectSize(volume.Settings.ChunkSize, ChunkCodec.Zstd) + 1];
        int n;
        try
        {
            n = await RetryPolicy.Bounded.RunAsync(t => volume.Store.GetAsync(key, 0, buf, t), ct).ConfigureAwait(false);
        }
        catch (ObjectNotFoundException)
        {
            return false;
        }

        if (n < buf.Length && ChunkObject.IsWholeObjectOf(buf.AsSpan(0, n), id))
        {
            return false;
        }

        await volume.Store.DeleteAsync(key, ct).ConfigureAwait(false);
        return true;
    }

    private async Task WalkAsync(string path, Node node, List<FileRows> files, List<DamagedFile> damaged, CancellationToken ct)
    {
        if (node.Type == NodeType.File)
        {
            Progress.FilesSeen++;
            ChunkTable? table;
            try
            {
                table = await volume.Meta.GetChunkTableAsync(node.Ino, volume.Settings.ChunkSize, ct).ConfigureAwait(false);
            }
            catch (MetaCorruptException ex)
            {
                damaged.Add(new DamagedFile(path, node.Ino, $"the chunk table does not decode: {ex.Message}", []));
                return;
            }

            if (table is null)
            {
                damaged.Add(new DamagedFile(path, node.Ino, "the file has no chunk table", []));
            }
            else if (table.PlainSize != (long)node.Size)
            {
                damaged.Add(new DamagedFile(path, node.Ino, $"the chunk table covers {table.PlainSize} bytes, the inode says {node.Size}", []));
            }
            else
            {
                files.Add(new FileRows(path, node, table));
            }

            return;
        }

        if (node.Type != NodeType.Directory)
        {
            return;
        }

        foreach (var e in await volume.Meta.ListAsync(node.Ino, ct).ConfigureAwait(false))
        {
            string child = path == "/" ? "/" + e.Name : path + "/" + e.Name;
            Node? n;
            try
            {
                n = await volume.Meta.GetNodeAsync(e.Ino, ct).ConfigureAwait(false);
            }
            catch (MetaCorruptException ex)
            {
                damaged.Add(new DamagedFile(child, e.Ino, $"the inode record does not decode: {ex.Message}", []));
                continue;
            }

            if (n is null)
            {
                damaged.Add(new DamagedFile(child, e.Ino, "the directory entry names an inode that does not exist", []));
                continue;
            }

            await WalkAsync(child, n, files, damaged, ct).ConfigureAwait(false);
        }
    }
}
