using System.Collections.Concurrent;
using LazyModelFs.MemFs;
using LazyModelFs.Testing;
using Microsoft.Extensions.Logging;
using Xunit;

namespace LazyModelFs.Fuse.Tests;

/// <summary>Captures log lines so tests can check what the layer said.</summary>
public sealed class ListLogger : ILogger
{
    public ConcurrentQueue<string> Lines { get; } = new();

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Lines.Enqueue($"{logLevel}: {formatter(state, exception)}");

    public bool Contains(string s) => Lines.Any(l => l.Contains(s, StringComparison.Ordinal));
}

/// <summary>An in-process mount of a <see cref="MemoryFileSystem"/> on a fresh temporary directory.</summary>
public sealed class MemMount : IDisposable
{
    public MemMount(MemoryFileSystem fs, FuseMountOptions? options = null, string? path = null)
    {
        Fs = fs;
        Path = path ?? Directory.CreateTempSubdirectory("lmfs-mnt-").FullName;
        Session = FuseSession.Mount(Path, fs, options ?? new FuseMountOptions(), Log);
    }

    public MemoryFileSystem Fs { get; }

    public string Path { get; }

    public FuseSession Session { get; }

    public ListLogger Log { get; } = new();

    public string this[string relative] => System.IO.Path.Combine(Path, relative);

    public void Dispose()
    {
        Session.Unmount();
        Session.Dispose();
        try
        {
            Directory.Delete(Path);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>One shared mount for the read-only tests: a big file, a 10,000-entry directory, a symlink.</summary>
public sealed class SharedMount : IDisposable
{
    public const int BigSize = 48 << 20;

    public SharedMount()
    {
        var fs = new MemoryFileSystem();
        fs.AddFile("/hello.txt", "hello\n"u8.ToArray());
        fs.AddFile("/big.bin", Pattern.Bytes(BigSize));
        for (int i = 0; i < 10_000; i++)
        {
            fs.AddFile($"/many/entry-{i:D5}.json", System.Text.Encoding.ASCII.GetBytes($"{{\"i\":{i}}}"));
        }

        fs.AddFile("/dir/nested/deep.txt", "deep"u8.ToArray());
        fs.AddSymlink("/link", "dir/nested/deep.txt");
        Mount = new MemMount(fs);
    }

    public MemMount Mount { get; }

    public void Dispose() => Mount.Dispose();
}
