#!/usr/bin/env bash
# Starts the Nchan peer for the perf harness: Debian's nginx with the nchan module, ONE worker
# process, listening on loopback only, with everything it writes under perf/out/nchan/.
#
# Usage: perf/nchan/start.sh            (listens on 127.0.0.1:7090)
#        NCHAN_LISTEN=127.0.0.1:7091 NCHAN_SHM=1G perf/nchan/start.sh
# Then:  target/release/loadgen fanout-1k --peer nchan --rate 18000 --duration 10
# Stop:  perf/nchan/stop.sh
#
# The config is perf/nchan/nginx.conf with its @...@ values filled in, written to
# perf/out/nchan/nginx.conf. The master's pid is in perf/out/nchan/nginx.pid (loadgen reads it
# to find the worker and measure its CPU and memory); the error log is perf/out/nchan/error.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/perf/out/nchan"
listen=${NCHAN_LISTEN:-127.0.0.1:7090}
shm=${NCHAN_SHM:-512M}
nchan_so=/usr/lib/nginx/modules/ngx_nchan_module.so
nginx=$(command -v nginx || echo /usr/sbin/nginx)

case "$listen" in
  127.*:[0-9]*) ;;
  *) echo "NCHAN_LISTEN must be a loopback address:port (127.x.x.x:PORT), got $listen" >&2; exit 2 ;;
esac
port=${listen##*:}
host=${listen%:*}

if [ ! -x "$nginx" ] || [ ! -f "$nchan_so" ]; then
  echo "nginx or the nchan module is missing: run perf/install-deps.sh --install" >&2
  exit 1
fi

pidfile="$out/nginx.pid"
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "Nchan is already running (master pid $(cat "$pidfile")); stop it with perf/nchan/stop.sh" >&2
  exit 1
fi
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "something already listens on $listen" >&2
  exit 1
fi

# Open files for the worker (and so its connections): the hard limit, capped at 65536.
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
if [ "$nofile" -lt 10100 ]; then
  echo "the hard open-files limit is $nofile; idle-10k needs over 10,000 connections (raise ulimit -Hn)" >&2
  exit 1
fi

mkdir -p "$out/tmp"
rm -f "$pidfile"
sed -e "s|@OUT@|$out|g" -e "s|@LISTEN@|$listen|g" -e "s|@SHM@|$shm|g" -e "s|@NCHAN_SO@|$nchan_so|g" \
  -e "s|@NOFILE@|$nofile|g" \
  "$here/nginx.conf" >"$out/nginx.conf"
if grep -n '@[A-Z_]*@' "$out/nginx.conf"; then
  echo "unfilled template values in $out/nginx.conf" >&2
  exit 1
fi

# -e: the error log from the first moment (before the config is read), instead of /var/log/nginx.
"$nginx" -p "$out" -e "$out/error.log" -c "$out/nginx.conf" -t -q
"$nginx" -p "$out" -e "$out/error.log" -c "$out/nginx.conf"

for _ in $(seq 1 100); do
  if [ -s "$pidfile" ] && (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    master=$(cat "$pidfile")
    worker=$(cat "/proc/$master/task/$master/children" 2>/dev/null | awk '{print $1}')
    echo "Nchan listening on $listen: nginx master pid $master, worker pid ${worker:-?}"
    echo "config $out/nginx.conf, log $out/error.log"
    exit 0
  fi
  sleep 0.1
done
echo "Nchan did not come up on $listen within 10 s; see $out/error.log:" >&2
tail -n 20 "$out/error.log" >&2 || true
exit 1
