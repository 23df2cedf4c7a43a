using System.Text;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

/// <summary>
/// `lmfs` run as a mount helper, so that `mount -t fuse.lazymodelfs META_URL /models -o …` and
/// /etc/fstab lines work (issue 18, item 11). Installed as a symbolic link to the lmfs binary:
///
/// - `/sbin/mount.fuse.lazymodelfs`: mount(8) runs `/sbin/mount.TYPE` when it exists (util-linux
///   mount(8), "External helpers"; the directories are fixed, PATH is not searched), as
///   `mount.fuse.lazymodelfs SOURCE MOUNTPOINT [-sfnvrw] [-N NS] -o OPTIONS [-t fuse.lazymodelfs]`;
/// - without it, mount(8) runs `/sbin/mount.fuse` (fuse3's mount.fuse3), which runs the program named
///   by the subtype, `lazymodelfs SOURCE MOUNTPOINT -o OPTIONS`, through /bin/sh with the default PATH
///   (so `/usr/local/bin/lazymodelfs` or `/usr/bin/lazymodelfs`); mount.fuse3 drops `_netdev`,
///   `nofail`, `auto`/`noauto`, `user`/`users` itself and adds `dev,suid` as root.
///
/// Either way the helper is lmfs recognizing its name (argv[0], from /proc/self/cmdline: the binary
/// path the runtime reports is the link's target). It turns the `-o` list into the options of
/// `lmfs mount … --background`, which returns once the mount serves or with the daemon's exit code
/// and error, as mount(8) needs of a helper. mount(8) passes `rw` when nothing says otherwise, expands
/// `user` to `noexec,nosuid,nodev` and strips `x-*` options; what it passes is accepted or refused
/// here, never silently misread (docs/operations.md, "fstab and mount -t").
/// </summary>
internal static class MountHelper
{
    /// <summary>The names lmfs answers to as a mount helper.</summary>
    public static readonly string[] Names = ["mount.fuse.lazymodelfs", "mount.lazymodelfs", "lazymodelfs"];

    /// <summary>The search path of a helper that mount(8) started without one (dash's and bash's default).</summary>
    public const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>lmfs options with a value, by their `-o` name (`cache_dir=/nvme/lmfs`); `-` and `_` are the same.</summary>
    private static readonly Dictionary<string, string> Valued = new(StringComparer.Ordinal)
    {
        ["cache_dir"] = "--cache-dir",
        ["cache_size"] = "--cache-size",
        ["free_space_ratio"] = "--free-space-ratio",
        ["buffer_size"] = "--buffer-size",
        ["max_fetches"] = "--max-fetches",
        ["demand_parts"] = "--demand-parts",
        ["readahead"] = "--readahead",
        ["readahead_kb"] = "--readahead-kb",
        ["prefetch"] = "--prefetch",
        ["passthrough"] = "--passthrough",
        ["record"] = "--record",
        ["fetch_timeout"] = "--fetch-timeout",
        ["entry_timeout"] = "--entry-timeout",
        ["threads"] = "--threads",
        ["log_file"] = "--log-file",
        ["access_key"] = "--access-key",
        ["secret_key_file"] = "--secret-key-file",
        ["redis_password_file"] = "", // read here; the password reaches the daemon through its environment
    };

    /// <summary>lmfs flags by their `-o` name.</summary>
    private static readonly Dictionary<string, string> Flags = new(StringComparer.Ordinal)
    {
        ["allow_other"] = "--allow-other",
        ["nonempty"] = "--nonempty",
        ["noexec"] = "--noexec",
        ["debug"] = "--debug",
    };

    /// <summary>
    /// Options for mount(8) and systemd, or what an lmfs mount always is: accepted, with no effect.
    /// lmfs mounts are read-only (so `rw`, which mount(8) passes by default, changes nothing), always
    /// nosuid and nodev (mount.fuse3 adds `dev,suid` as root), with default_permissions.
    /// </summary>
    private static readonly HashSet<string> Ignored = new(StringComparer.Ordinal)
    {
        "ro", "rw", "exec", "nosuid", "nodev", "suid", "dev", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group",
        "_netdev", "nofail", "async", "sync", "dirsync", "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
        "diratime", "nodiratime", "lazytime", "nolazytime", "iversion", "noiversion", "silent", "loud", "mand", "nomand", "default_permissions",
    };

