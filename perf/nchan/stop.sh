#!/usr/bin/env bash
# Stops the Nchan peer started by perf/nchan/start.sh (the nginx whose master pid is in
# perf/out/nchan/nginx.pid), and only that one. Fast shutdown (TERM): open subscriber streams
# are closed rather than waited for.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pidfile="$here/../out/nchan/nginx.pid"
if [ ! -s "$pidfile" ]; then
  echo "Nchan is not running (no $pidfile)"
  exit 0
fi
master=$(cat "$pidfile")
if ! kill -0 "$master" 2>/dev/null; then
  echo "Nchan is not running (stale pid $master)"
  rm -f "$pidfile"
  exit 0
fi
if ! grep -q nginx "/proc/$master/cmdline" 2>/dev/null; then
  echo "pid $master from $pidfile is not nginx; not touching it" >&2
  exit 1
fi
workers=$(cat "/proc/$master/task/$master/children" 2>/dev/null || true)
kill -TERM "$master"
for _ in $(seq 1 100); do
  if ! kill -0 "$master" 2>/dev/null; then
    echo "Nchan stopped (master pid $master)"
    rm -f "$pidfile"
    exit 0
  fi
  sleep 0.1
done
echo "nginx master $master still running after 10 s; sending KILL to it and its workers ($workers)" >&2
for p in $master $workers; do kill -KILL "$p" 2>/dev/null || true; done
rm -f "$pidfile"
