using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using LazyModelFs.Cache;
using LazyModelFs.Storage;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Peer;

/// <summary>
/// The serving side of the peer tier (issue 15, <c>--peer-listen</c>): answers other nodes' signed
/// requests for chunks (<see cref="PeerProtocol"/>) from this node's chunk cache — its memory, its
/// disk cache, or the object store, fetched once however many ask (the cache's single flight) and
/// cached here. Bounded: at most <see cref="MaxConnections"/> requests at once (more are closed
/// unanswered, and their askers go to the store), a request head of <see cref="PeerProtocol.MaxHead"/>
/// bytes read within <see cref="HeadDeadline"/>, and the whole answer within <see cref="Deadline"/>.
/// It runs on the thread pool; the FUSE readers never wait for it.
/// </summary>
public sealed class PeerServer : IDisposable
{
    public const int MaxConnections = 64;

    public static readonly TimeSpan HeadDeadline = TimeSpan.FromSeconds(5);

    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    private readonly Socket _listener;
    private readonly ChunkCache _cache;
    private readonly byte[] _secret;
    private readonly int _chunkSize;
    private readonly ILogger _log;
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA2213", Justification = "cancelled, never disposed: requests still being served read its token")]
    private readonly CancellationTokenSource _stop = new();
    private int _connections;
    private long _served, _servedBytes, _rejected, _failed, _busy;

    private PeerServer(Socket listener, ChunkCache cache, byte[] secret, int chunkSize, ILogger log)
    {
        _listener = listener;
        _cache = cache;
        _secret = secret;
        _chunkSize = chunkSize;
        _log = log;
        Address = (IPEndPoint)listener.LocalEndPoint!;
    }

    public IPEndPoint Address { get; }

    /// <summary>Binds <paramref name="at"/> (exit 2 when it cannot be bound) and serves <paramref name="cache"/>'s chunks to signed requests.</summary>
    public static PeerServer Start(IPEndPoint at, ChunkCache cache, byte[] secret, int chunkSize, ILogger log)
    {
        var s = new Socket(at.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            s.Bind(at);
            s.Listen(256);
        }
        catch (SocketException ex)
        {
            s.Dispose();
            throw new LmfsException($"--peer-listen {at} cannot be bound: {ex.Message}", "choose a free port on an address of this host", 2, ex);
        }

        var server = new PeerServer(s, cache, secret, chunkSize, log);
        _ = server.AcceptLoopAsync();
        return server;
    }

    public void AddStats(System.Text.Json.Nodes.JsonObject o)
    {
        o["peerServed"] = Interlocked.Read(ref _served);
        o["peerServedBytes"] = Interlocked.Read(ref _servedBytes);
        o["peerRejected"] = Interlocked.Read(ref _rejected);
        o["peerServeFailed"] = Interlocked.Read(ref _failed);
        o["peerServeBusy"] = Interlocked.Read(ref _busy);
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
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
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex)
            {
                // Out of descriptors or buffers for a moment: keep serving, never stop listening silently.
                _log.LogWarning("peer: accepting a connection failed: {Message}", ex.Message);
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }

            if (Interlocked.Increment(ref _connections) > MaxConnections)
            {
                Interlocked.Decrement(ref _connections);
                Interlocked.Increment(ref _busy);
                _ = RefuseBusyAsync(c); // the asker goes to the object store, and does not take this member for dead
                continue;
            }

