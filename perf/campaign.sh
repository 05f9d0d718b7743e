#!/usr/bin/env bash
# Runs every issue-4 scenario several times, interleaving the peers so that each comparison is
# measured side by side in one run of this script, and prints the medians.
#
# Usage: perf/campaign.sh [RUNS] [DURATION]   (defaults 3 and 6 seconds)
# Needs: cargo build --release -p livetap -p livetap-perf; Nchan (perf/install-deps.sh) for the
# Nchan rows, which are skipped with a note when nginx is missing. JSON per run goes to
# perf/out/campaign/, the summary to perf/out/campaign/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DUR=${2:-6}
out=perf/out/campaign
rm -rf "$out"
mkdir -p "$out"
lg=target/release/loadgen
. perf/common.sh

{ echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)";
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"; } > "$out/machine.txt"

for i in $(seq 1 "$RUNS"); do
  run "max-ingest-$i" max-ingest --duration "$DUR"
  run "fanout-1k-$i" fanout-1k --duration "$DUR"
  run "fanout-1k-m1-$i" fanout-1k --duration "$DUR" --hub-arg=--matcher-threads=1
  run "firehose-100-$i" firehose-100 --duration "$DUR"
  echo "== rawlimit-100-$i" >&2
  target/release/rawlimit --sockets 100 --seconds "$DUR" --json > "$out/rawlimit-100-$i.json"
  # Nchan at its own best rate (one publish per event, as fast as it answers), then livetap and
  # the naive hub at exactly the rate Nchan held in this run.
  nrate=$(nchan_rate "nchan-fanout-$i" "$DUR" 13800)
  run "livetap-at-nchan-rate-$i" fanout-1k --rate "$nrate" --batch 16 --duration "$DUR"
  run "naive-at-nchan-rate-$i" fanout-1k --peer naive --rate "$nrate" --batch 16 --duration "$DUR"
  run "slow-consumer-$i" slow-consumer --duration "$DUR"
  run "churn-$i" churn --duration "$DUR"
done
run "idle-10k" idle-10k
if [ "$have_nchan" = 1 ]; then
  perf/nchan/start.sh >/dev/null
  run "nchan-idle-10k" idle-10k --peer nchan
  perf/nchan/stop.sh >/dev/null
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
python3 perf/summarise.py "$out" | tee "$out/summary.txt"
