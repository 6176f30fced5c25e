#!/usr/bin/env bash
# pgcorral's benchmark: pgbench straight to PostgreSQL 15, through pgcorral and through PgBouncer, on
# one machine, interleaved: session pooling (pgcorral's performance pipeline against PgBouncer's
# session mode, pool of 60) and transaction pooling (pgcorral's transaction pipeline against
# PgBouncer's transaction mode, pool of $TX_POOL_SIZE), with the poolers' CPU time per transaction.
#
#   scripts/bench.sh            full run (DURATION=15 s per pgbench run, ROUNDS=2)
#   scripts/bench.sh --quick    smoke run (DURATION=3, ROUNDS=1): checks the script, not the numbers
#
# It builds pgcorral (release), installs PgBouncer from Debian if it is missing, starts a private
# PostgreSQL 15 cluster, pgcorral and PgBouncer on free loopback ports in a temporary directory,
# runs every scenario against the three targets, measures the private memory of pgcorral's
# workers under load, prints a Markdown report and writes it to $OUT. Everything it started is
# stopped on exit, by PID. On failure the temporary directory (all logs) is kept and named.
#
# Scenarios (pgbench -S -n -j $JOBS -T $DURATION, user and database "bench", over TCP):
#   simple-<c>     -M simple   for each c in $CLIENTS
#   extended-<c>   -M extended for each c in $CLIENTS
#   connect-<c>    -M simple -C (a new connection per transaction) for each c in $CONNECT_CLIENTS
# Transaction pooling (pool of $TX_POOL_SIZE server connections), for each c in $TX_CLIENTS:
#   tx-S-<c>       -S -M simple (read-only)
#   tx-N-<c>       -N -M simple (writes: UPDATE, SELECT, INSERT in BEGIN/END)
#   tx-prep-<c>    -S -M prepared, for each c in $TX_PREPARED_CLIENTS (PgBouncer 1.18 has no
#                  prepared statements in transaction mode: pgcorral and direct only)
# Order: for each round, for each scenario: direct, pgcorral, pgbouncer, bound. The table shows
# the median over the rounds (the mean of the two middle values for an even number of rounds).
#
# "bound" is pgcorral-relay-bound (crates/pgcorral-relay-bound): a relay that does only what any
# pooler must do (read and write each message; in transaction mode, hand a shared server connection
# to a client until ReadyForQuery 'I') and nothing else, in one epoll loop like PgBouncer. It is not
# a pooler; its row shows what this machine allows a relay to reach. Not run for -C and tx-prep.
#
# Environment:
#   DURATION         seconds per pgbench run (default 15; --quick: 3)
#   ROUNDS           times the whole set of scenarios is run (default 2; --quick: 1)
#   CLIENTS          client counts of the simple/extended scenarios (default "10 50")
#   CONNECT_CLIENTS  client counts of the -C scenario (default "10"; "" to skip it)
#   JOBS             pgbench threads, -j (default 2)
#   SCALE            pgbench -i scale (default 10)
#   MEM_CLIENTS      clients of the memory-measurement run (default 10)
#   TX_CLIENTS       client counts of the transaction-pooling scenarios (default "10 50 200"; "" skips)
#   TX_PREPARED_CLIENTS  client counts of tx-prep (default "50 200"; "" skips)
#   TX_POOL_SIZE     server connections of both poolers in transaction mode (default 20)
#   OUT              report file (default target/bench/results.md; relative to the current dir)
#   PG_BIN           PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)
#   PGCORRAL_BIN     use this pgcorral binary instead of building target/release/pgcorral
#                    (pgcorral-relay-bound is then taken from the same directory)
#   BOUND            1 (default) runs the bound target beside the poolers; 0 leaves it out
#   KEEP_TMP=1       keep the temporary directory even on success
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=scripts/bench.sh

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}
say() { echo "$PROG: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

if [ "$QUICK" -eq 1 ]; then
    DURATION=3
    ROUNDS=1
fi
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS-10 50}
CONNECT_CLIENTS=${CONNECT_CLIENTS-10}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
MEM_CLIENTS=${MEM_CLIENTS:-10}
TX_CLIENTS=${TX_CLIENTS-10 50 200}
TX_PREPARED_CLIENTS=${TX_PREPARED_CLIENTS-50 200}
TX_POOL_SIZE=${TX_POOL_SIZE:-20}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
KEEP_TMP=${KEEP_TMP:-0}
BOUND=${BOUND:-1}
case "$BOUND" in 0 | 1) ;; *) die "BOUND must be 0 or 1, not '$BOUND'" ;; esac
if [ -n "${OUT:-}" ]; then
    case "$OUT" in /*) ;; *) OUT=$PWD/$OUT ;; esac
else
    OUT=$ROOT/target/bench/results.md
fi

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }
for knob in DURATION ROUNDS JOBS SCALE MEM_CLIENTS TX_POOL_SIZE; do
    is_uint "${!knob}" || die "$knob must be a positive integer, not '${!knob}'"
done
for c in $CLIENTS $CONNECT_CLIENTS $MEM_CLIENTS; do
    is_uint "$c" || die "client counts must be positive integers, not '$c'"
    [ "$c" -ge "$JOBS" ] || die "every client count must be >= JOBS ($JOBS): pgbench needs -c >= -j"
done
# Both poolers get 60 server connections (pgcorral's limit, PgBouncer's default_pool_size): more
# clients would queue, and pgcorral fails the extra ones after blocking_timeout.
POOL_SIZE=60
for c in $CLIENTS $CONNECT_CLIENTS $MEM_CLIENTS; do
    [ "$c" -le "$POOL_SIZE" ] || die "client count $c is above the poolers' $POOL_SIZE server connections"
done
for c in $TX_CLIENTS $TX_PREPARED_CLIENTS; do
    is_uint "$c" || die "client counts must be positive integers, not '$c'"
    [ "$c" -ge "$JOBS" ] || die "every client count must be >= JOBS ($JOBS): pgbench needs -c >= -j"
    [ "$c" -le 400 ] || die "transaction-pooling client count $c is above 400"
done
[ -n "$CLIENTS$CONNECT_CLIENTS$TX_CLIENTS$TX_PREPARED_CLIENTS" ] || die "no scenario selected: nothing to run"

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || die "Linux only (/proc is read for the memory figures)"
command -v cargo >/dev/null 2>&1 || [ -n "${PGCORRAL_BIN:-}" ] ||
    die "cargo not found: install Rust (https://rustup.rs), or set PGCORRAL_BIN"
for tool in initdb pg_ctl postgres; do
    [ -x "$PG_BIN/$tool" ] || die "$PG_BIN/$tool missing: apt-get install postgresql-15 (or set PG_BIN)"
done
"$PG_BIN/postgres" --version | grep -q ' 15\.' ||
    die "$PG_BIN/postgres is not PostgreSQL 15: $("$PG_BIN/postgres" --version)"
export PATH="$PATH:$PG_BIN"
for tool in psql pgbench; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install postgresql-client-15"
done
pgbench_major=$(pgbench --version | sed -n 's/.* \([0-9][0-9]*\)\.[0-9].*/\1/p')
[ -n "$pgbench_major" ] && [ "$pgbench_major" -ge 15 ] ||
    die "pgbench 15 or newer needed (for 'number of failed transactions'): $(pgbench --version)"
