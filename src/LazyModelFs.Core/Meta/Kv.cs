namespace LazyModelFs.Meta;

/// <summary>One transaction over an ordered byte-key store.</summary>
public interface IKvTxn
{
    byte[]? Get(byte[] key);

    void Set(byte[] key, byte[] value);

    void Delete(byte[] key);

    /// <summary>Pairs whose key starts with <paramref name="prefix"/>, in ascending key order.</summary>
    List<KeyValuePair<byte[], byte[]>> Scan(byte[] prefix, int limit = int.MaxValue);
}

/// <summary>
/// An ordered key-value store with serializable transactions: what <see cref="KvMetaStore"/> needs
/// from an engine. Implemented by <see cref="SqliteKv"/> and <see cref="MemoryKv"/>.
/// </summary>
public interface IKvStore : IDisposable
{
    string Describe { get; }

    T Read<T>(Func<IKvTxn, T> body);

    /// <summary>Runs <paramref name="body"/> atomically: all of its writes land, or none (an exception rolls back).</summary>
    T Write<T>(Func<IKvTxn, T> body);
}

/// <summary>Byte-wise ordering, the order SQLite uses for BLOB keys (memcmp, then length).</summary>
public sealed class ByteKeyComparer : IComparer<byte[]>
{
    public static ByteKeyComparer Instance { get; } = new();

    public int Compare(byte[]? x, byte[]? y) => x.AsSpan().SequenceCompareTo(y);
}

/// <summary>The in-memory twin, for unit tests: a sorted dictionary, one lock, an undo log per write.</summary>
public sealed class MemoryKv : IKvStore
{
    private readonly SortedDictionary<byte[], byte[]> _data = new(ByteKeyComparer.Instance);
    private readonly Lock _lock = new();

    public string Describe => "memory://";

    public T Read<T>(Func<IKvTxn, T> body)
    {
        lock (_lock)
        {
            return body(new Txn(this, null));
        }
    }

    public T Write<T>(Func<IKvTxn, T> body)
    {
        lock (_lock)
        {
            var undo = new List<KeyValuePair<byte[], byte[]?>>();
            try
            {
                return body(new Txn(this, undo));
            }
            catch
            {
                for (int i = undo.Count - 1; i >= 0; i--)
                {
                    if (undo[i].Value is null)
                    {
                        _data.Remove(undo[i].Key);
                    }
                    else
                    {
                        _data[undo[i].Key] = undo[i].Value!;
                    }
                }

                throw;
            }
        }
    }

    public void Dispose()
    {
    }

    private sealed class Txn(MemoryKv kv, List<KeyValuePair<byte[], byte[]?>>? undo) : IKvTxn
    {
        public byte[]? Get(byte[] key) => kv._data.TryGetValue(key, out var v) ? v : null;

        public void Set(byte[] key, byte[] value)
        {
            Remember(key);
            kv._data[key.ToArray()] = value.ToArray();
        }

        public void Delete(byte[] key)
        {
            Remember(key);
            kv._data.Remove(key);
        }

        public List<KeyValuePair<byte[], byte[]>> Scan(byte[] prefix, int limit = int.MaxValue)
        {
            // SortedDictionary has no range seek; the twin is for small unit-test data sets.
            var result = new List<KeyValuePair<byte[], byte[]>>();
            bool seen = false;
            foreach (var kvp in kv._data)
            {
                if (kvp.Key.AsSpan().StartsWith(prefix))
                {
                    seen = true;
                    if (result.Count >= limit)
                    {
                        break;
                    }

                    result.Add(kvp);
                }
                else if (seen)
                {
                    break;
                }
            }

            return result;
        }

        private void Remember(byte[] key)
        {
            if (undo is null)
            {
                throw new InvalidOperationException("write inside a read transaction");
            }

            undo.Add(new(key.ToArray(), kv._data.TryGetValue(key, out var old) ? old : null));
        }
    }
}
