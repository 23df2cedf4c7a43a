#!/usr/bin/env python3
"""Open + read the first MiB of FILE after dropping the page cache (root); prints milliseconds.

Used by bench/compare.sh and bench/fresh-mount.sh on a mount started just now, nothing cached
(a new pod): the serving process's own warm-up is in the figure, as a user meets it.
usage: python3 bench/first_mib.py FILE
"""
import os
import sys
import time

os.sync()
with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("3")
t = time.perf_counter()
with open(sys.argv[1], "rb", buffering=0) as f:
    n = len(f.read(1 << 20))
assert n == 1 << 20, f"{sys.argv[1]}: read {n} bytes, not 1 MiB"
print(f"{(time.perf_counter() - t) * 1000:.1f}")
