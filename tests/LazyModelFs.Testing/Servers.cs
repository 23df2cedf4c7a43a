using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace LazyModelFs.Testing;

public static class Ports
{
    /// <summary>A TCP port on 127.0.0.1 that nothing listens on right now.</summary>
    public static int Free()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public static bool Accepts(int port)
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}

public static class Repo
{
    /// <summary>The checkout's root (the folder holding LazyModelFs.sln).</summary>
    public static string Root { get; } = Find();

    private static string Find()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "LazyModelFs.sln")))
            {
                return d.FullName;
            }
        }

        throw new InvalidOperationException("cannot find the repository root (LazyModelFs.sln) above " + AppContext.BaseDirectory);
    }
}

public sealed class TempDir : IDisposable
{
    public TempDir(string tag = "lmfs")
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string this[string relative] => System.IO.Path.Combine(Path, relative);

    /// <summary>Writes <paramref name="size"/> random bytes (seeded by the size: the same size, the same bytes) at <paramref name="relative"/>, making its directory; returns the full path.</summary>
    public string WriteRandom(string relative, int size)
    {
        string p = this[relative];
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        File.WriteAllBytes(p, TestData.Random(size, size));
        return p;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}

/// <summary>
/// A real server process on a free loopback port, started by the test fixture and stopped by its
/// process id (never by name), so parallel test runs and other sessions are left alone.
/// </summary>
public abstract class ServerProcess : IDisposable
{
    private Process? _process;
    private readonly System.Text.StringBuilder _log = new();

    protected ServerProcess()
    {
        Port = Ports.Free();
    }

    public int Port { get; }

    public TempDir Data { get; } = new("lmfs-srv");

    public int? Pid => _process is { HasExited: false } p ? p.Id : null;

    protected abstract (string File, IEnumerable<string> Args) Command();

    protected abstract string MissingHint { get; }

    public void Start()
    {
        var (file, args) = Command();
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        try
        {
            _process = Process.Start(psi) ?? throw new InvalidOperationException($"{file} did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"cannot start {file}: {e.Message}. {MissingHint}", e);
        }

        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!Ports.Accepts(Port))
        {
            if (_process.HasExited || DateTime.UtcNow > deadline)
            {
                string why = _process.HasExited ? $"exited with {_process.ExitCode}" : "did not listen within 30 s";
                Stop();
                throw new InvalidOperationException($"{file} on port {Port} {why}:\n{Log}");
            }

            Thread.Sleep(50);
        }
    }

    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    /// <summary>Freezes the server (SIGSTOP to its pid): connections stay open and nothing answers, like an overloaded or partitioned server.</summary>
    public void Pause() => Signal(19);

    /// <summary>Lets a paused server run again (SIGCONT).</summary>
    public void Resume() => Signal(18);

    private void Signal(int sig)
    {
        if (_process is { HasExited: false } p && Signals.Kill(p.Id, sig) != 0)
        {
            throw new InvalidOperationException($"kill({p.Id}, {sig}) failed");
        }
    }

    /// <summary>Stops the server (SIGKILL to its pid) and waits until the port is closed.</summary>
    public void Stop()
    {
        var p = _process;
        _process = null;
        if (p is null)
        {
            return;
        }

        try
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException)
        {
        }

        p.Dispose();
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
            Stop();
            Data.Dispose();
        }
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_log)
        {
            if (_log.Length < 64 * 1024)
            {
                _log.AppendLine(line);
            }
        }
    }
}

/// <summary>redis-server from the Debian package (scripts/setup.sh installs it), with persistence off.</summary>
public sealed class RedisServer : ServerProcess
{
    public RedisServer()
        : this(null)
    {
    }

    public RedisServer(string? password, bool persistent = false)
    {
        Password = password;
        Persistent = persistent;
        Start();
    }

    public string? Password { get; }

    /// <summary>Every write is appended and fsynced (AOF), so a SIGKILL and a restart on the same port keep the data.</summary>
    public bool Persistent { get; }

    /// <summary>A metadata URL for a fresh volume on this server (volumes are isolated by hash-tagged key prefixes).</summary>
    public string NewVolumeUrl() => $"redis://127.0.0.1:{Port}/0?volume=t{Guid.NewGuid():N}";

    protected override string MissingHint => "Install it with scripts/setup.sh (apt-get install redis-server).";

    protected override (string File, IEnumerable<string> Args) Command()
    {
        var args = new List<string> { "--port", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", Persistent ? "yes" : "no", "--dir", Data.Path, "--daemonize", "no" };
        if (Persistent)
        {
            args.AddRange(["--appendfsync", "always"]);
        }
        if (Password is not null)
        {
            args.AddRange(["--requirepass", Password]);
        }

        return ("redis-server", args);
    }
}

/// <summary>s3rver (npm, pinned in scripts/s3rver/package-lock.json) on loopback, with one bucket configured.</summary>
public sealed class S3rverServer : ServerProcess
{
    public const string AccessKey = "S3RVER";
    public const string SecretKey = "S3RVER";

    public S3rverServer()
    {
        Start();
    }

    public string Bucket { get; } = "lmfs-test";

    public string Endpoint => $"http://127.0.0.1:{Port}";

    /// <summary>A storage URL under a fresh prefix of the test bucket.</summary>
    public string NewStorageUrl() => $"s3://{Bucket}/t{Guid.NewGuid():N}?endpoint={Uri.EscapeDataString(Endpoint)}&region=us-east-1&path-style=true";

    public static string Script => Path.Combine(Repo.Root, "scripts", "s3rver", "node_modules", "s3rver", "bin", "s3rver.js");

    protected override string MissingHint => "Install it with scripts/setup.sh (npm ci in scripts/s3rver).";

    protected override (string File, IEnumerable<string> Args) Command()
    {
        if (!File.Exists(Script))
        {
            throw new InvalidOperationException($"s3rver is not installed at {Script}. {MissingHint}");
        }

        return ("node", [Script, "-d", Data.Path, "-a", "127.0.0.1", "-p", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-s", "--configure-bucket", Bucket]);
    }
}

/// <summary>A redis-server and an s3rver for one test class (xunit class fixture).</summary>
public sealed class RedisAndS3 : IDisposable
{
    public RedisServer Redis { get; } = new();

    public S3rverServer S3 { get; } = new();

    public void Dispose()
    {
        Redis.Dispose();
        S3.Dispose();
    }
}

/// <summary>kill(2), to pause, resume or stop a process by its pid.</summary>
public static partial class Signals
{
    public const int SIGKILL = 9, SIGTERM = 15, SIGCONT = 18, SIGSTOP = 19;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int sig);
}
