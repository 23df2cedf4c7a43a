#!/usr/bin/env bash
# The side-by-side benchmark: lmfs against rclone mount (vfs-cache-mode full) and s3fs (use_cache),
# over the same bytes, against the same s3rver, in one run.
#
#  1. starts redis-server and s3rver on free loopback ports (stopped by pid on any exit);
#  2. generates a random file (1 GiB) and a synthetic safetensors model (~2 GiB, Llama-like shapes);
#  3. imports both into an lmfs volume (Redis metadata, S3 chunks) and uploads them as plain objects
#     with the AWS CLI for the peers;
#  4. runs `lmfs bench` on an lmfs mount (ceilings included), then the same phases on rclone and
#     s3fs (their cold/warm resets by bench/peer-mount.sh);
#  5. prints one side-by-side table (also as Markdown in OUT/compare.md) and leaves the JSON and
#     HTML reports in OUT.
# Every mount and process it started is removed on exit, also on Ctrl-C or failure.
#
# usage: [LMFS_BIN=.publish/r2r/lmfs] sudo bench/compare.sh [--size-mib 1024] [--model-mib 2048] [--out DIR] [--peers "rclone s3fs"]
#                              [--random-reads 200] [--runs 1] [-- EXTRA lmfs mount OPTIONS]
# needs: root (drop_caches, mount) and scripts/setup.sh done; rclone and s3fs are installed with apt-get if missing
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
size_mib=1024; model_mib=2048; out=""; peers="rclone s3fs"; random_reads=200; runs=1; mount_opts=()
while [ $# -gt 0 ]; do
  case $1 in
    --size-mib) size_mib=$2; shift 2 ;;
    --model-mib) model_mib=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --peers) peers=$2; shift 2 ;;
    --random-reads) random_reads=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --) shift; mount_opts=("$@"); break ;;
    *) echo "compare.sh: unknown argument '$1' (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "compare.sh: needs root (drop_caches and mounts)" >&2; exit 1; }
for p in $peers; do
  command -v "$p" >/dev/null && continue
  echo "compare.sh: installing $p (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null || { echo "compare.sh: cannot install $p; install it or leave it out with --peers" >&2; exit 1; }
done
[ -f scripts/s3rver/node_modules/s3rver/bin/s3rver.js ] || { echo "compare.sh: run scripts/setup.sh first" >&2; exit 1; }

