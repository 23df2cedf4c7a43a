namespace LazyModelFs.Mount.Tests;

/// <summary>Tear-down of in-process mounts made on temporary mount points.</summary>
public static class TestMounts
{
    /// <summary>Unmounts each (its session ends) and removes its mount point, which the test made.</summary>
    public static void DisposeAll(IEnumerable<LazyModelFs.Vfs.MountHost> mounts)
    {
        foreach (var m in mounts)
        {
            m.Dispose();
            try
            {
                Directory.Delete(m.MountPoint);
            }
            catch (IOException)
            {
                // still busy (a lazy unmount not finished): left in the temporary directory
            }
        }
    }
}
