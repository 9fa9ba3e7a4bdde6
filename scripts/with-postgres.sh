#!/usr/bin/env bash
# Run a command against a throwaway PostgreSQL: scripts/with-postgres.sh pytest -m postgres
#
# Starts a private server in a temporary directory, exports
# RELAY_TEST_POSTGRES_URL for the command, and removes everything on exit, even
# when the command fails. Port: RELAY_PG_PORT (default 54329).
set -euo pipefail

port=${RELAY_PG_PORT:-54329}

find_pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
pgbin=$(find_pgbin || true)
if [[ -z "$pgbin" ]]; then
    # A fresh machine (CI image without the server): install the distribution's.
    echo "with-postgres: installing postgresql" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    pgbin=$(find_pgbin)
fi

tmpdir=$(mktemp -d /tmp/relay-pg.XXXXXX)
# initdb refuses to run as root; the server must own its data directory.
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$tmpdir"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

cleanup() {
    as_pg "$pgbin/pg_ctl" -D "$tmpdir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$tmpdir"
}
trap cleanup EXIT

as_pg "$pgbin/initdb" -D "$tmpdir/data" -U postgres --auth=trust --no-sync \
    -E UTF8 --locale=C.UTF-8 >/dev/null
# -k keeps the socket out of the root-owned /var/run/postgresql; fsync and friends
# are off because this server's data is thrown away (never do this in production).
if ! as_pg "$pgbin/pg_ctl" -D "$tmpdir/data" -l "$tmpdir/log" -w -t 30 -o \
    "-p $port -k $tmpdir -c listen_addresses=127.0.0.1 -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null; then
    cat "$tmpdir/log" >&2
    exit 1
fi

export RELAY_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/postgres"
# Not exec: the trap must run after the command to stop the server.
"$@"
