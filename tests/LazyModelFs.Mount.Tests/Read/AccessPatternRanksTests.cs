using LazyModelFs.Read;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>
/// Issue 14, item 5: readers in several processes (tensor-parallel ranks, each reading its own stripe
/// of one shard) are each seen as sequential. The READ orders below are what the daemon receives:
/// one recorded from a real mount, and the kernel's readahead batches interleaved across ranks.
/// "Seen as sequential" is measured as: after a short run, every chunk of a rank's stripe is asked
/// for by readahead before a READ of that rank needs it.
/// </summary>
public sealed class AccessPatternRanksTests
{
    private const long MiB = 1 << 20;

    /// <summary>
    /// The offsets (MiB) of the 256 READs of 1 MiB, in the order the daemon's AccessPattern saw them,
    /// while 4 processes each read their own quarter of a 256 MiB file at once (dd bs=1M skip=64·r
    /// count=64, 4 MiB chunks, read_ahead_kb 16384, 4 FUSE reader threads on the 2-core VM). Async
    /// readahead reorders them: 203 before 201, 80 after 89, 239 after 254.
    /// </summary>
    private const string RecordedFourRanks = """
        64 0 1 192 128 193 65 194 195 196 197 198 199 200 66 203 201 202 204 206 67 68 69 70 2 3 4 5 6 7 8 9 10 11 12 13 71 72 73
        74 75 76 77 78 129 130 131 132 205 136 137 138 139 140 141 142 134 135 133 143 144 145 146 147 148 149 150 151 152 153 154
        155 156 157 158 159 160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185
        186 187 188 189 190 191 207 208 209 210 211 212 213 214 215 216 217 218 219 220 221 222 224 225 226 227 228 229 230 231 232
        233 234 235 236 237 238 223 79 83 84 85 86 87 88 89 80 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109
        110 81 82 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29
        30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 240 243 244 245 246 247 248 249 250 251 252 253 254 241 242 239 47 49 50 51 52
        53 54 55 56 57 58 59 60 61 48 46 255 62 63
        """;

    /// <summary>
    /// Replays 1 MiB READs at <paramref name="offsets"/> through one AccessPattern and returns, per
    /// stripe of <paramref name="stripe"/> bytes, how many of its chunks a READ asked for first
    /// (not readahead): a stripe seen as sequential has only its first run's chunks so.
    /// </summary>
    private static int[] ChunksFirstAskedByRead(IEnumerable<long> offsets, long chunk, long stripe, int ranks)
    {
        long size = stripe * ranks;
        var p = new AccessPattern(chunk, 128 * MiB);
        var asked = new bool[size / chunk];
        var byRead = new int[ranks];
        foreach (long off in offsets)
        {
            if (!asked[off / chunk])
            {
                byRead[off / stripe]++;
            }

            if (p.OnRead(off, (int)MiB, size) is { } ahead)
            {
                for (long c = ahead.From / chunk; c <= (ahead.To - 1) / chunk; c++)
                {
                    asked[c] = true;
                }
            }

            asked[off / chunk] = true;
        }

        return byRead;
    }

    /// <summary>
    /// Each rank reads its stripe in 1 MiB READs sent by the kernel in readahead batches (4, 8, then
    /// 16 MiB: the initial window doubling up to read_ahead_kb), the ranks taking turns READ by READ;
    /// inside a batch, groups of <paramref name="reversed"/> READs arrive last first, as reader threads
    /// that dequeued them together may dispatch them.
    /// </summary>
    private static IEnumerable<long> KernelOrder(int ranks, long stripe, int reversed)
    {
        var queues = Enumerable.Range(0, ranks).Select(r =>
        {
            var order = new List<long>();
            long batch = 4;
            for (long o = r * stripe; o < (r + 1) * stripe; batch = Math.Min(16, batch * 2))
            {
                var b = new List<long>();
                for (long i = 0; i < batch && o < (r + 1) * stripe; i++, o += MiB)
                {
                    b.Add(o);
                }

                for (int i = 0; i < b.Count; i += reversed)
                {
                    order.AddRange(b.Skip(i).Take(reversed).Reverse());
                }
            }

            return new Queue<long>(order);
        }).ToArray();
        for (int k = 0; queues.Any(q => q.Count > 0); k++)
        {
            if (queues[k % ranks].TryDequeue(out long off))
            {
                yield return off;
            }
        }
    }

