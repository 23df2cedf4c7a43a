using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Storage;
using LazyModelFs.Util;

namespace LazyModelFs.Gc;

public sealed record GcOptions
{
    /// <summary>Count what would be deleted and fixed; change nothing.</summary>
    public bool DryRun { get; init; }

    /// <summary>Objects written more recently than this are kept even when nothing references them.</summary>
    public TimeSpan Grace { get; init; } = DefaultGrace;

    /// <summary>Deletes at once.</summary>
    public int Concurrency { get; init; } = 16;

    /// <summary>The clock the grace period is measured on (tests move it).</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>
    /// 24 hours: longer than any import runs, so the chunks an import stores before it commits their
    /// file are never taken for garbage (docs/operations.md, "lmfs gc").
    /// </summary>
    public static TimeSpan DefaultGrace { get; } = TimeSpan.FromHours(24);
}

/// <summary>Live counters, read by the progress display while gc runs.</summary>
public sealed class GcProgress
{
    internal long _listed;
    internal long _deleted;

    public long Listed => Interlocked.Read(ref _listed);

    public long ToDelete { get; internal set; }

    public long Deleted => Interlocked.Read(ref _deleted);
}

public sealed record GcSummary(
    bool DryRun,
    TimeSpan Grace,
    long Tables,
    long ReferencedObjects,
    long ReferencedBytes,
    long UnreferencedObjects,
    long UnreferencedBytes,
    long FreedObjects,
    long FreedBytes,
    long YoungObjects,
    long YoungBytes,
    long Rereferenced,
    long OtherObjects,
    long MissingObjects,
    long RefcountsFixed,
    bool RefcountsChecked,
    long FailedDeletes = 0)
{
    /// <summary>Contents no file has any more whose access profiles (issue 17) were removed (in a dry run: would be).</summary>
    public long ProfilesRemoved { get; init; }
}

/// <summary>
/// lmfs gc: deletes chunk objects that no chunk table references, and recounts reference counts.
///
/// An object is garbage when no chunk table references it. The tables, not the counts, decide:
/// the counts are a cache of the tables (each create and remove moves both in one transaction) and
/// this is where a drifted count is found and set right. Three things make deleting safe while
/// imports run, since an import stores (or finds by HEAD) a file's chunk objects first and commits
/// the table that references them afterwards:
///
/// 1. The grace period (24 h): an object written since then is kept. An import's fresh objects
///    are therefore never candidates, and a gc never races the normal import path at all.
/// 2. A claim in the metadata before each delete (<see cref="IMetaStore.ClaimUnreferencedChunkAsync"/>):
///    taken atomically only while the chunk's count is 0, so an import that committed a reference
///    first wins; and while the claim holds, a create that references the chunk is refused
///    (<see cref="MetaResult.ChunkClaimed"/>) and retried by the importer after the delete.
/// 3. The importer's check after each commit (Importer): it HEADs the file's objects and stores
///    again any that are gone. That covers an old object an import found by HEAD (deduplicated)
///    and whose delete landed before the import's commit: the claim was gone by then, the check
///    is not. Between that commit and the object being stored again (milliseconds) a reader of the
///    new file can see "object missing": the one window left, for an object both older than the
///    grace period and unreferenced when the import found it.
///
/// A claim that is never released (gc killed) expires after <see cref="IMetaStore.ChunkClaimLifetime"/>;
/// gc never sends a delete on a claim older than half of it. Keys under chunks/ that are not chunk
/// object names, and everything outside chunks/, are never deleted: gc did not write them.
/// </summary>
public sealed class GarbageCollector(Volume volume, GcOptions options)
{
    private const string Prefix = "chunks/";

    public GcProgress Progress { get; } = new();

