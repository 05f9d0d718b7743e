#!/usr/bin/env bash
# Outgoing webhooks under load (issue 25). Three loadgen max-ingest runs of SECS seconds each:
#
#   baseline   livetap with a data directory and no webhook;
#   tap-1pct   plus a webhook whose query matches 1 % of the events (5 of the harness's 500
#              accounts) to a local webhooksink: compare ingest_rate with the baseline (the
#              target is a cost under 3 %);
#   firehose   plus a webhook that wants every event, in 1 MiB batches, to webhooksink: the
#              sink prints the events/s it received (the target is at least 100,000/s).
#
#   perf/webhook.sh [SECS]        (default 10; a smoke run of 3 s is fine: perf/webhook.sh 3)
#
# WEBHOOK_FSYNC=batch|never runs the webhooks with that fsync policy (default "always").
#
# Needs `cargo build --release -p livetap -p livetap-perf` (WEBHOOK_BIN_DIR=<dir> uses the
# binaries of another directory, e.g. a debug build for a quick check of the script). JSON per run goes to
# perf/out/webhook/; the spools live in a temporary directory removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
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
  "$bin/webhooksink" --listen "127.0.0.1:$port" >"$out/$1-sink.txt" 2>/dev/null &
  sink_pid=$!
  sleep 0.3
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
      printf '\n[[webhook]]\nname = "%s"\nurl = "http://127.0.0.1:%s/hook"\nquery = "%s"\nmax-bytes = 1048576\nmax-events = 100000\nmax-delay-ms = 200\nfsync = "%s"\n' \
        "$1" "$port" "$2" "${WEBHOOK_FSYNC:-always}"
    fi
  } >"$tmp/$1.toml"
  echo "$tmp/$1.toml"
}
rate() { python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['rows'][0]['ingest_rate']))" "$out/$1.json"; }

run baseline max-ingest --hub-bin "$bin/livetap" --duration "$secs" --hub-arg=--config="$(config none '')"
sink tap-1pct
run tap-1pct max-ingest --hub-bin "$bin/livetap" --duration "$secs" \
  --hub-arg=--config="$(config onepct 'account-name=user-1,user-2,user-3,user-4,user-5')"
stop_sink
sink firehose
run firehose max-ingest --hub-bin "$bin/livetap" --duration "$secs" --hub-arg=--config="$(config all '')"
stop_sink

b=$(rate baseline)
t=$(rate tap-1pct)
echo
echo "max-ingest without a webhook:        $b events/s"
echo "with a webhook matching 1 %:         $t events/s ($(python3 -c "print(f'{100*(1-$t/$b):+.1f} % cost')" ))"
echo "  its sink: $(tail -n1 "$out/tap-1pct-sink.txt")"
echo "firehose webhook, 1 MiB batches:     ingest $(rate firehose) events/s"
echo "  its sink: $(tail -n1 "$out/firehose-sink.txt")"
