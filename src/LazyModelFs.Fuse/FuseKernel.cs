using System.Globalization;

namespace LazyModelFs.Fuse;

/// <summary>What the running kernel lets a FUSE server ask for.</summary>
public static class FuseKernel
{
    /// <summary>Where Linux 6.13 and later publish the ceiling on max_pages (root may raise it, up to 65535).</summary>
    public const string MaxPagesLimitPath = "/proc/sys/fs/fuse/max_pages_limit";

    /// <summary>The kernel's FUSE_DEFAULT_MAX_PAGES_LIMIT, and the fixed ceiling before Linux 6.13.</summary>
    public const int DefaultMaxPagesLimit = 256;

    /// <summary>
    /// The kernel's ceiling on a READ, in 4 KiB pages: fs.fuse.max_pages_limit, or 256 where the
    /// kernel does not have that setting (or it cannot be read).
    /// </summary>
    public static int MaxPagesLimit(string path = MaxPagesLimitPath)
    {
        try
        {
            return int.TryParse(File.ReadAllText(path).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : DefaultMaxPagesLimit;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return DefaultMaxPagesLimit;
        }
    }
}
