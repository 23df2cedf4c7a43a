using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Util;

namespace LazyModelFs.Import;

public sealed record ImportOptions
{
    /// <summary>Replace destination files and symlinks that exist with different content.</summary>
    public bool Overwrite { get; init; }

    /// <summary>Follow every symlink inside source directories (cp -L); by default they are kept, except Hugging Face cache links to blobs.</summary>
    public bool Dereference { get; init; }

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

/// <summary>A source entry that was not imported as asked (<see cref="IsError"/>) or was skipped by rule (a warning).</summary>
/// <param name="Source">The local path, printable (<see cref="Posix.ShowName(string)"/>: bytes that are not UTF-8 and control characters escaped).</param>
public sealed record ImportProblem(string Source, string Reason, bool IsError);

public sealed record ImportSummary(
    long Files,
    long Directories,
    long Symlinks,
    long UnchangedFiles,
    long Bytes,
    long Chunks,
    long DedupChunks,
    long UploadedBytes,
    TimeSpan Elapsed,
    IReadOnlyList<ImportProblem> Problems)
{
    /// <summary>Entries that should have been imported and were not: the command exits non-zero after importing the rest.</summary>
    public int Errors => Problems.Count(p => p.IsError);

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

    private readonly ConcurrentDictionary<ChunkId, Lazy<Task<StoredChunk>>> _inFlight = new();

    /// <summary>Chunk ids whose objects are known broken (missing or of the wrong size for a row of a file being repaired): stored again, never deduplicated against.</summary>
    private readonly ConcurrentDictionary<ChunkId, bool> _storeAgain = new();

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
            sw.Elapsed,
            plan.Problems);
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

        /// <summary>The volume has this file with the same bytes, but some of its objects are missing or of the wrong size: it is imported again in place.</summary>
        public bool Repair { get; set; }

        public ChunkEntry[] Entries { get; set; } = [];

