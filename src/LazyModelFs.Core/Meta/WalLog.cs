using System.Buffers.Binary;

namespace LazyModelFs.Meta;

/// <summary>
/// Reads just enough of an SQLite write-ahead log to know whether it holds a committed transaction,
/// without SQLite (which would need its -shm index to read it). https://sqlite.org/fileformat2.html,
/// section 4.1 and 4.3:
/// <code>
///   header (32 bytes, big-endian): magic 0x377f0682|0x377f0683, version, page size, checkpoint seq,
///                                  salt-1, salt-2, checksum-1, checksum-2 (of the first 24 bytes)
///   frame  (24 bytes + page):      page number, db size after commit (0 unless a commit frame),
///                                  salt-1, salt-2, checksum-1, checksum-2 (cumulative: header's,
///                                  then the frame header's first 8 bytes, then the page)
/// </code>
/// A frame is valid when its salts equal the header's and its cumulative checksum matches; the log
/// ends at the first frame that is not. Only valid frames up to the last valid commit frame are ever
/// read by SQLite; later ones (a writer killed mid-transaction) are ignored.
/// </summary>
public static class WalLog
{
    private const int HeaderSize = 32;
    private const int FrameHeaderSize = 24;

    /// <summary>True when the log at <paramref name="path"/> holds at least one valid commit frame; false for a missing, empty or invalid log.</summary>
    public static bool HasCommittedFrames(string path)
    {
        FileStream f;
        try
        {
#pragma warning disable CA2000 // disposed by the using below; the try only turns "missing" into false
            f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1 << 16);
#pragma warning restore CA2000
        }
        catch (FileNotFoundException)
        {
            return false;
        }

        using (f)
        {
            var header = new byte[HeaderSize];
            if (f.ReadAtLeast(header, HeaderSize, throwOnEndOfStream: false) < HeaderSize)
            {
                return false;
            }

            uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
            int pageSize = (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            if (magic is not (0x377f0682 or 0x377f0683) || pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) != 0)
            {
                return false;
            }

            bool bigEndian = (magic & 1) != 0;
            uint s0 = 0, s1 = 0;
            Checksum(header.AsSpan(0, 24), bigEndian, ref s0, ref s1);
            if (s0 != BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24)) || s1 != BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(28)))
            {
                return false;
            }

            var frame = new byte[FrameHeaderSize + pageSize];
            while (f.ReadAtLeast(frame, frame.Length, throwOnEndOfStream: false) == frame.Length)
            {
                if (!frame.AsSpan(8, 8).SequenceEqual(header.AsSpan(16, 8)))
                {
                    return false; // salts of an older log generation: the log ends here
                }

                Checksum(frame.AsSpan(0, 8), bigEndian, ref s0, ref s1);
                Checksum(frame.AsSpan(FrameHeaderSize), bigEndian, ref s0, ref s1);
                if (s0 != BinaryPrimitives.ReadUInt32BigEndian(frame.AsSpan(16)) || s1 != BinaryPrimitives.ReadUInt32BigEndian(frame.AsSpan(20)))
                {
                    return false;
                }

                if (BinaryPrimitives.ReadUInt32BigEndian(frame.AsSpan(4)) != 0)
                {
                    return true; // a commit frame
                }
            }

            return false;
        }
    }

    // fileformat2 4.3: s0 += x[i] + s1; s1 += x[i+1] + s0, over 32-bit words in the log's byte order.
    private static void Checksum(ReadOnlySpan<byte> data, bool bigEndian, ref uint s0, ref uint s1)
    {
        for (int i = 0; i + 8 <= data.Length; i += 8)
        {
            uint a = bigEndian ? BinaryPrimitives.ReadUInt32BigEndian(data[i..]) : BinaryPrimitives.ReadUInt32LittleEndian(data[i..]);
            uint b = bigEndian ? BinaryPrimitives.ReadUInt32BigEndian(data[(i + 4)..]) : BinaryPrimitives.ReadUInt32LittleEndian(data[(i + 4)..]);
            unchecked
            {
                s0 += a + s1;
                s1 += b + s0;
            }
        }
    }
}
