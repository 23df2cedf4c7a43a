using LazyModelFs.Chunks;
using Xunit;

namespace LazyModelFs.Core.Tests.Chunks;

/// <summary>
/// <see cref="ChunkTable.Locate"/>, <see cref="ChunkTable.ChunkRange"/> and <see cref="ChunkTable.StartOf"/>:
/// the one place that turns file offsets into chunks (issue 12, item 3), at its edges and against a
/// reference model that walks the rows.
/// </summary>
public sealed class ChunkTableGeometryTests
{
    private const int Chunk = 4096;

    /// <summary>A table as the metadata engine hands it out: encoded, then decoded with the chunk size.</summary>
    private static ChunkTable TableOf(long size, int chunk = Chunk)
    {
        var rows = new List<ChunkEntry>();
        for (long at = 0; at < size; at += chunk)
        {
            int plain = (int)Math.Min(chunk, size - at);
            rows.Add(new ChunkEntry(ChunkId.Of(BitConverter.GetBytes(at)), plain, plain + ChunkObject.HeaderSize, ChunkCodec.None, 0));
        }

        return ChunkTable.Decode(new ChunkTable(rows, chunk).Encode(), chunk);
    }

    [Fact]
    public void A_decoded_table_knows_its_chunk_size_and_size()
    {
        var t = TableOf((2 * Chunk) + 100);
        Assert.Equal(Chunk, t.ChunkSize);
        Assert.Equal((2 * Chunk) + 100, t.PlainSize);
        Assert.Equal(3, t.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkTable([], 0));
    }

    [Theory]
    [InlineData(0, 0, 0)]                       // the first byte
    [InlineData(Chunk - 1, 0, Chunk - 1)]       // the last byte of a chunk
    [InlineData(Chunk, 1, 0)]                   // the first byte of the next
    [InlineData((2 * Chunk) - 1, 1, Chunk - 1)]
    [InlineData(2 * Chunk, 2, 0)]               // the first byte of the short last chunk
    [InlineData((2 * Chunk) + 99, 2, 99)]       // the file's last byte
    public void Locate_gives_the_chunk_and_the_offset_within_it(long offset, int index, int within)
    {
        Assert.Equal(new ChunkPosition(index, within), TableOf((2 * Chunk) + 100).Locate(offset));
    }

