#!/usr/bin/env bash
# Runs every test project (Release) and prints one plain line: "N passed, N failed, N skipped".
# Mount tests need root and /dev/fuse; they say why when they skip.
# -m:1 runs the test projects one after another (xunit still runs a project's classes in parallel):
# the mount-heavy projects (Mount, Cli, Csi, Bench) start redis-server, s3rver and lmfs daemons as
# root, and the bench drops the page cache, so running them side by side would only multiply the
# load on the machine (all at once on a many-core runner) and make their bounded-time checks flaky.
set -uo pipefail
cd "$(dirname "$0")/.."
results=TestResults
rm -rf "$results"
dotnet test LazyModelFs.sln -c Release -nologo -m:1 --logger "trx" --results-directory "$results" "$@"
rc=$?
passed=0; failed=0; skipped=0
for f in "$results"/*.trx; do
  [ -f "$f" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$f" | head -1)
  get() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  total=$(get total); executed=$(get executed); p=$(get passed); fl=$(get failed)
  passed=$((passed + ${p:-0})); failed=$((failed + ${fl:-0})); skipped=$((skipped + ${total:-0} - ${executed:-0}))
done
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; echo "test.sh: dotnet test exited $rc (build or runner failure)" >&2; fi
echo "$passed passed, $failed failed, $skipped skipped"
exit "$rc"
