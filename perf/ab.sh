#!/usr/bin/env bash
# Two livetap binaries side by side on the issue-4 scenarios: each round runs every scenario
# against A, then against B (then Nchan at its own rate, and the raw writev limit), so machine
# drift hits both alike; the table at the end has the medians and the B/A ratios.
#
#   perf/ab.sh A_BIN B_BIN [ROUNDS] [SECS]     (defaults 3 rounds, 6 s of load per run;
#                                               AB_IDLE=0 leaves out idle-10k)
#
# At Nchan's rate, livetap is measured twice: over the Unix socket in writes of 16 events, and
# over HTTP with one event per request, which is exactly how the harness publishes to Nchan.
# AB_PIN=1 adds a third comparison on a machine with two or more CPUs: Nchan and livetap pinned
# to CPU 0 and the harness to CPU 1, so neither hub shares a core with the load generator.
# fanout-1k also runs on a warm hub (`--warm-secs 3`: load before the subscribers connect, as
# on a hub that has been running; RESULTS §14.4), and max-ingest also at a fixed 1,000,000 events/s,
# where nothing may be lost or lagged.
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
    run "$side-fanout-1k-warm-$i" fanout-1k --hub-bin "$bin" --duration "$secs" --warm-secs 3
    run "$side-max-ingest-1m-$i" max-ingest --hub-bin "$bin" --duration "$secs" --rate 1000000
    run "$side-at-nchan-rate-$i" fanout-1k --hub-bin "$bin" --rate "$nrate" --batch 16 --duration "$secs"
    run "$side-at-nchan-rate-http-$i" fanout-1k --hub-bin "$bin" --rate "$nrate" --batch 1 --input http --duration "$secs"
    run "$side-firehose-100-$i" firehose-100 --hub-bin "$bin" --duration "$secs"
  done
  if [ "${AB_PIN:-0}" = 1 ]; then
    prate=$(NCHAN_CPUS=0 nchan_rate "nchan-pinned-$i" "$secs" 8000 --cpus 1)
    for side in a b; do
      bin=$a
      [ "$side" = b ] && bin=$b
      run "$side-at-nchan-rate-pinned-$i" fanout-1k --hub-bin "$bin" --rate "$prate" --batch 1 --input http \
        --duration "$secs" --cpus 1 --hub-cpus 0
      run "$side-fanout-1k-pinned-warm-$i" fanout-1k --hub-bin "$bin" --duration "$secs" --warm-secs 3 \
        --cpus 1 --hub-cpus 0
    done
  fi
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
show("fanout-1k deliveries of 5 ms or more", "fanout-1k", "slow_deliveries")
show("fanout-1k, warm hub (--warm-secs 3): p99 µs", "fanout-1k-warm", "p99_us")
show("fanout-1k, warm hub: p99 µs after the warm-up", "fanout-1k-warm", "steady_p99_us")
show("fanout-1k, warm hub: deliveries of 5 ms or more", "fanout-1k-warm", "slow_deliveries")
if row("a-fanout-1k-pinned-warm-1"):
    show("fanout-1k, warm hub, pinned: p99 µs", "fanout-1k-pinned-warm", "p99_us")
    show("fanout-1k, warm hub, pinned: hub cpu s", "fanout-1k-pinned-warm", "hub_cpu_secs", "{:.2f}")
show("max-ingest at 1,000,000/s: events/s", "max-ingest-1m", "ingest_rate")
show("max-ingest at 1,000,000/s: p99 µs", "max-ingest-1m", "p99_us")
show("at Nchan's rate: p50 µs", "at-nchan-rate", "p50_us")
show("at Nchan's rate: p99 µs", "at-nchan-rate", "p99_us")
show("at Nchan's rate: p99 µs after the warm-up", "at-nchan-rate", "steady_p99_us")
show("at Nchan's rate, HTTP, 1 per request: p50 µs", "at-nchan-rate-http", "p50_us")
show("at Nchan's rate, HTTP, 1 per request: p99 µs", "at-nchan-rate-http", "p99_us")
show("at Nchan's rate, HTTP, 1 per request: p99 µs after the warm-up", "at-nchan-rate-http", "steady_p99_us")
show("at Nchan's rate, HTTP, 1 per request: hub cpu s", "at-nchan-rate-http", "hub_cpu_secs", "{:.2f}")
if row("a-at-nchan-rate-pinned-1"):
    show("pinned, at pinned Nchan's rate: p50 µs", "at-nchan-rate-pinned", "p50_us")
    show("pinned, at pinned Nchan's rate: p99 µs", "at-nchan-rate-pinned", "p99_us")
    show("pinned, at pinned Nchan's rate: p99 µs after the warm-up", "at-nchan-rate-pinned", "steady_p99_us")
show("firehose-100 MB/s", "firehose-100", "bytes_per_sec", "{:,.0f}")
show("idle-10k bytes per subscriber", "idle-10k", "bytes_per_subscriber")
print("\n".join(lines).replace("| firehose-100 MB/s |", "| firehose-100 bytes/s |"))
for side in ("a", "b"):
    fr = col(side, "firehose-100", "bytes_per_sec")
    pct = [f / r * 100 for f, r in zip(fr, raw) if f]
    lost = sum((r or {}).get("lost", 0) for scen in ("max-ingest", "max-ingest-1m", "fanout-1k", "fanout-1k-warm",
                                                     "fanout-1k-pinned-warm", "at-nchan-rate", "at-nchan-rate-http",
                                                     "at-nchan-rate-pinned", "firehose-100")
               for r in [row(f"{side}-{scen}-{i}") for i in range(1, rounds + 1)] if r)
    lag1m = [r["lagged"] for i in range(1, rounds + 1) if (r := row(f"{side}-max-ingest-1m-{i}"))]
    print(f"{side.upper()}: firehose-100 / rawlimit per round: {', '.join(f'{p:.1f} %' for p in pct)}; "
          f"median {med(pct):.1f} %; events lost in all runs: {lost}; "
          f"lagged at 1,000,000/s per round: {', '.join(str(x) for x in lag1m)}")
for nchan, scen, label in (("nchan-fanout", "at-nchan-rate", "socket, 16 per write"),
                           ("nchan-fanout", "at-nchan-rate-http", "HTTP, 1 per request"),
                           ("nchan-pinned", "at-nchan-rate-pinned", "pinned, HTTP, 1 per request")):
    n = [row(f"{nchan}-{i}") for i in range(1, rounds + 1)]
    if not any(n):
        continue
    if scen != "at-nchan-rate-http":
        print(f"Nchan ({nchan}) per round: " + ", ".join(
            f"{r['ingest_rate']:,.0f}/s p50 {r['p50_us']:,} p99 {r['p99_us']:,} µs "
            f"({r.get('steady_p99_us', 0):,} after the warm-up)" for r in n if r))
    for side in ("a", "b"):
        ratios = [r["p99_us"] / x["p99_us"] for i, x in enumerate(n, 1) if x and (r := row(f"{side}-{scen}-{i}"))]
        steady = [r["steady_p99_us"] / x["steady_p99_us"] for i, x in enumerate(n, 1)
                  if x and x.get("steady_p99_us") and (r := row(f"{side}-{scen}-{i}"))]
        if ratios:
            print(f"{side.upper()} ({label}): p99 / Nchan's p99 per round: "
                  f"{', '.join(f'{x:.2f}' for x in ratios)}; median {med(ratios):.2f}; after the warm-up: "
                  f"{', '.join(f'{x:.2f}' for x in steady)}; median {med(steady):.2f}")
PY
