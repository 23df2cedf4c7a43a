using System.Runtime.InteropServices;
using System.Text;
using LazyModelFs.Fuse.Abi;
using LazyModelFs.MemFs;
using Xunit;
using static LazyModelFs.Fuse.Tests.FakeKernel;

namespace LazyModelFs.Fuse.Tests;

/// <summary>The dispatcher driven by a fake kernel: every opcode, INIT, reference counting, malformed input.</summary>
public class DispatcherTests
{
    private static (FakeKernel K, MemoryFileSystem Fs) Started(FuseProtocolOptions? options = null)
    {
        var fs = new MemoryFileSystem();
        fs.AddFile("/dir/a.txt", "alpha"u8.ToArray());
        fs.AddFile("/big.bin", Pattern.Bytes(3 << 20));
        fs.AddSymlink("/link", "dir/a.txt");
        var k = new FakeKernel(fs, options);
        Assert.Equal(0, k.Init().Error);
        return (k, fs);
    }

    private static ulong Lookup(FakeKernel k, ulong parent, string name) => k.Call(FuseOpcode.LOOKUP, parent, Name(name))!.As<fuse_entry_out>().nodeid;

    private static byte[] ReadIn(ulong fh, long offset, uint size) => Bytes(new fuse_read_in { fh = fh, offset = (ulong)offset, size = size });

    [Fact]
    public void Init_grants_what_was_asked_and_offered_with_the_documented_sizes()
    {
        var k = new FakeKernel(new MemoryFileSystem());
        var r = k.Init();
        Assert.Equal(fuse_init_out.Size, r.Body.Length);
        var o = r.As<fuse_init_out>();
        Assert.Equal((7u, 45u), (o.major, o.minor));
        var flags = (FuseInitFlags)o.flags;
        foreach (var f in new[] { FuseInitFlags.ASYNC_READ, FuseInitFlags.PARALLEL_DIROPS, FuseInitFlags.DO_READDIRPLUS, FuseInitFlags.READDIRPLUS_AUTO, FuseInitFlags.ABORT_ERROR, FuseInitFlags.MAX_PAGES, FuseInitFlags.EXPLICIT_INVAL_DATA, FuseInitFlags.INIT_EXT })
        {
            Assert.True(flags.HasFlag(f), $"{f} not granted");
        }

        Assert.False(flags.HasFlag(FuseInitFlags.WRITEBACK_CACHE));
        Assert.False(flags.HasFlag(FuseInitFlags.AUTO_INVAL_DATA));
        Assert.Equal(0u, o.flags2); // passthrough not asked for
        Assert.Equal((1u << 20, (ushort)256, (ushort)128, (ushort)96, 131072u, 1u), (o.max_write, o.max_pages, o.max_background, o.congestion_threshold, o.max_readahead, o.time_gran));
        Assert.Equal(0u, o.max_stack_depth);
    }

    [Fact]
    public void Passthrough_is_negotiated_through_flags2_only_when_asked_and_offered()
    {
        var k = new FakeKernel(new MemoryFileSystem(), new FuseProtocolOptions { Passthrough = true });
        var o = k.Init().As<fuse_init_out>();
        Assert.Equal((uint)((ulong)FuseInitFlags.PASSTHROUGH >> 32), o.flags2);
        Assert.True(((FuseInitFlags)o.flags).HasFlag(FuseInitFlags.INIT_EXT));
        Assert.Equal(1u, o.max_stack_depth);
        Assert.True(k.Dispatcher.Info!.Passthrough);

        var notOffered = new FakeKernel(new MemoryFileSystem(), new FuseProtocolOptions { Passthrough = true });
        Assert.Equal(0u, notOffered.Init(offered: (FuseInitFlags)0xFFFF_FFFF).As<fuse_init_out>().flags2);
    }

