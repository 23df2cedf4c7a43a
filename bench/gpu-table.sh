#!/usr/bin/env bash
# The GPU-host table of issue 13 in one command: safetensors loads onto the GPU from S3 through
# `lmfs mount`, against the same file on local disk, with the object store's own ceiling measured
# in the same run.
#
# The store is bench/s3serve.py (multi-threaded, sendfile) serving objects from tmpfs, so neither
# s3rver's single thread nor the disk is the store's limit; its ceiling (16 parallel GETs of whole
# chunk objects, the request pattern lmfs uses) comes from `lmfs bench` at the end of the run.
# Every lmfs row reports the daemon's CPU seconds per GB, its peak RSS and the bytes it fetched
# from the store over the file size (from `lmfs stats --json`). Page cache is dropped before every
# cold and warm row (tmpfs — the store and the RAM-disk cache — is not dropped by drop_caches).
#
# Needs root, /dev/fuse, a CUDA GPU, python3 with torch and safetensors; the lmfs binary is a
# self-contained build (see bench/gpu-safetensors.sh). No node, redis-server or AWS CLI needed.
#
# usage: bench/gpu-table.sh LMFS_BINARY [SIZE_GB=4] [WORK_DIR=/var/tmp] [OUT_DIR] [-- MOUNT OPTIONS]
#   LMFS_TABLE_MODEL=FILE uses that safetensors file instead of generating one (runs back to back).
#   LMFS_TABLE_FORMAT="--block-size 0" adds options to `lmfs format` (here: a version 1 volume).
#   OUT_DIR gets table.md (the rows below), rows.jsonl, bench.json/bench.html and the mount logs.
set -euo pipefail
cd "$(dirname "$0")/.."
lmfs=$(readlink -f "$1"); size_gb=${2:-4}; base=${3:-/var/tmp}; out=${4:-}
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = "--" ] && shift; extra=("$@")
w=$(mktemp -d "$base/lmfs-table.XXXXXX"); mnt=$w/mnt; meta=sqlite://$w/meta.db
shm=$(mktemp -d /dev/shm/lmfs-table.XXXXXX)
out=${out:-$w/out}; mkdir -p "$out" "$mnt"
s3pid=""
cleanup() {
  set +e
  "$lmfs" umount "$mnt" >/dev/null 2>&1
  [ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null && wait "$s3pid" 2>/dev/null
  cp "$w"/*.log "$out"/ 2>/dev/null
  rm -rf "$w" "$shm"
}
trap cleanup EXIT INT TERM
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rows=$out/rows.jsonl; : > "$rows"

python3 bench/s3serve.py --root "$shm/s3" --port-file "$w/port" 2> "$w/s3serve.log" & s3pid=$!
for _ in $(seq 50); do [ -s "$w/port" ] && break; sleep 0.1; done
port=$(cat "$w/port"); mkdir -p "$shm/s3/bench"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

if [ -n "${LMFS_TABLE_MODEL:-}" ]; then # a model generated earlier (SIZE_GB is then ignored)
  mkdir -p "$w/src" && { ln "$LMFS_TABLE_MODEL" "$w/src/model.safetensors" 2>/dev/null || cp "$LMFS_TABLE_MODEL" "$w/src/model.safetensors"; }
else
  python3 bench/gpu_load.py generate "$w/src/model.safetensors" --size-gb "$size_gb" >&2
fi
bytes=$(stat -c %s "$w/src/model.safetensors")
# shellcheck disable=SC2086 # LMFS_TABLE_FORMAT is a list of options
"$lmfs" format "$meta" --storage "s3://bench/model?endpoint=http://127.0.0.1:$port" ${LMFS_TABLE_FORMAT:-} >/dev/null
t0=$(date +%s.%N)
"$lmfs" import "$meta" "$w/src/model.safetensors" /m/model.safetensors --no-progress >/dev/null
echo "{\"row\":\"import into s3serve\",\"GBps\":$(python3 -c "print(round($bytes/1e9/($(date +%s.%N)-$t0),2))")}" >> "$rows"

# The daemon's counters now: "CPU_SECONDS FETCHED_BYTES PEAK_RSS_KIB" (nothing when not mounted).
daemon() {
  local st pid
  st=$("$lmfs" stats "$mnt" --json 2>/dev/null) || return 0
  pid=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pid"])' "$st")
  echo "$(awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$pid/stat")" \
       "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["storeBytes"])' "$st")" \
       "$(awk '/VmHWM/{print $2}' "/proc/$pid/status")"
}
# Adds the daemon's CPU seconds and fetched bytes since BEFORE (a `daemon` line), and its peak RSS.
with_daemon() { # JSON BEFORE
  local after; after=$(daemon)
  [ -n "$after" ] || { echo "$1"; return; }
  python3 -c 'import json,sys
d=json.loads(sys.argv[1]); b=[float(x) for x in sys.argv[2].split()]; a=[float(x) for x in sys.argv[3].split()]; size=int(sys.argv[4])
d.update(mountCpuS=round(a[0]-b[0],2), peakRssMiB=int(a[2])//1024, fetchedOverSize=round((a[1]-b[1])/size,3)); print(json.dumps(d))' "$1" "$2" "$after" "$bytes"
}
# One GPU load; for an lmfs row, with the daemon's figures for that load alone (peak RSS: since mount).
load() { # FILE LABEL
  local before j; before=$(daemon)
  j=$(python3 bench/gpu_load.py load "$1" --label "$2")
  [ -n "$before" ] && j=$(with_daemon "$j" "$before")
  echo "$j" | tee -a "$rows" >&2
}
mount_it() { # CACHE_DIR LOG [OPTIONS]
  local c=$1 log=$2; shift 2
  "$lmfs" mount "$meta" "$mnt" --background --cache-dir "$c" --log-file "$w/$log.log" "${extra[@]}" "$@" >/dev/null
}
umount_it() { "$lmfs" umount "$mnt" >/dev/null; }
# Waits (up to 180 s) for the view a full read queues (passthrough), and records how long it took.
wait_view() { # LABEL
  local t0 st="{}"; t0=$(date +%s.%N)
  for _ in $(seq 1800); do
    st=$("$lmfs" stats "$mnt" --json 2>/dev/null) || { st="{}"; break; }
    python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s.get("views",0)>=1 and s.get("viewBuildsRunning",0)==0 else 1)' "$st" && break
    sleep 0.1
  done
  python3 -c 'import json,sys,time; s=json.loads(sys.argv[3]); print(json.dumps({"row": sys.argv[1], "seconds": round(time.time()-float(sys.argv[2]),2), "views": s.get("views",0), "viewBytes": s.get("viewBytes",0), "diskWritesSkipped": s.get("diskWritesSkipped"), "diskWritesRefilled": s.get("diskWritesRefilled"), "passthroughOpens": s.get("passthroughOpens")}))' \
    "$1" "$t0" "$st" | tee -a "$rows" >&2
}

drop; load "$w/src/model.safetensors" "local disk cold"
load "$w/src/model.safetensors" "local disk hot"

mount_it "$w/cache" disk
drop; load "$mnt/m/model.safetensors" "lmfs cold from S3, cache on disk"
load "$mnt/m/model.safetensors" "lmfs hot"
wait_view "view built after the cold load (disk)"
load "$mnt/m/model.safetensors" "lmfs hot, same mount, after the view"
umount_it
mount_it "$w/cache" disk-warm-nopt --passthrough off
drop; load "$mnt/m/model.safetensors" "lmfs warm, cache on disk, passthrough off"
load "$mnt/m/model.safetensors" "lmfs hot, passthrough off"
umount_it
mount_it "$w/cache" disk-warm
drop; load "$mnt/m/model.safetensors" "lmfs warm, cache on disk"
load "$mnt/m/model.safetensors" "lmfs hot (passthrough)"
umount_it; rm -rf "$w/cache"

mount_it "$w/nocache" nocache --cache-size 0
drop; load "$mnt/m/model.safetensors" "lmfs cold from S3, disk cache off"
umount_it

mount_it "$shm/cache" ram
drop; load "$mnt/m/model.safetensors" "lmfs cold from S3, cache on tmpfs"
wait_view "view built after the cold load (tmpfs)"
umount_it
mount_it "$shm/cache" ram-warm-nopt --passthrough off
drop; load "$mnt/m/model.safetensors" "lmfs warm, cache on tmpfs, passthrough off"
umount_it
mount_it "$shm/cache" ram-warm
drop; load "$mnt/m/model.safetensors" "lmfs warm, cache on tmpfs"
umount_it
# The ceiling of that row: the same view file read directly, after the same drop (drop_caches slows
# later mmap reads of tmpfs files: measured on the VM, 6 GB/s before a drop, 1.5 after).
view=$(ls "$shm"/cache/files/* 2>/dev/null | head -1)
[ -n "$view" ] && { drop; load "$view" "tmpfs view file read directly, no FUSE"; }
rm -rf "$shm/cache"

# 8 readers, each `cat` of the whole file, cache off: bytes fetched, CPU, peak RSS.
mount_it "$w/nocache" readers8 --cache-size 0
drop; before=$(daemon); t0=$(date +%s.%N)
cats=(); for _ in $(seq 8); do cat "$mnt/m/model.safetensors" > /dev/null & cats+=($!); done
wait "${cats[@]}" # not a bare wait: s3serve is a background job of this shell too
t1=$(date +%s.%N)
with_daemon "{\"label\": \"lmfs cold cat, 8 readers, disk cache off\", \"seconds\": $(python3 -c "print(round($t1-$t0,2))"), \"GBps\": $(python3 -c "print(round($bytes/1e9/($t1-$t0),3))")}" "$before" | tee -a "$rows" >&2
umount_it
grep -hiE "error|warn" "$w"/*.log | head -5 >&2 || true

# Ceilings of the store and the local disk, and lmfs bench's own cold figures (1 and 8 readers).
"$lmfs" bench "$meta" /m/model.safetensors --readers 8 --phases cold --random-reads 100 --cache-size 0 \
  --local-dir "$w" --json-file "$out/bench.json" --html "$out/bench.html" "${extra[@]}" >&2

python3 - "$rows" "$out/bench.json" "$bytes" <<'EOF' | tee "$out/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bench = json.load(open(sys.argv[2]))
size = int(sys.argv[3])
by = {r.get("label", r.get("row")): r for r in rows}
def g(label): return by.get(label, {}).get("GBps")
def find(d, *keys):
    for k in keys:
        if isinstance(d, dict):
            d = next((v for kk, v in d.items() if kk.lower() == k.lower()), None)
    return d
store16 = find(bench, "ceilings", "store", "parallel", "mbps")
store16 = store16 / 1000 if store16 else None
local_hot = g("local disk hot")
print(f"model {size/1e9:.2f} GB; store ceiling (16 parallel GETs of whole chunk objects, lmfs bench): {store16 and round(store16, 2)} GB/s\n")
print("| row | GB/s | ratio | first tensor ms | mount CPU s/GB | peak RSS MiB | fetched/size |")
print("| --- | --- | --- | --- | --- | --- | --- |")
ref = {"local disk cold": None, "local disk hot": None,
       "lmfs cold from S3, cache on disk": ("local hot", local_hot), "lmfs hot": ("local hot", local_hot),
       "lmfs warm, cache on disk": ("local cold", g("local disk cold")),
       "lmfs cold from S3, disk cache off": ("local hot", local_hot),
       "lmfs cold from S3, cache on tmpfs": ("local hot", local_hot), "lmfs warm, cache on tmpfs": ("local hot", local_hot),
       "lmfs warm, cache on disk, passthrough off": ("local cold", g("local disk cold")), "lmfs hot, passthrough off": ("local hot", local_hot),
       "lmfs hot (passthrough)": ("local hot", local_hot), "lmfs warm, cache on tmpfs, passthrough off": ("local hot", local_hot),
       "tmpfs view file read directly, no FUSE": ("local hot", local_hot), "lmfs hot, same mount, after the view": ("local hot", local_hot),
       "lmfs cold cat, 8 readers, disk cache off": ("store 16 GETs", store16)}
for r in rows:
    label = r.get("label", r.get("row"))
    gb = r.get("GBps")
    rf = ref.get(label)
    ratio = f"{gb / rf[1]:.2f} of {rf[0]}" if rf and rf[1] and gb else ""
    cpu = f"{r['mountCpuS'] / (size / 1e9):.2f}" if "mountCpuS" in r else ""
    print(f"| {label} | {gb} | {ratio} | {r.get('first_tensor_ms', '')} | {cpu} | {r.get('peakRssMiB', '')} | {r.get('fetchedOverSize', '')} |")
tv, wt = g("tmpfs view file read directly, no FUSE"), g("lmfs warm, cache on tmpfs")
if tv and wt:
    print(f"\nwarm from tmpfs (passthrough) / the view file read directly: {wt / tv:.2f}")
cold_off, cold_disk = g("lmfs cold from S3, disk cache off"), g("lmfs cold from S3, cache on disk")
if cold_off and cold_disk:
    print(f"\ncold with the cache on disk / cold with the cache off: {cold_disk / cold_off:.2f}")
EOF
