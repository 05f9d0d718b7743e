#!/usr/bin/env bash
# Deterministic instruction counts of livetap's hot path, with valgrind's callgrind.
#
# Runs `hotpath` (parse -> build -> ring -> match -> queue -> SSE frame, in one thread, no
# sockets) four times and takes differences, so start-up and index compilation cancel out:
#   per ingested event  = (I(no subscribers, 2E) - I(no subscribers, E)) / E
#   per delivered event = (I(fanout-1k mix, 2E) - I(fanout-1k mix, E) - E * per-ingested) / (deliveries in E)
# Instruction counts do not depend on what else the machine is doing, unlike wall time.
#
# Usage: perf/callgrind.sh [EVENTS]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
E=${1:-20000}
if ! command -v valgrind >/dev/null; then
  echo "valgrind is missing: run perf/install-deps.sh --install" >&2
  exit 1
fi
cargo build --release -q -p livetap-perf --bin hotpath
out=perf/out/callgrind
mkdir -p "$out"

# Prints the total instruction count of one run and, on stderr, the program's own output.
instr() {
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$out/$name.out" target/release/hotpath "$@" \
    >"$out/$name.txt" 2>"$out/$name.log"
  awk '/^summary:/ {print $2}' "$out/$name.out"
}
field() { sed -n "s/.*$2=\([0-9]*\).*/\1/p" "$out/$1.txt"; }

i0a=$(instr ingest-1 "$E" 0 0)
i0b=$(instr ingest-2 "$((2 * E))" 0 0)
ifa=$(instr fanout-1 "$E" 1000 10)
ifb=$(instr fanout-2 "$((2 * E))" 1000 10)
da=$(field fanout-1 delivered)
db=$(field fanout-2 delivered)

python3 - "$E" "$i0a" "$i0b" "$ifa" "$ifb" "$da" "$db" <<'PY'
import sys
e, i0a, i0b, ifa, ifb, da, db = map(int, sys.argv[1:])
ingest = (i0b - i0a) / e
deliveries = db - da
per_delivery = ((ifb - ifa) - e * ingest) / deliveries if deliveries else float("nan")
print(f"events per step:            {e}")
print(f"deliveries per step:        {deliveries} (fanout-1k mix: 1,000 filtered + 10 unfiltered)")
print(f"instructions per ingested event (parse, build, ring; no subscribers): {ingest:,.0f}")
print(f"instructions per delivered event (match share, queue push, SSE frame): {per_delivery:,.0f}")
print(f"instructions per event at fanout-1k, all included: {(ifb - ifa) / e:,.0f}")
PY
