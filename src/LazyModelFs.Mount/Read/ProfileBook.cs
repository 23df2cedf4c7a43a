using System.Text.Json.Nodes;
using LazyModelFs.Chunks;
using LazyModelFs.Meta;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;

namespace LazyModelFs.Read;

/// <summary>
/// The mount's access profiles (issue 17): finds a file's profile in the volume's metadata at its first
/// open, and stores what a load recorded (<see cref="OpenFileReader"/> records; this class talks to the
/// metadata and counts). One per mount. A profile only orders prefetch: a missing, damaged or unwritable
/// one costs speed, never a READ. Writes run in the background; a metadata engine that refuses writes
/// (a read-only SQLite file, a read-only Redis user) turns recording off for the mount with one log line.
/// </summary>
internal sealed class ProfileBook(IMetaStore meta, bool record, ILogger log)
{
    /// <summary>A recording whose order agrees less than this with the profile that was replayed replaces it (<see cref="AccessProfile.Agreement"/>).</summary>
    public const double KeepAgreement = 0.75;

    private volatile bool _writable = true;
    private int _pendingWrites;
    private long _lookups, _found, _replays, _recorded, _replaced, _kept, _errors, _planned;
    private long _prefetchIssuedBytes, _prefetchUsedBytes, _prefetchHits;

    /// <summary>Whether loads are recorded (<c>--record</c>, and the metadata still takes writes).</summary>
    public bool Records => record && _writable;

    /// <summary>Profile writes still running (lmfs bench waits for none before it measures again).</summary>
    public int PendingWrites => Volatile.Read(ref _pendingWrites);

    /// <summary>
    /// The profile to replay for <paramref name="table"/> opened by <paramref name="process"/>: that
    /// process's own, else the most recently recorded one; null when there is none that decodes.
    /// Never throws: a failed lookup is logged and answers null.
    /// </summary>
    public async Task<AccessProfile?> FindAsync(ChunkTable table, string process, ulong ino)
    {
        Interlocked.Increment(ref _lookups);
        try
        {
            var all = await meta.GetProfilesAsync(table.ContentKey).ConfigureAwait(false);
            var found = AccessProfile.Choose(all, table.Count, process, (name, why) =>
            {
                Interlocked.Increment(ref _errors);
                log.LogWarning("profile: the access profile of inode {Ino} for '{Process}' is ignored: {Why}", ino, TerminalText.Safe(name), why);
            });
            if (found is not null)
            {
                Interlocked.Increment(ref _found);
            }

            return found;
        }
        catch (Exception ex)
        {
            Interlocked.Increment(ref _errors);
            log.LogWarning("profile: looking up the access profile of inode {Ino} failed ({Message}); prefetching without one", ino, ex.Message);
            return null;
        }
    }

