#!/usr/bin/env bash
# Open + the first MiB of a 64 MiB file on a mount started just now, nothing cached (a new pod), three
# times each: lmfs as the framework-dependent build (dotnet lmfs.dll, JIT), lmfs as the ReadyToRun
# single-file build that ships (R2R_BIN, default .publish/r2r/lmfs: dotnet publish -r linux-x64
# --self-contained -p:PublishSingleFile=true), and rclone mount (bench/peer-mount.sh). redis-server
# and s3rver on free loopback ports, stopped by pid on exit; the page cache dropped before each read.
# usage: sudo bench/fresh-mount.sh   (needs scripts/setup.sh done, the Release build, rclone and the AWS CLI)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
W=$(mktemp -d /var/tmp/lmfs-fresh.XXXXXX); mkdir -p $W/s3 $W/mnt $W/lm
. bench/servers.sh
start_servers $W
jit() { dotnet $repo/src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll "$@"; }
r2r() { "${R2R_BIN:-$repo/.publish/r2r/lmfs}" "$@"; }
cleanup() {
  set +e
  jit umount $W/lm >/dev/null 2>&1
  PEER_WORK=$W PEER_ENDPOINT=x PEER_BUCKET=x PEER_PREFIX=x bench/peer-mount.sh rclone umount >/dev/null 2>&1
  stop_servers
  rm -rf $W
}
trap cleanup EXIT
trap 'exit 130' INT TERM
sleep 2
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
META=redis://127.0.0.1:$rport/0?volume=x
head -c $((64<<20)) /dev/urandom > $W/f.bin
jit format $META --storage s3://bkt/p --endpoint http://127.0.0.1:$port >/dev/null
jit import $META $W/f.bin /d/f.bin --no-progress >/dev/null
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
aws --endpoint-url http://127.0.0.1:$port s3 cp --quiet $W/f.bin s3://bkt/plain/f.bin
export PEER_WORK=$W PEER_ENDPOINT=http://127.0.0.1:$port PEER_BUCKET=bkt PEER_PREFIX=plain
for run in 1 2 3; do
  for b in jit r2r; do
    $b mount $META $W/lm --background --cache-dir $W/cache-$b-$run --log-file $W/$b.log >/dev/null
    echo "$b run $run: $(python3 bench/first_mib.py $W/lm/d/f.bin) ms"
    $b umount $W/lm >/dev/null
  done
  $repo/bench/peer-mount.sh rclone cold
  echo "rclone run $run: $(python3 bench/first_mib.py $W/mnt/rclone/f.bin) ms"
  $repo/bench/peer-mount.sh rclone umount
done
