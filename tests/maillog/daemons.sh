#!/usr/bin/env bash
# tests/maillog/daemons.sh: starts and stops a throwaway Postfix and Dovecot on loopback for the
# mail-log tests (issue 24), without systemd and without touching the system's own instances.
#
# Usage:
#   daemons.sh start DIR [LIVETAP_URL]   build both configurations in DIR, start both daemons,
#                                         wait until they listen, print KEY=VALUE lines
#   daemons.sh stop DIR                  stop both daemons started in DIR and wait until every
#                                         process of theirs has exited
#
# Everything lives in DIR: Postfix's configuration (`postfix -c DIR/postfix-etc`), its queue and
# data directories, Dovecot's configuration, base and state directories, the mail store and both
# logs. Ports are chosen free at start on 127.0.0.1; nothing listens anywhere else. The system's
# /etc/postfix, /etc/dovecot and /run/dovecot are never read for configuration nor written.
#
# Environment knobs (all optional; the defaults suit a short test):
#   MAILLOG_QUEUE_LIFETIME  maximal_queue_lifetime and bounce_queue_lifetime (default 1d, so
#                           the deferred message stays deferred for the whole test)
#   MAILLOG_RETRY           queue_run_delay and minimal/maximal_backoff_time (default 300s, so
#                           the deferred message is tried exactly once during a test)
#   MAILLOG_GREET_WAIT      postscreen_greet_wait (default 1s)
#
# Readiness is read from the kernel's socket tables (/proc/net/tcp) and from the sockets' files,
# never by connecting: a probe connection would put connect/disconnect lines into the very logs
# the tests assert on.
set -euo pipefail

die() {
  echo "daemons.sh: $*" >&2
  exit 1
}

usage() {
  die "usage: daemons.sh start DIR [LIVETAP_URL] | daemons.sh stop DIR"
}

[ $# -ge 2 ] || usage
action=$1
dir=$2

# Deadline for every wait, in tenths of a second (20 s).
DEADLINE_TENTHS=200

# free_ports N: prints N distinct loopback ports that were free a moment ago. The sockets are
# held open together until all are chosen, so the N ports differ from each other.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# listening PORT: true when something listens on 127.0.0.1:PORT (or on any IPv4 address). The
# kernel lists listening sockets in /proc/net/tcp with state 0A and the address in hex.
listening() {
  local hex
  hex=$(printf '%04X' "$1")
  grep -qE "^ *[0-9]+: (0100007F|00000000):$hex [0-9A-F]{8}:[0-9A-F]{4} 0A " /proc/net/tcp
}

# wait_for DESCRIPTION COMMAND...: polls COMMAND every 0.1 s until it succeeds or the deadline
# passes, in which case it prints the daemons' logs and fails.
wait_for() {
  local what=$1 tries=0
  shift
  until "$@"; do
    tries=$((tries + 1))
    if [ "$tries" -ge "$DEADLINE_TENTHS" ]; then
      echo "daemons.sh: timed out waiting for $what" >&2
      for log in "$dir/postfix.log" "$dir/dovecot.log"; do
        [ -f "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
      done
      return 1
    fi
    sleep 0.1
  done
}

# running PID: true when process PID exists and is not a zombie. The daemons detach, so their
# exit status goes to whatever reaps orphans here; in a container whose init does not reap,
# an exited daemon stays a zombie that `kill -0` still finds.
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  case ${stat:0:1} in
    Z | X | "") return 1 ;;
    *) return 0 ;;
  esac
}

# pid_alive FILE: true when FILE holds the pid of a running process.
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -d ' \n' <"$1")
  [ -n "$pid" ] && running "$pid"
}

