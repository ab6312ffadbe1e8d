#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests (or reuses the one already running) and
# prints how to reach it, as libpq-style `key=value` settings on one line.
#
#   scripts/test-postgres.sh          start (or reuse), print "host=127.0.0.1 port=N user=postgres"
#   scripts/test-postgres.sh stop     stop it and delete its files
#
# The cluster lives in $MYELIN_TEST_PG_DIR (default /tmp/myelin-test-pg), listens on 127.0.0.1
# only, trusts local connections, and runs with fsync off (unless MYELIN_PG_DURABLE=1). Needs
# Debian's `postgresql` package (initdb and pg_ctl under /usr/lib/postgresql/*/bin); as root,
# the server runs as the package's `postgres` user, since PostgreSQL refuses to run as root.
#
# With MYELIN_TEST_PG_TLS=<dir> (holding server.crt, server.key and ca.crt, in PEM), the
# cluster takes TCP connections over TLS only: `trust` for every role but `certuser`, which
# must show a client certificate that ca.crt signed (`cert` authentication); Unix sockets stay
# `trust`.
set -euo pipefail

dir=${MYELIN_TEST_PG_DIR:-/tmp/myelin-test-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
    echo "PostgreSQL is not installed: apt-get install postgresql" >&2
    exit 1
fi

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
exec 9>"$dir.lock"
flock 9

if [ "${1:-}" = stop ]; then
    if [ -d "$dir/data" ]; then as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$dir"
    exit 0
fi

if [ -f "$dir/port" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    echo "host=127.0.0.1 port=$(cat "$dir/port") user=postgres"
    exit 0
fi

rm -rf "$dir/data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1
# Test data only, so durability is off; MYELIN_PG_DURABLE=1 keeps PostgreSQL's defaults (the
# benchmarks' cluster: both servers measured on it commit as in production).
opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=1000 -c shared_buffers=256MB"
if [ "${MYELIN_PG_DURABLE:-0}" != 1 ]; then
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
fi
if [ -n "${MYELIN_TEST_PG_TLS:-}" ]; then
    for f in server.crt server.key ca.crt; do cp "$MYELIN_TEST_PG_TLS/$f" "$dir/data/$f"; done
    chmod 600 "$dir/data/server.key"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/data/server.crt" "$dir/data/server.key" "$dir/data/ca.crt"
    opts="$opts -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt"
    printf '%s\n' 'local all all trust' 'hostssl all certuser 127.0.0.1/32 cert' \
        'hostssl all all 127.0.0.1/32 trust' 'hostnossl all all 127.0.0.1/32 reject' >"$dir/data/pg_hba.conf"
fi
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "$opts" start >/dev/null 9>&-
echo "$port" >"$dir/port"
echo "host=127.0.0.1 port=$port user=postgres"
