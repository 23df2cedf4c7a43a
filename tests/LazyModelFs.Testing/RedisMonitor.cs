using System.Net;
using System.Net.Sockets;
using System.Text;

namespace LazyModelFs.Testing;

/// <summary>
/// MONITOR on a <see cref="RedisServer"/>, over its own connection: every command the server runs for
/// a client, in the order it ran them, as their arguments. Commands a Lua script runs (`[N lua]`) are
/// left out, so what remains is what clients sent over the wire: a count of commands, not a timing.
/// The capture is bracketed by ECHO markers, so it holds exactly what ran between
/// <see cref="Start"/> and <see cref="Stop"/>. Redis' own rule: MONITOR does not show AUTH, HELLO and
/// a few admin commands.
/// </summary>
public sealed class RedisMonitor : IDisposable
{
    private readonly RedisServer _server;
    private readonly TcpClient _tcp = new();
    private readonly List<string[]> _seen = [];
    private readonly Thread _reader;
    private readonly string _start = "lmfs-monitor-start-" + Guid.NewGuid().ToString("N");
    private readonly string _end = "lmfs-monitor-end-" + Guid.NewGuid().ToString("N");

    private RedisMonitor(RedisServer server)
    {
        _server = server;
        StreamReader text;
        try
        {
            _tcp.Connect(IPAddress.Loopback, server.Port);
            var stream = _tcp.GetStream();
            text = new StreamReader(stream, Encoding.Latin1);
            if (server.Password is { } pw)
            {
                Send(stream, "AUTH", pw);
                Expect(text.ReadLine(), "+OK");
            }

            Send(stream, "MONITOR");
            Expect(text.ReadLine(), "+OK");
        }
        catch
        {
            _tcp.Dispose();
            throw;
        }

        _reader = new Thread(() => Read(text)) { IsBackground = true, Name = "redis-monitor" };
        _reader.Start();
    }

    /// <summary>Starts capturing once the server shows it is monitoring (the start marker came back).</summary>
    public static RedisMonitor Start(RedisServer server)
    {
        var m = new RedisMonitor(server);
        try
        {
            server.Cli("ECHO", m._start);
            server.WaitFor(() => m.Index(m._start) >= 0, "MONITOR shows the start marker");
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Ends the capture: the commands clients ran since <see cref="Start"/> (the markers left out), each as
    /// its arguments with the command name upper-cased.
    /// </summary>
    public IReadOnlyList<string[]> Stop()
    {
        _server.Cli("ECHO", _end);
        _server.WaitFor(() => Index(_end) >= 0, "MONITOR shows the end marker");
        lock (_seen)
        {
            int from = Index(_start) + 1, to = Index(_end);
            return _seen.GetRange(from, to - from);
        }
    }

    public void Dispose()
    {
        _tcp.Dispose(); // the reader thread ends on the closed stream
        _reader.Join(TimeSpan.FromSeconds(10));
    }

    private int Index(string marker)
    {
        lock (_seen)
        {
            return _seen.FindIndex(a => a is ["ECHO", var m] && m == marker);
        }
    }

    private void Read(StreamReader text)
    {
        try
        {
            while (text.ReadLine() is { } line)
            {
                // +1764601234.123456 [0 127.0.0.1:40000] "HGET" "key" "field"; a script's own commands say [0 lua].
                int open = line.IndexOf('['), close = line.IndexOf(']', Math.Max(open, 0));
                if (!line.StartsWith('+') || open < 0 || close < 0 || line[open..close].EndsWith(" lua", StringComparison.Ordinal))
                {
                    continue;
                }

                var args = Arguments(line.AsSpan(close + 1));
                if (args.Length > 0)
                {
                    args[0] = args[0].ToUpperInvariant();
                    lock (_seen)
                    {
                        _seen.Add(args);
                    }
                }
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            // Dispose closed the connection.
        }
    }

    /// <summary>The quoted arguments of a MONITOR line, unescaped (Redis writes them as sdscatrepr does: \", \\, \n, \r, \t, \a, \b, \xHH).</summary>
    private static string[] Arguments(ReadOnlySpan<char> s)
    {
        var args = new List<string>();
        var cur = new StringBuilder();
        bool inside = false;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (!inside)
            {
                inside = c == '"';
                continue;
            }

            if (c == '"')
            {
                args.Add(cur.ToString());
                cur.Clear();
                inside = false;
            }
            else if (c == '\\' && i + 1 < s.Length)
            {
                char e = s[++i];
                cur.Append(e switch
                {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'a' => '\a',
                    'b' => '\b',
                    'x' when i + 2 < s.Length => (char)Convert.ToByte(s.Slice(i + 1, 2).ToString(), 16),
                    _ => e,
                });
                if (e == 'x')
                {
                    i += 2;
                }
            }
            else
            {
                cur.Append(c);
            }
        }

        return [.. args];
    }

    private static void Send(NetworkStream stream, params string[] args)
    {
        var sb = new StringBuilder($"*{args.Length}\r\n");
        foreach (var a in args)
        {
            sb.Append($"${Encoding.UTF8.GetByteCount(a)}\r\n{a}\r\n");
        }

        stream.Write(Encoding.UTF8.GetBytes(sb.ToString()));
    }

    private static void Expect(string? line, string want)
    {
        if (line != want)
        {
            throw new InvalidOperationException($"redis-server answered '{line}' where '{want}' was expected");
        }
    }
}