        public int Remaining;
    }

    private sealed record LinkItem(string Path, PosixStat Stat, string Target)
    {
        public bool Unchanged { get; set; }
    }

    private sealed record Plan(List<DirItem> Directories, List<FileItem> Files, List<LinkItem> Symlinks, List<ImportProblem> Problems);

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
            throw new LmfsException($"destination '{Posix.ShowName(Namespace.Join(destParts))}' is not a directory, but several sources were given", "name a directory as the destination", 2);
        }

        var plan = new Plan([], [], [], []);
        if (destIsDir)
        {
            plan.Directories.Add(new DirItem(Namespace.Join(destParts), new PosixStat(0x1ED, 0, 0, 0, 0, 0)));
        }

        foreach (var src in sources)
        {
            string full = Path.GetFullPath(src);
            if (!File.Exists(full) && !Directory.Exists(full))
            {
                throw src.Contains('\uFFFD', StringComparison.Ordinal)
                    ? new LmfsException($"source '{Posix.ShowName(src)}' does not exist or its name is not valid UTF-8", "lmfs takes UTF-8 paths: import the directory above it (names that are not UTF-8 are reported, the rest imported), or rename it", 2)
                    : new LmfsException($"source '{Posix.ShowName(src)}' does not exist", "check the path", 2);
            }

            string name = Path.GetFileName(full.TrimEnd('/'));
            if (name.Length == 0)
            {
                throw new LmfsException($"source '{Posix.ShowName(src)}' has no name to import under", "name a directory below /", 2);
            }

            string[] target = destIsDir ? [.. destParts, name] : destParts;
            if (target.Length == 0)
            {
                throw new LmfsException("the volume's root cannot be replaced by a file", "give a destination path such as /models/", 2);
            }

            ValidateAll(target);
            new Walker(plan, ChunkSize, options.Dereference).Visit(full.TrimEnd('/'), target, follow: true);
        }

        await CheckDestinationsAsync(plan, ct).ConfigureAwait(false);
        return plan;
    }

    /// <summary>
    /// Walks one command-line source into the plan. The rules (docs/architecture.md, Import):
    /// - the source itself is followed if it is a symlink (cp -H), file or directory;
    /// - inside a directory a symlink is kept as a symlink, except
    ///   - in a Hugging Face cache: a link under <c>REPO/snapshots/</c> whose target is a file in
    ///     <c>REPO/blobs/</c> (<c>snapshots/REV/model.safetensors -&gt; ../../blobs/SHA</c>) is imported as
    ///     that file, since it would dangle in the volume and the snapshot is what users mean;
    ///   - with <see cref="ImportOptions.Dereference"/> (-L) every symlink is followed, like cp -L.
    ///   Links are not followed out of the tree by default: a tree from elsewhere (a cloned repository)
    ///   may hold <c>x -&gt; /etc/shadow</c>, and following it would copy the importer's files into a
    ///   volume that every pod reads;
    /// - a dangling symlink stays a symlink; a followed link that leads back into a directory being
    ///   walked is a loop, reported and skipped;
    /// - one entry that cannot be imported (a name that is not UTF-8, an unreadable file or directory,
    ///   a loop) is reported and skipped, and the rest is imported: names are read as bytes
    ///   (<see cref="Posix.ReadDirectory"/>), since .NET would turn such a name into a path that names no file.
    /// </summary>
    private sealed class Walker(Plan plan, int chunkSize, bool dereference)
    {
        private readonly List<(ulong Dev, ulong Ino)> _ancestors = [];

        public void Visit(string source, string[] target, bool follow)
        {
            string path = Namespace.Join(target);
            PosixStat st;
            try
            {
                st = Posix.LStat(source);
                if (IsLink(st) && !follow)
                {
                    byte[] raw = Posix.ReadLink(source);
                    if (!TryDecode(raw, out string linkTarget))
                    {
                        Error(source, $"its symlink target '{Posix.ShowName(raw)}' is not valid UTF-8");
                        return;
                    }

                    bool dangling = Posix.Access(source, 0) != 0; // F_OK follows the link
                    if (dangling || !(dereference || IsHuggingFaceBlob(source, linkTarget)))
                    {
                        plan.Symlinks.Add(new LinkItem(path, st, linkTarget));
                        return;
                    }
                }

                if (IsLink(st))
                {
                    st = Posix.Stat(source);
                }
            }
            catch (IOException ex)
            {
                Error(source, ex.Message);
                return;
            }

            switch (st.Mode & 0xF000)
            {
                case 0x4000:
                    VisitDirectory(source, target, st);
                    break;
                case 0x8000:
                    if (Posix.Access(source, Posix.R_OK) is int errno and not 0)
                    {
                        Error(source, "it cannot be read: " + System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno));
                        return;
                    }

                    plan.Files.Add(new FileItem(source, path, st, chunkSize));
                    break;
                default:
                    plan.Problems.Add(new ImportProblem(Posix.ShowName(source), "not a regular file, directory or symlink; skipped", IsError: false));
                    break;
            }
        }

        private void VisitDirectory(string source, string[] target, PosixStat st)
        {
            if (_ancestors.Contains((st.Dev, st.Ino)))
            {
                Error(source, "a symlink loop: it leads back to a directory that contains it");
                return;
            }

            List<byte[]> names;
            try
            {
                names = Posix.ReadDirectory(source);
            }
            catch (IOException ex)
            {
                Error(source, ex.Message);
                return;
            }

            plan.Directories.Add(new DirItem(Namespace.Join(target), st));
            names.Sort((a, b) => a.AsSpan().SequenceCompareTo(b));
            _ancestors.Add((st.Dev, st.Ino));
            foreach (var raw in names)
            {
                if (!TryDecode(raw, out string name))
                {
                    Error($"{Posix.ShowName(source)}/{Posix.ShowName(raw)}", "the name is not valid UTF-8 (names in a volume are UTF-8)", shown: true);
                    continue;
                }

                Visit(Path.Combine(source, name), [.. target, name], follow: false);
            }

            _ancestors.RemoveAt(_ancestors.Count - 1);
        }

        /// <summary>
        /// A link of a Hugging Face cache (huggingface_hub, file_download.py: snapshots/REV/NAME -&gt;
        /// ../../blobs/ETAG, relative, or absolute where it must): it lies, resolved, under
        /// REPO/snapshots/, and its own target names a regular file directly in REPO/blobs/. A link to
        /// another link of the snapshot (alias -&gt; config.json) stays a link.
        /// </summary>
        private static bool IsHuggingFaceBlob(string link, string linkTarget)
        {
            string? linkDir = Posix.TryRealPath(Path.GetDirectoryName(link)!);
            string? snapshots = linkDir;
            while (snapshots is not null && Path.GetFileName(snapshots) != "snapshots")
            {
                snapshots = Path.GetDirectoryName(snapshots);
            }

            if (linkDir is null || snapshots is null)
            {
                return false;
            }

            string named = Path.GetFullPath(linkTarget, linkDir);
            return Path.GetDirectoryName(named) == Path.Combine(Path.GetDirectoryName(snapshots)!, "blobs")
                && Posix.TryRealPath(link) == named
                && (Posix.LStat(named).Mode & 0xF000) == 0x8000;
        }

        private void Error(string source, string reason, bool shown = false) =>
            plan.Problems.Add(new ImportProblem(shown ? source : Posix.ShowName(source), reason, IsError: true));

        private static bool IsLink(PosixStat st) => (st.Mode & 0xF000) == 0xA000;
    }

    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    private static bool TryDecode(byte[] raw, out string s)
    {
        try
        {
            s = StrictUtf8.GetString(raw);
            return true;
        }
        catch (DecoderFallbackException)
        {
            s = "";
            return false;
        }
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
                conflicts.Add($"{Posix.ShowName(d.Path)} exists and is not a directory");
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
                conflicts.Add($"{Posix.ShowName(f.Path)} is a directory in the volume");
                continue;
            }

            if (n.Type == NodeType.File && (long)n.Size == f.Size)
            {
                var table = await volume.Meta.GetChunkTableAsync(n.Ino, ChunkSize, ct).ConfigureAwait(false);
                if (table is not null && await SameContentAsync(f, table, ct).ConfigureAwait(false))
                {
                    // Same bytes, but the file is unchanged only if its objects are there with the
                    // sizes its rows say: otherwise this import repairs it (stores them again, and
                    // does not deduplicate against the ones of the wrong size).
                    var broken = await BrokenObjectsAsync(table, ct).ConfigureAwait(false);
                    if (broken.Count == 0)
                    {
                        f.Unchanged = true;
                        continue;
                    }

                    f.Repair = true;
                    foreach (var id in broken)
                    {
                        _storeAgain.TryAdd(id, true);
                    }

                    continue;
                }
            }

            if (!options.Overwrite)
            {
                conflicts.Add($"{Posix.ShowName(f.Path)} exists with other content");
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
                conflicts.Add($"{Posix.ShowName(l.Path)} exists");
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

    /// <summary>The chunks of <paramref name="table"/> whose object is missing or not of the row's stored size (one HEAD per object, ChunkStore.StoredSizesAsync).</summary>
    private async Task<List<ChunkId>> BrokenObjectsAsync(ChunkTable table, CancellationToken ct)
    {
        var sizes = await volume.Chunks.StoredSizesAsync(table.Entries.Select(e => e.Id), options.Concurrency, ct: ct).ConfigureAwait(false);
        return table.Entries.Where(e => sizes[e.Id] != e.StoredLength).Select(e => e.Id).Distinct().ToList();
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
                await CommitFileAsync(f, Posix.Stat(f.Source), ct).ConfigureAwait(false);
            }
        }

        int maxObject = ChunkObject.MaxObjectSize(ChunkSize, volume.Codec);
        int workers = (int)Math.Clamp(Math.Min(options.Concurrency, BufferBudget / maxObject), 1, 256);
        var pool = new ConcurrentBag<byte[]>();
        var work = files.SelectMany(f => Enumerable.Range(0, f.ChunkCount).Select(i => (File: f, Index: i)));
        // One handle per planned file (not per path: two symlinks may name the same blob).
        var handles = new ConcurrentDictionary<FileItem, Lazy<Microsoft.Win32.SafeHandles.SafeFileHandle>>();
        try
        {
            await Parallel.ForEachAsync(work, new ParallelOptions { MaxDegreeOfParallelism = workers, CancellationToken = ct }, async (item, token) =>
            {
                var handle = handles.GetOrAdd(item.File, f => new Lazy<Microsoft.Win32.SafeHandles.SafeFileHandle>(
                    () => File.OpenHandle(f.Source, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous))).Value;
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
                    PosixStat now;
                    using (handle)
                    {
                        handles.TryRemove(item.File, out _);
                        now = Posix.FStat(handle);
                    }

                    await CommitFileAsync(item.File, now, token).ConfigureAwait(false);
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

        // Plain bytes land right after a header slot, so an uncompressed object goes out without a copy.
        var slot = buf.AsMemory(0, ChunkObject.HeaderSize + len);
        await ReadExactlyAsync(handle, slot[ChunkObject.HeaderSize..], offset, f.Source, ct).ConfigureAwait(false);
        var id = ChunkId.Of(slot.Span[ChunkObject.HeaderSize..]);

        // Single flight: the first worker to register the id stores it (from its own buffer, which it
        // keeps until the store finishes); later workers with the same bytes wait for that result.
        var mine = new Lazy<Task<StoredChunk>>(() => StoreChunkAsync(id, slot, ct));
        var stored = await _inFlight.GetOrAdd(id, mine).Value.ConfigureAwait(false);

        Interlocked.Add(ref Progress._bytesDone, len);
        Interlocked.Increment(ref Progress._chunksDone);
        return stored.Entry;
    }

    /// <summary>Stores the chunk read into <paramref name="slot"/> (behind its header room) unless the store has it; counts what was uploaded.</summary>
    private async Task<StoredChunk> StoreChunkAsync(ChunkId id, Memory<byte> slot, CancellationToken ct)
    {
        var stored = await volume.Chunks.StoreAsync(id, slot, volume.Codec, reuse: !_storeAgain.ContainsKey(id), ct).ConfigureAwait(false);
        if (stored.Uploaded)
        {
            Interlocked.Add(ref _uploaded, stored.Entry.StoredLength);
            Interlocked.Increment(ref _uploadedChunks);
        }

        // Format 2: the row carries the hash of each block, so a reader can fetch and verify a part alone.
        int blockSize = volume.Settings.BlockSize;
        return blockSize == 0 ? stored : stored with { Entry = stored.Entry with { Blocks = BlockHashes.Compute(slot.Span[ChunkObject.HeaderSize..], blockSize) } };
    }

    /// <param name="now">The source as it is after its last chunk was read: fstat of the handle it was read through, or stat of the path for an empty file.</param>
    private async Task CommitFileAsync(FileItem f, PosixStat now, CancellationToken ct)
    {
        // The source must not have changed while it was read: a torn file would be imported as truth. The
        // identity is checked too, so a path that now names another file (a symlink or file swapped in) is
        // not taken for the one planned; a followed symlink is compared through its target, as it was planned.
        if (now.Dev != f.Stat.Dev || now.Ino != f.Stat.Ino || now.Size != f.Stat.Size || now.MtimeNs != f.Stat.MtimeNs)
        {
            throw new LmfsException($"source '{Posix.ShowName(f.Source)}' changed while it was imported", "re-run the import once the file is no longer being written", 1);
        }

        await CommitAsync(f.Path, NodeType.File, f.Stat, (ulong)f.Size, new ChunkTable(f.Entries, ChunkSize, volume.Settings.BlockSize), null, ct, f.Repair).ConfigureAwait(false);
        await EnsureStoredAsync(f, ct).ConfigureAwait(false);
        Interlocked.Increment(ref Progress._filesDone);
    }

    /// <summary>
    /// After the commit, every object the file's table references must be there with its row's size:
    /// one that a concurrent <c>lmfs gc</c> deleted between this import finding it (by HEAD, or by
    /// storing it) and the commit is stored again from the source (GarbageCollector explains the rule).
    /// From the commit on, the count holds the object, so no gc can take it again.
    /// </summary>
    private async Task EnsureStoredAsync(FileItem f, CancellationToken ct)
    {
        if (f.Entries.Length == 0)
        {
            return;
        }

        var sizes = await volume.Chunks.StoredSizesAsync(f.Entries.Select(e => e.Id), options.Concurrency, ct: ct).ConfigureAwait(false);
        var gone = f.Entries.Select((e, i) => (Entry: e, Index: i)).Where(x => sizes[x.Entry.Id] != x.Entry.StoredLength).DistinctBy(x => x.Entry.Id).ToList();
        if (gone.Count == 0)
        {
            return;
        }

        using var h = File.OpenHandle(f.Source, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        foreach (var (e, i) in gone)
        {
            var slot = new byte[ChunkObject.HeaderSize + e.PlainLength];
            await ReadExactlyAsync(h, slot.AsMemory(ChunkObject.HeaderSize), (long)i * ChunkSize, f.Source, ct).ConfigureAwait(false);
            if (ChunkId.Of(slot.AsSpan(ChunkObject.HeaderSize)) != e.Id)
            {
                throw new LmfsException($"source '{Posix.ShowName(f.Source)}' changed while it was imported", "re-run the import once the file is no longer being written", 1);
            }

            var again = await volume.Chunks.StoreAsync(e.Id, slot, e.Codec, reuse: false, ct).ConfigureAwait(false);
            Interlocked.Add(ref _uploaded, again.Entry.StoredLength);
            if (again.Entry.StoredLength != e.StoredLength || again.Entry.Codec != e.Codec)
            {
                throw new LmfsException(
                    $"chunk {i} of '{Posix.ShowName(f.Path)}' was deleted by lmfs gc during the import, and stored again it is {again.Entry.StoredLength} bytes, not the {e.StoredLength} its row says",
                    "import the file again (lmfs import --overwrite SRC DEST): it is repaired",
                    1);
            }
        }
    }

    private async Task CommitAsync(string path, NodeType type, PosixStat st, ulong size, ChunkTable? chunks, string? target, CancellationToken ct, bool replace = false)
    {
        var parts = Namespace.SplitPath(path);
        string parentPath = Namespace.Join(parts[..^1]);
        ulong ino = await volume.Meta.AllocateInodeAsync(ct).ConfigureAwait(false);
        MetaResult r;
        bool known = _dirs.TryGetValue(parentPath, out ulong parent);
        long since = Stopwatch.GetTimestamp();
        int pause = 50;
        while (true)
        {
            if (!known)
            {
                parent = _dirs[parentPath] = await volume.Namespace.MkdirAllAsync(parentPath, ct: ct).ConfigureAwait(false);
            }

            var node = new Node(ino, type, st.Mode & 0xFFF, st.Uid, st.Gid, 1, size, st.MtimeNs, Namespace.NowNs(), parent, target);
            r = await volume.Namespace.LinkAsync(parent, parts[^1], node, chunks, options.Overwrite || replace, ct).ConfigureAwait(false);
            if (r == MetaResult.ChunkClaimed && Stopwatch.GetElapsedTime(since) < IMetaStore.ChunkClaimLifetime + TimeSpan.FromSeconds(30))
            {
                // lmfs gc is deleting the object of one of these chunks (it found it unreferenced): commit
                // once its claim is gone; EnsureStoredAsync then stores the object again.
                await Task.Delay(pause, ct).ConfigureAwait(false);
                pause = Math.Min(pause * 2, 2000);
                continue;
            }

            if (r != MetaResult.NoParent || !known)
            {
                break;
            }

            known = false; // the remembered directory was removed meanwhile: make the path again, once
        }

        if (r == MetaResult.ChunkClaimed)
        {
            throw new LmfsException($"cannot create '{Posix.ShowName(path)}': lmfs gc has held a claim on one of its chunks for over {IMetaStore.ChunkClaimLifetime.TotalMinutes:0} minutes", "re-run the import: a claim that is not released (its gc was killed) expires by then");
        }

        if (r == MetaResult.Exists)
        {
            throw new LmfsException($"'{Posix.ShowName(path)}' was created by another process during the import", "re-run the import (add --overwrite to replace it)", 2);
        }

        if (r != MetaResult.Ok)
        {
            throw new LmfsException($"cannot create '{Posix.ShowName(path)}' in the volume: {r}", "another process is changing the same path; retry");
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
                throw new LmfsException($"source '{Posix.ShowName(source)}' became shorter while it was imported", "re-run the import once the file is no longer being written");
            }

            total += n;
        }

        return total;
    }
}
