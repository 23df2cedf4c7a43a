using System.Globalization;
using LazyModelFs.Fuse;
using LazyModelFs.MemFs;
using Microsoft.Extensions.Logging;

// memfs MOUNTPOINT [--file-mib N] [--threads N] [--fusermount] [--zero-copy] [--debug]
// Mounts an in-memory filesystem with /data.bin (N MiB of deterministic bytes) and /hello.txt,
// prints "ready" once mounted, and serves until unmounted or signalled.
if (args.Length < 1)
{
    Console.Error.WriteLine("usage: memfs MOUNTPOINT [--file-mib N] [--threads N] [--fusermount] [--debug]");
    return 2;
}

int Opt(string name, int dflt) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : dflt;
int mib = Opt("--file-mib", 64);
var fs = new MemoryFileSystem { ZeroCopy = args.Contains("--zero-copy") };
fs.AddFile("/hello.txt", "hello from memfs\n"u8.ToArray());
fs.AddFile("/data.bin", Pattern.Bytes((long)mib << 20));

using var loggerFactory = LoggerFactory.Create(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(args.Contains("--debug") ? LogLevel.Debug : LogLevel.Warning));
var options = new FuseMountOptions { UseFusermount = args.Contains("--fusermount"), Threads = Opt("--threads", new FuseMountOptions().Threads), FsName = "memfs" };
FuseSession session;
try
{
    session = FuseSession.Mount(args[0], fs, options, loggerFactory.CreateLogger("memfs"));
}
catch (FuseMountException e)
{
    Console.Error.WriteLine($"error: {e.Message}\nhint: {e.Hint}");
    return 1;
}

var signals = session.UnmountOnSignals();
Console.WriteLine("ready");
Console.Out.Flush();
session.Completion.Wait();
session.Dispose();
GC.KeepAlive(signals);
return 0;

namespace LazyModelFs.MemFs
{
    /// <summary>Deterministic, position-dependent bytes, so any range can be checked without a copy.</summary>
    public static class Pattern
    {
        public static byte At(long offset) => (byte)((offset * 2654435761L) >> 13);

        public static byte[] Bytes(long length)
        {
            var b = GC.AllocateUninitializedArray<byte>(checked((int)length));
            for (long i = 0; i < length; i++)
            {
                b[i] = At(i);
            }

            return b;
        }
    }
}
