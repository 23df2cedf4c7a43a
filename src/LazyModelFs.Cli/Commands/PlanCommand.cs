using System.CommandLine;
using LazyModelFs.Bench;
using LazyModelFs.Util;
using LazyModelFs.Vfs;

namespace LazyModelFs.Cli.Commands;

/// <summary>
/// `lmfs plan FILE`: a loader hands the mount the byte ranges it is about to read, in order (issue 17,
/// item 3). The file is held open while the plan is sent, so the mount has its chunk table; the mount
/// prefetches the plan's chunks in that order, ahead of the reader, in place of its own prefetch.
/// </summary>
internal static class PlanCommand
{
    public static Command Build()
    {
        var file = new Argument<string>("FILE") { Description = "A file under an lmfs mount point" };
        var ranges = new Option<string?>("--ranges") { Description = "OFFSET:LENGTH,... in bytes, in reading order (default: read from standard input, one OFFSET:LENGTH or 'OFFSET LENGTH' per line)" };
        var cmd = new Command("plan", "Tell a mount which byte ranges of a file will be read next, in order: their chunks are prefetched in that order.\nThe mount's own prefetch of the file (a recorded access profile, safetensors order) gives way to the plan.\n\nExamples:\n  lmfs plan /models/m/model.safetensors --ranges 0:1048576,734003200:268435456\n  python3 plan_from_header.py model.safetensors | lmfs plan /models/m/model.safetensors") { file, ranges };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            string path = p.GetValue(file)!;
            if (!File.Exists(path))
            {
                throw new LmfsException($"'{path}' is not a file", "give a file under an lmfs mount point", 2);
            }

            var (mp, type) = MountInfo.Find(path);
            if (type != "fuse.lazymodelfs")
            {
                throw new LmfsException($"'{path}' is not under an lmfs mount (it is on {(type.Length == 0 ? "/" : type)} at {mp})", "give a file under the directory lmfs is mounted on", 2);
            }

            var state = MountRegistry.Load(mp) ?? throw new LmfsException($"no record of the lmfs mount at {mp} (started by another user, or by an lmfs without a control socket)", "run lmfs plan as the user who mounted it (or root)", 2);
            var list = ReadPlan.Parse(p.GetValue(ranges) ?? await Console.In.ReadToEndAsync(ct).ConfigureAwait(false));
            if (list.Count == 0)
            {
                throw new LmfsException("the plan has no ranges", "give OFFSET:LENGTH ranges with --ranges or on standard input", 2);
            }

            using var held = File.OpenHandle(path); // the mount attaches the file's chunk table at its open
            ulong ino = Posix.Stat(path).Ino;
            int chunks = await MountClient.PlanAsync(state.ControlSocket, ino, list, ct).ConfigureAwait(false);
            Console.WriteLine($"planned {list.Count} ranges: {chunks} chunks of {TerminalText.Safe(path)} are prefetched in that order");
            return 0;
        }));
        return cmd;
    }
}
