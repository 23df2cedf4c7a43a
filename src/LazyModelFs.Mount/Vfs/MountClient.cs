using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LazyModelFs.Util;

namespace LazyModelFs.Vfs;

/// <summary>
/// The client side of a live mount's control socket (<see cref="MountControl"/>): how the bench and
/// the CLI reach a running daemon. Nothing outside the daemon speaks the protocol itself.
/// </summary>
public static class MountClient
{
    /// <summary>The daemon's counters (chunk reader, cache tiers, directory handles).</summary>
    public static Task<JsonObject> StatsAsync(string socket, CancellationToken ct = default) => SendAsync(socket, "stats", ct);

    /// <summary>Puts a file back to cold (<paramref name="disk"/>: its disk-cache copies go too) or warm (memory only).</summary>
    public static Task<JsonObject> ForgetAsync(string socket, ulong ino, bool disk, CancellationToken ct = default)
        => SendAsync(socket, $"forget {ino} {(disk ? "disk" : "memory")}", ct);

    /// <summary>Drops the kernel's cached pages of a file.</summary>
    public static Task<JsonObject> InvalidateAsync(string socket, ulong ino, CancellationToken ct = default) => SendAsync(socket, $"invalidate {ino}", ct);

    /// <summary>
    /// Hands the mount a loader's read plan for the open file <paramref name="ino"/>: byte ranges in the
    /// order they will be read; their chunks are prefetched in that order. Answers the chunks planned.
    /// </summary>
    public static async Task<int> PlanAsync(string socket, ulong ino, IReadOnlyList<(long Offset, long Length)> ranges, CancellationToken ct = default) =>
        (int?)(await SendAsync(socket, ReadPlan.Command(ino, ranges), ct).ConfigureAwait(false))["chunks"] ?? 0;

    /// <summary>Removes the file's access profiles from the volume's metadata, and what its current load recorded.</summary>
    public static Task<JsonObject> ForgetProfilesAsync(string socket, ulong ino, CancellationToken ct = default) => SendAsync(socket, $"profile {ino} forget", ct);

    /// <summary>Sends one command to the control socket at <paramref name="path"/> and returns its JSON answer (an "error" answer throws).</summary>
    internal static async Task<JsonObject> SendAsync(string path, string command, CancellationToken ct = default)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        try
        {
            await s.ConnectAsync(new UnixDomainSocketEndPoint(path), timeout.Token).ConfigureAwait(false);
            using var stream = new NetworkStream(s, ownsSocket: false);
            await stream.WriteAsync(Encoding.UTF8.GetBytes(command + "\n"), timeout.Token).ConfigureAwait(false);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            string? line = await reader.ReadLineAsync(timeout.Token).ConfigureAwait(false);
            var o = (line is null ? null : JsonNode.Parse(line) as JsonObject)
                ?? throw new LmfsException($"the mount's control socket {path} gave no answer to '{TerminalText.Excerpt(command, 60)}'", "check the mount's log");
            if (o["error"] is { } e)
            {
                throw new LmfsException($"the mount refused '{TerminalText.Excerpt(command, 60)}': {e}", "check the mount's log");
            }

            return o;
        }
        catch (Exception ex) when (ex is SocketException or IOException or JsonException)
        {
            throw new LmfsException($"cannot reach the mount's control socket {path}: {ex.Message}", "is the mount live and started by this user (or root)? lmfs 0.x mounts started before the control socket existed must be remounted", 1, ex);
        }
    }
}
