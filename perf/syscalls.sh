#!/usr/bin/env bash
# System calls, context switches and CPU time of a hub per event, counted by the kernel over a
# few seconds in the middle of a fixed-rate `fanout-1k` run: livetap or Nchan doing the same
# work. `perf stat` on the syscall tracepoints counts every call without sampling, so the
# numbers are exact and the hub is barely slowed (unlike strace). perf/RESULTS.md §14.
#
#   perf/syscalls.sh livetap RATE [LOADGEN-ARGS...]   (default: one event per HTTP request,
#                                                      as the harness feeds Nchan)
#   perf/syscalls.sh nchan RATE
#
# Examples:
#   perf/syscalls.sh livetap 10000
#   perf/syscalls.sh livetap 10000 --hub-arg=--io-threads=1
#   perf/syscalls.sh livetap 100000 --batch 256 --input socket
#   perf/syscalls.sh nchan 10000
#
# Needs `perf` (Debian: linux-perf; perf/install-deps.sh) with access to tracepoints (root, or
# kernel.perf_event_paranoid <= -1 and a readable tracefs), and
# `cargo build --release --bins -p livetap -p livetap-perf`. Set SYSCALLS_SECS to count over
# another window (default 3 s, after 2 s of load).
set -euo pipefail
cd "$(dirname "$0")/.."
who=${1:?livetap or nchan}
rate=${2:?events per second}
shift 2
secs=${SYSCALLS_SECS:-3}
tgt=${CARGO_TARGET_DIR:-target}
lg=$tgt/release/loadgen
hub_bin=${LIVETAP_BIN:-$tgt/release/livetap}
out=perf/out/syscalls
mkdir -p "$out"
log=$out/$who-$rate.log
counts=$out/$who-$rate.perf

if ! command -v perf >/dev/null; then
  echo "perf is missing: run perf/install-deps.sh --install" >&2
  exit 1
fi
calls=(futex writev write epoll_wait recvfrom read sendto sched_yield)
events=$(printf 'syscalls:sys_enter_%s,' "${calls[@]}")context-switches,cpu-migrations,task-clock

case "$who" in
  nchan)
    perf/nchan/start.sh >/dev/null
    trap 'perf/nchan/stop.sh >/dev/null' EXIT
    "$lg" fanout-1k --peer nchan --rate "$rate" --duration $((secs + 5)) "$@" >"$log" 2>&1 &
    ;;
  livetap)
    [ $# -eq 0 ] && set -- --batch 1 --input http
    "$lg" fanout-1k --hub-bin "$hub_bin" --rate "$rate" --duration $((secs + 5)) "$@" >"$log" 2>&1 &
    ;;
  *) echo "first argument: livetap or nchan" >&2; exit 2 ;;
esac
run=$!
# Count from the third second of load on, when the subscribers are connected and the hub warm.
until grep -q "t=  2s" "$log"; do
  kill -0 "$run" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
if [ "$who" = nchan ]; then
  pid=$(pgrep -f 'nginx: worker' | head -1)
else
  pid=$(pgrep -f "^$hub_bin " | head -1)
fi
perf stat -x, -e "$events" -p "$pid" -o "$counts" -- sleep "$secs" >/dev/null 2>&1
wait "$run"

held=$(awk -v w="$who" '$1 == "fanout-1k" && $2 == w {print $4}' "$log")
python3 - "$counts" "$rate" "$secs" "$who" "${held:-0}" <<'PY'
import sys
path, rate, secs, who, held = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
n = rate * secs
print(f"{who} at {rate} events/s (held {held} over the run), counted over {secs:g} s, about {n:,.0f} events")
print(f"{'counter':<28}{'total':>12}{'per event':>12}")
for line in open(path):
    f = line.strip().split(",")
    if len(f) < 3 or not f[0].replace(".", "").isdigit():
        continue
    value, unit, name = float(f[0]), f[1], f[2].replace("syscalls:sys_enter_", "")
    if name == "task-clock":
        print(f"{'cpu ms':<28}{value:>12,.0f}{1000 * value / n:>10.1f} µs")
    else:
        print(f"{name:<28}{value:>12,.0f}{value / n:>12.2f}")
if held and abs(held - rate) > 0.02 * rate:
    print(f"note: the run held {held}/s, not {rate}/s; per-event figures assume {rate}/s")
PY
