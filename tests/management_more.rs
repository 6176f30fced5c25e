//! More of issue 5 (management): remote management with `pgcorral-ctl -h`, graceful shutdown with
//! clients mid-transaction, SIGHUP reload of the HBA, SIGTRAP, sd_notify, and daemon mode (`-d`).
//! Each test asserts outcomes against a real PostgreSQL 15 cluster; none is skipped.

mod common;
use common::*;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ctl_binary() -> PathBuf {
    let bin = pgcorral_binary().with_file_name("pgcorral-ctl");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Runs `pgcorral-ctl ARGS` (no `-c`), without PGCORRAL_PASSWORD from the environment.
fn ctl_raw(args: &[&str]) -> Output {
    Command::new(ctl_binary())
        .args(args)
        .env_remove("PGCORRAL_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("spawn pgcorral-ctl")
}

fn show(args: &[&str], o: &Output) -> String {
    format!(
        "pgcorral-ctl {args:?}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("pgcorral-ctl killed by a signal: {:?}", o.status))
}

/// A new trust_user client must be refused; returns its SQLSTATE.
fn refused_state(port: u16) -> String {
    match with_timeout(Duration::from_secs(20), "refused connect", move || {
        connect(port, TRUST_USER.user, None).map(|_| ())
    }) {
        Ok(()) => panic!("a new client was accepted"),
        Err(e) => sqlstate(&e),
    }
}

/// Polls until a new trust_user client is refused (a signal is handled asynchronously); returns
/// the SQLSTATE. Panics if clients are still accepted after 10 s.
fn wait_refused(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = with_timeout(Duration::from_secs(20), "connect", move || {
            connect(port, TRUST_USER.user, None)
                .map(|mut c| c.query_one("SELECT 1", &[]).map(|_| ()))
        });
        match r {
            Err(e) => return sqlstate(&e),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(_) => panic!("new clients are still accepted 10 s later"),
        }
    }
}

/// Polls until a new trust_user client is served again.
fn wait_accepted(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = with_timeout(Duration::from_secs(20), "connect", move || {
            connect(port, TRUST_USER.user, None)
                .and_then(|mut c| c.query_one("SELECT 40+2", &[]).map(|r| r.get::<_, i32>(0)))
        });
        match r {
            Ok(v) => {
                assert_eq!(v, 42);
                return;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!(
                "new clients still refused 10 s later: {e} ({})",
                sqlstate(&e)
            ),
        }
    }
}

fn still_works(c: &mut Client, what: &str) {
    let v: i32 = c
        .query_one("SELECT 7", &[])
        .unwrap_or_else(|e| panic!("{what}: existing session broken: {e}"))
        .get(0);
    assert_eq!(v, 7, "{what}");
}

// ---------------------------------------------------------------------------------------------
// a. Remote management
// ---------------------------------------------------------------------------------------------

#[test]
fn remote_management_with_scram() {
    let mport = free_port();
    let o = PgcorralOptions {
        extra_main: vec![format!("management = {mport}")],
        hba: vec![
            "host admin all all scram-sha-256".into(),
            "host all all all all".into(),
            "local all all all".into(),
        ],
        vault: Some(Vault {
            admins: vec![("admin".into(), "adminpw".into())],
            ..Vault::users(&[])
        }),
        ..Default::default()
    };
    let s = setup(o);
    let p = &s.pooler;
    let port = mport.to_string();
    let remote = |user: &str, pw: &str, rest: &[&str]| {
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-U", user, "-P", pw];
        args.extend_from_slice(rest);
        let o = ctl_raw(&args);
        (args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), o)
    };

    // ping: exit 0, the daemon's pid.
    let (args, o) = remote("admin", "adminpw", &["--format", "json", "ping"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 0, "{}", show(&a, &o));
    let doc: Value = serde_json::from_str(&stdout(&o)).expect("ping JSON");
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["result"]["pid"], p.pid() as u64, "{doc}");
    // Text format too.
    let (args, o) = remote("admin", "adminpw", &["ping"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 0, "{}", show(&a, &o));
    assert!(
        stdout(&o).contains(&p.pid().to_string()),
        "{}",
        show(&a, &o)
    );

    // status with a client connected: the JSON document counts it.
    let mut c = must_connect(p.port, TRUST_USER.user, None);
    still_works(&mut c, "client during remote status");
    let (args, o) = remote(
        "admin",
        "adminpw",
        &["--format", "json", "status", "details"],
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 0, "{}", show(&a, &o));
    let doc: Value = serde_json::from_str(&stdout(&o)).expect("status JSON");
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["command"], "status", "{doc}");
    let r = &doc["result"];
    assert_eq!(r["pid"], p.pid() as u64, "{r}");
    assert!(r["clients"].as_u64().unwrap_or(0) >= 1, "{r}");
    assert!(r["slots"].is_array(), "{r}");
    assert!(
        r["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["user"] == TRUST_USER.user),
        "{r}"
    );

    // The password from PGCORRAL_PASSWORD.
    let o = Command::new(ctl_binary())
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "admin", "ping"])
        .env("PGCORRAL_PASSWORD", "adminpw")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", show(&["PGCORRAL_PASSWORD", "ping"], &o));

    // A wrong password: exit 1 with "authentication failed", and nothing was executed.
    let (args, o) = remote("admin", "wrong", &["ping"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 1, "{}", show(&a, &o));
    assert!(
        stderr(&o).starts_with("pgcorral-ctl: authentication failed:"),
        "{}",
        show(&a, &o)
    );
    assert!(stderr(&o).contains("28P01"), "{}", show(&a, &o));
    assert!(stdout(&o).is_empty(), "{}", show(&a, &o));
    // A wrong password cannot shut the daemon down.
    let (args, o) = remote("admin", "wrong", &["shutdown", "immediate"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 1, "{}", show(&a, &o));

    // An admin the admins file does not have: refused the same way.
    let (args, o) = remote("nobody", "adminpw", &["ping"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 1, "{}", show(&a, &o));
    assert!(
        stderr(&o).starts_with("pgcorral-ctl: authentication failed:"),
        "{}",
        show(&a, &o)
    );

    // No password at all (no -P, no PGCORRAL_PASSWORD, stdin not a terminal): usage error.
    let o = ctl_raw(&["-h", "127.0.0.1", "-p", &port, "-U", "admin", "ping"]);
    assert_eq!(code(&o), 2, "{}", show(&["no password"], &o));
    assert!(
        stderr(&o).contains("PGCORRAL_PASSWORD"),
        "{}",
        show(&["no password"], &o)
    );

    // Nothing listening: exit 3.
    let closed = free_port().to_string();
    let o = ctl_raw(&[
        "-h",
        "127.0.0.1",
        "-p",
        &closed,
        "-U",
        "admin",
        "-P",
        "adminpw",
        "ping",
    ]);
    assert_eq!(code(&o), 3, "{}", show(&["closed port"], &o));

    // The daemon and its clients are unaffected, and a remote shutdown works.
    still_works(&mut c, "after the refused logins");
    drop(c);
    let (args, o) = remote(
        "admin",
        "adminpw",
        &["--format", "json", "conf", "get", "management"],
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 0, "{}", show(&a, &o));
    assert!(stdout(&o).contains(&port), "{}", show(&a, &o));
    let mut s = s;
    let (args, o) = remote("admin", "adminpw", &["shutdown", "immediate"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(code(&o), 0, "{}", show(&a, &o));
    assert!(
        s.pooler.wait_exit(Duration::from_secs(10)).is_some(),
        "the daemon did not stop after a remote `shutdown immediate`"
    );
}

#[test]
fn remote_management_refused_by_hba() {
    let mport = free_port();
    let o = PgcorralOptions {
        extra_main: vec![format!("management = {mport}")],
        hba: vec![
            "host admin all all reject".into(),
            "host all all all all".into(),
        ],
        vault: Some(Vault {
            admins: vec![("admin".into(), "adminpw".into())],
            ..Vault::users(&[])
        }),
        ..Default::default()
    };
    let s = setup(o);
    let port = mport.to_string();
    let o = ctl_raw(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "admin",
        "-P",
        "adminpw",
        "ping",
    ]);
    assert_eq!(code(&o), 1, "{}", show(&["hba reject"], &o));
    assert!(
        stderr(&o).starts_with("pgcorral-ctl: authentication failed:")
            && stderr(&o).contains("28000"),
        "{}",
        show(&["hba reject"], &o)
    );
    assert_pool_works(&s.pooler);
}

// ---------------------------------------------------------------------------------------------
// b. Graceful shutdown with 5 clients mid-transaction
// ---------------------------------------------------------------------------------------------

#[test]
fn graceful_shutdown_lets_five_transactions_finish() {
    let mut s = setup(PgcorralOptions::default());
    s.cluster.psql_db(
        TEST_DB,
        &format!(
            "CREATE TABLE graceful_rows (client int, n int); GRANT ALL ON graceful_rows TO {}",
            TRUST_USER.user
        ),
    );
    let port = s.pooler.port;
    let mut clients: Vec<Client> = (0..5)
        .map(|i| {
            let mut c = must_connect(port, TRUST_USER.user, None);
            c.batch_execute(&format!("BEGIN; INSERT INTO graceful_rows VALUES ({i}, 1)"))
                .unwrap_or_else(|e| panic!("client {i}: BEGIN/INSERT: {e}"));
            c
        })
        .collect();

    let o = s.pooler.ctl(&["shutdown", "gracefully"]);
    assert_eq!(code(&o), 0, "{}", show(&["shutdown", "gracefully"], &o));

    // A new client is refused with 57P03 while the five are still in their transactions.
    assert_eq!(refused_state(port), "57P03");
    assert!(
        s.pooler.is_running(),
        "the daemon stopped with clients connected"
    );

    for (i, c) in clients.iter_mut().enumerate() {
        c.batch_execute(&format!(
            "INSERT INTO graceful_rows VALUES ({i}, 2); COMMIT"
        ))
        .unwrap_or_else(|e| panic!("client {i}: INSERT/COMMIT during graceful shutdown: {e}"));
        still_works(c, &format!("client {i} after COMMIT"));
    }
    assert_eq!(refused_state(port), "57P03");
    assert!(
        s.pooler.is_running(),
        "the daemon stopped with clients connected"
    );

    drop(clients);
    let st = s
        .pooler
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon did not exit within 10 s of its last client leaving");
    assert!(st.success(), "graceful shutdown exit status {st:?}");
    assert!(!s.pooler.pidfile().exists(), "pidfile left behind");

    let rows = s.cluster.psql_db(
        TEST_DB,
        "SELECT count(*), count(DISTINCT client), sum(n) FROM graceful_rows",
    );
    assert_eq!(rows, "10|5|15", "rows in graceful_rows (count|clients|sum)");
}

// ---------------------------------------------------------------------------------------------
// c. SIGHUP reload of the HBA
// ---------------------------------------------------------------------------------------------

#[test]
fn sighup_reloads_hba_for_new_clients_only() {
    let s = setup(PgcorralOptions::default());
    let p = &s.pooler;
    let hba = p.dir.join("pgcorral_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();

    let mut existing = must_connect(p.port, TRUST_USER.user, None);
    still_works(&mut existing, "before the reload");

    std::fs::write(
        &hba,
        format!(
            "host all {} all reject\nhost all all all all\nlocal all all all\n",
            TRUST_USER.user
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert_eq!(wait_refused(p.port), "28000");
    still_works(&mut existing, "after the reload that rejects its user");
    // Other users are still let in.
    let mut other = must_connect(p.port, PASSWORD_USER.user, Some(PASSWORD_USER.password));
    still_works(&mut other, "another user after the reload");

    std::fs::write(&hba, &original).unwrap();
    p.signal(libc::SIGHUP);
    wait_accepted(p.port);
    still_works(&mut existing, "after the second reload");
    let log = p.log();
    assert!(
        !log.contains("reload denied"),
        "a reload was denied:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// d. SIGTRAP: graceful shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn sigtrap_shuts_down_gracefully() {
    let mut s = setup(PgcorralOptions::default());
    let port = s.pooler.port;
    let mut c = must_connect(port, TRUST_USER.user, None);
    still_works(&mut c, "before SIGTRAP");

    s.pooler.signal(libc::SIGTRAP);
    assert_eq!(wait_refused(port), "57P03");
    still_works(&mut c, "after SIGTRAP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.pooler.is_running(),
        "the daemon stopped with a client connected"
    );
    still_works(&mut c, "still after SIGTRAP");

    drop(c);
    let st = s
        .pooler
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon did not exit within 10 s of its last client leaving");
    assert!(st.success(), "exit status after SIGTRAP {st:?}");
}

// ---------------------------------------------------------------------------------------------
// e. sd_notify
// ---------------------------------------------------------------------------------------------

/// Receives datagrams until one has the line `want`; returns every datagram seen.
fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("no {want:?} within {timeout:?}; received {seen:?}");
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("no {want:?} within {timeout:?}; received {seen:?}")
            }
            Err(e) => panic!("recv on NOTIFY_SOCKET: {e}"),
        }
    }
}

#[test]
fn sd_notify_ready_reloading_stopping() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("pgcorral-notify-");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // The daemon may run as another user (PGCORRAL_TEST_RUN_AS): let it send.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

    let o = PgcorralOptions {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Default::default()
    };
    let mut s = setup(o);
    let seen = recv_until(&sock, "READY=1", Duration::from_secs(10));
    assert!(
        !seen.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{seen:?}"
    );
    assert_pool_works(&s.pooler);

    s.pooler.signal(libc::SIGHUP);
    recv_until(&sock, "RELOADING=1", Duration::from_secs(10));
    recv_until(&sock, "READY=1", Duration::from_secs(10));
    assert_pool_works(&s.pooler);

    s.pooler.signal(libc::SIGTERM);
    recv_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(
        s.pooler.wait_exit(Duration::from_secs(10)).is_some(),
        "the daemon did not stop after SIGTERM"
    );
}

// ---------------------------------------------------------------------------------------------
// f. Daemon mode (-d)
// ---------------------------------------------------------------------------------------------

/// Stops a daemonised pgcorral by pid on drop (SIGTERM, SIGKILL after 10 s), if still alive.
struct DaemonGuard {
    pid: Option<i32>,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            if pid_alive(pid) {
                // SAFETY: kill with a pid we read from the daemon's pidfile.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if !wait_dead(pid, Duration::from_secs(10)) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    wait_dead(pid, Duration::from_secs(5));
                }
            }
        }
    }
}