            _ = ServeAsync(c);
        }
    }

    private static async Task RefuseBusyAsync(Socket c)
    {
        using (c)
        {
            try
            {
                using var stream = new NetworkStream(c, ownsSocket: false);
                using var t = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                await AnswerAsync(stream, 503, "busy", t.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException)
            {
            }
        }
    }

    private async Task ServeAsync(Socket c)
    {
        try
        {
            using (c)
            using (var stream = new NetworkStream(c, ownsSocket: false))
            using (var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
            {
                deadline.CancelAfter(HeadDeadline);
                var head = await ReadHeadAsync(stream, deadline.Token).ConfigureAwait(false);
                deadline.CancelAfter(Deadline);
                if (head is null)
                {
                    await AnswerAsync(stream, 400, "bad request", deadline.Token).ConfigureAwait(false);
                    return;
                }

                var (method, target, headers) = head.Value;
                if (method != "GET")
                {
                    await AnswerAsync(stream, 405, "only GET", deadline.Token).ConfigureAwait(false);
                    return;
                }

                if (!PeerProtocol.Verify(_secret, target, headers.GetValueOrDefault("x-lmfs-time"), headers.GetValueOrDefault("x-lmfs-from"), headers.GetValueOrDefault("authorization"), DateTimeOffset.UtcNow))
                {
                    Interlocked.Increment(ref _rejected);
                    _log.LogWarning("peer: refused a request from {Remote}: no valid signature (a node with another secret, a clock more than {Skew} s off, or not a peer)", c.RemoteEndPoint, PeerProtocol.MaxSkew.TotalSeconds);
                    await AnswerAsync(stream, 401, "no valid signature", deadline.Token).ConfigureAwait(false);
                    return;
                }

                if (PeerProtocol.ParseTarget(target, _chunkSize) is not { } entry)
                {
                    await AnswerAsync(stream, 400, "not a chunk request", deadline.Token).ConfigureAwait(false);
                    return;
                }

                // The head goes out at once: the asker learns this member is alive and answering, and then waits
                // for the bytes as long as a fetch may take, instead of taking a slow store for a dead peer and
                // fetching the chunk a second time. A chunk that cannot be had closes the connection short.
                PeerSource.Serving.Value = true; // a fetch started here goes to the store, never on to another member
                var vt = _cache.GetAsync(entry, FetchPriority.Demand); // verified against the row, fetched once however many ask
                var h = Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture, $"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {entry.PlainLength}\r\nConnection: close\r\n\r\n"));
                CachedChunk chunk;
                try
                {
                    if (!vt.IsCompleted)
                    {
                        try
                        {
                            await stream.WriteAsync(h, deadline.Token).ConfigureAwait(false);
                        }
                        catch
                        {
                            ReleaseLater(vt); // the asker went away: the lease the fetch will give this waiter is let go
                            throw;
                        }

                        h = [];
                    }

                    chunk = await vt.ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    Interlocked.Increment(ref _failed);
                    if (h.Length > 0)
                    {
                        await AnswerAsync(stream, ex is ObjectNotFoundException ? 404 : 503, "cannot get the chunk", deadline.Token).ConfigureAwait(false);
                    }

                    return; // after the head: the short body tells the asker
                }

                using (chunk)
                {
                    if (h.Length > 0)
                    {
                        await stream.WriteAsync(h, deadline.Token).ConfigureAwait(false);
                    }

                    await stream.WriteAsync(chunk.Data, deadline.Token).ConfigureAwait(false);
                    Interlocked.Increment(ref _served);
                    Interlocked.Add(ref _servedBytes, chunk.Data.Length);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // the asker went away or was too slow: it goes to the store
        }
        finally
        {
            Interlocked.Decrement(ref _connections);
        }
    }

    private static void ReleaseLater(ValueTask<CachedChunk> vt) =>
        _ = vt.AsTask().ContinueWith(t =>
        {
            if (t.IsCompletedSuccessfully)
            {
                t.Result.Dispose();
            }
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

    private static async Task AnswerAsync(Stream s, int status, string text, CancellationToken ct)
    {
        string reason = status switch { 400 => "Bad Request", 401 => "Unauthorized", 404 => "Not Found", 405 => "Method Not Allowed", _ => "Service Unavailable" };
        var body = Encoding.ASCII.GetBytes(text + "\n");
        var h = Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture, $"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"));
        await s.WriteAsync((byte[])[.. h, .. body], ct).ConfigureAwait(false); // one write: the asker reads the reason with the head
    }

    /// <summary>The request line and headers (names lowercased), or null when it is not an HTTP request head within the bound.</summary>
    internal static async Task<(string Method, string Target, Dictionary<string, string> Headers)?> ReadHeadAsync(Stream s, CancellationToken ct)
    {
        var buf = new byte[PeerProtocol.MaxHead];
        int n = 0;
        while (n < buf.Length)
        {
            int k = await s.ReadAsync(buf.AsMemory(n), ct).ConfigureAwait(false);
            if (k == 0)
            {
                return null;
            }

            n += k;
            int end = buf.AsSpan(0, n).IndexOf("\r\n\r\n"u8);
            if (end >= 0)
            {
                var lines = Encoding.ASCII.GetString(buf, 0, end).Split("\r\n");
                var first = lines[0].Split(' ');
                if (first.Length != 3 || !first[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
                {
                    return null;
                }

                var headers = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var line in lines.Skip(1))
                {
                    int colon = line.IndexOf(':', StringComparison.Ordinal);
                    if (colon > 0)
                    {
                        headers[line[..colon].Trim().ToLowerInvariant()] = line[(colon + 1)..].Trim();
                    }
                }

                return (first[0], first[1], headers);
            }
        }

        return null;
    }
}
