#!/usr/bin/env python3
"""Reads FILE whole in a shuffled order of CHUNK-sized pieces (one reader, pread), after dropping the
page cache (root), and checks every piece against REFERENCE (the same bytes on local disk). Prints
seconds. The order comes from SEED, so two runs read in the same order: a loader that repeats itself (SEED 0:
file order).
Used by bench/replay.sh.
usage: python3 bench/shuffled_read.py FILE REFERENCE [CHUNK_BYTES] [SEED]
"""
import os
import random
import sys
import time

path, ref = sys.argv[1], sys.argv[2]
chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 4 << 20
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
size = os.path.getsize(ref)
order = list(range((size + chunk - 1) // chunk))
if seed != 0:  # 0: file order
    random.Random(seed).shuffle(order)
os.sync()
with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("3")
fd = os.open(path, os.O_RDONLY)
rfd = os.open(ref, os.O_RDONLY)
t = time.perf_counter()
for i in order:
    got = os.pread(fd, chunk, i * chunk)
    assert len(got) == min(chunk, size - i * chunk), f"short read at piece {i}"
    if os.pread(rfd, chunk, i * chunk) != got:
        sys.exit(f"{path}: piece {i} differs from {ref}")
elapsed = time.perf_counter() - t
os.close(fd)
os.close(rfd)
print(f"{elapsed:.2f}")
