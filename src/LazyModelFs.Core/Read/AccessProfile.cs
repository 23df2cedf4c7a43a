using System.Buffers.Binary;
using System.Text;

namespace LazyModelFs.Read;

/// <summary>
/// The order in which a loader first touched a file's chunks, recorded on one mount and replayed as
/// prefetch on every later cold open (issue 17). Stored in the volume's metadata under the file's
/// content key (<see cref="Chunks.ChunkTable.ContentKey"/>) and the loader's process name, so the
/// same bytes imported twice share one profile and two loaders that read differently keep one each.
///
/// A profile is only a hint: it chooses what is fetched early, never what a READ answers. Decoding
/// therefore checks everything (bounds, duplicates, sizes) and a profile that fails is ignored.
///
/// Encoding (version 1, little-endian; docs/data-format.md):
/// <code>
///   0   4  magic "LMAP"
///   4   1  version (1)
///   5   1  n: bytes of the process name (0 to 15, the kernel's comm)
///   6   n  process name, UTF-8
///   6+n 8  recorded at: unix ms, i64
///   +8  4  chunks of the file when recorded, u32
///   +4  1  misses: loads in a row, before this one, that did not follow the profile then stored (0 to 255)
///   +1  .. runs of consecutive chunk indices, in touch order: varint count, then per run
///          zigzag varint (start − end of the previous run), varint length (≥ 1)
/// </code>
/// A sequential reader's profile is one run (a few bytes); a shuffled safetensors load is one run
/// per tensor that spans chunks.
/// </summary>
public sealed class AccessProfile
{
    public const int MaxProcessBytes = 15;

    /// <summary>Profiles per file at most (one per loader process name); a put beyond replaces one of the others.</summary>
    public const int MaxPerFile = 8;

    /// <summary>Chunks a profile may name (a 64 TiB file of 4 MiB chunks).</summary>
    public const int MaxChunks = 1 << 24;

    private static ReadOnlySpan<byte> Magic => "LMAP"u8;

    public AccessProfile(string process, DateTimeOffset recorded, int chunkCount, IReadOnlyList<int> order, int misses = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(misses);
        Misses = Math.Min(misses, byte.MaxValue);
        ArgumentOutOfRangeException.ThrowIfNegative(chunkCount);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(chunkCount, MaxChunks);
        Process = TrimProcess(process);
        Recorded = recorded;
        ChunkCount = chunkCount;
        var seen = new bool[chunkCount];
        foreach (int i in order)
        {
            if ((uint)i >= (uint)chunkCount || seen[i])
            {
                throw new ArgumentException($"chunk index {i} is outside 0..{chunkCount - 1} or repeated", nameof(order));
            }

            seen[i] = true;
        }

        Order = [.. order];
    }

    /// <summary>The loader's process name (the kernel's comm of the process that opened the file), "" when unknown.</summary>
    public string Process { get; }

    public DateTimeOffset Recorded { get; }

    /// <summary>Chunks of the file the profile was recorded on (its table's row count).</summary>
    public int ChunkCount { get; }

    /// <summary>Chunk indices in the order they were first touched; each at most once.</summary>
    public IReadOnlyList<int> Order { get; }

    /// <summary>
    /// How many loads in a row, before the one recorded here, did not follow the profile stored then
    /// (0: the previous profile was kept, or there was none). A file whose loads never repeat their
    /// order (random access) reaches <see cref="UnstableMisses"/> and is not replayed.
    /// </summary>
    public int Misses { get; }

    /// <summary>From this many misses in a row a profile is not replayed: its file's loads do not repeat their order.</summary>
    public const int UnstableMisses = 2;

    /// <summary>Whether a replay of this profile is likely to be followed (fewer than <see cref="UnstableMisses"/> misses in a row).</summary>
    public bool Stable => Misses < UnstableMisses;

    /// <summary>Cut to 15 bytes of UTF-8 without splitting a character, as the kernel's comm is.</summary>
    public static string TrimProcess(string name)
    {
        name = name.Trim();
        while (Encoding.UTF8.GetByteCount(name) > MaxProcessBytes)
        {
            name = name[..^1];
        }

        return name;
    }

    public byte[] Encode()
    {
        var name = Encoding.UTF8.GetBytes(Process);
        var runs = Runs();
        var buf = new List<byte>(24 + name.Length + (runs.Count * 4));
        buf.AddRange(Magic);
        buf.Add(1);
        buf.Add((byte)name.Length);
        buf.AddRange(name);
        Span<byte> fixedPart = stackalloc byte[13];
        BinaryPrimitives.WriteInt64LittleEndian(fixedPart, Recorded.ToUnixTimeMilliseconds());
        BinaryPrimitives.WriteUInt32LittleEndian(fixedPart[8..], (uint)ChunkCount);
        fixedPart[12] = (byte)Misses;
        buf.AddRange(fixedPart);
        WriteVarint(buf, (ulong)runs.Count);
        long prevEnd = 0;
        foreach (var (start, len) in runs)
        {
            long delta = start - prevEnd;
            WriteVarint(buf, (ulong)((delta << 1) ^ (delta >> 63)));
            WriteVarint(buf, (ulong)len);
            prevEnd = start + len;
        }

        return [.. buf];
    }

    private List<(int Start, int Length)> Runs()
    {
        var runs = new List<(int, int)>();
        int i = 0;
        while (i < Order.Count)
        {
            int start = Order[i], len = 1;
            while (i + len < Order.Count && Order[i + len] == start + len)
            {
                len++;
            }

            runs.Add((start, len));
            i += len;
        }

        return runs;
    }