start() {
  local url=${1:-}
  [ "$(id -u)" -eq 0 ] || die "must run as root (Postfix's master and Dovecot's master start as root and drop privileges)"
  command -v postfix >/dev/null || die "postfix is not installed (apt-get install postfix)"
  command -v dovecot >/dev/null || die "dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd dovecot-pop3d)"
  [ -x /usr/lib/dovecot/lmtp ] || die "dovecot's LMTP server is not installed (apt-get install dovecot-lmtpd)"
  [ -x /usr/lib/dovecot/imap ] || die "dovecot's IMAP server is not installed (apt-get install dovecot-imapd)"
  [ -x /usr/lib/dovecot/pop3 ] || die "dovecot's POP3 server is not installed (apt-get install dovecot-pop3d)"
  getent passwd postfix >/dev/null || die "user postfix is missing (the postfix package creates it)"
  getent passwd dovenull >/dev/null || die "user dovenull is missing (the dovecot-core package creates it)"

  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # Postfix's and Dovecot's unprivileged processes (users postfix, dovecot, dovenull, nobody)
  # must traverse DIR to reach the LMTP and auth sockets and the mail store.
  chmod 755 "$dir"
  [ ! -e "$dir/postfix-etc" ] || die "$dir already holds a configuration; use a fresh directory"

  local smtp_port ps_port imap_port pop3_port closed_port
  read -r smtp_port ps_port imap_port pop3_port closed_port <<<"$(free_ports 5)"

  local user=alice@livetap.test password=livetap-secret-1
  local etc=$dir/postfix-etc run=$dir/dovecot-run
  local mail_uid mail_gid
  mail_uid=$(id -u nobody)
  mail_gid=$(id -g nobody)

  mkdir -p "$etc" "$dir/postfix-spool" "$dir/postfix-data" "$dir/dovecot-state" "$dir/mail/alice"
  chown "$mail_uid:$mail_gid" "$dir/mail/alice"
  # Postfix's master takes its lock in data_directory as user postfix.
  chown postfix "$dir/postfix-data"
  : >"$dir/postfix.log"
  : >"$dir/dovecot.log"

  # A self-signed certificate for smtpd's STARTTLS, so TLS sessions can be logged.
  local tls=no
  if command -v openssl >/dev/null; then
    if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=mail.livetap.test" \
      -keyout "$etc/tls.key" -out "$etc/tls.crt" >/dev/null 2>&1; then
      chmod 600 "$etc/tls.key"
      tls=yes
    fi
  fi

  local lifetime=${MAILLOG_QUEUE_LIFETIME:-1d} retry=${MAILLOG_RETRY:-300s}
  cat >"$etc/main.cf" <<EOF
# Generated by tests/maillog/daemons.sh: a throwaway instance, loopback only.
compatibility_level = 3.6
queue_directory = $dir/postfix-spool
data_directory = $dir/postfix-data
mail_owner = postfix
setgid_group = postdrop

# Postfix >= 3.4 logs through postlogd (see master.cf) into this file, not to syslog. The
# file must start with one of maillog_file_prefixes.
maillog_file = $dir/postfix.log
maillog_file_prefixes = $dir

myhostname = mail.livetap.test
mydomain = livetap.test
myorigin = \$mydomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
smtp_dns_support_level = disabled
smtpd_banner = \$myhostname ESMTP
biff = no
append_dot_mydomain = no
alias_maps =
alias_database =

# No relaying anywhere, not even for loopback clients: mynetworks permits nothing because the
# relay restrictions never consult it. Mail is accepted only for the local virtual domain and
# for deferred.test, whose mail goes to a closed port and is deferred.
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions =
relay_domains = deferred.test
transport_maps = inline:{ deferred.test=smtp:[127.0.0.1]:$closed_port, {bounced.test=error:5.1.1 mailbox unavailable} }

# The local users are Dovecot's, delivered over LMTP. An address not in the map is rejected at
# RCPT time (smtpd_reject_unlisted_recipient, on by default, made explicit here).
virtual_mailbox_domains = livetap.test
virtual_mailbox_maps = inline:{ $user=ok }
# bounce-me@ is valid at RCPT time (an alias), and cleanup rewrites it to bounced.test, whose
# transport is the error transport: its mail is accepted, then bounced at once.
virtual_alias_maps = inline:{ postmaster@livetap.test=$user, root@livetap.test=$user, bounce-me@livetap.test=someone@bounced.test }
virtual_transport = lmtp:unix:$run/lmtp
smtpd_reject_unlisted_recipient = yes

# SASL through Dovecot's auth service, so a failed AUTH is logged by both.
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $run/auth-postfix
smtpd_sasl_authenticated_header = no

# Retry and expiry: long by default (one attempt per test); short for the corpus runs.
maximal_queue_lifetime = $lifetime
bounce_queue_lifetime = $lifetime
queue_run_delay = $retry
minimal_backoff_time = $retry
maximal_backoff_time = $retry

# postscreen on its own port: loopback is not allow-listed, so its tests run and log.
postscreen_access_list =
postscreen_dnsbl_sites =
postscreen_greet_wait = ${MAILLOG_GREET_WAIT:-1s}
postscreen_greet_action = enforce
postscreen_cache_map = btree:\$data_directory/postscreen_cache
EOF
  if [ "$tls" = yes ]; then
    cat >>"$etc/main.cf" <<EOF

# Opportunistic STARTTLS with a self-signed certificate, logged at level 1.
smtpd_tls_security_level = may
smtpd_tls_cert_file = $etc/tls.crt
smtpd_tls_key_file = $etc/tls.key
smtpd_tls_loglevel = 1
smtp_tls_security_level = none
EOF
  fi

  # No service is chrooted: a chroot would need copies of /etc files inside the queue directory.
  cat >"$etc/master.cf" <<EOF
# Generated by tests/maillog/daemons.sh.
127.0.0.1:$smtp_port inet n - n - - smtpd
127.0.0.1:$ps_port inet n - n - 1 postscreen
smtpd     pass  -       -       n       -       -       smtpd
dnsblog   unix  -       -       n       -       0       dnsblog
tlsproxy  unix  -       -       n       -       0       tlsproxy
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

  # Dovecot: one user in a passwd-file, PLAIN so the test knows the password.
  printf '%s:{PLAIN}%s:%s:%s::%s\n' "$user" "$password" "$mail_uid" "$mail_gid" "$dir/mail/alice" >"$dir/dovecot-users"
  chmod 640 "$dir/dovecot-users"
  chgrp dovecot "$dir/dovecot-users"

  cat >"$dir/dovecot.conf" <<EOF
# Generated by tests/maillog/daemons.sh: a throwaway instance, loopback only.
instance_name = livetap-test
base_dir = $run
state_dir = $dir/dovecot-state
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
protocols = imap pop3 lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/dovecot-users
}
userdb {
  driver = passwd-file
  args = username_format=%u $dir/dovecot-users
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap_port
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $pop3_port
  }
  inet_listener pop3s {
    port = 0
  }
}
service submission-login {
  inet_listener submission {
    port = 0
  }
}
# Postfix's lmtp client and smtpd run as user postfix; the sockets are in this throwaway
# directory only, so world access is harmless.
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
service auth {
  unix_listener auth-postfix {
    mode = 0666
  }
}
protocol lmtp {
  postmaster_address = postmaster@livetap.test
}
EOF
  if [ -n "$url" ]; then
    cat >>"$dir/dovecot.conf" <<EOF

