#!/usr/bin/env bash
# Two livetap binaries side by side on the issue-4 scenarios: each round runs every scenario
# against A, then against B (then Nchan at its own rate, and the raw writev limit), so machine
# drift hits both alike; the table at the end has the medians and the B/A ratios.
#
#   perf/ab.sh A_BIN B_BIN [ROUNDS] [SECS]     (defaults 3 rounds, 6 s of load per run;
#                                               AB_IDLE=0 leaves out idle-10k)
#
# Typical use: build the old commit's binary to /tmp/livetap-before (git stash or a worktree)
# and the new one to /tmp/livetap-after. Needs `cargo build --release -p livetap-perf`; Nchan
# rows are skipped when nginx with the Nchan module is missing (perf/install-deps.sh).
# JSON per run goes to perf/out/ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1
b=$2
rounds=${3:-3}
secs=${4:-6}
lg=${CARGO_TARGET_DIR:-target}/release/loadgen
raw=${CARGO_TARGET_DIR:-target}/release/rawlimit
out=perf/out/ab
rm -rf "$out"
mkdir -p "$out"
. perf/common.sh

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/machine.txt"
for i in $(seq 1 "$rounds"); do
  nrate=$(nchan_rate "nchan-fanout-$i" "$secs" 18000)
  for side in a b; do
    bin=$a
    [ "$side" = b ] && bin=$b
    run "$side-max-ingest-$i" max-ingest --hub-bin "$bin" --duration "$secs"
    run "$side-fanout-1k-$i" fanout-1k --hub-bin "$bin" --duration "$secs"
    run "$side-at-nchan-rate-$i" fanout-1k --hub-bin "$bin" --rate "$nrate" --batch 16 --duration "$secs"
    run "$side-firehose-100-$i" firehose-100 --hub-bin "$bin" --duration "$secs"
  done
  echo "== rawlimit-100-$i" >&2
  "$raw" --sockets 100 --seconds "$secs" --json > "$out/rawlimit-100-$i.json"
done
# Memory is not noisy the way time is, and connecting 10,000 subscribers one after another takes
# minutes (each waits for an index rebuild), so idle-10k runs once per side.
# AB_IDLE=0 skips it.
if [ "${AB_IDLE:-1}" != 0 ]; then
  run "a-idle-10k-1" idle-10k --hub-bin "$a"
  run "b-idle-10k-1" idle-10k --hub-bin "$b"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def row(name):
    try:
        return json.load(open(f"{out}/{name}.json"))["rows"][0]
    except (OSError, KeyError, IndexError):
        return None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def col(side, scen, field):
    n = 1 if scen == "idle-10k" else rounds
    return [r[field] if (r := row(f"{side}-{scen}-{i}")) else None for i in range(1, n + 1)]
raw = [json.load(open(f"{out}/rawlimit-100-{i}.json"))["bytes_per_sec"] for i in range(1, rounds + 1)]
lines = []
def show(label, scen, field, fmt="{:,.0f}"):
    a, b = med(col("a", scen, field)), med(col("b", scen, field))
    ratio = f"{b / a:.2f}" if a and b is not None else "-"
    f = lambda v: "-" if v is None else fmt.format(v)
    lines.append(f"| {label} | {f(a)} | {f(b)} | {ratio} |")
print("| measure (median of %d rounds) | A | B | B/A |" % rounds)
print("|---|---:|---:|---:|")
show("max-ingest events/s", "max-ingest", "ingest_rate")
show("max-ingest hub cpu s", "max-ingest", "hub_cpu_secs", "{:.2f}")
show("fanout-1k events/s held", "fanout-1k", "ingest_rate")
show("fanout-1k p50 µs", "fanout-1k", "p50_us")
show("fanout-1k p99 µs", "fanout-1k", "p99_us")
show("fanout-1k p99 µs after the warm-up", "fanout-1k", "steady_p99_us")
show("fanout-1k hub cpu s", "fanout-1k", "hub_cpu_secs", "{:.2f}")
show("at Nchan's rate: p50 µs", "at-nchan-rate", "p50_us")
show("at Nchan's rate: p99 µs", "at-nchan-rate", "p99_us")
show("at Nchan's rate: p99 µs after the warm-up", "at-nchan-rate", "steady_p99_us")
show("firehose-100 MB/s", "firehose-100", "bytes_per_sec", "{:,.0f}")
show("idle-10k bytes per subscriber", "idle-10k", "bytes_per_subscriber")
print("\n".join(lines).replace("| firehose-100 MB/s |", "| firehose-100 bytes/s |"))
for side in ("a", "b"):
    fr = col(side, "firehose-100", "bytes_per_sec")
    pct = [f / r * 100 for f, r in zip(fr, raw) if f]
    lost = sum((r or {}).get("lost", 0) for scen in ("max-ingest", "fanout-1k", "at-nchan-rate", "firehose-100")
               for r in [row(f"{side}-{scen}-{i}") for i in range(1, rounds + 1)] if r)
    print(f"{side.upper()}: firehose-100 / rawlimit per round: {', '.join(f'{p:.1f} %' for p in pct)}; "
          f"median {med(pct):.1f} %; events lost in all runs: {lost}")
n = [row(f"nchan-fanout-{i}") for i in range(1, rounds + 1)]
if any(n):
    print("Nchan fanout-1k per round: " + ", ".join(
        f"{r['ingest_rate']:,.0f}/s p99 {r['p99_us']:,} µs ({r.get('steady_p99_us', 0):,} after the warm-up)" for r in n if r))
    for side in ("a", "b"):
        ratios = [r["p99_us"] / x["p99_us"] for i, x in enumerate(n, 1) if x and (r := row(f"{side}-at-nchan-rate-{i}"))]
        print(f"{side.upper()}: p99 at Nchan's rate / Nchan's p99, per round: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; median {med(ratios):.2f}")
        steady = [r["steady_p99_us"] / x["steady_p99_us"] for i, x in enumerate(n, 1)
                  if x and x.get("steady_p99_us") and (r := row(f"{side}-at-nchan-rate-{i}"))]
        if steady:
            print(f"{side.upper()}: the same after the warm-up: "
                  f"{', '.join(f'{x:.2f}' for x in steady)}; median {med(steady):.2f}")
PY