    /// <summary>
    /// The profile, or null with <paramref name="why"/> when the bytes are not a valid profile of this
    /// version for a file of <paramref name="chunks"/> chunks (the work is bounded by that file, whatever the bytes say).
    /// </summary>
    public static AccessProfile? TryDecode(ReadOnlySpan<byte> b, int chunks, out string? why)
    {
        why = null;
        try
        {
            if (b.Length < 6 || !b[..4].SequenceEqual(Magic))
            {
                why = "not an access profile (no LMAP magic)";
                return null;
            }

            if (b[4] != 1)
            {
                why = $"access profile version {b[4]} (this lmfs reads version 1)";
                return null;
            }

            int n = b[5];
            if (n > MaxProcessBytes || b.Length < 6 + n + 13)
            {
                why = "access profile header is truncated or its process name too long";
                return null;
            }

            string process = Encoding.UTF8.GetString(b.Slice(6, n));
            int at = 6 + n;
            long ms = BinaryPrimitives.ReadInt64LittleEndian(b[at..]);
            uint count = BinaryPrimitives.ReadUInt32LittleEndian(b[(at + 8)..]);
            int misses = b[at + 12];
            at += 13;
            if (count > MaxChunks || ms < 0 || ms > DateTimeOffset.MaxValue.ToUnixTimeMilliseconds())
            {
                why = "access profile names an impossible chunk count or time";
                return null;
            }

            if (count != chunks)
            {
                why = $"access profile was recorded on {count} chunks; the file has {chunks}";
                return null;
            }

            ulong runs = ReadVarint(b, ref at);
            if (runs > count)
            {
                why = "access profile has more runs than chunks";
                return null;
            }

            var order = new List<int>();
            long prevEnd = 0;
            for (ulong r = 0; r < runs; r++)
            {
                ulong z = ReadVarint(b, ref at);
                long delta = (long)(z >> 1) ^ -(long)(z & 1);
                ulong len = ReadVarint(b, ref at);
                long start = prevEnd + delta;
                if (len == 0 || start < 0 || len > count || start + (long)len > count || order.Count + (long)len > count)
                {
                    why = "access profile has a run outside the file's chunks";
                    return null;
                }

                for (long k = 0; k < (long)len; k++)
                {
                    order.Add((int)(start + k));
                }

                prevEnd = start + (long)len;
            }

            if (at != b.Length)
            {
                why = "access profile has trailing bytes";
                return null;
            }

            return new AccessProfile(process, DateTimeOffset.FromUnixTimeMilliseconds(ms), (int)count, order, misses);
        }
        catch (Exception ex) when (ex is ArgumentException or IndexOutOfRangeException or FormatException)
        {
            why = "access profile is damaged: " + ex.Message;
            return null;
        }
    }

    /// <summary>
    /// The profile to replay from a file's stored ones (<c>IMetaStore.GetProfilesAsync</c>): that of
    /// <paramref name="process"/> when it decodes, else the most recently recorded one that does; null
    /// when none does. Each one that does not decode is passed to <paramref name="rejected"/> (name, why).
    /// </summary>
    public static AccessProfile? Choose(IReadOnlyDictionary<string, byte[]> stored, int chunks, string? process, Action<string, string>? rejected = null)
    {
        AccessProfile? mine = null, newest = null;
        foreach (var (name, bytes) in stored)
        {
            if (TryDecode(bytes, chunks, out var why) is not { } p)
            {
                rejected?.Invoke(name, why ?? "");
                continue;
            }

            if (name == process)
            {
                mine = p;
            }

            if (newest is null || p.Recorded > newest.Recorded)
            {
                newest = p;
            }
        }

        return mine ?? newest;
    }

    /// <summary>
    /// How well <paramref name="touched"/> (a later load's first-touch order) follows this profile, 0 to 1:
    /// the longest run of touches that came in the profile's order (a longest increasing subsequence of
    /// their places in it), over all touches. A touch of a chunk the profile lacks counts against it.
    /// A loader that kept its order scores near 1; a reversed or reshuffled one near 0.
    /// </summary>
    public double Agreement(IReadOnlyList<int> touched)
    {
        if (touched.Count == 0)
        {
            return 1;
        }

        var place = new Dictionary<int, int>(Order.Count);
        for (int p = 0; p < Order.Count; p++)
        {
            place[Order[p]] = p;
        }

        var tails = new List<int>(); // patience sorting: tails[k] = smallest last place of an increasing run of k+1
        foreach (int c in touched)
        {
            if (!place.TryGetValue(c, out int p))
            {
                continue;
            }

            int lo = tails.BinarySearch(p);
            lo = lo < 0 ? ~lo : lo;
            if (lo == tails.Count)
            {
                tails.Add(p);
            }
            else
            {
                tails[lo] = p;
            }
        }

        return (double)tails.Count / touched.Count;
    }

    private static void WriteVarint(List<byte> buf, ulong v)
    {
        while (v >= 0x80)
        {
            buf.Add((byte)(v | 0x80));
            v >>= 7;
        }

        buf.Add((byte)v);
    }

    private static ulong ReadVarint(ReadOnlySpan<byte> b, ref int at)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (at >= b.Length)
            {
                throw new FormatException("a number runs past the end");
            }

            byte x = b[at++];
            v |= (ulong)(x & 0x7F) << shift;
            if (x < 0x80)
            {
                return v;
            }
        }

        throw new FormatException("a number is longer than 64 bits");
    }
}
