# Shell helpers shared by perf/campaign.sh and perf/ab.sh (sourced, not run). Both set `lg`
# (the loadgen binary) and `out` (the JSON directory) before calling these.

# 1 when nginx with the Nchan module is installed (perf/install-deps.sh), else 0.
have_nchan=0
if command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then have_nchan=1; fi

# run NAME LOADGEN-ARGS...: one loadgen run, its JSON to $out/NAME.json, its table row on stderr.
run() {
  local name=$1; shift
  echo "== $name: loadgen $*" >&2
  "$lg" "$@" --json "$out/$name.json" 2>&1 | grep -E "^[a-z0-9-]+ +(livetap|naive|nchan)|per idle|change" >&2 || true
}

# nchan_rate NAME SECS DEFAULT [LOADGEN-ARGS...]: runs fanout-1k against Nchan at its own best
# rate (one publish per event, as fast as it answers) and prints the rate it held; prints
# DEFAULT without Nchan. With NCHAN_CPUS set (a CPU list), nginx runs on those CPUs only.
nchan_rate() {
  if [ "$have_nchan" != 1 ]; then echo "$3"; return; fi
  local name=$1 secs=$2
  shift 3
  if [ -n "${NCHAN_CPUS:-}" ]; then
    taskset -c "$NCHAN_CPUS" perf/nchan/start.sh >/dev/null
  else
    perf/nchan/start.sh >/dev/null
  fi
  run "$name" fanout-1k --peer nchan --rate 0 --duration "$secs" "$@"
  perf/nchan/stop.sh >/dev/null
  python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['rows'][0]['ingest_rate']))" "$out/$name.json"
}
