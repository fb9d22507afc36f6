#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the tests (docs/scaling.md):
#
#   bash scripts/pg-scratch.sh start [DIR] [PORT]   init (once) and start; prints the URL last
#   bash scripts/pg-scratch.sh stop  [DIR]
#
# Debian's `postgresql` package (installed when missing, as root); the cluster is run
# by the `postgres` user (initdb refuses root) with trust auth on 127.0.0.1 only, its
# data in DIR (default /tmp/ccgate-pg). Tests read the URL from CCGATE_TEST_POSTGRES_URL
# and create a database of their own in it.
set -euo pipefail
cmd=${1:-start}
dir=${2:-/tmp/ccgate-pg}
port=${3:-54329}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z $bin || ! -x $bin/initdb ]]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
as_pg() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $cmd in
  start)
    if [[ $(id -u) == 0 ]]; then
      mkdir -p "$dir"
      chown postgres: "$dir"
    fi
    if [[ ! -f $dir/PG_VERSION ]]; then
      as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/log" -w \
        -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off" start >/dev/null
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
  *)
    sed -n '2,5p' "$0" >&2
    exit 2
    ;;
esac
