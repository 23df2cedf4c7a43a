using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Util;

namespace LazyModelFs.Import;

public sealed record ImportOptions
{
    /// <summary>Replace destination files and symlinks that exist with different content.</summary>
    public bool Overwrite { get; init; }

    /// <summary>Chunks hashed and uploaded at once (bounded further by a 512 MiB buffer budget).</summary>
    public int Concurrency { get; init; } = 16;
}

/// <summary>Live counters, read by the progress display while an import runs.</summary>
public sealed class ImportProgress
{
    internal long _bytesDone;
    internal long _filesDone;
    internal long _chunksDone;

    public long TotalBytes { get; internal set; }

    public long TotalFiles { get; internal set; }

    public long BytesDone => Interlocked.Read(ref _bytesDone);

    public long FilesDone => Interlocked.Read(ref _filesDone);

    public long ChunksDone => Interlocked.Read(ref _chunksDone);
}

public sealed record ImportSummary(
    long Files,
    long Directories,
    long Symlinks,
    long UnchangedFiles,
    long Bytes,
    long Chunks,
    long DedupChunks,
    long UploadedBytes,
    TimeSpan Elapsed)
{
    public double BytesPerSecond => Elapsed.TotalSeconds > 0 ? Bytes / Elapsed.TotalSeconds : 0;
}

/// <summary>
/// Imports local files and directories into a volume.
///
/// Plan, then act: every source is walked and every destination checked before the first byte is
/// uploaded, so bad input (a missing source, a destination that exists with other content) changes
/// nothing. A destination that already holds the same content (same chunk ids) is skipped, which
/// is what makes re-running an interrupted import complete it.
///
/// Chunks of all files flow through one bounded pipeline (hash, look up, upload), so one huge file
/// and ten thousand small ones both keep every worker busy. Equal chunks are uploaded once per run
/// (single-flight on the chunk id) and not at all when the object store already has them.
/// A file's entry is committed — node, chunk table and chunk references in one metadata
/// transaction — only after all of its chunks are stored: an interrupted import leaves no half file.
/// </summary>
public sealed class Importer(Volume volume, ImportOptions options)
{
    private const long BufferBudget = 512L << 20;

    private readonly ConcurrentDictionary<ChunkId, Lazy<Task<(ChunkCodec, int)>>> _inFlight = new();

    // Directory path → inode, filled as directories are made, so committing a file does not walk its
    // parent path from the root again (one metadata round trip per level, per file).
    private readonly ConcurrentDictionary<string, ulong> _dirs = new(StringComparer.Ordinal) { ["/"] = Node.RootIno };
    private long _uploadedChunks;
    private long _uploaded;

    public ImportProgress Progress { get; } = new();

    public async Task<ImportSummary> RunAsync(IReadOnlyList<string> sources, string dest, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        var plan = await PlanAsync(sources, dest, ct).ConfigureAwait(false);
        Progress.TotalBytes = plan.Files.Where(f => !f.Unchanged).Sum(f => f.Size);
        Progress.TotalFiles = plan.Files.Count(f => !f.Unchanged);

        foreach (var d in plan.Directories)
        {
            _dirs[d.Path] = await volume.Namespace.MkdirAllAsync(d.Path, d.Stat.Mode, d.Stat.Uid, d.Stat.Gid, ct).ConfigureAwait(false);
        }

        var files = plan.Files.Where(f => !f.Unchanged).ToList();
        await ImportFilesAsync(files, ct).ConfigureAwait(false);

        foreach (var l in plan.Symlinks.Where(l => !l.Unchanged))
        {
            await CommitAsync(l.Path, NodeType.Symlink, l.Stat, 0, null, l.Target, ct).ConfigureAwait(false);
        }

        long chunks = files.Sum(f => (long)f.ChunkCount);
        return new ImportSummary(
            files.Count,
            plan.Directories.Count(d => !d.Existed),
            plan.Symlinks.Count(l => !l.Unchanged),
            plan.Files.Count(f => f.Unchanged),
            files.Sum(f => f.Size),
            chunks,
            chunks - Interlocked.Read(ref _uploadedChunks),
            Interlocked.Read(ref _uploaded),
            sw.Elapsed);
    }

