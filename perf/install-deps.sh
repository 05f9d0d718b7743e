#!/usr/bin/env bash
# Checks for the Debian packages the perf harness needs, and installs them only when asked.
#
#   nginx + libnginx-mod-nchan   the Nchan peer (perf/nchan/start.sh, loadgen --peer nchan)
#   valgrind                     instruction counts (perf/callgrind.sh)
#   linux-perf                   system call counts (perf/syscalls.sh) and profiles
#
# Usage: perf/install-deps.sh             report what is present and what is missing
#        perf/install-deps.sh --install   also apt-get install what is missing (needs root)
#
# Exit status: 0 when everything is present (after installing, with --install), 1 otherwise.
# Nothing is installed without --install. perf/nchan/start.sh runs its own nginx with its own
# config on loopback and never touches the system one (on a machine with systemd, Debian's
# nginx package also starts the default site on port 80; stop it if you don't want it).
set -euo pipefail

install=0
case "${1:-}" in
  --install) install=1 ;;
  "") ;;
  -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1 (use --install or nothing)" >&2; exit 2 ;;
esac

NCHAN_SO=/usr/lib/nginx/modules/ngx_nchan_module.so

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
have_nchan() {
  [ -f "$NCHAN_SO" ] || [ -f /usr/share/nginx/modules-available/mod-nchan.conf ] ||
    [ -f /usr/share/nginx/modules-available/mod-http-nchan.conf ]
}
have_valgrind() { command -v valgrind >/dev/null 2>&1; }
have_perf() { command -v perf >/dev/null 2>&1; }

missing=()
report() {
  missing=()
  if have_nginx; then
    echo "ok       nginx ($({ /usr/sbin/nginx -v 2>&1 || nginx -v 2>&1; } | sed 's/^nginx version: //'))"
  else
    echo "MISSING  nginx                (Debian package: nginx-light, or nginx)"
    missing+=(nginx-light)
  fi
  if have_nchan; then
    local v
    v=$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || true)
    echo "ok       nchan module ${v:+($v) }$NCHAN_SO"
  else
    echo "MISSING  nchan module         (Debian package: libnginx-mod-nchan)"
    missing+=(libnginx-mod-nchan)
  fi
  if have_valgrind; then
    echo "ok       valgrind ($(valgrind --version))"
  else
    echo "MISSING  valgrind             (Debian package: valgrind)"
    missing+=(valgrind)
  fi
  if have_perf; then
    echo "ok       perf ($(perf --version 2>/dev/null || echo present))"
  else
    echo "MISSING  perf                 (Debian package: linux-perf)"
    missing+=(linux-perf)
  fi
}

report
if [ ${#missing[@]} -eq 0 ]; then
  echo "all perf dependencies are present"
  exit 0
fi

if [ "$install" -eq 0 ]; then
  echo
  echo "not installing anything. To install the missing packages, run:"
  echo "  perf/install-deps.sh --install     (runs: apt-get install -y ${missing[*]})"
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "installing needs root (or sudo): apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

echo
echo "installing: ${missing[*]}"
# The package lists may be empty on a fresh machine: refresh them when the candidates are unknown.
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  echo "+ apt-get update"
  "${sudo[@]}" apt-get update
fi
echo "+ apt-get install -y ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"

echo
report
if [ ${#missing[@]} -eq 0 ]; then
  echo "all perf dependencies are present"
  exit 0
fi
echo "still missing: ${missing[*]}" >&2
exit 1
