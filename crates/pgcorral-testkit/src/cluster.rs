//! A private PostgreSQL 15 cluster for one test.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{
    become_subreaper, chown, client_tool, free_port, pg_bin, pg_command, pid_alive, postgres_ids,
    reap, wait_until, TempDir,
};

/// A login role of the test cluster and its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    pub user: &'static str,
    pub password: &'static str,
}

/// Authenticated with `trust` over TCP.
pub const TRUST_USER: Role = Role {
    user: "trust_user",
    password: "trust_pw",
};
/// Authenticated with `password` (cleartext) over TCP; stored as SCRAM.
pub const PASSWORD_USER: Role = Role {
    user: "password_user",
    password: "password_pw",
};
/// Authenticated with `md5` over TCP; stored as an MD5 hash.
pub const MD5_USER: Role = Role {
    user: "md5_user",
    password: "md5_pw",
};
/// Authenticated with `scram-sha-256` over TCP; stored as SCRAM.
pub const SCRAM_USER: Role = Role {
    user: "scram_user",
    password: "scram_pw",
};
/// For pgbench: `trust` over TCP.
pub const BENCH_USER: Role = Role {
    user: "bench_user",
    password: "bench_pw",
};
/// The test database: owned by postgres, CONNECT and ALL on schema public for PUBLIC.
pub const TEST_DB: &str = "pgcorral_test";

/// A running private cluster. Dropping it stops PostgreSQL (`-m immediate`) and removes its files.
#[derive(Debug)]
pub struct PgCluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// `unix_socket_directories` (socket `.s.PGSQL.<port>`).
    pub socket_dir: PathBuf,
    /// PGDATA.
    pub data_dir: PathBuf,
    /// Server log written by `pg_ctl -l`.
    pub log_file: PathBuf,
    stopped: bool,
    _base: TempDir,
}

