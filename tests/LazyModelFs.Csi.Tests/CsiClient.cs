using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using Google.Protobuf;
using LazyModelFs.Csi.Grpc;
using LazyModelFs.Testing;

namespace LazyModelFs.Csi.Tests;

/// <summary>
/// A gRPC client as a CO speaks it: HTTP/2 (prior knowledge) over the plugin's unix socket, one
/// length-prefixed protobuf message per call, status from the grpc-status / grpc-message trailers.
/// </summary>
public sealed class CsiClient(string socket) : IDisposable
{
    private readonly HttpClient _http = new(new SocketsHttpHandler
    {
        ConnectCallback = async (_, ct) =>
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct);
            return new NetworkStream(s, ownsSocket: true);
        },
    })
    {
        DefaultRequestVersion = HttpVersion.Version20,
        DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        Timeout = TimeSpan.FromMinutes(2),
    };

    public sealed record Result<T>(StatusCode Code, string Message, T? Reply);

    public Task<Result<T>> CallAsync<T>(string method, IMessage request, MessageParser<T> parser)
        where T : IMessage<T> => SendAsync(method, GrpcServer.Frame(request), parser);

    public async Task<Result<T>> SendAsync<T>(string method, byte[] body, MessageParser<T> parser)
        where T : IMessage<T>
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, "http://localhost" + method)
        {
            Content = new ByteArrayContent(body),
            Version = HttpVersion.Version20, // h2c with prior knowledge, as gRPC clients speak it
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        req.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        req.Headers.TryAddWithoutValidation("te", "trailers");
        using var resp = await _http.SendAsync(req);
        byte[] bytes = await resp.Content.ReadAsByteArrayAsync();
        if (resp.StatusCode != HttpStatusCode.OK || resp.Content.Headers.ContentType?.MediaType != "application/grpc")
        {
            throw new InvalidOperationException($"not a gRPC reply: HTTP {(int)resp.StatusCode} {resp.Content.Headers.ContentType}: {System.Text.Encoding.UTF8.GetString(bytes)}");
        }

        string? Header(string name) =>
            resp.TrailingHeaders.TryGetValues(name, out var v) ? v.First() : resp.Headers.TryGetValues(name, out var h) ? h.First() : null;
        var code = (StatusCode)int.Parse(Header("grpc-status") ?? throw new InvalidOperationException("no grpc-status"), System.Globalization.CultureInfo.InvariantCulture);
        string message = Uri.UnescapeDataString(Header("grpc-message") ?? "");
        T? reply = default;
        if (bytes.Length >= 5)
        {
            int len = (int)BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(1));
            reply = parser.ParseFrom(bytes, 5, len);
        }

        return new Result<T>(code, message, reply);
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>`lmfs csi` as a real process on a socket in a temporary directory, stopped by its pid.</summary>
public sealed class CsiPluginProcess : IDisposable
{
    private readonly Process _p;
    private readonly System.Text.StringBuilder _log = new();

    /// <param name="kubeletDir">--kubelet-dir (default ROOT/kubelet).</param>
    /// <param name="extra">More arguments of `lmfs csi` (e.g. --heal-interval 1).</param>
    public CsiPluginProcess(string root, string? kubeletDir = null, params string[] extra)
    {
        Root = root;
        Socket = Path.Combine(root, "plugin", "csi.sock");
        if (File.Exists(Socket))
        {
            File.Delete(Socket); // left by a plugin that was killed: wait for the new one's
        }
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[]
        {
            LmfsRunner.Dll, "csi", "--endpoint", "unix://" + Socket, "--node-id", "node-1",
            "--kubelet-dir", kubeletDir ?? Path.Combine(root, "kubelet"), "--cache-dir", Path.Combine(root, "cache"),
            "--state-dir", Path.Combine(root, "state"), "--log-dir", Path.Combine(root, "log"),
        }.Concat(extra))
        {
            psi.ArgumentList.Add(a);
        }

        foreach (var k in new[] { "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LMFS_REDIS_PASSWORD" })
        {
            psi.Environment.Remove(k);
        }

        _p = Process.Start(psi)!;
        _p.OutputDataReceived += (_, e) => Append(e.Data);
        _p.ErrorDataReceived += (_, e) => Append(e.Data);
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
        var deadline = Stopwatch.StartNew();
        while (!File.Exists(Socket))
        {
            if (_p.HasExited || deadline.Elapsed > TimeSpan.FromSeconds(30))
            {
                throw new InvalidOperationException("lmfs csi did not start:\n" + Log);
            }

            Thread.Sleep(50);
        }
    }

    public string Root { get; }

    public string Socket { get; }

    public int Pid => _p.Id;

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

    private void Append(string? line)
    {
        if (line is not null)
        {
            lock (_log)
            {
                _log.AppendLine(line);
            }
        }
    }

    /// <summary>Kills the plugin (SIGKILL to its pid, as a crash would).</summary>
    public void Kill()
    {
        if (!_p.HasExited)
        {
            _p.Kill();
            _p.WaitForExit(10_000);
        }
    }

    public void Dispose()
    {
        Kill();
        _p.Dispose();
    }
}
