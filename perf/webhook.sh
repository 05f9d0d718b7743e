#!/usr/bin/env bash
# Outgoing webhooks under load (issue 25). Per round, three loadgen max-ingest runs of SECS seconds:
#
#   baseline   livetap with a data directory and no webhook;
#   tap-1pct   plus a webhook whose query matches 1 % of the events (5 of the harness's 500
#              accounts) to a local webhooksink: compare ingest_rate with the baseline (the
#              target is a cost under 3 %);
#   firehose   plus a webhook that wants every event, in 1 MiB batches, to webhooksink: the
#              sink prints the events/s it received (the target is at least 100,000/s).
#
#   perf/webhook.sh [SECS] [ROUNDS]   (defaults 10 s, 3 rounds; a smoke run: perf/webhook.sh 3 1)
#
# WEBHOOK_FSYNC=batch|never runs the webhooks with that fsync policy (default "always");
# WEBHOOK_MAX_DELAY_MS=N sets their max-delay-ms (default 1000, livetap's default; a sparse
# webhook's tap takes its events in groups a twentieth of that apart, at most 50 ms);
# WEBHOOK_FIREHOSE=0 leaves the firehose runs out (more rounds of the 1 % comparison);
# WEBHOOK_PIN=1 pins livetap to CPU 0 and the load to CPU 1 (see below);
# WEBHOOK_QUERY=... replaces the 1 % query (e.g. one that matches nothing, to separate the
# index's cost from the delivery's);
# WEBHOOK_RATE=N drives every run at N events/s instead of as fast as livetap takes them: the
# runs then do the same work, and the cost is read from livetap's CPU time per event, which a
# busy host blurs far less than a maximum rate (the script prints both).
#
# Needs `cargo build --release -p livetap -p livetap-perf` (WEBHOOK_BIN_DIR=<dir> uses the
# binaries of another directory, e.g. a debug build for a quick check of the script). JSON per run goes to
# perf/out/webhook/; the spools live in a temporary directory removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
bin=${WEBHOOK_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
lg=$bin/loadgen
out=perf/out/webhook
rm -rf "$out"
mkdir -p "$out"
. perf/common.sh
tmp=$(mktemp -d)
sink_pid=
cleanup() {
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sink() {
  # Pinned runs put the receiver with the load generator, off livetap's core.
  local cpu=()
  [ "${WEBHOOK_PIN:-0}" = 1 ] && cpu=(taskset -c 1)
  "${cpu[@]}" "$bin/webhooksink" --listen "127.0.0.1:$port" >"$out/$1-sink.txt" 2>/dev/null &
  sink_pid=$!
  # Ready when it accepts a connection (no fixed sleep).
  python3 -c "
import socket, sys, time
deadline = time.time() + 10
while True:
    try:
        socket.create_connection(('127.0.0.1', $port), timeout=1).close(); break
    except OSError:
        if time.time() > deadline: sys.exit('webhooksink did not start')
        time.sleep(0.02)
"
}
stop_sink() {
  kill -INT "$sink_pid" 2>/dev/null || true
  wait "$sink_pid" 2>/dev/null || true
  sink_pid=
}
config() { # NAME QUERY: a config with a data directory and, unless NAME is "none", one webhook
  mkdir -p "$tmp/$1"
  {
    echo "data-dir = \"$tmp/$1\""
    if [ "$1" != none ]; then
      printf '\n[[webhook]]\nname = "%s"\nurl = "http://127.0.0.1:%s/hook"\nquery = "%s"\nmax-bytes = 1048576\nmax-events = 100000\nmax-delay-ms = %s\nfsync = "%s"\n' \
        "$1" "$port" "$2" "${WEBHOOK_MAX_DELAY_MS:-1000}" "${WEBHOOK_FSYNC:-always}"
    fi
  } >"$tmp/$1.toml"
  echo "$tmp/$1.toml"
}
rate() { python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['rows'][0]['ingest_rate']))" "$out/$1.json"; }

# WEBHOOK_PIN=1: livetap (and its webhook's sender and tap) on CPU 0, the load generator on
# CPU 1, as `AB_PIN=1 perf/ab.sh` does: the hub's one core is what the webhook takes from.
pin=()
[ "${WEBHOOK_PIN:-0}" = 1 ] && pin=(--cpus 1 --hub-cpus 0)
[ -n "${WEBHOOK_RATE:-}" ] && pin+=(--rate "$WEBHOOK_RATE")

# Rounds alternate the baseline and the 1 % webhook, so machine drift hits both alike; the
# figures are medians of the rounds, and the cost is the ratio of the medians.
for i in $(seq 1 "$rounds"); do
  run "baseline-$i" max-ingest --hub-bin "$bin/livetap" --duration "$secs" "${pin[@]}" --hub-arg=--config="$(config none '')"
  sink "tap-1pct-$i"
  run "tap-1pct-$i" max-ingest --hub-bin "$bin/livetap" --duration "$secs" "${pin[@]}" \
    --hub-arg=--config="$(config onepct "${WEBHOOK_QUERY:-account-name=user-1,user-2,user-3,user-4,user-5}")"
  stop_sink
  [ "${WEBHOOK_FIREHOSE:-1}" = 1 ] || continue
  sink "firehose-$i"
  run "firehose-$i" max-ingest --hub-bin "$bin/livetap" --duration "$secs" "${pin[@]}" --hub-arg=--config="$(config all '')"
  stop_sink
done

median() { python3 -c "import statistics,sys; print(int(statistics.median(int(x) for x in sys.argv[1:])))" "$@"; }
rates() { for i in $(seq 1 "$rounds"); do rate "$1-$i"; done; }
b=$(median $(rates baseline))
t=$(median $(rates tap-1pct))
echo
echo "rounds: $rounds of $secs s; baseline per round: $(rates baseline | xargs); 1 % per round: $(rates tap-1pct | xargs)"
echo "max-ingest without a webhook (median):   $b events/s"
echo "with a webhook matching 1 % (median):    $t events/s ($(python3 -c "print(f'{100*(1-$t/$b):+.1f} % cost, ratio {$t/$b:.3f}')"))"
# The machine drifts between rounds: the ratio within each round (the two runs side by side)
# is the steadier figure, and its median is the cost this script reports first.
paired=$(python3 -c "
import statistics, sys
b = [int(x) for x in sys.argv[1].split()]
t = [int(x) for x in sys.argv[2].split()]
r = [y / x for x, y in zip(b, t)]
print(' '.join(f'{x:.3f}' for x in r), '| median', f'{statistics.median(r):.3f}', f'({100 * (1 - statistics.median(r)):+.1f} % cost)')
" "$(rates baseline | xargs)" "$(rates tap-1pct | xargs)")
echo "1 % ÷ baseline within each round:         $paired"
# livetap's CPU time per ingested event (user and system, all its threads), paired the same way.
cpu() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['rows'][0]; print(r['hub_cpu_secs_total'] / r['events'] * 1e9)" "$out/$1.json"; }
cpus() { for i in $(seq 1 "$rounds"); do cpu "$1-$i"; done; }
python3 -c "
import statistics, sys
b = [float(x) for x in sys.argv[1].split()]
t = [float(x) for x in sys.argv[2].split()]
r = [y / x for x, y in zip(b, t)]
print('CPU ns per event, baseline:', ' '.join(f'{x:.0f}' for x in b), '| 1 %:', ' '.join(f'{x:.0f}' for x in t))
print('CPU per event, 1 % ÷ baseline:          ', ' '.join(f'{x:.3f}' for x in r), '| median', f'{statistics.median(r):.3f}', f'({100 * (statistics.median(r) - 1):+.1f} % cost)')
" "$(cpus baseline | xargs)" "$(cpus tap-1pct | xargs)"
for i in $(seq 1 "$rounds"); do echo "  round $i 1 % sink: $(tail -n1 "$out/tap-1pct-$i-sink.txt")"; done
[ "${WEBHOOK_FIREHOSE:-1}" = 1 ] || exit 0
echo "firehose webhook, 1 MiB batches, ingest per round: $(rates firehose | xargs)"
for i in $(seq 1 "$rounds"); do echo "  round $i firehose sink: $(tail -n1 "$out/firehose-$i-sink.txt")"; done
