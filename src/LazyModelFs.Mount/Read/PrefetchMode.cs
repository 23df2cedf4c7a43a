namespace LazyModelFs.Read;

/// <summary>What <see cref="OpenFileReader"/> fetches beyond what READs touch (<c>lmfs mount --prefetch</c>).</summary>
public enum PrefetchMode
{
    /// <summary>Fetch only what READs touch.</summary>
    None,

    /// <summary>Readahead that grows while a reader stays sequential.</summary>
    Sequential,

    /// <summary>Sequential, plus the whole file fetched in the background at its first open.</summary>
    WholeFile,

    /// <summary>Sequential, plus for *.safetensors: the header first, then tensor data in file order.</summary>
    Safetensors,

    /// <summary>
    /// The default: the file's recorded access profile replayed when the volume has one (issue 17),
    /// else what <see cref="Safetensors"/> does.
    /// </summary>
    Auto,
}
