#!/usr/bin/env python3
"""Soak: many readers on an lmfs mount while its object store and metadata server are restarted.

Starts redis-server (append-only, fsync always, so a kill keeps its data) and s3rver on free
loopback ports, imports a mixed set of files, mounts them with a small cache (so reads keep going to
the object store), then for --minutes runs --readers threads that read random ranges of random
files and compare every byte with the source, while a chaos thread kills and restarts s3rver or
Redis, or freezes s3rver (SIGSTOP) for a while, at random. The page cache is dropped every few
seconds so reads reach the mount.

Reports reads, bytes, errors (EIO while a service is down is expected; errors while every service
has been up for 10 s are counted apart and must be 0), wrong bytes (must be 0),
hangs (a read outlasting --fetch-timeout plus a margin: must be 0) and, per chaos event, the time
from the service coming back to the first successful read that needed it. Exits non-zero if any
byte was wrong or any read hung. Stops by itself and removes every mount, process and file it made,
also on Ctrl-C or failure.

usage: sudo python3 bench/soak.py [--minutes 10] [--readers 16] [--seed 1] [--json FILE]
"""
import argparse, atexit, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMFS = ["dotnet", os.path.join(REPO, "src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll")]
S3RVER = os.path.join(REPO, "scripts/s3rver/node_modules/s3rver/bin/s3rver.js")
FETCH_TIMEOUT = 30
HANG = FETCH_TIMEOUT + 30


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Server:
    """A server process on a fixed port and data directory, stopped by its pid (never by name)."""

    def __init__(self, name, argv, port):
        self.name, self.argv, self.port, self.proc, self.paused = name, argv, port, None, False

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            if self.paused:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.paused = False
            self.proc.kill()
            self.proc.wait()

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the report here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak.py: needs root (mount, drop_caches)")
    if not os.path.exists(LMFS[1]) or not os.path.exists(S3RVER):
        sys.exit("soak.py: run scripts/setup.sh first")
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="lmfs-soak.", dir="/var/tmp")
    servers, mnt = [], os.path.join(work, "mnt")
    done = threading.Event()

    def cleanup():
        done.set()
        subprocess.run(LMFS + ["umount", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for s in servers:
            s.kill()
        shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))

    rport, sport = free_port(), free_port()
    os.makedirs(os.path.join(work, "redis"))
    os.makedirs(os.path.join(work, "s3"))
    redis = Server("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                             "--appendfsync", "always", "--dir", os.path.join(work, "redis")], rport)
    s3 = Server("s3rver", ["node", S3RVER, "-d", os.path.join(work, "s3"), "-a", "127.0.0.1", "-p", str(sport), "-s", "--configure-bucket", "soak"], sport)
    servers += [redis, s3]
    redis.start()
    s3.start()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER", AWS_EC2_METADATA_DISABLED="true")

    src = os.path.join(work, "src")
    os.makedirs(src)
    sizes = [1000, 100_000, 3 << 20, (17 << 20) + 5, 64 << 20, (200 << 20) + 123]
    files = []
    for i, n in enumerate(sizes):
        p = os.path.join(src, f"f{i}.bin")
        with open(p, "wb") as f:
            f.write(rng.randbytes(n))
        files.append((f"f{i}.bin", n))
    meta = f"redis://127.0.0.1:{rport}/0?volume=soak"
    run = lambda *args: subprocess.run(LMFS + list(args), env=env, check=True, stdout=subprocess.DEVNULL)
    run("format", meta, "--storage", "s3://soak/lmfs", "--endpoint", f"http://127.0.0.1:{sport}", "--chunk-size", "1M")
    run("import", meta, src, "/", "--no-progress")
    os.makedirs(mnt)
    run("mount", meta, mnt, "--background", "--cache-dir", os.path.join(work, "cache"), "--cache-size", "48M",
        "--buffer-size", "32M", "--fetch-timeout", str(FETCH_TIMEOUT), "--log-file", os.path.join(work, "mount.log"))

    lock = threading.Lock()
    stats = {"reads": 0, "bytes": 0, "errors": 0, "errors_all_up": 0, "wrong": 0, "hangs": 0}
    inflight = {}  # thread id -> start time
    events = []    # {"what", "down_at", "up_at", "first_ok_after"}
    last_ok = [0.0]

    def reader(tid):
        r = random.Random(a.seed * 1000 + tid)
        fds = {}
        while not done.is_set():
            name, size = r.choice(files)
            off = r.randrange(size)
            length = min(size - off, r.choice([1, 4096, 65536, 1 << 20, 4 << 20]))
            with open(os.path.join(src, name), "rb") as f:
                f.seek(off)
                want = f.read(length)
            start = time.time()
            inflight[tid] = start
            try:
                if name not in fds or r.random() < 0.05:  # reopen now and then: lookups need Redis
                    if name in fds:
                        os.close(fds.pop(name))
                    fds[name] = os.open(os.path.join(mnt, "src", name), os.O_RDONLY)
                got = os.pread(fds[name], length, off)
                ok = got == want
                with lock:
                    stats["reads"] += 1
                    stats["bytes"] += len(got)
                    if not ok:
                        stats["wrong"] += 1
                        print(f"WRONG BYTES: {name} at {off} (+{length})", flush=True)
                    else:
                        last_ok[0] = time.time()
                        for e in events:
                            if e["up_at"] and e["first_ok_after"] is None and start >= e["up_at"]:
                                e["first_ok_after"] = round(time.time() - e["up_at"], 2)
            except OSError as e:
                with lock:
                    stats["errors"] += 1
                    # An error while every service was up (and had been for 10 s) is a bug, not an outage.
                    if all(ev["up_at"] and start - ev["up_at"] > 10 for ev in events):
                        stats["errors_all_up"] += 1
                        print(f"ERROR WHILE ALL SERVICES WERE UP: {name} at {off}: {e}", flush=True)
                    if stats["errors"] <= 3:
                        print(f"read error: {name} at {off}: {e}", flush=True)
                if name in fds:
                    os.close(fds.pop(name))
                time.sleep(0.05)  # a failed read is retried, not spun on
            finally:
                inflight.pop(tid, None)

    def watchdog():
        flagged = set()
        while not done.is_set():
            now = time.time()
            for tid, t0 in list(inflight.items()):
                if now - t0 > HANG and (tid, t0) not in flagged:
                    flagged.add((tid, t0))
                    with lock:
                        stats["hangs"] += 1
                    print(f"HANG: reader {tid} blocked for {now - t0:.0f} s", flush=True)
            time.sleep(1)

    def chaos():
        while not done.wait(rng.uniform(8, 20)):
            kind = rng.choice(["restart s3rver", "restart redis", "freeze s3rver"])
            down = rng.uniform(1, 6)
            e = {"what": kind, "down_s": round(down, 1), "down_at": time.time(), "up_at": None, "first_ok_after": None}
            with lock:
                events.append(e)
            print(f"chaos: {kind} for {down:.1f} s", flush=True)
            if kind == "freeze s3rver":
                s3.pause()
                time.sleep(down)
                s3.resume()
            else:
                srv = s3 if "s3rver" in kind else redis
                srv.kill()
                time.sleep(down)
                srv.start()
            e["up_at"] = time.time()

    def dropper():
        while not done.wait(3):
            subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"])

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(a.readers)]
    threads += [threading.Thread(target=f, daemon=True) for f in (watchdog, chaos, dropper)]
    t0 = time.time()
    for t in threads:
        t.start()
    try:
        while time.time() - t0 < a.minutes * 60:
            time.sleep(min(10, a.minutes * 60 - (time.time() - t0)))
            with lock:
                print(f"{time.time() - t0:6.0f} s: {stats['reads']} reads, {stats['bytes'] / 1e9:.2f} GB, {stats['errors']} errors, "
                      f"{stats['wrong']} wrong, {stats['hangs']} hangs", flush=True)
    finally:
        done.set()
        for s in servers:  # nothing stays frozen or down while the readers finish
            if s.paused:
                s.resume()
            if s.proc.poll() is not None:
                s.start()
        deadline = time.time() + HANG
        for t in threads:
            t.join(max(0, deadline - time.time()))
        stuck = sum(t.is_alive() for t in threads)

    recov = [e["first_ok_after"] for e in events if e["first_ok_after"] is not None]
    report = {
        "minutes": a.minutes, "readers": a.readers, **stats, "stuck_at_end": stuck,
        "chaos_events": len(events),
        "recovery_s": {"max": max(recov) if recov else None, "mean": round(sum(recov) / len(recov), 2) if recov else None},
        "events": events,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    for e in events:
        print(f"  {e['what']:15} down {e['down_s']:4.1f} s, first good read {e['first_ok_after']} s after it came back")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    sys.exit(0 if stats["wrong"] == 0 and stats["hangs"] == 0 and stuck == 0 and stats["errors_all_up"] == 0 else 1)


if __name__ == "__main__":
    main()
