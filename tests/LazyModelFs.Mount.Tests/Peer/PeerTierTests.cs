using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using LazyModelFs.Cache;
using LazyModelFs.Chunks;
using LazyModelFs.Import;
using LazyModelFs.Peer;
using LazyModelFs.Storage;
using LazyModelFs.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace LazyModelFs.Mount.Tests.Peer;

/// <summary>
/// The peer tier's first step (issue 15): nodes' chunk caches over one volume, asking each other over
/// real TCP on loopback with signed requests (a static member list). One store fetch per chunk however
/// many ask; every byte from a peer checked; a lying, refusing or dead peer costs a fallback to the store.
/// </summary>
public sealed class PeerTierTests : IDisposable
{
    private const int Chunk = 1 << 20;
    private const int Chunks = 12;
    private static readonly byte[] Secret = Encoding.UTF8.GetBytes("a peer secret of the volume, 32+");
    private readonly TempDir _dir = new("lmfs-peer");
    private readonly List<IDisposable> _owned = [];
    private int _n;

    public void Dispose()
    {
        foreach (var d in Enumerable.Reverse(_owned))
        {
            d.Dispose();
        }

        _dir.Dispose();
    }

    private async Task<(Volume V, ChunkTable Table, byte[] Data)> ImportedAsync()
    {
        var v = await TwinVolume.CreateAsync(new MemoryObjectStore(), Chunk, "none");
        _owned.Add(v);
        var data = TestData.Random(Chunks * Chunk, 5);
        File.WriteAllBytes(_dir["src.bin"], data);
        await new Importer(v, new ImportOptions()).RunAsync([_dir["src.bin"]], "/m.bin");
        var table = (await v.Meta.GetChunkTableAsync((await v.Namespace.ResolveAsync("/m.bin"))!.Ino, Chunk))!;
        return (v, table, data);
    }

    /// <summary>A node's cache: memory and its own disk directory, over the volume's store, with the peer tier when given.</summary>
    private ChunkCache Node(Volume v, PeerOptions? peers = null)
    {
        var memory = new MemoryTier(32L * CachedChunk.BufferSizeFor(Chunk), Chunk);
        IChunkSource source = peers is null ? v.Chunks : new PeerSource(v.Chunks, peers, NullLogger.Instance);
        var cache = new ChunkCache(source, memory, new DiskCache(new DiskCacheOptions { Directory = _dir["cache" + Interlocked.Increment(ref _n)], FreeSpaceRatio = 0 }), new ChunkCacheOptions { MaxFetches = 8 });
        _owned.Add(cache);
        _owned.Add(memory);
        return cache;
    }

    private PeerServer Serve(ChunkCache cache, byte[]? secret = null, int port = 0)
    {
        var s = PeerServer.Start(new IPEndPoint(IPAddress.Loopback, port), cache, secret ?? Secret, Chunk, NullLogger.Instance);
        _owned.Add(s);
        return s;
    }

    private static string At(IPEndPoint e) => $"127.0.0.1:{e.Port}";

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    private static async Task ReadAllAsync(ChunkCache cache, ChunkTable table, byte[] data)
    {
        for (int i = 0; i < table.Count; i++)
        {
            using var c = await cache.GetAsync(table[i]);
            Assert.True(c.Data.Span.SequenceEqual(data.AsSpan(i * Chunk, table[i].PlainLength)), $"chunk {i} differs");
        }
    }

    private static long Stat(ChunkCache c, string key)
    {
        var o = new JsonObject();
        c.AddStats(o);
        return o[key]!.GetValue<long>();
    }

    private static long Stat(PeerServer s, string key)
    {
        var o = new JsonObject();
        s.AddStats(o);
        return o[key]!.GetValue<long>();
    }

    [Fact]
    public async Task Nodes_asking_one_owner_at_once_cost_the_store_one_fetch_per_chunk_and_get_every_byte_right()
    {
        var (v, table, data) = await ImportedAsync();
        var owner = Node(v);
        var server = Serve(owner);
        var askers = Enumerable.Range(0, 3).Select(_ => Node(v, new PeerOptions { Secret = Secret, Members = [At(server.Address)] })).ToList();

        await Task.WhenAll(askers.Select(a => ReadAllAsync(a, table, data)));

        Assert.Equal(Chunks, owner.StoreFetches); // the owner fetched each chunk once, for everyone
        Assert.Equal(3 * Chunks, Stat(server, "peerServed"));
        Assert.All(askers, a =>
        {
            Assert.Equal(Chunks, Stat(a, "peerFetches"));
            Assert.Equal(0, Stat(a, "peerFallbacks"));
            Assert.True(a.Disk!.Contains(table[0].Id)); // what a peer gave is cached here too
        });
    }

