using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using LazyModelFs.Chunks;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Peer;

/// <summary>A node's place in a cache group (issue 15): the group's members, this node's own address, the secret, the bounds.</summary>
public sealed record PeerOptions
{
    /// <summary>The volume's peer secret (<see cref="PeerProtocol.LoadSecret"/>).</summary>
    public required byte[] Secret { get; init; }

    /// <summary>HOST:PORT the other members reach this node at (its node id in the group); null for a member that only asks (warmup).</summary>
    public string? Self { get; init; }

    /// <summary>HOST:PORT of the group's members (a static list: <c>--peers</c>); <see cref="Self"/> is added when missing.</summary>
    public IReadOnlyList<string> Members { get; init; } = [];

    /// <summary>
    /// A peer that has not begun its answer by then is left for the object store (the hedge). A live
    /// member answers its head at once, before it has the chunk (<see cref="PeerServer"/>).
    /// </summary>
    public TimeSpan AnswerTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// The chunk's bytes from a peer that answered, at most: its own fetch from the store included. Kept
    /// well under <c>--fetch-timeout</c> (60 s), so a fallback to the store still has time.
    /// </summary>
    public TimeSpan TransferTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a peer that failed, lied or timed out is not asked.</summary>
    public TimeSpan AvoidFor { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>
/// The asking side of the peer tier: a chunk source in front of the object store (the chunk cache's
/// <see cref="IChunkSource"/>). A whole chunk the cache misses goes to its owner — the member with the
/// highest rendezvous score SHA-256(member ‖ chunk id) — which serves it from its own cache or fetches
/// it from the store once for every asker. When this node is the owner, or the owner is being
/// avoided, the chunk comes from the store directly.
///
/// Nothing a peer says is trusted: its bytes are checked against the row (length, SHA-256 id,
/// CRC32C: <see cref="ChunkObject.Verify"/>) before the cache sees them. A peer that does not begin
/// answering within <see cref="PeerOptions.AnswerTimeout"/>, refuses, fails mid-transfer or sends
/// other bytes costs one fallback to the store and is avoided for <see cref="PeerOptions.AvoidFor"/>;
/// a READ never fails because a peer did. Block reads (a random READ's few blocks) go to the store.
/// </summary>
public sealed class PeerSource : IChunkSource
{
    private readonly IChunkSource _store;
    private readonly PeerOptions _options;
    private readonly ILogger _log;
    private readonly (string Id, string Host, int Port, byte[] Key)[] _members;
    private readonly Dictionary<string, long> _avoidUntil = [];
    private readonly Lock _lock = new();
    private long _fetches, _bytes, _errors, _fallbacks, _self;

    /// <summary>
    /// Set while a <see cref="PeerServer"/> fetches a chunk for another member: such a fetch goes to the
    /// store, never on to a third member, so requests are never forwarded and cannot loop back (two
    /// nodes whose member lists differ for a while would otherwise ask each other).
    /// </summary>
    internal static readonly AsyncLocal<bool> Serving = new();

    public PeerSource(IChunkSource store, PeerOptions options, ILogger log)
    {
        _store = store;
        _options = options;
        _log = log;
        var ids = options.Members.Append(options.Self).OfType<string>().Distinct(StringComparer.Ordinal);
        _members = [.. ids.Select(m =>
        {
            var (host, port) = PeerProtocol.ParseMember(m, "--peers");
            return (m, host, port, Encoding.UTF8.GetBytes(m));
        })];
    }

    /// <summary>The members, this node included when it serves.</summary>
    public IReadOnlyList<string> Members => [.. _members.Select(m => m.Id)];

    /// <summary>The member that owns <paramref name="id"/>: highest SHA-256(member ‖ id), so a member joining or leaving moves only its own share.</summary>
    public string? OwnerOf(ChunkId id) => Owner(id) is int i ? _members[i].Id : null;

    /// <summary>The index in <c>_members</c> of <see cref="OwnerOf"/>'s answer; null without members.</summary>
    private int? Owner(ChunkId id)
    {
        int? best = null;
        ulong bestScore = 0;
        Span<byte> idBytes = stackalloc byte[ChunkId.Size];
        id.WriteTo(idBytes);
        Span<byte> hash = stackalloc byte[32];
        for (int i = 0; i < _members.Length; i++)
        {
            var m = _members[i];
            byte[] input = [.. m.Key, .. idBytes];
            SHA256.HashData(input, hash);
            ulong score = BinaryPrimitives.ReadUInt64BigEndian(hash);
            if (best is not { } b || score > bestScore || (score == bestScore && string.CompareOrdinal(m.Id, _members[b].Id) > 0))
            {
                best = i;
                bestScore = score;
            }
        }

        return best;
    }

    public async Task<int> ReadIntoAsync(ChunkEntry entry, Memory<byte> buffer, int parts = 1, CancellationToken ct = default)
    {
        var m = Owner(entry.Id) is int at ? _members[at] : default;
        string? owner = m.Id;
        if (owner is null || owner == _options.Self || Serving.Value || Avoided(owner) || buffer.Length < ChunkObject.HeaderSize + entry.PlainLength)
        {
            Interlocked.Increment(ref _self);
            return await _store.ReadIntoAsync(entry, buffer, parts, ct).ConfigureAwait(false);
        }

        var plain = buffer.Slice(ChunkObject.HeaderSize, entry.PlainLength);
        try
        {
            await FetchAsync(m.Host, m.Port, entry, plain, ct).ConfigureAwait(false);
            ChunkObject.Verify(plain.Span, entry); // a lying peer costs a fallback, never a byte
            Interlocked.Increment(ref _fetches);
            Interlocked.Add(ref _bytes, entry.PlainLength);
            return ChunkObject.HeaderSize;
        }
        catch (Exception ex) when (!ct.IsCancellationRequested)
        {
            Interlocked.Increment(ref _fallbacks);
            if (ex is PeerBusyException)
            {
                return await _store.ReadIntoAsync(entry, buffer, parts, ct).ConfigureAwait(false); // alive, only full: not avoided
            }

            Interlocked.Increment(ref _errors);
            if (Avoid(owner))
            {
                _log.LogWarning("peer: {Peer} failed for chunk {Chunk} ({Message}); asking the object store, and not asking it for {Seconds:0} s", TerminalText.Safe(owner), entry.Id, ex.Message, _options.AvoidFor.TotalSeconds);
            }

            return await _store.ReadIntoAsync(entry, buffer, parts, ct).ConfigureAwait(false);
        }
    }

    public Task ReadBlocksAsync(ChunkEntry entry, int first, int count, Memory<byte> dest, CancellationToken ct = default) =>
        _store.ReadBlocksAsync(entry, first, count, dest, ct);

    public void AddStats(JsonObject o)
    {
        o["peerMembers"] = _members.Length;
        o["peerFetches"] = Interlocked.Read(ref _fetches);
        o["peerBytes"] = Interlocked.Read(ref _bytes);
        o["peerErrors"] = Interlocked.Read(ref _errors);
        o["peerFallbacks"] = Interlocked.Read(ref _fallbacks);
        o["peerOwnFetches"] = Interlocked.Read(ref _self);
    }

    private bool Avoided(string peer)
    {
        lock (_lock)
        {
            return _avoidUntil.TryGetValue(peer, out long until) && Environment.TickCount64 < until;
        }
    }

    /// <summary>Starts avoiding the peer; true when it was not being avoided already (then the failure is logged).</summary>
    private bool Avoid(string peer)
    {
        lock (_lock)
        {
            bool was = _avoidUntil.TryGetValue(peer, out long until) && Environment.TickCount64 < until;
            _avoidUntil[peer] = Environment.TickCount64 + (long)_options.AvoidFor.TotalMilliseconds;
            return !was;
        }
    }

    /// <summary>One signed GET of the chunk from a peer into <paramref name="plain"/>, bounded by the answer and transfer timeouts.</summary>
    private async Task FetchAsync(string host, int port, ChunkEntry entry, Memory<byte> plain, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(_options.AnswerTimeout);
        using var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true }; // dual mode: IPv4 and IPv6 addresses of a name alike
        try
        {
            // Every address the name has, in turn; WaitAsync bounds a resolver that does not honour the token.
            await s.ConnectAsync(host, port, deadline.Token).AsTask().WaitAsync(deadline.Token).ConfigureAwait(false);
            using var stream = new NetworkStream(s, ownsSocket: false);
            string target = PeerProtocol.Target(entry);
            long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            string from = _options.Self ?? "";
            string req = string.Create(CultureInfo.InvariantCulture,
                $"GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Lmfs-Time: {now}\r\nX-Lmfs-From: {from}\r\nAuthorization: {PeerProtocol.AuthScheme} {PeerProtocol.Sign(_options.Secret, target, now, from)}\r\nConnection: close\r\n\r\n");
            await stream.WriteAsync(Encoding.ASCII.GetBytes(req), deadline.Token).ConfigureAwait(false);

            // The head: status and length. Whatever body bytes came with it are the chunk's first.
            var head = new byte[PeerProtocol.MaxHead];
            int n = 0, end;
            while ((end = head.AsSpan(0, n).IndexOf("\r\n\r\n"u8)) < 0)
            {
                if (n == head.Length)
                {
                    throw new IOException("the answer's head is too long");
                }

                int k = await stream.ReadAsync(head.AsMemory(n), deadline.Token).ConfigureAwait(false);
                if (k == 0)
                {
                    throw new IOException("the peer closed the connection before answering");
                }

                n += k;
            }

            deadline.CancelAfter(_options.TransferTimeout); // it answers: the transfer has its own bound
            var lines = Encoding.ASCII.GetString(head, 0, end).Split("\r\n");
            var status = lines[0].Split(' ', 3);
            if (status.Length >= 2 && status[1] == "503" && head.AsSpan(end + 4, n - end - 4).StartsWith("busy"u8))
            {
                throw new PeerBusyException();
            }

            if (status.Length < 2 || status[1] != "200")
            {
                throw new IOException(status.Length >= 2 && status[1] == "401"
                    ? "it refused our signature (401): the nodes' peer secrets differ, or a clock is more than 60 s off"
                    : $"it answered {TerminalText.Excerpt(lines[0], 60)}");
            }

            long length = -1;
            foreach (var line in lines.Skip(1))
            {
                if (line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))
                {
                    length = long.TryParse(line.AsSpan(15).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long l) ? l : -1;
                }
            }

            if (length != entry.PlainLength)
            {
                throw new IOException($"it answered {length} bytes for a chunk of {entry.PlainLength}");
            }

            int body = n - (end + 4);
            if (body > plain.Length)
            {
                throw new IOException("it sent more than the chunk");
            }

            head.AsSpan(end + 4, body).CopyTo(plain.Span);
            while (body < plain.Length)
            {
                int k = await stream.ReadAsync(plain[body..], deadline.Token).ConfigureAwait(false);
                if (k == 0)
                {
                    throw new IOException($"the connection ended after {body} of {plain.Length} bytes");
                }

                body += k;
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new IOException($"no answer within {_options.AnswerTimeout.TotalSeconds:0.#} s (or no whole chunk within {_options.TransferTimeout.TotalSeconds:0.#} s)");
        }
    }
}

/// <summary>A member answered that it serves as many requests as it may: alive, so not avoided.</summary>
internal sealed class PeerBusyException() : IOException("it is serving as many requests as it may (503 busy)");
