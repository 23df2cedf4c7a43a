using System.Runtime.InteropServices;

namespace LazyModelFs.Fuse.Abi;

// The FUSE kernel ABI, protocol 7.45 (include/uapi/linux/fuse.h, as mirrored in libfuse's
// include/fuse_kernel.h). Field for field, in declaration order; every struct is naturally aligned,
// so Sequential layout reproduces the C offsets. Sizes and offsets are proven by AbiTests, with
// golden bytes. Do not generate these from Debian 12's /usr/include/linux/fuse.h: that is 7.38.

/// <summary>fuse_in_header (all versions), 40 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_in_header
{
    public const int Size = 40;
    public uint len;
    public uint opcode;
    public ulong unique;
    public ulong nodeid;
    public uint uid;
    public uint gid;
    public uint pid;
    public ushort total_extlen;
    public ushort padding;
}

/// <summary>fuse_out_header (all versions), 16 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_out_header
{
    public const int Size = 16;
    public uint len;
    public int error;
    public ulong unique;
}

/// <summary>fuse_attr (7.9+; flags 7.32), 88 bytes. Times are i64 here as in fuser, matching stat.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_attr
{
    public const int Size = 88;
    public ulong ino;
    public ulong size;
    public ulong blocks;
    public long atime;
    public long mtime;
    public long ctime;
    public uint atimensec;
    public uint mtimensec;
    public uint ctimensec;
    public uint mode;
    public uint nlink;
    public uint uid;
    public uint gid;
    public uint rdev;
    public uint blksize;
    public uint flags;
}

/// <summary>fuse_entry_out, 128 bytes (LOOKUP, MKDIR, SYMLINK, CREATE, inside direntplus).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_entry_out
{
    public const int Size = 128;
    public ulong nodeid;
    public ulong generation;
    public ulong entry_valid;
    public ulong attr_valid;
    public uint entry_valid_nsec;
    public uint attr_valid_nsec;
    public fuse_attr attr;
}

/// <summary>fuse_attr_out, 104 bytes (GETATTR, SETATTR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_attr_out
{
    public const int Size = 104;
    public ulong attr_valid;
    public uint attr_valid_nsec;
    public uint dummy;
    public fuse_attr attr;
}

/// <summary>fuse_getattr_in (7.9), 16 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_getattr_in
{
    public const int Size = 16;
    public const uint FUSE_GETATTR_FH = 1;
    public uint getattr_flags;
    public uint dummy;
    public ulong fh;
}

/// <summary>fuse_open_in, 8 bytes (OPEN, OPENDIR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_open_in
{
    public const int Size = 8;
    public uint flags;
    public uint open_flags;
}

/// <summary>fuse_open_out (backing_id 7.40), 16 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_open_out
{
    public const int Size = 16;
    public ulong fh;
    public uint open_flags;
    public int backing_id;
}

/// <summary>fuse_create_in (7.12), 16 bytes, then name\0.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_create_in
{
    public const int Size = 16;
    public uint flags;
    public uint mode;
    public uint umask;
    public uint open_flags;
}

/// <summary>fuse_read_in (7.9), 40 bytes (READ, READDIR, READDIRPLUS).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_read_in
{
    public const int Size = 40;
    public ulong fh;
    public ulong offset;
    public uint size;
    public uint read_flags;
    public ulong lock_owner;
    public uint flags;
    public uint padding;
}

/// <summary>fuse_write_in (7.9), 40 bytes; data starts at byte 80 of the request.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_write_in
{
    public const int Size = 40;
    public ulong fh;
    public ulong offset;
    public uint size;
    public uint write_flags;
    public ulong lock_owner;
    public uint flags;
    public uint padding;
}

/// <summary>fuse_write_out, 8 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_write_out
{
    public const int Size = 8;
    public uint size;
    public uint padding;
}

/// <summary>fuse_release_in, 24 bytes (RELEASE, RELEASEDIR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_release_in
{
    public const int Size = 24;
    public ulong fh;
    public uint flags;
    public uint release_flags;
    public ulong lock_owner;
}

/// <summary>fuse_flush_in, 24 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_flush_in
{
    public const int Size = 24;
    public ulong fh;
    public uint unused;
    public uint padding;
    public ulong lock_owner;
}

/// <summary>fuse_forget_in, 8 bytes; the nodeid is in the header.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_forget_in
{
    public const int Size = 8;
    public ulong nlookup;
}

/// <summary>fuse_forget_one (7.16), 16 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_forget_one
{
    public const int Size = 16;
    public ulong nodeid;
    public ulong nlookup;
}

