using System.Globalization;
using System.Runtime.InteropServices;
using LazyModelFs.Fuse.Abi;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace LazyModelFs.Fuse;

/// <summary>
/// A mounted FUSE session: the mount, the INIT handshake, N reader threads and the unmount.
///
/// Threads (fuse-protocol.md 2 and 11): reader 0 reads the session descriptor and answers INIT,
/// the first request; then N−1 more descriptors are cloned from it (FUSE_DEV_IOC_CLONE), each with
/// its own dedicated, named, background thread blocked in read(2) on its own pinned buffer of
/// max_write + 4 KiB. Each reply goes to the descriptor its request came from: a reply on another
/// clone is refused with ENOENT and the caller would hang (polyfuse #176). Blocking reads never run
/// on the thread pool; handlers that go async continue on it and write their reply from there.
///
/// The session ends when read(2) returns ENODEV (unmounted) or ECONNABORTED (aborted).
/// </summary>
public sealed class FuseSession : IDisposable
{
    private readonly IFuseFileSystem _fs;
    private readonly FuseMountOptions _options;
    private readonly ILogger _log;
    private readonly List<int> _fds = [];
    private readonly List<Thread> _threads = [];
    private readonly TaskCompletionSource _initDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _running;
    private int _unmounted;
    private volatile bool _closed;
    private FuseConnection? _connection;

    private FuseSession(string mountPoint, IFuseFileSystem fs, FuseMountOptions options, ILogger log)
    {
        MountPoint = mountPoint;
        _fs = fs;
        _options = options;
        _log = log;
    }

    public string MountPoint { get; }

    /// <summary>The mount's device minor: /sys/fs/fuse/connections/MINOR and /sys/class/bdi/0:MINOR.</summary>
    public uint DeviceMinor { get; private set; }

    public FuseDispatcher Dispatcher { get; private set; } = null!;

    /// <summary>Notifications and passthrough for this mount (also handed to the filesystem at INIT).</summary>
    public FuseConnection Connection => _connection ?? throw new ObjectDisposedException(nameof(FuseSession));

    /// <summary>Completes when every reader thread has stopped (unmounted, aborted or destroyed).</summary>
    public Task Completion => _ended.Task;

    /// <summary>Whether the effective uid is 0 (.NET's geteuid() == 0, read once: this process never changes its ids).</summary>
    public static bool IsRoot => Environment.IsPrivilegedProcess;

    /// <summary>Mounts <paramref name="fs"/> at <paramref name="mountPoint"/> and returns once INIT has been answered.</summary>
    public static FuseSession Mount(string mountPoint, IFuseFileSystem fs, FuseMountOptions? options = null, ILogger? logger = null)
    {
        options ??= new FuseMountOptions();
        var log = logger ?? NullLogger.Instance;
        string target = FuseMount.ResolveMountPoint(mountPoint);
        FuseMount.PrepareMountPoint(target, log, options.AllowNonEmpty);

        bool useFusermount = options.UseFusermount || !IsRoot;
        var protocol = options.Protocol with { Passthrough = options.Protocol.Passthrough && !useFusermount };
        options = options with { Protocol = protocol };
        int fd = useFusermount ? FuseMount.MountWithFusermount(target, options) : FuseMount.MountDirect(target, options);

        var session = new FuseSession(target, fs, options, log) { UsedFusermount = useFusermount };
        session._fds.Add(fd);
        session._connection = new FuseConnection(fd);
        session.Dispatcher = new FuseDispatcher(fs, protocol, log, session._connection);
        try
        {
            session.StartReader(fd, "fuse-reader-0");
            if (!session._initDone.Task.Wait(TimeSpan.FromSeconds(30)))
            {
                throw new IOException($"the kernel sent no INIT for {target} within 30 s");
            }

            session.StartClones();
            session.AfterMount();
            session.StartDetachWatch();
            log.LogInformation("fuse: mounted {MountPoint} (connection {Minor}, {Threads} reader threads{Via})", target, session.DeviceMinor, session._threads.Count, useFusermount ? ", via fusermount3" : "");
            return session;
        }
        catch
        {
            session.Unmount();
            session.Dispose();
            throw;
        }
    }

    internal bool UsedFusermount { get; private init; }

