#!/usr/bin/env bash
# bench/gpu-table.sh several times back to back on one generated model, for before/after tables
# in one sitting. Each RUN is LABEL=BINARY[@MAX_PAGES_LIMIT]: the fs.fuse.max_pages_limit to set
# for that run (restored at the end).
# usage: bench/gpu-ab.sh SIZE_GB OUT_DIR RUN...
set -euo pipefail
cd "$(dirname "$0")/.."
size_gb=$1; out=$2; shift 2
model=/var/tmp/lmfs-ab-model-$size_gb.safetensors
[ -f "$model" ] || python3 bench/gpu_load.py generate "$model" --size-gb "$size_gb" >&2
limit=/proc/sys/fs/fuse/max_pages_limit; old=$(cat "$limit" 2>/dev/null || true)
trap '[ -n "$old" ] && echo "$old" > "$limit"' EXIT
for run in "$@"; do
  label=${run%%=*}; rest=${run#*=}; bin=${rest%@*}; pages=""; [ "$rest" != "$bin" ] && pages=${rest##*@}
  [ -n "$pages" ] && echo "$pages" > "$limit"
  echo "=== $label ($bin, max_pages_limit $(cat "$limit" 2>/dev/null || echo n/a))" >&2
  LMFS_TABLE_MODEL=$model bench/gpu-table.sh "$bin" "$size_gb" /var/tmp "$out/$label" > "$out/$label.md" 2> "$out/$label.log" || echo "run $label failed: see $out/$label.log" >&2
  [ -n "$old" ] && echo "$old" > "$limit"
done