    [Theory]
    [InlineData((2 * Chunk) + 100)]             // offset == size, the last chunk short
    [InlineData((2 * Chunk) + 101)]
    [InlineData(3 * Chunk)]                     // where a fourth chunk would start
    [InlineData(long.MaxValue)]
    [InlineData(-1)]
    [InlineData(long.MinValue)]
    public void Locate_refuses_offsets_outside_the_file(long offset)
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => TableOf((2 * Chunk) + 100).Locate(offset));
        Assert.Contains($"{(2 * Chunk) + 100} bytes", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_of_whole_chunks_ends_at_the_last_byte_of_its_last_chunk()
    {
        var t = TableOf(2 * Chunk);
        Assert.Equal(new ChunkPosition(1, Chunk - 1), t.Locate((2 * Chunk) - 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Locate(2 * Chunk)); // offset == size
        Assert.Equal((1, 1), t.ChunkRange(Chunk, 2 * Chunk));
        Assert.Equal((0, 1), t.ChunkRange(0, 3 * Chunk));
    }

    [Fact]
    public void An_empty_file_has_no_position_no_range_and_no_chunk_start()
    {
        foreach (var t in new[] { TableOf(0), ChunkTable.Empty(Chunk) })
        {
            Assert.Equal(0, t.Count);
            Assert.Equal(0, t.PlainSize);
            Assert.Equal(Chunk, t.ChunkSize);
            Assert.Throws<ArgumentOutOfRangeException>(() => t.Locate(0));
            var (first, last) = t.ChunkRange(0, Chunk);
            Assert.True(first > last);
            Assert.True(t.ChunkRange(0, 0).First > t.ChunkRange(0, 0).Last);
            Assert.Throws<ArgumentOutOfRangeException>(() => t.StartOf(0));
        }
    }

    [Theory]
    [InlineData(0, 1, 0, 0)]
    [InlineData(0, Chunk, 0, 0)]                          // ends on the last byte of chunk 0
    [InlineData(0, Chunk + 1, 0, 1)]                      // one byte into chunk 1
    [InlineData(Chunk - 1, Chunk + 1, 0, 1)]              // straddles the edge
    [InlineData(Chunk, 2 * Chunk, 1, 1)]
    [InlineData(2 * Chunk, (2 * Chunk) + 100, 2, 2)]      // the short last chunk
    [InlineData(0, (2 * Chunk) + 100, 0, 2)]              // the whole file
    [InlineData(Chunk + 5, 1L << 40, 1, 2)]               // past the end: cut to the file
    [InlineData(-10, 1, 0, 0)]                            // before the start: cut to the file
    public void ChunkRange_gives_the_first_and_last_chunk_holding_bytes_of_the_range(long from, long to, int first, int last)
    {
        Assert.Equal((first, last), TableOf((2 * Chunk) + 100).ChunkRange(from, to));
    }

    [Theory]
    [InlineData((2 * Chunk) + 100, (2 * Chunk) + 200)]    // starts at the end
    [InlineData(1L << 40, (1L << 40) + 1)]                // wholly past the end
    [InlineData(5, 5)]                                    // empty
    [InlineData(10, 5)]                                   // reversed
    public void ChunkRange_of_no_byte_of_the_file_is_empty(long from, long to)
    {
        var (first, last) = TableOf((2 * Chunk) + 100).ChunkRange(from, to);
        Assert.True(first > last, $"({first}, {last})");
    }

    [Fact]
    public void StartOf_gives_where_each_chunk_begins()
    {
        var t = TableOf((2 * Chunk) + 100);
        Assert.Equal(0, t.StartOf(0));
        Assert.Equal(Chunk, t.StartOf(1));
        Assert.Equal(2 * Chunk, t.StartOf(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.StartOf(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.StartOf(-1));
        var big = new ChunkTable([.. Enumerable.Repeat(t[0] with { PlainLength = 1 << 26 }, 40)], 1 << 26);
        Assert.Equal(39L << 26, big.StartOf(39)); // past 2 GiB: no int overflow
    }

    /// <summary>Every offset and every range of small files, against the rows walked one by one.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(53)]
    [InlineData(64)]
    public void Locate_and_ChunkRange_agree_with_the_rows(long size)
    {
        const int chunk = 16;
        var t = TableOf(size, chunk);
        var owner = new List<(int Index, int Within)>(); // reference: byte b of the file is in row owner[b]
        for (int i = 0; i < t.Count; i++)
        {
            for (int w = 0; w < t[i].PlainLength; w++)
            {
                owner.Add((i, w));
            }
        }

        Assert.Equal(size, owner.Count);
        for (long off = -2; off <= size + 2; off++)
        {
            if (off >= 0 && off < size)
            {
                var (i, w) = owner[(int)off];
                Assert.Equal(new ChunkPosition(i, w), t.Locate(off));
                Assert.Equal(off, t.StartOf(i) + w);
            }
            else
            {
                long o = off;
                Assert.Throws<ArgumentOutOfRangeException>(() => t.Locate(o));
            }
        }

        for (long from = -2; from <= size + 2; from++)
        {
            for (long to = from - 1; to <= size + 3; to++)
            {
                var touched = owner.Where((_, b) => b >= from && b < to).Select(p => p.Index).Distinct().ToList();
                var (first, last) = t.ChunkRange(from, to);
                if (touched.Count == 0)
                {
                    Assert.True(first > last, $"[{from}, {to}) of {size}: ({first}, {last})");
                }
                else
                {
                    Assert.Equal((touched.Min(), touched.Max()), (first, last));
                }
            }
        }
    }
}