    /// <summary>
    /// Unmounts (lazily, so open files and mappings finish) and waits for the session to end; if it
    /// has not ended within the grace period (a request stuck in a handler, files still open), the
    /// connection is aborted so no caller is left hanging. Safe to call twice.
    /// </summary>
    public void Unmount()
    {
        if (Interlocked.Exchange(ref _unmounted, 1) != 0)
        {
            _ended.Task.Wait(_options.UnmountGrace);
            return;
        }

        // Unmounting by path after the connection died could hit another filesystem mounted there
        // since (fuser #658): only unmount while our connection is alive and our mount is still
        // there (not detached from outside), and only when the mount on top at the path is ours (its
        // device is 0:our minor); one mounted over ours is left alone, and the grace period below then
        // ends our session by aborting the connection.
        if (_fds.Count > 0 && FuseMount.IsConnectionAlive(_fds[0]) && !Detached())
        {
            if (DeviceMinor != 0 && FuseMount.MountAt(MountPoint) is { } top && top.Device != $"0:{DeviceMinor}")
            {
                _log.LogWarning("fuse: another filesystem ({Type}) is mounted over {MountPoint}; leaving it alone", top.FsType, MountPoint);
            }
            else
            {
                FuseMount.Unmount(MountPoint, UsedFusermount, _log);
            }
        }

        if (_running > 0 && !_ended.Task.Wait(_options.UnmountGrace))
        {
            _log.LogWarning("fuse: {MountPoint} still busy {Grace} after unmount; aborting connection {Minor}", MountPoint, _options.UnmountGrace, DeviceMinor);
            FuseMount.Abort(DeviceMinor, _log);
            _ended.Task.Wait(TimeSpan.FromSeconds(5));
        }
    }

