using System.CommandLine;
using System.Text.Json.Nodes;
using LazyModelFs.Meta;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

internal static class ListCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var path = new Argument<string>("PATH") { Description = "Path in the volume", DefaultValueFactory = _ => "/" };
        var longFormat = new Option<bool>("--long", "-l") { Description = "Show mode, owner, size and modification time" };
        var quoting = Common.QuotingStyle();
        var json = new Option<bool>("--json") { Description = "Print a JSON array of the entries (name, path, type, size, mode, owner, times; schema in docs/operations.md)" };
        var cmd = new Command("ls", "List a directory of a volume. On a terminal, names with spaces, shell metacharacters or control\ncharacters are quoted as GNU ls quotes them ('my file', 'a'$'\\033''b'); into a pipe or file they are printed as they are.\n\nExamples:\n  lmfs ls -l sqlite:///var/lib/lmfs/meta.db /models\n  lmfs ls --json sqlite:///var/lib/lmfs/meta.db /models") { meta, path, longFormat, quoting, json };
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var (meta0, ns) = await Common.OpenNamespaceAsync(p.GetValue(meta)!, ct).ConfigureAwait(false);
            using var _ = meta0;
            string at = p.GetValue(path)!;
            var node = await ns.ResolveAsync(at, ct).ConfigureAwait(false) ?? throw Missing(at);
            if (p.GetValue(json))
            {
                // Like ls: a directory gives its entries, anything else the one entry.
                string shown = Namespace.Join(Namespace.SplitPath(at));
                var a = new JsonArray();
                if (node.Type != NodeType.Directory)
                {
                    a.Add(Entry(node, Path.GetFileName(shown), shown));
                }
                else
                {
                    foreach (var e in await meta0.ListAsync(node.Ino, ct).ConfigureAwait(false))
                    {
                        if (await meta0.GetNodeAsync(e.Ino, ct).ConfigureAwait(false) is { } child)
                        {
                            a.Add(Entry(child, e.Name, shown == "/" ? "/" + e.Name : shown + "/" + e.Name));
                        }
                    }
                }

                Json.Print(a);
                return 0;
            }

            bool l = p.GetValue(longFormat);
            var show = Common.Names(p, quoting);
            if (node.Type != NodeType.Directory)
            {
                Console.WriteLine(l ? Line(node, Path.GetFileName(at.TrimEnd('/')), show) : show(Path.GetFileName(at.TrimEnd('/'))));
                return 0;
            }

            foreach (var e in await meta0.ListAsync(node.Ino, ct).ConfigureAwait(false))
            {
                if (!l)
                {
                    Console.WriteLine(e.Type == NodeType.Directory ? show(e.Name) + "/" : show(e.Name));
                    continue;
                }

                var child = await meta0.GetNodeAsync(e.Ino, ct).ConfigureAwait(false);
                if (child is not null)
                {
                    Console.WriteLine(Line(child, e.Name, show));
                }
            }

            return 0;
        }));
        return cmd;
    }

    /// <summary>One entry of `ls --json` (docs/operations.md): names and paths exact, not escaped (JSON escapes control characters itself).</summary>
    internal static JsonObject Entry(Node n, string name, string path)
    {
        var o = new JsonObject
        {
            ["name"] = name,
            ["path"] = path,
            ["type"] = TypeName(n.Type),
            ["inode"] = n.Ino,
            ["size"] = n.Size,
            ["mode"] = Json.Mode(n.Mode),
            ["uid"] = n.Uid,
            ["gid"] = n.Gid,
        };
        Json.AddTime(o, "mtime", n.MtimeNs);
        Json.AddTime(o, "ctime", n.CtimeNs);
        o["target"] = n.Type == NodeType.Symlink ? n.SymlinkTarget : null;
        return o;
    }

    internal static string TypeName(NodeType t) => t.ToString().ToLowerInvariant();

    internal static LmfsException Missing(string path) => new($"'{path}' does not exist in the volume", "list its parent with lmfs ls", 2);

    internal static string ModeString(Node n)
    {
        char t = n.Type switch { NodeType.Directory => 'd', NodeType.Symlink => 'l', _ => '-' };
        var s = new char[10];
        s[0] = t;
        const string rwx = "rwxrwxrwx";
        for (int i = 0; i < 9; i++)
        {
            s[i + 1] = (n.Mode & (1u << (8 - i))) != 0 ? rwx[i] : '-';
        }

        return new string(s);
    }

    internal static string Time(long ns) => DateTime.UnixEpoch.AddTicks(ns / 100).ToString("yyyy-MM-dd HH:mm:ss", System.Globalization.CultureInfo.InvariantCulture);

    private static string Line(Node n, string name, Func<string, string> show) =>
        $"{ModeString(n)} {n.Uid,5} {n.Gid,5} {n.Size,14} {Time(n.MtimeNs)} {show(name)}{(n.Type == NodeType.Symlink ? " -> " + show(n.SymlinkTarget ?? "") : n.Type == NodeType.Directory ? "/" : "")}";
}