    private int ChunkSize => volume.Settings.ChunkSize;

    // ---------------------------------------------------------------- planning

    private sealed record DirItem(string Path, PosixStat Stat)
    {
        public bool Existed { get; set; }
    }

    private sealed class FileItem(string source, string path, PosixStat stat, int chunkSize)
    {
        public string Source { get; } = source;

        public string Path { get; } = path;

        public PosixStat Stat { get; } = stat;

        public long Size => Stat.Size;

        public int ChunkCount { get; } = (int)((stat.Size + chunkSize - 1) / chunkSize);

        public bool Unchanged { get; set; }

        public ChunkEntry[] Entries { get; set; } = [];

        public int Remaining;
    }

    private sealed record LinkItem(string Path, PosixStat Stat, string Target)
    {
        public bool Unchanged { get; set; }
    }

    private sealed record Plan(List<DirItem> Directories, List<FileItem> Files, List<LinkItem> Symlinks);

    private async Task<Plan> PlanAsync(IReadOnlyList<string> sources, string dest, CancellationToken ct)
    {
        if (sources.Count == 0)
        {
            throw new LmfsException("no source given", "usage: lmfs import META_URL SRC... DEST", 2);
        }

        var destParts = Namespace.SplitPath(dest);
        var destNode = await volume.Namespace.ResolveAsync(dest, ct).ConfigureAwait(false);
        bool destIsDir = destNode?.Type == NodeType.Directory || dest.EndsWith('/') || sources.Count > 1;
        if (sources.Count > 1 && destNode is not null && destNode.Type != NodeType.Directory)
        {
            throw new LmfsException($"destination '{Namespace.Join(destParts)}' is not a directory, but several sources were given", "name a directory as the destination", 2);
        }

        var plan = new Plan([], [], []);
        if (destIsDir)
        {
            plan.Directories.Add(new DirItem(Namespace.Join(destParts), new PosixStat(0x1ED, 0, 0, 0, 0, 0)));
        }

        foreach (var src in sources)
        {
            string full = Path.GetFullPath(src);
            if (!File.Exists(full) && !Directory.Exists(full))
            {
                throw new LmfsException($"source '{src}' does not exist", "check the path", 2);
            }

            string name = Path.GetFileName(full.TrimEnd('/'));
            if (name.Length == 0)
            {
                throw new LmfsException($"source '{src}' has no name to import under", "name a directory below /", 2);
            }

            string[] target = destIsDir ? [.. destParts, name] : destParts;
            if (target.Length == 0)
            {
                throw new LmfsException("the volume's root cannot be replaced by a file", "give a destination path such as /models/", 2);
            }

            // A symlink named on the command line is followed (like cp -H); inside directories symlinks are kept as links.
            Walk(full, target, followLink: true, plan);
        }

        await CheckDestinationsAsync(plan, ct).ConfigureAwait(false);
        return plan;
    }

    private void Walk(string source, string[] target, bool followLink, Plan plan)
    {
        ValidateAll(target);
        var info = new FileInfo(source);
        if (info.LinkTarget is { } linkTarget && !followLink)
        {
            plan.Symlinks.Add(new LinkItem(Namespace.Join(target), Posix.LStat(source), linkTarget));
            return;
        }

        if (Directory.Exists(source))
        {
            var st = followLink ? StatFollow(source) : Posix.LStat(source);
            plan.Directories.Add(new DirItem(Namespace.Join(target), st));
            foreach (var child in Directory.EnumerateFileSystemEntries(source).Order(StringComparer.Ordinal))
            {
                Walk(child, [.. target, Path.GetFileName(child)], followLink: false, plan);
            }

            return;
        }

        var fs = followLink ? StatFollow(source) : Posix.LStat(source);
        if ((fs.Mode & 0xF000) != 0x8000)
        {
            Console.Error.WriteLine($"warning: skipping '{TerminalText.Safe(source)}': not a regular file, directory or symlink");
            return;
        }

        plan.Files.Add(new FileItem(source, Namespace.Join(target), fs, ChunkSize));
    }