    /// <summary>Whether no mount of this connection is left in our mount namespace (bind mounts of it count as mounts).</summary>
    private bool Detached()
    {
        string dev = "0:" + DeviceMinor.ToString(CultureInfo.InvariantCulture);
        try
        {
            return DeviceMinor != 0 && !FuseMount.MountTable().Any(m => m.Device == dev);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>
    /// Notices when the mount is detached from outside — `lmfs umount`, `umount -l`, the kubelet —
    /// and ends the session the way SIGTERM does: callers get the grace period to finish, then the
    /// connection is aborted, so no reader stays blocked (on a frozen store, say) after an unmount
    /// (issue 11, item 6). A lazy unmount alone only hides the mount: the kernel keeps the connection
    /// while files are open, and nothing tells the daemon. A dedicated thread waits in poll(2) on
    /// /proc/self/mountinfo, which reports every change of the mount table as POLLPRI
    /// (proc(5)), and looks again every few seconds in case an event is missed.
    /// </summary>
    private unsafe void StartDetachWatch()
    {
        var t = new Thread(() =>
        {
            int fd = Native.Open("/proc/self/mountinfo", Native.O_CLOEXEC);
            try
            {
                byte* buf = stackalloc byte[4096];
                while (!_ended.Task.IsCompleted && Volatile.Read(ref _unmounted) == 0)
                {
                    if (fd >= 0)
                    {
                        // SAFETY: buf is 4096 bytes and its length is passed; the kernel arms POLLPRI for
                        // this descriptor once it has been read (seq_file), so drain it before each poll.
                        _ = Native.Lseek(fd, 0, 0);
                        while (Native.Read(fd, buf, 4096) > 0)
                        {
                        }

                        var pfd = new Native.PollFd { Fd = fd, Events = Native.POLLPRI };
                        _ = Native.Poll(&pfd, 1, 3000);
                    }
                    else
                    {
                        Thread.Sleep(1000);
                    }

                    if (!_ended.Task.IsCompleted && Volatile.Read(ref _unmounted) == 0 && Detached())
                    {
                        _log.LogInformation("fuse: {MountPoint} was unmounted from outside; ending the session (open files get {Grace})", MountPoint, _options.UnmountGrace);
                        Unmount();
                        return;
                    }
                }
            }
            finally
            {
                if (fd >= 0)
                {
                    Native.Close(fd);
                }
            }
        })
        { IsBackground = true, Name = "fuse-detach-watch" };
        t.Start();
    }

    /// <summary>Unmounts cleanly on SIGINT and SIGTERM (the returned registrations keep the handlers alive).</summary>
    public IDisposable[] UnmountOnSignals()
    {
        void Handler(PosixSignalContext ctx)
        {
            ctx.Cancel = true;
            _log.LogInformation("fuse: {Signal}: unmounting {MountPoint}", ctx.Signal, MountPoint);
            ThreadPool.QueueUserWorkItem(_ => Unmount());
        }

#pragma warning disable CA2000 // returned: the caller disposes the registrations
        return [PosixSignalRegistration.Create(PosixSignal.SIGINT, Handler), PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handler)];
#pragma warning restore CA2000
    }

    public void Dispose()
    {
        if (_running > 0)
        {
            Unmount();
        }

        // Replies of handlers still running would go to these descriptors; once closed, their numbers can be
        // reused by any file this process opens. Stop the sinks, let in-flight replies finish (bounded), then close.
        _closed = true;
        SpinWait.SpinUntil(() => Dispatcher is null || Dispatcher.InFlight == 0, TimeSpan.FromSeconds(2));
        _connection?.Dispose();
        foreach (var fd in _fds)
        {
            Native.Close(fd);
        }

        _fds.Clear();
    }

    private void StartReader(int fd, string name)
    {
        Interlocked.Increment(ref _running);
        var t = new Thread(() => ReadLoop(fd)) { IsBackground = true, Name = name };
        _threads.Add(t);
        t.Start();
    }

    private unsafe void StartClones()
    {
        for (int i = 1; i < _options.Threads; i++)
        {
            int fd = Native.Open("/dev/fuse", Native.O_RDWR | Native.O_CLOEXEC);
            if (fd < 0)
            {
                throw new IOException($"cannot open /dev/fuse for reader {i}: {Native.Describe(Native.LastErrno)}");
            }

            uint session = (uint)_fds[0];
            // SAFETY: FUSE_DEV_IOC_CLONE reads a u32 descriptor number from &session.
            if (Native.Ioctl(fd, FuseConstants.FUSE_DEV_IOC_CLONE, &session) != 0)
            {
                var e = Native.LastErrno;
                Native.Close(fd);
                _log.LogWarning("fuse: FUSE_DEV_IOC_CLONE failed ({Errno}); readers share one descriptor", e);
                for (; i < _options.Threads; i++)
                {
                    StartReader(_fds[0], $"fuse-reader-{i}");
                }

                return;
            }

            _fds.Add(fd);
            StartReader(fd, $"fuse-reader-{i}");
        }
    }

    private void AfterMount()
    {
        var (err, _, minor, _) = Native.Stat(MountPoint);
        if (err != Errno.OK)
        {
            throw new IOException($"cannot stat the new mount {MountPoint}: {Native.Describe(err)}");
        }

        DeviceMinor = minor;
        if (_options.ReadaheadKb is { } kb && IsRoot)
        {
            // INIT can only lower readahead; the bdi knob raises it for files opened from now on (fuse-protocol.md 3.5).
            string path = $"/sys/class/bdi/0:{minor}/read_ahead_kb";
            try
            {
                File.WriteAllText(path, kb.ToString(CultureInfo.InvariantCulture));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                _log.LogWarning("fuse: cannot set {Path}: {Message}", path, ex.Message);
            }
        }
    }

    private unsafe void ReadLoop(int fd)
    {
        var sink = new FdSink(fd, this);
        byte[] buffer = GC.AllocateUninitializedArray<byte>(Dispatcher.ReadBufferSize, pinned: true);
        try
        {
            while (true)
            {
                nint n;
                fixed (byte* p = buffer)
                {
                    // SAFETY: buffer is pinned (POH) and its length is passed; the kernel writes one request.
                    n = Native.Read(fd, p, (nuint)buffer.Length);
                }

                if (n < 0)
                {
                    var e = Native.LastErrno;
                    if (e is Errno.EINTR or Errno.EAGAIN or Errno.ENOENT)
                    {
                        continue; // interrupted, or the request was aborted while being read
                    }

                    if (e is Errno.ENODEV or Errno.ECONNABORTED)
                    {
                        _log.LogDebug("fuse: reader on fd {Fd} stops: {Errno}", fd, e);
                    }
                    else
                    {
                        _log.LogError("fuse: read from /dev/fuse failed: {Errno}; reader stops", Native.Describe(e));
                    }

                    return;
                }

                Dispatcher.Dispatch(buffer.AsSpan(0, (int)n), sink);
                if (Dispatcher.Info is not null)
                {
                    _initDone.TrySetResult();
                }

                if (Dispatcher.Destroyed)
                {
                    return;
                }
            }
        }
        finally
        {
            _initDone.TrySetResult();
            if (Interlocked.Decrement(ref _running) == 0)
            {
                _ended.TrySetResult();
            }
        }
    }

    /// <summary>Writes replies to one /dev/fuse descriptor with one writev each.</summary>
    private sealed unsafe class FdSink(int fd, FuseSession session) : IReplySink
    {
        public Errno Send(ReadOnlySpan<byte> header, ReadOnlySpan<byte> body, ReadOnlySpan<byte> body2)
        {
            if (session._closed)
            {
                return Errno.ENODEV; // the session's descriptors are closed (or closing): never write to a reused number
            }

            fixed (byte* h = header)
            fixed (byte* b = body)
            fixed (byte* b2 = body2)
            {
                Native.Iovec* iov = stackalloc Native.Iovec[3];
                int count = 0;
                iov[count++] = new Native.Iovec { Base = h, Len = (nuint)header.Length };
                if (!body.IsEmpty)
                {
                    iov[count++] = new Native.Iovec { Base = b, Len = (nuint)body.Length };
                }

                if (!body2.IsEmpty)
                {
                    iov[count++] = new Native.Iovec { Base = b2, Len = (nuint)body2.Length };
                }

                // SAFETY: every iovec points into a span pinned by `fixed` for the duration of the call.
                // Writes to /dev/fuse are all-or-nothing: no partial writes to resume.
                nint n = Native.Writev(fd, iov, count);
                return n < 0 ? Native.LastErrno : Errno.OK;
            }
        }
    }
}