for tool in runuser pgrep awk sort; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (util-linux / procps / coreutils)"
done
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the OS user postgres (apt-get install postgresql-15 creates it)"
    AS_PG=(runuser -u postgres --)
else
    AS_PG=()
fi
as_pg() { "${AS_PG[@]}" "$@"; }

if ! command -v pgbouncer >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "pgbouncer not found and not root: apt-get install pgbouncer"
    command -v apt-get >/dev/null 2>&1 || die "pgbouncer not found and no apt-get to install it"
    say "pgbouncer missing: apt-get update && apt-get install -y pgbouncer"
    apt_log=$(mktemp /tmp/pgcorral-bench-apt.XXXXXX)
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer; } >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "installing pgbouncer failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer still not on PATH after apt-get install"
fi

if [ -n "${PGCORRAL_BIN:-}" ]; then
    BIN=$PGCORRAL_BIN
    say "using $BIN (PGCORRAL_BIN; no build)"
else
    say "cargo build --release -p pgcorral -p pgcorral-relay-bound"
    (cd "$ROOT" && cargo build --release -p pgcorral -p pgcorral-relay-bound) ||
        die "cargo build --release -p pgcorral -p pgcorral-relay-bound failed"
    BIN=$ROOT/target/release/pgcorral
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
BOUND_BIN=$(dirname "$BIN")/pgcorral-relay-bound
[ "$BOUND" -eq 0 ] || [ -x "$BOUND_BIN" ] ||
    die "$BOUND_BIN missing: cargo build --release -p pgcorral-relay-bound (or BOUND=0)"

# ---------------------------------------------------------------------------------------------
# Processes and cleanup
# ---------------------------------------------------------------------------------------------
WORK=
PG_DATA=
PGCORRAL_PID=
PGBOUNCER_PID=
PGCORRAL_TX_PID=
PGBOUNCER_TX_PID=
BOUND_PID=
BOUND_TX_PID=
BENCH_PID=
SUCCESS=0

# Waits up to $2 tenths of a second for pid $1 to go; 0 when it is gone.
wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}

