#!/usr/bin/env bash
# The main job on the embedded default: sets up, formats a volume (SQLite metadata + a local
# object directory, under ./.lmfs-demo), imports a generated safetensors model, reads it back
# through the chunk store, then mounts the volume and reads the model through the mount — cold
# (chunks fetched from the object store), warm (after a remount, page cache dropped) and hot — checking
# every byte against the source. Mounting needs root and /dev/fuse; without them that part is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
lmfs() { dotnet src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll "$@"; }
demo=$PWD/.lmfs-demo
meta=sqlite://$demo/meta.db
rm -rf "$demo" && mkdir -p "$demo"

echo "== generate a synthetic model"
python3 scripts/gen_safetensors.py "$demo/src/demo-model" --size-mb 96
echo "== lmfs format"
lmfs format "$meta" --storage "file://$demo/objects"
echo "== lmfs import"
lmfs import "$meta" "$demo/src/demo-model" /models/ --no-progress
echo "== lmfs ls -l /models/demo-model"
lmfs ls -l "$meta" /models/demo-model
echo "== lmfs stat /models/demo-model/model.safetensors"
lmfs stat "$meta" /models/demo-model/model.safetensors
echo "== read back through the chunk store (lmfs cat) and compare"
for f in model.safetensors config.json tokenizer.json; do
  want=$(sha256sum < "$demo/src/demo-model/$f" | cut -d' ' -f1)
  got=$(lmfs cat "$meta" "/models/demo-model/$f" | sha256sum | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "demo: MISMATCH for $f ($got != $want)" >&2; exit 1; }
  echo "  $f: sha256 $got matches the source"
done
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then
  echo "demo: skipping the mount (needs root and /dev/fuse)"
  echo "demo OK: volume in $demo"
  exit 0
fi

mnt=$demo/mnt; cache=$demo/cache
mkdir -p "$mnt"
trap 'lmfs umount "$mnt" >/dev/null 2>&1 || true' EXIT
want=$(sha256sum < "$demo/src/demo-model/model.safetensors" | cut -d' ' -f1)
read_through_mount() {  # $1: label
  local t0 t1 got
  t0=$(date +%s.%N); got=$(sha256sum < "$mnt/models/demo-model/model.safetensors" | cut -d' ' -f1); t1=$(date +%s.%N)
  [ "$got" = "$want" ] || { echo "demo: MISMATCH through the mount ($got != $want)" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" -v l="$1" 'BEGIN { printf "  %s read: sha256 matches, %.2f s\n", l, b - a }'
}
echo "== lmfs mount (cold: empty cache)"
lmfs mount "$meta" "$mnt" --background --cache-dir "$cache" --log-file "$demo/mount.log"
ls -l "$mnt/models/demo-model"
read_through_mount cold
lmfs umount "$mnt"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
echo "== lmfs mount again (warm: remounted, page cache dropped)"
echo "   (the demo's object directory shares a disk with the cache, so lmfs reads it in place and caches"
echo "    nothing; with S3 or another disk the chunks would come from the cache: see docs/architecture.md)"
for _ in $(seq 50); do grep -q " $mnt " /proc/mounts || break; sleep 0.1; done
lmfs mount "$meta" "$mnt" --background --cache-dir "$cache" --log-file "$demo/mount.log"
read_through_mount warm
read_through_mount hot
lmfs cache stats --cache-dir "$cache"
lmfs umount "$mnt"
trap - EXIT
echo "demo OK: volume in $demo"
