using LazyModelFs.Meta;
using LazyModelFs.Storage;

namespace LazyModelFs.Testing;

/// <summary>Builds a formatted volume over the in-memory twins (memory:// URLs cannot be reopened).</summary>
public static class TwinVolume
{
    public static async Task<Volume> CreateAsync(IObjectStore store, int chunkSize, string compression)
    {
        var meta = new KvMetaStore(new MemoryKv());
        var settings = new VolumeSettings { Name = "twin", Uuid = Guid.NewGuid(), ChunkSize = chunkSize, Compression = compression, Storage = "memory://", CreatedAt = DateTimeOffset.UtcNow };
        await meta.FormatAsync(settings, new Node(Node.RootIno, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 0, 0, Node.RootIno));
        return Volume.Create(meta, settings, store);
    }
}
