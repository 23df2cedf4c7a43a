using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Metrics;

/// <summary>
/// The <c>--metrics ADDR:PORT</c> endpoint: <c>GET /metrics</c> answers the Prometheus text format
/// (<see cref="PrometheusText"/>); another path 404, another method 405, a request that is not HTTP 400.
///
/// A small HTTP/1.x server on a plain socket rather than HttpListener or Kestrel: it answers one
/// request per connection and closes it, which is all a scraper needs, and every bound is ours to
/// state. It must never hurt the mount it watches: it runs on the thread pool (the FUSE readers are
/// dedicated threads it never touches); a request head is read up to <see cref="MaxRequestBytes"/>
/// (431 past that) within <see cref="Deadline"/>, which also bounds writing the answer, so a scraper
/// that stalls or sends slowly holds one connection for at most that long; at most
/// <see cref="MaxConnections"/> connections are served at once, and any more are closed unanswered. Rendering
/// reads counters (Interlocked, or the cache's lock for a moment, as <c>lmfs stats</c> does).
/// The answer holds counters only: no paths, no URLs, no names of files, nothing secret.
/// </summary>
public sealed class MetricsServer : IDisposable
{
    public const int MaxRequestBytes = 8192;

    public const int MaxConnections = 16;

    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);

    private readonly Socket _listener;
    private readonly ILogger _log;
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA2213", Justification = "cancelled, never disposed: connections still being served read its token")]
    private readonly CancellationTokenSource _stop = new();
    private int _connections;

    private MetricsServer(Socket listener, ILogger log)
    {
        _listener = listener;
        _log = log;
        Address = (IPEndPoint)listener.LocalEndPoint!;
    }

    /// <summary>Where it listens.</summary>
    public IPEndPoint Address { get; }

    /// <summary>
    /// Parses <c>ADDR:PORT</c>: an IPv4 address, an IPv6 address in brackets (<c>[::1]:9567</c>) or
    /// <c>localhost</c>, and a port from 1 to 65535. Bad input is exit 2, naming what was given.
    /// </summary>
    public static IPEndPoint ParseAddress(string text, string option = "--metrics")
    {
        string hint = $"give an IP address and a port: {option} 127.0.0.1:9567 (loopback only), or {option} 0.0.0.0:9567 to let the network scrape it";
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || colon == text.Length - 1)
        {
            throw new LmfsException($"{option} '{TerminalText.Safe(text)}' is not ADDR:PORT", hint, 2);
        }

        string host = text[..colon], port = text[(colon + 1)..];
        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int p) || p is < 1 or > 65535)
        {
            throw new LmfsException($"{option} '{TerminalText.Safe(text)}': the port '{TerminalText.Safe(port)}' is not a number from 1 to 65535", hint, 2);
        }

        bool bracketed = host.StartsWith('[') && host.EndsWith(']');
        string bare = bracketed ? host[1..^1] : host;
        if (host == "localhost")
        {
            return new IPEndPoint(IPAddress.Loopback, p);
        }

        if (!IPAddress.TryParse(bare, out var ip) || (ip.AddressFamily == AddressFamily.InterNetworkV6) != bracketed || bare.Contains('%', StringComparison.Ordinal))
        {
            throw new LmfsException($"{option} '{TerminalText.Safe(text)}': '{TerminalText.Safe(host)}' is not an IP address (IPv6 goes in brackets: [::1]:{p})", hint, 2);
        }

        return new IPEndPoint(ip, p);
    }

    /// <summary>Listens at <paramref name="address"/> (serving starts with <see cref="Serve"/>); a bind that fails is exit 2, naming the address and why.</summary>
    public static MetricsServer Bind(IPEndPoint address, ILogger? log = null, string option = "--metrics")
    {
        var s = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // SO_REUSEADDR alone (not .NET's ReuseAddress, which adds SO_REUSEPORT and would let two
            // daemons share a port): a daemon restarted at once binds again past the TIME_WAIT of the
            // connections it closed, and a port another socket listens on is still refused.
            s.SetRawSocketOption(1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, BitConverter.GetBytes(1));
            s.Bind(address);
            s.Listen(64);
            return new MetricsServer(s, log ?? NullLogger.Instance);
        }
        catch (SocketException e)
        {
            s.Dispose();
            string where = address.ToString();
            var (why, hint) = e.SocketErrorCode switch
            {
                SocketError.AddressAlreadyInUse => ("the address is already in use", $"choose another port, or find what listens there: ss -ltnp 'sport = :{address.Port}'"),
                SocketError.AddressNotAvailable => ("the address is not one of this host's", "give an address of this host (ip -brief address), 127.0.0.1, or 0.0.0.0 for every interface"),
                SocketError.AccessDenied => ("permission denied", "ports below 1024 need root: choose a port from 1024 up"),
                _ => (e.Message, "choose another address or port"),
            };
            throw new LmfsException($"cannot listen for {option} on {where}: {why}", hint, 2, e);
        }
    }

    /// <summary>Starts answering; <paramref name="render"/> builds the page for each scrape.</summary>
    public void Serve(Func<CancellationToken, Task<string>> render)
    {
        _ = AcceptLoopAsync(render);
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
    }

    private async Task AcceptLoopAsync(Func<CancellationToken, Task<string>> render)
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
                _log.LogWarning("metrics: accept failed: {Message}", ex.Message); // EMFILE and the like: try again shortly
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }

            if (Interlocked.Increment(ref _connections) > MaxConnections)
            {
                Interlocked.Decrement(ref _connections);
                c.Dispose(); // too many at once: a scraper retries, a flood gets nothing
                continue;
            }

            _ = ServeAsync(c, render);
        }
    }

    private async Task ServeAsync(Socket c, Func<CancellationToken, Task<string>> render)
    {
        try
        {
            using (c)
            using (var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
            {
                deadline.CancelAfter(Deadline);
                var (status, body, extra) = await AnswerAsync(c, render, deadline.Token).ConfigureAwait(false);
                if (status == 0)
                {
                    return; // the client went away or stalled: nothing to answer
                }

                byte[] payload = Encoding.UTF8.GetBytes(body);
                string head = $"HTTP/1.1 {status} {Reason(status)}\r\nContent-Type: {(status == 200 ? PrometheusText.ContentType : "text/plain; charset=utf-8")}\r\nContent-Length: {payload.Length}\r\n{extra}Connection: close\r\n\r\n";
                await c.SendAsync(Encoding.ASCII.GetBytes(head), SocketFlags.None, deadline.Token).ConfigureAwait(false);
                await c.SendAsync(payload, SocketFlags.None, deadline.Token).ConfigureAwait(false);
                c.Shutdown(SocketShutdown.Send);

                // Lingering close: closing with unread bytes (a request body) would send a reset that
                // can make the client drop the answer; read a little until it closes its end.
                var sink = new byte[4096];
                for (int total = 0; total < 65536;)
                {
                    int k = await c.ReceiveAsync(sink, SocketFlags.None, deadline.Token).ConfigureAwait(false);
                    if (k == 0)
                    {
                        break;
                    }

                    total += k;
                }
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // a slow or vanished scraper: its connection is closed, nothing else is touched
        }
        finally
        {
            Interlocked.Decrement(ref _connections);
        }
    }

    private async Task<(int Status, string Body, string Extra)> AnswerAsync(Socket c, Func<CancellationToken, Task<string>> render, CancellationToken ct)
    {
        var buf = new byte[MaxRequestBytes];
        int n = 0, end;
        while ((end = HeadEnd(buf.AsSpan(0, n))) < 0)
        {
            if (n == buf.Length)
            {
                return (431, "request header too large\n", "");
            }

            int k = await c.ReceiveAsync(buf.AsMemory(n), SocketFlags.None, ct).ConfigureAwait(false);
            if (k == 0)
            {
                return (0, "", "");
            }

            n += k;
        }

        // Request line: METHOD SP TARGET SP HTTP/1.x (RFC 9112, 3).
        string head = Encoding.ASCII.GetString(buf, 0, end);
        int eol = head.IndexOf('\n', StringComparison.Ordinal);
        var parts = (eol < 0 ? head : head[..eol]).TrimEnd('\r').Split(' ');
        if (parts is not [var method, var target, var version] || !version.StartsWith("HTTP/1.", StringComparison.Ordinal) || !target.StartsWith('/'))
        {
            return (400, "bad request\n", "");
        }

        int q = target.IndexOf('?', StringComparison.Ordinal);
        string path = q < 0 ? target : target[..q];
        if (path != "/metrics")
        {
            return (404, "not found: the metrics are at /metrics\n", "");
        }

        if (method != "GET")
        {
            return (405, "method not allowed: use GET\n", "Allow: GET\r\n");
        }

        try
        {
            return (200, await render(ct).ConfigureAwait(false), "");
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            _log.LogWarning("metrics: rendering failed: {Message}", ex.Message);
            return (500, "the metrics could not be read; see the log\n", "");
        }
    }

    /// <summary>Where the head ends (after CRLF CRLF, or LF LF), or -1.</summary>
    private static int HeadEnd(ReadOnlySpan<byte> b)
    {
        int i = b.IndexOf("\r\n\r\n"u8);
        if (i >= 0)
        {
            return i + 4;
        }

        i = b.IndexOf("\n\n"u8);
        return i >= 0 ? i + 2 : -1;
    }

    private static string Reason(int status) => status switch
    {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
}
