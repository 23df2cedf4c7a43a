#!/usr/bin/env bash
# Read path through `lmfs mount` on the embedded default (SQLite + local-directory store), 1 GiB file:
# cold (empty cache, page cache dropped), warm (remounted, cache kept, page cache dropped) and hot
# (page cache kept), with dd bs=1M, against the same file read from local disk. Prints the mount
# daemon's CPU seconds per GB for the cold read. Needs root. usage: bench/mount-local.sh [SIZE_MIB=1024]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
lmfs() { dotnet src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll "$@"; }
w=$(mktemp -d /var/tmp/lmfs-bench-mount.XXXXXX)
cleanup() { lmfs umount "$w/mnt" >/dev/null 2>&1 || true; rm -rf "$w"; }
trap cleanup EXIT INT TERM
head -c $((size_mib << 20)) /dev/urandom > "$w/file.bin"
lmfs format "sqlite://$w/meta.db" --storage "file://$w/objects" >/dev/null
lmfs import "sqlite://$w/meta.db" "$w/file.bin" /file.bin --no-progress >/dev/null
mkdir -p "$w/mnt"
secs() { dd if="$1" of=/dev/null bs=1M 2>&1 | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) print $(i-1) }'; }
pid_of() { pgrep -f "lmfs.dll mount sqlite://$w/meta.db" | head -1; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
gb=$(awk -v s="$size_mib" 'BEGIN { print s / 1024 * 1.073741824 }')
sync; echo 3 > /proc/sys/vm/drop_caches; disk=$(secs "$w/file.bin")
lmfs mount "sqlite://$w/meta.db" "$w/mnt" --background --cache-dir "$w/cache" --log-file "$w/log" >/dev/null
pid=$(pid_of); sync; echo 3 > /proc/sys/vm/drop_caches
c0=$(cpu "$pid"); cold=$(secs "$w/mnt/file.bin"); c1=$(cpu "$pid")
hot=$(secs "$w/mnt/file.bin")
sleep 1; lmfs umount "$w/mnt" >/dev/null; sleep 1
lmfs mount "sqlite://$w/meta.db" "$w/mnt" --background --cache-dir "$w/cache" --log-file "$w/log" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
warm=$(secs "$w/mnt/file.bin")
cmp "$w/mnt/file.bin" "$w/file.bin" && echo "bytes verified with cmp"
awk -v d="$disk" -v c="$cold" -v wm="$warm" -v h="$hot" -v g="$gb" -v t="$(getconf CLK_TCK)" -v c0="$c0" -v c1="$c1" 'BEGIN {
  printf "local disk, page cache dropped: %.2f GB/s\n", g / d
  printf "mount cold (local-dir store):   %.2f GB/s  (%.2f of local disk), daemon %.2f CPU s/GB\n", g / c, d / c, (c1 - c0) / t / g
  printf "mount warm (disk cache):        %.2f GB/s  (%.2f of local disk)\n", g / wm, d / wm
  printf "mount hot (page cache):         %.2f GB/s\n", g / h }'