# Dovecot 2.3's event exporter: every event matched by a metric below is POSTed as one JSON
# object to livetap's ingest endpoint.
event_exporter livetap {
  format = json
  format_args = time-rfc3339
  transport = http-post
  transport_args = $url
  transport_timeout = 5 secs
}
# Authentication: the auth service's verdict (IMAP, POP3 and Postfix's SASL alike) and the
# login process's view of the same request.
metric livetap_auth {
  exporter = livetap
  filter = event=auth_request_finished
}
metric livetap_login {
  exporter = livetap
  filter = event=auth_client_request_finished
}
metric livetap_imap_command {
  exporter = livetap
  filter = event=imap_command_finished
}
metric livetap_lmtp_command {
  exporter = livetap
  filter = event=smtp_server_command_finished AND category=lmtp
}
metric livetap_lmtp_transaction {
  exporter = livetap
  filter = event=smtp_server_transaction_finished AND category=lmtp
}
metric livetap_delivery {
  exporter = livetap
  filter = event=mail_delivery_finished
}
# The end of a mail user's session (IMAP, POP3, LMTP): Dovecot 2.3 has no named event for a
# client's disconnection, this one ends every logged-in session. LMTP also opens and ends an
# internal "raw mail user" session per message, which says nothing about a client.
metric livetap_session_end {
  exporter = livetap
  filter = event=mail_user_session_finished AND NOT user="raw mail user"
}
EOF
  fi

  # Postfix: `postfix start` checks the configuration and creates the queue's directories with
  # their owners (post-install create-missing) before it starts the master. The daemons get no
  # descriptor of ours: a caller reading our output through a pipe until its end would
  # otherwise wait for the daemons to exit.
  local out=$dir/start-output.txt
  postfix -c "$etc" start </dev/null >"$out" 2>&1 || { cat "$out" >&2; die "postfix did not start (see $dir/postfix.log)"; }
  dovecot -c "$dir/dovecot.conf" </dev/null >>"$out" 2>&1 || { cat "$out" >&2; die "dovecot did not start (see $dir/dovecot.log)"; }

  wait_for "Postfix's master" pid_alive "$dir/postfix-spool/pid/master.pid"
  wait_for "Postfix's smtpd on 127.0.0.1:$smtp_port" listening "$smtp_port"
  wait_for "Postfix's postscreen on 127.0.0.1:$ps_port" listening "$ps_port"
  wait_for "Postfix's log $dir/postfix.log" grep -q 'daemon started' "$dir/postfix.log"
  wait_for "Dovecot's master" pid_alive "$run/master.pid"
  wait_for "Dovecot's IMAP on 127.0.0.1:$imap_port" listening "$imap_port"
  wait_for "Dovecot's POP3 on 127.0.0.1:$pop3_port" listening "$pop3_port"
  wait_for "Dovecot's LMTP socket" test -S "$run/lmtp"
  wait_for "Dovecot's auth socket" test -S "$run/auth-postfix"
  wait_for "Dovecot's log $dir/dovecot.log" grep -q 'starting up' "$dir/dovecot.log"

  cat <<EOF
