#!/usr/bin/env bash
# safetensors loads onto the GPU through `lmfs mount` (embedded metadata, local-directory store)
# against the same file on local disk: cold, hot, and warm after a remount. Needs root, /dev/fuse,
# a CUDA GPU and python3 with torch and safetensors; the lmfs binary is a self-contained build:
#   dotnet publish src/LazyModelFs.Cli -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true -o .publish/lmfs
# usage: bench/gpu-safetensors.sh LMFS_BINARY [SIZE_GB=2] [WORK_DIR=/var/tmp] [REPORT_DIR]
#   with REPORT_DIR, `lmfs bench` also runs on the model (ceilings, cold/warm/hot, mmap loads) and
#   leaves bench.json and bench.html there.
set -euo pipefail
cd "$(dirname "$0")/.."
lmfs=$(readlink -f "$1"); size_gb=${2:-2}; base=${3:-/var/tmp}; report=${4:-}
w=$(mktemp -d "$base/lmfs-gpu.XXXXXX"); mnt=$w/mnt; meta=sqlite://$w/meta.db
cleanup() { "$lmfs" umount "$mnt" >/dev/null 2>&1 || true; rm -rf "$w"; }
trap cleanup EXIT INT TERM
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
load() { python3 bench/gpu_load.py load "$1" --label "$2"; }
mount_it() { "$lmfs" mount "$meta" "$mnt" --background --cache-dir "$w/cache" --log-file "$w/mount.log" "$@" >/dev/null; }
df -h "$w" | tail -1
python3 bench/gpu_load.py generate "$w/src/model.safetensors" --size-gb "$size_gb"
"$lmfs" format "$meta" --storage "file://$w/objects" >/dev/null
"$lmfs" import "$meta" "$w/src/model.safetensors" /m/model.safetensors --no-progress | tail -1
mkdir -p "$mnt"
drop; load "$w/src/model.safetensors" "local disk, page cache dropped"
load "$w/src/model.safetensors" "local disk, hot"
mount_it
drop; load "$mnt/m/model.safetensors" "lmfs cold (empty cache, prefetch safetensors)"
load "$mnt/m/model.safetensors" "lmfs hot (page cache kept)"
"$lmfs" umount "$mnt" >/dev/null; sleep 1
mount_it
drop; load "$mnt/m/model.safetensors" "lmfs warm (remounted, page cache dropped)"
"$lmfs" umount "$mnt" >/dev/null; sleep 1
rm -rf "$w/cache"; mount_it --prefetch sequential
drop; load "$mnt/m/model.safetensors" "lmfs cold (empty cache, prefetch sequential)"
"$lmfs" umount "$mnt" >/dev/null
grep -E "error|warn" "$w/mount.log" | head -5 || true
if [ -n "$report" ]; then
  mkdir -p "$report"
  "$lmfs" bench "$meta" /m/model.safetensors --safetensors /m/model.safetensors --readers 8 \
    --cache-dir "$w/bench-cache" --json-file "$report/bench.json" --html "$report/bench.html"
fi
