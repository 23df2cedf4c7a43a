using Xunit;

namespace LazyModelFs.Testing;

/// <summary>A test that mounts through /dev/fuse: skipped, with the reason, where that is impossible.</summary>
public sealed class MountFactAttribute : FactAttribute
{
    public MountFactAttribute()
    {
        if (!File.Exists("/dev/fuse"))
        {
            Skip = "needs /dev/fuse (the fuse kernel module); not present here";
        }
        else if (!Environment.IsPrivilegedProcess)
        {
            Skip = "needs root (mount(2) and /sys tuning); run the tests as root, as CI does";
        }
    }
}

/// <summary>A <see cref="MountFactAttribute"/> test with cases.</summary>
public sealed class MountTheoryAttribute : TheoryAttribute
{
    public MountTheoryAttribute()
    {
        Skip = new MountFactAttribute().Skip;
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
