using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using Xunit;

namespace LazyModelFs.Core.Tests.Meta;

/// <summary>
/// The one contract every metadata engine passes (in-memory twin, SQLite, Redis). Each test
/// formats a fresh volume from <see cref="OpenFreshAsync"/>.
/// </summary>
public abstract class MetaStoreContract
{
    protected const int ChunkSize = 1 << 20;

    protected abstract Task<IMetaStore> OpenFreshAsync();

    /// <summary>Damages <paramref name="m"/>'s metadata behind the port: removes an inode's record (its entry stays).</summary>
    protected abstract Task DeleteNodeRecordAsync(IMetaStore m, ulong ino);

    /// <summary>Damages <paramref name="m"/>'s metadata behind the port: stores <paramref name="value"/> as an entry's raw value.</summary>
    protected abstract Task SetRawEntryAsync(IMetaStore m, ulong parent, string name, byte[] value);

    internal static VolumeSettings NewSettingsForTests() => NewSettings();

    protected static VolumeSettings NewSettings() => new()
    {
        Name = "contract",
        Uuid = Guid.NewGuid(),
        ChunkSize = ChunkSize,
        Compression = "none",
        Storage = "file:///tmp/none",
        CreatedAt = DateTimeOffset.UtcNow,
    };

    private static Node Root() => new(Node.RootIno, NodeType.Directory, 0x1ED, 0, 0, 2, 0, 1, 1, Node.RootIno);

    protected async Task<(IMetaStore Meta, Namespace Ns)> FormattedAsync()
    {
        var m = await OpenFreshAsync();
        var s = NewSettings();
        Assert.True(await m.FormatAsync(s, Root()));
        return (m, new Namespace(m, s));
    }

    private static ChunkTable Table(params string[] contents) =>
        new(contents.Select((c, i) =>
        {
            int plain = i == contents.Length - 1 ? c.Length : ChunkSize;
            return new ChunkEntry(ChunkId.Of(System.Text.Encoding.UTF8.GetBytes(c)), plain, plain + ChunkObject.HeaderSize, ChunkCodec.None, 0);
        }).ToList(), ChunkSize);

    private static async Task<Node> NewFile(IMetaStore m, ulong parent, ulong size) =>
        new(await m.AllocateInodeAsync(), NodeType.File, 0x1A4, 1000, 1000, 1, size, 5, 6, parent);

    [Fact]
    public async Task Unformatted_volume_has_no_settings_and_formats_once()
    {
        using var m = await OpenFreshAsync();
        Assert.Null(await m.LoadSettingsAsync());
        var s = NewSettings();
        Assert.True(await m.FormatAsync(s, Root()));
        Assert.Equal(s, await m.LoadSettingsAsync());
        Assert.False(await m.FormatAsync(NewSettings(), Root()));
        Assert.Equal(s.Uuid, (await m.LoadSettingsAsync())!.Uuid);
        Assert.Equal(NodeType.Directory, (await m.GetNodeAsync(Node.RootIno))!.Type);
        Assert.Equal(new VolumeUsage(0, 1), await m.GetUsageAsync());
    }

