using LazyModelFs.Check;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Meta;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Check;

/// <summary>
/// <see cref="VolumeCheck"/> (lmfs fsck) and repair by re-import, over real engine pairs: SQLite +
/// local directory and Redis + s3rver. Objects are damaged through the store port, as a failing
/// disk or a bad copy would leave them.
/// </summary>
public abstract class VolumeCheckContract : IDisposable
{
    private const int ChunkSize = 1 << 20;

    protected TempDir Dir { get; } = new("lmfs-check");

    protected abstract (string Meta, string Storage, StorageOptions Options) NewVolume();

    private async Task<Volume> FormatAsync(string compression = "none")
    {
        var (meta, storage, opts) = NewVolume();
        await Volume.FormatAsync(meta, storage, opts, ChunkSize, compression, "test");
        return await Volume.OpenAsync(meta, opts);
    }

    private string Source(string name, int size, int seed) => Dir.WriteRandom(name, size, seed);

    private static async Task<ChunkEntry> RowAsync(Volume v, string path, int index)
    {
        var n = await v.Namespace.ResolveAsync(path) ?? throw new InvalidOperationException(path);
        return (await v.Meta.GetChunkTableAsync(n.Ino, ChunkSize))![index];
    }

    private static async Task<byte[]> ObjectAsync(Volume v, ChunkEntry e)
    {
        var b = new byte[e.StoredLength + 1];
        int n = await v.Store.GetAsync(e.Id.ObjectKey(), 0, b);
        return b[..n];
    }

    private static async Task<byte[]> ReadAsync(Volume v, string path)
    {
        var n = await v.Namespace.ResolveAsync(path) ?? throw new InvalidOperationException(path);
        using var ms = new MemoryStream();
        await FileReader.CopyToAsync(v, n, ms);
        return ms.ToArray();
    }

    /// <summary>A volume with /m/a.bin (3 chunks and a bit), /m/b.bin (1 chunk) and /other/c.bin.</summary>
    private async Task<Volume> PopulatedAsync(string compression = "none")
    {
        var v = await FormatAsync(compression);
        await new Importer(v, new ImportOptions()).RunAsync([Source("a.bin", (3 * ChunkSize) + 100, 1)], "/m/a.bin");
        await new Importer(v, new ImportOptions()).RunAsync([Source("b.bin", 1000, 2)], "/m/b.bin");
        await new Importer(v, new ImportOptions()).RunAsync([Source("c.bin", ChunkSize + 5, 3)], "/other/c.bin");
        return v;
    }

    private static async Task FlipByteAsync(Volume v, ChunkEntry e)
    {
        var obj = await ObjectAsync(v, e);
        obj[^1] ^= 0x40;
        await v.Store.PutAsync(e.Id.ObjectKey(), obj);
    }

    [Fact]
    public async Task A_healthy_volume_checks_clean_with_and_without_verify()
    {
        using var v = await PopulatedAsync();
        var s = await new VolumeCheck(v, new CheckOptions()).RunAsync("/");
        Assert.True(s.Healthy);
        Assert.Equal(3, s.Files);
        Assert.Equal(4 + 1 + 2, s.Chunks);
        Assert.Equal((3 * ChunkSize) + 100 + 1000 + ChunkSize + 5, s.Bytes);
        Assert.Equal(0, s.BytesRead);
        var verified = await new VolumeCheck(v, new CheckOptions { Verify = true }).RunAsync("/");
        Assert.True(verified.Healthy);
        Assert.True(verified.BytesRead > s.Bytes);
    }

    [Fact]
    public async Task A_deleted_object_is_missing_and_names_the_file_and_chunk()
    {
        using var v = await PopulatedAsync();
        var e = await RowAsync(v, "/m/a.bin", 2);
        await v.Store.DeleteAsync(e.Id.ObjectKey());
        var s = await new VolumeCheck(v, new CheckOptions()).RunAsync("/");
        var d = Assert.Single(s.Damaged);
        Assert.Equal("/m/a.bin", d.Path);
        var c = Assert.Single(d.Chunks);
        Assert.Equal((2, e.Id, ChunkProblem.Missing), (c.Index, c.Id, c.Problem));
    }