    public async Task<GcSummary> RunAsync(CancellationToken ct = default)
    {
        var (scan, fixedCounts, consistent) = await RecountAsync(ct).ConfigureAwait(false);
        var referenced = scan.Referenced;
        DateTimeOffset cutoff = options.Time.GetUtcNow() - options.Grace;

        long refObjects = 0, refBytes = 0, young = 0, youngBytes = 0, other = 0;
        var seen = new HashSet<ChunkId>();
        var candidates = new List<(ChunkId Id, long Size)>();
        await foreach (var o in volume.Store.ListAsync(Prefix, ct).ConfigureAwait(false))
        {
            Interlocked.Increment(ref Progress._listed);
            if (!TryParseKey(o.Key, out var id))
            {
                other++;
                continue;
            }

            seen.Add(id);
            if (referenced.ContainsKey(id))
            {
                refObjects++;
                refBytes += o.Size;
            }
            else if (o.LastModified > cutoff)
            {
                young++;
                youngBytes += o.Size;
            }
            else
            {
                candidates.Add((id, o.Size));
            }
        }

        Progress.ToDelete = candidates.Count;
        long freed = 0, freedBytes = 0, rereferenced = 0, failed = 0;
        string owner = Guid.NewGuid().ToString("N"); // this run's claims: another gc at once can neither take nor end them
        if (options.DryRun)
        {
            freed = candidates.Count;
            freedBytes = candidates.Sum(c => c.Size);
        }
        else if (consistent)
        {
            await Parallel.ForEachAsync(candidates, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Concurrency), CancellationToken = ct }, async (c, t) =>
            {
                switch (await DeleteAsync(c.Id, owner, t).ConfigureAwait(false))
                {
                    case Deleted.Yes:
                        Interlocked.Increment(ref freed);
                        Interlocked.Add(ref freedBytes, c.Size);
                        break;
                    case Deleted.Referenced:
                        Interlocked.Increment(ref rereferenced);
                        break;
                    default:
                        Interlocked.Increment(ref failed);
                        break;
                }

                Interlocked.Increment(ref Progress._deleted);
            }).ConfigureAwait(false);
        }

        // Without a consistent scan (the volume changed during every try), nothing is deleted: a
        // count that had drifted low could let a claim through for a chunk a table references.

        // Access profiles of contents no table has: only hints, so a profile of a file committed after
        // the scan may go too (its next load records it again); never one of a content the scan saw.
        long profiles = 0;
        if (consistent)
        {
            foreach (var key in await volume.Meta.ListProfiledAsync(ct).ConfigureAwait(false))
            {
                if (!scan.ContentKeys.Contains(key))
                {
                    profiles++;
                    if (!options.DryRun)
                    {
                        await volume.Meta.DeleteProfilesAsync(key, ct).ConfigureAwait(false);
                    }
                }
            }
        }

        return new GcSummary(
            options.DryRun,
            options.Grace,
            scan.Tables,
            refObjects,
            refBytes,
            young + candidates.Count,
            youngBytes + candidates.Sum(c => c.Size),
            freed,
            freedBytes,
            young,
            youngBytes,
            rereferenced,
            other,
            referenced.Keys.Count(id => !seen.Contains(id)),
            fixedCounts,
            consistent,
            failed)
        {
            ProfilesRemoved = profiles,
        };
    }

    /// <summary>
    /// Scans the tables and counts; where a count differs from the tables, sets it, under the epoch of
    /// a consistent scan. A volume that keeps changing gets up to five tries; then the counts are left
    /// alone (deleting stays safe: it decides from the tables and claims under the counts).
    /// </summary>
    private async Task<(ReferenceScan Scan, long Fixed, bool Consistent)> RecountAsync(CancellationToken ct)
    {
        ReferenceScan scan = null!;
        for (int attempt = 0; attempt < 5; attempt++)
        {
            scan = await volume.Meta.ScanReferencesAsync(volume.Settings.ChunkSize, ct).ConfigureAwait(false);
            if (scan.Undecodable.Count > 0)
            {
                var (ino, problem) = scan.Undecodable[0];
                throw new LmfsException(
                    $"the chunk table of inode {ino} does not decode ({problem}){(scan.Undecodable.Count > 1 ? $", and {scan.Undecodable.Count - 1} more" : "")}; gc deletes nothing while a table cannot be read, since it may reference any object",
                    "run lmfs fsck META_URL to name the damaged files; restore the metadata or remove and import them again, then run gc again",
                    3);
            }

            if (!scan.Consistent)
            {
                await Task.Delay(100 * (attempt + 1), ct).ConfigureAwait(false);
                continue;
            }

            var drift = new List<KeyValuePair<ChunkId, long>>();
            foreach (var (id, n) in scan.Referenced)
            {
                if (scan.Stored.GetValueOrDefault(id) != n)
                {
                    drift.Add(new(id, n));
                }
            }

            foreach (var (id, n) in scan.Stored)
            {
                if (n != 0 && !scan.Referenced.ContainsKey(id))
                {
                    drift.Add(new(id, 0));
                }
            }

            if (options.DryRun || drift.Count == 0 || await volume.Meta.SetChunkRefCountsAsync(scan.Epoch, drift, ct).ConfigureAwait(false))
            {
                return (scan, drift.Count, true);
            }
        }

        return (scan, 0, false);
    }

    private enum Deleted
    {
        Yes,
        Referenced,
        Failed,
    }

    /// <summary>
    /// Claim, delete, release. Referenced: the chunk is referenced again (an import committed it since
    /// the scan) or another gc holds it. Failed: the store refused or did not answer in time; the claim
    /// is then kept until it expires, since a delete that timed out on our side may still land, and a
    /// released claim would let an import commit (and store the object again) before it does.
    /// </summary>
    private async Task<Deleted> DeleteAsync(ChunkId id, string owner, CancellationToken ct)
    {
        var claimedAt = options.Time.GetTimestamp();
        if (!await volume.Meta.ClaimUnreferencedChunkAsync(id, owner, ct).ConfigureAwait(false))
        {
            return Deleted.Referenced;
        }

        // Claimed and deleted within half the claim's life: a quarter to get here, a quarter for the
        // delete with its retries. A process paused past that leaves the object for the next run.
        var quarter = IMetaStore.ChunkClaimLifetime / 4;
        if (options.Time.GetElapsedTime(claimedAt) > quarter)
        {
            await volume.Meta.ReleaseChunkClaimAsync(id, owner, CancellationToken.None).ConfigureAwait(false);
            return Deleted.Referenced;
        }

        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(quarter);
        try
        {
            await volume.Store.DeleteAsync(id.ObjectKey(), deadline.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is LmfsException or OperationCanceledException or IOException or UnauthorizedAccessException)
        {
            return Deleted.Failed; // the claim stays until it expires (see above)
        }

        await volume.Meta.ReleaseChunkClaimAsync(id, owner, CancellationToken.None).ConfigureAwait(false);
        return Deleted.Yes;
    }

    /// <summary>chunks/ab/cd/abcd… with 64 lowercase hex digits, as <see cref="ChunkId.ObjectKey"/> writes it; nothing else is gc's.</summary>
    internal static bool TryParseKey(string key, out ChunkId id)
    {
        id = default;
        if (key.Length != Prefix.Length + 6 + 64 || !key.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return false;
        }

        string hex = key[(Prefix.Length + 6)..];
        if (!hex.All(c => char.IsAsciiDigit(c) || c is >= 'a' and <= 'f'))
        {
            return false;
        }

        id = ChunkId.FromHex(hex);
        return id.ObjectKey() == key;
    }
}