    private static PosixStat StatFollow(string path)
    {
        string resolved = new FileInfo(path).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? path;
        return Posix.LStat(resolved);
    }

    private static void ValidateAll(string[] parts)
    {
        foreach (var p in parts)
        {
            Namespace.ValidateName(p);
        }
    }

    /// <summary>Refuses the whole import when any destination exists with other content (unless overwriting).</summary>
    private async Task CheckDestinationsAsync(Plan plan, CancellationToken ct)
    {
        var conflicts = new List<string>();
        foreach (var d in plan.Directories)
        {
            var n = await volume.Namespace.ResolveAsync(d.Path, ct).ConfigureAwait(false);
            d.Existed = n is not null;
            if (n is not null && n.Type != NodeType.Directory)
            {
                conflicts.Add($"{d.Path} exists and is not a directory");
            }
        }

        foreach (var f in plan.Files)
        {
            var n = await volume.Namespace.ResolveAsync(f.Path, ct).ConfigureAwait(false);
            if (n is null)
            {
                continue;
            }

            if (n.Type == NodeType.Directory)
            {
                conflicts.Add($"{f.Path} is a directory in the volume");
                continue;
            }

            if (n.Type == NodeType.File && (long)n.Size == f.Size)
            {
                var table = await volume.Meta.GetChunkTableAsync(n.Ino, ChunkSize, ct).ConfigureAwait(false);
                if (table is not null && await SameContentAsync(f, table, ct).ConfigureAwait(false))
                {
                    f.Unchanged = true;
                    continue;
                }
            }

            if (!options.Overwrite)
            {
                conflicts.Add($"{f.Path} exists with other content");
            }
        }

        foreach (var l in plan.Symlinks)
        {
            var n = await volume.Namespace.ResolveAsync(l.Path, ct).ConfigureAwait(false);
            if (n is null)
            {
                continue;
            }

            if (n.Type == NodeType.Symlink && n.SymlinkTarget == l.Target)
            {
                l.Unchanged = true;
            }
            else if (n.Type == NodeType.Directory || !options.Overwrite)
            {
                conflicts.Add($"{l.Path} exists");
            }
        }

        if (conflicts.Count > 0)
        {
            string list = string.Join("\n  ", conflicts.Take(5)) + (conflicts.Count > 5 ? $"\n  … and {conflicts.Count - 5} more" : "");
            throw new LmfsException(
                $"{conflicts.Count} destination(s) already exist; nothing was imported:\n  {list}",
                conflicts.Any(c => c.Contains("directory", StringComparison.Ordinal)) ? "choose another destination, or remove the existing entries with lmfs rm" : "add --overwrite to replace them, or choose another destination",
                2);
        }
    }

