using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests;

public sealed class MaxPagesTests
{
    [Theory]
    [InlineData(64 << 10, 256)]    // small chunks: still 1 MiB READs (a READ then spans several chunks, as before)
    [InlineData(1 << 20, 256)]
    [InlineData(4 << 20, 1024)]    // the default chunk: one READ per chunk at most two chunks wide
    [InlineData(16 << 20, 4096)]
    [InlineData(64 << 20, 4096)]   // at most 16 MiB
    public void A_mount_asks_for_reads_as_large_as_a_chunk_between_1_and_16_MiB(int chunkSize, int pages) =>
        Assert.Equal(pages, MountHost.MaxPagesFor(chunkSize));
}
