#!/usr/bin/env bash
# Import throughput into s3rver: `lmfs import` against `aws s3 cp` of the same file to the same
# server, alternating, fresh server data dir per run. Prints medians and the ratio.
# usage: bench/import.sh [SIZE_MB=1024] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}; runs=${2:-3}
work=$(mktemp -d /tmp/lmfs-bench-import.XXXXXX)
s3pid=""
cleanup() { [ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

lmfs() { dotnet src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_s3() {
  [ -n "$s3pid" ] && { kill "$s3pid"; wait "$s3pid" 2>/dev/null || true; }
  rm -rf "$work/s3" && mkdir -p "$work/s3"
  port=$(free_port)
  node scripts/s3rver/node_modules/s3rver/bin/s3rver.js -d "$work/s3" -a 127.0.0.1 -p "$port" -s --configure-bucket bench >/dev/null 2>&1 &
  s3pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
  echo "s3rver did not start" >&2; exit 1
}
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required

head -c $((size_mb << 20)) /dev/urandom > "$work/file.bin"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }
aws_t=(); lmfs_t=()
for i in $(seq "$runs"); do
  start_s3
  aws_t+=("$(secs aws --endpoint-url "http://127.0.0.1:$port" s3 cp --quiet "$work/file.bin" "s3://bench/aws/file.bin")")
  start_s3
  lmfs format "sqlite://$work/meta$i.db" --storage "s3://bench/lmfs" --endpoint "http://127.0.0.1:$port" >/dev/null
  lmfs_t+=("$(secs lmfs import "sqlite://$work/meta$i.db" "$work/file.bin" /file.bin --no-progress)")
  echo "run $i: aws s3 cp ${aws_t[-1]} s, lmfs import ${lmfs_t[-1]} s" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
am=$(median "${aws_t[@]}"); lm=$(median "${lmfs_t[@]}")
printf 'size %d MiB, %d runs (median)\n' "$size_mb" "$runs"
awk -v s="$size_mb" -v a="$am" -v l="$lm" 'BEGIN {
  printf "aws s3 cp upload: %.2f s, %.0f MB/s\n", a, s * 1.048576 / a
  printf "lmfs import:      %.2f s, %.0f MB/s\n", l, s * 1.048576 / l
  printf "ratio lmfs/aws:   %.2f\n", a / l }'
