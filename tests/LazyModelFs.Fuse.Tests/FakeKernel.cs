using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;
using LazyModelFs.Fuse.Abi;

namespace LazyModelFs.Fuse.Tests;

/// <summary>One reply as the kernel would read it.</summary>
public sealed record Reply(ulong Unique, int Error, byte[] Body)
{
    public Errno Errno => (Errno)(-Error);

    public T As<T>()
        where T : unmanaged => MemoryMarshal.Read<T>(Body);
}

/// <summary>
/// Plays the kernel's side of /dev/fuse without a mount: builds byte-exact requests, hands them
/// to a <see cref="FuseDispatcher"/>, and records each reply after checking it as fuse_dev_do_write would.
/// </summary>
public sealed class FakeKernel : IReplySink
{
    private readonly ConcurrentDictionary<ulong, Reply> _replies = new();
    private readonly ConcurrentDictionary<ulong, int> _replyCount = new();
    private long _unique = 0;

    public FakeKernel(IFuseFileSystem fs, FuseProtocolOptions? options = null)
    {
        Dispatcher = new FuseDispatcher(fs, options);
    }

    public FuseDispatcher Dispatcher { get; }

    /// <summary>What the next Send reports (ENOENT: "the request was interrupted").</summary>
    public Errno NextSendResult { get; set; }

    public int RepliesTo(ulong unique) => _replyCount.GetValueOrDefault(unique);

    public Errno Send(ReadOnlySpan<byte> header, ReadOnlySpan<byte> body, ReadOnlySpan<byte> body2)
    {
        var h = MemoryMarshal.Read<fuse_out_header>(header);
        if (header.Length != fuse_out_header.Size || h.len != header.Length + body.Length + body2.Length)
        {
            throw new InvalidOperationException($"reply length {h.len} does not match the bytes written");
        }

        if (h.error > 0 || h.error <= -512 || (h.error != 0 && h.len != fuse_out_header.Size))
        {
            throw new InvalidOperationException($"invalid reply header: error {h.error}, len {h.len}");
        }

        _replyCount.AddOrUpdate(h.unique, 1, (_, c) => c + 1);
        _replies[h.unique] = new Reply(h.unique, h.error, [.. body, .. body2]);
        var r = NextSendResult;
        NextSendResult = Errno.OK;
        return r;
    }

    public ulong NextUnique() => (ulong)Interlocked.Add(ref _unique, 2);

    /// <summary>Sends one request and waits (briefly) for its reply; null when none is expected or none came.</summary>
    public Reply? Call(FuseOpcode op, ulong nodeId, ReadOnlySpan<byte> body, uint? lenOverride = null, bool expectReply = true)
    {
        ulong unique = NextUnique();
        var req = Build(op, unique, nodeId, body, lenOverride);
        Dispatcher.Dispatch(req, this);
        if (!expectReply)
        {
            return _replies.GetValueOrDefault(unique);
        }

        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!_replies.ContainsKey(unique) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(1);
        }

        return _replies.GetValueOrDefault(unique);
    }

    public static byte[] Build(FuseOpcode op, ulong unique, ulong nodeId, ReadOnlySpan<byte> body, uint? lenOverride = null)
    {
        var buf = new byte[fuse_in_header.Size + body.Length];
        var h = new fuse_in_header { len = lenOverride ?? (uint)buf.Length, opcode = (uint)op, unique = unique, nodeid = nodeId, uid = 1000, gid = 1000, pid = 4242 };
        MemoryMarshal.Write(buf, in h);
        body.CopyTo(buf.AsSpan(fuse_in_header.Size));
        return buf;
    }

    public Reply Init(uint minor = 45, FuseInitFlags offered = (FuseInitFlags)0x3F_FFFF_FFFFUL, uint major = 7)
    {
        var init = new fuse_init_in { major = major, minor = minor, max_readahead = 131072, flags = (uint)offered | (uint)FuseInitFlags.INIT_EXT, flags2 = (uint)((ulong)offered >> 32) };
        return Call(FuseOpcode.INIT, 0, Bytes(init))!;
    }

    public static byte[] Bytes<T>(T value)
        where T : unmanaged => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray();

    public static byte[] Name(string s) => [.. Encoding.UTF8.GetBytes(s), 0];

    public static byte[] Cat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();
}
