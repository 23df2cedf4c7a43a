#!/usr/bin/env bash
# Record on one node, replay on another (issue 17): a 1 GiB file read whole in a shuffled order of
# 4 MiB pieces, cold, by one reader (bench/shuffled_read.py: the same order each run, every piece
# checked against the source):
#   1. node A, nothing recorded yet (its load records the profile)
#   2. node B, a new mount with an empty cache of its own, replaying A's profile (--prefetch auto)
#   3. node C, the same with --prefetch sequential (no replay): the load without a profile again
#   4. node D, the file read in file order (--prefetch sequential --record off): one sequential reader, for scale
# redis-server and s3rver on free loopback ports, stopped by pid on exit; RUNS rounds of 2-3.
# usage: [LMFS_BIN=path/to/lmfs] sudo bench/replay.sh [SIZE_MIB] [RUNS]   (needs scripts/setup.sh done, the Release build)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
size_mib=${1:-1024}; runs=${2:-2}
W=$(mktemp -d /var/tmp/lmfs-replay.XXXXXX); mkdir -p $W/s3 $W/mnt
. bench/servers.sh
start_servers $W
if [ -n "${LMFS_BIN:-}" ]; then lmfs() { "$LMFS_BIN" "$@"; }; else lmfs() { dotnet $repo/src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll "$@"; }; fi
cleanup() {
  set +e
  lmfs umount $W/mnt >/dev/null 2>&1
  stop_servers
  rm -rf $W
}
trap cleanup EXIT
trap 'exit 130' INT TERM
sleep 2
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
META=redis://127.0.0.1:$rport/0?volume=r
head -c $((size_mib << 20)) /dev/urandom > $W/f.bin
lmfs format $META --storage s3://bkt/p --endpoint http://127.0.0.1:$port >/dev/null
lmfs import $META $W/f.bin /d/f.bin --no-progress >/dev/null
load() { # NAME CACHE SEED [mount options...]
  local name=$1 cache=$2 seed=$3; shift 3
  lmfs mount $META $W/mnt --background --cache-dir $W/$cache --log-file $W/$cache.log "$@" >/dev/null
  local s; s=$(python3 bench/shuffled_read.py $W/mnt/d/f.bin $W/f.bin $((4 << 20)) $seed)
  local st; st=$(lmfs stats $W/mnt --json)
  lmfs umount $W/mnt >/dev/null
  python3 - "$name" "$s" "$st" <<'PY'
import json, sys
name, secs, st = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
issued, used = st.get("prefetchIssuedBytes", 0), st.get("prefetchUsedBytes", 0)
print(f"{name:<34} {secs:6.2f} s  replays {st.get('profileReplays', 0)}  recorded {st.get('profilesRecorded', 0)}  "
      f"replaced {st.get('profilesReplaced', 0)}  kept {st.get('profilesKept', 0)}  prefetched {issued >> 20} MiB, unused {(issued - used) >> 20} MiB  "
      f"fetched {st.get('storeBytes', 0) >> 20} MiB, READ {st.get('readBytes', 0) >> 20} MiB")
PY
}
echo "== $size_mib MiB, 4 MiB pieces in a shuffled order, one reader, cold; ceiling: s3rver on loopback"
for run in $(seq 1 $runs); do
  if [ "$run" = 1 ]; then load "A: first load (records)" a$run 1; fi
  load "B: new node, replaying the profile" b$run 1
  load "C: new node, --prefetch sequential" c$run 1 --prefetch sequential
  load "D: file order, no replay (for scale)" d$run 0 --prefetch sequential --record off
done
lmfs stat $META /d/f.bin | grep profiles
