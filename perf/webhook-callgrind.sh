#!/usr/bin/env bash
# What a webhook's query costs the hot path, in instructions, which do not depend on what else
# the machine is doing (unlike `perf/webhook.sh`'s rates on a busy host).
#
# Runs `hotpath` (parse -> build -> ring -> match -> queue -> frame, one thread) under
# callgrind with max-ingest's shape (one unfiltered subscriber), without and with one more
# subscriber whose query is the 1 % webhook's, at E and 2E events so start-up cancels out:
#   per ingested event = (I(2E) - I(E)) / E, for each of the two
#   cost               = with ÷ without - 1
# The webhook's own work per matched event (its JSON and spool append: `cargo bench --bench
# webhook`) and its `fdatasync`s (a few a second) come on top; `perf/RESULTS.md` §19 adds them.
#
# Usage: perf/webhook-callgrind.sh [EVENTS]   (default 20000); WEBHOOK_QUERY=... as in webhook.sh
set -euo pipefail
cd "$(dirname "$0")/.."
E=${1:-20000}
query=${WEBHOOK_QUERY:-account-name=user-1,user-2,user-3,user-4,user-5}
command -v valgrind >/dev/null || { echo "valgrind is missing: run perf/install-deps.sh --install" >&2; exit 1; }
cargo build --release -q -p livetap-perf --bin hotpath
out=perf/out/webhook-callgrind
mkdir -p "$out"
instr() { # NAME EVENTS [QUERY]
  local name=$1 events=$2
  HOTPATH_QUERY=${3:-} valgrind --tool=callgrind --callgrind-out-file="$out/$name.out" \
    target/release/hotpath "$events" 0 1 >"$out/$name.txt" 2>"$out/$name.log"
  awk '/^summary:/ {print $2}' "$out/$name.out"
}
if [ -z "$query" ]; then echo "WEBHOOK_QUERY is empty" >&2; exit 1; fi
a1=$(instr base-1 "$E")
a2=$(instr base-2 "$((2 * E))")
# An empty HOTPATH_QUERY means no extra subscriber: the baseline runs.
b1=$(instr tap-1 "$E" "$query")
b2=$(instr tap-2 "$((2 * E))" "$query")
d1=$(sed -n 's/.*delivered=\([0-9]*\).*/\1/p' "$out/tap-2.txt")
d0=$(sed -n 's/.*delivered=\([0-9]*\).*/\1/p' "$out/base-2.txt")
python3 - "$E" "$a1" "$a2" "$b1" "$b2" "$d0" "$d1" "$query" <<'PY'
import sys
e, a1, a2, b1, b2, d0, d1 = map(int, sys.argv[1:8])
base = (a2 - a1) / e
tap = (b2 - b1) / e
print(f"query: {sys.argv[8]}")
print(f"matched by it: {d1 - d0} of {2 * e} events ({100 * (d1 - d0) / (2 * e):.2f} %)")
print(f"instructions per ingested event, one unfiltered subscriber: {base:.0f}")
print(f"  plus the webhook's query:                                 {tap:.0f}")
print(f"cost: {tap - base:+.0f} instructions per event, {100 * (tap / base - 1):+.2f} %")
PY
