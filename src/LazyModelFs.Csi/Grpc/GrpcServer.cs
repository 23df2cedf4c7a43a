using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using Google.Protobuf;
using LazyModelFs.Util;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Csi.Grpc;

/// <summary>
/// A unary-only gRPC server over HTTP/2 on a unix socket, on Kestrel, with the framing written here
/// (no gRPC server package restores in this project's registry).
///
/// The wire format (grpc/doc/PROTOCOL-HTTP2.md): a POST to /package.Service/Method with
/// content-type application/grpc; the body is length-prefixed messages — one byte "compressed" flag,
/// a four-byte big-endian length, the protobuf bytes. The reply is HTTP 200 with content-type
/// application/grpc, one length-prefixed message on success, and the trailers grpc-status (the
/// code) and grpc-message (percent-encoded text). A failure sends no message, only the trailers.
/// Compressed messages are refused (we never advertise grpc-accept-encoding), as are unknown
/// methods (UNIMPLEMENTED) and bodies over 4 MiB (RESOURCE_EXHAUSTED, gRPC's default limit).
/// </summary>
public sealed class GrpcServer : IAsyncDisposable
{
    public const int MaxMessage = 4 << 20;

    private readonly Dictionary<string, Func<ReadOnlyMemory<byte>, CancellationToken, Task<IMessage>>> _methods = new(StringComparer.Ordinal);
    private readonly ILogger _log;
    private WebApplication? _app;

    public GrpcServer(ILogger log)
    {
        _log = log;
    }

    /// <summary>Adds a unary method; <paramref name="name"/> is "/csi.v1.Node/NodeStageVolume".</summary>
    public void Map<TRequest>(string name, MessageParser<TRequest> parser, Func<TRequest, CancellationToken, Task<IMessage>> handler)
        where TRequest : IMessage<TRequest>
    {
        _methods[name] = (bytes, ct) => handler(parser.ParseFrom(bytes.Span), ct);
    }

    public string? SocketPath { get; private set; }

    public async Task StartAsync(string socketPath, CancellationToken ct)
    {
        SocketPath = socketPath;
        Directory.CreateDirectory(Path.GetDirectoryName(socketPath)!);
        if (File.Exists(socketPath))
        {
            File.Delete(socketPath); // a stale socket of an earlier run
        }

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.ListenUnixSocket(socketPath, l => l.Protocols = HttpProtocols.Http2);
            k.Limits.MaxRequestBodySize = MaxMessage + 5;
            k.AddServerHeader = false;
        });
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
        _app = builder.Build();
        _app.Run(HandleAsync);
        await _app.StartAsync(ct).ConfigureAwait(false);

        // Only the CO (kubelet, as root) talks to the plugin.
        File.SetUnixFileMode(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    private async Task HandleAsync(HttpContext ctx)
    {
        var sw = Stopwatch.StartNew();
        string method = ctx.Request.Path.Value ?? "";
        ctx.Response.StatusCode = (int)HttpStatusCode.OK;
        ctx.Response.ContentType = "application/grpc";
        StatusCode code;
        string message;
        try
        {
            if (!HttpMethods.IsPost(ctx.Request.Method) || ctx.Request.ContentType is not { } ct0 || !ct0.StartsWith("application/grpc", StringComparison.Ordinal))
            {
                throw new RpcException(StatusCode.Unimplemented, "only gRPC POSTs with content-type application/grpc are served here");
            }

            if (!_methods.TryGetValue(method, out var handler))
            {
                throw new RpcException(StatusCode.Unimplemented, $"method {method} is not implemented by this plugin");
            }

            var request = await ReadMessageAsync(ctx.Request.Body, ctx.RequestAborted).ConfigureAwait(false);
            var reply = await handler(request, ctx.RequestAborted).ConfigureAwait(false);
            byte[] frame = Frame(reply);
            await ctx.Response.Body.WriteAsync(frame, ctx.RequestAborted).ConfigureAwait(false);
            (code, message) = (StatusCode.OK, "");
        }
        catch (RpcException ex)
        {
            (code, message) = (ex.Code, ex.Message);
        }
        catch (InvalidProtocolBufferException ex)
        {
            (code, message) = (StatusCode.InvalidArgument, "the request is not a valid protobuf message: " + ex.Message);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            (code, message) = (StatusCode.Cancelled, "the caller went away");
        }
        catch (Exception ex)
        {
            _log.LogError("csi: {Method} failed unexpectedly: {Error}", method, Redact.Text(ex.ToString()));
            (code, message) = (StatusCode.Internal, ex.Message);
        }

        // The last line of defence: the message goes to the kubelet, which copies it into pod events
        // that every user of the namespace can read, and to this log. Handlers redact what they
        // know; a URL inside a library's message is redacted here.
        message = Redact.Text(message);

        ctx.Response.AppendTrailer("grpc-status", ((int)code).ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (message.Length > 0)
        {
            ctx.Response.AppendTrailer("grpc-message", PercentEncode(message));
        }

        var level = code == StatusCode.OK ? LogLevel.Information : LogLevel.Warning;
        _log.Log(level, "csi: {Method} -> {Code}{Message} ({Ms} ms)", method, code, message.Length > 0 ? ": " + message : "", sw.ElapsedMilliseconds);
    }

    /// <summary>Reads exactly one length-prefixed message (the whole body of a unary call).</summary>
    private static async Task<ReadOnlyMemory<byte>> ReadMessageAsync(Stream body, CancellationToken ct)
    {
        var header = new byte[5];
        await body.ReadExactlyAsync(header, ct).ConfigureAwait(false);
        if (header[0] != 0)
        {
            throw new RpcException(StatusCode.Unimplemented, "compressed messages are not supported; send them uncompressed (no grpc-encoding)");
        }

        uint len = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(1));
        if (len > MaxMessage)
        {
            throw new RpcException(StatusCode.ResourceExhausted, $"the request message is {len} bytes; the limit is {MaxMessage}");
        }

        var msg = new byte[len];
        await body.ReadExactlyAsync(msg, ct).ConfigureAwait(false);
        return msg;
    }

    /// <summary>A message with its 5-byte gRPC prefix (uncompressed).</summary>
    public static byte[] Frame(IMessage m)
    {
        int size = m.CalculateSize();
        var frame = new byte[5 + size];
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)size);
        m.WriteTo(frame.AsSpan(5));
        return frame;
    }

    /// <summary>grpc-message encoding: printable ASCII except '%' stays, everything else is %XX of its UTF-8 bytes.</summary>
    public static string PercentEncode(string s)
    {
        var sb = new System.Text.StringBuilder();
        foreach (byte b in System.Text.Encoding.UTF8.GetBytes(s))
        {
            if (b is >= 0x20 and <= 0x7E && b != (byte)'%')
            {
                sb.Append((char)b);
            }
            else
            {
                sb.Append('%').Append(b.ToString("X2", System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return sb.ToString();
    }

    public async ValueTask DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.StopAsync().ConfigureAwait(false);
            await _app.DisposeAsync().ConfigureAwait(false);
        }

        if (SocketPath is not null && File.Exists(SocketPath))
        {
            File.Delete(SocketPath);
        }
    }
}
