using System.Diagnostics;
using System.Globalization;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using LazyModelFs.Chunks;
using LazyModelFs.Read;
using LazyModelFs.Storage;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Bench;

/// <summary>
/// Reads through a path the way applications do: plain preads of 1 MiB (like dd, cp or a loader's
/// read loop), several readers each on its own slice, random reads one at a time, and the time to
/// open and read the first MiB. Every probe checks that it got every byte it asked for; a short read
/// is an error, not a figure.
/// </summary>
public static class FileProbes
{
    public const int IoSize = 1 << 20;

    /// <summary><paramref name="readers"/> threads, each reading its own contiguous, MiB-aligned slice of the file.</summary>
    public static SeqResult Sequential(string path, long size, int readers, CancellationToken ct = default) =>
        Sequential(path, size, readers, ReadRange, ct);

    /// <summary>
    /// <see cref="Sequential(string, long, int, CancellationToken)"/> with the read of one slice given
    /// (tests give one that does known work). The clock starts in the barrier's post-phase action,
    /// which runs once every reader has arrived and before any is released, and stops at the last
    /// reader's last byte, taken on that reader. It used to start on the coordinating thread after it
    /// was released with the readers: on two busy cores that thread ran late, after readers had read
    /// much of a hot file, and a 4-reader page-cache ceiling read 17,135 up to 1,426,030 MB/s
    /// (issue 18, item 14). Now the measured time covers all the work, so no figure is faster than it.
    /// </summary>
    internal static SeqResult Sequential(string path, long size, int readers, Func<SafeFileHandle, byte[], long, long, CancellationToken, long> readRange, CancellationToken ct)
    {
        readers = (int)Math.Clamp(readers, 1, Math.Max(1, (size + IoSize - 1) / IoSize));
        long slice = (((size + readers - 1) / readers) + IoSize - 1) / IoSize * IoSize;
        var errors = new Exception?[readers];
        long total = 0;
        long started = 0, ended = 0;
        using var start = new Barrier(readers + 1, _ => Interlocked.CompareExchange(ref started, Stopwatch.GetTimestamp(), 0));
        var threads = new Thread[readers];
        for (int i = 0; i < readers; i++)
        {
            int k = i;
            threads[i] = new Thread(() =>
            {
                try
                {
                    using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                    var buf = new byte[IoSize];
                    long from = k * slice, to = Math.Min(size, from + slice);
                    start.SignalAndWait(ct);
                    long n = readRange(h, buf, from, to, ct);
                    Interlocked.Add(ref total, n);
                    long now = Stopwatch.GetTimestamp();
                    for (long seen = Interlocked.Read(ref ended); now > seen; seen = Interlocked.Read(ref ended))
                    {
                        if (Interlocked.CompareExchange(ref ended, now, seen) == seen)
                        {
                            break;
                        }
                    }
                }
                catch (Exception ex)
                {
                    errors[k] = ex;
                    start.RemoveParticipant();
                }
            }) { IsBackground = true, Name = "bench-reader-" + k };
            threads[i].Start();
        }

        start.SignalAndWait(ct);
        foreach (var t in threads)
        {
            t.Join();
        }

        if (errors.FirstOrDefault(e => e is not null) is { } err)
        {
            throw new IOException($"reading {path} failed: {err.Message}", err);
        }

        return new SeqResult(readers, Interlocked.Read(ref total), Stopwatch.GetElapsedTime(started, ended).TotalSeconds);
    }

    /// <summary>Reads [from, to) in 1 MiB preads; a read that returns 0 before the end is an error.</summary>
    public static long ReadRange(SafeFileHandle h, byte[] buf, long from, long to, CancellationToken ct = default)
    {
        long pos = from;
        while (pos < to)
        {
            ct.ThrowIfCancellationRequested();
            int want = (int)Math.Min(buf.Length, to - pos);
            int n = RandomAccess.Read(h, buf.AsSpan(0, want), pos);
            if (n <= 0)
            {
                throw new IOException($"short read: end of data at offset {pos}, expected {to}");
            }

            pos += n;
        }

        return pos - from;
    }

