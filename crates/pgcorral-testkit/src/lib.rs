//! Test kit for pgcorral: private PostgreSQL 15 clusters, pgcorral instances in front of them,
//! and a raw protocol-v3 client for feeding the pooler bad input.
//!
//! * [`PgCluster::start`] runs `initdb` and `pg_ctl` (as OS user `postgres` when the tests run as
//!   root, through `runuser -u postgres --`) into a fresh directory under `/tmp`, on a free
//!   loopback port, with one role per authentication method ([`TRUST_USER`], [`PASSWORD_USER`],
//!   [`MD5_USER`], [`SCRAM_USER`], [`BENCH_USER`]) and the database [`TEST_DB`]. Dropping it stops
//!   the cluster (`pg_ctl stop -m immediate`) and removes its directory.
//! * [`Pgcorral::start`] writes `pgcorral.conf`, `pgcorral_hba.conf` and (when there are limits)
//!   `pgcorral_databases.conf` into a fresh directory, spawns the daemon built by
//!   `cargo build --workspace --bins` ([`pgcorral_binary`]), and waits until its TCP port accepts.
//!   When the tests run as root the daemon runs as user `postgres` (pgagroal refuses root, and so
//!   may pgcorral). Dropping it stops the daemon by PID (SIGTERM, then SIGKILL after 10 s) and kills
//!   any worker it left behind.
//! * [`raw`] speaks just enough of the PostgreSQL protocol to send malformed startup packets and
//!   read `ErrorResponse` fields.
//! * [`psql`] runs the `psql` client against any host/port.
//!
//! Nothing is skipped: a missing PostgreSQL binary is a panic that says what to install.

mod cluster;
mod pooler;
pub mod raw;
mod util;

pub use cluster::{
    PgCluster, Role, BENCH_USER, MD5_USER, PASSWORD_USER, SCRAM_USER, TEST_DB, TRUST_USER,
};
pub use pooler::{pgcorral_binary, Pgcorral, PgcorralOptions, StartFailure, Vault};
pub use util::{free_port, pg_bin, pid_alive, psql, psql_unix, wait_until, TempDir};
