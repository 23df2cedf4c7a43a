#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, then builds (Release).
# Idempotent: a second run installs nothing and only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)
ldconfig -p 2>/dev/null | grep -q 'libzstd.so.1 ' || need+=(libzstd1)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v dotnet >/dev/null; then
  echo "setup: error: the .NET SDK 10 is required (https://dot.net); install it and run again" >&2
  exit 1
fi

# s3rver, the local S3 server used by tests and benchmarks, pinned by the committed lock file.
if [ ! -f scripts/s3rver/node_modules/s3rver/bin/s3rver.js ]; then
  echo "setup: installing s3rver (npm ci)"
  (cd scripts/s3rver && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "setup: building (Release)"
dotnet build LazyModelFs.sln -c Release -nologo -v q -clp:ErrorsOnly
