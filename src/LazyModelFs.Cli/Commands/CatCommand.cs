using LazyModelFs.Read;
using System.CommandLine;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

internal static class CatCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var path = new Argument<string>("PATH") { Description = "File in the volume" };
        var creds = new Common.Credentials();
        var cmd = new Command("cat", "Write a file's bytes to standard output, fetching and verifying every chunk (SHA-256).\n\nExample:\n  lmfs cat sqlite:///var/lib/lmfs/meta.db /models/m/config.json") { meta, path };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            using var volume = await Volume.OpenAsync(p.GetValue(meta)!, creds.Read(p), ct).ConfigureAwait(false);
            string at = p.GetValue(path)!;
            var n = await volume.Namespace.ResolveAsync(at, ct).ConfigureAwait(false) ?? throw ListCommand.Missing(at);
            if (n.Type != NodeType.File)
            {
                throw new LmfsException($"'{at}' is a {n.Type.ToString().ToLowerInvariant()}, not a file", "lmfs cat reads files; use lmfs ls for directories", 2);
            }

            using var stdout = Console.OpenStandardOutput();
            await FileReader.CopyToAsync(volume, n, stdout, ct: ct).ConfigureAwait(false);
            await stdout.FlushAsync(ct).ConfigureAwait(false);
            return 0;
        }));
        return cmd;
    }
}
