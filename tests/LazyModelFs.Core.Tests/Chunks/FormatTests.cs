using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Testing;
using LazyModelFs.Util;
using Xunit;

namespace LazyModelFs.Core.Tests.Chunks;

public class FormatTests
{
    [Fact]
    public void Crc32C_matches_the_RFC_3720_check_value()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));
        Assert.Equal(0u, Crc32C.Compute([]));
        // Appending in pieces gives the same result as one pass.
        var data = Enumerable.Range(0, 1000).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(Crc32C.Compute(data), Crc32C.Append(Crc32C.Compute(data.AsSpan(0, 333)), data.AsSpan(333)));
    }

    [Fact]
    public void Crc32C_three_lane_blocks_equal_the_serial_loop_at_every_length()
    {
        var rng = new Random(7);
        var data = new byte[(3 * 8192 * 4) + 100];
        rng.NextBytes(data);
        foreach (int len in new[] { 0, 1, 7, 8, 24575, 24576, 24577, 3 * 24576, (3 * 24576) + 13, data.Length })
        {
            uint serial = ~Crc32C.Serial(~0u, data.AsSpan(0, len));
            Assert.Equal(serial, Crc32C.Compute(data.AsSpan(0, len)));
        }

        for (int i = 0; i < 50; i++)
        {
            int len = rng.Next(data.Length), split = rng.Next(len + 1);
            Assert.Equal(~Crc32C.Serial(~0u, data.AsSpan(0, len)), Crc32C.Append(Crc32C.Compute(data.AsSpan(0, split)), data.AsSpan(split, len - split)));
        }
    }

    [Fact]
    public void ChunkId_is_the_sha256_and_derives_the_object_key()
    {
        var id = ChunkId.Of("abc"u8);
        Assert.Equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", id.ToHex());
        Assert.Equal("chunks/ba/78/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", id.ObjectKey());
        Assert.Equal(id, ChunkId.FromBytes(id.ToBytes()));
        Assert.Equal(id, ChunkId.FromHex(id.ToHex()));
    }

    [Fact]
    public void ChunkTable_encoding_matches_the_documented_layout()
    {
        var id = ChunkId.Of("abc"u8);
        var t = new ChunkTable([new ChunkEntry(id, 3, 19, ChunkCodec.None, 0x11223344)], 1 << 20);
        byte[] b = t.Encode();
        Assert.Equal(ChunkTable.HeaderSize + ChunkTable.EntrySize, b.Length);
        Assert.Equal("LMCT"u8.ToArray(), b[..4]);
        Assert.Equal(new byte[] { 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0 }, b[4..16]); // version 1, reserved, count 1, reserved
        Assert.Equal(id.ToBytes(), b[16..48]);
        Assert.Equal(new byte[] { 3, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11 }, b[48..64]);
        var back = ChunkTable.Decode(b, 1 << 20);
        Assert.Equal(t.Entries, back.Entries);
    }

    [Fact]
    public void ChunkTable_version_2_carries_each_rows_block_hashes_at_the_documented_place()
    {
        const int chunk = 1 << 20, block = 256 << 10;
        byte[] a = TestData.Random(chunk, 1), b = TestData.Random(300_000, 2); // b: two blocks, the second short
        var rows = new[] { a, b }.Select(p => new ChunkEntry(ChunkId.Of(p), p.Length, p.Length + ChunkObject.HeaderSize, ChunkCodec.None, Crc32C.Compute(p), BlockHashes.Compute(p, block))).ToArray();
        var t = new ChunkTable(rows, chunk, block);
        byte[] enc = t.Encode();
        int row = ChunkTable.EntrySize + (4 * 32);
        Assert.Equal(ChunkTable.HeaderSize + (2 * row), enc.Length);
        Assert.Equal(new byte[] { 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0 }, enc[4..16]); // version 2, reserved, count 2, block size 262144
        Assert.Equal(System.Security.Cryptography.SHA256.HashData(a.AsSpan(block, block)), enc.AsSpan(16 + 48 + 32, 32).ToArray()); // row 0, block 1
        Assert.Equal(System.Security.Cryptography.SHA256.HashData(b.AsSpan(block)), enc.AsSpan(16 + row + 48 + 32, 32).ToArray()); // row 1, its short block 1
        Assert.True(enc.AsSpan(16 + row + 48 + 64).IndexOfAnyExcept((byte)0) < 0); // past row 1's two blocks: zeros

        var back = ChunkTable.Decode(enc, chunk);
        Assert.Equal(block, back.BlockSize);
        Assert.Equal(t.Entries, back.Entries);
        Assert.True(back[1].Blocks.Matches(1, b.AsSpan(block)));
        Assert.Equal(-1, back[0].Blocks.FirstMismatch(a));
        Assert.Equal(BlockHashes.RunMask(1, 3), back[0].Blocks.MaskOf(block, (2 * block) + 1)); // blocks 1 to 3
        Assert.Equal(0x3UL, back[1].Blocks.All);

        // Damage: a block size that does not split the chunk, hashes past a row's blocks, a cut row.
        var bad = (byte[])enc.Clone();
        bad[14] = 3; // 0x30000: not a power of two
        Assert.Contains("block size", Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(bad, chunk)).Message, StringComparison.Ordinal);
        bad = (byte[])enc.Clone();
        bad[^1] = 1;
        Assert.Contains("past its 2 blocks", Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(bad, chunk)).Message, StringComparison.Ordinal);
        Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(enc.AsSpan(0, enc.Length - 32), chunk));
        Assert.Contains("at most 64", Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(enc, 64 << 20)).Message, StringComparison.Ordinal); // 256 blocks a chunk
        Assert.Throws<ArgumentException>(() => new ChunkTable([rows[0], rows[1] with { Blocks = default }], chunk, block));
    }

    [Fact]
    public void Settings_of_both_format_versions_decode_and_inconsistent_ones_are_refused()
    {
        var v2 = new VolumeSettings { Name = "v", Uuid = Guid.NewGuid(), ChunkSize = 1 << 22, Compression = "none", Storage = "file:///x", CreatedAt = DateTimeOffset.UnixEpoch };
        Assert.Equal((2, 256 << 10), (v2.FormatVersion, v2.BlockSize));
        Assert.Equal(v2, SettingsCodec.Decode(SettingsCodec.Encode(v2)));

        // A version 1 document, as releases before block hashes wrote it (no blockSize).
        var v1 = SettingsCodec.Decode("""{"formatVersion":1,"name":"old","uuid":"6f1c2a3e-0000-4000-8000-000000000001","chunkSize":4194304,"compression":"none","storage":"file:///x","createdAt":"2026-11-21T05:45:55+00:00"}"""u8);
        Assert.Equal((1, 0), (v1.FormatVersion, v1.BlockSize));

        var noBlocks = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(SettingsCodec.Encode(v2)).Replace("\"blockSize\":262144", "\"blockSize\":0", StringComparison.Ordinal));
        Assert.Contains("needs a block size", Assert.Throws<MetaCorruptException>(() => SettingsCodec.Decode(noBlocks)).Message, StringComparison.Ordinal);
        var tooMany = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(SettingsCodec.Encode(v2)).Replace("\"blockSize\":262144", "\"blockSize\":4096", StringComparison.Ordinal));
        Assert.Contains("at most 64", Assert.Throws<MetaCorruptException>(() => SettingsCodec.Decode(tooMany)).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, "no LMCT header")]
    [InlineData(1, "version")]
    [InlineData(2, "entries")]
    [InlineData(3, "plain length")]
    [InlineData(4, "codec")]
    public void ChunkTable_decode_refuses_damaged_tables(int damage, string expected)
    {
        var e = new ChunkEntry(ChunkId.Of("x"u8), 1024, 1040, ChunkCodec.None, 1);
        byte[] b = new ChunkTable([e with { PlainLength = 4096, StoredLength = 4112 }, e], 4096).Encode();
        switch (damage)
        {
            case 0: b[0] = (byte)'X'; break;
            case 1: b[4] = 9; break;
            case 2: b = b[..^1]; break;
            case 3: b[16 + 32] = 1; break; // first row's plain length no longer the chunk size
            case 4: b[16 + 48 + 40] = 7; break;
        }

        var ex = Assert.Throws<MetaCorruptException>(() => ChunkTable.Decode(b, 4096));
        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ChunkObject_plain_round_trip_has_the_documented_header()
    {
        byte[] plain = Encoding.ASCII.GetBytes("model weights");
        var obj = new byte[ChunkObject.MaxObjectSize(plain.Length, ChunkCodec.None)];
        var (codec, len) = ChunkObject.Encode(plain, obj, ChunkCodec.None);
        Assert.Equal(ChunkCodec.None, codec);
        Assert.Equal(16 + plain.Length, len);
        Assert.Equal(new byte[] { (byte)'L', (byte)'M', (byte)'C', (byte)'K', 1, 0, 0, 0, 13, 0, 0, 0, 13, 0, 0, 0 }, obj[..16]);
        var entry = new ChunkEntry(ChunkId.Of(plain), plain.Length, len, codec, Crc32C.Compute(plain));
        var back = new byte[plain.Length];
        ChunkObject.Decode(obj.AsSpan(0, len), entry, back);
        Assert.Equal(plain, back);
    }

    [Fact]
    public void ChunkObject_zstd_compresses_what_compresses_and_stores_the_rest_plain()
    {
        byte[] text = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("tensor ", 10_000)));
        var obj = new byte[ChunkObject.MaxObjectSize(text.Length, ChunkCodec.Zstd)];
        var (codec, len) = ChunkObject.Encode(text, obj, ChunkCodec.Zstd);
        Assert.Equal(ChunkCodec.Zstd, codec);
        Assert.True(len < text.Length / 10, $"compressed to {len}");
        var back = new byte[text.Length];
        ChunkObject.Decode(obj.AsSpan(0, len), new ChunkEntry(ChunkId.Of(text), text.Length, len, codec, Crc32C.Compute(text)), back);
        Assert.Equal(text, back);

        byte[] random = new byte[65536];
        new Random(1).NextBytes(random);
        var obj2 = new byte[ChunkObject.MaxObjectSize(random.Length, ChunkCodec.Zstd)];
        Assert.Equal(ChunkCodec.None, ChunkObject.Encode(random, obj2, ChunkCodec.Zstd).Codec);
    }

    [Fact]
    public void ChunkObject_decode_detects_every_kind_of_damage()
    {
        byte[] plain = new byte[5000];
        new Random(2).NextBytes(plain);
        var obj = new byte[ChunkObject.MaxObjectSize(plain.Length, ChunkCodec.None)];
        var (codec, len) = ChunkObject.Encode(plain, obj, ChunkCodec.None);
        var entry = new ChunkEntry(ChunkId.Of(plain), plain.Length, len, codec, Crc32C.Compute(plain));
        var dest = new byte[plain.Length];

        var flipped = obj[..len];
        flipped[100] ^= 1;
        Assert.Contains("SHA-256", Assert.Throws<ChunkCorruptException>(() => ChunkObject.Decode(flipped, entry, dest)).Message, StringComparison.Ordinal);
        Assert.Throws<ChunkCorruptException>(() => ChunkObject.Decode(obj.AsSpan(0, len - 1), entry, dest));
        Assert.Throws<ChunkCorruptException>(() => ChunkObject.Decode(obj.AsSpan(0, 10), entry, dest));
        var badMagic = obj[..len];
        badMagic[0] = 0;
        Assert.Throws<ChunkCorruptException>(() => ChunkObject.Decode(badMagic, entry, dest));
        var badZstd = obj[..len];
        badZstd[5] = (byte)ChunkCodec.Zstd;
        Assert.Throws<ChunkCorruptException>(() => ChunkObject.Decode(badZstd, entry, dest));
    }

    [Fact]
    public void Node_record_round_trips_and_refuses_damage()
    {
        var n = new Node(42, NodeType.Symlink, 0x1FF, 1000, 100, 1, 9, 1_700_000_000_123_456_789, 1_700_000_001_000_000_000, 7, "../blobs/ab");
        byte[] b = n.Encode();
        Assert.Equal(Node.FixedSize + 11, b.Length);
        Assert.Equal(n, Node.Decode(42, b));

        var f = new Node(43, NodeType.File, 0x1A4, 0, 0, 1, 1 << 30, 1, 2, 1);
        Assert.Equal(f, Node.Decode(43, f.Encode()));
        Assert.Throws<MetaCorruptException>(() => Node.Decode(1, b.AsSpan(0, 10)));
        var badVersion = f.Encode();
        badVersion[0] = 2;
        Assert.Contains("version", Assert.Throws<MetaCorruptException>(() => Node.Decode(1, badVersion)).Message, StringComparison.Ordinal);
        var badType = f.Encode();
        badType[1] = 9;
        Assert.Throws<MetaCorruptException>(() => Node.Decode(1, badType));
        Assert.Throws<MetaCorruptException>(() => DirEntry.DecodeValue("x", new byte[] { 1, 2 }));
    }

    [Fact]
    public void Settings_from_a_newer_lmfs_are_refused_with_a_clear_message()
    {
        var s = new VolumeSettings { Name = "v", Uuid = Guid.NewGuid(), ChunkSize = 1 << 22, Compression = "none", Storage = "file:///x", CreatedAt = DateTimeOffset.UnixEpoch };
        Assert.Equal(s, SettingsCodec.Decode(SettingsCodec.Encode(s)));
        var newer = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(SettingsCodec.Encode(s)).Replace($"\"formatVersion\":{VolumeSettings.CurrentFormatVersion}", "\"formatVersion\":7", StringComparison.Ordinal));
        var ex = Assert.Throws<LmfsException>(() => SettingsCodec.Decode(newer));
        Assert.Contains("version is 7", ex.Message, StringComparison.Ordinal);
        Assert.Contains("upgrade", ex.Hint, StringComparison.Ordinal);
        Assert.Throws<MetaCorruptException>(() => SettingsCodec.Decode("{not json"u8));
    }

    [Theory]
    [InlineData("redis://:s3cret@host:6379/1", "redis://***@host:6379/1")]
    [InlineData("redis://:pa/ss@host:6379/1", "redis://***@host:6379/1")] // a raw '/' in the password (issue 11, item 12)
    [InlineData("redis://:a@b/c?d#e@h1:1,h2:2/3", "redis://***@h1:1,h2:2/3")] // '@', '/', '?', '#' in it
    [InlineData("rediss://u:p%2Fw%40x@host/0?volume=v", "rediss://***@host/0?volume=v")]
    [InlineData("s3://KEY:SECRET@bucket/prefix", "s3://***@bucket/prefix")]
    [InlineData("redis://user:pw@h/0?volume=a@b", "redis://***@b")] // an '@' after the authority hides more, never less
    [InlineData("redis://h:6379/0?volume=a", "redis://h:6379/0?volume=a")]
    [InlineData("sqlite:///var/lib/a@b/meta.db", "sqlite:///var/lib/a@b/meta.db")] // no authority, no credentials
    [InlineData("not a url", "not a url")]
    public void Redact_removes_credentials_from_urls(string url, string expected) => Assert.Equal(expected, Redact.Url(url));

    [Fact]
    public void Credentials_are_split_off_stripped_and_redacted_in_free_text()
    {
        Assert.Equal(("redis://h:1/0?volume=v", "pa/ss@x"), Redact.SplitPassword("redis://:pa%2Fss%40x@h:1/0?volume=v"));
        Assert.Equal(("redis://user:@h/0", "pa/ss"), Redact.SplitPassword("redis://user:pa/ss@h/0")); // an ACL user name is kept (issue 18, item 10)
        Assert.Equal(("redis://user:@h/0", null), Redact.SplitPassword("redis://user:@h/0"));
        Assert.Equal("redis://user:@h/0", Redact.StripCredentials("redis://user:pw@h/0"));
        Assert.False(Redact.HasCredentials("redis://user:@h/0")); // a user name alone is no secret: CSI takes it in metaUrl
        Assert.True(Redact.HasCredentials("redis://user:pw@h/0"));
        Assert.True(Redact.HasCredentials("redis://:pw@h/0"));
        Assert.Equal(("redis://h/0", "only"), Redact.SplitPassword("redis://only@h/0")); // no ':': all of it is the password, as the engine reads it
        Assert.Equal(("sqlite:///a.db", null), Redact.SplitPassword("sqlite:///a.db"));
        Assert.Equal("redis://h/0", Redact.StripCredentials("redis://:pa/ss@h/0"));
        Assert.True(Redact.HasCredentials("redis://x@h"));
        Assert.False(Redact.HasCredentials("redis://h/0"));
        Assert.Equal(
            "cannot open 'redis://***@h/0' (from redis://***@h:2/1): refused",
            Redact.Text("cannot open 'redis://:pa/ss@h/0' (from redis://u:p@h:2/1): refused"));

        // A quote or '<' inside the password does not end the URL early and leave the password shown.
        foreach (var pw in new[] { "pa\"ss", "pa'ss", "pa<s>s", "pa`ss" })
        {
            string shown = Redact.Text($"error: cannot connect to redis://:{pw}@h:6379/0 (refused)");
            Assert.DoesNotContain("ss", shown.Replace("redis", "", StringComparison.Ordinal), StringComparison.Ordinal);
            Assert.Contains("@h:6379/0", shown, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("4M", 4L << 20)]
    [InlineData("512MiB", 512L << 20)]
    [InlineData("1g", 1L << 30)]
    [InlineData("100", 100)]
    public void Sizes_parse_units(string text, long expected) => Assert.Equal(expected, Sizes.Parse(text, "x"));

    [Fact]
    public void Sizes_refuse_garbage() => Assert.Throws<LmfsException>(() => Sizes.Parse("4Q", "--chunk-size"));
}
