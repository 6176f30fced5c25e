#!/usr/bin/env bash
# pgcorral's test command: formatting, lints, build, then every test (unit and end-to-end).
#
# The end-to-end tests (top-level tests/) start private PostgreSQL 15 clusters on free loopback
# ports and pgcorral instances in front of them; they need the PostgreSQL 15 server binaries,
# psql and pgbench. As root, PostgreSQL runs as OS user `postgres` (it refuses root); pgcorral runs as root.
#
# Environment:
#   PGCORRAL_PG_BIN      directory with initdb/pg_ctl/postgres (default /usr/lib/postgresql/15/bin)
#   PGCORRAL_TEST_THREADS  tests run at once (default 2: each e2e test runs a cluster and a pooler)
#   PGCORRAL_KEEP_TMP    set to keep the tests' /tmp directories for a post-mortem
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=${PGCORRAL_PG_BIN:-/usr/lib/postgresql/15/bin}
THREADS=${PGCORRAL_TEST_THREADS:-2}

die() {
    echo "scripts/test.sh: $*" >&2
    exit 1
}

command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs), version 1.80 or newer"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
for tool in initdb pg_ctl postgres; do
    [ -x "$PG_BIN/$tool" ] || die "$PG_BIN/$tool missing: apt-get install postgresql-15 (or set PGCORRAL_PG_BIN)"
done
"$PG_BIN/postgres" --version | grep -q ' 15\.' || die "$PG_BIN/postgres is not PostgreSQL 15: $("$PG_BIN/postgres" --version)"
for tool in psql pgbench; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$PG_BIN/$tool" ] ||
        die "$tool not found: apt-get install postgresql-client-15 postgresql-15"
done
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the OS user postgres (apt-get install postgresql-15 creates it)"
    command -v runuser >/dev/null 2>&1 || die "running as root needs runuser (util-linux)"
fi
# psql/pgbench must find their tools even when only PG_BIN has them.
export PATH="$PATH:$PG_BIN"

# ---- client libraries for tests/clients.rs (psycopg 3, asyncpg, node-postgres) ----------------
# Installed only when missing, so a second run costs two quick checks.
command -v python3 >/dev/null 2>&1 || die "python3 not found (tests/clients.rs needs it): apt-get install python3 python3-pip"
command -v node >/dev/null 2>&1 || die "node not found (tests/clients.rs needs it): apt-get install nodejs npm"
if ! python3 -c 'import psycopg, asyncpg' >/dev/null 2>&1; then
    echo "==> installing psycopg 3 and asyncpg for $(command -v python3)"
    pip_pkgs=('psycopg[binary]>=3.1' 'asyncpg>=0.29')
    if ! pip_out=$(PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet "${pip_pkgs[@]}" 2>&1); then
        if grep -q externally-managed-environment <<<"$pip_out"; then
            # A distribution's python3 (PEP 668) rather than a private one: allowed only here.
            PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --break-system-packages "${pip_pkgs[@]}" ||
                die "pip install ${pip_pkgs[*]} failed"
        else
            echo "$pip_out" >&2
            die "pip install ${pip_pkgs[*]} failed"
        fi
    fi
    python3 -c 'import psycopg, asyncpg' || die "psycopg/asyncpg still not importable by $(command -v python3)"
fi
if [ ! -d tests/clients/node_modules/pg ]; then
    command -v npm >/dev/null 2>&1 || die "npm not found (tests/clients.rs needs node-postgres): apt-get install npm"
    echo "==> installing node-postgres into tests/clients/node_modules"
    npm install --no-audit --no-fund --prefix tests/clients || die "npm install --prefix tests/clients failed"
fi
# ---- end of client libraries -------------------------------------------------------------------

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo build --workspace --bins"
cargo build --workspace --bins

if [ "$(id -u)" -eq 0 ] && [ "${PGCORRAL_TEST_RUN_AS:-root}" != root ]; then
    # The daemon runs as another user during the tests: it must be able to execute the binary.
    runuser -u "$PGCORRAL_TEST_RUN_AS" -- test -x "$PWD/target/debug/pgcorral" ||
        die "user $PGCORRAL_TEST_RUN_AS cannot execute $PWD/target/debug/pgcorral: make the checkout world-readable (chmod o+rx on its parents)"
fi

start=$(date +%s)
if cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo nextest run --workspace --test-threads $THREADS"
    cargo nextest run --workspace --test-threads "$THREADS" --no-fail-fast
    # The transaction pipeline's tests again with a worker per client (transaction_relay = worker)
    # instead of the shared relay. transaction_relay.rs is about the relay itself: not repeated.
    echo "==> transaction tests again with transaction_relay = worker"
    PGCORRAL_TEST_TX_RELAY=worker cargo nextest run --workspace --test-threads "$THREADS" --no-fail-fast \
        -E 'binary(transaction) | binary(transaction_protocol) | binary(transaction_clients) | binary(transaction_counters) | binary(dead_backend)'
else
    echo "==> cargo test --workspace -- --test-threads $THREADS (cargo-nextest not installed)"
    cargo test --workspace --no-fail-fast -- --test-threads "$THREADS"
fi
echo "==> all tests passed in $(($(date +%s) - start)) s"
