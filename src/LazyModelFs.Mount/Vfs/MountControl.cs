using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Vfs;

/// <summary>
/// The control socket of a live mount: a unix socket (mode 0600, so only the user who mounted it, or
/// root, can connect) where a client writes one command line and reads one JSON line back. It is how
/// `lmfs bench` reads the daemon's counters and puts a file back to cold or warm without remounting.
///
/// Commands:
///   stats                       counters of READ requests (count, bytes to the kernel, errors), the chunk reader, memory tier, disk cache and directory handles
///   forget INO memory|disk      drop the file's queued background fetches, its chunks from the memory tier (and the disk cache),
///                               forget its readahead streams, restart prefetch at its next open
///   invalidate INO              drop the kernel's cached pages of the file (NOTIFY_INVAL_INODE)
///   plan INO OFF:LEN,...        a loader's read plan for an open file: its chunks prefetched in that order (lmfs plan)
///   profile INO forget          remove the file's access profiles from the metadata, and drop what its load recorded (lmfs bench)
/// Errors answer {"error": "..."}. Nothing here returns file data or secrets.
/// </summary>
internal sealed class MountControl : IDisposable
{
    private readonly Socket _listener;
    private readonly MountHost _mount;
    private readonly ILogger _log;
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA2213", Justification = "cancelled, never disposed: connections still being served read its token; without CancelAfter it holds nothing to free")]
    private readonly CancellationTokenSource _stop = new();

    private MountControl(Socket listener, string path, MountHost mount, ILogger log)
    {
        _listener = listener;
        Path = path;
        _mount = mount;
        _log = log;
        _ = AcceptLoopAsync();
    }

    public string Path { get; }

    /// <summary>Listens at <paramref name="path"/> (a stale socket file there is replaced). Null, with a warning, when that is impossible.</summary>
    public static MountControl? Start(string path, MountHost mount, ILogger? log = null)
    {
        log ??= NullLogger.Instance;
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
            File.Delete(path);
            s.Bind(new UnixDomainSocketEndPoint(path));
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            s.Listen(16);
            return new MountControl(s, path, mount, log);
        }
        catch (Exception ex) when (ex is SocketException or IOException or UnauthorizedAccessException)
        {
            s.Dispose();
            log.LogWarning("control: cannot listen on {Path} ({Message}); lmfs bench cannot reset this mount", path, ex.Message);
            return null;
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        try
        {
            File.Delete(Path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket c;
            try
            {
                c = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            _ = ServeAsync(c);
        }
    }

    private async Task ServeAsync(Socket c)
    {
        using (c)
        using (var stream = new NetworkStream(c, ownsSocket: false))
        {
            JsonObject reply;
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                timeout.CancelAfter(TimeSpan.FromSeconds(30));
                string line = await ReadLineAsync(stream, timeout.Token).ConfigureAwait(false);
                reply = await ExecuteAsync(line, timeout.Token).ConfigureAwait(false);
            }
            catch (LmfsException ex)
            {
                reply = new JsonObject { ["error"] = ex.Message };
            }
            catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or FormatException or OverflowException)
            {
                reply = new JsonObject { ["error"] = ex.Message };
            }

            try
            {
                await stream.WriteAsync(Encoding.UTF8.GetBytes(reply.ToJsonString() + "\n")).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or SocketException)
            {
                // the client went away
            }
        }
    }

    private async Task<JsonObject> ExecuteAsync(string line, CancellationToken ct)
    {
        var words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        switch (words)
        {
            case ["stats"]:
                return Stats();
            case ["forget", var ino, var what and ("memory" or "disk")]:
                {
                    var (memory, disk) = await _mount.FileSystem.ForgetCachedAsync(ulong.Parse(ino, CultureInfo.InvariantCulture), what == "disk", ct).ConfigureAwait(false);
                    return new JsonObject { ["memoryChunks"] = memory, ["diskChunks"] = disk };
                }

            case ["plan", var ino, var ranges]:
                return new JsonObject { ["chunks"] = _mount.FileSystem.Plan(ulong.Parse(ino, CultureInfo.InvariantCulture), ReadPlan.Parse(ranges)) };

            case ["profile", var ino, "forget"]:
                return new JsonObject { ["profiles"] = await _mount.FileSystem.ForgetProfilesAsync(ulong.Parse(ino, CultureInfo.InvariantCulture), ct).ConfigureAwait(false) };

            case ["invalidate", var ino]:
                {
                    var r = await _mount.Session.Connection.InvalidateInodeAsync(ulong.Parse(ino, CultureInfo.InvariantCulture), 0, 0).WaitAsync(ct).ConfigureAwait(false);
                    return new JsonObject { ["result"] = r.ToString() };
                }

            default:
                _log.LogDebug("control: unknown command {Line}", line);
                return new JsonObject { ["error"] = $"unknown command '{TerminalText.Excerpt(line, 80)}'; use stats, forget INO memory|disk, invalidate INO, plan INO OFF:LEN,..., or profile INO forget" };
        }
    }

    private JsonObject Stats() => _mount.Stats();

    /// <summary>Bytes of one command line: a plan of tensors' ranges needs more than the other commands' few words.</summary>
    private const int MaxLine = ReadPlan.MaxLine;

    private static async Task<string> ReadLineAsync(Stream s, CancellationToken ct)
    {
        var buf = new byte[512];
        int n = 0;
        while (true)
        {
            if (n == buf.Length)
            {
                if (buf.Length >= MaxLine)
                {
                    throw new LmfsException($"a command line is longer than {MaxLine} bytes", "send a shorter plan", 2);
                }

                Array.Resize(ref buf, Math.Min(MaxLine, buf.Length * 4));
            }

            int k = await s.ReadAsync(buf.AsMemory(n), ct).ConfigureAwait(false);
            if (k == 0)
            {
                break;
            }

            n += k;
            int nl = Array.IndexOf(buf, (byte)'\n', n - k, k);
            if (nl >= 0)
            {
                return Encoding.UTF8.GetString(buf, 0, nl).Trim();
            }
        }

        return Encoding.UTF8.GetString(buf, 0, n).Trim();
    }
}
