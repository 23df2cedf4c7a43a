using System.CommandLine;
using LazyModelFs.Meta;

namespace LazyModelFs.Cli.Commands;

internal static class RemoveCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var path = new Argument<string>("PATH") { Description = "Path in the volume" };
        var recursive = new Option<bool>("--recursive", "-r") { Description = "Remove a directory and everything in it" };
        var cmd = new Command("rm", "Remove a file, symlink or directory from a volume. Chunk references are dropped;\nobjects no longer referenced are deleted later by lmfs gc.\n\nExample:\n  lmfs rm -r sqlite:///var/lib/lmfs/meta.db /models/old-model") { meta, path, recursive };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var (m, ns) = await Common.OpenNamespaceAsync(p.GetValue(meta)!, ct).ConfigureAwait(false);
            using var _ = m;
            var (files, dirs) = await ns.RemoveAsync(p.GetValue(path)!, p.GetValue(recursive), ct).ConfigureAwait(false);
            Console.WriteLine($"removed {files} file(s) or symlink(s), {dirs} director{(dirs == 1 ? "y" : "ies")}");
            return 0;
        }));
        return cmd;
    }
}