    /// <summary><paramref name="count"/> reads of <paramref name="ioSize"/> bytes at random 4 KiB-aligned offsets, one at a time.</summary>
    public static RandomResult Random(string path, long size, int count, int ioSize, int seed, CancellationToken ct = default)
    {
        var (bytes, ms) = RandomSamples(path, size, count, ioSize, seed, ct);
        return new RandomResult((int)Math.Min(ioSize, size), bytes, LatencySummary.From(ms));
    }

    /// <summary>Like <see cref="Random"/>, returning every read's latency in milliseconds.</summary>
    public static (long Bytes, List<double> Ms) RandomSamples(string path, long size, int count, int ioSize, int seed, CancellationToken ct = default)
    {
        int len = (int)Math.Min(ioSize, size);
        var buf = new byte[len];
        var ms = new List<double>(count);
        long bytes = 0;
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        foreach (long off in RandomOffsets(size, len, count, seed))
        {
            long ts = Stopwatch.GetTimestamp();
            bytes += ReadRange(h, buf, off, off + len, ct);
            ms.Add(Stopwatch.GetElapsedTime(ts).TotalMilliseconds);
        }

        return (bytes, ms);
    }

    /// <summary>
    /// Where a random-read measurement reads: 4 KiB-aligned offsets, uniform over the file, the same
    /// for the same seed — so the store ceiling reads exactly the places the mount is asked for.
    /// </summary>
    public static IEnumerable<long> RandomOffsets(long size, int len, int count, int seed)
    {
        var rng = new Random(seed);
        long slots = Math.Max(1, ((size - len) / 4096) + 1);
        for (int i = 0; i < count; i++)
        {
            yield return rng.NextInt64(slots) * 4096;
        }
    }

    /// <summary>Milliseconds to open the file and read its first MiB.</summary>
    public static double FirstMiB(string path, long size)
    {
        var buf = new byte[(int)Math.Min(IoSize, Math.Max(1, size))];
        long ts = Stopwatch.GetTimestamp();
        using (var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            ReadRange(h, buf, 0, Math.Min(IoSize, size));
        }

        return Stopwatch.GetElapsedTime(ts).TotalMilliseconds;
    }

    /// <summary>Writes a file of random bytes (a repeated 16 MiB random block) and flushes it to disk.</summary>
    public static void WriteRandomFile(string path, long size)
    {
        var block = new byte[16 << 20];
        System.Random.Shared.NextBytes(block);
        using var h = File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write, FileShare.Read, FileOptions.None, size);
        for (long pos = 0; pos < size; pos += block.Length)
        {
            RandomAccess.Write(h, block.AsSpan(0, (int)Math.Min(block.Length, size - pos)), pos);
        }

        RandomAccess.FlushToDisk(h);
    }
}