    /// <summary>Hashes the source (reading only) and compares with an existing chunk table.</summary>
    private async Task<bool> SameContentAsync(FileItem f, ChunkTable table, CancellationToken ct)
    {
        if (table.Count != f.ChunkCount)
        {
            return false;
        }

        using var h = File.OpenHandle(f.Source, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
        byte[] buf = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            for (int i = 0; i < table.Count; i++)
            {
                int len = await ReadExactlyAsync(h, buf.AsMemory(0, (int)Math.Min(ChunkSize, f.Size - ((long)i * ChunkSize))), (long)i * ChunkSize, f.Source, ct).ConfigureAwait(false);
                if (len != table[i].PlainLength || ChunkId.Of(buf.AsSpan(0, len)) != table[i].Id)
                {
                    return false;
                }
            }

            return true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }

    // ---------------------------------------------------------------- the chunk pipeline

    private async Task ImportFilesAsync(List<FileItem> files, CancellationToken ct)
    {
        foreach (var f in files)
        {
            f.Entries = new ChunkEntry[f.ChunkCount];
            f.Remaining = f.ChunkCount;
            if (f.ChunkCount == 0)
            {
                await CommitFileAsync(f, ct).ConfigureAwait(false);
            }
        }

        int maxObject = ChunkObject.MaxObjectSize(ChunkSize, volume.Codec);
        int workers = (int)Math.Clamp(Math.Min(options.Concurrency, BufferBudget / maxObject), 1, 256);
        var pool = new ConcurrentBag<byte[]>();
        var work = files.SelectMany(f => Enumerable.Range(0, f.ChunkCount).Select(i => (File: f, Index: i)));
        var handles = new ConcurrentDictionary<string, Lazy<Microsoft.Win32.SafeHandles.SafeFileHandle>>();
        try
        {
            await Parallel.ForEachAsync(work, new ParallelOptions { MaxDegreeOfParallelism = workers, CancellationToken = ct }, async (item, token) =>
            {
                var handle = handles.GetOrAdd(item.File.Source, s => new Lazy<Microsoft.Win32.SafeHandles.SafeFileHandle>(
                    () => File.OpenHandle(s, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous))).Value;
                if (!pool.TryTake(out var buf))
                {
                    buf = GC.AllocateUninitializedArray<byte>(maxObject, pinned: true);
                }

                try
                {
                    item.File.Entries[item.Index] = await ImportChunkAsync(handle, item.File, item.Index, buf, token).ConfigureAwait(false);
                }
                finally
                {
                    pool.Add(buf);
                }

                if (Interlocked.Decrement(ref item.File.Remaining) == 0)
                {
                    if (handles.TryRemove(item.File.Source, out var done))
                    {
                        done.Value.Dispose();
                    }

                    await CommitFileAsync(item.File, token).ConfigureAwait(false);
                }
            }).ConfigureAwait(false);
        }
        finally
        {
            foreach (var h in handles.Values)
            {
                if (h.IsValueCreated)
                {
                    h.Value.Dispose();
                }
            }
        }
    }

    private async Task<ChunkEntry> ImportChunkAsync(Microsoft.Win32.SafeHandles.SafeFileHandle handle, FileItem f, int index, byte[] buf, CancellationToken ct)
    {
        long offset = (long)index * ChunkSize;
        int len = (int)Math.Min(ChunkSize, f.Size - offset);

        // Plain bytes land right after the header slot, so an uncompressed object needs no copy.
        var plain = buf.AsMemory(ChunkObject.HeaderSize, len);
        await ReadExactlyAsync(handle, plain, offset, f.Source, ct).ConfigureAwait(false);
        var id = ChunkId.Of(plain.Span);
        uint crc = Crc32C.Compute(plain.Span);

        // Single flight: the first worker to register the id stores it (from its own buffer, which it
        // keeps until the store finishes); later workers with the same bytes wait for that result.
        var mine = new Lazy<Task<(ChunkCodec, int)>>(() => StoreChunkAsync(id, buf, len, ct));
        var (codec, stored) = await _inFlight.GetOrAdd(id, mine).Value.ConfigureAwait(false);

        Interlocked.Add(ref Progress._bytesDone, len);
        Interlocked.Increment(ref Progress._chunksDone);
        return new ChunkEntry(id, len, stored, codec, crc);
    }

    /// <summary>Stores the chunk whose plain bytes sit at buf[16..16+len], unless the store already has it.</summary>
    private async Task<(ChunkCodec, int)> StoreChunkAsync(ChunkId id, byte[] buf, int len, CancellationToken ct)
    {
        if (await volume.Chunks.FindAsync(id, len, ct).ConfigureAwait(false) is { } existing)
        {
            return existing;
        }

        ChunkCodec codec = ChunkCodec.None;
        int objLen = ChunkObject.HeaderSize + len;
        byte[]? rented = null;
        ReadOnlyMemory<byte> obj = buf.AsMemory(0, objLen);
        try
        {
            if (volume.Codec == ChunkCodec.Zstd)
            {
                rented = ArrayPool<byte>.Shared.Rent(ChunkObject.MaxObjectSize(len, ChunkCodec.Zstd));
                (codec, objLen) = ChunkObject.Encode(buf.AsSpan(ChunkObject.HeaderSize, len), rented, ChunkCodec.Zstd);
                obj = rented.AsMemory(0, objLen);
            }
            else
            {
                ChunkObject.WriteHeader(buf, ChunkCodec.None, len, len);
            }

            await volume.Store.PutAsync(id.ObjectKey(), obj, ct).ConfigureAwait(false);
            Interlocked.Add(ref _uploaded, objLen);
            Interlocked.Increment(ref _uploadedChunks);
            return (codec, objLen);
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    private async Task CommitFileAsync(FileItem f, CancellationToken ct)
    {
        // The source must not have changed while it was read: a torn file would be imported as truth.
        var now = Posix.LStat(f.Source);
        if (now.Size != f.Stat.Size || now.MtimeNs != f.Stat.MtimeNs)
        {
            throw new LmfsException($"source '{f.Source}' changed while it was imported", "re-run the import once the file is no longer being written", 1);
        }

        await CommitAsync(f.Path, NodeType.File, f.Stat, (ulong)f.Size, new ChunkTable(f.Entries), null, ct).ConfigureAwait(false);
        Interlocked.Increment(ref Progress._filesDone);
    }

    private async Task CommitAsync(string path, NodeType type, PosixStat st, ulong size, ChunkTable? chunks, string? target, CancellationToken ct)
    {
        var parts = Namespace.SplitPath(path);
        string parentPath = Namespace.Join(parts[..^1]);
        ulong ino = await volume.Meta.AllocateInodeAsync(ct).ConfigureAwait(false);
        MetaResult r;
        bool known = _dirs.TryGetValue(parentPath, out ulong parent);
        while (true)
        {
            if (!known)
            {
                parent = _dirs[parentPath] = await volume.Namespace.MkdirAllAsync(parentPath, ct: ct).ConfigureAwait(false);
            }

            var node = new Node(ino, type, st.Mode & 0xFFF, st.Uid, st.Gid, 1, size, st.MtimeNs, Namespace.NowNs(), parent, target);
            r = await volume.Namespace.LinkAsync(parent, parts[^1], node, chunks, options.Overwrite, ct).ConfigureAwait(false);
            if (r != MetaResult.NoParent || !known)
            {
                break;
            }

            known = false; // the remembered directory was removed meanwhile: make the path again, once
        }

        if (r == MetaResult.Exists)
        {
            throw new LmfsException($"'{path}' was created by another process during the import", "re-run the import (add --overwrite to replace it)", 2);
        }

        if (r != MetaResult.Ok)
        {
            throw new LmfsException($"cannot create '{path}' in the volume: {r}", "another process is changing the same path; retry");
        }
    }

    private static async Task<int> ReadExactlyAsync(Microsoft.Win32.SafeHandles.SafeFileHandle h, Memory<byte> dest, long offset, string source, CancellationToken ct)
    {
        int total = 0;
        while (total < dest.Length)
        {
            int n = await RandomAccess.ReadAsync(h, dest[total..], offset + total, ct).ConfigureAwait(false);
            if (n == 0)
            {
                throw new LmfsException($"source '{source}' became shorter while it was imported", "re-run the import once the file is no longer being written");
            }

            total += n;
        }

        return total;
    }
}
