using System.Globalization;
using System.Text;

namespace LazyModelFs.Testing;

/// <summary>Deterministic test files: random bytes, and safetensors files with a real header.</summary>
public static class TestData
{
    public static byte[] Random(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>A safetensors file: the 8-byte header length, a JSON header of <paramref name="tensors"/> BF16 tensors, then about <paramref name="dataBytes"/> of tensor data.</summary>
    public static byte[] Safetensors(int dataBytes, int tensors = 8, int seed = 2)
    {
        var header = new StringBuilder("{\"__metadata__\":{\"format\":\"pt\"}");
        int per = dataBytes / tensors / 2 * 2;
        for (int i = 0; i < tensors; i++)
        {
            header.Append(CultureInfo.InvariantCulture, $",\"layer.{i}.weight\":{{\"dtype\":\"BF16\",\"shape\":[{per / 2}],\"data_offsets\":[{i * per},{(i + 1) * per}]}}");
        }

        var json = Encoding.UTF8.GetBytes(header.Append('}').ToString());
        return [.. BitConverter.GetBytes((ulong)json.Length), .. json, .. Random(tensors * per, seed)];
    }
}
