using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Storage;
using LazyModelFs.Util;

namespace LazyModelFs;

/// <summary>An opened volume: its metadata engine, settings, object store and namespace.</summary>
public sealed class Volume : IDisposable
{
    public const int MinChunkSize = 1 << 20;
    public const int MaxChunkSize = 64 << 20;
    public const int DefaultChunkSize = 4 << 20;

    /// <inheritdoc cref="VolumeSettings.DefaultBlockSize"/>
    public const int DefaultBlockSize = VolumeSettings.DefaultBlockSize;

    private Volume(IMetaStore meta, VolumeSettings settings, IObjectStore store)
    {
        Meta = meta;
        Settings = settings;
        Store = store;
        Chunks = new ChunkStore(store);
        Namespace = new Namespace(meta, settings);
    }

    /// <summary>Wires an already formatted volume from its parts (tests with in-memory twins, embedding).</summary>
    public static Volume Create(IMetaStore meta, VolumeSettings settings, IObjectStore store) => new(meta, settings, store);

    public IMetaStore Meta { get; }

    public VolumeSettings Settings { get; }

    public IObjectStore Store { get; }

    public ChunkStore Chunks { get; }

    public Namespace Namespace { get; }

    public ChunkCodec Codec => Settings.Compression == "zstd" ? ChunkCodec.Zstd : ChunkCodec.None;

    /// <summary>Opens a formatted volume; the object store comes from its settings (credentials from <paramref name="storage"/> or the environment).</summary>
    public static async Task<Volume> OpenAsync(string metaUrl, StorageOptions? storage = null, CancellationToken ct = default)
    {
        var meta = await MetaStores.OpenAsync(metaUrl, create: false, ct).ConfigureAwait(false);
        try
        {
            var settings = await meta.LoadSettingsAsync(ct).ConfigureAwait(false)
                ?? throw await MetaStores.NotFormattedAsync(meta, metaUrl, ct).ConfigureAwait(false);
            var store = ObjectStores.Open(settings.Storage, storage);
            return new Volume(meta, settings, store);
        }
        catch
        {
            meta.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Formats a new volume: checks the object store (reachable, bucket present, credentials accepted)
    /// before writing anything, then writes settings and the root directory in one transaction.
    /// </summary>
    /// <param name="blockSize">
    /// Bytes per hashed block (format version 2: a READ fetches and verifies only the blocks it needs);
    /// 0 formats a version 1 volume (whole-chunk reads only, readable by lmfs releases before block hashes).
    /// </param>
    public static async Task<VolumeSettings> FormatAsync(string metaUrl, string storageUrl, StorageOptions storage, int chunkSize, string compression, string name, int blockSize = DefaultBlockSize, CancellationToken ct = default)
    {
        if (chunkSize < MinChunkSize || chunkSize > MaxChunkSize || (chunkSize & (chunkSize - 1)) != 0)
        {
            throw new LmfsException($"chunk size {Sizes.Format(chunkSize)} is not allowed", "use a power of two from 1M to 64M (default 4M)", 2);
        }

        if (blockSize != 0 && ChunkTable.CheckBlockSize(blockSize, chunkSize) is { } why)
        {
            throw new LmfsException($"block size {Sizes.Format(blockSize)} is not allowed: {why}", $"use a power of two from {Sizes.Format(Math.Max(BlockHashes.MinBlockSize, chunkSize / BlockHashes.MaxBlocks))} to the chunk size (default {Sizes.Format(DefaultBlockSize)}), or 0 for a version 1 volume without block hashes", 2);
        }

        if (compression is not ("none" or "zstd"))
        {
            throw new LmfsException($"compression '{compression}' is not supported", "use none (default) or zstd", 2);
        }

        // Parse and validate both URLs before touching anything.
        string canonicalStorage = ObjectStores.Canonical(storageUrl, storage);
        ObjectStores.Open(storageUrl, storage).Dispose();
        string? sqlitePath = MetaStores.SqlitePath(metaUrl);
        bool createdMeta = sqlitePath is not null && !File.Exists(sqlitePath);
        var settings = new VolumeSettings
        {
            Name = name,
            Uuid = Guid.NewGuid(),
            ChunkSize = chunkSize,
            FormatVersion = blockSize == 0 ? VolumeSettings.OldestFormatVersion : VolumeSettings.CurrentFormatVersion,
            BlockSize = blockSize,
            Compression = compression,
            Storage = canonicalStorage,
            CreatedAt = DateTimeOffset.UtcNow,
        };

        try
        {
            using var meta = await MetaStores.OpenAsync(metaUrl, create: true, ct).ConfigureAwait(false);
            if (await meta.LoadSettingsAsync(ct).ConfigureAwait(false) is { } existing)
            {
                throw new LmfsException(
                    $"{meta.Describe} already holds volume '{existing.Name}' ({existing.Uuid}, formatted {existing.CreatedAt:yyyy-MM-dd})",
                    "formatting again would orphan its data; use another metadata URL (or ?volume=NAME on Redis)",
                    2);
            }

            // The store must be reachable, exist and accept the credentials before the volume is recorded.
            using (var store = ObjectStores.Open(storageUrl, storage, create: true))
            {
                await store.CheckAsync(ct).ConfigureAwait(false);
            }

            long now = Namespace.NowNs();
            var root = new Node(Node.RootIno, NodeType.Directory, 0x1ED, 0, 0, 2, 0, now, now, Node.RootIno);
            if (!await meta.FormatAsync(settings, root, ct).ConfigureAwait(false))
            {
                throw new LmfsException($"{meta.Describe} was formatted by another process just now", "use another metadata URL", 2);
            }
        }
        catch when (createdMeta)
        {
            // Bad input changes nothing: remove the database file this call created.
            foreach (var suffix in new[] { "", "-wal", "-shm" })
            {
                if (File.Exists(sqlitePath + suffix))
                {
                    File.Delete(sqlitePath + suffix); // (a missing directory would make File.Delete throw and hide the real error)
                }
            }

            throw;
        }

        return settings;
    }

    public void Dispose()
    {
        Store.Dispose();
        Meta.Dispose();
    }
}