    private static List<long> Recorded()
    {
        var offsets = RecordedFourRanks.Split((char[])[' ', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries).Select(s => long.Parse(s, System.Globalization.CultureInfo.InvariantCulture) * MiB).ToList();
        Assert.Equal(Enumerable.Range(0, 256).Select(i => i * MiB), offsets.Order()); // every READ once
        return offsets;
    }

    /// <summary>A stream opens its window after RunBeforeWindow (two chunks, at least 2 MiB) of run: that many chunks of a stripe, and one more for reordering at its start, are asked for by READs.</summary>
    private static long Allowed(long chunk) => (new AccessPattern(chunk, 128 * MiB).RunBeforeWindow / chunk) + 1;

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void Four_processes_reading_their_own_quarter_as_recorded_on_a_mount_are_each_sequential(int chunkMiB)
    {
        long chunk = chunkMiB * MiB;
        Assert.All(ChunksFirstAskedByRead(Recorded(), chunk, 64 * MiB, 4), n => Assert.InRange(n, 0, Allowed(chunk)));
    }

    [Theory]
    [InlineData(4, 4)]
    [InlineData(4, 64)]
    public void Ranks_whose_readahead_batches_interleave_two_reads_out_of_order_are_each_sequential(int ranks, int chunkMiB)
    {
        long chunk = chunkMiB * MiB, stripe = 512 * MiB;
        Assert.All(ChunksFirstAskedByRead(KernelOrder(ranks, stripe, reversed: 2), chunk, stripe, ranks), n => Assert.InRange(n, 0, Allowed(chunk)));
    }

    /// <summary>
    /// Fails today, three ways (each row a whole stripe or most of it fetched on demand):
    /// - recorded order, 16 MiB chunks: once a stream's window is large its slack is too (up to
    ///   --readahead), and a READ continues the first stream within slack, not the nearest: rank 0's
    ///   late READs (14 after 127) continue rank 1's stream, whose end is far ahead, so they ask for nothing;
    /// - 8 ranks, pairs out of order (4 or 64 MiB chunks): a READ more than one READ (1 MiB) behind or ahead
    ///   of a young stream's end starts another stream, so 8 ranks need more than the 8 slots and evict
    ///   one another before any runs long enough (RunBeforeWindow); 4 ranks fit, so they pass above;
    /// - 4 ranks, groups of 4 out of order: for the same reason no stream ever gets a window.
    /// Reordering of that size was recorded on the 2-core VM with 4 reader threads (203 before 201,
    /// 80 after 89 above); more reader threads reorder more.
    /// </summary>
    [Theory]
    [InlineData(4, 16, 0)]
    [InlineData(8, 4, 2)]
    [InlineData(8, 64, 2)]
    [InlineData(4, 4, 4)]
    public void Ranks_are_each_sequential_however_far_their_reads_are_reordered(int ranks, int chunkMiB, int reversed)
    {
        long chunk = chunkMiB * MiB, stripe = reversed == 0 ? 64 * MiB : 512 * MiB;
        var offsets = reversed == 0 ? Recorded() : KernelOrder(ranks, stripe, reversed);
        Assert.All(ChunksFirstAskedByRead(offsets, chunk, stripe, ranks), n => Assert.InRange(n, 0, Allowed(chunk)));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Random_reads_near_each_other_never_earn_a_window(int seed)
    {
        // The bench's random probe: 4 KiB-aligned 1 MiB reads over a 1 GiB file, 4 MiB chunks. A stream's
        // slack of one kernel batch (16 MiB) gathers some of them, but they stay sparse: no readahead, no
        // READ taken for sequential (each fetches only its blocks).
        var p = new AccessPattern(4 * MiB, 128 * MiB);
        var rng = new Random(seed);
        int windows = 0;
        for (int i = 0; i < 400; i++)
        {
            long off = rng.NextInt64(0, ((1L << 30) - MiB) / 4096) * 4096;
            if (p.OnRead(off, (int)MiB, 1L << 30, out bool sequential) is not null || sequential)
            {
                windows++;
            }
        }

        Assert.Equal(0, windows);
    }

    [Fact]
    public void A_sequential_reader_starting_among_earlier_random_reads_earns_its_window_within_two_batches()
    {
        var p = new AccessPattern(4 * MiB, 128 * MiB);
        foreach (long off in new long[] { 100, 110, 95, 120, 105 })
        {
            Assert.Null(p.OnRead(off * MiB, (int)MiB, 1L << 30)); // sparse: gathered, no window
        }

        long first = -1;
        for (long off = 121 * MiB; off < 200 * MiB; off += MiB)
        {
            if (p.OnRead(off, (int)MiB, 1L << 30) is not null)
            {
                first = off;
                break;
            }
        }

        Assert.InRange(first, 121 * MiB, (121 * MiB) + (2 * AccessPattern.DefaultKernelBatch) + (8 * MiB));
    }
}