    [Fact]
    public void Init_handles_old_new_and_unsupported_kernels()
    {
        // 7.20 sends a 16-byte init_in and gets the 24-byte compat reply.
        var old = new FakeKernel(new MemoryFileSystem());
        var body = Bytes(new fuse_init_in { major = 7, minor = 20, max_readahead = 65536, flags = (uint)FuseInitFlags.ASYNC_READ })[..16];
        var r = old.Call(FuseOpcode.INIT, 0, body)!;
        Assert.Equal((0, fuse_init_out.Compat22Size), (r.Error, r.Body.Length));
        Assert.Equal(20u, MemoryMarshal.Read<uint>(r.Body.AsSpan(4)));

        Assert.Equal(Errno.EPROTO, new FakeKernel(new MemoryFileSystem()).Init(minor: 8).Errno);

        var newer = new FakeKernel(new MemoryFileSystem());
        var v = newer.Init(major: 8).As<fuse_init_out>();
        Assert.Equal((7u, 45u, 0u), (v.major, v.minor, v.flags));
        Assert.Null(newer.Dispatcher.Info); // still waiting for an INIT it can accept
    }

    [Fact]
    public void Requests_before_init_and_malformed_requests_get_errors_not_crashes()
    {
        var k = new FakeKernel(new MemoryFileSystem());
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.GETATTR, 1, new byte[16])!.Errno);
        k.Init();
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.LOOKUP, 1, "no-nul"u8)!.Errno);
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.GETATTR, 1, new byte[3])!.Errno);
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.READ, 1, new byte[10])!.Errno);
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.GETATTR, 1, new byte[16], lenOverride: 999)!.Errno);
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.READ, 1, ReadIn(1, 0, (2 << 20) + 1))!.Errno); // larger than max_read
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.SYMLINK, 1, Name("only-one-name"))!.Errno);
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.WRITE, 1, Cat(Bytes(new fuse_write_in { size = 100 }), new byte[10]))!.Errno);
        k.Dispatcher.Dispatch(new byte[7], k); // shorter than a header: dropped, nothing to answer
        Assert.Equal(Errno.ENOSYS, k.Call((FuseOpcode)9999, 1, [])!.Errno);
    }

    [Fact]
    public void Lookup_counts_references_and_negative_entries_are_cacheable()
    {
        var (k, fs) = Started();
        ulong dir = Lookup(k, 1, "dir");
        var e = k.Call(FuseOpcode.LOOKUP, dir, Name("a.txt"))!.As<fuse_entry_out>();
        Assert.Equal(5ul, e.attr.size);
        Assert.Equal(0x81A4u, e.attr.mode);
        Assert.True(e.entry_valid > 3_000_000_000); // "indefinite" for an immutable tree
        Lookup(k, dir, "a.txt");
        Assert.Equal(2, fs.Find(e.nodeid)!.Lookups);

        k.Call(FuseOpcode.FORGET, e.nodeid, Bytes(new fuse_forget_in { nlookup = 1 }), expectReply: false);
        Assert.Equal(1, fs.Find(e.nodeid)!.Lookups);
        var batch = Cat(Bytes(new fuse_batch_forget_in { count = 2 }), Bytes(new fuse_forget_one { nodeid = e.nodeid, nlookup = 1 }), Bytes(new fuse_forget_one { nodeid = dir, nlookup = 1 }));
        Assert.Null(k.Call(FuseOpcode.BATCH_FORGET, 0, batch, expectReply: false));
        Assert.Equal(0, fs.Find(e.nodeid)!.Lookups);
        Assert.Equal(0, fs.Find(dir)!.Lookups);

        var neg = k.Call(FuseOpcode.LOOKUP, 1, Name("pytorch_model.bin"))!;
        Assert.Equal(0, neg.Error);
        Assert.Equal(0ul, neg.As<fuse_entry_out>().nodeid);
        Assert.True(neg.As<fuse_entry_out>().entry_valid > 0);
    }

    [Fact]
    public void Batch_forget_is_capped_by_the_bytes_present()
    {
        var (k, fs) = Started();
        ulong dir = Lookup(k, 1, "dir");
        var batch = Cat(Bytes(new fuse_batch_forget_in { count = 1000 }), Bytes(new fuse_forget_one { nodeid = dir, nlookup = 1 }));
        k.Call(FuseOpcode.BATCH_FORGET, 0, batch, expectReply: false);
        Assert.Equal(0, fs.Find(dir)!.Lookups);
    }

    [Fact]
    public void A_reply_the_kernel_refuses_with_ENOENT_gives_the_reference_back()
    {
        var (k, fs) = Started();
        k.NextSendResult = Errno.ENOENT;
        ulong dir = Lookup(k, 1, "dir");
        Assert.Equal(0, fs.Find(dir)!.Lookups);
    }

    [Fact]
    public void Getattr_open_read_release_serve_whole_replies_short_only_at_eof()
    {
        var (k, fs) = Started();
        ulong big = Lookup(k, 1, "big.bin");
        var a = k.Call(FuseOpcode.GETATTR, big, Bytes(new fuse_getattr_in()))!.As<fuse_attr_out>();
        Assert.Equal((ulong)(3 << 20), a.attr.size);
        var o = k.Call(FuseOpcode.OPEN, big, Bytes(new fuse_open_in { flags = 0 }))!.As<fuse_open_out>();
        Assert.Equal(FopenFlags.KEEP_CACHE | FopenFlags.NOFLUSH, (FopenFlags)o.open_flags);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.OPEN, big, Bytes(new fuse_open_in { flags = 2 }))!.Errno);

        var full = k.Call(FuseOpcode.READ, big, ReadIn(o.fh, 1 << 20, 1 << 20))!;
        Assert.Equal(Pattern.Bytes(3 << 20)[(1 << 20)..(2 << 20)], full.Body);
        var tail = k.Call(FuseOpcode.READ, big, ReadIn(o.fh, (3 << 20) - 100, 4096))!;
        Assert.Equal(100, tail.Body.Length);
        Assert.Empty(k.Call(FuseOpcode.READ, big, ReadIn(o.fh, 3 << 20, 4096))!.Body);
        Assert.Equal(0, k.Call(FuseOpcode.RELEASE, big, Bytes(new fuse_release_in { fh = o.fh }))!.Error);
        Assert.Equal(0, k.Dispatcher.Pool.Outstanding);
        Assert.Equal(0, fs.OpenFiles);
    }

    [Fact]
    public void Async_reads_are_answered_from_the_continuation_and_return_their_buffers()
    {
        var (k, fs) = Started();
        fs.AsyncReads = true;
        ulong big = Lookup(k, 1, "big.bin");
        var o = k.Call(FuseOpcode.OPEN, big, Bytes(new fuse_open_in()))!.As<fuse_open_out>();
        var expected = Pattern.Bytes(3 << 20);
        for (int i = 0; i < 3; i++)
        {
            var r = k.Call(FuseOpcode.READ, big, ReadIn(o.fh, i << 20, 1 << 20))!;
            Assert.Equal(expected[(i << 20)..((i + 1) << 20)], r.Body);
        }

        SpinWait.SpinUntil(() => k.Dispatcher.Pool.Outstanding == 0, 5000);
        Assert.Equal(0, k.Dispatcher.Pool.Outstanding);
    }

    [Fact]
    public void Readdir_cookies_resume_after_the_entry_they_name_and_records_never_split()
    {
        var fs = new MemoryFileSystem();
        for (int i = 0; i < 100; i++)
        {
            fs.AddFile($"/d/file-{i:D3}", []);
        }

        var k = new FakeKernel(fs);
        k.Init();
        ulong d = Lookup(k, 1, "d");
        var od = k.Call(FuseOpcode.OPENDIR, d, Bytes(new fuse_open_in()))!.As<fuse_open_out>();
        Assert.Equal(FopenFlags.KEEP_CACHE | FopenFlags.CACHE_DIR, (FopenFlags)od.open_flags);
        var names = new List<string>();
        long offset = 0;
        while (true)
        {
            var r = k.Call(FuseOpcode.READDIR, d, ReadIn(od.fh, offset, 500))!;
            Assert.True(r.Body.Length <= 500);
            if (r.Body.Length == 0)
            {
                break;
            }

            int pos = 0;
            while (pos < r.Body.Length)
            {
                var de = MemoryMarshal.Read<fuse_dirent>(r.Body.AsSpan(pos));
                Assert.NotEqual(0ul, de.ino);
                names.Add(Encoding.UTF8.GetString(r.Body, pos + fuse_dirent.Size, (int)de.namelen));
                offset = (long)de.off;
                pos += (fuse_dirent.Size + (int)de.namelen + 7) & ~7;
            }

            Assert.Equal(r.Body.Length, pos);
        }

        Assert.Equal(new[] { ".", ".." }.Concat(Enumerable.Range(0, 100).Select(i => $"file-{i:D3}")), names);

        // Replaying from an earlier cookie (seekdir) gives the same entries again.
        var again = k.Call(FuseOpcode.READDIR, d, ReadIn(od.fh, 50, 4096))!;
        var first = MemoryMarshal.Read<fuse_dirent>(again.Body);
        Assert.Equal("file-048", Encoding.UTF8.GetString(again.Body, fuse_dirent.Size, (int)first.namelen));
        Assert.Equal(0, k.Call(FuseOpcode.RELEASEDIR, d, Bytes(new fuse_release_in { fh = od.fh }))!.Error);
    }

    [Fact]
    public void Readdirplus_takes_references_except_for_dot_entries_and_gives_them_back_when_refused()
    {
        var (k, fs) = Started();
        ulong dir = Lookup(k, 1, "dir");
        var od = k.Call(FuseOpcode.OPENDIR, dir, Bytes(new fuse_open_in()))!.As<fuse_open_out>();
        var r = k.Call(FuseOpcode.READDIRPLUS, dir, ReadIn(od.fh, 0, 4096))!;
        int pos = 0;
        var seen = new List<(string, ulong)>();
        while (pos < r.Body.Length)
        {
            var p = MemoryMarshal.Read<fuse_direntplus>(r.Body.AsSpan(pos));
            seen.Add((Encoding.UTF8.GetString(r.Body, pos + fuse_direntplus.Size, (int)p.dirent.namelen), p.entry_out.nodeid));
            pos += (fuse_direntplus.Size + (int)p.dirent.namelen + 7) & ~7;
        }

        Assert.Equal(3, seen.Count);
        Assert.Equal((".", 0ul), seen[0]);
        Assert.Equal(("..", 0ul), seen[1]);
        ulong a = seen[2].Item2;
        Assert.Equal(1, fs.Find(a)!.Lookups);

        k.NextSendResult = Errno.ENOENT;
        k.Call(FuseOpcode.READDIRPLUS, dir, ReadIn(od.fh, 0, 4096));
        Assert.Equal(1, fs.Find(a)!.Lookups);
    }

    [Fact]
    public void Statfs_readlink_and_the_sticky_enosys_set()
    {
        var (k, _) = Started();
        var s = k.Call(FuseOpcode.STATFS, 1, [])!.As<fuse_kstatfs>();
        Assert.Equal((4096u, 255u), (s.bsize, s.namelen));
        ulong link = Lookup(k, 1, "link");
        Assert.Equal("dir/a.txt", Encoding.UTF8.GetString(k.Call(FuseOpcode.READLINK, link, [])!.Body));
        Assert.Equal(Errno.EINVAL, k.Call(FuseOpcode.READLINK, 1, [])!.Errno);

        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.GETXATTR, 1, Cat(Bytes(new fuse_getxattr_in { size = 0 }), Name("user.x")))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.LISTXATTR, 1, Bytes(new fuse_getxattr_in()))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.SETXATTR, 1, Name("user.x"))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.REMOVEXATTR, 1, Name("user.x"))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.FLUSH, 1, Bytes(new fuse_flush_in()))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.FSYNC, 1, Bytes(new fuse_fsync_in()))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.FSYNCDIR, 1, Bytes(new fuse_fsync_in()))!.Errno);
        Assert.Equal(Errno.ENOSYS, k.Call(FuseOpcode.ACCESS, 1, Bytes(new fuse_access_in { mask = 4 }))!.Errno);
        foreach (var op in new[] { FuseOpcode.GETLK, FuseOpcode.IOCTL, FuseOpcode.POLL, FuseOpcode.LSEEK, FuseOpcode.STATX, FuseOpcode.COPY_FILE_RANGE, FuseOpcode.BMAP, FuseOpcode.MKNOD, FuseOpcode.LINK })
        {
            Assert.Equal(Errno.ENOSYS, k.Call(op, 1, new byte[64])!.Errno);
        }

        // INTERRUPT: ENOSYS once and the kernel stops sending them (v1 policy).
        ulong target = k.NextUnique();
        var ir = k.Call(FuseOpcode.INTERRUPT, 0, Bytes(new fuse_interrupt_in { unique = target }))!;
        Assert.Equal(Errno.ENOSYS, ir.Errno);
        Assert.Null(k.Call(FuseOpcode.NOTIFY_REPLY, 1, new byte[32], expectReply: false));
        var destroy = k.Call(FuseOpcode.DESTROY, 0, [])!;
        Assert.Equal((0, 0), (destroy.Error, destroy.Body.Length));
        Assert.True(k.Dispatcher.Destroyed);
    }

    [Fact]
    public void Write_path_operations_answer_erofs()
    {
        var (k, _) = Started();
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.MKDIR, 1, Cat(Bytes(new fuse_mkdir_in { mode = 0x1ED }), Name("d2")))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.CREATE, 1, Cat(Bytes(new fuse_create_in { mode = 0x81A4 }), Name("f")))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.WRITE, 1, Cat(Bytes(new fuse_write_in { size = 3 }), "abc"u8.ToArray()))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.SETATTR, 1, Bytes(new fuse_setattr_in { valid = 8 }))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.UNLINK, 1, Name("big.bin"))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.RMDIR, 1, Name("dir"))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.RENAME, 1, Cat(Bytes(new fuse_rename_in { newdir = 1 }), Name("a"), Name("b")))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.RENAME2, 1, Cat(Bytes(new fuse_rename2_in { newdir = 1, flags = 1 }), Name("a"), Name("b")))!.Errno);
        Assert.Equal(Errno.EROFS, k.Call(FuseOpcode.SYMLINK, 1, Cat(Name("l"), Name("target")))!.Errno);
    }

    private sealed class ThrowingFs : IFuseFileSystem
    {
        public ValueTask<FuseResult<FuseEntry>> LookupAsync(FuseContext ctx, ulong parent, byte[] name) => throw new InvalidOperationException("boom");

        public void Forget(ulong nodeId, ulong nlookup) => throw new InvalidOperationException("boom");

        public async ValueTask<FuseResult<FuseAttrReply>> GetAttrAsync(FuseContext ctx, ulong nodeId, ulong? fh)
        {
            await Task.Yield();
            throw new InvalidOperationException("async boom");
        }

        public ValueTask<FuseResult<FuseOpen>> OpenAsync(FuseContext ctx, ulong nodeId, int flags) => throw new InvalidOperationException();

        public ValueTask<FuseReadResult> ReadAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, Memory<byte> buffer) => ValueTask.FromResult(FuseReadResult.InBuffer(buffer.Length + 1));

        public ValueTask<Errno> ReadDirAsync(FuseContext ctx, ulong nodeId, ulong fh, long offset, FuseDirBuffer buffer) => throw new InvalidOperationException();

        public ValueTask<FuseResult<fuse_kstatfs>> StatFsAsync(FuseContext ctx, ulong nodeId) => ValueTask.FromResult<FuseResult<fuse_kstatfs>>((Errno)9999);

        public ValueTask<FuseResult<ReadOnlyMemory<byte>>> GetXattrAsync(FuseContext ctx, ulong nodeId, byte[] name) =>
            ValueTask.FromResult<FuseResult<ReadOnlyMemory<byte>>>((ReadOnlyMemory<byte>)"value"u8.ToArray());
    }

    [Fact]
    public void Handler_failures_become_eio_and_bad_errnos_are_never_written()
    {
        var k = new FakeKernel(new ThrowingFs());
        k.Init();
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.LOOKUP, 1, Name("x"))!.Errno);
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.GETATTR, 1, Bytes(new fuse_getattr_in()))!.Errno);
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.READ, 1, ReadIn(0, 0, 100))!.Errno); // handler claimed more than asked
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.READDIR, 1, ReadIn(0, 0, 100))!.Errno);
        Assert.Equal(Errno.EIO, k.Call(FuseOpcode.STATFS, 1, [])!.Errno); // errno ≥ 512 would hang the caller
        k.Call(FuseOpcode.FORGET, 5, Bytes(new fuse_forget_in { nlookup = 1 }), expectReply: false); // no reply, no crash
        Assert.Equal(0, k.Dispatcher.Pool.Outstanding);
    }

    [Fact]
    public void Xattr_size_probe_and_erange_follow_the_protocol()
    {
        var k = new FakeKernel(new ThrowingFs());
        k.Init();
        var probe = k.Call(FuseOpcode.GETXATTR, 1, Cat(Bytes(new fuse_getxattr_in { size = 0 }), Name("user.k")))!;
        Assert.Equal(5u, probe.As<fuse_getxattr_out>().size);
        Assert.Equal(Errno.ERANGE, k.Call(FuseOpcode.GETXATTR, 1, Cat(Bytes(new fuse_getxattr_in { size = 2 }), Name("user.k")))!.Errno);
        Assert.Equal("value"u8.ToArray(), k.Call(FuseOpcode.GETXATTR, 1, Cat(Bytes(new fuse_getxattr_in { size = 64 }), Name("user.k")))!.Body);
    }

    [Fact]
    public void Fuzzed_requests_never_crash_and_are_answered_exactly_once()
    {
        var (k, _) = Started();
        var rnd = new Random(12345);
        var noReply = new HashSet<FuseOpcode> { FuseOpcode.FORGET, FuseOpcode.BATCH_FORGET, FuseOpcode.NOTIFY_REPLY, FuseOpcode.INIT, FuseOpcode.DESTROY };
        var sent = new List<(ulong Unique, FuseOpcode Op)>();
        for (int i = 0; i < 20_000; i++)
        {
            var op = (FuseOpcode)rnd.Next(1, 56);
            if (op is FuseOpcode.INIT or FuseOpcode.DESTROY)
            {
                continue;
            }

            var body = new byte[rnd.Next(0, 200)];
            rnd.NextBytes(body);
            if (op == FuseOpcode.READ && body.Length >= 40)
            {
                BitConverter.TryWriteBytes(body.AsSpan(16), (uint)rnd.Next(0, 1 << 21)); // plausible and implausible sizes
            }

            ulong unique = k.NextUnique();
            ulong node = (ulong)rnd.Next(0, 8);
            var req = Build(op, unique, node, body);
            if (rnd.Next(10) == 0)
            {
                req = req[..rnd.Next(0, req.Length)]; // truncated read
            }

            k.Dispatcher.Dispatch(req, k);
            if (req.Length >= fuse_in_header.Size && !noReply.Contains(op))
            {
                sent.Add((unique, op));
            }
        }

        foreach (var (unique, op) in sent)
        {
            SpinWait.SpinUntil(() => k.RepliesTo(unique) > 0, 2000);
            Assert.True(k.RepliesTo(unique) == 1, $"{op} {unique} answered {k.RepliesTo(unique)} times");
        }

        SpinWait.SpinUntil(() => k.Dispatcher.Pool.Outstanding == 0, 2000);
        Assert.Equal(0, k.Dispatcher.Pool.Outstanding);
    }
}
