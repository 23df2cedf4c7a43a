using System.Buffers.Binary;
using System.Text.Json;

namespace LazyModelFs.Read;

/// <summary>
/// The safetensors layout: an 8-byte little-endian header length N, N bytes of JSON
/// (<c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}</c>),
/// then the tensor data, offsets relative to byte 8 + N.
/// </summary>
public static class SafetensorsHeader
{
    /// <summary>Headers larger than this are not safetensors files we can plan for (the format caps it at 100 MB).</summary>
    public const long MaxHeader = 100_000_000;

    /// <summary>The header length N from the first 8 bytes, or null when they cannot be a safetensors header.</summary>
    public static long? HeaderLength(ReadOnlySpan<byte> first8, long fileSize)
    {
        if (first8.Length < 8)
        {
            return null;
        }

        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(first8);
        return n is > 1 and <= MaxHeader && 8 + (long)n <= fileSize ? (long)n : null;
    }

    /// <summary>Tensor byte ranges (absolute file offsets), sorted by start; null when the JSON is not a safetensors header.</summary>
    public static List<(long Begin, long End)>? TensorRanges(ReadOnlySpan<byte> json, long fileSize)
    {
        long dataStart = 8 + json.Length;
        var ranges = new List<(long, long)>();
        try
        {
            var reader = new Utf8JsonReader(json);
            using var doc = JsonDocument.ParseValue(ref reader);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                return null;
            }

            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name == "__metadata__")
                {
                    continue;
                }

                if (!p.Value.TryGetProperty("data_offsets", out var off) || off.GetArrayLength() != 2)
                {
                    return null;
                }

                long b = dataStart + off[0].GetInt64();
                long e = dataStart + off[1].GetInt64();
                if (b < dataStart || e < b || e > fileSize)
                {
                    return null;
                }

                ranges.Add((b, e));
            }
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException or FormatException)
        {
            return null;
        }

        ranges.Sort();
        return ranges;
    }
}