    [Fact]
    public async Task Created_file_is_visible_with_its_chunk_table_references_and_usage()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var table = Table("a", "b", "a");
        var node = await NewFile(m, Node.RootIno, 2 * (ulong)ChunkSize + 1);
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(Node.RootIno, "model.safetensors", node, table)));

        var e = await m.LookupAsync(Node.RootIno, "model.safetensors");
        Assert.Equal(new DirEntry("model.safetensors", node.Ino, NodeType.File), e);
        Assert.Equal(node, await m.GetNodeAsync(node.Ino));
        Assert.Equal(table.Entries, (await m.GetChunkTableAsync(node.Ino, ChunkSize))!.Entries);
        Assert.Equal(2, await m.GetChunkRefCountAsync(table[0].Id));
        Assert.Equal(1, await m.GetChunkRefCountAsync(table[1].Id));
        Assert.Equal(0, await m.GetChunkRefCountAsync(ChunkId.Of("zzz"u8)));
        Assert.Equal(new VolumeUsage((long)node.Size, 2), await m.GetUsageAsync());
        Assert.Null(await m.LookupAsync(Node.RootIno, "missing"));
        Assert.Null(await m.GetNodeAsync(9999));
        Assert.Null(await m.GetChunkTableAsync(9999, ChunkSize));
    }

    [Fact]
    public async Task Creating_an_existing_name_without_replace_changes_nothing()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var first = await NewFile(m, Node.RootIno, 1);
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(Node.RootIno, "f", first, Table("x"))));
        var second = await NewFile(m, Node.RootIno, 1);
        Assert.Equal(MetaResult.Exists, await m.CreateAsync(new EntryCreate(Node.RootIno, "f", second, Table("y"))));
        Assert.Equal(first.Ino, (await m.LookupAsync(Node.RootIno, "f"))!.Value.Ino);
        Assert.Null(await m.GetNodeAsync(second.Ino));
        Assert.Equal(0, await m.GetChunkRefCountAsync(ChunkId.Of("y"u8)));
    }

    [Fact]
    public async Task Replace_is_atomic_and_moves_references()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        var old = await NewFile(m, Node.RootIno, 1);
        var oldTable = Table("old");
        await m.CreateAsync(new EntryCreate(Node.RootIno, "f", old, oldTable));
        var seen = await ns.DescribeAsync((await m.LookupAsync(Node.RootIno, "f"))!.Value);

        var nu = await NewFile(m, Node.RootIno, 3);
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(Node.RootIno, "f", nu, Table("new"), seen)));
        Assert.Equal(nu.Ino, (await m.LookupAsync(Node.RootIno, "f"))!.Value.Ino);
        Assert.Null(await m.GetNodeAsync(old.Ino));
        Assert.Null(await m.GetChunkTableAsync(old.Ino, ChunkSize));
        Assert.Equal(0, await m.GetChunkRefCountAsync(oldTable[0].Id));
        Assert.Equal(1, await m.GetChunkRefCountAsync(ChunkId.Of("new"u8)));
        Assert.Equal(new VolumeUsage(3, 2), await m.GetUsageAsync());

        // The condition is stale now: a second replace based on the old view must not apply.
        var third = await NewFile(m, Node.RootIno, 5);
        Assert.Equal(MetaResult.Conflict, await m.CreateAsync(new EntryCreate(Node.RootIno, "f", third, Table("third"), seen)));
        Assert.Equal(nu.Ino, (await m.LookupAsync(Node.RootIno, "f"))!.Value.Ino);
        Assert.Equal(0, await m.GetChunkRefCountAsync(ChunkId.Of("third"u8)));
    }

    [Fact]
    public async Task Parent_must_be_an_existing_directory()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var f = await NewFile(m, Node.RootIno, 1);
        await m.CreateAsync(new EntryCreate(Node.RootIno, "file", f, Table("x")));
        Assert.Equal(MetaResult.NoParent, await m.CreateAsync(new EntryCreate(f.Ino, "child", await NewFile(m, f.Ino, 1), Table("y"))));
        Assert.Equal(MetaResult.NoParent, await m.CreateAsync(new EntryCreate(424242, "child", await NewFile(m, 424242, 1), Table("y"))));
    }

    [Fact]
    public async Task Directories_list_in_byte_order_and_remove_only_when_empty()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        ulong dir = await ns.MkdirAllAsync("/models/llama");
        Assert.Equal(dir, await ns.MkdirAllAsync("models/llama/")); // idempotent
        string[] names = ["b", "a", "é", "Z", "a.b", "z", "日本"];
        foreach (var n in names)
        {
            await m.CreateAsync(new EntryCreate(dir, n, await NewFile(m, dir, 1), Table(n)));
        }

        var listed = (await m.ListAsync(dir)).Select(e => e.Name).ToArray();
        var byBytes = names.OrderBy(n => System.Text.Encoding.UTF8.GetBytes(n), Comparer<byte[]>.Create((x, y) => x.AsSpan().SequenceCompareTo(y))).ToArray();
        Assert.Equal(byBytes, listed);

        var models = await ns.ResolveAsync("/models");
        var llama = await ns.DescribeAsync((await m.LookupAsync(models!.Ino, "llama"))!.Value);
        Assert.Equal(MetaResult.NotEmpty, await m.RemoveAsync(models.Ino, llama!));
        var (files, dirs) = await ns.RemoveAsync("/models", recursive: true);
        Assert.Equal((names.Length, 2L), (files, dirs));
        Assert.Empty(await m.ListAsync(Node.RootIno));
        Assert.Equal(new VolumeUsage(0, 1), await m.GetUsageAsync());
        Assert.Equal(0, await m.GetChunkRefCountAsync(ChunkId.Of("b"u8)));
    }

    [Fact]
    public async Task Symlinks_and_empty_files_round_trip()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        var link = new Node(await m.AllocateInodeAsync(), NodeType.Symlink, 0x1FF, 0, 0, 1, 0, 1, 1, Node.RootIno, "../blobs/abc");
        Assert.Equal(MetaResult.Ok, await ns.LinkAsync(Node.RootIno, "link", link, null, overwrite: false));
        Assert.Equal("../blobs/abc", (await ns.ResolveAsync("/link"))!.SymlinkTarget);
        var empty = await NewFile(m, Node.RootIno, 0);
        Assert.Equal(MetaResult.Ok, await ns.LinkAsync(Node.RootIno, "empty", empty, ChunkTable.Empty(ChunkSize), overwrite: false));
        Assert.Equal(0, (await m.GetChunkTableAsync(empty.Ino, ChunkSize))!.Count);
        Assert.Null(await ns.ResolveAsync("/link/below")); // a symlink is not walked into
    }

    [Fact]
    public async Task Concurrent_inode_allocation_gives_unique_numbers()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var all = await Task.WhenAll(Enumerable.Range(0, 200).Select(_ => Task.Run(() => m.AllocateInodeAsync())));
        Assert.Equal(200, all.Distinct().Count());
        Assert.All(all, i => Assert.True(i > Node.RootIno));
    }

    [Fact]
    public async Task Concurrent_mkdir_of_one_path_agrees_on_one_directory()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        var inos = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(() => ns.MkdirAllAsync("/a/b/c"))));
        Assert.Single(inos.Distinct());
        Assert.Single(await m.ListAsync(Node.RootIno));
    }

    [Fact]
    public async Task Scan_counts_references_from_the_tables_and_counts_are_fixed_only_under_the_epoch_read()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var a = Table("a", "b", "a");
        await m.CreateAsync(new EntryCreate(Node.RootIno, "f", await NewFile(m, Node.RootIno, (2 * ChunkSize) + 1), a));
        await m.CreateAsync(new EntryCreate(Node.RootIno, "g", await NewFile(m, Node.RootIno, 1), Table("b")));
        var scan = await m.ScanReferencesAsync(ChunkSize);
        Assert.True(scan.Consistent);
        Assert.Equal(2, scan.Tables);
        Assert.Empty(scan.Undecodable);
        Assert.Equal(2, scan.Referenced[a[0].Id]);
        Assert.Equal(2, scan.Referenced[a[1].Id]);
        Assert.Equal(scan.Referenced.OrderBy(p => p.Key.A).ToList(), scan.Stored.OrderBy(p => p.Key.A).ToList());

        // A count set under the epoch that was read lands; under an epoch a create has moved past, nothing does.
        var ghost = ChunkId.Of("ghost"u8);
        Assert.True(await m.SetChunkRefCountsAsync(scan.Epoch, [new(a[0].Id, 5), new(ghost, 3)]));
        Assert.Equal(5, await m.GetChunkRefCountAsync(a[0].Id));
        Assert.Equal(3, await m.GetChunkRefCountAsync(ghost));
        Assert.True(await m.SetChunkRefCountsAsync(scan.Epoch, [new(a[0].Id, 2), new(ghost, 0)]));
        Assert.Equal(0, await m.GetChunkRefCountAsync(ghost));
        await m.CreateAsync(new EntryCreate(Node.RootIno, "h", await NewFile(m, Node.RootIno, 1), Table("c")));
        Assert.False(await m.SetChunkRefCountsAsync(scan.Epoch, [new(a[0].Id, 9)]));
        Assert.Equal(2, await m.GetChunkRefCountAsync(a[0].Id));
        Assert.NotEqual(scan.Epoch, (await m.ScanReferencesAsync(ChunkSize)).Epoch);
    }

    [Fact]
    public async Task A_gc_claim_is_refused_on_a_referenced_chunk_and_holds_off_a_create_until_released()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var used = Table("used");
        await m.CreateAsync(new EntryCreate(Node.RootIno, "f", await NewFile(m, Node.RootIno, 4), used));
        Assert.False(await m.ClaimUnreferencedChunkAsync(used[0].Id, "gc-a"));

        var orphan = Table("orphan");
        Assert.True(await m.ClaimUnreferencedChunkAsync(orphan[0].Id, "gc-a"));
        Assert.True(await m.ClaimUnreferencedChunkAsync(orphan[0].Id, "gc-a")); // its own claim again
        Assert.False(await m.ClaimUnreferencedChunkAsync(orphan[0].Id, "gc-b")); // another gc at once: refused
        await m.ReleaseChunkClaimAsync(orphan[0].Id, "gc-b"); // and its release ends nothing of gc-a's
        var g = await NewFile(m, Node.RootIno, 6);
        Assert.Equal(MetaResult.ChunkClaimed, await m.CreateAsync(new EntryCreate(Node.RootIno, "g", g, orphan)));
        Assert.Null(await m.LookupAsync(Node.RootIno, "g"));
        Assert.Equal(0, await m.GetChunkRefCountAsync(orphan[0].Id));

        await m.ReleaseChunkClaimAsync(orphan[0].Id, "gc-a");
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(Node.RootIno, "g", g, orphan)));
        Assert.Equal(1, await m.GetChunkRefCountAsync(orphan[0].Id));
        Assert.False(await m.ClaimUnreferencedChunkAsync(orphan[0].Id, "gc-b"));
    }

    [Fact]
    public async Task Lookup_with_its_node_reads_the_entry_and_the_record_it_names()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        ulong dir = await ns.MkdirAllAsync("/models");
        var file = await NewFile(m, dir, 3);
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(dir, "w.bin", file, Table("abc"))));
        var link = new Node(await m.AllocateInodeAsync(), NodeType.Symlink, 0x1FF, 0, 0, 1, 0, 1, 1, dir, "w.bin");
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(dir, "link", link, null)));

        Assert.Equal(new EntryAndNode(new DirEntry("w.bin", file.Ino, NodeType.File), file), await m.LookupNodeAsync(dir, "w.bin"));
        Assert.Equal(new EntryAndNode(new DirEntry("link", link.Ino, NodeType.Symlink), link), await m.LookupNodeAsync(dir, "link"));
        var d = await m.LookupNodeAsync(Node.RootIno, "models");
        Assert.Equal(new DirEntry("models", dir, NodeType.Directory), d!.Value.Entry);
        Assert.Equal(await m.GetNodeAsync(dir), d.Value.Node);
        Assert.Null(await m.LookupNodeAsync(dir, "missing"));
        Assert.Null(await m.LookupNodeAsync(dir, "W.bin"));
        Assert.Null(await m.LookupNodeAsync(file.Ino, "w.bin")); // a file has no entries
        Assert.Null(await m.LookupNodeAsync(424242, "w.bin"));

        // Inode numbers past 2^53 (Lua's numbers are doubles) and at the top of the u64 range name their own records.
        foreach (ulong big in new[] { (1UL << 53) + 1, ulong.MaxValue - 14 })
        {
            var n = new Node(big, NodeType.File, 0x1A4, 0, 0, 1, 1, 7, 8, dir);
            Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(dir, $"big{big}", n, Table("z"))));
            Assert.Equal(new EntryAndNode(new DirEntry($"big{big}", big, NodeType.File), n), await m.LookupNodeAsync(dir, $"big{big}"));
        }
    }

    [Fact]
    public async Task Node_and_chunk_table_are_read_together()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        var table = Table("a", "b");
        var file = await NewFile(m, Node.RootIno, (ulong)ChunkSize + 1);
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(Node.RootIno, "f", file, table)));
        ulong dir = await ns.MkdirAllAsync("/d");

        var (node, chunks) = await m.GetNodeAndChunkTableAsync(file.Ino, ChunkSize);
        Assert.Equal(file, node);
        Assert.Equal(table.Entries, chunks!.Entries);
        Assert.Equal(new NodeAndTable(await m.GetNodeAsync(dir), null), await m.GetNodeAndChunkTableAsync(dir, ChunkSize));
        Assert.Equal(new NodeAndTable(null, null), await m.GetNodeAndChunkTableAsync(9999, ChunkSize));
        var empty = await NewFile(m, Node.RootIno, 0);
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(Node.RootIno, "e", empty, ChunkTable.Empty(ChunkSize))));
        Assert.Equal(0, (await m.GetNodeAndChunkTableAsync(empty.Ino, ChunkSize)).Table!.Count);
    }

    [Fact]
    public async Task A_name_whose_record_is_missing_is_found_without_a_node_and_does_not_resolve()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        ulong dir = await ns.MkdirAllAsync("/d");
        var file = await NewFile(m, dir, 1);
        var table = Table("x");
        Assert.Equal(MetaResult.Ok, await m.CreateAsync(new EntryCreate(dir, "f", file, table)));
        await DeleteNodeRecordAsync(m, file.Ino);
        await DeleteNodeRecordAsync(m, dir);

        Assert.Equal(new EntryAndNode(new DirEntry("d", dir, NodeType.Directory), null), await m.LookupNodeAsync(Node.RootIno, "d"));
        Assert.Equal(new EntryAndNode(new DirEntry("f", file.Ino, NodeType.File), null), await m.LookupNodeAsync(dir, "f"));
        var (node, chunks) = await m.GetNodeAndChunkTableAsync(file.Ino, ChunkSize);
        Assert.Null(node);
        Assert.Equal(table.Entries, chunks!.Entries);
        Assert.Null(await ns.ResolveAsync("/d")); // as before: a path through a missing record resolves to nothing
        Assert.Null(await ns.ResolveAsync("/d/f"));
    }

    [Fact]
    public async Task A_damaged_entry_or_one_of_another_type_than_its_record_is_answered_as_stored()
    {
        var (m, ns) = await FormattedAsync();
        using var _m = m;
        ulong dir = await ns.MkdirAllAsync("/d");

        // A value that is not an entry: the same error as LookupAsync gives, from both.
        await SetRawEntryAsync(m, Node.RootIno, "short", [1, 2, 3, 4, 5]);
        var a = await Assert.ThrowsAsync<Util.MetaCorruptException>(() => m.LookupAsync(Node.RootIno, "short"));
        var b = await Assert.ThrowsAsync<Util.MetaCorruptException>(() => m.LookupNodeAsync(Node.RootIno, "short"));
        Assert.Equal("directory entry 'short' is damaged (5 bytes)", b.Message);
        Assert.Equal(a.Message, b.Message);
        var badType = new DirEntry("t", dir, NodeType.File).EncodeValue();
        badType[8] = 9;
        await SetRawEntryAsync(m, Node.RootIno, "t", badType);
        Assert.Equal("directory entry 't' is damaged (9 bytes)", (await Assert.ThrowsAsync<Util.MetaCorruptException>(() => m.LookupNodeAsync(Node.RootIno, "t"))).Message);

        // An entry that says "file" for a directory's record: both come back as stored, the record beside the entry.
        await SetRawEntryAsync(m, Node.RootIno, "alias", new DirEntry("alias", dir, NodeType.File).EncodeValue());
        var found = await m.LookupNodeAsync(Node.RootIno, "alias");
        Assert.Equal(NodeType.File, found!.Value.Entry.Type);
        Assert.Equal(NodeType.Directory, found.Value.Node!.Type);
        Assert.Equal(dir, found.Value.Node.Ino);
    }

    [Fact]
    public async Task Access_profiles_are_kept_per_content_and_process_bounded_listed_and_deleted()
    {
        var (m, _) = await FormattedAsync();
        using var _m = m;
        var a = Table("x", "y").ContentKey;
        var b = Table("x", "z").ContentKey;
        Assert.Empty(await m.GetProfilesAsync(a));
        Assert.Empty(await m.ListProfiledAsync());

        await m.PutProfileAsync(a, "python3", [1, 2, 3]);
        await m.PutProfileAsync(a, "vllm", [4]);
        await m.PutProfileAsync(a, "python3", [5, 6]); // replaces its own
        await m.PutProfileAsync(b, "python3", [7]);
        var pa = await m.GetProfilesAsync(a);
        Assert.Equal(2, pa.Count);
        Assert.Equal(new byte[] { 5, 6 }, pa["python3"]);
        Assert.Equal(new byte[] { 4 }, pa["vllm"]);
        Assert.Equal(new[] { a, b }.OrderBy(k => k.ToHex()), (await m.ListProfiledAsync()).OrderBy(k => k.ToHex()));

        for (int i = 0; i < LazyModelFs.Read.AccessProfile.MaxPerFile + 3; i++)
        {
            await m.PutProfileAsync(a, "p" + i, [(byte)i]);
        }

        pa = await m.GetProfilesAsync(a);
        Assert.Equal(LazyModelFs.Read.AccessProfile.MaxPerFile, pa.Count);
        Assert.Equal(new byte[] { (byte)(LazyModelFs.Read.AccessProfile.MaxPerFile + 2) }, pa["p" + (LazyModelFs.Read.AccessProfile.MaxPerFile + 2)]);

        Assert.Equal(LazyModelFs.Read.AccessProfile.MaxPerFile, await m.DeleteProfilesAsync(a));
        Assert.Empty(await m.GetProfilesAsync(a));
        Assert.Equal([b], await m.ListProfiledAsync());
        Assert.Equal(0, await m.DeleteProfilesAsync(a));
        Assert.Single(await m.GetProfilesAsync(b));
    }
}
