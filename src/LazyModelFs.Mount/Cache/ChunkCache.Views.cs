using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using LazyModelFs.Chunks;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace LazyModelFs.Cache;

/// <summary>
/// Whole-file views for passthrough (<see cref="DiskCache"/>, DiskCache.Views.cs): once every chunk
/// of a file is in the disk tier, its view is built in the background, one file at a time, so the
/// next open can hand the file to the kernel.
/// </summary>
public sealed partial class ChunkCache
{
    private readonly Lock _viewLock = new();
    private Task _viewTail = Task.CompletedTask; // the last build queued: builds run one after another
    private readonly ConcurrentDictionary<ChunkId, Task<bool>> _viewBuilds = new();
    private int _viewBuildsRunning;

    /// <summary>Whether this cache can hold views (it has a disk tier).</summary>
    public bool HasViews => _disk is not null;

    /// <summary>The file's view opened for reading, or null (none, or not trusted). The caller owns the handle.</summary>
    public SafeFileHandle? OpenView(ChunkTable table) => _disk?.OpenView(table);

    /// <summary>
    /// Builds the file's view in the background if it has none and every chunk is on disk (after the
    /// disk writes under way for its chunks end). The task says whether the view exists when it is done;
    /// a build already queued for the same bytes is shared.
    /// </summary>
    public Task<bool> QueueViewBuild(ChunkTable table)
    {
        if (_disk is not { } disk || table.Count == 0 || _shutdown.IsCancellationRequested)
        {
            return Task.FromResult(false);
        }

        var key = DiskCache.ViewKey(table);
        if (_viewBuilds.TryGetValue(key, out var running))
        {
            return running;
        }

        var tcs = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_viewBuilds.TryAdd(key, tcs.Task))
        {
            return _viewBuilds.TryGetValue(key, out running) ? running : Task.FromResult(false);
        }

        Task previous;
        lock (_viewLock)
        {
            previous = _viewTail;
            _viewTail = tcs.Task;
        }

        _ = Task.Run(async () =>
        {
            bool built = false;
            Interlocked.Increment(ref _viewBuildsRunning);
            try
            {
                await WaitForDiskWritesAsync(table).ConfigureAwait(false);
                if (disk.HasView(table))
                {
                    built = true;
                }
                else if (disk.HoldsAll(table) || await FillSkippedAsync(table, disk).ConfigureAwait(false))
                {
                    await previous.WaitAsync(_shutdown.Token).ConfigureAwait(false); // never faults
                    built = disk.BuildView(table, _shutdown.Token);
                }
            }
            catch (OperationCanceledException)
            {
                // the mount is going away; the next one builds it
            }
            catch (Exception ex)
            {
                _log.LogWarning("cache: building a view failed: {Message}", ex.Message);
            }
            finally
            {
                Interlocked.Decrement(ref _viewBuildsRunning);
                _viewBuilds.TryRemove(key, out _);
                tcs.TrySetResult(built);
            }
        });
        return tcs.Task;
    }

    /// <summary>Learns where the file's view, if it has one, holds its chunks (their chunk files are gone once it is built).</summary>
    public bool LocateInView(ChunkTable table) => _disk?.Locate(table) == true;

    /// <summary>Deletes the file's view (the bench's cold phase, the control socket's forget).</summary>
    public bool RemoveView(ChunkTable table) => _disk?.RemoveView(table) == true;

    private async Task WaitForDiskWritesAsync(ChunkTable table)
    {
        var pending = new List<Task>();
        lock (_lock)
        {
            foreach (var e in table.Entries)
            {
                if (_writes.TryGetValue(e.Id, out var w))
                {
                    pending.Add(w.Task);
                }
            }
        }

        await Task.WhenAll(pending).WaitAsync(_shutdown.Token).ConfigureAwait(false);
    }

    private void AddViewStats(JsonObject o)
    {
        if (_disk is { } d)
        {
            o["views"] = d.ViewCount;
            o["viewBytes"] = d.ViewBytes;
            o["viewOpens"] = d.ViewOpens;
            o["viewsBuilt"] = d.ViewsBuilt;
            o["viewBuildsRunning"] = Volatile.Read(ref _viewBuildsRunning);
        }
    }
}
