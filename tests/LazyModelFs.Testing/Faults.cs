using System.Net;
using System.Net.Sockets;
using System.Text;
using LazyModelFs.Storage;

namespace LazyModelFs.Testing;

/// <summary>What a faulty store does to one GET (chosen per call by <see cref="FaultyObjectStore.GetFault"/>).</summary>
public abstract record GetFault
{
    /// <summary>Fail the call, like a 500/503 or a reset connection.</summary>
    public sealed record Fail(Exception Error) : GetFault;

    /// <summary>Answer only after a delay (cancellable): a slow server.</summary>
    public sealed record Slow(TimeSpan Delay) : GetFault;

    /// <summary>Never answer until cancelled: a server that stopped responding.</summary>
    public sealed record Hang : GetFault;

    /// <summary>Return only this many bytes: a body cut short.</summary>
    public sealed record Truncate(int Bytes) : GetFault;

    public static GetFault ServerError(int status) => new Fail(new Util.LmfsException($"HTTP {status} {(status == 503 ? "Slow Down" : "Internal Error")} (injected)", null, 5));
}

/// <summary>
/// Wraps an object store and fails the operations a test chooses: the fault-injecting decorator
/// the style guide asks for (ports get decorators, implementations stay clean).
/// </summary>
public sealed class FaultyObjectStore(IObjectStore inner) : IObjectStore
{
    private int _puts;
    private int _gets;

    /// <summary>Decides, per GET (key and 1-based call number), what goes wrong (null: nothing).</summary>
    public Func<string, int, GetFault?>? OnGet { get; set; }

    /// <summary>Fail every PUT after this many have succeeded (null: never).</summary>
    public int? FailPutsAfter { get; set; }

    /// <summary>Called before each PUT with its 1-based call number (to change the world mid-import).</summary>
    public Action<int>? OnPut { get; set; }

    /// <summary>Sees each PUT's key and bytes as the caller handed them (to check what was sent, and from where).</summary>
    public Action<string, ReadOnlyMemory<byte>>? SeePut { get; set; }

    /// <summary>Return these bytes instead of the real ones for GETs (null: pass through).</summary>
    public Func<string, byte[], byte[]>? MangleGet { get; set; }

    public int Puts => _puts;

    public int Gets => _gets;

    public string Describe => "faulty+" + inner.Describe;

    public Task CheckAsync(CancellationToken ct = default) => inner.CheckAsync(ct);

    public async Task<int> GetAsync(string key, long offset, Memory<byte> dest, CancellationToken ct = default)
    {
        int call = Interlocked.Increment(ref _gets);
        switch (OnGet?.Invoke(key, call))
        {
            case GetFault.Fail f:
                throw f.Error;
            case GetFault.Slow s:
                await Task.Delay(s.Delay, ct).ConfigureAwait(false);
                break;
            case GetFault.Hang:
                await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false);
                break;
            case GetFault.Truncate t:
                return await inner.GetAsync(key, offset, dest[..Math.Min(t.Bytes, dest.Length)], ct).ConfigureAwait(false);
        }

        int n = await inner.GetAsync(key, offset, dest, ct).ConfigureAwait(false);
        if (MangleGet is { } mangle)
        {
            var bytes = mangle(key, dest[..n].ToArray());
            bytes.AsSpan(0, Math.Min(bytes.Length, dest.Length)).CopyTo(dest.Span);
            return Math.Min(bytes.Length, dest.Length);
        }

        return n;
    }

    public Task PutAsync(string key, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        int n = Interlocked.Increment(ref _puts);
        OnPut?.Invoke(n);
        SeePut?.Invoke(key, data);
        if (FailPutsAfter is { } limit && n > limit)
        {
            throw new IOException($"injected PUT failure for {key}");
        }

        return inner.PutAsync(key, data, ct);
    }

    /// <summary>Awaited after each HEAD has its answer and before the caller gets it (to change the world between a HEAD and what follows it).</summary>
    public Func<string, long?, Task>? AfterHead { get; set; }

    public async Task<long?> HeadAsync(string key, CancellationToken ct = default)
    {
        long? size = await inner.HeadAsync(key, ct).ConfigureAwait(false);
        if (AfterHead is { } after)
        {
            await after(key, size).ConfigureAwait(false);
        }

        return size;
    }

    public IAsyncEnumerable<ObjectInfo> ListAsync(string prefix, CancellationToken ct = default) => inner.ListAsync(prefix, ct);

    /// <summary>Decides, per DELETE, an exception to throw instead of deleting (null: delete).</summary>
    public Func<string, Exception?>? OnDelete { get; set; }

    public Task DeleteAsync(string key, CancellationToken ct = default) =>
        OnDelete?.Invoke(key) is { } e ? Task.FromException(e) : inner.DeleteAsync(key, ct);

    public void Dispose() => inner.Dispose();
}

/// <summary>
/// An HTTP endpoint that answers every request with one status and body (an S3 service failing in a
/// chosen way, below the store's own client) and counts the requests: how many attempts a store
/// really made, where <see cref="FaultyObjectStore"/> counts the calls made to the store.
/// </summary>
public sealed class FixedAnswerEndpoint : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;
    private int _requests;

    public FixedAnswerEndpoint(int status, string body = "")
    {
        Status = status;
        Body = body;
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public int Status { get; set; }

    public string Body { get; set; }

    public string Url => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    public int Requests => Volatile.Read(ref _requests);

    private async Task AcceptAsync()
    {
        var connections = new List<Task>();
        try
        {
            while (true)
            {
                var client = await _listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false);
                connections.Add(ServeAsync(client));
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }

        await Task.WhenAll(connections).ConfigureAwait(false);
    }

    private async Task ServeAsync(TcpClient client)
    {
        using (client)
        {
            try
            {
                var stream = client.GetStream();
                var buf = new byte[16384];
                var seen = new StringBuilder();
                while (true)
                {
                    int n = await stream.ReadAsync(buf, _stop.Token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        return;
                    }

                    seen.Append(Encoding.Latin1.GetString(buf, 0, n));
                    int end;
                    while ((end = seen.ToString().IndexOf("\r\n\r\n", StringComparison.Ordinal)) >= 0)
                    {
                        seen.Remove(0, end + 4); // a GET has no body
                        Interlocked.Increment(ref _requests);
                        byte[] body = Encoding.UTF8.GetBytes(Body);
                        string head = $"HTTP/1.1 {Status} Status {Status}\r\nContent-Type: application/xml\r\nContent-Length: {body.Length}\r\nConnection: keep-alive\r\n\r\n";
                        await stream.WriteAsync(Encoding.ASCII.GetBytes(head), _stop.Token).ConfigureAwait(false);
                        await stream.WriteAsync(body, _stop.Token).ConfigureAwait(false);
                    }
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or SocketException or ObjectDisposedException)
            {
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        try
        {
            _accepting.Wait(TimeSpan.FromSeconds(10));
        }
        catch (AggregateException)
        {
        }

        _listener.Dispose();
        _stop.Dispose();
    }
}