    [Fact]
    public async Task Two_serving_members_split_the_chunks_by_owner_and_each_fetches_only_its_share()
    {
        var (v, table, data) = await ImportedAsync();
        // Each node serves on its own port; both know both. The addresses are known only once bound,
        // so each node's cache asks through a source made after both servers exist.
        var a0 = Node(v);
        var b0 = Node(v);
        var sa = Serve(a0);
        var sb = Serve(b0);
        string[] members = [At(sa.Address), At(sb.Address)];
        var a = Node(v, new PeerOptions { Secret = Secret, Self = members[0], Members = members });
        var source = new PeerSource(v.Chunks, new PeerOptions { Secret = Secret, Self = members[0], Members = members }, NullLogger.Instance);
        int mine = table.Entries.Count(e => source.OwnerOf(e.Id) == members[0]);
        Assert.InRange(mine, 1, Chunks - 1); // rendezvous spread 12 chunks over both

        await ReadAllAsync(a, table, data);
        Assert.Equal(mine, Stat(a, "peerOwnFetches")); // its own share from the store
        Assert.Equal(Chunks - mine, Stat(a, "peerFetches")); // the rest from b
        Assert.Equal(Chunks - mine, b0.StoreFetches);
    }

    [Fact]
    public void Rendezvous_spreads_owners_evenly_and_a_leaving_member_moves_only_its_own_share()
    {
        string[] four = ["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070", "10.0.0.4:7070"];
        var all = new PeerSource(new ChunkStore(new MemoryObjectStore()), new PeerOptions { Secret = Secret, Members = four }, NullLogger.Instance);
        var three = new PeerSource(new ChunkStore(new MemoryObjectStore()), new PeerOptions { Secret = Secret, Members = four[..3] }, NullLogger.Instance);
        var ids = Enumerable.Range(0, 4000).Select(i => ChunkId.Of(BitConverter.GetBytes(i))).ToList();
        var owners = ids.Select(all.OwnerOf).ToList();
        foreach (var m in four)
        {
            Assert.InRange(owners.Count(o => o == m), 850, 1150); // 1000 each, give or take
        }

        for (int i = 0; i < ids.Count; i++)
        {
            if (owners[i] != four[3])
            {
                Assert.Equal(owners[i], three.OwnerOf(ids[i])); // only the leaver's chunks move
            }
        }
    }

    [Fact]
    public async Task A_peer_with_another_secret_is_refused_401_and_the_asker_reads_from_the_store()
    {
        var (v, table, data) = await ImportedAsync();
        var owner = Node(v);
        var server = Serve(owner, Encoding.UTF8.GetBytes("another secret entirely, 32 bytes"));
        var asker = Node(v, new PeerOptions { Secret = Secret, Members = [At(server.Address)] });
        await ReadAllAsync(asker, table, data);
        Assert.Equal(1, Stat(server, "peerRejected")); // then avoided: the other chunks went straight to the store
        Assert.Equal(0, Stat(server, "peerServed"));
        Assert.Equal(0, owner.StoreFetches); // a refused request fetches nothing for the asker
        Assert.Equal(1, Stat(asker, "peerFallbacks"));
        Assert.Equal(Chunks - 1, Stat(asker, "peerOwnFetches"));
    }

    [Fact]
    public async Task A_peer_that_sends_other_bytes_is_caught_by_the_check_and_avoided()
    {
        var (v, table, data) = await ImportedAsync();
        using var liar = new TcpListener(IPAddress.Loopback, 0);
        liar.Start();
        int served = 0;
        _ = Task.Run(async () =>
        {
            while (true)
            {
                TcpClient c;
                try
                {
                    c = await liar.AcceptTcpClientAsync();
                }
                catch (Exception)
                {
                    return;
                }

                using (c)
                {
                    var s = c.GetStream();
                    await PeerServer.ReadHeadAsync(s, CancellationToken.None);
                    var body = new byte[Chunk]; // the right length, the wrong bytes
                    await s.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"));
                    await s.WriteAsync(body);
                    Interlocked.Increment(ref served);
                }
            }
        });

        var asker = Node(v, new PeerOptions { Secret = Secret, Members = [$"127.0.0.1:{((IPEndPoint)liar.LocalEndpoint).Port}"] });
        await ReadAllAsync(asker, table, data); // every byte right
        Assert.Equal(1, served);
        Assert.Equal(1, Stat(asker, "peerErrors"));
        Assert.Equal(0, Stat(asker, "peerFetches"));
        Assert.False(asker.Memory.Contains(ChunkId.Of(new byte[Chunk]))); // the lie was never cached under any id
    }

