using LazyModelFs.Meta;
using LazyModelFs.Storage;

namespace LazyModelFs.Testing;

/// <summary>Builds a formatted volume over the in-memory twins (memory:// URLs cannot be reopened).</summary>
public static class TwinVolume
{
    /// <param name="blockSize">Format version 2 with this block size (the default: the volume default, or the chunk size if smaller), 0 for version 1.</param>
    public static async Task<Volume> CreateAsync(IObjectStore store, int chunkSize, string compression, int? blockSize = null)
    {
        var meta = new KvMetaStore(new MemoryKv());
        int blocks = blockSize ?? Math.Min(VolumeSettings.DefaultBlockSize, chunkSize);
        var settings = new VolumeSettings
        {
            Name = "twin",
            Uuid = Guid.NewGuid(),
            ChunkSize = chunkSize,
            FormatVersion = blocks == 0 ? VolumeSettings.OldestFormatVersion : VolumeSettings.CurrentFormatVersion,
            BlockSize = blocks,
            Compression = compression,
            Storage = "memory://",
            CreatedAt = DateTimeOffset.UtcNow,
        };
        await meta.FormatAsync(settings, new Node(Node.RootIno, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 0, 0, Node.RootIno));
        return Volume.Create(meta, settings, store);
    }
}