/// <summary>
/// The object-store ceiling: the file's chunk objects read straight from the store with ranged
/// GETs (no lmfs cache, no verification), with N streams and with one, plus random 1 MiB ranged
/// GETs and one 1 MiB GET for the first byte. Each GET is retried by <see cref="RetryPolicy.Bounded"/>,
/// its one retry layer (the store makes one attempt per call).
/// </summary>
public static class StoreProbes
{
    public static async Task<SeqResult> ParallelAsync(IObjectStore store, ChunkTable table, int streams, CancellationToken ct = default)
    {
        var chunks = table.Entries;
        int next = -1;
        long bytes = 0;
        int max = chunks.Count == 0 ? 1 : chunks.Max(c => c.StoredLength);
        var sw = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, Math.Max(1, streams)).Select(_ => Task.Run(
            async () =>
            {
                var buf = new byte[max];
                int i;
                while ((i = Interlocked.Increment(ref next)) < chunks.Count)
                {
                    var c = chunks[i];
                    int n = await GetAsync(store, c.Id.ObjectKey(), 0, buf.AsMemory(0, c.StoredLength), ct).ConfigureAwait(false);
                    if (n != c.StoredLength)
                    {
                        throw new IOException($"object {c.Id.ObjectKey()} returned {n} of {c.StoredLength} bytes");
                    }

                    Interlocked.Add(ref bytes, n);
                }
            },
            ct))).ConfigureAwait(false);
        return new SeqResult(Math.Max(1, streams), bytes, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Ranged GETs of <paramref name="ioSize"/> plain bytes at random file offsets (two GETs when the range spans two chunks).</summary>
    public static async Task<RandomResult> RandomAsync(IObjectStore store, ChunkTable table, int count, int ioSize, int seed, CancellationToken ct = default)
    {
        long size = table.PlainSize;
        int len = (int)Math.Min(ioSize, size);
        var buf = new byte[len];
        var ms = new List<double>(count);
        long bytes = 0;
        foreach (long off in FileProbes.RandomOffsets(size, len, count, seed))
        {
            long ts = Stopwatch.GetTimestamp();
            bytes += await GetPlainRangeAsync(store, table, off, buf, ct).ConfigureAwait(false);
            ms.Add(Stopwatch.GetElapsedTime(ts).TotalMilliseconds);
        }

        return new RandomResult(len, bytes, LatencySummary.From(ms));
    }

    /// <summary>Milliseconds for one ranged GET of the file's first MiB.</summary>
    public static async Task<double> FirstMiBAsync(IObjectStore store, ChunkTable table, CancellationToken ct = default)
    {
        long size = table.PlainSize;
        var buf = new byte[(int)Math.Min(FileProbes.IoSize, Math.Max(1, size))];
        long ts = Stopwatch.GetTimestamp();
        await GetPlainRangeAsync(store, table, 0, buf, ct).ConfigureAwait(false);
        return Stopwatch.GetElapsedTime(ts).TotalMilliseconds;
    }

    private static Task<int> GetAsync(IObjectStore store, string key, long offset, Memory<byte> dest, CancellationToken ct) =>
        RetryPolicy.Bounded.RunAsync(t => store.GetAsync(key, offset, dest, t), ct);

    private static async Task<int> GetPlainRangeAsync(IObjectStore store, ChunkTable table, long offset, byte[] dest, CancellationToken ct)
    {
        int done = 0;
        while (done < dest.Length)
        {
            var (index, within) = table.Locate(offset + done);
            var c = table[index];
            int want = Math.Min(dest.Length - done, c.PlainLength - within);
            // A plain object is the 16-byte header and the bytes; a compressed one must be read whole.
            int n = c.Codec == ChunkCodec.None
                ? await GetAsync(store, c.Id.ObjectKey(), ChunkObject.HeaderSize + within, dest.AsMemory(done, want), ct).ConfigureAwait(false)
                : await WholeAsync(c).ConfigureAwait(false);
            if (n != want)
            {
                throw new IOException($"object {c.Id.ObjectKey()} returned {n} of {want} bytes");
            }

            done += n;

            async Task<int> WholeAsync(ChunkEntry e)
            {
                var obj = new byte[e.StoredLength];
                await GetAsync(store, e.Id.ObjectKey(), 0, obj, ct).ConfigureAwait(false);
                return want;
            }
        }

        return done;
    }
}

/// <summary>
/// A safetensors load the way loaders do it: read the 8-byte length and the JSON header, mmap the
/// file, and copy every tensor out of the mapping (as a copy to the GPU does), in file order or
/// shuffled. Run it in a process other than the one serving the mount (architecture.md: never
/// fault your own mount's pages from managed code).
/// </summary>
public static class SafetensorsProbe
{
    public static (long Bytes, int Tensors) Describe(string path)
    {
        var ranges = Ranges(path, out _);
        return (ranges.Sum(r => r.End - r.Begin), ranges.Count);
    }

