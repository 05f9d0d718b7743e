#!/usr/bin/env bash
# The end-to-end cost of history at the fanout-1k shape: the same load against livetap with
# history off, with the default selection (spans with a queue id; the harness's lines have no
# span, so it keeps none of them), and keeping every event (`keep = "level=trace"`, the worst
# case), interleaved per round so machine drift hits all three alike.
#
#   perf/history_load.sh [ROUNDS] [SECS] [RATE]     (defaults 3 rounds, 8 s, rate 0 = maximum)
#
# JSON per run goes to perf/out/history/; the table printed at the end has the medians of
# events/s held, hub CPU seconds per million events, p99, and the events history stored and
# dropped (its queue full). Build first: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-8}
rate=${3:-0}
bin=${CARGO_TARGET_DIR:-target}/release
out=perf/out/history
mkdir -p "$out"
rm -f "$out"/*.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[history]\nkeep = "level=trace"\n' >"$work/keep-all.toml"
: >"$work/none.toml"

for round in $(seq 1 "$rounds"); do
  for mode in off default all; do
    args=()
    case $mode in
      off) ;;
      default) rm -rf "$work/d"; args=(--hub-arg=--data-dir="$work/d") ;;
      all) rm -rf "$work/d"; args=(--hub-arg=--data-dir="$work/d" --hub-arg=--config="$work/keep-all.toml") ;;
    esac
    echo "== round $round: history $mode"
    "$bin/loadgen" fanout-1k --hub-bin "$bin/livetap" --duration "$secs" --rate "$rate" \
      --json "$out/$mode-$round.json" "${args[@]}" | tail -4
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys, glob, os
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    mode = os.path.basename(path).rsplit("-", 1)[0]
    r = json.load(open(path))["rows"][0]
    h = r.get("hub_stats", {}).get("history") or {}
    rows.setdefault(mode, []).append({
        "rate": r["ingest_rate"],
        "cpu_per_m": r["hub_cpu_secs"] / max(r["events"], 1) * 1e6,
        "p99_ms": r["p99_us"] / 1000,
        "lost": r["lost"],
        "written": h.get("written", 0),
        "dropped": h.get("dropped", 0),
        "events": r["events"],
    })
med = lambda m, k: statistics.median(x[k] for x in rows[m])
print(f"{'history':8} {'runs':>4} {'events/s':>10} {'vs off':>7} {'CPU s/M ev':>10} {'vs off':>7} {'p99 ms':>8} {'stored %':>8} {'dropped %':>9} {'lost':>4}")
for m in ("off", "default", "all"):
    if m not in rows:
        continue
    st = statistics.median(x["written"] / x["events"] * 100 for x in rows[m])
    dr = statistics.median(x["dropped"] / x["events"] * 100 for x in rows[m])
    print(f"{m:8} {len(rows[m]):>4} {med(m,'rate'):>10.0f} {med(m,'rate')/med('off','rate')*100-100:>+6.1f}% "
          f"{med(m,'cpu_per_m'):>10.2f} {med(m,'cpu_per_m')/med('off','cpu_per_m')*100-100:>+6.1f}% "
          f"{med(m,'p99_ms'):>8.1f} {st:>8.1f} {dr:>9.1f} {sum(x['lost'] for x in rows[m]):>4}")
PY
