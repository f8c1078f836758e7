#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1, from the installed binaries,
# for the coalescer-postgres tests (and CI, and a developer).
#
#   scripts/pg-throwaway.sh start DIR [--watch PID]   prints the URL on stdout
#   scripts/pg-throwaway.sh restart DIR   (same port; for fault tests)
#   scripts/pg-throwaway.sh stop DIR
#
# `start` makes DIR, runs initdb in it (trust authentication, loopback and
# a socket in DIR only), starts the server on a free port and prints
# `postgres://postgres@127.0.0.1:PORT/postgres`. With --watch PID a detached
# watcher stops the server and removes DIR once process PID has exited (the
# tests pass their own PID). As root the server runs as the `postgres` user
# (PostgreSQL refuses to run as root), which Debian's package creates.
# Exit codes: 0 started; 3 no PostgreSQL server binaries installed; 1 other.
set -euo pipefail

find_bindir() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
  fi
}

as_server_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|restart|stop DIR [--watch PID]" >&2; exit 1; }
bindir=$(find_bindir)

case "$cmd" in
start)
  [ -n "$bindir" ] || { echo "no PostgreSQL server binaries (initdb, pg_ctl) installed" >&2; exit 3; }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "running as root and there is no 'postgres' user to run the server as" >&2
    exit 1
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_server_user "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  started=
  for _ in 1 2 3 4 5 6 7 8; do
    port=$(( 20000 + RANDOM % 40000 ))
    if as_server_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c max_connections=300" \
        start >/dev/null 2>&1; then
      started=$port
      break
    fi
  done
  [ -n "$started" ] || { echo "the server did not start:" >&2; tail -n 20 "$dir/server.log" >&2 || true; exit 1; }
  if [ "${3:-}" = "--watch" ] && [ -n "${4:-}" ]; then
    watched=$4
    setsid bash -c '
      while kill -0 "$0" 2>/dev/null; do sleep 1; done
      "$1" stop "$2" >/dev/null 2>&1
    ' "$watched" "$0" "$dir" </dev/null >/dev/null 2>&1 &
  fi
  echo "postgres://postgres@127.0.0.1:$started/postgres"
  ;;
restart)
  [ -n "$bindir" ] || { echo "no PostgreSQL server binaries (initdb, pg_ctl) installed" >&2; exit 3; }
  as_server_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -m fast restart >/dev/null
  ;;
stop)
  if [ -n "$bindir" ] && [ -d "$dir/data" ]; then
    as_server_user "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop DIR [--watch PID]" >&2
  exit 1
  ;;
esac