/// <summary>fuse_batch_forget_in (7.16), 8 bytes, then count × fuse_forget_one.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_batch_forget_in
{
    public const int Size = 8;
    public uint count;
    public uint dummy;
}

/// <summary>fuse_interrupt_in, 8 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_interrupt_in
{
    public const int Size = 8;
    public ulong unique;
}

/// <summary>fuse_getxattr_in, 8 bytes, then name\0 (GETXATTR) or nothing (LISTXATTR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_getxattr_in
{
    public const int Size = 8;
    public uint size;
    public uint padding;
}

/// <summary>fuse_getxattr_out, 8 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_getxattr_out
{
    public const int Size = 8;
    public uint size;
    public uint padding;
}

/// <summary>fuse_access_in, 8 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_access_in
{
    public const int Size = 8;
    public uint mask;
    public uint padding;
}

/// <summary>fuse_kstatfs = fuse_statfs_out, 80 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct fuse_kstatfs
{
    public const int Size = 80;
    public ulong blocks;
    public ulong bfree;
    public ulong bavail;
    public ulong files;
    public ulong ffree;
    public uint bsize;
    public uint namelen;
    public uint frsize;
    public uint padding;
    public fixed uint spare[6];
}

/// <summary>fuse_init_in (flags2 7.36), 64 bytes. Kernels before 7.36 send only the first 16.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct fuse_init_in
{
    public const int Size = 64;
    public const int CompatSize = 16;
    public uint major;
    public uint minor;
    public uint max_readahead;
    public uint flags;
    public uint flags2;
    public fixed uint unused[11];
}

/// <summary>fuse_init_out (max_stack_depth 7.40, request_timeout 7.43), 64 bytes; 24 for minor ≤ 22.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct fuse_init_out
{
    public const int Size = 64;
    public const int Compat22Size = 24;
    public uint major;
    public uint minor;
    public uint max_readahead;
    public uint flags;
    public ushort max_background;
    public ushort congestion_threshold;
    public uint max_write;
    public uint time_gran;
    public ushort max_pages;
    public ushort map_alignment;
    public uint flags2;
    public uint max_stack_depth;
    public ushort request_timeout;
    public fixed ushort unused[11];
}

/// <summary>fuse_dirent, 24 bytes, then the name (no NUL), padded to 8.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_dirent
{
    public const int Size = 24;
    public ulong ino;
    public ulong off;
    public uint namelen;
    public uint type;
}

/// <summary>fuse_direntplus, 152 bytes, then the name, padded to 8.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_direntplus
{
    public const int Size = 152;
    public fuse_entry_out entry_out;
    public fuse_dirent dirent;
}

/// <summary>fuse_setattr_in, 88 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_setattr_in
{
    public const int Size = 88;
    public uint valid;
    public uint padding;
    public ulong fh;
    public ulong size;
    public ulong lock_owner;
    public ulong atime;
    public ulong mtime;
    public ulong ctime;
    public uint atimensec;
    public uint mtimensec;
    public uint ctimensec;
    public uint mode;
    public uint unused4;
    public uint uid;
    public uint gid;
    public uint unused5;
}

/// <summary>fuse_mkdir_in, 8 bytes, then name\0.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_mkdir_in
{
    public const int Size = 8;
    public uint mode;
    public uint umask;
}

/// <summary>fuse_rename_in, 8 bytes, then old\0new\0.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_rename_in
{
    public const int Size = 8;
    public ulong newdir;
}

/// <summary>fuse_rename2_in (7.23), 16 bytes, then old\0new\0.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_rename2_in
{
    public const int Size = 16;
    public ulong newdir;
    public uint flags;
    public uint padding;
}

/// <summary>fuse_fsync_in, 16 bytes (FSYNC, FSYNCDIR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_fsync_in
{
    public const int Size = 16;
    public ulong fh;
    public uint fsync_flags;
    public uint padding;
}

/// <summary>fuse_notify_inval_inode_out, 24 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_notify_inval_inode_out
{
    public const int Size = 24;
    public ulong ino;
    public long off;
    public long len;
}

/// <summary>fuse_notify_inval_entry_out (flags 7.38), 16 bytes, then name + NUL.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_notify_inval_entry_out
{
    public const int Size = 16;
    public ulong parent;
    public uint namelen;
    public uint flags;
}

/// <summary>fuse_backing_map (7.40), 16 bytes: FUSE_DEV_IOC_BACKING_OPEN's argument.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct fuse_backing_map
{
    public const int Size = 16;
    public int fd;
    public uint flags;
    public ulong padding;
}
