using System.Buffers.Binary;
using LazyModelFs.Chunks;
using LazyModelFs.Fuse;
using LazyModelFs.Meta;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests.Faults;

/// <summary>Damaged metadata under the VFS, no kernel: an error, never wrong bytes.</summary>
public sealed class DamagedTableTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-damaged");

    [Fact]
    public async Task A_damaged_chunk_table_makes_open_fail_with_EIO_not_wrong_bytes()
    {
        var kv = new MemoryKv();
        var meta = new KvMetaStore(kv);
        var settings = new VolumeSettings { Name = "t", Uuid = Guid.NewGuid(), ChunkSize = 1 << 20, Compression = "none", Storage = "memory://", CreatedAt = DateTimeOffset.UtcNow };
        await meta.FormatAsync(settings, new Node(Node.RootIno, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 0, 0, Node.RootIno));
        using var v = LazyModelFs.Volume.Create(meta, settings, new MemoryObjectStore());
        File.WriteAllBytes(_dir["f.bin"], TestData.Random(3 << 20, 1));
        await new LazyModelFs.Import.Importer(v, new LazyModelFs.Import.ImportOptions()).RunAsync([_dir["f.bin"]], "/f.bin");
        ulong ino = (await v.Namespace.ResolveAsync("/f.bin"))!.Ino;
        var key = new byte[9];
        key[0] = (byte)'C';
        BinaryPrimitives.WriteUInt64BigEndian(key.AsSpan(1), ino);
        kv.Write(tx =>
        {
            var t = tx.Get(key)!;
            t[ChunkTable.HeaderSize + 33] ^= 0x10; // a plain length that no longer adds up
            tx.Set(key, t);
            return 0;
        });

        var log = new ListLogger();
        using var mem = new LazyModelFs.Cache.MemoryTier(8L * LazyModelFs.Cache.CachedChunk.BufferSizeFor(1 << 20), 1 << 20);
        using var reader = new LazyModelFs.Cache.ChunkCache(v.Chunks, mem, null);
        var fs = new LmfsFileSystem(v, reader, null, log);
        var open = await fs.OpenAsync(new FuseContext(1, ino, 0, 0, 1), ino, 0);
        Assert.Equal(Errno.EIO, open.Error);
        Assert.Contains(log.Lines, l => l.Contains("chunk table", StringComparison.Ordinal));
    }

    public void Dispose() => _dir.Dispose();
}
