using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using LazyModelFs.Chunks;
using LazyModelFs.Util;

namespace LazyModelFs.Peer;

/// <summary>
/// How the nodes of a cache group (issue 15) ask each other for chunks: one HTTP/1.1 request per
/// connection, signed with the volume's peer secret (docs/architecture.md, "Peer tier").
/// <code>
///   GET /v1/chunk/&lt;id: 64 hex&gt;?plain=N&amp;stored=M&amp;codec=C&amp;crc=XXXXXXXX HTTP/1.1
///   X-Lmfs-Time: &lt;unix ms&gt;
///   X-Lmfs-From: &lt;the asker's HOST:PORT&gt;
///   Authorization: LMFS-HMAC-SHA256 &lt;hex of HMAC-SHA256(secret, "GET\n" + target + "\n" + time + "\n" + from)&gt;
/// </code>
/// The answer is 200 with the chunk's plain bytes (Content-Length = plain), or an error status with
/// a line of text: 401 for a missing, wrong or stale signature (more than <see cref="MaxSkew"/> off
/// the server's clock), 400 for a malformed request, 404 for a chunk the store does not have, 503
/// when the server is busy or its fetch failed. The asker trusts none of it: it checks the bytes
/// against the chunk table's row (SHA-256 id, length, CRC32C) before anyone sees them.
/// Requests are authenticated, not encrypted: run the group on a network the chunks may cross.
/// </summary>
public static class PeerProtocol
{
    public const string AuthScheme = "LMFS-HMAC-SHA256";

    /// <summary>How far a request's time may be from the server's clock.</summary>
    public static readonly TimeSpan MaxSkew = TimeSpan.FromSeconds(60);

    /// <summary>Bytes of a request or answer head at most.</summary>
    public const int MaxHead = 8192;

    /// <summary>The request target for a chunk: its row's fields (the server needs them to fetch it from the store).</summary>
    public static string Target(in ChunkEntry e) => string.Create(CultureInfo.InvariantCulture,
        $"/v1/chunk/{e.Id.ToHex()}?plain={e.PlainLength}&stored={e.StoredLength}&codec={(int)e.Codec}&crc={e.Crc32C:x8}");

    /// <summary>Parses a target back into a row (no block hashes: peers serve whole chunks), or null when it is not one.</summary>
    public static ChunkEntry? ParseTarget(string target, int chunkSize)
    {
        const string Prefix = "/v1/chunk/";
        if (!target.StartsWith(Prefix, StringComparison.Ordinal) || target.Length < Prefix.Length + 64 + 1 || target[Prefix.Length + 64] != '?')
        {
            return null;
        }

        string hex = target.Substring(Prefix.Length, 64);
        if (!hex.All(c => char.IsAsciiDigit(c) || c is >= 'a' and <= 'f'))
        {
            return null;
        }

        var q = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var kv in target[(Prefix.Length + 65)..].Split('&'))
        {
            int eq = kv.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0 || !q.TryAdd(kv[..eq], kv[(eq + 1)..]))
            {
                return null;
            }
        }

        if (q.Count != 4
            || !q.TryGetValue("plain", out var p) || !int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int plain) || plain <= 0 || plain > chunkSize
            || !q.TryGetValue("stored", out var st) || !int.TryParse(st, NumberStyles.None, CultureInfo.InvariantCulture, out int stored) || stored < ChunkObject.HeaderSize || stored > ChunkObject.MaxObjectSize(chunkSize, ChunkCodec.Zstd)
            || !q.TryGetValue("codec", out var c) || !int.TryParse(c, NumberStyles.None, CultureInfo.InvariantCulture, out int codec) || codec is not ((int)ChunkCodec.None or (int)ChunkCodec.Zstd)
            || !q.TryGetValue("crc", out var crc) || crc.Length != 8 || !uint.TryParse(crc, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint crc32))
        {
            return null;
        }

        return new ChunkEntry(ChunkId.FromHex(hex), plain, stored, (ChunkCodec)codec, crc32);
    }

    public static string Sign(byte[] secret, string target, long unixMs, string from) =>
        Convert.ToHexStringLower(HMACSHA256.HashData(secret, Encoding.UTF8.GetBytes($"GET\n{target}\n{unixMs.ToString(CultureInfo.InvariantCulture)}\n{from}")));

    /// <summary>Whether the signature is the secret's for this request, and its time near <paramref name="now"/> (compared in fixed time).</summary>
    public static bool Verify(byte[] secret, string target, string? time, string? from, string? authorization, DateTimeOffset now)
    {
        if (time is null || from is null || authorization is null || !authorization.StartsWith(AuthScheme + " ", StringComparison.Ordinal)
            || !long.TryParse(time, NumberStyles.None, CultureInfo.InvariantCulture, out long ms)
            || Math.Abs(now.ToUnixTimeMilliseconds() - ms) > MaxSkew.TotalMilliseconds)
        {
            return false;
        }

        byte[] want = Encoding.ASCII.GetBytes(Sign(secret, target, ms, from));
        byte[] got = Encoding.ASCII.GetBytes(authorization[(AuthScheme.Length + 1)..].Trim());
        return CryptographicOperations.FixedTimeEquals(want, got);
    }

    /// <summary>
    /// The volume's peer secret: LMFS_PEER_SECRET, else the first line of <paramref name="file"/>
    /// (<see cref="SecretFile"/> rules). At least 16 bytes. Never logged, never on a command line.
    /// </summary>
    public static byte[] LoadSecret(string? file)
    {
        string? s = file is not null ? SecretFile.Read(file, "--peer-secret-file") : Environment.GetEnvironmentVariable("LMFS_PEER_SECRET");
        if (string.IsNullOrEmpty(s))
        {
            throw new LmfsException("a cache group needs the volume's peer secret", "set LMFS_PEER_SECRET or give --peer-secret-file FILE (chmod 600), the same on every node", 2);
        }

        var bytes = Encoding.UTF8.GetBytes(s);
        if (bytes.Length < 16)
        {
            throw new LmfsException($"the peer secret is {bytes.Length} bytes; at least 16 are needed", "generate one: head -c 32 /dev/urandom | base64", 2);
        }

        return bytes;
    }

    /// <summary>HOST:PORT (a name, an IPv4 address or a bracketed IPv6 one), or exit 2 naming what was given.</summary>
    public static (string Host, int Port) ParseMember(string text, string option)
    {
        int colon = text.LastIndexOf(':');
        string host = colon > 0 ? text[..colon] : "";
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535
            || host.Length == 0 || host.Any(ch => char.IsWhiteSpace(ch) || char.IsControl(ch) || ch is '/' or ','))
        {
            throw new LmfsException($"{option} '{TerminalText.Excerpt(text, 80)}' is not HOST:PORT", $"give {option} 10.0.0.5:7070 (a name, an address, or [IPv6]:PORT)", 2);
        }

        return (host.StartsWith('[') && host.EndsWith(']') ? host[1..^1] : host, port);
    }
}
