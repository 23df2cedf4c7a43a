using System.Diagnostics;

namespace LazyModelFs.Testing;

public sealed record BytesResult(int ExitCode, byte[] Stdout, string Stderr);

public sealed record RunResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the built `lmfs` (lmfs.dll beside the test assembly) as a separate process, as a user would.</summary>
public static class LmfsRunner
{
    public static string Dll { get; } = Path.Combine(AppContext.BaseDirectory, "lmfs.dll");

    /// <param name="program">Another program to run instead of the built lmfs.dll (a published `lmfs` binary, `dotnet publish`), with the same environment rules.</param>
    public static RunResult Run(IEnumerable<string> args, IDictionary<string, string?>? env = null, TimeSpan? timeout = null, byte[]? stdin = null, string? cwd = null, string? program = null)
    {
        var psi = Prepare(args, env, program);
        if (cwd is not null)
        {
            psi.WorkingDirectory = cwd;
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (stdin is not null)
        {
            p.StandardInput.BaseStream.Write(stdin);
        }

        p.StandardInput.Close();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"lmfs {string.Join(' ', args)} did not finish in time");
        }

        return new RunResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static RunResult Run(params string[] args) => Run((IEnumerable<string>)args);

    /// <summary>
    /// Runs lmfs under a wrapper command that ends by exec'ing its arguments: another user
    /// (<see cref="AsUser"/>), a private mount namespace (unshare), or both.
    /// </summary>
    public static RunResult RunWrapped(IEnumerable<string> wrapper, IEnumerable<string> args, IDictionary<string, string?>? env = null, TimeSpan? timeout = null)
    {
        var w = wrapper.ToList();
        var psi = Prepare(args, env);
        var inner = psi.ArgumentList.ToList();
        psi.FileName = w[0];
        psi.ArgumentList.Clear();
        foreach (var a in w.Skip(1).Append("dotnet").Concat(inner))
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Close();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{string.Join(' ', w)} lmfs {string.Join(' ', args)} did not finish in time");
        }

        return new RunResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>A wrapper for <see cref="RunWrapped"/>: the command runs as uid and gid <paramref name="uid"/>, no supplementary groups (setpriv, util-linux).</summary>
    public static string[] AsUser(int uid) => ["setpriv", $"--reuid={uid}", $"--regid={uid}", "--clear-groups"];

    /// <summary>Like <see cref="Run(IEnumerable{string}, IDictionary{string, string}?, TimeSpan?, byte[]?)"/>, keeping stdout as bytes (for `lmfs cat`).</summary>
    public static BytesResult RunBytes(IEnumerable<string> args, IDictionary<string, string?>? env = null, string? program = null)
    {
        var psi = Prepare(args, env, program);
        using var p = Process.Start(psi)!;
        using var ms = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(ms);
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Close();
        if (!p.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"lmfs {string.Join(' ', args)} did not finish in time");
        }

        copy.Wait();
        return new BytesResult(p.ExitCode, ms.ToArray(), stderr.Result);
    }

    /// <summary>Runs `lmfs` as another uid (and the same gid, no supplementary groups), through setpriv.</summary>
    public static RunResult RunAs(int uid, params string[] args)
    {
        var psi = Prepare(args, new Dictionary<string, string?> { ["HOME"] = "/tmp" });
        foreach (var a in new[] { $"--reuid={uid}", $"--regid={uid}", "--clear-groups", psi.FileName }.Reverse())
        {
            psi.ArgumentList.Insert(0, a);
        }

        psi.FileName = "setpriv";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Close();
        if (!p.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"lmfs {string.Join(' ', args)} as uid {uid} did not finish in time");
        }

        return new RunResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    private static ProcessStartInfo Prepare(IEnumerable<string> args, IDictionary<string, string?>? env, string? program = null)
    {
        var psi = new ProcessStartInfo(program ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (program is null)
        {
            psi.ArgumentList.Add(Dll);
        }

        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        // Keep the developer's AWS setup out of the tests.
        foreach (var k in new[] { "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_REGION", "LMFS_REDIS_PASSWORD", "REDIS_PASSWORD" })
        {
            psi.Environment.Remove(k);
        }

        psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
        foreach (var (k, v) in env ?? new Dictionary<string, string?>())
        {
            psi.Environment[k] = v;
        }

        return psi;
    }

    /// <summary>S3rver's credentials in the environment, as users pass them.</summary>
    public static Dictionary<string, string?> S3Env() => new()
    {
        ["AWS_ACCESS_KEY_ID"] = S3rverServer.AccessKey,
        ["AWS_SECRET_ACCESS_KEY"] = S3rverServer.SecretKey,
    };
}

/// <summary>Runs a system command (mount, chown, kill, ls…), asserts that it succeeded, and returns its output.</summary>
public static class Proc
{
    public static string Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Xunit.Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)} exited {p.ExitCode}: {stderr.Result}");
        return output;
    }

    /// <summary>Runs a command as another uid/gid (setpriv, util-linux), from a separate process; its exit code and its stdout then stderr.</summary>
    public static (int Code, string Output) As(int uid, string file, params string[] args)
    {
        var psi = new ProcessStartInfo("setpriv") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { $"--reuid={uid}", $"--regid={uid}", "--clear-groups", file }.Concat(args))
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + err.Result);
    }
}
