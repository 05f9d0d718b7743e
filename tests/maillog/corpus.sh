#!/usr/bin/env bash
# tests/maillog/corpus.sh: records a corpus of real Postfix and Dovecot output (issue 24) by
# running daemons.sh, capture.py and traffic.py --extras, with a short queue lifetime so the
# deferred message also expires and bounces.
#
# Usage: corpus.sh OUTDIR
# Writes OUTDIR/postfix.log, OUTDIR/dovecot.log, OUTDIR/dovecot-exporter.txt (one JSON line per
# POST the exporter made) and OUTDIR/traffic.json (what traffic.py did). Runs as root; takes
# about half a minute, most of it waiting for the deferred message to expire.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: corpus.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d /tmp/livetap-corpus.XXXXXX)
capture_pid=""
cleanup() {
  "$here/daemons.sh" stop "$work" >/dev/null 2>&1 || true
  [ -z "$capture_pid" ] || kill "$capture_pid" 2>/dev/null || true
}
trap cleanup EXIT

# wait_log FILE PATTERN SECONDS: polls FILE for an extended regular expression.
wait_log() {
  local tries=0
  until grep -qsE "$2" "$1"; do
    tries=$((tries + 1))
    [ "$tries" -lt $(($3 * 10)) ] || {
      echo "corpus.sh: no line matching '$2' in $1 after $3 s" >&2
      return 1
    }
    sleep 0.1
  done
}

python3 "$here/capture.py" "$work/exporter.jsonl" >"$work/capture.out" &
capture_pid=$!
wait_log "$work/capture.out" '^CAPTURE_URL=' 10
url=$(sed -n 's/^CAPTURE_URL=//p' "$work/capture.out")

# Lifetime 4 s, retries every 2 s: the deferred message is tried two or three times, then
# expires and is returned to its (local) sender.
MAILLOG_QUEUE_LIFETIME=4s MAILLOG_RETRY=2s "$here/daemons.sh" start "$work" "$url" >"$work/env.txt"
# shellcheck disable=SC2046 # one argument per KEY=VALUE line
python3 "$here/traffic.py" --extras $(cat "$work/env.txt") >"$out/traffic.json"

plog=$work/postfix.log
wait_log "$plog" 'status=expired' 60
wait_log "$plog" 'sender non-delivery notification' 30
# Every message, including the bounce notifications, leaves the queue: wait until every queue
# id the queue manager took in has its "removed" line.
distinct() { grep -oE "$1" "$plog" | grep -oE '[0-9A-F]{6,}' | sort -u | wc -l; }
all_removed() { [ "$(distinct 'qmgr\[[0-9]+\]: [0-9A-F]+: from=')" -le "$(distinct '[0-9A-F]+: removed$')" ]; }
# Dovecot's exporter posts asynchronously: wait until it posted one mail_delivery_finished per
# LMTP delivery Postfix logged.
all_exported() {
  [ "$(grep -c 'mail_delivery_finished' "$work/exporter.jsonl" 2>/dev/null || true)" -ge \
    "$(grep -cE 'postfix/lmtp.*status=sent' "$plog")" ]
}
until_true() {
  local tries=0
  until "$2"; do
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || {
      echo "corpus.sh: timed out waiting for $1" >&2
      return 1
    }
    sleep 0.1
  done
}
until_true "every message to leave the queue" all_removed
until_true "the exporter's deliveries" all_exported

"$here/daemons.sh" stop "$work"
kill "$capture_pid"
capture_pid=""
cp "$work/postfix.log" "$out/postfix.log"
cp "$work/dovecot.log" "$out/dovecot.log"
cp "$work/exporter.jsonl" "$out/dovecot-exporter.txt"
cp "$work/env.txt" "$out/daemons.env"
rm -rf "$work"
echo "corpus written to $out"
