using System.Buffers;
using LazyModelFs.Meta;

namespace LazyModelFs.Read;

/// <summary>
/// Streams a file's verified bytes in order, with a window of chunk fetches running ahead. Each
/// chunk is retried here, the one retry layer of <c>lmfs cat</c> (<see cref="Storage.RetryPolicy.Bounded"/>).
/// </summary>
public static class FileReader
{
    public static async Task CopyToAsync(Volume volume, Node node, Stream output, int window = 8, CancellationToken ct = default)
    {
        var table = await volume.Meta.GetChunkTableAsync(node.Ino, volume.Settings.ChunkSize, ct).ConfigureAwait(false)
            ?? throw new Util.MetaCorruptException($"file inode {node.Ino} has no chunk table");
        if (table.PlainSize != (long)node.Size)
        {
            throw new Util.MetaCorruptException($"file inode {node.Ino}: chunk table covers {table.PlainSize} bytes, the inode says {node.Size}");
        }

        var pending = new Queue<(Task Fetch, byte[] Buffer, int Length)>();
        int next = 0;
        try
        {
            while (next < table.Count || pending.Count > 0)
            {
                while (next < table.Count && pending.Count < window)
                {
                    var e = table[next++];
                    var buf = ArrayPool<byte>.Shared.Rent(e.PlainLength);
                    pending.Enqueue((Storage.RetryPolicy.Bounded.RunAsync(t => volume.Chunks.ReadAsync(e, buf, t), ct), buf, e.PlainLength));
                }

                var (fetch, b, len) = pending.Peek();
                await fetch.ConfigureAwait(false);
                await output.WriteAsync(b.AsMemory(0, len), ct).ConfigureAwait(false);
                pending.Dequeue();
                ArrayPool<byte>.Shared.Return(b);
            }
        }
        finally
        {
            foreach (var (fetch, b, _) in pending)
            {
                try
                {
                    await fetch.ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // the first failure is already propagating
                }

                ArrayPool<byte>.Shared.Return(b);
            }
        }
    }
}