    public static unsafe SafetensorsRun Load(string path, string phase, bool shuffled, int seed = 1)
    {
        long ts = Stopwatch.GetTimestamp();
        var ranges = Ranges(path, out long size);
        if (shuffled)
        {
            new Random(seed).Shuffle(CollectionsMarshal.AsSpan(ranges));
        }

        double first = 0;
        long bytes = 0;
        var scratch = new byte[4 << 20];
        using (var mmf = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read))
        using (var view = mmf.CreateViewAccessor(0, size, MemoryMappedFileAccess.Read))
        {
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            try
            {
                p += view.PointerOffset;
                for (int i = 0; i < ranges.Count; i++)
                {
                    var (b, e) = ranges[i];
                    for (long pos = b; pos < e; pos += scratch.Length)
                    {
                        int n = (int)Math.Min(scratch.Length, e - pos);
                        // SAFETY: [pos, pos + n) lies inside the file (TensorRanges checks every range against its size), and the view maps the whole file.
                        new ReadOnlySpan<byte>(p + pos, n).CopyTo(scratch);
                    }

                    bytes += e - b;
                    if (i == 0)
                    {
                        first = Stopwatch.GetElapsedTime(ts).TotalMilliseconds;
                    }
                }
            }
            finally
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
            }
        }

        return new SafetensorsRun(phase, shuffled ? "shuffled" : "file", Math.Round(first, 2), Stopwatch.GetElapsedTime(ts).TotalSeconds, bytes, ranges.Count);
    }

    private static List<(long Begin, long End)> Ranges(string path, out long size)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        size = RandomAccess.GetLength(h);
        var first8 = new byte[8];
        if (RandomAccess.Read(h, first8, 0) != 8 || SafetensorsHeader.HeaderLength(first8, size) is not { } n)
        {
            throw new Util.LmfsException($"'{path}' is not a safetensors file (its first 8 bytes are not a header length)", "give a *.safetensors file", 2);
        }

        var json = new byte[n];
        FileProbes.ReadRange(h, json, 8, 8 + n);
        return SafetensorsHeader.TensorRanges(json, size) ?? throw new Util.LmfsException($"'{path}' has a header that is not safetensors JSON", "give a *.safetensors file", 2);
    }
}

/// <summary>CPU time and peak resident set of a process, from /proc.</summary>
public sealed partial class ProcessMeter(int pid)
{
    private static readonly long ClockTicks = Math.Max(1, sysconf(2)); // _SC_CLK_TCK

    public int Pid { get; } = pid;

    public bool Alive => Directory.Exists($"/proc/{Pid}");

    /// <summary>User + system CPU seconds so far, or null when the process is gone.</summary>
    public double? CpuSeconds()
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{Pid}/stat");
            // Fields after the command name "(…)", which may itself hold spaces: state is field 3, utime 14, stime 15.
            var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return (long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture)) / (double)ClockTicks;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>Peak resident set (VmHWM) since start or the last <see cref="ResetPeak"/>.</summary>
    public long? PeakRss()
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{Pid}/status"))
            {
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
        }

        return null;
    }

    /// <summary>Starts a new peak (writing 5 to /proc/PID/clear_refs; Linux 4.0+, same user or root).</summary>
    public bool ResetPeak()
    {
        try
        {
            File.WriteAllText($"/proc/{Pid}/clear_refs", "5");
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>
    /// The process serving a mount point other than lmfs's: the one whose command line has the mount
    /// point as an argument of its own (rclone mount REMOTE DIR, s3fs BUCKET DIR). Null when none or several.
    /// </summary>
    public static int? FindByArgument(string mountPoint)
    {
        string want = Fuse.FuseMount.ResolveMountPoint(mountPoint);
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId)
            {
                continue;
            }

            try
            {
                var args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                // A server names its mount point as it was given, perhaps through a link.
                if (args.Skip(1).Any(a => a.StartsWith('/') && (a.TrimEnd('/') == want || Fuse.FuseMount.ResolveMountPoint(a) == want)))
                {
                    found.Add(pid);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }

        return found.Count == 1 ? found[0] : null;
    }

    [LibraryImport("libc")]
    private static partial long sysconf(int name);
}