    [Fact]
    public async Task A_dead_or_silent_peer_costs_a_bounded_wait_then_the_store()
    {
        var (v, table, data) = await ImportedAsync();
        using var silent = new TcpListener(IPAddress.Loopback, 0); // accepts and never answers
        silent.Start();
        var asker = Node(v, new PeerOptions { Secret = Secret, Members = [$"127.0.0.1:{((IPEndPoint)silent.LocalEndpoint).Port}"], AnswerTimeout = TimeSpan.FromMilliseconds(300) });
        await ReadAllAsync(asker, table, data).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(1, Stat(asker, "peerFallbacks"));

        int dead;
        using (var l = new TcpListener(IPAddress.Loopback, 0))
        {
            l.Start();
            dead = ((IPEndPoint)l.LocalEndpoint).Port;
        }

        var other = Node(v, new PeerOptions { Secret = Secret, Members = [$"127.0.0.1:{dead}"] });
        await ReadAllAsync(other, table, data).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(1, Stat(other, "peerFallbacks"));
    }

    [Fact]
    public async Task Members_whose_lists_differ_never_forward_a_request_in_a_circle()
    {
        var (v, table, data) = await ImportedAsync();
        // a and b serve; each thinks the other owns every chunk (a's list names only b, b's only a): without
        // the guard, a fetching for the asker would ask b, and b would ask a, which waits for itself.
        int pa = FreePort(), pb = FreePort();
        var ca = Node(v, new PeerOptions { Secret = Secret, Members = [$"127.0.0.1:{pb}"] });
        var cb = Node(v, new PeerOptions { Secret = Secret, Members = [$"127.0.0.1:{pa}"] });
        var sa = Serve(ca, port: pa);
        var sb = Serve(cb, port: pb);
        var asker = Node(v, new PeerOptions { Secret = Secret, Members = [At(sa.Address)] });
        await ReadAllAsync(asker, table, data).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(Chunks, Stat(asker, "peerFetches"));
        Assert.Equal(Chunks, ca.StoreFetches); // a fetched for the asker from the store itself
        Assert.Equal(0, Stat(ca, "peerFetches"));
        Assert.Equal(0, Stat(sb, "peerServed"));
    }

    [Fact]
    public async Task A_member_at_its_limit_answers_busy_and_is_not_avoided()
    {
        var (v, table, data) = await ImportedAsync();
        var owner = Node(v);
        var server = Serve(owner);
        var held = new List<Socket>();
        try
        {
            for (int i = 0; i < PeerServer.MaxConnections; i++) // silent clients hold every slot (until the 5 s head deadline)
            {
                var s = new Socket(SocketType.Stream, ProtocolType.Tcp);
                await s.ConnectAsync(IPAddress.Loopback, server.Address.Port);
                held.Add(s);
            }

            Assert.True(SpinWait.SpinUntil(() => Stat(server, "peerServeBusy") == 0 && held.Count == PeerServer.MaxConnections, 1000));
            var asker = Node(v, new PeerOptions { Secret = Secret, Members = [At(server.Address)] });
            using (var c = await asker.GetAsync(table[0]))
            {
                Assert.True(c.Data.Span.SequenceEqual(data.AsSpan(0, Chunk)));
            }

            Assert.True(Stat(server, "peerServeBusy") >= 1);
            Assert.Equal(1, Stat(asker, "peerFallbacks"));
            Assert.Equal(0, Stat(asker, "peerErrors")); // busy is not a fault: the member is asked again next time
        }
        finally
        {
            held.ForEach(s => s.Dispose());
        }
    }

    [Fact]
    public void Signatures_bind_the_request_and_its_time_and_targets_are_parsed_strictly()
    {
        var e = new ChunkEntry(ChunkId.Of([1, 2, 3]), 3, 19, ChunkCodec.None, 0xdeadbeef);
        string t = PeerProtocol.Target(e);
        Assert.Equal(e, PeerProtocol.ParseTarget(t, Chunk));
        var now = DateTimeOffset.UtcNow;
        long ms = now.ToUnixTimeMilliseconds();
        string sig = $"{PeerProtocol.AuthScheme} {PeerProtocol.Sign(Secret, t, ms, "a:1")}";
        Assert.True(PeerProtocol.Verify(Secret, t, ms.ToString(), "a:1", sig, now));
        Assert.False(PeerProtocol.Verify(Secret, t, ms.ToString(), "b:1", sig, now));            // another sender
        Assert.False(PeerProtocol.Verify(Secret, t + "0", ms.ToString(), "a:1", sig, now));      // another request
        Assert.False(PeerProtocol.Verify(Secret, t, ms.ToString(), "a:1", sig, now.AddMinutes(2))); // stale
        Assert.False(PeerProtocol.Verify(Encoding.UTF8.GetBytes("x".PadRight(32, 'x')), t, ms.ToString(), "a:1", sig, now));
        Assert.False(PeerProtocol.Verify(Secret, t, ms.ToString(), "a:1", null, now));
        foreach (var bad in new[] { "/v1/chunk/zz", t.Replace("plain=3", "plain=-3"), t + "&x=1", t.Replace("codec=0", "codec=9"), t.Replace("plain=3", $"plain={Chunk + 1}"), "/etc/passwd" })
        {
            Assert.Null(PeerProtocol.ParseTarget(bad, Chunk));
        }
    }
}
