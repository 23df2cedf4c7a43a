using LazyModelFs.Util;

namespace LazyModelFs.Storage;

/// <summary>
/// The one retry policy for reads from an object store (issue 12, item 2: one retry layer, not two).
///
/// Each path retries in exactly one place, where its bound is known: the chunk reader (mount and
/// warmup) until the READ's deadline, <see cref="Read.FileReader"/> (<c>lmfs cat</c>), the store
/// probes of <c>lmfs bench</c> and <see cref="S3ObjectStore.CheckReadableAsync"/> for
/// <see cref="Bounded"/>'s number of attempts. Below them a store makes one attempt per call and
/// says what went wrong: S3's ranged GET (<see cref="S3RangedGet"/>) throws
/// <see cref="TransientException"/>, <see cref="StoreRefusedException"/> or
/// <see cref="ObjectNotFoundException"/>, and keeps only its per-attempt timeout. The SDK's own calls
/// (PUT, HEAD, LIST, DELETE) keep the SDK's standard retry mode, which is their one layer.
///
/// The policy is applied by callers, not by a retrying <see cref="IObjectStore"/> decorator: a
/// retrying store handed to the chunk reader would nest the two loops again, silently.
///
/// What is asked again: everything except what asking again will not change (<see cref="IsPermanent"/>):
/// a missing object, a refusal (credentials, bucket, another 4xx), a chunk-table row that names
/// other bytes; and wrong bytes after <see cref="CorruptAttempts"/> tries (a body cut short by a
/// flaky server mends, a damaged object does not). Waits: 100 ms doubling up to 5 s, each with
/// ±20 % jitter, like the AWS SDK's standard mode (so many readers of one failed store spread out).
/// </summary>
public sealed record RetryPolicy
{
    /// <summary>Tries of a chunk whose bytes fail verification before it is reported damaged.</summary>
    public const int CorruptAttempts = 3;

    private static readonly TimeSpan FirstWait = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(5);

    /// <summary>Five attempts (what the S3 GET used to make by itself, and the SDK makes for its calls): for callers without a deadline.</summary>
    public static RetryPolicy Bounded { get; } = new() { MaxAttempts = 5 };

    /// <summary>Attempts until <paramref name="budget"/> has passed (the chunk reader's fetch deadline).</summary>
    public static RetryPolicy Until(TimeSpan budget) => new() { Budget = budget };

    public int MaxAttempts { get; init; } = int.MaxValue;

    /// <summary>How long all attempts and waits together may take (null: no limit but <see cref="MaxAttempts"/>).</summary>
    public TimeSpan? Budget { get; init; }

    /// <summary>Whether asking again cannot change the answer, after <paramref name="attempts"/> tries.</summary>
    public static bool IsPermanent(Exception ex, int attempts) =>
        ex is ObjectNotFoundException or StoreRefusedException or ChunkRowMismatchException
        || (ex is ChunkCorruptException && attempts >= CorruptAttempts);

    /// <summary>
    /// Runs <paramref name="attempt"/> until it succeeds, fails permanently or the bound is reached.
    /// A permanent error, or the last one when the attempts are used up, is thrown as it is;
    /// cancellation of <paramref name="ct"/> as an <see cref="OperationCanceledException"/>. When the
    /// budget runs out (during an attempt, or because the next wait would pass it), the exception
    /// <paramref name="onBudget"/> builds from the attempts made and the last error (null: none
    /// finished) is thrown. <paramref name="onRetry"/> hears of each retry: attempt, error, wait.
    /// </summary>
    public async Task<T> RunAsync<T>(
        Func<CancellationToken, Task<T>> attempt,
        CancellationToken ct,
        Func<int, Exception?, Exception>? onBudget = null,
        Action<int, Exception, TimeSpan>? onRetry = null)
    {
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (Budget is { } budget)
        {
            if (budget <= TimeSpan.Zero)
            {
                throw OutOfBudget(0, null);
            }

            deadline.CancelAfter(budget);
        }

        var wait = FirstWait;
        for (int n = 1; ; n++)
        {
            Exception error;
            try
            {
                return await attempt(deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                throw;
            }
            catch (OperationCanceledException ex) when (deadline.IsCancellationRequested)
            {
                throw OutOfBudget(n, null, ex);
            }
            catch (Exception ex) when (IsPermanent(ex, n) || n >= MaxAttempts)
            {
                throw;
            }
            catch (Exception ex)
            {
                error = ex;
            }

            var delay = wait * (0.8 + (Random.Shared.NextDouble() * 0.4));
            if (Budget is { } b && System.Diagnostics.Stopwatch.GetElapsedTime(started) + delay >= b)
            {
                throw OutOfBudget(n, error);
            }

            onRetry?.Invoke(n, error, delay);
            try
            {
                await Task.Delay(delay, deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw OutOfBudget(n, error);
            }

            wait = TimeSpan.FromTicks(Math.Min(wait.Ticks * 2, MaxWait.Ticks));
        }

        Exception OutOfBudget(int attempts, Exception? last, Exception? cancelled = null) =>
            onBudget?.Invoke(attempts, last)
            ?? new TransientException($"the object store did not answer within {Budget!.Value.TotalSeconds:0.#} s ({attempts} attempts){(last is null ? "" : ": " + last.Message)}", "check that the object store is reachable", last ?? cancelled);
    }

    /// <inheritdoc cref="RunAsync{T}(Func{CancellationToken, Task{T}}, CancellationToken, Func{int, Exception?, Exception}?, Action{int, Exception, TimeSpan}?)"/>
    public Task RunAsync(Func<CancellationToken, Task> attempt, CancellationToken ct) =>
        RunAsync(
            async token =>
            {
                await attempt(token).ConfigureAwait(false);
                return true;
            },
            ct);
}
