using System.Diagnostics;
using LazyModelFs.Bench;
using LazyModelFs.Testing;
using Microsoft.Win32.SafeHandles;
using Xunit;

namespace LazyModelFs.Bench.Tests;

/// <summary>
/// The probes against known work: a reader given through the test seam reads each block and then
/// spins a known time, and records, outside the probe's own clock, when the first block started and
/// the last ended. A probe's figure must never be faster than that span allows (issue 18, item 14:
/// the 4-reader page-cache ceiling printed up to 1,426,030 MB/s on two cores). Sixteen busy readers on
/// few cores make the coordinating thread run late, which is when the old clock started late too.
/// </summary>
public sealed class ProbeTimingTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-probe");

    [Fact]
    public void Sequential_readers_are_timed_over_all_their_work()
    {
        const int Blocks = 16;
        string file = _dir["f.bin"];
        File.WriteAllBytes(file, TestData.Random(Blocks * FileProbes.IoSize, 7));
        long size = new FileInfo(file).Length;
        var perBlock = TimeSpan.FromMilliseconds(2);
        for (int run = 0; run < 20; run++)
        {
            long first = long.MaxValue, last = 0;
            int blocks = 0;
            long Read(SafeFileHandle h, byte[] buf, long from, long to, CancellationToken ct)
            {
                Min(ref first, Stopwatch.GetTimestamp());
                for (long pos = from; pos < to; pos += FileProbes.IoSize)
                {
                    FileProbes.ReadRange(h, buf, pos, Math.Min(to, pos + FileProbes.IoSize), ct);
                    long spinFrom = Stopwatch.GetTimestamp();
                    while (Stopwatch.GetElapsedTime(spinFrom) < perBlock)
                    {
                        // busy: the readers compete with the coordinating thread for the cores, as a hot page-cache read does
                    }

                    Interlocked.Increment(ref blocks);
                }

                Max(ref last, Stopwatch.GetTimestamp());
                return to - from;
            }

            var r = FileProbes.Sequential(file, size, Blocks, Read, CancellationToken.None);
            double work = Stopwatch.GetElapsedTime(first, last).TotalSeconds;
            Assert.Equal(size, r.Bytes);
            Assert.Equal(Blocks, blocks);
            Assert.True(r.Seconds >= work, $"run {run}: timed {r.Seconds * 1e3:0.000} ms, the readers worked {work * 1e3:0.000} ms");
            Assert.True(r.MBps <= size / 1e6 / work, $"run {run}: {r.MBps:0} MB/s is more than the {size / 1e6 / work:0} MB/s the work allowed");
            Assert.True(r.Seconds >= perBlock.TotalSeconds, $"run {run}: each reader spun {perBlock.TotalMilliseconds} ms on its block, the probe timed {r.Seconds * 1e3:0.000} ms");
        }
    }

    public void Dispose() => _dir.Dispose();

    private static void Min(ref long at, long value)
    {
        for (long seen = Interlocked.Read(ref at); value < seen; seen = Interlocked.Read(ref at))
        {
            if (Interlocked.CompareExchange(ref at, value, seen) == seen)
            {
                return;
            }
        }
    }

    private static void Max(ref long at, long value)
    {
        for (long seen = Interlocked.Read(ref at); value > seen; seen = Interlocked.Read(ref at))
        {
            if (Interlocked.CompareExchange(ref at, value, seen) == seen)
            {
                return;
            }
        }
    }
}