    /// <summary>
    /// Stores what <paramref name="r"/> recorded so far, in the background, when it grew since its last
    /// flush and the load did not follow the profile found at its open: with no profile, it is recorded;
    /// with one it agrees with (<see cref="KeepAgreement"/>), nothing is written; with one it does not
    /// agree with, it replaces that process's profile from then on. Counted in <see cref="PendingWrites"/>
    /// from the call, so a caller that waits for none waits for this decision too.
    /// </summary>
    public void Flush(AccessRecording r, ChunkTable table, ulong ino)
    {
        if (!Records || table.Count == 0)
        {
            return;
        }

        int[] touched;
        Interlocked.Increment(ref _pendingWrites);
        lock (r)
        {
            if (r.Count <= r.Flushed || r.Dropped)
            {
                Interlocked.Decrement(ref _pendingWrites);
                return;
            }

            touched = r.Snapshot();
            r.Flushed = touched.Length;

            // One store at a time per load, in snapshot order: a shorter snapshot never lands after a longer one.
            r.Stores = r.Stores.ContinueWith(_ => RunAsync(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).Unwrap();
        }

        async Task RunAsync()
        {
            try
            {
                var found = r.Lookup is { } lookup ? await lookup.ConfigureAwait(false) : null; // FindAsync never throws
                int misses = 0;
                bool replacing = false;
                lock (r)
                {
                    if (r.Dropped)
                    {
                        return; // its file's profiles were removed since (lmfs bench): this load's must not come back
                    }

                    if (found is not null && !r.Replacing)
                    {
                        if (found.Agreement(touched) < KeepAgreement)
                        {
                            r.Replacing = true; // from now on this load's recording stands in its place
                        }
                        else if (found.Stable)
                        {
                            if (!r.Kept)
                            {
                                r.Kept = true;
                                Interlocked.Increment(ref _kept);
                            }

                            return;
                        }

                        // else: a profile not replayed (its loads kept changing order) that this load followed after all: stored again, stable
                    }

                    if (r.Replacing && found is not null)
                    {
                        replacing = true;
                        misses = found.Misses + 1;
                    }
                }

                await WriteAsync(table, r.Opener.Length > 0 ? r.Opener : r.Process ?? "", touched, misses, replacing, ino).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                Interlocked.Increment(ref _errors);
                log.LogWarning("profile: storing the access profile of inode {Ino} failed: {Message}", ino, ex.Message);
            }
            finally
            {
                Interlocked.Decrement(ref _pendingWrites);
            }
        }
    }

    private async Task WriteAsync(ChunkTable table, string process, int[] order, int misses, bool replacing, ulong ino)
    {
        try
        {
            var profile = new AccessProfile(process, DateTimeOffset.UtcNow, table.Count, order, misses);
            var bytes = profile.Encode();
            await meta.PutProfileAsync(table.ContentKey, profile.Process, bytes).ConfigureAwait(false);
            Interlocked.Increment(ref replacing ? ref _replaced : ref _recorded);
            log.LogDebug("profile: inode {Ino}: {What} the access profile of '{Process}' ({Chunks} of {Count} chunks, {Bytes} bytes)", ino, replacing ? "replaced" : "recorded", TerminalText.Safe(process), order.Length, table.Count, bytes.Length);
        }
        catch (Exception ex) when (ex is LmfsException or IOException or TimeoutException or InvalidOperationException)
        {
            Interlocked.Increment(ref _errors);
            if (IsReadOnly(ex))
            {
                if (_writable)
                {
                    _writable = false;
                    log.LogInformation("profile: the metadata takes no writes from this mount ({Message}); access profiles are replayed but not recorded", ex.Message);
                }
            }
            else
            {
                log.LogWarning("profile: storing the access profile of inode {Ino} failed: {Message}", ino, ex.Message);
            }
        }
    }

    private static bool IsReadOnly(Exception ex)
    {
        for (var e = ex; e is not null; e = e.InnerException)
        {
            // A read-only SQLite file (SqliteKv's own refusal, or SQLite's), a Redis user without write rights. Not Redis's
            // READONLY: a replica answering during a failover is a passing state, not this mount's lot.
            if (e.Message.Contains("is read-only", StringComparison.Ordinal) || e.Message.Contains("readonly database", StringComparison.OrdinalIgnoreCase)
                || e.Message.Contains("NOPERM", StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Removes the file's profiles from the metadata (the control socket's <c>profile INO forget</c>, for lmfs bench).</summary>
    public Task<int> DeleteAsync(ChunkTable table) => meta.DeleteProfilesAsync(table.ContentKey);

    public void CountReplay() => Interlocked.Increment(ref _replays);

    public void CountPlan() => Interlocked.Increment(ref _planned);

    public void CountPrefetch(int bytes) => Interlocked.Add(ref _prefetchIssuedBytes, bytes);

    /// <summary>A READ touched, for the first time, a chunk a prefetch had been started for.</summary>
    public void CountPrefetchHit(int bytes)
    {
        Interlocked.Increment(ref _prefetchHits);
        Interlocked.Add(ref _prefetchUsedBytes, bytes);
    }

    public void AddStats(JsonObject o)
    {
        o["profileRecording"] = Records;
        o["profileLookups"] = Interlocked.Read(ref _lookups);
        o["profilesFound"] = Interlocked.Read(ref _found);
        o["profileReplays"] = Interlocked.Read(ref _replays);
        o["profilePlans"] = Interlocked.Read(ref _planned);
        o["profilesRecorded"] = Interlocked.Read(ref _recorded);
        o["profilesReplaced"] = Interlocked.Read(ref _replaced);
        o["profilesKept"] = Interlocked.Read(ref _kept);
        o["profileErrors"] = Interlocked.Read(ref _errors);
        o["profileWritesPending"] = (long)PendingWrites;
        o["prefetchIssuedBytes"] = Interlocked.Read(ref _prefetchIssuedBytes);
        o["prefetchUsedBytes"] = Interlocked.Read(ref _prefetchUsedBytes);
        o["prefetchHits"] = Interlocked.Read(ref _prefetchHits);
    }
}
