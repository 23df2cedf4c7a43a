#!/usr/bin/env bash
# N lmfs mounts on this host cold-read one file at once, without a cache group and then in one (issue
# 15, first step: static --peers on loopback; bench/fleet.sh with network namespaces is not built yet).
# Reports the wall time for all N, and the object store's bytes (the mounts' storeBytes − peerBytes) per
# file byte. redis-server and s3rver on free loopback ports, stopped by pid on exit; every copy checked.
# usage: [LMFS_BIN=path/to/lmfs] sudo bench/peers-local.sh [N] [SIZE_MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
n=${1:-4}; size_mib=${2:-512}; rounds=${3:-2}
W=$(mktemp -d /var/tmp/lmfs-peers.XXXXXX)
. bench/servers.sh
start_servers $W
if [ -n "${LMFS_BIN:-}" ]; then lmfs() { "$LMFS_BIN" "$@"; }; else lmfs() { dotnet $repo/src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll "$@"; }; fi
cleanup() {
  set +e
  for i in $(seq 1 $n); do lmfs umount $W/mnt$i >/dev/null 2>&1; done
  stop_servers
  rm -rf $W
}
trap cleanup EXIT
trap 'exit 130' INT TERM
sleep 2
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
export LMFS_PEER_SECRET=$(head -c 32 /dev/urandom | base64)
META=redis://127.0.0.1:$rport/0?volume=p
head -c $((size_mib << 20)) /dev/urandom > $W/f.bin
want=$(sha256sum < $W/f.bin | cut -d' ' -f1)
lmfs format $META --storage s3://bkt/p --endpoint http://127.0.0.1:$port >/dev/null
lmfs import $META $W/f.bin /d/f.bin --no-progress >/dev/null
run() { # LABEL ROUND [peers]
  local label=$1 round=$2 group=${3:-}
  local ports=() members=""
  for i in $(seq 1 $n); do ports+=($(free_port)); done
  for i in $(seq 1 $n); do members+="${members:+,}127.0.0.1:${ports[$((i-1))]}"; done
  for i in $(seq 1 $n); do
    mkdir -p $W/mnt$i
    local extra=()
    [ -n "$group" ] && extra=(--peer-listen 127.0.0.1:${ports[$((i-1))]} --peers $members)
    lmfs mount $META $W/mnt$i --background --cache-dir $W/cache-$label-$round-$i --log-file $W/$label-$i.log "${extra[@]}" >/dev/null
  done
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0; t0=$(date +%s.%N)
  local pids=()
  for i in $(seq 1 $n); do (sha256sum < $W/mnt$i/d/f.bin | cut -d' ' -f1 > $W/sum$i) & pids+=($!); done
  wait "${pids[@]}" # only the readers: s3rver and redis-server are jobs of this shell too
  local t1; t1=$(date +%s.%N)
  for i in $(seq 1 $n); do [ "$(cat $W/sum$i)" = "$want" ] || { echo "node $i read other bytes" >&2; exit 1; }; done
  local stats=()
  for i in $(seq 1 $n); do stats+=("$(lmfs stats $W/mnt$i --json)"); lmfs umount $W/mnt$i >/dev/null; done
  python3 - "$label" "$n" "$size_mib" "$t0" "$t1" "${stats[@]}" <<'PY'
import json, sys
label, n, size_mib, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
st = [json.loads(s) for s in sys.argv[6:]]
store = sum(s["storeBytes"] - s.get("peerBytes", 0) for s in st)
peer = sum(s.get("peerBytes", 0) for s in st)
errs = sum(s.get("peerErrors", 0) for s in st)
print(f"{label:<14} {n} nodes x {size_mib} MiB: all done in {t1 - t0:6.2f} s; store bytes / file {store / (size_mib << 20):5.2f}; "
      f"from peers {peer >> 20} MiB; peer errors {errs}")
PY
}
echo "== $n mounts on one host, one ${size_mib} MiB file read at once by each (sha256sum), cold"
for r in $(seq 1 $rounds); do
  run "alone" $r
  run "group" $r peers
done
