using LazyModelFs.Csi.Grpc;
using LazyModelFs.Util;

namespace LazyModelFs.Csi;

/// <summary>
/// The paths a CO hands the plugin are trusted only as far as they are checked here: absolute, no
/// "." or ".." segment, under the kubelet's directory, and not passing through a symbolic link (a
/// link planted in a pod's volume directory must not make the plugin mount over, or remove,
/// something elsewhere on the host). A volume sub-path must stay inside the volume, links included.
/// </summary>
public static class CsiPaths
{
    /// <summary>Checks a staging or target path; returns it normalized (no trailing slash), under the kubelet directory's resolved path.</summary>
    public static string Check(string? path, string field, string root)
    {
        if (string.IsNullOrEmpty(path))
        {
            throw RpcException.InvalidArgument($"{field} is required");
        }

        if (path.Contains('\0', StringComparison.Ordinal) || !path.StartsWith('/'))
        {
            throw RpcException.InvalidArgument($"{field} '{path}' must be an absolute path");
        }

        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Any(p => p is "." or ".."))
        {
            throw RpcException.InvalidArgument($"{field} '{path}' must not contain '.' or '..' segments");
        }

        string normalized = "/" + string.Join('/', parts);
        string r = root.TrimEnd('/');
        // The kubelet directory itself may be a link (/var/lib/kubelet -> /data/kubelet); the kernel's
        // mount table names the resolved path, so paths are returned under it, and compared in it.
        string real = Fuse.FuseMount.ResolveMountPoint(r).TrimEnd('/');
        if (normalized.StartsWith(r + "/", StringComparison.Ordinal))
        {
            normalized = real + normalized[r.Length..];
        }
        else if (!normalized.StartsWith(real + "/", StringComparison.Ordinal))
        {
            throw RpcException.InvalidArgument($"{field} '{path}' is outside the kubelet directory {root}");
        }

        r = real;

        // Every component below the root that exists must be a real directory (or the final entry), never a link.
        string at = r;
        foreach (var p in normalized[(r.Length + 1)..].Split('/'))
        {
            at += "/" + p;
            var info = new FileInfo(at);
            if (info.LinkTarget is not null)
            {
                throw RpcException.InvalidArgument($"{field} '{path}' passes through the symbolic link {at}");
            }

            if (!info.Exists && !Directory.Exists(at))
            {
                break; // the rest does not exist yet (the plugin may create the last component)
            }
        }

        return normalized;
    }

    /// <summary>
    /// Resolves a volume sub-path (volume context "subPath") under a staging mount: relative to the
    /// volume's root, no "." or ".." segment, and after resolving links still inside the volume.
    /// Returns the host path to bind; NotFound when it does not exist.
    /// </summary>
    public static string SubPath(string staging, string? subPath)
    {
        if (string.IsNullOrEmpty(subPath) || subPath.Trim('/').Length == 0)
        {
            return staging;
        }

        if (subPath.Contains('\0', StringComparison.Ordinal))
        {
            throw RpcException.InvalidArgument("subPath must not contain NUL");
        }

        var parts = subPath.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Any(p => p is "." or ".."))
        {
            throw RpcException.InvalidArgument($"subPath '{subPath}' must not contain '.' or '..' segments");
        }

        string joined = staging + "/" + string.Join('/', parts);
        string? real = Posix.TryRealPath(joined);
        if (real is null)
        {
            throw RpcException.NotFound($"subPath '{subPath}' does not exist in the volume");
        }

        if (real != staging && !real.StartsWith(staging + "/", StringComparison.Ordinal))
        {
            throw RpcException.InvalidArgument($"subPath '{subPath}' leads out of the volume (to {real}) through a symbolic link");
        }

        if (!Directory.Exists(real))
        {
            throw RpcException.InvalidArgument($"subPath '{subPath}' is not a directory; publish a directory of the volume");
        }

        return real;
    }
}