# LMFS_BIN: another lmfs to run (e.g. the ReadyToRun single-file build, as shipped); default the Release build.
lmfs() { if [ -n "${LMFS_BIN:-}" ]; then "$LMFS_BIN" "$@"; else dotnet "$repo/src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll" "$@"; fi; }
work=$(mktemp -d /var/tmp/lmfs-compare.XXXXXX)
out=${out:-$repo/artifacts/bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" "$work/mnt/lmfs"
redis_pid=""; s3_pid=""
export PEER_WORK=$work PEER_BUCKET=bench PEER_PREFIX=plain
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required

cleanup() {
  set +e
  lmfs umount "$work/mnt/lmfs" >/dev/null 2>&1
  for p in rclone s3fs; do [ -n "${PEER_ENDPOINT:-}" ] && bench/peer-mount.sh "$p" umount >/dev/null 2>&1; done
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null
  wait 2>/dev/null
  grep -q " $work/" /proc/mounts && { echo "compare.sh: a mount under $work is still there" >&2; return; }
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "compare.sh: nothing listens on $1" >&2; exit 1; }

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null 2>&1 &
redis_pid=$!
sport=$(free_port)
mkdir -p "$work/s3"
node scripts/s3rver/node_modules/s3rver/bin/s3rver.js -d "$work/s3" -a 127.0.0.1 -p "$sport" -s --configure-bucket bench >/dev/null 2>&1 &
s3_pid=$!
wait_port "$rport"; wait_port "$sport"
export PEER_ENDPOINT=http://127.0.0.1:$sport
meta="redis://127.0.0.1:$rport/0?volume=bench"

echo "== generating a ${size_mib} MiB random file and a ~${model_mib} MiB safetensors model"
mkdir -p "$work/src"
head -c $((size_mib << 20)) /dev/urandom > "$work/src/random.bin"
python3 scripts/gen_safetensors.py "$work/src/model" --size-mb "$model_mib" | tail -1
cp "$work/src/model/model.safetensors" "$work/src/model.safetensors" && rm -rf "$work/src/model"

echo "== importing into lmfs (Redis + S3) and uploading plain objects for the peers"
lmfs format "$meta" --storage s3://bench/lmfs --endpoint "$PEER_ENDPOINT" >/dev/null
lmfs import "$meta" "$work/src/random.bin" "$work/src/model.safetensors" /bench/ --no-progress | tail -1
aws --endpoint-url "$PEER_ENDPOINT" s3 cp --quiet "$work/src/random.bin" s3://bench/plain/random.bin
aws --endpoint-url "$PEER_ENDPOINT" s3 cp --quiet "$work/src/model.safetensors" s3://bench/plain/model.safetensors
rm -f "$work/src/model.safetensors"  # the random file stays: every peer's bytes are checked against it

common=(--random-reads "$random_reads" --runs "$runs" --server-pid "$s3_pid")
fresh=()
echo "== lmfs"
lmfs mount "$meta" "$work/mnt/lmfs" --background --cache-dir "$work/cache-lmfs" --log-file "$work/lmfs.log" "${mount_opts[@]}" >/dev/null
cmp "$work/mnt/lmfs/bench/random.bin" "$work/src/random.bin" && echo "lmfs: bytes verified with cmp"
lmfs bench "$work/mnt/lmfs/bench/random.bin" --safetensors "$work/mnt/lmfs/bench/model.safetensors" "${common[@]}" \
  --aws-baseline s3://bench/plain/model.safetensors --aws-endpoint "$PEER_ENDPOINT" \
  --local-dir "$work/cache-lmfs" --json-file "$out/lmfs.json" --html "$out/lmfs.html"
lmfs umount "$work/mnt/lmfs" >/dev/null
lmfs mount "$meta" "$work/mnt/lmfs" --background --cache-dir "$work/cache-fresh" --log-file "$work/lmfs-fresh.log" "${mount_opts[@]}" >/dev/null
fresh+=("lmfs $(python3 bench/first_mib.py "$work/mnt/lmfs/bench/random.bin") ms")
lmfs umount "$work/mnt/lmfs" >/dev/null
reports=("$out/lmfs.json")

for p in $peers; do
  echo "== $p"
  bench/peer-mount.sh "$p" mount
  cmp "$work/mnt/$p/random.bin" "$work/src/random.bin" && echo "$p: bytes verified with cmp"
  lmfs bench "$work/mnt/$p/random.bin" --safetensors "$work/mnt/$p/model.safetensors" "${common[@]}" \
    --system "$p" --no-ceilings --cold-cmd "$repo/bench/peer-mount.sh $p cold" --warm-cmd "$repo/bench/peer-mount.sh $p warm" \
    --json-file "$out/$p.json" --html "$out/$p.html"
  bench/peer-mount.sh "$p" cold
  fresh+=("$p $(python3 bench/first_mib.py "$work/mnt/$p/random.bin") ms")
  bench/peer-mount.sh "$p" umount
  reports+=("$out/$p.json")
done

echo "== side by side (ceilings from the lmfs run; same machine, same s3rver)"
lmfs bench compare "${reports[@]}"
lmfs bench compare "${reports[@]}" --markdown > "$out/compare.md"
{ echo; echo "open + first MiB on a freshly started mount, nothing cached: $(IFS=,; echo "${fresh[*]}" | sed 's/,/, /g')"; } | tee -a "$out/compare.md"
{ echo; echo "versions: $(lmfs --version 2>/dev/null | head -1) / $(rclone version 2>/dev/null | head -1) / $(s3fs --version 2>/dev/null | head -1) / s3rver $(node -p 'require("./scripts/s3rver/node_modules/s3rver/package.json").version') / $(aws --version 2>&1)"; } >> "$out/compare.md"
echo "reports: $out (lmfs.html, compare.md, *.json)"
