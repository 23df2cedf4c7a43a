using LazyModelFs.Read;
using Xunit;

namespace LazyModelFs.Core.Tests.Read;

public class AccessProfileTests
{
    private static readonly DateTimeOffset When = DateTimeOffset.FromUnixTimeMilliseconds(1_764_000_000_000);

    [Fact]
    public void Round_trips_in_runs_with_the_process_name_and_time()
    {
        int[] order = [5, 6, 7, 0, 1, 9, 8, 2];
        var p = new AccessProfile("python3", When, 10, order, misses: 1);
        var bytes = p.Encode();
        var q = AccessProfile.TryDecode(bytes, 10, out var why);
        Assert.Null(why);
        Assert.NotNull(q);
        Assert.Equal(order, q.Order);
        Assert.Equal("python3", q.Process);
        Assert.Equal(When, q.Recorded);
        Assert.Equal(10, q.ChunkCount);
        Assert.Equal(1, q.Misses);
        Assert.True(q.Stable);
        Assert.False(new AccessProfile("x", When, 1, [0], misses: AccessProfile.UnstableMisses).Stable);
        Assert.Equal(255, new AccessProfile("x", When, 1, [0], misses: 1000).Misses);
    }

    [Fact]
    public void A_sequential_profile_of_thousands_of_chunks_is_a_few_bytes()
    {
        var p = new AccessProfile("cat", When, 4400, Enumerable.Range(0, 4400).ToArray());
        Assert.True(p.Encode().Length < 40, $"{p.Encode().Length} bytes");
        Assert.Equal(4400, AccessProfile.TryDecode(p.Encode(), 4400, out _)!.Order.Count);
    }

    [Fact]
    public void Process_names_are_cut_like_the_kernels_comm()
    {
        Assert.Equal("a-very-long-loa", new AccessProfile("a-very-long-loader-name", When, 1, [0]).Process);
        Assert.Equal(15, System.Text.Encoding.UTF8.GetByteCount(AccessProfile.TrimProcess("ééééééééé")) + 1); // 7 two-byte characters, not a split one
    }

    [Fact]
    public void Every_damage_is_refused_with_a_reason_and_never_throws()
    {
        var good = new AccessProfile("py", When, 8, [3, 4, 0, 7]).Encode();
        Assert.NotNull(AccessProfile.TryDecode(good, 8, out _));
        Assert.Null(AccessProfile.TryDecode(good, 9, out var why)); // recorded on another table
        Assert.Contains("8 chunks", why);
        Assert.Null(AccessProfile.TryDecode(good.AsSpan(0, good.Length - 1), 8, out why));
        Assert.NotNull(why);
        Assert.Null(AccessProfile.TryDecode([.. good, 0], 8, out why));
        Assert.Contains("trailing", why);
        var v2 = good.ToArray();
        v2[4] = 2;
        Assert.Null(AccessProfile.TryDecode(v2, 8, out why));
        Assert.Contains("version 2", why);

        // Every single-byte change and every truncation: a valid profile of this file or a refusal, never an exception,
        // and never an index outside the file or a repeat.
        for (int i = 0; i < good.Length; i++)
        {
            for (int bit = 0; bit < 8; bit++)
            {
                var bad = good.ToArray();
                bad[i] ^= (byte)(1 << bit);
                Check(bad);
            }

            Check(good.AsSpan(0, i).ToArray());
        }

        // A run that claims the whole 16M-chunk range cannot make a small file allocate it.
        var huge = new AccessProfile("x", When, 8, [0]).Encode();
        huge[^1] = 0x7F;
        Assert.Null(AccessProfile.TryDecode(huge, 8, out _));

        static void Check(byte[] b)
        {
            if (AccessProfile.TryDecode(b, 8, out var why) is { } p)
            {
                Assert.Null(why);
                Assert.All(p.Order, i => Assert.InRange(i, 0, 7));
                Assert.Equal(p.Order.Count, p.Order.Distinct().Count());
            }
            else
            {
                Assert.False(string.IsNullOrEmpty(why));
            }
        }
    }

    [Fact]
    public void Agreement_is_high_for_the_same_order_and_low_for_another()
    {
        var p = new AccessProfile("py", When, 100, Enumerable.Range(0, 100).ToArray());
        Assert.Equal(1.0, p.Agreement(Enumerable.Range(0, 100).ToArray()));
        Assert.Equal(1.0, p.Agreement([3, 10, 50])); // a part of the profile, in its order
        Assert.True(p.Agreement(Enumerable.Range(0, 100).Reverse().ToArray()) < 0.05);
        var shuffled = Enumerable.Range(0, 100).OrderBy(i => (i * 37) % 101).ToArray();
        Assert.True(p.Agreement(shuffled) < 0.5);
        Assert.Equal(0.5, p.Agreement([0, 1, 200, 201])); // chunks the profile lacks count against it
        Assert.Equal(1.0, p.Agreement([]));
    }
}