    [Fact]
    public async Task A_truncated_object_has_the_wrong_size()
    {
        using var v = await PopulatedAsync();
        var e = await RowAsync(v, "/m/b.bin", 0);
        await v.Store.PutAsync(e.Id.ObjectKey(), (await ObjectAsync(v, e)).AsMemory(0, 500));
        var d = Assert.Single((await new VolumeCheck(v, new CheckOptions()).RunAsync("/")).Damaged);
        Assert.Equal("/m/b.bin", d.Path);
        Assert.Equal(ChunkProblem.WrongSize, Assert.Single(d.Chunks).Problem);
    }

    [Fact]
    public async Task A_flipped_byte_is_found_only_by_verify()
    {
        using var v = await PopulatedAsync();
        var e = await RowAsync(v, "/other/c.bin", 1);
        await FlipByteAsync(v, e);
        Assert.True((await new VolumeCheck(v, new CheckOptions()).RunAsync("/")).Healthy);
        var d = Assert.Single((await new VolumeCheck(v, new CheckOptions { Verify = true }).RunAsync("/")).Damaged);
        Assert.Equal("/other/c.bin", d.Path);
        var c = Assert.Single(d.Chunks);
        Assert.Equal((1, ChunkProblem.FailsVerification, false), (c.Index, c.Problem, c.Removed));
        Assert.Contains("SHA-256", c.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Path_limits_the_walk()
    {
        using var v = await PopulatedAsync();
        await v.Store.DeleteAsync((await RowAsync(v, "/other/c.bin", 0)).Id.ObjectKey());
        var m = await new VolumeCheck(v, new CheckOptions()).RunAsync("/m");
        Assert.True(m.Healthy);
        Assert.Equal(2, m.Files);
        var file = await new VolumeCheck(v, new CheckOptions()).RunAsync("/other/c.bin");
        Assert.Equal(1, file.Files);
        Assert.Equal("/other/c.bin", Assert.Single(file.Damaged).Path);
        var missing = await Assert.ThrowsAsync<LmfsException>(() => new VolumeCheck(v, new CheckOptions()).RunAsync("/nope"));
        Assert.Equal(2, missing.ExitCode);
    }

    [Theory]
    [InlineData("flip", "none")]
    [InlineData("truncate", "none")]
    [InlineData("flip", "zstd")]
    public async Task Repair_then_reimport_of_the_same_source_makes_the_file_readable(string damage, string compression)
    {
        using var v = await FormatAsync(compression);
        var bytes = new byte[(2 * ChunkSize) + 7];
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i % 7); // compressible, so zstd stores it compressed
        }

        string src = Dir["r.bin"];
        File.WriteAllBytes(src, bytes);
        await new Importer(v, new ImportOptions()).RunAsync([src], "/r.bin");
        // A second file sharing the chunks: repairing one repairs both.
        await new Importer(v, new ImportOptions()).RunAsync([src], "/copy/r.bin");
        var e = await RowAsync(v, "/r.bin", 1);
        if (damage == "flip")
        {
            await FlipByteAsync(v, e);
        }
        else
        {
            await v.Store.PutAsync(e.Id.ObjectKey(), (await ObjectAsync(v, e)).AsMemory(0, (e.StoredLength / 2)));
        }

        await Assert.ThrowsAnyAsync<LmfsException>(() => ReadAsync(v, "/r.bin"));
        var s = await new VolumeCheck(v, new CheckOptions { Verify = true, Repair = true }).RunAsync("/");
        Assert.Equal(2, s.DamagedFiles);
        Assert.Equal(1, s.RemovedObjects);
        Assert.Null(await v.Store.HeadAsync(e.Id.ObjectKey()));

        var summary = await new Importer(v, new ImportOptions { Overwrite = true }).RunAsync([src], "/r.bin");
        Assert.Equal(1, summary.Files);
        Assert.Equal(bytes, await ReadAsync(v, "/r.bin"));
        Assert.Equal(bytes, await ReadAsync(v, "/copy/r.bin"));
        Assert.True((await new VolumeCheck(v, new CheckOptions { Verify = true }).RunAsync("/")).Healthy);
    }

