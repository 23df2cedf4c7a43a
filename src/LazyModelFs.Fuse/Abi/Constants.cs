namespace LazyModelFs.Fuse.Abi;

/// <summary>Request opcodes (enum fuse_opcode, 7.45).</summary>
public enum FuseOpcode : uint
{
    LOOKUP = 1,
    FORGET = 2,
    GETATTR = 3,
    SETATTR = 4,
    READLINK = 5,
    SYMLINK = 6,
    MKNOD = 8,
    MKDIR = 9,
    UNLINK = 10,
    RMDIR = 11,
    RENAME = 12,
    LINK = 13,
    OPEN = 14,
    READ = 15,
    WRITE = 16,
    STATFS = 17,
    RELEASE = 18,
    FSYNC = 20,
    SETXATTR = 21,
    GETXATTR = 22,
    LISTXATTR = 23,
    REMOVEXATTR = 24,
    FLUSH = 25,
    INIT = 26,
    OPENDIR = 27,
    READDIR = 28,
    RELEASEDIR = 29,
    FSYNCDIR = 30,
    GETLK = 31,
    SETLK = 32,
    SETLKW = 33,
    ACCESS = 34,
    CREATE = 35,
    INTERRUPT = 36,
    BMAP = 37,
    DESTROY = 38,
    IOCTL = 39,
    POLL = 40,
    NOTIFY_REPLY = 41,
    BATCH_FORGET = 42,
    FALLOCATE = 43,
    READDIRPLUS = 44,
    RENAME2 = 45,
    LSEEK = 46,
    COPY_FILE_RANGE = 47,
    SETUPMAPPING = 48,
    REMOVEMAPPING = 49,
    SYNCFS = 50,
    TMPFILE = 51,
    STATX = 52,
    COPY_FILE_RANGE_64 = 53,
}

/// <summary>fuse_notify_code: the positive "error" of an unsolicited message.</summary>
public enum FuseNotifyCode
{
    POLL = 1,
    INVAL_INODE = 2,
    INVAL_ENTRY = 3,
    STORE = 4,
    RETRIEVE = 5,
    DELETE = 6,
    RESEND = 7,
    INC_EPOCH = 8,
    PRUNE = 9,
}

/// <summary>INIT flags, 64 bits: bits 32-63 travel in flags2 (needs FUSE_INIT_EXT).</summary>
[Flags]
public enum FuseInitFlags : ulong
{
    None = 0,
    ASYNC_READ = 1UL << 0,
    POSIX_LOCKS = 1UL << 1,
    FILE_OPS = 1UL << 2,
    ATOMIC_O_TRUNC = 1UL << 3,
    EXPORT_SUPPORT = 1UL << 4,
    BIG_WRITES = 1UL << 5,
    DONT_MASK = 1UL << 6,
    SPLICE_WRITE = 1UL << 7,
    SPLICE_MOVE = 1UL << 8,
    SPLICE_READ = 1UL << 9,
    FLOCK_LOCKS = 1UL << 10,
    HAS_IOCTL_DIR = 1UL << 11,
    AUTO_INVAL_DATA = 1UL << 12,
    DO_READDIRPLUS = 1UL << 13,
    READDIRPLUS_AUTO = 1UL << 14,
    ASYNC_DIO = 1UL << 15,
    WRITEBACK_CACHE = 1UL << 16,
    NO_OPEN_SUPPORT = 1UL << 17,
    PARALLEL_DIROPS = 1UL << 18,
    HANDLE_KILLPRIV = 1UL << 19,
    POSIX_ACL = 1UL << 20,
    ABORT_ERROR = 1UL << 21,
    MAX_PAGES = 1UL << 22,
    CACHE_SYMLINKS = 1UL << 23,
    NO_OPENDIR_SUPPORT = 1UL << 24,
    EXPLICIT_INVAL_DATA = 1UL << 25,
    MAP_ALIGNMENT = 1UL << 26,
    SUBMOUNTS = 1UL << 27,
    HANDLE_KILLPRIV_V2 = 1UL << 28,
    SETXATTR_EXT = 1UL << 29,
    INIT_EXT = 1UL << 30,
    INIT_RESERVED = 1UL << 31,
    SECURITY_CTX = 1UL << 32,
    HAS_INODE_DAX = 1UL << 33,
    CREATE_SUPP_GROUP = 1UL << 34,
    HAS_EXPIRE_ONLY = 1UL << 35,
    DIRECT_IO_ALLOW_MMAP = 1UL << 36,
    PASSTHROUGH = 1UL << 37,
    NO_EXPORT_SUPPORT = 1UL << 38,
    HAS_RESEND = 1UL << 39,
    ALLOW_IDMAP = 1UL << 40,
    OVER_IO_URING = 1UL << 41,
    REQUEST_TIMEOUT = 1UL << 42,
}

/// <summary>FOPEN_* flags of fuse_open_out.open_flags.</summary>
[Flags]
public enum FopenFlags : uint
{
    None = 0,
    DIRECT_IO = 1 << 0,
    KEEP_CACHE = 1 << 1,
    NONSEEKABLE = 1 << 2,
    CACHE_DIR = 1 << 3,
    STREAM = 1 << 4,
    NOFLUSH = 1 << 5,
    PARALLEL_DIRECT_WRITES = 1 << 6,
    PASSTHROUGH = 1 << 7,
}

public static class FuseConstants
{
    public const uint KernelVersion = 7;
    public const uint KernelMinorVersion = 45;

    /// <summary>Oldest minor we serve (go-fuse uses 7.12: BATCH_FORGET, sane INIT).</summary>
    public const uint MinKernelMinorVersion = 12;

    public const ulong RootId = 1;

    /// <summary>FUSE_INT_REQ_BIT: an INTERRUPT's unique is its target's | 1.</summary>
    public const ulong InterruptBit = 1;

    /// <summary>FUSE_UNIQUE_RESEND (bit 63), set on resent requests.</summary>
    public const ulong UniqueResend = 1UL << 63;

    /// <summary>FUSE_NAME_MAX: the kernel rejects longer names in dirents.</summary>
    public const int NameMax = 1024;

    // ioctl numbers, asm-generic encoding (x86_64, arm64); see fuse-protocol.md section 1.
    public const uint FUSE_DEV_IOC_CLONE = 0x8004E500;
    public const uint FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501;
    public const uint FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502;

    public const uint FUSE_EXPIRE_ONLY = 1;
}