    /// <summary>The helper name this process was started as, or null for a plain `lmfs`.</summary>
    public static string? InvokedAs()
    {
        try
        {
            var cmdline = File.ReadAllBytes("/proc/self/cmdline");
            int end = Array.IndexOf(cmdline, (byte)0);
            string argv0 = Encoding.UTF8.GetString(cmdline, 0, end < 0 ? cmdline.Length : end);
            string name = Path.GetFileName(argv0);
            return Names.Contains(name, StringComparer.Ordinal) ? name : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>What the helper does: `lmfs mount` arguments, or nothing to do (`-f`, mount(8)'s fake mount). Bad input throws (exit 2).</summary>
    public static IReadOnlyList<string>? Translate(IReadOnlyList<string> args, string invokedAs, Func<string, string?>? readPassword = null)
    {
        var positional = new List<string>();
        var options = new List<string>();
        bool sloppy = false, fake = false, verbose = false;
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (a is "-o" or "-t" or "-N")
            {
                if (i + 1 >= args.Count)
                {
                    throw Bad(invokedAs, $"{a} needs a value");
                }

                string v = args[++i];
                if (a == "-o")
                {
                    options.AddRange(v.Split(',', StringSplitOptions.RemoveEmptyEntries));
                }
                else if (a == "-t" && v is not ("fuse.lazymodelfs" or "lazymodelfs" or "fuse"))
                {
                    throw Bad(invokedAs, $"type '{v}' is not lazymodelfs");
                }
                else if (a == "-N")
                {
                    throw Bad(invokedAs, "-N (mounting in another namespace) is not supported", "run mount in that namespace (nsenter -m -t PID mount …)");
                }
            }
            else if (a.StartsWith("-o", StringComparison.Ordinal) && a.Length > 2)
            {
                options.AddRange(a[2..].Split(',', StringSplitOptions.RemoveEmptyEntries));
            }
            else if (a.Length > 1 && a[0] == '-' && a.Skip(1).All(c => "sfnvrwi".Contains(c, StringComparison.Ordinal)))
            {
                sloppy |= a.Contains('s', StringComparison.Ordinal);
                fake |= a.Contains('f', StringComparison.Ordinal);
                verbose |= a.Contains('v', StringComparison.Ordinal);
                // -n (no /etc/mtab), -i (no further helpers), -r / -w (ro / rw: always read-only): nothing to do.
            }
            else if (a.StartsWith('-') && a.Length > 1)
            {
                throw Bad(invokedAs, $"'{a}' is not a mount helper argument");
            }
            else
            {
                positional.Add(a);
            }
        }

        if (positional.Count != 2)
        {
            throw Bad(invokedAs, positional.Count < 2 ? "the metadata URL and the mount point are both needed" : $"too many arguments: {string.Join(' ', positional.Skip(2))}");
        }

        string source = positional[0];
        if (Redact.HasCredentials(source))
        {
            throw new LmfsException(
                $"the metadata URL {Redact.Url(source)} carries a password: /etc/fstab and mount's command line are readable by every user",
                "put the password in a file only root can read (chmod 600) and give it as -o redis_password_file=FILE, or set LMFS_REDIS_PASSWORD",
                2);
        }

        var result = new List<string> { "mount", source, positional[1], "--background" };
        if (verbose)
        {
            result.Add("--verbose");
        }

        foreach (string raw in options)
        {
            int eq = raw.IndexOf('=', StringComparison.Ordinal);
            string name = (eq < 0 ? raw : raw[..eq]).Replace('-', '_');
            string? value = eq < 0 ? null : raw[(eq + 1)..];
            if (Ignored.Contains(name) || raw.StartsWith("x-", StringComparison.Ordinal) || raw.StartsWith("comment=", StringComparison.Ordinal))
            {
                continue;
            }

            if (Flags.TryGetValue(name, out string? flag))
            {
                if (value is not null)
                {
                    throw Bad(invokedAs, $"mount option '{raw}' takes no value", $"write {name}");
                }

                result.Add(flag);
            }
            else if (Valued.TryGetValue(name, out string? option))
            {
                if (string.IsNullOrEmpty(value))
                {
                    throw Bad(invokedAs, $"mount option '{name}' needs a value", $"write {name}=VALUE");
                }

                if (name == "redis_password_file")
                {
                    string password = (readPassword ?? ReadPasswordFile)(value) ?? "";
                    Environment.SetEnvironmentVariable("LMFS_REDIS_PASSWORD", password);
                    continue;
                }

                result.Add(option);
                result.Add(value);
            }
            else if (sloppy)
            {
                // -s: mount(8)'s "tolerate sloppy mount options".
                Console.Error.WriteLine($"warning: ignoring mount option '{TerminalText.Safe(raw)}' (-s)");
            }
            else
            {
                var known = Valued.Keys.Concat(Flags.Keys).ToList();
                string? close = LazyModelFs.Cli.Usage.Closest(name, known);
                throw new LmfsException(
                    $"unknown mount option '{raw}' for lazymodelfs",
                    (close is null ? "" : $"did you mean {close}? ") + $"lmfs options: {string.Join(", ", Flags.Keys)}, {string.Join(", ", Valued.Keys.Select(k => k + "=…"))}; docs/operations.md, \"fstab and mount -t\", lists the rest",
                    2);
            }
        }

        return fake ? null : result;
    }

    /// <summary>The Redis password from <paramref name="path"/> (its first line), refusing a file other users can read or change.</summary>
    private static string ReadPasswordFile(string path) => SecretFile.Read(path, "redis_password_file");

    private static LmfsException Bad(string invokedAs, string message, string? hint = null) =>
        new($"{invokedAs}: {message}", hint ?? $"usage: {invokedAs} META_URL MOUNTPOINT [-o OPTION[,OPTION…]] (docs/operations.md, \"fstab and mount -t\")", 2);
}