fn run_checked(mut c: Command, what: &str) -> String {
    c.stdin(Stdio::null());
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot spawn: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hba_conf() -> String {
    let mut s = String::from(
        "# written by pgcorral-testkit\n\
         # TYPE DATABASE USER ADDRESS METHOD\n\
         local all all trust\n",
    );
    for (user, method) in [
        (TRUST_USER.user, "trust"),
        (PASSWORD_USER.user, "password"),
        (MD5_USER.user, "md5"),
        (SCRAM_USER.user, "scram-sha-256"),
        ("postgres", "trust"),
        (BENCH_USER.user, "trust"),
        ("all", "scram-sha-256"),
    ] {
        for addr in ["127.0.0.1/32", "::1/128"] {
            s.push_str(&format!("host all {user} {addr} {method}\n"));
        }
    }
    s
}

impl PgCluster {
    /// initdb + start + roles + database. Panics (with the server log) on any failure.
    pub fn start() -> PgCluster {
        let bin = pg_bin();
        let ids = postgres_ids();
        become_subreaper();
        let base = TempDir::new("pgcorral-pg-");
        chown(base.path(), ids);
        // postgres needs to traverse into its own directories; root and other test users need to
        // reach the socket directory.
        set_mode(base.path(), 0o755);
        let data_dir = base.path().join("data");
        let socket_dir = base.path().join("sock");
        let log_file = base.path().join("postgres.log");
        fs::create_dir(&socket_dir).expect("create socket dir");
        chown(&socket_dir, ids);
        set_mode(&socket_dir, 0o755);

        let mut c = pg_command(&bin.join("initdb"));
        c.arg("-D")
            .arg(&data_dir)
            .arg("-U")
            .arg("postgres")
            .arg("-A")
            .arg("trust")
            .arg("-E")
            .arg("UTF8")
            .arg("--locale=C")
            .arg("--no-sync")
            .arg("--no-instructions");
        run_checked(c, "initdb");

        write_as_postgres(&data_dir.join("pg_hba.conf"), &hba_conf(), ids);

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                "\n# pgcorral-testkit\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{}'\n\
                 max_connections = 300\n\
                 shared_buffers = 32MB\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n\
                 password_encryption = 'scram-sha-256'\n\
                 log_connections = on\n\
                 log_disconnections = on\n\
                 log_line_prefix = '%m [%p] %u@%d '\n",
                socket_dir.display()
            );
            let auto = data_dir.join("postgresql.auto.conf");
            write_as_postgres(
                &auto,
                &format!("# Do not edit this file manually!\n{conf}"),
                ids,
            );

            let mut c = pg_command(&bin.join("pg_ctl"));
            c.arg("-D")
                .arg(&data_dir)
                .arg("-l")
                .arg(&log_file)
                .arg("-w")
                .arg("-t")
                .arg("60")
                .arg("start")
                .stdin(Stdio::null());
            let out = c.output().expect("spawn pg_ctl start");
            if out.status.success() {
                let cluster = PgCluster {
                    port,
                    socket_dir: socket_dir.clone(),
                    data_dir: data_dir.clone(),
                    log_file: log_file.clone(),
                    stopped: false,
                    _base: base,
                };
                cluster.setup_roles();
                return cluster;
            }
            last_err = format!(
                "pg_ctl start on port {port} failed ({}):\n{}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log_file).unwrap_or_default()
            );
            // Make sure nothing is left running before retrying on another port.
            let mut stop = pg_command(&bin.join("pg_ctl"));
            stop.arg("-D")
                .arg(&data_dir)
                .arg("-m")
                .arg("immediate")
                .arg("stop");
            let _ = stop.stdin(Stdio::null()).output();
        }
        panic!("could not start PostgreSQL: {last_err}");
    }

    fn setup_roles(&self) {
        let sql = format!(
            "SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {tu} LOGIN PASSWORD '{tp}';\n\
             CREATE ROLE {pu} LOGIN PASSWORD '{pp}';\n\
             CREATE ROLE {su} LOGIN PASSWORD '{sp}';\n\
             CREATE ROLE {bu} LOGIN PASSWORD '{bp}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {mu} LOGIN PASSWORD '{mp}';\n\
             RESET password_encryption;\n\
             CREATE DATABASE {db} OWNER postgres;\n\
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO PUBLIC;\n\
             \\connect {db}\n\
             GRANT ALL ON SCHEMA public TO PUBLIC;\n",
            tu = TRUST_USER.user,
            tp = TRUST_USER.password,
            pu = PASSWORD_USER.user,
            pp = PASSWORD_USER.password,
            su = SCRAM_USER.user,
            sp = SCRAM_USER.password,
            bu = BENCH_USER.user,
            bp = BENCH_USER.password,
            mu = MD5_USER.user,
            mp = MD5_USER.password,
            db = TEST_DB,
        );
        self.psql_script("postgres", &sql);
    }

    fn psql_base(&self, db: &str) -> Command {
        let mut c = Command::new(client_tool("psql"));
        c.arg("-X")
            .arg("-A")
            .arg("-t")
            .arg("-q")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg("-w")
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg("postgres")
            .arg("-d")
            .arg(db)
            .env_remove("PGPASSWORD")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        c
    }

    /// Runs a script through psql's stdin (each statement on its own, so CREATE DATABASE works).
    fn psql_script(&self, db: &str, script: &str) -> String {
        let mut c = self.psql_base(db);
        c.arg("-f")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .expect("write psql stdin");
        let out = child.wait_with_output().expect("psql wait");
        if !out.status.success() {
            panic!(
                "psql script failed ({}):\n{script}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs SQL as `postgres` over the Unix socket in database `postgres`; returns trimmed stdout
    /// (`-A -t`: one row per line, columns separated by `|`). Panics with stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// Like [`PgCluster::psql`] in another database.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let mut c = self.psql_base(db);
        c.arg("-c").arg(sql);
        let out = c.stdin(Stdio::null()).output().expect("spawn psql");
        if !out.status.success() {
            panic!(
                "psql -c {sql:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Number of client backends of `user` (pg_stat_activity, excluding the asking backend).
    pub fn backend_count(&self, user: &str) -> usize {
        let out = self.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            user.replace('\'', "''")
        ));
        out.parse()
            .unwrap_or_else(|_| panic!("backend_count: unexpected psql output {out:?}"))
    }

    /// Backend pids of `user`, sorted.
    pub fn backend_pids(&self, user: &str) -> Vec<i32> {
        let out = self.psql(&format!(
            "SELECT pid FROM pg_stat_activity WHERE usename = '{}' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid",
            user.replace('\'', "''")
        ));
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// Waits up to `timeout` until `backend_count(user) == n`; returns the last count seen.
    pub fn wait_backend_count(&self, user: &str, n: usize, timeout: Duration) -> usize {
        let mut last = usize::MAX;
        wait_until(timeout, || {
            last = self.backend_count(user);
            last == n
        });
        last
    }

    /// Terminates every client backend of `user`.
    pub fn terminate_backends(&self, user: &str) {
        self.psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{}' \
             AND backend_type = 'client backend'",
            user.replace('\'', "''")
        ));
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// PID of the postmaster, from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
    }

    /// Stops the cluster with `pg_ctl stop -m immediate` (by its pidfile); idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.postmaster_pid();
        let mut c = pg_command(&pg_bin().join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data_dir)
            .arg("-m")
            .arg("immediate")
            .arg("-w")
            .arg("-t")
            .arg("20")
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ok = c.status().map(|s| s.success()).unwrap_or(false);
        if let Some(pid) = pid {
            if !ok && pid_alive(pid) {
                crate::util::kill(pid, libc::SIGKILL);
            }
            // The postmaster was orphaned by pg_ctl and adopted by this (subreaper) process.
            reap(pid, Duration::from_secs(5));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "---- PostgreSQL log, last {} lines ({}) ----\n{}",
                tail.len(),
                self.log_file.display(),
                tail.join("\n")
            );
        }
        self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn write_as_postgres(path: &Path, content: &str, ids: Option<(u32, u32)>) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown(path, ids);
    set_mode(path, 0o600);
}
