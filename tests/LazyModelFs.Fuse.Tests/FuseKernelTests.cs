using LazyModelFs.Fuse.Abi;
using LazyModelFs.MemFs;
using LazyModelFs.Testing;
using Xunit;

namespace LazyModelFs.Fuse.Tests;

public sealed class FuseKernelTests : IDisposable
{
    private readonly TempDir _dir = new("lmfs-fusekernel");

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData("1024\n", 1024)]
    [InlineData("65535", 65535)]
    [InlineData("0\n", 256)]
    [InlineData("lots\n", 256)]
    [InlineData("", 256)]
    public void The_max_pages_limit_is_read_from_the_sysctl_and_falls_back_to_the_kernel_default(string text, int expected)
    {
        File.WriteAllText(_dir["limit"], text);
        Assert.Equal(expected, FuseKernel.MaxPagesLimit(_dir["limit"]));
    }

    [Fact]
    public void A_kernel_without_the_sysctl_has_the_fixed_limit_of_256_pages() =>
        Assert.Equal(256, FuseKernel.MaxPagesLimit(_dir["absent"]));

    [Fact]
    public void The_dispatcher_asks_for_the_pages_it_is_given_up_to_the_kernels_limit_and_sizes_its_reply_buffers_for_them()
    {
        var k = new FakeKernel(new MemoryFileSystem(), new FuseProtocolOptions { MaxPages = 1024 });
        var o = k.Init().As<fuse_init_out>();
        int granted = Math.Min(1024, FuseKernel.MaxPagesLimit()); // never more than this kernel allows: the buffers are sized for what it can send
        Assert.Equal(((ushort)granted, 1u << 20), (o.max_pages, o.max_write));
        Assert.Equal(Math.Max(1 << 20, granted * 4096), k.Dispatcher.Pool.BufferSize);
        Assert.Equal((1 << 20) + 4096, k.Dispatcher.ReadBufferSize); // /dev/fuse reads are sized by max_write, not by READs
    }
}
