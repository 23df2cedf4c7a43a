using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;

namespace LazyModelFs.Testing;

/// <summary>
/// Reads files of a mount the way model loaders do, from separate python3 processes: ranges through
/// mmap (<see cref="Sha256"/>), a fault storm of many threads on one mapping (<see cref="StartStorm"/>),
/// and a sequential safetensors load (<see cref="StartSafetensorsLoad"/>). Each returns SHA-256
/// digests of the bytes it read, in order, for the test to compare with the source.
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

    // argv: PATH THREADS; stdin: "OFFSET LENGTH" lines, line k for thread k % THREADS. One shared
    // mapping; every thread waits at a barrier, then faults its ranges in order. The pages are hashed
    // straight from the mapping (a memoryview, no copy): hashlib releases the GIL for 2 KiB and more,
    // so the threads fault at the same time instead of one by one under the GIL. Prints one digest a thread.
    private const string StormScript = """
        import hashlib, mmap, sys, threading
        path, nthreads = sys.argv[1], int(sys.argv[2])
        ranges = [tuple(map(int, l.split())) for l in sys.stdin]
        f = open(path, "rb")
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        view = memoryview(m)
        digests = [None] * nthreads
        go = threading.Barrier(nthreads)
        def run(t):
            h = hashlib.sha256()
            go.wait()
            for off, n in ranges[t::nthreads]:
                h.update(view[off:off + n])
            digests[t] = h.hexdigest()
        threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if None in digests:
            sys.exit("a storm thread failed")
        print("\n".join(digests), flush=True)
        """;

    // argv: PATH. What a safetensors loader does without mmap: the 8-byte length, the JSON header, then
    // every tensor in file order, read(2) by read(2) of up to 1 MiB. Prints the digest of all of it.
    private const string LoadScript = """
        import hashlib, json, struct, sys
        h = hashlib.sha256()
        def take(f, n):
            while n > 0:
                b = f.read(min(n, 1 << 20))
                if not b:
                    sys.exit("unexpected end of file")
                h.update(b)
                n -= len(b)
        with open(sys.argv[1], "rb", buffering=0) as f:
            head = f.read(8)
            h.update(head)
            n = struct.unpack("<Q", head)[0]
            meta = f.read(n)
            h.update(meta)
            spans = sorted(v["data_offsets"] for k, v in json.loads(meta).items() if k != "__metadata__")
            for b, e in spans:
                f.seek(8 + n + b)
                take(f, e - b)
        print(h.hexdigest(), flush=True)
        """;

    public static string Sha256(string path, IEnumerable<(long Offset, int Length)> ranges)
    {
        using var p = ProbeProcess.Start(Script, [path], Lines(ranges));
        if (!p.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            p.Kill();
            throw new TimeoutException("mmap probe did not finish");
        }

        return p.Result("mmap probe").Trim();
    }

    /// <summary>
    /// Starts <paramref name="threads"/> threads faulting <paramref name="ranges"/> of one mapping of
    /// <paramref name="path"/> at once (range k on thread k % threads); its output is one digest a thread,
    /// <see cref="ExpectedStorm"/>'s lines.
    /// </summary>
    public static ProbeProcess StartStorm(string path, int threads, IEnumerable<(long Offset, int Length)> ranges) =>
        ProbeProcess.Start(StormScript, [path, threads.ToString(CultureInfo.InvariantCulture)], Lines(ranges));

    /// <summary>What a <see cref="StartStorm"/> probe prints when the file holds <paramref name="expected"/>.</summary>
    public static string ExpectedStorm(byte[] expected, int threads, IReadOnlyList<(long Offset, int Length)> ranges) =>
        string.Join('\n', Enumerable.Range(0, threads).Select(t => Expected(expected, ranges.Where((_, k) => k % threads == t))));

    /// <summary>Starts a sequential safetensors load of <paramref name="path"/>: header, then the tensors in file order; its output is the digest of those bytes.</summary>
    public static ProbeProcess StartSafetensorsLoad(string path) => ProbeProcess.Start(LoadScript, [path], null);

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

    /// <summary>Random (offset, length) pairs inside a file of <paramref name="size"/> bytes, each at least <paramref name="minLength"/> long where the file allows.</summary>
    public static List<(long Offset, int Length)> RandomRanges(long size, int count, int maxLength, int seed, int minLength = 1)
    {
        var rnd = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            long off = rnd.NextInt64(0, size);
            return (off, (int)Math.Min(rnd.Next(minLength, maxLength), size - off));
        }).ToList();
    }

    private static IEnumerable<string> Lines(IEnumerable<(long Offset, int Length)> ranges) =>
        ranges.Select(r => string.Create(CultureInfo.InvariantCulture, $"{r.Offset} {r.Length}"));
}

/// <summary>
/// A python3 script running as a child process: its stdin given at start, its output collected,
/// waited for within a deadline, and killed by its pid (SIGKILL) when the caller gives up on it.
/// </summary>
public sealed class ProbeProcess : IDisposable
{
    private readonly Process _p;
    private readonly Task<string> _stdout;
    private readonly Task<string> _stderr;
    private readonly Task _stdin;

    private ProbeProcess(Process p, IEnumerable<string>? input)
    {
        _p = p;
        _stdout = p.StandardOutput.ReadToEndAsync();
        _stderr = p.StandardError.ReadToEndAsync();
        _stdin = Task.Run(() =>
        {
            try
            {
                foreach (var line in input ?? [])
                {
                    p.StandardInput.WriteLine(line);
                }

                p.StandardInput.Close();
            }
            catch (IOException)
            {
                // the child died before reading it all: its exit code and stderr say why
            }
        });
    }

    public static ProbeProcess Start(string script, IEnumerable<string> args, IEnumerable<string>? input)
    {
        var psi = new ProcessStartInfo("python3") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(script);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        return new ProbeProcess(Process.Start(psi)!, input);
    }

    public int Pid => _p.Id;

    public bool HasExited => _p.HasExited;

    /// <summary>Whether it exited within <paramref name="timeout"/> (its output then collected).</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_p.WaitForExit(timeout))
        {
            return false;
        }

        _p.WaitForExit(); // the output streams are read to their end
        return true;
    }

    /// <summary>What it printed, once it exited with 0; otherwise an exception naming <paramref name="what"/>, its exit code and stderr.</summary>
    public string Result(string what)
    {
        _stdin.Wait();
        return _p.ExitCode == 0
            ? _stdout.Result
            : throw new InvalidOperationException($"{what} exited {_p.ExitCode}: {_stderr.Result}");
    }

    /// <summary>SIGKILL to its pid, if it still runs (a thread blocked in a FUSE request dies with it: those waits are killable).</summary>
    public void Kill()
    {
        try
        {
            if (!_p.HasExited)
            {
                _p.Kill();
                _p.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException)
        {
        }
    }

    public void Dispose()
    {
        Kill();
        _p.Dispose();
    }
}
