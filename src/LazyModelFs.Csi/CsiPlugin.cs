using LazyModelFs.Csi.Grpc;
using LazyModelFs.Metrics;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Csi;

/// <summary>The node plugin: the gRPC server on the CSI socket with the Identity and Node services.</summary>
public static class CsiPlugin
{
    /// <summary>Serves until <paramref name="ct"/> is cancelled (SIGTERM from the kubelet's pod shutdown).</summary>
    public static async Task RunAsync(CsiOptions options, ILoggerFactory loggers, CancellationToken ct)
    {
        var log = loggers.CreateLogger("csi");

        // Before anything serves: an address that cannot be used stops the plugin with exit 2.
        using var metrics = options.Metrics is { } at ? MetricsServer.Bind(at, loggers.CreateLogger("metrics")) : null;
        var services = new CsiServices(options, log);
        services.Recover();
        await using var server = new GrpcServer(log);
        services.MapTo(server);
        await server.StartAsync(options.SocketPath, ct).ConfigureAwait(false);
        if (metrics is not null)
        {
            metrics.Serve(services.RenderMetricsAsync);
            log.LogInformation("csi: metrics on http://{Address}/metrics", metrics.Address);
        }

        log.LogInformation("csi: {Driver} serving node {Node} on {Socket}", CsiOptions.DriverName, options.NodeId, options.SocketPath);
        try
        {
            await (options.HealInterval > TimeSpan.Zero ? services.WatchAsync(options.HealInterval, ct) : Task.Delay(Timeout.Infinite, ct)).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            log.LogInformation("csi: stopping; staged volumes keep serving (their mounts are separate processes)");
        }
    }
}