# TERM, then KILL after 10 s, pid $1 if its command line still contains $2 (a recycled PID is left).
stop_pid() {
    local pid=$1 name=$2
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    wait_gone "$pid" 100 || {
        say "$name (pid $pid) did not stop within 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || true
    }
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    set +e
    [ -n "$BENCH_PID" ] && stop_pid "$BENCH_PID" pgbench
    if [ -n "$PGCORRAL_PID" ]; then
        local workers
        workers=$(pgrep -P "$PGCORRAL_PID" 2>/dev/null)
        stop_pid "$PGCORRAL_PID" pgcorral
        # Workers outlive main only if it was killed: end them too, by PID.
        for w in $workers; do stop_pid "$w" pgcorral; done
    fi
    [ -n "$PGBOUNCER_PID" ] && stop_pid "$PGBOUNCER_PID" pgbouncer
    if [ -n "$PGCORRAL_TX_PID" ]; then
        local txw
        txw=$(pgrep -P "$PGCORRAL_TX_PID" 2>/dev/null)
        stop_pid "$PGCORRAL_TX_PID" pgcorral
        for w in $txw; do stop_pid "$w" pgcorral; done
    fi
    [ -n "$PGBOUNCER_TX_PID" ] && stop_pid "$PGBOUNCER_TX_PID" pgbouncer
    [ -n "$BOUND_PID" ] && stop_pid "$BOUND_PID" pgcorral-relay-bound
    [ -n "$BOUND_TX_PID" ] && stop_pid "$BOUND_TX_PID" pgcorral-relay-bound
    if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        local pm
        pm=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null)
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1
        [ -n "$pm" ] && stop_pid "$pm" postgres
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$SUCCESS" -eq 1 ] && [ "$KEEP_TMP" != 1 ]; then
            rm -rf "$WORK"
        else
            say "logs kept in $WORK:"
            say "  PostgreSQL: $WORK/postgres.log   pgcorral: $WORK/pgcorral*/pgcorral.log"
            say "  PgBouncer:  $WORK/pgbouncer*/pgbouncer.log   pgbench: $WORK/runs/*.log"
        fi
    fi
    [ "$rc" -ne 0 ] && say "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'say "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A loopback port nothing listens on and that this script has not handed out yet, below the
# kernel's ephemeral range (an outgoing connection's local port there makes bind() fail).
TAKEN=" "
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "${EPHEMERAL_LOW:-0}" -gt 12000 ] || EPHEMERAL_LOW=32768
free_port() {
    local p tries
    for ((tries = 0; tries < 200; tries++)); do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        case "$TAKEN" in *" $p "*) continue ;; esac
        if ! port_busy "$p"; then
            TAKEN="$TAKEN$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# Waits until 127.0.0.1:$1 accepts, while pid $2 lives; 0 when up.
