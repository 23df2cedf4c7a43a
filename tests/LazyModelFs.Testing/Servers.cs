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
    /// <summary>Writes <paramref name="size"/> seeded random bytes (the seed defaults to the size) at <paramref name="relative"/>, directories made; returns the path.</summary>
    public string WriteRandom(string relative, int size, int? seed = null)
    {
        string p = this[relative];
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        File.WriteAllBytes(p, TestData.Random(size, seed ?? size));
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

    /// <param name="args">More redis-server options: `--replicaof 127.0.0.1 PORT`, `--cluster-enabled yes` (<see cref="Cluster"/>).</param>
    public RedisServer(string? password, bool persistent = false, IReadOnlyList<string>? args = null)
    {
        Password = password;
        Persistent = persistent;
        _args = args ?? [];
        Start();
    }

    private readonly IReadOnlyList<string> _args;

    /// <summary>A one-node Redis Cluster (all 16384 slots on this server), ready for commands.</summary>
    public static RedisServer Cluster()
    {
        // nodes.conf is relative to --dir, the server's own data directory.
        var r = new RedisServer(null, args: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        r.Cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383");
        r.WaitFor(() => r.Cli("CLUSTER", "INFO").Contains("cluster_state:ok", StringComparison.Ordinal), "cluster_state:ok");
        return r;
    }

    /// <summary>Runs redis-cli against this server (with its password) and returns what it printed.</summary>
    public string Cli(params string[] args) => RedisCliRunner.Run(Port, Password, args);

    /// <summary>Waits (bounded: 60 s) until <paramref name="done"/> holds; a setup step, never a timing assertion.</summary>
    public void WaitFor(Func<bool> done, string what) => RedisCliRunner.WaitFor(done, $"redis-server on port {Port}: {what}", Log);

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
            args.AddRange(["--requirepass", Password, "--masterauth", Password]);
        }

        args.AddRange(_args);
        return ("redis-server", args);
    }
}

/// <summary>
/// A real Redis Sentinel (`redis-server CONF --sentinel`, the Debian package's sentinel) on a free
/// loopback port, monitoring one master under <see cref="Service"/>, with short failure timeouts.
/// </summary>
public sealed class RedisSentinel : ServerProcess
{
    /// <param name="masterPassword">The primary's password (`sentinel auth-pass`); the sentinel itself asks for none.</param>
    public RedisSentinel(int masterPort, string service = "mymaster", string? masterPassword = null)
    {
        MasterPort = masterPort;
        Service = service;
        _masterPassword = masterPassword;
        Start();
    }

    private readonly string? _masterPassword;

    public int MasterPort { get; }

    public string Service { get; }

    protected override string MissingHint => "Install it with scripts/setup.sh (apt-get install redis-server, which holds the sentinel).";

    public string Cli(params string[] args) => RedisCliRunner.Run(Port, null, args);

    /// <summary>The port of the master the sentinel names now.</summary>
    public int MasterPortNow() =>
        int.TryParse(Cli("SENTINEL", "get-master-addr-by-name", Service).Split('\n', StringSplitOptions.RemoveEmptyEntries).ElementAtOrDefault(1), out int p) ? p : 0;

    public void WaitFor(Func<bool> done, string what) => RedisCliRunner.WaitFor(done, $"sentinel on port {Port}: {what}", Log);

    protected override (string File, IEnumerable<string> Args) Command()
    {
        // The sentinel rewrites its configuration file, so it lives in the server's own directory.
        string conf = Data["sentinel.conf"];
        File.WriteAllText(conf, string.Join('\n',
            $"port {Port}",
            "bind 127.0.0.1",
            "daemonize no",
            $"dir {Data.Path}",
            $"sentinel monitor {Service} 127.0.0.1 {MasterPort} 1",
            $"sentinel down-after-milliseconds {Service} 1000",
            $"sentinel failover-timeout {Service} 10000",
            _masterPassword is null ? "" : $"sentinel auth-pass {Service} {_masterPassword}",
            ""));
        return ("redis-server", [conf, "--sentinel"]);
    }
}

internal static class RedisCliRunner
{
    public static string Run(int port, string? password, string[] args)
    {
        var psi = new ProcessStartInfo("redis-cli") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-p");
        psi.ArgumentList.Add(port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (password is not null)
        {
            // redis-cli reads REDISCLI_AUTH, so the password stays out of argv (ps).
            psi.Environment["REDISCLI_AUTH"] = password;
        }

        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return o + err.Result;
    }

    public static void WaitFor(Func<bool> done, string what, string log)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!done())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"{what} did not happen within 60 s:\n{log}");
            }

            Thread.Sleep(100);
        }
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

    /// <summary>A fresh volume's metadata URL, storage URL and options on these servers (the contract suites' Redis + s3rver pair).</summary>
    public (string Meta, string Storage, LazyModelFs.Storage.StorageOptions Options) NewVolume() =>
        (Redis.NewVolumeUrl(), S3.NewStorageUrl(), new LazyModelFs.Storage.StorageOptions { AccessKey = S3rverServer.AccessKey, SecretKey = S3rverServer.SecretKey });

    /// <summary>A fresh volume on the embedded pair (SQLite + local directory) under <paramref name="dir"/>.</summary>
    public static (string Meta, string Storage, LazyModelFs.Storage.StorageOptions Options) NewEmbeddedVolume(TempDir dir)
    {
        string id = Guid.NewGuid().ToString("N");
        return ($"sqlite://{dir[id + "/meta.db"]}", $"file://{dir[id + "/objects"]}", new LazyModelFs.Storage.StorageOptions());
    }

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