    [Fact]
    public async Task Reimport_repairs_a_missing_or_truncated_object_without_fsck()
    {
        using var v = await PopulatedAsync();
        var gone = await RowAsync(v, "/m/a.bin", 0);
        var cut = await RowAsync(v, "/m/a.bin", 3);
        await v.Store.DeleteAsync(gone.Id.ObjectKey());
        await v.Store.PutAsync(cut.Id.ObjectKey(), (await ObjectAsync(v, cut)).AsMemory(0, 50));

        // Before the fix this import skipped the file as unchanged, leaving it unreadable.
        var summary = await new Importer(v, new ImportOptions()).RunAsync([Dir["a.bin"]], "/m/a.bin");
        Assert.Equal(0, summary.UnchangedFiles);
        Assert.Equal(File.ReadAllBytes(Dir["a.bin"]), await ReadAsync(v, "/m/a.bin"));
        Assert.True((await new VolumeCheck(v, new CheckOptions { Verify = true }).RunAsync("/")).Healthy);
        Assert.Equal(1, (await new Importer(v, new ImportOptions()).RunAsync([Dir["a.bin"]], "/m/a.bin")).UnchangedFiles);
    }

    [Fact]
    public async Task Repair_never_deletes_an_object_that_is_whole_for_its_id()
    {
        using var v = await PopulatedAsync();
        var e = await RowAsync(v, "/m/b.bin", 0);
        // A damaged row: it names b.bin's healthy object with the wrong stored length.
        var wrong = e with { StoredLength = e.StoredLength - 1, Codec = ChunkCodec.Zstd };
        long now = Namespace.NowNs();
        ulong ino = await v.Meta.AllocateInodeAsync();
        var node = new Node(ino, NodeType.File, 0x1A4, 0, 0, 1, (ulong)e.PlainLength, now, now, Node.RootIno);
        Assert.Equal(MetaResult.Ok, await v.Namespace.LinkAsync(Node.RootIno, "bad-row.bin", node, new ChunkTable([wrong], ChunkSize), overwrite: false));

        var s = await new VolumeCheck(v, new CheckOptions { Verify = true, Repair = true }).RunAsync("/");
        var d = Assert.Single(s.Damaged);
        Assert.Equal("/bad-row.bin", d.Path);
        var c = Assert.Single(d.Chunks);
        Assert.Equal((ChunkProblem.WrongSize, false), (c.Problem, c.Removed));
        Assert.Equal(0, s.RemovedObjects);
        Assert.Equal(File.ReadAllBytes(Dir["b.bin"]), await ReadAsync(v, "/m/b.bin"));
    }

    [Fact]
    public async Task Verify_finds_a_row_whose_block_hash_does_not_match_its_chunk()
    {
        using var v = await PopulatedAsync();
        var e = await RowAsync(v, "/m/b.bin", 0);
        Assert.True(e.HasBlocks, "a new volume is format version 2");
        var hashes = e.Blocks.Span.ToArray();
        hashes[^1] ^= 1; // the last block's hash: whole-chunk reads still verify (by the id), partial reads of that block fail
        var forged = e with { Blocks = new BlockHashes(e.Blocks.BlockSize, hashes) };
        long now = Namespace.NowNs();
        ulong ino = await v.Meta.AllocateInodeAsync();
        var node = new Node(ino, NodeType.File, 0x1A4, 0, 0, 1, (ulong)e.PlainLength, now, now, Node.RootIno);
        Assert.Equal(MetaResult.Ok, await v.Namespace.LinkAsync(Node.RootIno, "bad-blocks.bin", node, new ChunkTable([forged], ChunkSize), overwrite: false));

        Assert.True((await new VolumeCheck(v, new CheckOptions()).RunAsync("/")).Healthy); // HEADs cannot tell
        var s = await new VolumeCheck(v, new CheckOptions { Verify = true, Repair = true }).RunAsync("/");
        var d = Assert.Single(s.Damaged);
        Assert.Equal("/bad-blocks.bin", d.Path);
        var c = Assert.Single(d.Chunks);
        Assert.Equal((ChunkProblem.FailsVerification, false), (c.Problem, c.Removed)); // the object is whole for its id: kept
        Assert.Contains($"block {e.Blocks.Count - 1}", c.Detail, StringComparison.Ordinal);
        Assert.Equal(File.ReadAllBytes(Dir["b.bin"]), await ReadAsync(v, "/m/b.bin"));
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            Dir.Dispose();
        }
    }
}

public sealed class SqliteLocalVolumeCheckTests : VolumeCheckContract
{
    protected override (string, string, StorageOptions) NewVolume() => RedisAndS3.NewEmbeddedVolume(Dir);
}

public sealed class RedisS3VolumeCheckTests(RedisAndS3 servers) : VolumeCheckContract, IClassFixture<RedisAndS3>
{
    protected override (string, string, StorageOptions) NewVolume() => servers.NewVolume();
}