DIR=$dir
SMTP_PORT=$smtp_port
POSTSCREEN_PORT=$ps_port
IMAP_PORT=$imap_port
POP3_PORT=$pop3_port
CLOSED_PORT=$closed_port
POSTFIX_LOG=$dir/postfix.log
DOVECOT_LOG=$dir/dovecot.log
POSTFIX_CONFIG=$etc
DOVECOT_CONFIG=$dir/dovecot.conf
LMTP_SOCKET=$run/lmtp
USER=$user
PASSWORD=$password
LOCAL_DOMAIN=livetap.test
DEFERRED_DOMAIN=deferred.test
BOUNCED_ADDRESS=bounce-me@livetap.test
TLS=$tls
EXPORTER_URL=$url
EOF
}

# children PID...: the pids of the direct children of the given processes, from /proc.
children() {
  [ $# -gt 0 ] || return 0
  local stat pid ppid rest p
  for stat in /proc/[0-9]*/stat; do
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do
    # not: state, then the parent's pid.
    { read -r rest <"$stat"; } 2>/dev/null || continue
    pid=${rest%% *}
    rest=${rest##*) }
    read -r _ ppid _ <<<"$rest"
    for p in "$@"; do
      [ "$ppid" = "$p" ] && echo "$pid"
    done
  done
  return 0
}

# gone PIDFILE: true when the process named by PIDFILE has exited (or never ran).
gone() {
  ! pid_alive "$1"
}

stop() {
  [ -d "$dir" ] || die "$dir does not exist"
  dir=$(cd "$dir" && pwd)
  local run=$dir/dovecot-run status=0
  local postfix_pid="" dovecot_pid=""
  pid_alive "$dir/postfix-spool/pid/master.pid" && postfix_pid=$(tr -d ' \n' <"$dir/postfix-spool/pid/master.pid")
  pid_alive "$run/master.pid" && dovecot_pid=$(tr -d ' \n' <"$run/master.pid")

  local kids
  kids=$(children $postfix_pid $dovecot_pid)

  # Both masters stop their children and exit on SIGTERM (what `postfix stop` and
  # `dovecot stop` send); signalling both first lets their shutdowns overlap.
  [ -z "$postfix_pid" ] || kill -TERM "$postfix_pid" 2>/dev/null || true
  [ -z "$dovecot_pid" ] || kill -TERM "$dovecot_pid" 2>/dev/null || true
  if [ -n "$postfix_pid" ] && ! wait_for "Postfix's master to exit" gone "$dir/postfix-spool/pid/master.pid"; then
    kill -9 "$postfix_pid" 2>/dev/null || true
    status=1
  fi
  if [ -n "$dovecot_pid" ] && ! wait_for "Dovecot's master to exit" gone "$run/master.pid"; then
    kill -9 "$dovecot_pid" 2>/dev/null || true
    status=1
  fi
  # The masters' children exit after their master; Dovecot's anvil, log, auth and stats linger
  # for seconds until they notice it is gone, so they get a SIGTERM of their own. The list was
  # taken before the stop, since orphans are re-parented. Only these pids are signalled.
  local k
  for k in $kids; do
    kill -TERM "$k" 2>/dev/null || true
  done
  all_gone() {
    local p
    for p in $postfix_pid $dovecot_pid $kids; do
      if running "$p"; then return 1; fi
    done
    return 0
  }
  wait_for "the daemons' processes to exit" all_gone || status=1
  return $status
}

case $action in
  start) start "${3:-}" ;;
  stop) stop ;;
  *) usage ;;
esac
