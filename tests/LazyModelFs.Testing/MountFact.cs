using Xunit;

namespace LazyModelFs.Testing;

/// <summary>A test that mounts through /dev/fuse: skipped, with the reason, where that is impossible.</summary>
public sealed class MountFactAttribute : FactAttribute
{
    public MountFactAttribute()
    {
        Skip = WhyNot;
    }

    /// <summary>Why a mount test cannot run here; null when it can.</summary>
    internal static string? WhyNot =>
        !File.Exists("/dev/fuse") ? "needs /dev/fuse (the fuse kernel module); not present here"
        : !Environment.IsPrivilegedProcess ? "needs root (mount(2) and /sys tuning); run the tests as root, as CI does"
        : null;
}

/// <summary>A <see cref="MountFactAttribute"/> test with data rows: skipped, with the reason, where mounting is impossible.</summary>
public sealed class MountTheoryAttribute : TheoryAttribute
{
    public MountTheoryAttribute()
    {
        Skip = MountFactAttribute.WhyNot;
    }
}

/// <summary>A test that needs root (to run commands as another uid, or to bind-mount): skipped, with the reason, otherwise.</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute()
    {
        if (!Environment.IsPrivilegedProcess)
        {
            Skip = "needs root (commands as another uid, bind mounts); run the tests as root, as CI does";
        }
    }
}