wait_port() {
    local i
    for ((i = 0; i < 150; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        port_busy "$1" && return 0
        sleep 0.1
    done
    return 1
}

WORK=$(mktemp -d /tmp/pgcorral-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/run" "$WORK/pgcorral" "$WORK/pgbouncer" "$WORK/runs"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK"

PG_PORT=$(free_port)
CORRAL_PORT=$(free_port)
BOUNCER_PORT=$(free_port)

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
PG_DATA=$WORK/pgdata
say "PostgreSQL 15 cluster in $PG_DATA on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$WORK/initdb.log" 2>&1 || die "initdb failed: see $WORK/initdb.log"
PG_OPTS="-p $PG_PORT -k $WORK/run -c listen_addresses=127.0.0.1 -c max_connections=600"
PG_OPTS="$PG_OPTS -c fsync=off -c shared_buffers=256MB"
as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/postgres.log" -w -t 60 -o "$PG_OPTS" start \
    >/dev/null || die "PostgreSQL did not start: see $WORK/postgres.log"

psql_at() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$@"; }
psql_at "$PG_PORT" -U postgres -d postgres -c "CREATE ROLE bench LOGIN SUPERUSER" -c "CREATE DATABASE bench OWNER bench" \
    >"$WORK/setup.log" 2>&1 || die "creating role/database bench failed: see $WORK/setup.log"
say "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >>"$WORK/setup.log" 2>&1 ||
    die "pgbench -i failed: see $WORK/setup.log"

# ---------------------------------------------------------------------------------------------
# pgcorral
# ---------------------------------------------------------------------------------------------
CD=$WORK/pgcorral
cat >"$CD/pgcorral.conf" <<EOF
[pgcorral]
host = 127.0.0.1
port = $CORRAL_PORT
unix_socket_dir = $CD
max_connections = 100
pipeline = performance
log_type = console
log_level = warn
blocking_timeout = 30

[primary]
host = 127.0.0.1
port = $PG_PORT
EOF
printf 'host all all all all\nlocal all all all\n' >"$CD/pgcorral_hba.conf"
printf 'bench bench %s\n' "$POOL_SIZE" >"$CD/pgcorral_databases.conf"
# Starts pgcorral ($1: label) with the files in directory $2 on port $3; its PID in STARTED_PID.
start_pgcorral() {
    local label=$1 dir=$2 port=$3
    say "$label on 127.0.0.1:$port"
    # A simple command started with & is exec'd by the child, so $! is pgcorral's own PID.
    "$BIN" -c "$dir/pgcorral.conf" -a "$dir/pgcorral_hba.conf" -l "$dir/pgcorral_databases.conf" \
        </dev/null >"$dir/pgcorral.log" 2>&1 &
    STARTED_PID=$!
    wait_port "$port" "$STARTED_PID" || {
        tail -n 20 "$dir/pgcorral.log" >&2
        die "$label did not come up on port $port: see $dir/pgcorral.log"
    }
}
start_pgcorral pgcorral "$CD" "$CORRAL_PORT"
PGCORRAL_PID=$STARTED_PID

# The same in transaction mode, pool of $TX_POOL_SIZE.
CT=$WORK/pgcorral-tx
mkdir -p "$CT"
CORRAL_TX_PORT=$(free_port)
sed -e "s/^port = $CORRAL_PORT\$/port = $CORRAL_TX_PORT/" -e "s/^pipeline = performance/pipeline = transaction/" \
    -e "s|^unix_socket_dir = .*|unix_socket_dir = $CT|" \
    "$CD/pgcorral.conf" >"$CT/pgcorral.conf"
cp "$CD/pgcorral_hba.conf" "$CT/"
printf 'bench bench %s\n' "$TX_POOL_SIZE" >"$CT/pgcorral_databases.conf"
start_pgcorral "pgcorral (transaction)" "$CT" "$CORRAL_TX_PORT"
PGCORRAL_TX_PID=$STARTED_PID

# ---------------------------------------------------------------------------------------------
# PgBouncer (refuses root: runs as postgres)
# ---------------------------------------------------------------------------------------------
# Starts PgBouncer ($1: label) with $2/pgbouncer.ini on port $3; its PID in STARTED_PID.
start_pgbouncer() {
    local label=$1 dir=$2 port=$3
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir"
    say "$label on 127.0.0.1:$port"
    as_pg pgbouncer -d "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1 ||
        die "$label: pgbouncer -d failed: see $dir/start.log and $dir/pgbouncer.log"
    for _ in $(seq 1 100); do
        [ -s "$dir/pgbouncer.pid" ] && break
        sleep 0.1
    done
    [ -s "$dir/pgbouncer.pid" ] || die "$label wrote no pidfile: see $dir/pgbouncer.log"
    STARTED_PID=$(cat "$dir/pgbouncer.pid")
    wait_port "$port" "$STARTED_PID" || die "$label did not come up on port $port: see $dir/pgbouncer.log"
}
BD=$WORK/pgbouncer
printf '"bench" ""\n' >"$BD/userlist.txt"
cat >"$BD/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $BD
auth_type = trust
auth_file = $BD/userlist.txt
pool_mode = session
default_pool_size = $POOL_SIZE
max_client_conn = 500
logfile = $BD/pgbouncer.log
pidfile = $BD/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
start_pgbouncer PgBouncer "$BD" "$BOUNCER_PORT"
PGBOUNCER_PID=$STARTED_PID

BT=$WORK/pgbouncer-tx
mkdir -p "$BT"
BOUNCER_TX_PORT=$(free_port)
cp "$BD/userlist.txt" "$BT/"
sed -e "s/^listen_port = .*/listen_port = $BOUNCER_TX_PORT/" -e "s/^pool_mode = session/pool_mode = transaction/" \
    -e "s/^default_pool_size = .*/default_pool_size = $TX_POOL_SIZE/" -e "s|$BD|$BT|g" \
    "$BD/pgbouncer.ini" >"$BT/pgbouncer.ini"
start_pgbouncer "PgBouncer (transaction)" "$BT" "$BOUNCER_TX_PORT"
PGBOUNCER_TX_PID=$STARTED_PID

declare -A PORT_OF=([direct]=$PG_PORT [pgcorral]=$CORRAL_PORT [pgbouncer]=$BOUNCER_PORT
    [pgcorral-tx]=$CORRAL_TX_PORT [pgbouncer-tx]=$BOUNCER_TX_PORT)
declare -A PID_OF=([pgcorral]=$PGCORRAL_PID [pgbouncer]=$PGBOUNCER_PID
    [pgcorral-tx]=$PGCORRAL_TX_PID [pgbouncer-tx]=$PGBOUNCER_TX_PID)
TARGETS=(direct pgcorral pgbouncer pgcorral-tx pgbouncer-tx)

# ---------------------------------------------------------------------------------------------
# The bound: the least a relay must do (a reference, not a pooler)
# ---------------------------------------------------------------------------------------------
# Starts pgcorral-relay-bound ($1: label) on port $2 with the mode arguments after; PID in STARTED_PID.
start_bound() {
    local label=$1 port=$2
    shift 2
    say "$label on 127.0.0.1:$port"
    "$BOUND_BIN" --listen "127.0.0.1:$port" --server "127.0.0.1:$PG_PORT" "$@" \
        </dev/null >"$WORK/$label.log" 2>&1 &
    STARTED_PID=$!
    wait_port "$port" "$STARTED_PID" || die "$label did not come up on port $port: see $WORK/$label.log"
}
if [ "$BOUND" -eq 1 ]; then
    BOUND_PORT=$(free_port)
    start_bound bound "$BOUND_PORT" forward
    BOUND_PID=$STARTED_PID
    BOUND_TX_PORT=$(free_port)
    start_bound bound-tx "$BOUND_TX_PORT" transaction --user bench --database bench --pool "$TX_POOL_SIZE"
    BOUND_TX_PID=$STARTED_PID
    PORT_OF[bound]=$BOUND_PORT PORT_OF[bound-tx]=$BOUND_TX_PORT
    PID_OF[bound]=$BOUND_PID PID_OF[bound-tx]=$BOUND_TX_PID
    TARGETS+=(bound bound-tx)
fi

# Every target answers before anything is measured.
for t in "${TARGETS[@]}"; do
    PGCONNECT_TIMEOUT=10 psql_at "${PORT_OF[$t]}" -U bench -d bench -tA \
        -c "SELECT count(*) FROM pgbench_branches" >"$WORK/check-$t.log" 2>&1 ||
        die "SELECT through $t failed: see $WORK/check-$t.log"
done

# ---------------------------------------------------------------------------------------------
# pgbench runs
# ---------------------------------------------------------------------------------------------
SCENARIOS=()
declare -A SC_ARGS SC_CLIENTS SC_TARGETS
SESSION_TARGETS="direct pgcorral pgbouncer"
TX_TARGETS="direct pgcorral-tx pgbouncer-tx"
if [ "$BOUND" -eq 1 ]; then
    SESSION_TARGETS_BOUND="$SESSION_TARGETS bound"
    TX_TARGETS="$TX_TARGETS bound-tx"
else
    SESSION_TARGETS_BOUND=$SESSION_TARGETS
fi
for c in $CLIENTS; do
    SCENARIOS+=("simple-$c")
    SC_ARGS[simple-$c]="-S -M simple"
    SC_CLIENTS[simple-$c]=$c
    SC_TARGETS[simple-$c]=$SESSION_TARGETS_BOUND
done
for c in $CLIENTS; do
    SCENARIOS+=("extended-$c")
    SC_ARGS[extended-$c]="-S -M extended"
    SC_CLIENTS[extended-$c]=$c
    SC_TARGETS[extended-$c]=$SESSION_TARGETS_BOUND
done
for c in $CONNECT_CLIENTS; do
    SCENARIOS+=("connect-$c")
    SC_ARGS[connect-$c]="-S -M simple -C"
    SC_CLIENTS[connect-$c]=$c
    SC_TARGETS[connect-$c]=$SESSION_TARGETS
done
TX_SCENARIOS=()
for c in $TX_CLIENTS; do
    for kind in S N; do
        TX_SCENARIOS+=("tx-$kind-$c")
        SC_ARGS[tx-$kind-$c]="-$kind -M simple"
        SC_CLIENTS[tx-$kind-$c]=$c
        SC_TARGETS[tx-$kind-$c]=$TX_TARGETS
    done
done
for c in $TX_PREPARED_CLIENTS; do
    TX_SCENARIOS+=("tx-prep-$c")
    SC_ARGS[tx-prep-$c]="-S -M prepared"
    SC_CLIENTS[tx-prep-$c]=$c
    SC_TARGETS[tx-prep-$c]="direct pgcorral-tx"
done
SCENARIOS+=("${TX_SCENARIOS[@]}")

# CPU time (clock ticks) a pooler used so far: its own, that of its reaped children (pgcorral's
# workers, which exit when their client does and are reaped by main) and that of its live children
# (pgcorral's transaction relay, and workers still serving a client).
cpu_ticks() {
    local stat total child
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    # Fields after the ") " that closes the command name: utime is the 12th, then stime, cutime, cstime.
    total=$(echo "${stat##*) }" | awk '{print $12 + $13 + $14 + $15}')
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        stat=$(cat "/proc/$child/stat" 2>/dev/null) || continue
        total=$((total + $(echo "${stat##*) }" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
declare -A CPU_US # CPU_US[scenario/target] = µs of pooler CPU per transaction, one per round

declare -A TPS # TPS[scenario/target] = space-separated values, one per round

# Runs pgbench in the background (so cleanup can stop it by PID) and waits; log in $1.
run_pgbench() {
    local log=$1
    shift
    pgbench "$@" >"$log" 2>&1 &
    BENCH_PID=$!
    local rc=0
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=
    return "$rc"
}

# Checks a pgbench log and prints its TPS; $2 is the expected tps line suffix.
parse_pgbench() {
    local log=$1 expect=$2 tps failed processed
    tps=$(sed -n "s/^tps = \([0-9.]*\) ($expect)\$/\1/p" "$log")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log")
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
    [ -n "$tps" ] || { say "no 'tps = X ($expect)' line in $log"; return 1; }
    [ -n "$failed" ] || { say "no 'number of failed transactions' line in $log"; return 1; }
    [ "$failed" -eq 0 ] || { say "$failed failed transactions in $log"; return 1; }
    [ -n "$processed" ] && [ "$processed" -gt 0 ] || { say "no transaction processed in $log"; return 1; }
    echo "$tps"
}

total_runs=0
for sc in "${SCENARIOS[@]}"; do
    read -ra sc_targets <<<"${SC_TARGETS[$sc]}"
    total_runs=$((total_runs + ROUNDS * ${#sc_targets[@]}))
done
say "$total_runs pgbench runs of ${DURATION} s (${#SCENARIOS[@]} scenarios, $ROUNDS rounds)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
n=0
for ((round = 1; round <= ROUNDS; round++)); do
    for sc in "${SCENARIOS[@]}"; do
        read -ra sc_targets <<<"${SC_TARGETS[$sc]}"
        for t in "${sc_targets[@]}"; do
            n=$((n + 1))
            log=$WORK/runs/r$round-$sc-$t.log
            read -ra mode_args <<<"${SC_ARGS[$sc]}"
            args=(-n "${mode_args[@]}" -c "${SC_CLIENTS[$sc]}" -j "$JOBS" -T "$DURATION"
                -h 127.0.0.1 -p "${PORT_OF[$t]}" -U bench bench)
            pooler_pid=${PID_OF[$t]:-}
            cpu_before=0
            [ -n "$pooler_pid" ] && cpu_before=$(cpu_ticks "$pooler_pid")
            expect="without initial connection time"
            case "$sc" in connect-*) expect="including reconnection times" ;; esac
            run_pgbench "$log" "${args[@]}" || {
                tail -n 15 "$log" >&2
                die "pgbench failed: round $round, $sc, $t (pgbench ${args[*]}): see $log"
            }
            tps=$(parse_pgbench "$log" "$expect") ||
                die "bad pgbench result: round $round, $sc, $t: see $log"
            tps=$(printf '%.1f' "$tps")
            TPS[$sc/$t]="${TPS[$sc/$t]:-}${TPS[$sc/$t]:+ }$tps"
            if [ -n "$pooler_pid" ]; then
                # pgcorral's workers exit with their clients: give main a moment to reap them.
                sleep 1
                cpu_after=$(cpu_ticks "$pooler_pid")
                txs=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
                us=$(awk -v d=$((cpu_after - cpu_before)) -v hz="$CLK_TCK" -v n="$txs" \
                    'BEGIN {if (n > 0) printf "%.1f", d * 1e6 / hz / n; else print "n/a"}')
                CPU_US[$sc/$t]="${CPU_US[$sc/$t]:-}${CPU_US[$sc/$t]:+ }$us"
            fi
            printf '%s: [%d/%d] round %d %-12s %-9s tps %10.1f\n' "$PROG" "$n" "$total_runs" "$round" \
                "$sc" "$t" "$tps" >&2
        done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

median() { tr ' ' '\n' | sort -g | awk '{v[NR]=$1} END {if (NR==0) exit 1; if (NR%2) printf "%.1f", v[(NR+1)/2]; else printf "%.1f", (v[NR/2]+v[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a/b; else printf "n/a"}'; }
# The pgcorral/PgBouncer ratio a pooler that used no CPU at all would reach against PgBouncer
# ($1 TPS, $2 µs of CPU per transaction), if the rest of the machine's work per transaction stayed
# the same: the machine's CPU time per transaction (NCPU / TPS) over that time less PgBouncer's own.
# Meaningful only when the machine is saturated, as it is when pgbench, PostgreSQL and the pooler
# share $NCPU cores.
NCPU=$(nproc)
ceiling() {
    awk -v tps="$1" -v cpu="$2" -v n="$NCPU" 'BEGIN {
        if (tps !~ /^[0-9.]+$/ || cpu !~ /^[0-9.]+$/ || tps <= 0) { printf "n/a"; exit }
        budget = n * 1e6 / tps
        if (budget <= cpu) { printf "n/a"; exit }
        printf "%.2f", budget / (budget - cpu)
    }'
}

# ---------------------------------------------------------------------------------------------
# Worker memory under load
# ---------------------------------------------------------------------------------------------
# kB of field $2 in /proc/$1/smaps_rollup (empty if the process is gone).
smaps_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true; }
# "min / median / max" of the numbers on stdin.
mmm() { sort -n | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit} m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%d / %d / %d", v[1], m, v[NR]}'; }

MEM_DURATION=$((DURATION > 8 ? DURATION : 8))
say "memory: pgbench -S -c $MEM_CLIENTS -T $MEM_DURATION through pgcorral, sampling /proc/<worker>/smaps_rollup"
# Children that exist before the load are not workers (pgrep exits 1 when there are none).
idle_children=" $( (pgrep -P "$PGCORRAL_PID" || true) | tr '\n' ' ')"
mem_log=$WORK/runs/memory-pgcorral.log
pgbench -n -S -M simple -c "$MEM_CLIENTS" -j "$JOBS" -T "$MEM_DURATION" -h 127.0.0.1 -p "$CORRAL_PORT" \
    -U bench bench >"$mem_log" 2>&1 &
BENCH_PID=$!
workers=()
for _ in $(seq 1 50); do
    workers=()
    for c in $(pgrep -P "$PGCORRAL_PID" || true); do
        case "$idle_children" in *" $c "*) ;; *) workers+=("$c") ;; esac
    done
    [ "${#workers[@]}" -ge "$MEM_CLIENTS" ] && break
    sleep 0.1
done
# Let the workers run a few thousand queries before sampling.
sleep $((MEM_DURATION / 2))
priv=() pss=() rss=()
for w in "${workers[@]}"; do
    pc=$(smaps_kb "$w" Private_Clean)
    pd=$(smaps_kb "$w" Private_Dirty)
    p=$(smaps_kb "$w" Pss)
    r=$(smaps_kb "$w" Rss)
    [ -n "$pc" ] && [ -n "$pd" ] && [ -n "$p" ] || continue
    priv+=($((pc + pd)))
    pss+=("$p")
    rss+=("$r")
done
mpc=$(smaps_kb "$PGCORRAL_PID" Private_Clean)
mpd=$(smaps_kb "$PGCORRAL_PID" Private_Dirty)
main_priv=$((${mpc:-0} + ${mpd:-0}))
main_pss=$(smaps_kb "$PGCORRAL_PID" Pss)
rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=
[ "$rc" -eq 0 ] || die "memory-measurement pgbench failed: see $mem_log"
parse_pgbench "$mem_log" "without initial connection time" >/dev/null || die "bad pgbench result: see $mem_log"
[ "${#priv[@]}" -gt 0 ] || die "found no pgcorral worker (child of pid $PGCORRAL_PID) to measure"
MEM_PRIV=$(printf '%s\n' "${priv[@]}" | mmm)
MEM_PSS=$(printf '%s\n' "${pss[@]}" | mmm)
MEM_RSS=$(printf '%s\n' "${rss[@]}" | mmm)
MEM_N=${#priv[@]}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
PG_VERSION=$("$PG_BIN/postgres" --version)
PGBENCH_VERSION=$(pgbench --version)
BOUNCER_VERSION=$(pgbouncer --version 2>&1 | head -n 1)
CORRAL_VERSION=$("$BIN" -V 2>&1 | head -n 1)
GIT_REV=$(git -C "$ROOT" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[ -n "$CPU_MODEL" ] || CPU_MODEL=$(uname -m)

# The bound's three cells of scenario $1 (target $2, PgBouncer's median TPS $3) in BOUND_CELLS.
bound_cells() {
    local t
    if [ -n "${TPS[$1/$2]:-}" ]; then
        t=$(echo "${TPS[$1/$2]}" | median)
        BOUND_CELLS="$t | $(ratio "$t" "$3") | $(echo "${CPU_US[$1/$2]}" | median)"
    else
        BOUND_CELLS="n/a | n/a | n/a"
    fi
}

report() {
    echo "## pgcorral benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "Median TPS over $ROUNDS round(s) of ${DURATION} s per run; pooler CPU in µs per transaction"
    echo "(user + system time of the pooler's processes, pgcorral's workers included, over the run)."
    echo "Ceiling: the pgcorral/pgbouncer ratio a pooler using no CPU at all would reach on this machine,"
    echo "if everything else stayed the same: ($NCPU cores / pgbouncer TPS) / (that - pgbouncer CPU per tx)."
    echo
    local sc d c b label cu bu
    if [ -n "${TX_SCENARIOS[*]}" ]; then
        echo "### Transaction pooling (pool of $TX_POOL_SIZE server connections)"
        echo
        echo "| scenario | direct TPS | pgcorral TPS | pgbouncer TPS | pgcorral/pgbouncer | pgcorral CPU µs/tx | pgbouncer CPU µs/tx | ceiling | bound TPS | bound/pgbouncer | bound CPU µs/tx |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for sc in "${TX_SCENARIOS[@]}"; do
            d=$(echo "${TPS[$sc/direct]}" | median)
            c=$(echo "${TPS[$sc/pgcorral-tx]}" | median)
            cu=$(echo "${CPU_US[$sc/pgcorral-tx]}" | median)
            case "$sc" in
            tx-prep-*)
                b="n/a (no prepared statements in transaction mode)"
                bu="n/a"
                ;;
            *)
                b=$(echo "${TPS[$sc/pgbouncer-tx]}" | median)
                bu=$(echo "${CPU_US[$sc/pgbouncer-tx]}" | median)
                ;;
            esac
            case "$sc" in
            tx-S-*) label="-S -M simple, ${SC_CLIENTS[$sc]} clients" ;;
            tx-N-*) label="-N -M simple, ${SC_CLIENTS[$sc]} clients" ;;
            tx-prep-*) label="-S -M prepared, ${SC_CLIENTS[$sc]} clients" ;;
            esac
            bound_cells "$sc" bound-tx "$b"
            echo "| $label | $d | $c | $b | $(ratio "$c" "$b") | $cu | $bu | $(ceiling "$b" "$bu") | $BOUND_CELLS |"
        done
        echo
    fi
    [ -n "$CLIENTS$CONNECT_CLIENTS" ] && {
    echo "### Session pooling (pgbench -S, pool of $POOL_SIZE)"
    echo
    echo "| scenario | direct TPS | pgcorral TPS | pgbouncer TPS | pgcorral/pgbouncer | pgcorral/direct | pgcorral CPU µs/tx | pgbouncer CPU µs/tx | ceiling | bound TPS | bound/pgbouncer | bound CPU µs/tx |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for sc in "${SCENARIOS[@]}"; do
        case "$sc" in tx-*) continue ;; esac
        d=$(echo "${TPS[$sc/direct]}" | median)
        c=$(echo "${TPS[$sc/pgcorral]}" | median)
        b=$(echo "${TPS[$sc/pgbouncer]}" | median)
        case "$sc" in
        simple-*) label="-M simple, ${SC_CLIENTS[$sc]} clients" ;;
        extended-*) label="-M extended, ${SC_CLIENTS[$sc]} clients" ;;
        connect-*) label="-C -M simple, ${SC_CLIENTS[$sc]} clients" ;;
        esac
        cu=$(echo "${CPU_US[$sc/pgcorral]}" | median)
        bu=$(echo "${CPU_US[$sc/pgbouncer]}" | median)
        bound_cells "$sc" bound "$b"
        echo "| $label | $d | $c | $b | $(ratio "$c" "$b") | $(ratio "$c" "$d") | $cu | $bu | $(ceiling "$b" "$bu") | $BOUND_CELLS |"
    done
    echo
    }
    echo "pgcorral worker memory (kB, min / median / max over $MEM_N workers, -S -c $MEM_CLIENTS under load):" \
        "private (Private_Clean+Private_Dirty) $MEM_PRIV; Pss $MEM_PSS; Rss $MEM_RSS;" \
        "main process private $main_priv, Pss $main_pss."
    echo
    if [ "$ROUNDS" -gt 1 ]; then
        echo "Per-round TPS (direct | pgcorral | pgbouncer | bound):"
        echo
        local bd
        for sc in "${SCENARIOS[@]}"; do
            case "$sc" in
            tx-*)
                b=${TPS[$sc/pgbouncer-tx]:-n/a}
                bd=${TPS[$sc/bound-tx]:-n/a}
                echo "- $sc: ${TPS[$sc/direct]// /, } | ${TPS[$sc/pgcorral-tx]// /, } | ${b// /, } | ${bd// /, }"
                ;;
            *)
                bd=${TPS[$sc/bound]:-n/a}
                echo "- $sc: ${TPS[$sc/direct]// /, } | ${TPS[$sc/pgcorral]// /, } | ${TPS[$sc/pgbouncer]// /, } | ${bd// /, }"
                ;;
            esac
        done
        echo
    fi
    echo "Machine: $(nproc) CPUs, $CPU_MODEL; kernel $(uname -r);" \
        "load average before $LOAD_BEFORE, after $LOAD_AFTER."
    echo
    echo "Versions: $PG_VERSION; $PGBENCH_VERSION; $BOUNCER_VERSION; $CORRAL_VERSION, git $GIT_REV."
    echo
    echo "Parameters: pgbench -n -j $JOBS -T $DURATION; session pooling: -S -M simple / -M extended at CLIENTS=\"$CLIENTS\"," \
        "-C -M simple at CONNECT_CLIENTS=\"$CONNECT_CLIENTS\"; scale $SCALE; TCP to 127.0.0.1;" \
        "order per scenario direct, pgcorral, pgbouncer, bound; $ROUNDS round(s)." \
        "Transaction pooling: pgcorral pipeline=transaction and PgBouncer pool_mode=transaction, $TX_POOL_SIZE server connections each, TX_CLIENTS=\"$TX_CLIENTS\", TX_PREPARED_CLIENTS=\"$TX_PREPARED_CLIENTS\"." \
        "PostgreSQL: max_connections=600, fsync=off, shared_buffers=256MB, trust." \
        "pgcorral: pipeline=performance, max_connections=100, limit bench/bench $POOL_SIZE, log_level=warn, hba method all." \
        "PgBouncer: pool_mode=session, default_pool_size=$POOL_SIZE, max_client_conn=500, auth_type=trust," \
        "log_connections=0, log_disconnections=0." \
        "Bound: pgcorral-relay-bound forward (session rows) and transaction --pool $TX_POOL_SIZE (transaction rows), nice 0, BOUND=$BOUND."
    if [ "$QUICK" -eq 1 ]; then
        echo
        echo "(--quick smoke run: the figures check the script, they are not a measurement.)"
    fi
}

mkdir -p "$(dirname "$OUT")"
report >"$OUT"
echo
cat "$OUT"
echo
say "report written to $OUT"
SUCCESS=1
