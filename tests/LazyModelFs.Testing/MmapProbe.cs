using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;

namespace LazyModelFs.Testing;

/// <summary>
/// Reads ranges of a file through mmap in a separate process (python3's mmap) and returns the SHA-256
/// of the bytes read, in order.
///
/// Why another process: a test that mounts a filesystem in its own process must never fault pages
/// of that mount from managed code. A page fault is not a P/Invoke, so the faulting thread stays in
/// cooperative mode; if a GC starts, it waits for that thread, while the FUSE reader threads that
/// would answer the fault wait for the GC — a deadlock (seen here, one run in four). Real loaders
/// are separate processes, which this reproduces.
/// </summary>
public static class MmapProbe
{
    private const string Script = """
        import hashlib, mmap, sys
        h = hashlib.sha256()
        with open(sys.argv[1], "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            for line in sys.stdin:
                off, n = map(int, line.split())
                h.update(m[off:off + n])
        print(h.hexdigest())
        """;

    public static string Sha256(string path, IEnumerable<(long Offset, int Length)> ranges)
    {
        var psi = new ProcessStartInfo("python3") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(Script);
        psi.ArgumentList.Add(path);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        foreach (var (o, n) in ranges)
        {
            p.StandardInput.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{o} {n}"));
        }

        p.StandardInput.Close();
        if (!p.WaitForExit(120_000))
        {
            p.Kill();
            throw new TimeoutException("mmap probe did not finish");
        }

        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException("mmap probe failed: " + stderr.Result);
        }

        return stdout.Result.Trim();
    }

    /// <summary>The digest <see cref="Sha256"/> must return when the file holds <paramref name="expected"/>.</summary>
    public static string Expected(byte[] expected, IEnumerable<(long Offset, int Length)> ranges)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (o, n) in ranges)
        {
            h.AppendData(expected, (int)o, (int)Math.Min(n, expected.Length - o));
        }

        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    /// <summary>Random (offset, length) pairs inside a file of <paramref name="size"/> bytes.</summary>
    public static List<(long Offset, int Length)> RandomRanges(long size, int count, int maxLength, int seed)
    {
        var rnd = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            long off = rnd.NextInt64(0, size);
            return (off, (int)Math.Min(rnd.Next(1, maxLength), size - off));
        }).ToList();
    }
}
