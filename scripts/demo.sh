#!/usr/bin/env bash
# The main job on the embedded default: sets up, formats a volume (SQLite metadata + a local
# object directory, under ./.lmfs-demo), imports a generated safetensors model, and reads it back
# through the chunk store, verifying every byte against the source.
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
echo "demo OK: volume in $demo"
