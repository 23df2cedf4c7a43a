#!/usr/bin/env bash
# Sweeps the read-path settings one at a time against redis-server + s3rver on loopback, with
# `lmfs bench` (cold and warm phases, ceilings measured in every run), and prints one side-by-side
# table per setting: chunk size, block size (format v2 block hashes; 0 = version 1), --demand-parts,
# --max-fetches, --readahead, --threads, --readahead-kb, --prefetch.
# docs/benchmarks.md ("Tuning") records the last run and the defaults chosen from it.
# Stops every process it started and removes its files on any exit.
#
# usage: sudo bench/tune.sh [--size-mib 1024] [--model-mib 1024] [--random-reads 100] [--out DIR] [--only "chunk fetches …"]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
size_mib=1024; model_mib=1024; random_reads=100; out=""; only="chunk block parts fetches readahead threads kernel prefetch"
while [ $# -gt 0 ]; do
  case $1 in
    --size-mib) size_mib=$2; shift 2 ;;
    --model-mib) model_mib=$2; shift 2 ;;
    --random-reads) random_reads=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "tune.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "tune.sh: needs root (drop_caches and mounts)" >&2; exit 1; }
lmfs() { dotnet "$repo/src/LazyModelFs.Cli/bin/Release/net10.0/lmfs.dll" "$@"; }
work=$(mktemp -d /var/tmp/lmfs-tune.XXXXXX)
out=${out:-$repo/artifacts/tune-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
redis_pid=""; s3_pid=""
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
cleanup() {
  set +e
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "tune.sh: nothing listens on $1" >&2; exit 1; }
rport=$(free_port); sport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null 2>&1 &
redis_pid=$!
mkdir -p "$work/s3"
node scripts/s3rver/node_modules/s3rver/bin/s3rver.js -d "$work/s3" -a 127.0.0.1 -p "$sport" -s --configure-bucket tune >/dev/null 2>&1 &
s3_pid=$!
wait_port "$rport"; wait_port "$sport"

mkdir -p "$work/src"
head -c $((size_mib << 20)) /dev/urandom > "$work/src/random.bin"
python3 scripts/gen_safetensors.py "$work/src/m" --size-mb "$model_mib" >/dev/null
mv "$work/src/m/model.safetensors" "$work/src/model.safetensors"; rm -rf "$work/src/m"

volume() {  # $1: chunk size, $2: block size (default 256K) → prints the metadata URL of a volume holding both files
  local block=${2:-256K}
  local url="redis://127.0.0.1:$rport/0?volume=c$1b$block"
  if ! lmfs stat "$url" / >/dev/null 2>&1; then
    lmfs format "$url" --storage "s3://tune/c$1b$block" --endpoint "http://127.0.0.1:$sport" --chunk-size "$1" --block-size "$block" >/dev/null
    lmfs import "$url" "$work/src/random.bin" "$work/src/model.safetensors" /t/ --no-progress >/dev/null
  fi
  echo "$url"
}
run() {  # $1: label, $2: metadata URL, rest: extra bench/mount options
  local label=$1 url=$2; shift 2
  echo "tune: $label" >&2
  lmfs bench "$url" /t/random.bin --phases cold,warm --random-reads "${rr:-$random_reads}" --server-pid "$s3_pid" \
    --system "$label" --json-file "$out/$label.json" "$@" >/dev/null 2>"$out/$label.log" || { echo "tune: $label failed, see $out/$label.log" >&2; return 1; }
}
table() {  # $1: title, rest: labels
  local title=$1; shift
  local files=()
  for l in "$@"; do files+=("$out/$l.json"); done
  { echo; echo "### $title"; echo; lmfs bench compare "${files[@]}" --markdown; } | tee -a "$out/tune.md"
}

v4=$(volume 4M)
for s in $only; do
  case $s in
    chunk)
      for cs in 1M 2M 4M 8M 16M; do run "chunk-$cs" "$(volume "$cs")"; done
      table "chunk size (format --chunk-size)" chunk-1M chunk-2M chunk-4M chunk-8M chunk-16M ;;
    block)
      for b in 0 64K 256K 1M; do run "block-$b" "$(volume 4M "$b")"; done
      table "block size (format --block-size; 0: version 1, whole chunks)" block-0 block-64K block-256K block-1M ;;
    parts)
      for n in 1 2 4 8; do run "demand-parts-$n" "$v4" --demand-parts "$n"; done
      table "--demand-parts" demand-parts-1 demand-parts-2 demand-parts-4 demand-parts-8 ;;
    fetches)
      for n in 8 16 32 64; do run "fetches-$n" "$v4" --max-fetches "$n"; done
      table "--max-fetches" fetches-8 fetches-16 fetches-32 fetches-64 ;;
    readahead)
      for r in 32M 128M 512M; do run "readahead-$r" "$v4" --readahead "$r"; done
      table "--readahead" readahead-32M readahead-128M readahead-512M ;;
    threads)
      for t in 2 4 8; do run "threads-$t" "$v4" --threads "$t"; done
      table "--threads (FUSE readers)" threads-2 threads-4 threads-8 ;;
    kernel)
      for k in 128 4096 16384 65536; do run "readahead-kb-$k" "$v4" --readahead-kb "$k"; done
      table "--readahead-kb (kernel)" readahead-kb-128 readahead-kb-4096 readahead-kb-16384 readahead-kb-65536 ;;
    prefetch)
      for p in none sequential safetensors whole-file; do rr=20 run "prefetch-$p" "$v4" --prefetch "$p" --safetensors /t/model.safetensors --no-ceilings; done
      table "--prefetch (safetensors load, cold and warm)" prefetch-none prefetch-sequential prefetch-safetensors prefetch-whole-file ;;
    *) echo "tune.sh: unknown sweep '$s'" >&2; exit 2 ;;
  esac
done
echo "tables: $out/tune.md"
