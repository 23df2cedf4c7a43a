using System.Runtime.InteropServices;
using System.Text;
using LazyModelFs.Cache;
using LazyModelFs.Fuse;
using LazyModelFs.Fuse.Abi;
using LazyModelFs.Import;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;
using Xunit.Sdk;

namespace LazyModelFs.Mount.Tests;

/// <summary>
/// The VFS against a reference model, without a kernel (issue 12, item 7).
///
/// A seeded random tree (nested directories, files of sizes around the boundaries of a 64 KiB
/// chunk, empty files and directories, symlinks, one directory wide enough that a listing takes
/// many READDIRs) is written to disk, imported into a volume over the in-memory twins (MemoryKv,
/// MemoryObjectStore), and kept as the model: the tree as written, plus what a kernel would hold —
/// its lookup count per node, its open file and directory handles, and per directory handle the
/// entries and cookies it has seen. Thousands of random requests then go straight into
/// <see cref="LmfsFileSystem"/>, only ones the kernel could send (it names only nodes it holds a
/// reference to; it forgets a node to zero only when no handle is open on it and no child of it is
/// held), and every answer is compared with the model:
/// <list type="bullet">
/// <item>LOOKUP and READDIRPLUS entries: the node id of each path never changes and names one path
/// only; attributes are the imported ones (type, mode, owner, size, mtime of files and links);
/// missing names answer a negative entry, or ENOENT when negative entries are not cached;</item>
/// <item>lookup counts (fuse-protocol.md 8.1): the daemon's <see cref="LmfsFileSystem.LookupCount"/>
/// equals LOOKUPs plus READDIRPLUS entries (not "." and "..", whose entries carry no node id) minus
/// FORGETs, also when they run concurrently; a node forgotten to zero is dropped;</item>
/// <item>READDIR and READDIRPLUS (8.5): whatever the buffer size (down to one that holds exactly the
/// next record), a full pass lists ".", ".." and every name once, with its type and inode;
/// resuming at any cookie the handle gave continues right after that entry in the same order; an
/// empty reply comes only at the end;</item>
/// <item>READ at random offsets and lengths (across chunk boundaries, at and past the end) returns the
/// imported bytes, short only at the end of the file; READLINK the target; EBADF for a handle that
/// was never opened or was released, EISDIR/EROFS for opens the VFS refuses.</item>
/// </list>
/// A failure names the seed and the last operations; add the seed to the InlineData to keep it.
/// </summary>
public sealed class VfsModelTests : IDisposable
{
    private const int Chunk = 64 << 10;
    private readonly TempDir _dir = new("lmfs-vfsmodel");

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(20260812)]
    public Task Random_requests_agree_with_a_model_of_the_imported_tree(int seed) =>
        new ModelRun(seed, _dir[$"seed-{seed}"]).ExecuteAsync(operations: 4000);

    public void Dispose() => _dir.Dispose();

    /// <summary>A path of the imported tree as the model knows it.</summary>
    private sealed class MNode(string path, NodeType type, MNode? parent)
    {
        public string Path { get; } = path;

        public string Name => Path[(Path.LastIndexOf('/') + 1)..];

        public NodeType Type { get; } = type;

        public MNode? Parent { get; } = parent;

        public SortedDictionary<string, MNode> Children { get; } = new(StringComparer.Ordinal);

        public byte[] Data { get; set; } = [];

        public string? Target { get; set; }

        public string Source { get; set; } = "";

        public uint Mode { get; set; }

        public uint Uid { get; set; }

        public uint Gid { get; set; }

        public long MtimeNs { get; set; }

        /// <summary>The node id the daemon first answered for this path (0: not seen yet).</summary>
        public ulong Ino { get; set; }

        public ulong? Generation { get; set; }

        /// <summary>The kernel's references, as the model counts them.</summary>
        public long Refs { get; set; }

        /// <summary>File or directory handles open on it.</summary>
        public int Handles { get; set; }

        public ulong ExpectedSize => Type switch
        {
            NodeType.File => (ulong)Data.Length,
            NodeType.Symlink => (ulong)Encoding.UTF8.GetByteCount(Target!),
            _ => 0,
        };

        public override string ToString() => Path;
    }

    /// <summary>One record of a READDIR(PLUS) reply.</summary>
    private readonly record struct Rec(string Name, ulong Ino, uint Type, long Off, fuse_entry_out Entry);

    /// <summary>An open directory handle: the order and cookies it has shown so far.</summary>
    private sealed class DirHandle(MNode dir)
    {
        public MNode Dir { get; } = dir;

        public List<Rec> Order { get; } = [];

        public Dictionary<long, int> IndexOfCookie { get; } = [];

        /// <summary>A pass reached the end: <see cref="Order"/> is the whole listing.</summary>
        public bool Complete { get; set; }

        /// <summary>Where the pass in progress continues.</summary>
        public long Cursor { get; set; }
    }

    private sealed class ModelRun(int seed, string root)
    {
        private readonly Random _rng = new(seed);
        private readonly Dictionary<ulong, MNode> _byIno = [];
        private readonly List<MNode> _all = [];
        private readonly Dictionary<ulong, DirHandle> _dirs = [];
        private readonly Dictionary<ulong, MNode> _files = [];
        private readonly List<ulong> _releasedDirs = [];
        private readonly List<ulong> _releasedFiles = [];
        private readonly Queue<string> _recent = new();
        private readonly VfsOptions _options = new()
        {
            Prefetch = (seed % 3) switch { 0 => PrefetchMode.None, 1 => PrefetchMode.Sequential, _ => PrefetchMode.Safetensors },
            NegativeTimeout = seed % 2 == 0 ? TimeSpan.Zero : TimeSpan.FromSeconds(1),
        };

        private MNode _root = null!;
        private LmfsFileSystem _fs = null!;
        private ulong _unique;
        private ulong _maxIno;

        public async Task ExecuteAsync(int operations)
        {
            int op = -1;
            try
            {
                _root = BuildTree();
                using var volume = await TwinVolume.CreateAsync(new MemoryObjectStore(), Chunk, "none");
                var summary = await new Importer(volume, new ImportOptions()).RunAsync(_root.Children.Values.Select(c => c.Source).ToList(), "/");
                Check(summary.Errors == 0, $"the import reported problems: {string.Join("; ", summary.Problems.Select(p => $"{p.Source}: {p.Reason}"))}");
                _maxIno = await volume.Meta.AllocateInodeAsync();

                using var memory = new MemoryTier(48L * CachedChunk.BufferSizeFor(Chunk), Chunk);
                using var cache = new ChunkCache(volume.Chunks, memory, null);
                _fs = new LmfsFileSystem(volume, cache, _options);
                for (op = 0; op < operations; op++)
                {
                    await StepAsync();
                    if (op % 25 == 0)
                    {
                        CheckAll();
                    }
                }

                op = operations;
                await TearDownAsync();
            }
            catch (Exception ex)
            {
                throw new XunitException(
                    $"VFS model: seed {seed} failed at operation {op} of {operations} (prefetch {_options.Prefetch}, negative timeout {_options.NegativeTimeout.TotalSeconds} s).\n"
                    + $"Last operations:\n  {string.Join("\n  ", _recent)}\n{ex}");
            }
        }

        // ------------------------------------------------------------------ the tree

        private MNode BuildTree()
        {
            var top = new MNode("/", NodeType.Directory, null) { Ino = Node.RootIno, Mode = 0x1ED, Generation = 0 };
            _byIno[Node.RootIno] = top;
            Directory.CreateDirectory(root);

            // The top level holds directories and files only: a symlink named on the import's command
            // line is imported as the file it points to.
            int dirs = _rng.Next(3, 6);
            for (int i = 0; i < dirs; i++)
            {
                var d = Add(top, NodeType.Directory);
                Fill(d, 1);
            }

            for (int i = _rng.Next(1, 4); i > 0; i--)
            {
                Add(top, NodeType.File);
            }

            // One wide directory: a listing of it takes many READDIRs at any buffer size.
            var wide = Add(_all.Where(n => n.Type == NodeType.Directory).ElementAt(_rng.Next(dirs)), NodeType.Directory);
            for (int i = _rng.Next(150, 350); i > 0; i--)
            {
                int k = _rng.Next(20);
                Add(wide, k == 0 ? NodeType.Directory : k < 4 ? NodeType.Symlink : NodeType.File, tiny: true);
            }

            Finish();
            return top;
        }

        private void Fill(MNode dir, int depth)
        {
            for (int i = depth >= 4 ? 0 : _rng.Next(0, 7); i > 0; i--)
            {
                int k = _rng.Next(20);
                var type = k < 5 ? NodeType.Directory : k < 8 ? NodeType.Symlink : NodeType.File;
                var n = Add(dir, type);
                if (type == NodeType.Directory)
                {
                    Fill(n, depth + 1);
                }
            }
        }

        private MNode Add(MNode dir, NodeType type, bool tiny = false)
        {
            string name = NewName(dir);
            var n = new MNode(dir.Parent is null ? "/" + name : dir.Path + "/" + name, type, dir)
            {
                Source = Path.Combine(dir.Parent is null ? root : dir.Source, name),
            };
            dir.Children[name] = n;
            _all.Add(n);
            switch (type)
            {
                case NodeType.Directory:
                    Directory.CreateDirectory(n.Source);
                    break;
                case NodeType.File:
                    n.Data = new byte[tiny ? _rng.Next(0, 64) : FileSize()];
                    _rng.NextBytes(n.Data);
                    File.WriteAllBytes(n.Source, n.Data);
                    break;
                default:
                    n.Target = _rng.Next(3) switch
                    {
                        0 => dir.Children.Keys.ElementAt(_rng.Next(dir.Children.Count)), // a sibling (or itself), kept as a link
                        1 => "/nonexistent/" + NewName(dir),
                        _ => "../" + NewName(dir) + "/weiß",
                    };
                    File.CreateSymbolicLink(n.Source, n.Target);
                    break;
            }

            return n;
        }

        private int FileSize() => _rng.Next(10) switch
        {
            0 => 0,
            1 or 2 => _rng.Next(1, 200),
            3 or 4 or 5 or 6 => (_rng.Next(1, 4) * Chunk) + _rng.Next(-1, 2),
            _ => _rng.Next(0, 4 * Chunk),
        };

        private string NewName(MNode dir)
        {
            const string Letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ";
            while (true)
            {
                int length = _rng.Next(12) switch { 0 => _rng.Next(200, 256), 1 => _rng.Next(30, 80), _ => _rng.Next(1, 20) };
                var sb = new StringBuilder();
                for (int i = 0; i < length; i++)
                {
                    sb.Append(Letters[_rng.Next(Letters.Length)]);
                }

                if (_rng.Next(8) == 0)
                {
                    sb.Insert(0, _rng.Next(3) switch { 0 => "modèle-", 1 => "模型-", _ => "ü" });
                }

                if (_rng.Next(10) == 0)
                {
                    sb.Append(".safetensors");
                }

                string s = sb.ToString().Trim();
                if (s.Length > 0 && s is not "." and not ".." && Encoding.UTF8.GetByteCount(s) <= 255 && !dir.Children.ContainsKey(s))
                {
                    return s;
                }
            }
        }

        /// <summary>Modes and owners set, then the attributes the import must carry read back from the source.</summary>
        private void Finish()
        {
            uint[] fileModes = [0x1A4, 0x180, 0x124, 0x1ED, 0x1A0]; // 0644 0600 0444 0755 0640
            uint[] dirModes = [0x1ED, 0x1E8, 0x1C0, 0x1C9];          // 0755 0750 0700 0711
            var owners = new Dictionary<string, List<string>>();
            foreach (var n in _all)
            {
                if (n.Type != NodeType.Symlink)
                {
                    var modes = n.Type == NodeType.Directory ? dirModes : fileModes;
                    File.SetUnixFileMode(n.Source, (UnixFileMode)modes[_rng.Next(modes.Length)]);
                }

                string owner = _rng.Next(3) switch { 0 => "0:0", 1 => "1234:5678", _ => "65534:65534" };
                if (Posix.EUid == 0 && owner != "0:0")
                {
                    (owners.TryGetValue(owner, out var l) ? l : owners[owner] = []).Add(n.Source);
                }
            }

            foreach (var (owner, paths) in owners)
            {
                Proc.Run("chown", ["-h", owner, .. paths]);
            }

            foreach (var n in _all)
            {
                var st = Posix.LStat(n.Source);
                (n.Mode, n.Uid, n.Gid, n.MtimeNs) = (st.Mode & 0xFFF, st.Uid, st.Gid, st.MtimeNs);
            }
        }

        // ------------------------------------------------------------------ one random request

        private async Task StepAsync()
        {
            int k = _rng.Next(100);
            if (k < 20)
            {
                await LookupAsync();
            }
            else if (k < 30)
            {
                Forget();
            }
            else if (k < 37)
            {
                await GetAttrAsync();
            }
            else if (k < 42)
            {
                await OpenDirAsync();
            }
            else if (k < 62)
            {
                await ReadDirAsync();
            }
            else if (k < 65)
            {
                await ReleaseDirAsync();
            }
            else if (k < 71)
            {
                await OpenAsync();
            }
            else if (k < 86)
            {
                await ReadAsync();
            }
            else if (k < 89)
            {
                await ReleaseAsync();
            }
            else if (k < 92)
            {
                await ReadLinkAsync();
            }
            else if (k < 96)
            {
                await InvalidAsync();
            }
            else
            {
                await BurstAsync();
            }
        }

        private FuseContext Ctx(ulong node) => new(_unique += 2, node, 1000, 1000, 4242);

        private IEnumerable<MNode> Held() => _byIno.Values.Where(n => n.Refs > 0);

        /// <summary>Directories the kernel may name: the root and the held ones.</summary>
        private List<MNode> HeldDirs() => [_root, .. Held().Where(n => n.Type == NodeType.Directory)];

        private T Pick<T>(IReadOnlyList<T> from) => from[_rng.Next(from.Count)];

        private async Task LookupAsync()
        {
            var dir = Pick(HeldDirs());
            if (dir.Children.Count == 0 || _rng.Next(8) == 0)
            {
                byte[] name = _rng.Next(4) == 0 ? [0xFF, (byte)'x'] : Encoding.UTF8.GetBytes(NewName(dir));
                Log($"lookup({dir.Ino} {dir}, missing '{Encoding.UTF8.GetString(name)}')");
                ExpectNegative(await _fs.LookupAsync(Ctx(dir.Ino), dir.Ino, name), dir, name);
                return;
            }

            // A walk reaches the wide directory often: its listings take the most READDIRs.
            var child = dir.Children.Values.FirstOrDefault(c => c.Children.Count > 100 && c.Refs == 0) is { } wide && _rng.Next(2) == 0
                ? wide
                : Pick(dir.Children.Values.ToList());
            var r = await _fs.LookupAsync(Ctx(dir.Ino), dir.Ino, Encoding.UTF8.GetBytes(child.Name));
            Log($"lookup({dir.Ino}, {child}) -> {(r.IsOk ? r.Value.NodeId.ToString() : r.Error.ToString())}");
            Check(r.IsOk && r.Value.NodeId != 0, $"lookup of {child} answered {(r.IsOk ? "a negative entry" : r.Error)}");
            CheckEntry(child, r.Value, "lookup");
            child.Refs++;
            CheckCount(child);
        }

        private void ExpectNegative(FuseResult<FuseEntry> r, MNode dir, byte[] name)
        {
            string what = $"lookup of missing '{Encoding.UTF8.GetString(name)}' in {dir}";
            if (_options.NegativeTimeout > TimeSpan.Zero)
            {
                Check(r.IsOk && r.Value.NodeId == 0 && r.Value.EntryTimeout == _options.NegativeTimeout, $"{what}: {(r.IsOk ? $"node {r.Value.NodeId}" : r.Error)} instead of a negative entry");
            }
            else
            {
                Check(r.Error == Errno.ENOENT, $"{what}: {(r.IsOk ? $"node {r.Value.NodeId}" : r.Error)} instead of ENOENT");
            }
        }

        /// <summary>Whether the kernel could forget all of a node now: no handle open on it, no child of it held.</summary>
        private static bool CanDrop(MNode n) => n.Handles == 0 && !n.Children.Values.Any(c => c.Refs > 0);

        private void Forget()
        {
            var held = Held().ToList();
            if (held.Count == 0 || _rng.Next(30) == 0)
            {
                Log("forget(root, 1)");
                _fs.Forget(Node.RootIno, 1); // a no-op: the root is never freed
                Check(_fs.LookupCount(Node.RootIno) == 0, "FORGET of the root changed its count");
                return;
            }

            var n = Pick(held);
            long most = CanDrop(n) ? n.Refs : n.Refs - 1;
            if (most < 1)
            {
                return;
            }

            long count = _rng.Next(3) == 0 ? most : _rng.NextInt64(1, most + 1);
            Log($"forget({n.Ino} {n}, {count}) of {n.Refs}");
            _fs.Forget(n.Ino, (ulong)count);
            n.Refs -= count;
            CheckCount(n);
        }

        private async Task GetAttrAsync()
        {
            var candidates = Held().Append(_root).ToList();
            var n = Pick(candidates);
            ulong? fh = _files.Where(f => f.Value == n).Select(f => (ulong?)f.Key).FirstOrDefault();
            var r = await _fs.GetAttrAsync(Ctx(n.Ino), n.Ino, fh);
            Log($"getattr({n.Ino} {n}, fh {fh?.ToString() ?? "-"}) -> {r.Error}");
            Check(r.IsOk, $"getattr of {n}: {r.Error}");
            CheckAttr(n, r.Value.Attr, "getattr");
            Check(r.Value.Timeout == AttrTimeout(n), $"getattr of {n}: attribute timeout {r.Value.Timeout}");
        }

        private async Task OpenDirAsync()
        {
            if (_dirs.Count >= 6)
            {
                await ReleaseDirAsync();
                return;
            }

            var dirs = HeldDirs();
            var dir = _rng.Next(3) == 0 ? dirs.MaxBy(d => d.Children.Count)! : Pick(dirs); // the wide one often, when held
            var r = await _fs.OpenDirAsync(Ctx(dir.Ino), dir.Ino, 0);
            Log($"opendir({dir.Ino} {dir}) -> {(r.IsOk ? $"fh {r.Value.Fh}" : r.Error.ToString())}");
            Check(r.IsOk, $"opendir of {dir}: {r.Error}");
            Check(!_dirs.ContainsKey(r.Value.Fh) && !_releasedDirs.Contains(r.Value.Fh), $"opendir of {dir} gave handle {r.Value.Fh} again");
            _dirs[r.Value.Fh] = new DirHandle(dir);
            dir.Handles++;
        }

        private async Task ReadDirAsync()
        {
            if (_dirs.Count == 0)
            {
                await OpenDirAsync();
                return;
            }

            var (fh, h) = Pick(_dirs.ToList());
            bool plus = _rng.Next(2) == 0;
            int c = _rng.Next(10);
            long offset = h.Order.Count == 0 || c < 6 ? h.Cursor : c < 8 ? 0 : Pick(h.Order).Off;
            int start = offset == 0 ? 0 : h.IndexOfCookie[offset] + 1;
            int size = BufferSize(h, start, plus, out bool exactlyOne);
            var buffer = new FuseDirBuffer(new byte[size], plus);
            var e = await _fs.ReadDirAsync(Ctx(h.Dir.Ino), h.Dir.Ino, fh, offset, buffer);
            var recs = Parse(buffer.Written.Span, plus);
            Log($"readdir{(plus ? "plus" : "")}(fh {fh} {h.Dir}, offset {offset}, size {size}) -> {e}, {recs.Count} records{(recs.Count > 0 ? $" '{recs[0].Name}'..'{recs[^1].Name}'" : "")}");
            Check(e == Errno.OK, $"readdir of {h.Dir}: {e}");
            Check(buffer.Written.Length <= size, $"readdir of {h.Dir}: {buffer.Written.Length} bytes in a buffer of {size}");
            Check(!exactlyOne || recs.Count == 1, $"readdir of {h.Dir} at cookie {offset} with room for exactly the next record gave {recs.Count}");
            Absorb(h, start, recs, plus);
        }

        /// <summary>
        /// A buffer that fits the next record whatever it is (the kernel's is never smaller than a page,
        /// so an empty reply always means the end), from exactly one record up to several pages.
        /// </summary>
        private int BufferSize(DirHandle h, int start, bool plus, out bool exactlyOne)
        {
            int header = plus ? fuse_direntplus.Size : fuse_dirent.Size;
            int longest = Math.Max(2, h.Dir.Children.Keys.Select(Encoding.UTF8.GetByteCount).DefaultIfEmpty(0).Max());
            int one = Align8(header + longest);
            exactlyOne = false;
            switch (_rng.Next(5))
            {
                case 0:
                    return one;
                case 1:
                    return _rng.Next(one, 3 * one);
                case 2:
                    return 4096;
                case 3:
                    return _rng.Next(4096, 32768);
                default:
                    if (start < h.Order.Count)
                    {
                        exactlyOne = true;
                        return Align8(header + Encoding.UTF8.GetByteCount(h.Order[start].Name));
                    }

                    return one;
            }
        }

        private static int Align8(int n) => (n + 7) & ~7;

        private static List<Rec> Parse(ReadOnlySpan<byte> b, bool plus)
        {
            var list = new List<Rec>();
            int pos = 0;
            while (pos < b.Length)
            {
                Check(b.Length - pos >= (plus ? fuse_direntplus.Size : fuse_dirent.Size), $"a record cut short at byte {pos} of {b.Length}");
                fuse_entry_out entry = default;
                fuse_dirent d;
                int header;
                if (plus)
                {
                    var p = MemoryMarshal.Read<fuse_direntplus>(b[pos..]);
                    (entry, d, header) = (p.entry_out, p.dirent, fuse_direntplus.Size);
                }
                else
                {
                    (d, header) = (MemoryMarshal.Read<fuse_dirent>(b[pos..]), fuse_dirent.Size);
                }

                int length = Align8(header + (int)d.namelen);
                Check(d.namelen > 0 && pos + length <= b.Length, $"a record at byte {pos} of {b.Length} with a name of {d.namelen} bytes");
                list.Add(new Rec(Encoding.UTF8.GetString(b.Slice(pos + header, (int)d.namelen)), d.ino, d.type, (long)d.off, entry));
                pos += length;
            }

            return list;
        }

        /// <summary>Checks a reply that starts at index <paramref name="start"/> of the handle's listing against the handle and the model.</summary>
        private void Absorb(DirHandle h, int start, List<Rec> recs, bool plus)
        {
            for (int j = 0; j < recs.Count; j++)
            {
                var r = recs[j];
                int index = start + j;
                string where = $"readdir of {h.Dir}, record {index} '{r.Name}'";
                if (index < h.Order.Count)
                {
                    var was = h.Order[index];
                    Check(
                        (was.Name, was.Ino, was.Type, was.Off) == (r.Name, r.Ino, r.Type, r.Off),
                        $"{where}: the handle listed '{was.Name}' (inode {was.Ino}, cookie {was.Off}) there before; now inode {r.Ino}, cookie {r.Off}");
                }
                else
                {
                    Check(!h.Complete, $"{where}: past the end the handle showed before");
                    Check(!h.Order.Any(o => o.Name == r.Name), $"{where}: listed twice in one pass");
                    Check(!h.IndexOfCookie.ContainsKey(r.Off) && r.Off != 0, $"{where}: cookie {r.Off} given before (or 0)");
                    h.Order.Add(r);
                    h.IndexOfCookie[r.Off] = index;
                }

                CheckRecord(h.Dir, r, plus, where);
            }

            if (recs.Count == 0)
            {
                Check(start == h.Order.Count, $"readdir of {h.Dir}: an empty reply (end of directory) at record {start} of {h.Order.Count} listed before");
                if (!h.Complete)
                {
                    h.Complete = true;
                    var names = h.Order.Select(o => o.Name).Order(StringComparer.Ordinal);
                    var expected = h.Dir.Children.Keys.Append(".").Append("..").Order(StringComparer.Ordinal);
                    Check(names.SequenceEqual(expected), $"a full pass over {h.Dir} listed [{string.Join(", ", names)}] instead of [{string.Join(", ", expected)}]");
                }

                h.Cursor = 0; // the next pass starts again
            }
            else
            {
                h.Cursor = recs[^1].Off;
            }
        }

        private void CheckRecord(MNode dir, Rec r, bool plus, string where)
        {
            if (r.Name is "." or "..")
            {
                var self = r.Name == "." ? dir : dir.Parent ?? dir;
                Check(r.Ino == self.Ino && r.Type == 4, $"{where}: inode {r.Ino} type {r.Type}, expected {self.Ino} type 4");
                Check(!plus || r.Entry.nodeid == 0, $"{where}: a READDIRPLUS dot entry carries node id {r.Entry.nodeid} (it takes no reference)");
                return;
            }

            Check(dir.Children.TryGetValue(r.Name, out var child), $"{where}: no such name in the imported directory");
            See(child!, r.Ino, where);
            Check(r.Type == TypeBits(child!.Type) >> 12, $"{where}: type {r.Type} for a {child.Type}");
            if (plus)
            {
                Check(r.Entry.nodeid == r.Ino && r.Entry.attr.ino == r.Ino, $"{where}: entry node id {r.Entry.nodeid}, attr ino {r.Entry.attr.ino}, dirent ino {r.Ino}");
                CheckGeneration(child, r.Entry.generation, where);
                CheckAttr(child, r.Entry.attr, where);
                child.Refs++; // each READDIRPLUS entry is a lookup (fuse-protocol.md 8.1)
                CheckCount(child);
            }
        }

        private async Task ReleaseDirAsync()
        {
            if (_dirs.Count == 0)
            {
                return;
            }

            var (fh, h) = Pick(_dirs.ToList());
            var e = await _fs.ReleaseDirAsync(Ctx(h.Dir.Ino), h.Dir.Ino, fh);
            Log($"releasedir(fh {fh} {h.Dir}) -> {e}");
            Check(e == Errno.OK, $"releasedir of {h.Dir}: {e}");
            _dirs.Remove(fh);
            _releasedDirs.Add(fh);
            h.Dir.Handles--;
        }

        private async Task OpenAsync()
        {
            var held = Held().ToList();
            var files = held.Where(n => n.Type == NodeType.File).ToList();
            int k = _rng.Next(10);
            if (k == 0 && held.Any(n => n.Type == NodeType.Directory))
            {
                var d = Pick(held.Where(n => n.Type == NodeType.Directory).ToList());
                var r = await _fs.OpenAsync(Ctx(d.Ino), d.Ino, 0);
                Log($"open({d.Ino} {d}) of a directory -> {r.Error}");
                Check(r.Error == Errno.EISDIR, $"open of directory {d}: {(r.IsOk ? $"fh {r.Value.Fh}" : r.Error)} instead of EISDIR");
                return;
            }

            if (files.Count == 0)
            {
                await LookupAsync();
                return;
            }

            var large = files.Where(n => n.Data.Length > Chunk).ToList();
            var f = large.Count > 0 && _rng.Next(2) == 0 ? Pick(large) : Pick(files);
            if (k == 1)
            {
                int flags = _rng.Next(2) == 0 ? 1 : 2; // O_WRONLY, O_RDWR
                var r = await _fs.OpenAsync(Ctx(f.Ino), f.Ino, flags);
                Log($"open({f.Ino} {f}, flags {flags}) -> {r.Error}");
                Check(r.Error == Errno.EROFS, $"open of {f} for writing: {(r.IsOk ? $"fh {r.Value.Fh}" : r.Error)} instead of EROFS");
                return;
            }

            if (_files.Count >= 8)
            {
                await ReleaseAsync();
                return;
            }

            var o = await _fs.OpenAsync(Ctx(f.Ino), f.Ino, 0x8000); // O_RDONLY | O_LARGEFILE
            Log($"open({f.Ino} {f}) -> {(o.IsOk ? $"fh {o.Value.Fh}" : o.Error.ToString())}");
            Check(o.IsOk, $"open of {f}: {o.Error}");
            Check(o.Value.Flags.HasFlag(FopenFlags.KEEP_CACHE), $"open of {f}: flags {o.Value.Flags} without KEEP_CACHE (files are immutable)");
            Check(!_files.ContainsKey(o.Value.Fh) && !_releasedFiles.Contains(o.Value.Fh), $"open of {f} gave handle {o.Value.Fh} again");
            _files[o.Value.Fh] = f;
            f.Handles++;
        }

        private async Task ReadAsync()
        {
            if (_files.Count == 0)
            {
                await OpenAsync();
                return;
            }

            var (fh, f) = Pick(_files.ToList());
            long size = f.Data.Length;
            long offset = _rng.Next(6) switch
            {
                0 => 0,
                1 => size + _rng.Next(0, 3 * Chunk),
                2 or 3 => Math.Max(0, (_rng.Next(0, (int)(size / Chunk) + 2) * (long)Chunk) - _rng.Next(0, 300)),
                _ => _rng.NextInt64(0, size + 1),
            };
            int length = _rng.Next(5) switch
            {
                0 => _rng.Next(0, 4097),
                1 => 128 << 10,
                2 => _rng.Next(1, 3 * Chunk),
                _ => 4096 * _rng.Next(1, 33),
            };
            var buffer = new byte[length];
            var r = await _fs.ReadAsync(Ctx(f.Ino), f.Ino, fh, offset, buffer);
            try
            {
                Log($"read(fh {fh} {f} of {size}, offset {offset}, length {length}) -> {r.Error}, {r.Length} bytes");
                Check(r.Error == Errno.OK, $"read of {f} at {offset}+{length}: {r.Error}");
                CompareBytes(f, offset, length, r.IsExternal ? r.External.Span : buffer.AsSpan(0, r.Length));
            }
            finally
            {
                r.Lease?.Dispose();
            }
        }

        private static void CompareBytes(MNode f, long offset, int length, ReadOnlySpan<byte> got)
        {
            ReadOnlySpan<byte> expected = offset >= f.Data.Length ? default : f.Data.AsSpan((int)offset, (int)Math.Min(length, f.Data.Length - offset));
            Check(got.Length == expected.Length, $"read of {f} at {offset}+{length}: {got.Length} bytes where {expected.Length} were imported there");
            int at = got.CommonPrefixLength(expected);
            Check(at == got.Length, $"read of {f} at {offset}+{length}: byte {offset + at} differs from the imported one");
        }

        private async Task ReleaseAsync()
        {
            if (_files.Count == 0)
            {
                return;
            }

            var (fh, f) = Pick(_files.ToList());
            var e = await _fs.ReleaseAsync(Ctx(f.Ino), f.Ino, fh);
            Log($"release(fh {fh} {f}) -> {e}");
            Check(e == Errno.OK, $"release of {f}: {e}");
            _files.Remove(fh);
            _releasedFiles.Add(fh);
            f.Handles--;
        }

        private async Task ReadLinkAsync()
        {
            var held = Held().Where(n => n.Type != NodeType.Directory).ToList();
            if (held.Count == 0)
            {
                await LookupAsync();
                return;
            }

            var n = Pick(held);
            var r = await _fs.ReadLinkAsync(Ctx(n.Ino), n.Ino);
            Log($"readlink({n.Ino} {n}) -> {r.Error}");
            if (n.Type == NodeType.Symlink)
            {
                Check(r.IsOk && r.Value.Span.SequenceEqual(Encoding.UTF8.GetBytes(n.Target!)), $"readlink of {n}: {(r.IsOk ? $"'{Encoding.UTF8.GetString(r.Value.Span)}'" : r.Error)} instead of '{n.Target}'");
            }
            else
            {
                Check(r.Error == Errno.EINVAL, $"readlink of file {n}: {r.Error} instead of EINVAL");
            }
        }

        /// <summary>Handles that were never opened or are released, and node ids the volume does not have.</summary>
        private async Task InvalidAsync()
        {
            switch (_rng.Next(4))
            {
                case 0:
                {
                    ulong fh = _releasedFiles.Count > 0 && _rng.Next(2) == 0 ? Pick(_releasedFiles) : (1UL << 40) + (ulong)_rng.Next(1000);
                    var f = Held().FirstOrDefault(n => n.Type == NodeType.File) ?? _root;
                    var r = await _fs.ReadAsync(Ctx(f.Ino), f.Ino, fh, 0, new byte[4096]);
                    r.Lease?.Dispose();
                    Log($"read(bad fh {fh}) -> {r.Error}");
                    Check(r.Error == Errno.EBADF, $"read with handle {fh} that is not open: {r.Error} instead of EBADF");
                    break;
                }

                case 1:
                {
                    ulong fh = _releasedDirs.Count > 0 && _rng.Next(2) == 0 ? Pick(_releasedDirs) : (1UL << 40) + (ulong)_rng.Next(1000);
                    bool plus = _rng.Next(2) == 0;
                    var buffer = new FuseDirBuffer(new byte[4096], plus);
                    var e = await _fs.ReadDirAsync(Ctx(Node.RootIno), Node.RootIno, fh, 0, buffer);
                    Log($"readdir{(plus ? "plus" : "")}(bad fh {fh}) -> {e}");
                    Check(e == Errno.EBADF && buffer.Length == 0, $"readdir with handle {fh} that is not open: {e} and {buffer.Count} records instead of EBADF");
                    break;
                }

                default:
                {
                    ulong ino = _maxIno + 1 + (ulong)_rng.Next(1000);
                    var a = await _fs.GetAttrAsync(Ctx(ino), ino, null);
                    var o = await _fs.OpenAsync(Ctx(ino), ino, 0);
                    Log($"getattr/open(unknown node {ino}) -> {a.Error}/{o.Error}");
                    Check(a.Error == Errno.ENOENT && o.Error == Errno.ENOENT, $"getattr/open of node {ino}, which the volume does not have: {a.Error}/{o.Error} instead of ENOENT");
                    break;
                }
            }
        }

        /// <summary>
        /// LOOKUPs, READDIRPLUS and FORGETs at once on other threads (the kernel's readers run in
        /// parallel): a count is right whatever the order, even when forgets take a node to zero
        /// while a lookup of it is in flight.
        /// </summary>
        private async Task BurstAsync()
        {
            var lookups = new List<MNode>();
            for (int i = _rng.Next(4, 16); i > 0; i--)
            {
                var dir = Pick(HeldDirs());
                if (dir.Children.Count > 0)
                {
                    lookups.Add(Pick(dir.Children.Values.ToList()));
                }
            }

            var forgets = new List<(MNode Node, long Count)>();
            foreach (var n in Held().Where(n => n.Type != NodeType.Directory && n.Handles == 0).OrderBy(_ => _rng.Next()).Take(6))
            {
                for (long left = n.Refs; left > 0;)
                {
                    long c = _rng.NextInt64(1, left + 1);
                    forgets.Add((n, c));
                    left -= c;
                }
            }

            DirHandle? listing = null;
            ulong listingFh = 0;
            if (_rng.Next(2) == 0 && _dirs.Count > 0)
            {
                (listingFh, listing) = Pick(_dirs.ToList());
            }

            var plusBuffer = new FuseDirBuffer(new byte[_rng.Next(4096, 16384)], plus: true);
            long plusOffset = listing is null ? 0 : listing.Cursor;
            int plusStart = plusOffset == 0 ? 0 : listing!.IndexOfCookie[plusOffset] + 1;
            Log($"burst: {lookups.Count} lookups, {forgets.Count} forgets of {forgets.Select(f => f.Node).Distinct().Count()} nodes{(listing is null ? "" : $", readdirplus of {listing.Dir} at {plusOffset}")}");

            var lookupTasks = lookups.Select(n => Task.Run(async () => await _fs.LookupAsync(Ctx(n.Parent!.Ino), n.Parent!.Ino, Encoding.UTF8.GetBytes(n.Name)))).ToList();
            var forgetTasks = forgets.Select(f => Task.Run(() => _fs.Forget(f.Node.Ino, (ulong)f.Count))).ToList();
            var plusTask = listing is null
                ? Task.FromResult(Errno.OK)
                : Task.Run(async () => await _fs.ReadDirAsync(Ctx(listing.Dir.Ino), listing.Dir.Ino, listingFh, plusOffset, plusBuffer));
            await Task.WhenAll([.. lookupTasks, .. forgetTasks, plusTask]);

            foreach (var (n, c) in forgets)
            {
                n.Refs -= c;
            }

            for (int i = 0; i < lookups.Count; i++)
            {
                var r = lookupTasks[i].Result;
                Check(r.IsOk && r.Value.NodeId != 0, $"burst: lookup of {lookups[i]} answered {(r.IsOk ? "a negative entry" : r.Error)}");
                CheckEntry(lookups[i], r.Value, "burst lookup");
                lookups[i].Refs++;
            }

            if (listing is not null)
            {
                Check(plusTask.Result == Errno.OK, $"burst: readdirplus of {listing.Dir}: {plusTask.Result}");
                Absorb(listing, plusStart, Parse(plusBuffer.Written.Span, plus: true), plus: true);
            }

            CheckAll();
        }

        // ------------------------------------------------------------------ checks

        private static uint TypeBits(NodeType t) => t switch { NodeType.Directory => 0x4000u, NodeType.Symlink => 0xA000u, _ => 0x8000u };

        private TimeSpan AttrTimeout(MNode n) => n.Type == NodeType.Directory ? _options.DirectoryTimeout : FuseTime.Forever;

        private void See(MNode n, ulong ino, string where)
        {
            Check(ino != 0, $"{where}: inode 0 for {n}");
            if (n.Ino == 0)
            {
                Check(!_byIno.TryGetValue(ino, out var other), $"{where}: inode {ino} for {n}, which already names {other}");
                n.Ino = ino;
                _byIno[ino] = n;
            }
            else
            {
                Check(n.Ino == ino, $"{where}: {n} was inode {n.Ino}, now {ino}");
            }
        }

        private static void CheckGeneration(MNode n, ulong generation, string where)
        {
            Check(generation != 0, $"{where}: generation 0 for {n} (the root's)");
            n.Generation ??= generation;
            Check(n.Generation == generation, $"{where}: {n} had generation {n.Generation}, now {generation} (its record did not change)");
        }

        private void CheckEntry(MNode n, FuseEntry e, string where)
        {
            See(n, e.NodeId, where);
            CheckGeneration(n, e.Generation, where);
            CheckAttr(n, e.Attr, where);
            Check(e.EntryTimeout == _options.EntryTimeout && e.AttrTimeout == AttrTimeout(n), $"{where}: timeouts {e.EntryTimeout}/{e.AttrTimeout} for {n}");
        }

        private static void CheckAttr(MNode n, in fuse_attr a, string where)
        {
            ulong size = n.ExpectedSize;
            uint nlink = n.Type == NodeType.Directory ? 2u : 1u;
            Check(a.ino == n.Ino, $"{where}: attr ino {a.ino} for {n} (inode {n.Ino})");
            Check(a.mode == (TypeBits(n.Type) | n.Mode), $"{where}: mode {Convert.ToString(a.mode, 8)} for {n}, imported {Convert.ToString(TypeBits(n.Type) | n.Mode, 8)}");
            Check((a.uid, a.gid) == (n.Uid, n.Gid), $"{where}: owner {a.uid}:{a.gid} for {n}, imported {n.Uid}:{n.Gid}");
            Check(a.size == size && a.blocks == (size + 511) / 512, $"{where}: size {a.size} ({a.blocks} blocks) for {n}, imported {size}");
            Check(a.nlink == nlink, $"{where}: nlink {a.nlink} for {n}");
            if (n.Type != NodeType.Directory)
            {
                long mtime = (a.mtime * 1_000_000_000L) + a.mtimensec;
                Check(mtime == n.MtimeNs, $"{where}: mtime {mtime} for {n}, imported {n.MtimeNs}");
            }
        }

        private void CheckCount(MNode n) =>
            Check(_fs.LookupCount(n.Ino) == n.Refs, $"lookup count of {n} (inode {n.Ino}): the daemon holds {_fs.LookupCount(n.Ino)}, the kernel {n.Refs}");

        private void CheckAll()
        {
            foreach (var n in _byIno.Values)
            {
                CheckCount(n);
            }

            int held = _byIno.Values.Count(n => n.Refs > 0);
            Check(_fs.Nodes == held, $"the daemon holds state for {_fs.Nodes} nodes, the kernel references {held}");
            Check(_fs.OpenFiles == _files.Count, $"the daemon has {_fs.OpenFiles} open files, the kernel {_files.Count}");
            Check(_fs.Directories.Open == _dirs.Count, $"the daemon has {_fs.Directories.Open} open directories, the kernel {_dirs.Count}");
        }

        /// <summary>Every handle released and every reference forgotten, children first: the daemon holds nothing.</summary>
        private async Task TearDownAsync()
        {
            foreach (var (fh, f) in _files.ToList())
            {
                Check(await _fs.ReleaseAsync(Ctx(f.Ino), f.Ino, fh) == Errno.OK, $"release of {f}");
                f.Handles--;
            }

            foreach (var (fh, h) in _dirs.ToList())
            {
                Check(await _fs.ReleaseDirAsync(Ctx(h.Dir.Ino), h.Dir.Ino, fh) == Errno.OK, $"releasedir of {h.Dir}");
                h.Dir.Handles--;
            }

            _files.Clear();
            _dirs.Clear();
            Log("teardown: everything released and forgotten");
            foreach (var n in Held().OrderByDescending(n => n.Path.Count(ch => ch == '/')).ToList())
            {
                _fs.Forget(n.Ino, (ulong)n.Refs);
                n.Refs = 0;
                CheckCount(n);
            }

            CheckAll();
            Check(_fs.Nodes == 0, $"the daemon still holds {_fs.Nodes} nodes after the kernel forgot them all");
            Check(_fs.Directories.Snapshots == 0 && _fs.Directories.Bytes == 0, $"{_fs.Directories.Snapshots} directory listings ({_fs.Directories.Bytes} bytes) held after every handle was released");
        }

        private void Log(string line)
        {
            _recent.Enqueue(line);
            if (_recent.Count > 40)
            {
                _recent.Dequeue();
            }
        }

        private static void Check(bool ok, string message)
        {
            if (!ok)
            {
                throw new XunitException(message);
            }
        }
    }
}
