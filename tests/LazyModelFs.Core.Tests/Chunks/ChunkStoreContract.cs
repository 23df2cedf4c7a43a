using System.Runtime.InteropServices;
using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Core.Tests.Chunks;

/// <summary>
/// <see cref="ChunkStore"/> in both directions over every object store (memory twin, local
/// directory, S3 via s3rver): store then read back, and the dedup rule that a stored object's size
/// tells its codec (plain is exactly plain + 16 bytes; zstd is kept only when smaller).
/// </summary>
public abstract class ChunkStoreContract
{
    protected abstract IObjectStore OpenFresh();

    private static byte[] Random(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static byte[] Text(int n) => Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("tensor ", (n / 7) + 1)))[..n];

    private static async Task<byte[]> ReadBackAsync(ChunkStore chunks, ChunkEntry e)
    {
        var plain = new byte[e.PlainLength];
        await chunks.ReadAsync(e, plain);
        var buffer = new byte[e.PlainLength + ChunkObject.HeaderSize + 1];
        int at = await chunks.ReadIntoAsync(e, buffer);
        Assert.Equal(plain, buffer.AsSpan(at, e.PlainLength).ToArray());
        return plain;
    }

    [Fact]
    public async Task Blocks_of_a_plain_chunk_read_alone_verified_and_a_damaged_one_is_refused()
    {
        using var store = OpenFresh();
        var chunks = new ChunkStore(store);
        byte[] plain = Random((5 * 4096) + 100, 11); // five whole blocks and a short last one
        var e = (await chunks.StoreAsync(plain, ChunkCodec.None)).Entry with { Blocks = BlockHashes.Compute(plain, 4096) };
        Assert.Equal(6, e.Blocks.Count);

        var dest = new byte[3 * 4096];
        await chunks.ReadBlocksAsync(e, 3, 3, dest); // blocks 3 to 5: the last is 100 bytes
        Assert.True(dest.AsSpan(0, (2 * 4096) + 100).SequenceEqual(plain.AsSpan(3 * 4096)));
        Assert.True(dest.AsSpan((2 * 4096) + 100).IndexOfAnyExcept((byte)0) < 0, "bytes past the chunk were written");
        await chunks.ReadBlocksAsync(e, 0, 1, dest);
        Assert.True(dest.AsSpan(0, 4096).SequenceEqual(plain.AsSpan(0, 4096)));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => chunks.ReadBlocksAsync(e, 5, 2, dest));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => chunks.ReadBlocksAsync(e with { Blocks = default }, 0, 1, dest));

        // Block 1's bytes damaged in the store: block 1 is refused, naming it; block 0 still reads.
        var obj = new byte[e.StoredLength];
        await store.GetAsync(e.Id.ObjectKey(), 0, obj);
        obj[ChunkObject.HeaderSize + 4096 + 5] ^= 0x40;
        await store.PutAsync(e.Id.ObjectKey(), obj);
        var ex = await Assert.ThrowsAsync<Util.ChunkCorruptException>(() => chunks.ReadBlocksAsync(e, 0, 2, dest));
        Assert.Contains("block 1", ex.Message, StringComparison.Ordinal);
        await chunks.ReadBlocksAsync(e, 0, 1, dest);

        // An object cut short: the blocks past its end are an error, not zeros.
        await store.PutAsync(e.Id.ObjectKey(), obj.AsMemory(0, ChunkObject.HeaderSize + (4 * 4096)));
        await Assert.ThrowsAsync<Util.ChunkCorruptException>(() => chunks.ReadBlocksAsync(e, 3, 2, dest));
    }

    [Fact]
    public async Task A_plain_chunk_is_stored_once_and_reads_back()
    {
        var faulty = new FaultyObjectStore(OpenFresh());
        using var _ = faulty;
        var chunks = new ChunkStore(faulty);
        byte[] plain = Random(300_000, 1);

        var first = await chunks.StoreAsync(plain, ChunkCodec.None);
        Assert.True(first.Uploaded);
        Assert.Equal(new ChunkEntry(ChunkId.Of(plain), plain.Length, plain.Length + ChunkObject.HeaderSize, ChunkCodec.None, Util.Crc32C.Compute(plain)), first.Entry);
        Assert.Equal(plain.Length + ChunkObject.HeaderSize, await faulty.HeadAsync(first.Entry.Id.ObjectKey()));
        Assert.Equal(plain, await ReadBackAsync(chunks, first.Entry));

        var again = await chunks.StoreAsync(plain, ChunkCodec.None);
        Assert.False(again.Uploaded);
        Assert.Equal(first.Entry, again.Entry);
        Assert.Equal(1, faulty.Puts);
    }

    [Fact]
    public async Task Zstd_is_kept_only_when_smaller_and_the_size_tells_the_codec_on_dedup()
    {
        var faulty = new FaultyObjectStore(OpenFresh());
        using var _ = faulty;
        var chunks = new ChunkStore(faulty);
        byte[] text = Text(200_000);
        byte[] random = Random(200_000, 2);

        var z = await chunks.StoreAsync(text, ChunkCodec.Zstd);
        Assert.True(z.Uploaded);
        Assert.Equal(ChunkCodec.Zstd, z.Entry.Codec);
        Assert.True(z.Entry.StoredLength < text.Length / 10, $"stored {z.Entry.StoredLength} bytes");
        Assert.Equal(text, await ReadBackAsync(chunks, z.Entry));

        var r = await chunks.StoreAsync(random, ChunkCodec.Zstd);
        Assert.Equal(ChunkCodec.None, r.Entry.Codec); // random bytes do not compress: stored plain
        Assert.Equal(random.Length + ChunkObject.HeaderSize, r.Entry.StoredLength);
        Assert.Equal(random, await ReadBackAsync(chunks, r.Entry));

        // Found again by a HEAD alone, whatever codec the second import wants: the size says which.
        Assert.Equal(z.Entry, (await chunks.StoreAsync(text, ChunkCodec.None)).Entry);
        Assert.Equal(r.Entry, (await chunks.StoreAsync(random, ChunkCodec.Zstd)).Entry);
        Assert.Equal((ChunkCodec.Zstd, z.Entry.StoredLength), await chunks.FindAsync(z.Entry.Id, text.Length));
        Assert.Equal(2, faulty.Puts);
    }

    [Theory]
    [InlineData(0)]                     // an empty object
    [InlineData(ChunkObject.HeaderSize)] // a header and nothing else
    [InlineData(-1)]                    // one byte longer than a plain object
    public async Task An_object_of_a_size_no_chunk_object_has_is_stored_again(int size)
    {
        var faulty = new FaultyObjectStore(OpenFresh());
        using var _ = faulty;
        var chunks = new ChunkStore(faulty);
        byte[] plain = Random(50_000, 3);
        var id = ChunkId.Of(plain);
        await faulty.PutAsync(id.ObjectKey(), new byte[size >= 0 ? size : plain.Length + ChunkObject.HeaderSize + 1]);

        Assert.Null(await chunks.FindAsync(id, plain.Length));
        var stored = await chunks.StoreAsync(plain, ChunkCodec.None);
        Assert.True(stored.Uploaded);
        Assert.Equal(plain, await ReadBackAsync(chunks, stored.Entry));
    }

    [Fact]
    public async Task A_plain_chunk_goes_out_from_the_callers_slot_without_a_copy()
    {
        var faulty = new FaultyObjectStore(OpenFresh());
        using var _ = faulty;
        var chunks = new ChunkStore(faulty);
        byte[] plain = Random(100_000, 4);
        var slot = new byte[ChunkObject.HeaderSize + plain.Length + 64]; // an importer buffer is larger than the chunk
        plain.CopyTo(slot, ChunkObject.HeaderSize);
        ArraySegment<byte> sent = default;
        faulty.SeePut = (_, data) => Assert.True(MemoryMarshal.TryGetArray(data, out sent));

        var stored = await chunks.StoreAsync(ChunkId.Of(plain), slot.AsMemory(0, ChunkObject.HeaderSize + plain.Length), ChunkCodec.None);
        Assert.Same(slot, sent.Array);
        Assert.Equal((0, ChunkObject.HeaderSize + plain.Length), (sent.Offset, sent.Count));
        Assert.Equal(plain, await ReadBackAsync(chunks, stored.Entry));
    }
}

public sealed class MemoryChunkStoreTests : ChunkStoreContract
{
    protected override IObjectStore OpenFresh() => new MemoryObjectStore();
}

public sealed class LocalChunkStoreTests : ChunkStoreContract, IDisposable
{
    private readonly TempDir _dir = new();

    protected override IObjectStore OpenFresh() => ObjectStores.Open($"file://{_dir[Guid.NewGuid().ToString("N")]}", create: true);

    public void Dispose() => _dir.Dispose();
}

public sealed class S3ChunkStoreTests(Storage.S3ObjectStoreTests.Server server) : ChunkStoreContract, IClassFixture<Storage.S3ObjectStoreTests.Server>
{
    protected override IObjectStore OpenFresh() =>
        ObjectStores.Open(server.S3.NewStorageUrl(), new StorageOptions { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey });
}
