#!/usr/bin/env bash
# The suite must not depend on the machine's speed: run it N times in a row (default 2) with two CPU hogs beside
# it, as a busy laptop or a shared CI runner would be. Extra arguments go to pytest via scripts/test.sh.
# Usage: bash scripts/test-under-load.sh [RUNS] [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
shift || true
hogs=()
cleanup() { [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for _ in 1 2; do
  # a pure busy loop on one core each (no stress-ng needed)
  python3 -c 'while True: pass' &
  hogs+=($!)
done
for i in $(seq 1 "$runs"); do
  echo "== run $i of $runs under load (load average: $(cut -d' ' -f1-3 /proc/loadavg)) ==" >&2
  start=$(date +%s)
  bash scripts/test.sh "$@"
  echo "== run $i passed in $(( $(date +%s) - start )) s (load average: $(cut -d' ' -f1-3 /proc/loadavg)) ==" >&2
done
