#!/usr/bin/env bash
# FUSE protocol layer throughput: sequential 1 MiB reads of a file served from memory through a
# real mount (memfs), page cache dropped before each run, against the same bytes on tmpfs.
# Also reports the daemon's CPU seconds per GB. Needs root.
# usage: bench/fuse-memfs.sh [SIZE_MIB=1024] [RUNS=3] [MEMFS_OPTIONS...]   (e.g. --zero-copy, --threads 2)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}; runs=${2:-3}; shift $(( $# < 2 ? $# : 2 )); memfs_opts=("$@")
[ "$(id -u)" -eq 0 ] || { echo "bench/fuse-memfs.sh needs root (mount, drop_caches)" >&2; exit 1; }
dll=tests/LazyModelFs.MemFs/bin/Release/net10.0/LazyModelFs.MemFs.dll
[ -f "$dll" ] || dotnet build tests/LazyModelFs.MemFs -c Release -nologo -v q
mnt=$(mktemp -d /tmp/lmfs-bench-mnt.XXXXXX); shm=/dev/shm/lmfs-bench-$$.bin; pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; umount -l "$mnt" 2>/dev/null; rmdir "$mnt" 2>/dev/null; rm -f "$shm"; }
trap cleanup EXIT INT TERM

dotnet "$dll" "$mnt" --file-mib "$size_mib" "${memfs_opts[@]}" > "$mnt.log" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q ready "$mnt.log" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$mnt.log" || { cat "$mnt.log"; exit 1; }
rm -f "$mnt.log"
cp "$mnt/data.bin" "$shm"
cmp "$mnt/data.bin" "$shm"

cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }   # utime + stime, clock ticks
tck=$(getconf CLK_TCK)
read_secs() {  # dd one file with 1 MiB reads; prints seconds
  dd if="$1" of=/dev/null bs=1M 2>&1 | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) print $(i-1) }'
}
fuse=(); tmpfs=(); hot=(); cpus=()
for i in $(seq "$runs"); do
  sync; echo 3 > /proc/sys/vm/drop_caches
  c0=$(cpu); fuse+=("$(read_secs "$mnt/data.bin")"); c1=$(cpu)
  cpus+=("$(awk -v a="$c0" -v b="$c1" -v t="$tck" -v s="$size_mib" 'BEGIN { print (b - a) / t / (s / 1024 * 1.073741824) }')")
  hot+=("$(read_secs "$mnt/data.bin")")
  sync; echo 3 > /proc/sys/vm/drop_caches
  tmpfs+=("$(read_secs "$shm")")
  echo "run $i: fuse cold-page-cache ${fuse[-1]} s, fuse hot ${hot[-1]} s, tmpfs ${tmpfs[-1]} s, daemon cpu ${cpus[-1]} s/GB" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
awk -v s="$size_mib" -v f="$(median "${fuse[@]}")" -v t="$(median "${tmpfs[@]}")" -v h="$(median "${hot[@]}")" -v c="$(median "${cpus[@]}")" -v o="${memfs_opts[*]:-none}" 'BEGIN {
  gb = s / 1024 * 1.073741824
  printf "size %d MiB, median of runs, 1 MiB reads (dd bs=1M), memfs options: %s\n", s, o
  printf "fuse (memfs), page cache dropped: %.3f s  %.2f GB/s\n", f, gb / f
  printf "tmpfs, same bytes:                %.3f s  %.2f GB/s\n", t, gb / t
  printf "fuse, page cache hot:             %.3f s  %.2f GB/s\n", h, gb / h
  printf "ratio fuse/tmpfs:                 %.2f\n", t / f
  printf "daemon CPU:                       %.3f s per GB\n", c }'
