//! The benchmark's reference relay (`crates/pgcorral-relay-bound`) does the work a pooler must do.
//! `scripts/bench.sh` sets pgcorral's and PgBouncer's figures beside it, so they only mean something
//! if it relays correctly: whole transactions on one backend, the pool size kept, sessions intact.

mod common;
use common::*;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The reference relay, killed (by PID) and reaped on drop.
struct Bound {
    child: Child,
    port: u16,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_bound(cluster: &PgCluster, mode: &[&str]) -> Bound {
    let bin = pgcorral_binary().with_file_name("pgcorral-relay-bound");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(&bin)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--server")
        .arg(format!("127.0.0.1:{}", cluster.port))
        .args(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut bound = Bound { child, port };
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        let status = bound.child.try_wait().ok().flatten();
        panic!("pgcorral-relay-bound did not listen on {port} within 10 s (exit: {status:?})");
    }
    bound
}

fn one_value(client: &mut Client, sql: &str) -> String {
    let rows = client.simple_query(sql).expect(sql);
    rows.iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

#[test]
fn transaction_bound_keeps_each_transaction_on_one_of_its_backends() {
    let cluster = PgCluster::start();
    cluster.psql_db(
        TEST_DB,
        &format!(
            "CREATE TABLE bound_counter(n int); INSERT INTO bound_counter VALUES (0); \
             CREATE TABLE bound_rows(client int, i int, UNIQUE (client, i)); \
             GRANT ALL ON bound_counter, bound_rows TO {}",
            BENCH_USER.user
        ),
    );
    let bound = start_bound(
        &cluster,
        &[
            "transaction",
            "--user",
            BENCH_USER.user,
            "--database",
            TEST_DB,
            "--pool",
            "2",
        ],
    );
    const CLIENTS: usize = 8;
    const TRANSACTIONS: usize = 50;
    let port = bound.port;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = connect(port, BENCH_USER.user, None).expect("connect");
                for i in 0..TRANSACTIONS {
                    client.batch_execute("BEGIN").unwrap();
                    let first = one_value(&mut client, "SELECT pg_backend_pid()");
                    client
                        .batch_execute("UPDATE bound_counter SET n = n + 1")
                        .unwrap();
                    client
                        .batch_execute(&format!("INSERT INTO bound_rows VALUES ({c}, {i})"))
                        .unwrap();
                    let last = one_value(&mut client, "SELECT pg_backend_pid()");
                    assert_eq!(first, last, "a transaction moved between backends");
                    client.batch_execute("COMMIT").unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a client failed");
    }
    assert_eq!(
        cluster.psql_db(TEST_DB, "SELECT n FROM bound_counter"),
        (CLIENTS * TRANSACTIONS).to_string()
    );
    assert_eq!(
        cluster.psql_db(TEST_DB, "SELECT count(*) FROM bound_rows"),
        (CLIENTS * TRANSACTIONS).to_string()
    );
    assert_eq!(cluster.backend_count(BENCH_USER.user), 2);
}

#[test]
fn forward_bound_gives_each_client_its_own_session() {
    let cluster = PgCluster::start();
    let bound = start_bound(&cluster, &["forward"]);
    let mut a = connect(bound.port, BENCH_USER.user, None).expect("connect a");
    let mut b = connect(bound.port, BENCH_USER.user, None).expect("connect b");
    a.batch_execute("SET application_name = 'bound_a'").unwrap();
    b.batch_execute("SET application_name = 'bound_b'").unwrap();
    assert_eq!(one_value(&mut a, "SHOW application_name"), "bound_a");
    assert_eq!(one_value(&mut b, "SHOW application_name"), "bound_b");
    assert_ne!(
        one_value(&mut a, "SELECT pg_backend_pid()"),
        one_value(&mut b, "SELECT pg_backend_pid()")
    );
    let big = one_value(&mut a, "SELECT repeat('x', 200000)");
    assert_eq!(big.len(), 200_000);
}
