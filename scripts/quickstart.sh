#!/usr/bin/env bash
# Quickstart: build pgcorral, create a throwaway PostgreSQL 15 cluster, put pgcorral in front of
# it using the sample files from etc/, and say hello through it.
#
#   scripts/quickstart.sh          (re)create everything; a previous run is stopped first
#   scripts/quickstart.sh stop     stop what a previous run started and remove its directory
#
# Environment:
#   PGCORRAL_QUICKSTART_DIR  working directory (default /tmp/pgcorral-quickstart)
#   PGCORRAL_PG_BIN          PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)
#   PGCORRAL_PORT            pgcorral's client port (default 2345, or the next free one)
#   PGCORRAL_PG_PORT         PostgreSQL's port (default 5433, or the next free one)
#   PGCORRAL_BIN             use this pgcorral binary instead of building target/release/pgcorral
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QS=${PGCORRAL_QUICKSTART_DIR:-/tmp/pgcorral-quickstart}
PG_BIN=${PGCORRAL_PG_BIN:-/usr/lib/postgresql/15/bin}

die() {
    echo "quickstart: $*" >&2
    exit 1
}
say() { echo "quickstart: $*"; }

as_root=0
[ "$(id -u)" -eq 0 ] && as_root=1

# Run a command as the PostgreSQL OS user (PostgreSQL refuses root).
as_pg() {
    if [ "$as_root" -eq 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port_from() {
    local p=$1
    while port_busy "$p"; do
        p=$((p + 1))
    done
    echo "$p"
}

# Whether pid $1 is (still) a pgcorral process.
is_pgcorral() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q pgcorral; }

# Stops what a previous run left, using the pidfiles it wrote.
stop_previous() {
    local pidfile=$QS/pgcorral.quickstart.pid
    if [ -f "$pidfile" ]; then
        local pid
        pid=$(cat "$pidfile")
        if [ -n "$pid" ] && is_pgcorral "$pid"; then
            say "stopping pgcorral (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                is_pgcorral "$pid" || break
                sleep 0.1
            done
            if is_pgcorral "$pid"; then
                say "pgcorral did not stop within 10 s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
    fi
    if [ -f "$QS/data/postmaster.pid" ]; then
        say "stopping PostgreSQL in $QS/data"
        as_pg "$PG_BIN/pg_ctl" -D "$QS/data" -m fast -w stop >/dev/null 2>&1 ||
            as_pg "$PG_BIN/pg_ctl" -D "$QS/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -d "$QS" ]; then
        # Only ever remove a directory this script created.
        [ -f "$QS/.pgcorral-quickstart" ] || die "$QS exists but was not made by quickstart.sh; remove it yourself"
        rm -rf "$QS"
    fi
}

if [ "${1:-}" = "stop" ]; then
    stop_previous
    say "stopped; $QS removed"
    exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [stop]"

# Prerequisites.
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs)"
for tool in initdb pg_ctl postgres; do
    [ -x "$PG_BIN/$tool" ] || die "$PG_BIN/$tool missing: apt-get install postgresql-15 (or set PGCORRAL_PG_BIN)"
