using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using LazyModelFs.Fuse.Abi;
using Xunit;

namespace LazyModelFs.Fuse.Tests;

/// <summary>Every ABI struct's size and key offsets against fuse.h 7.45 (gcc x86_64), plus golden bytes.</summary>
public class AbiTests
{
    public static TheoryData<Type, int, int> Sizes => new()
    {
        { typeof(fuse_in_header), 40, fuse_in_header.Size },
        { typeof(fuse_out_header), 16, fuse_out_header.Size },
        { typeof(fuse_attr), 88, fuse_attr.Size },
        { typeof(fuse_entry_out), 128, fuse_entry_out.Size },
        { typeof(fuse_attr_out), 104, fuse_attr_out.Size },
        { typeof(fuse_getattr_in), 16, fuse_getattr_in.Size },
        { typeof(fuse_open_in), 8, fuse_open_in.Size },
        { typeof(fuse_open_out), 16, fuse_open_out.Size },
        { typeof(fuse_create_in), 16, fuse_create_in.Size },
        { typeof(fuse_read_in), 40, fuse_read_in.Size },
        { typeof(fuse_write_in), 40, fuse_write_in.Size },
        { typeof(fuse_write_out), 8, fuse_write_out.Size },
        { typeof(fuse_release_in), 24, fuse_release_in.Size },
        { typeof(fuse_flush_in), 24, fuse_flush_in.Size },
        { typeof(fuse_forget_in), 8, fuse_forget_in.Size },
        { typeof(fuse_forget_one), 16, fuse_forget_one.Size },
        { typeof(fuse_batch_forget_in), 8, fuse_batch_forget_in.Size },
        { typeof(fuse_interrupt_in), 8, fuse_interrupt_in.Size },
        { typeof(fuse_getxattr_in), 8, fuse_getxattr_in.Size },
        { typeof(fuse_getxattr_out), 8, fuse_getxattr_out.Size },
        { typeof(fuse_access_in), 8, fuse_access_in.Size },
        { typeof(fuse_kstatfs), 80, fuse_kstatfs.Size },
        { typeof(fuse_init_in), 64, fuse_init_in.Size },
        { typeof(fuse_init_out), 64, fuse_init_out.Size },
        { typeof(fuse_dirent), 24, fuse_dirent.Size },
        { typeof(fuse_direntplus), 152, fuse_direntplus.Size },
        { typeof(fuse_setattr_in), 88, fuse_setattr_in.Size },
        { typeof(fuse_mkdir_in), 8, fuse_mkdir_in.Size },
        { typeof(fuse_rename_in), 8, fuse_rename_in.Size },
        { typeof(fuse_rename2_in), 16, fuse_rename2_in.Size },
        { typeof(fuse_fsync_in), 16, fuse_fsync_in.Size },
        { typeof(fuse_notify_inval_inode_out), 24, fuse_notify_inval_inode_out.Size },
        { typeof(fuse_notify_inval_entry_out), 16, fuse_notify_inval_entry_out.Size },
        { typeof(fuse_backing_map), 16, fuse_backing_map.Size },
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Struct_sizes_match_the_kernel_header(Type t, int expected, int declared)
    {
        Assert.Equal(expected, declared);
        Assert.Equal(expected, Marshal.SizeOf(t));
    }

    [Theory]
    [InlineData(typeof(fuse_in_header), "opcode", 4)]
    [InlineData(typeof(fuse_in_header), "unique", 8)]
    [InlineData(typeof(fuse_in_header), "nodeid", 16)]
    [InlineData(typeof(fuse_in_header), "pid", 32)]
    [InlineData(typeof(fuse_in_header), "total_extlen", 36)]
    [InlineData(typeof(fuse_attr), "atime", 24)]
    [InlineData(typeof(fuse_attr), "atimensec", 48)]
    [InlineData(typeof(fuse_attr), "mode", 60)]
    [InlineData(typeof(fuse_attr), "blksize", 80)]
    [InlineData(typeof(fuse_entry_out), "entry_valid_nsec", 32)]
    [InlineData(typeof(fuse_entry_out), "attr", 40)]
    [InlineData(typeof(fuse_attr_out), "attr", 16)]
    [InlineData(typeof(fuse_open_out), "backing_id", 12)]
    [InlineData(typeof(fuse_read_in), "size", 16)]
    [InlineData(typeof(fuse_read_in), "lock_owner", 24)]
    [InlineData(typeof(fuse_read_in), "flags", 32)]
    [InlineData(typeof(fuse_release_in), "lock_owner", 16)]
    [InlineData(typeof(fuse_kstatfs), "bsize", 40)]
    [InlineData(typeof(fuse_kstatfs), "frsize", 48)]
    [InlineData(typeof(fuse_init_in), "flags2", 16)]
    [InlineData(typeof(fuse_init_out), "max_background", 16)]
    [InlineData(typeof(fuse_init_out), "max_write", 20)]
    [InlineData(typeof(fuse_init_out), "max_pages", 28)]
    [InlineData(typeof(fuse_init_out), "flags2", 32)]
    [InlineData(typeof(fuse_init_out), "max_stack_depth", 36)]
    [InlineData(typeof(fuse_init_out), "request_timeout", 40)]
    [InlineData(typeof(fuse_dirent), "namelen", 16)]
    [InlineData(typeof(fuse_direntplus), "dirent", 128)]
    [InlineData(typeof(fuse_setattr_in), "atimensec", 56)]
    [InlineData(typeof(fuse_setattr_in), "uid", 76)]
    [InlineData(typeof(fuse_notify_inval_entry_out), "flags", 12)]
    public void Field_offsets_match_the_kernel_header(Type t, string field, int offset) =>
        Assert.Equal(offset, (int)Marshal.OffsetOf(t, field));

    [Fact]
    public void In_header_golden_bytes()
    {
        var h = new fuse_in_header { len = 0x30, opcode = 1, unique = 0x0102030405060708, nodeid = 1, uid = 1000, gid = 100, pid = 42 };
        byte[] b = MemoryMarshal.AsBytes(new ReadOnlySpan<fuse_in_header>(in h)).ToArray();
        Assert.Equal(
            Convert.FromHexString("30000000" + "01000000" + "0807060504030201" + "0100000000000000" + "E8030000" + "64000000" + "2A000000" + "0000" + "0000"),
            b);
    }

    [Fact]
    public void Entry_out_golden_bytes()
    {
        var e = new FuseEntry(7, 1, new fuse_attr { ino = 7, size = 5, mode = 0x81A4, nlink = 1, blksize = 4096 }, TimeSpan.FromSeconds(1.5), TimeSpan.FromSeconds(2)).ToAbi();
        byte[] b = MemoryMarshal.AsBytes(new ReadOnlySpan<fuse_entry_out>(in e)).ToArray();
        Assert.Equal(128, b.Length);
        Assert.Equal(Convert.FromHexString("0700000000000000" + "0100000000000000" + "0100000000000000" + "0200000000000000" + "0065CD1D" + "00000000"), b[..40]);
        Assert.Equal(Convert.FromHexString("0700000000000000" + "0500000000000000"), b[40..56]);
        Assert.Equal(Convert.FromHexString("A4810000" + "01000000"), b[100..108]); // mode @60, nlink @64 of the attr
        Assert.Equal(Convert.FromHexString("00100000"), b[120..124]); // blksize @80
    }

    [Fact]
    public void Ioctl_numbers_follow_the_asm_generic_encoding()
    {
        // _IOC(dir, 229, nr, size): dir<<30 | size<<16 | 229<<8 | nr; READ=2, WRITE=1.
        static uint Ioc(uint dir, uint nr, uint size) => (dir << 30) | (size << 16) | (229u << 8) | nr;
        Assert.Equal(FuseConstants.FUSE_DEV_IOC_CLONE, Ioc(2, 0, 4));
        Assert.Equal(FuseConstants.FUSE_DEV_IOC_BACKING_OPEN, Ioc(1, 1, (uint)Unsafe.SizeOf<fuse_backing_map>()));
        Assert.Equal(FuseConstants.FUSE_DEV_IOC_BACKING_CLOSE, Ioc(1, 2, 4));
    }
}