/// Waits for `pid` to end (reaping it if it became our child, as this process may be a
/// subreaper); true if it did within `timeout`.
fn wait_dead(pid: i32, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let mut status = 0;
        // SAFETY: non-blocking waitpid with a valid status pointer; fails if not our child.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        !pid_alive(pid)
    })
}

/// Writes pgcorral.conf (with `log_type`) and pgcorral_hba.conf into `dir`; returns their paths.
fn write_daemon_conf(
    dir: &Path,
    port: u16,
    cluster_port: u16,
    log_type: &str,
) -> (PathBuf, PathBuf) {
    let conf = dir.join("pgcorral.conf");
    let hba = dir.join("pgcorral_hba.conf");
    std::fs::write(
        &conf,
        format!(
            "[pgcorral]\nhost = 127.0.0.1\nport = {port}\nunix_socket_dir = {d}\nmax_connections = 10\n\
             pipeline = performance\nlog_type = {log_type}\nlog_level = info\nlog_path = {d}/pgcorral.log\n\
             pidfile = {d}/pgcorral.pid\n\n[primary]\nhost = 127.0.0.1\nport = {cluster_port}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(&hba, "host all all all all\nlocal all all all\n").unwrap();
    (conf, hba)
}

/// Runs the launcher and waits at most 10 s for it to return.
fn run_launcher(conf: &Path, hba: &Path, dir: &Path) -> (u32, Output) {
    let child = Command::new(pgcorral_binary())
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .arg("-a")
        .arg(hba)
        .env("PGCORRAL_HOME_DIR", dir.join(".pgcorral"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgcorral -d");
    let launcher = child.id();
    let out = with_timeout(
        Duration::from_secs(10),
        "pgcorral -d returning",
        move || child.wait_with_output().expect("wait for pgcorral -d"),
    );
    (launcher, out)
}

#[test]
fn daemon_mode_detaches_and_stops_by_pidfile() {
    let cluster = PgCluster::start();
    let tmp = TempDir::new("pgcorral-daemon-");
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let (conf, hba) = write_daemon_conf(&dir, port, cluster.port, "file");
    let pidfile = dir.join("pgcorral.pid");
    let mut guard = DaemonGuard { pid: None };

    let started = Instant::now();
    let (launcher, out) = run_launcher(&conf, &hba, &dir);
    assert!(
        out.status.success(),
        "pgcorral -d: {:?}\nstdout: {}\nstderr: {}\nlog: {}",
        out.status,
        stdout(&out),
        stderr(&out),
        std::fs::read_to_string(dir.join("pgcorral.log")).unwrap_or_default()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pgcorral -d took {:?} to return",
        started.elapsed()
    );

    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &pidfile
        )
        .map(|s| s.trim().parse::<i32>().is_ok())
        .unwrap_or(false)),
        "no pidfile {} with a pid",
        pidfile.display()
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    guard.pid = Some(pid);
    assert_ne!(pid as u32, launcher, "the pidfile holds the launcher's pid");
    assert!(
        pid_alive(pid),
        "the daemon {pid} in the pidfile is not running"
    );
    // Detached: its own session.
    // SAFETY: getsid only reads.
    let sid = unsafe { libc::getsid(pid) };
    assert_eq!(sid, pid, "the daemon is not a session leader (setsid)");

    // A client is served.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }),
        "port {port} never accepted"
    );
    let v: i32 = with_timeout(Duration::from_secs(20), "client of the daemon", move || {
        let mut c = must_connect(port, TRUST_USER.user, None);
        c.query_one("SELECT 40+2", &[]).expect("SELECT").get(0)
    });
    assert_eq!(v, 42);
    let log = std::fs::read_to_string(dir.join("pgcorral.log")).unwrap_or_default();
    assert!(
        !log.is_empty(),
        "log_path {}/pgcorral.log is empty",
        dir.display()
    );

    // SIGTERM to the pid in the pidfile stops it and removes the pidfile.
    // SAFETY: kill with the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(
        wait_dead(pid, Duration::from_secs(10)),
        "the daemon {pid} is still running 10 s after SIGTERM"
    );
    guard.pid = None;
    assert!(
        wait_until(Duration::from_secs(2), || !pidfile.exists()),
        "pidfile left behind"
    );
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "port {port} still accepts after the daemon stopped"
    );
}

#[test]
fn daemon_mode_needs_a_log_file() {
    let cluster = PgCluster::start();
    let tmp = TempDir::new("pgcorral-daemon-console-");
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let (conf, hba) = write_daemon_conf(&dir, port, cluster.port, "console");
    let (_, out) = run_launcher(&conf, &hba, &dir);
    // If it daemonised anyway, stop it before failing.
    let _guard = DaemonGuard {
        pid: std::fs::read_to_string(dir.join("pgcorral.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    };
    assert!(
        !out.status.success(),
        "pgcorral -d with log_type = console succeeded: stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let msg = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        msg.contains("log_type"),
        "message does not mention log_type: {msg}"
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "something listens on {port}"
    );
}