done
command -v psql >/dev/null 2>&1 || die "psql not found: apt-get install postgresql-client-15"
if [ "$as_root" -eq 1 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the OS user postgres (apt-get install postgresql-15)"
fi

if [ -n "${PGCORRAL_BIN:-}" ]; then
    BIN=$PGCORRAL_BIN
    say "using $BIN (PGCORRAL_BIN; no build)"
else
    say "building pgcorral (release)"
    (cd "$ROOT" && cargo build --release -p pgcorral --bin pgcorral)
    BIN=$ROOT/target/release/pgcorral
fi
[ -x "$BIN" ] || die "$BIN was not built"

stop_previous

mkdir -p "$QS/run"
touch "$QS/.pgcorral-quickstart"
if [ "$as_root" -eq 1 ]; then
    chown -R postgres:postgres "$QS"
    runuser -u postgres -- test -x "$BIN" ||
        die "user postgres cannot execute $BIN: make the checkout readable (chmod o+rx on its parents)"
fi

PG_PORT=$(free_port_from "${PGCORRAL_PG_PORT:-5433}")
POOL_PORT=$(free_port_from "${PGCORRAL_PORT:-2345}")
[ "$POOL_PORT" != "$PG_PORT" ] || POOL_PORT=$(free_port_from $((PG_PORT + 1)))

say "creating a PostgreSQL 15 cluster in $QS/data (port $PG_PORT)"
as_pg "$PG_BIN/initdb" -D "$QS/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$QS/initdb.log" 2>&1 ||
    { cat "$QS/initdb.log" >&2; die "initdb failed"; }
as_pg "$PG_BIN/pg_ctl" -D "$QS/data" -l "$QS/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $QS/run -c listen_addresses=127.0.0.1" start >/dev/null ||
    { cat "$QS/postgres.log" >&2; die "PostgreSQL did not start"; }

say "configuring pgcorral from $ROOT/etc (port $POOL_PORT)"
awk -v port="$POOL_PORT" -v pgport="$PG_PORT" -v run="$QS/run" '
    /^\[/ { section = $0 }
    section == "[pgcorral]" && /^host *=/ { print "host = 127.0.0.1"; next }
    section == "[pgcorral]" && /^port *=/ { print "port = " port; next }
    section == "[pgcorral]" && /^unix_socket_dir *=/ { print "unix_socket_dir = " run; next }
    section == "[pgcorral]" && /^#?pidfile *=/ { print "pidfile = " run "/pgcorral.pid"; next }
    section == "[primary]" && /^host *=/ { print "host = 127.0.0.1"; next }
    section == "[primary]" && /^port *=/ { print "port = " pgport; next }
    { print }
' "$ROOT/etc/pgcorral.conf" >"$QS/pgcorral.conf"
cp "$ROOT/etc/pgcorral_hba.conf" "$QS/pgcorral_hba.conf"
cp "$ROOT/etc/pgcorral_databases.conf" "$QS/pgcorral_databases.conf"
if [ "$as_root" -eq 1 ]; then chown postgres:postgres "$QS"/pgcorral*.conf; fi

say "starting pgcorral"
launch=("$BIN" -c "$QS/pgcorral.conf" -a "$QS/pgcorral_hba.conf" -l "$QS/pgcorral_databases.conf")
if [ "$as_root" -eq 1 ]; then
    # setpriv execs the daemon directly, so $! is its pid.
    launch=(setpriv --reuid=postgres --regid=postgres --init-groups "${launch[@]}")
fi
(cd "$QS" && exec env HOME="$QS" nohup "${launch[@]}" </dev/null >>"$QS/pgcorral.log" 2>&1) &
pid=$!
echo "$pid" >"$QS/pgcorral.quickstart.pid"

up=0
for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    if port_busy "$POOL_PORT"; then
        up=1
        break
    fi
    sleep 0.1
done
if [ "$up" -ne 1 ]; then
    echo "---- $QS/pgcorral.log ----" >&2
    cat "$QS/pgcorral.log" >&2 || true
    die "pgcorral did not come up on port $POOL_PORT (run '$0 stop' to clean up)"
fi

say "connecting through pgcorral"
PGCONNECT_TIMEOUT=10 psql -X -h 127.0.0.1 -p "$POOL_PORT" -U postgres -d postgres \
    -c "SELECT 'hello through pgcorral' AS greeting, version()"

cat <<INFO

pgcorral (pid $pid) listens on 127.0.0.1:$POOL_PORT and $QS/run/.s.PGSQL.$POOL_PORT,
in front of PostgreSQL 15 on 127.0.0.1:$PG_PORT (data in $QS/data).

  connect:   psql -h 127.0.0.1 -p $POOL_PORT -U postgres postgres
             psql -h $QS/run -p $POOL_PORT -U postgres postgres
  bench:     pgbench -i -h 127.0.0.1 -p $POOL_PORT -U postgres postgres
  logs:      $QS/pgcorral.log, $QS/postgres.log
  config:    $QS/pgcorral.conf, $QS/pgcorral_hba.conf, $QS/pgcorral_databases.conf
  stop:      $0 stop
INFO
