#!/usr/bin/env bash
# Is a cold load with the cache on disk slower because of lmfs, or because of the disk writes
# themselves? Loads the same model cold from S3 with the disk cache off, then again (cache off)
# while `dd` writes to the same disk with O_DIRECT at full speed (no lmfs code on the write path),
# then with the cache on that disk; dd's rate alone is the disk's write ceiling. Same host, one run.
# usage: bench/disk-contention.sh LMFS_BINARY [SIZE_GB=8] [WORK_DIR=/var/tmp]   (root, GPU; see gpu-table.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
lmfs=$(readlink -f "$1"); size_gb=${2:-8}; base=${3:-/var/tmp}
w=$(mktemp -d "$base/lmfs-contention.XXXXXX"); mnt=$w/mnt; meta=sqlite://$w/meta.db
shm=$(mktemp -d /dev/shm/lmfs-contention.XXXXXX); mkdir -p "$mnt"
s3pid=""; ddpid=""
cleanup() {
  set +e
  [ -n "$ddpid" ] && kill "$ddpid" 2>/dev/null
  "$lmfs" umount "$mnt" >/dev/null 2>&1
  [ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null && wait "$s3pid" 2>/dev/null
  rm -rf "$w" "$shm"
}
trap cleanup EXIT INT TERM
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
python3 bench/s3serve.py --root "$shm/s3" --port-file "$w/port" 2> "$w/s3serve.log" & s3pid=$!
for _ in $(seq 50); do [ -s "$w/port" ] && break; sleep 0.1; done
mkdir -p "$shm/s3/bench"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
python3 bench/gpu_load.py generate "$w/model.safetensors" --size-gb "$size_gb" >&2
"$lmfs" format "$meta" --storage "s3://bench/model?endpoint=http://127.0.0.1:$(cat "$w/port")" >/dev/null
"$lmfs" import "$meta" "$w/model.safetensors" /m.safetensors --no-progress >/dev/null
rm -f "$w/model.safetensors"
mnt_on() { "$lmfs" mount "$meta" "$mnt" --background --log-file "$w/$1.log" "${@:2}" >/dev/null; }
load() { python3 bench/gpu_load.py load "$mnt/m.safetensors" --label "$1"; }
dd_start() { dd if=/dev/zero of="$w/dd.bin" bs=4M count=$((size_gb * 512)) oflag=direct 2> "$w/dd.log" & ddpid=$!; }
dd_stop() { kill "$ddpid" 2>/dev/null || true; wait "$ddpid" 2>/dev/null || true; ddpid=""; rm -f "$w/dd.bin"; }

mnt_on off1 --cache-size 0; drop; load "cold, disk cache off"; "$lmfs" umount "$mnt" >/dev/null
mnt_on off2 --cache-size 0; drop; dd_start; sleep 1; load "cold, disk cache off, dd writing to the cache disk"; dd_stop; "$lmfs" umount "$mnt" >/dev/null
mnt_on on --cache-dir "$w/cache"; drop; load "cold, cache on the disk"
"$lmfs" stats "$mnt" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps({k: s.get(k) for k in ("diskWritesSkipped","diskWritesRefilled","storeBytes","diskBytes")}))'
"$lmfs" umount "$mnt" >/dev/null
drop; t0=$(date +%s.%N); dd if=/dev/zero of="$w/dd.bin" bs=4M count=2048 oflag=direct 2>/dev/null
echo "{\"label\": \"dd alone, 8 GiB O_DIRECT writes\", \"GBps\": $(python3 -c "print(round(8*2**30/1e9/($(date +%s.%N)-$t0),3))")}"
