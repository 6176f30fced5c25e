//! Small helpers: temporary directories, free ports, running commands as `postgres`, psql.

use std::ffi::{CStr, CString};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Directory holding the PostgreSQL 15 server binaries (`initdb`, `pg_ctl`, `postgres`).
/// `PGCORRAL_PG_BIN` overrides the default `/usr/lib/postgresql/15/bin`.
pub fn pg_bin() -> PathBuf {
    let dir = std::env::var_os("PGCORRAL_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    for tool in ["initdb", "pg_ctl", "postgres"] {
        if !dir.join(tool).is_file() {
            panic!(
                "PostgreSQL 15 server binary {} is missing: install it with `apt-get install postgresql-15` \
                 (or point PGCORRAL_PG_BIN at a directory holding initdb, pg_ctl and postgres)",
                dir.join(tool).display()
            );
        }
    }
    dir
}

/// A client tool (`psql`, `pgbench`): from PATH, else from [`pg_bin`]. Panics with an install hint.
pub(crate) fn client_tool(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let p = pg_bin().join(name);
    if p.is_file() {
        return p;
    }
    panic!("`{name}` not found on PATH: install it with `apt-get install postgresql-client-15 postgresql-15`");
}

/// A directory under `/tmp` created with `mkdtemp`, removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/<prefix>XXXXXX` (mode 0700).
    pub fn new(prefix: &str) -> TempDir {
        let template = CString::new(format!("/tmp/{prefix}XXXXXX")).unwrap();
        let raw = template.into_raw();
        // SAFETY: `raw` is a valid NUL-terminated buffer ending in XXXXXX, as mkdtemp requires.
        let res = unsafe { libc::mkdtemp(raw) };
        // SAFETY: `raw` came from CString::into_raw and mkdtemp does not change its length.
        let template = unsafe { CString::from_raw(raw) };
        if res.is_null() {
            panic!(
                "mkdtemp /tmp/{prefix}XXXXXX: {}",
                std::io::Error::last_os_error()
            );
        }
        TempDir {
            path: PathBuf::from(template.to_str().unwrap()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PGCORRAL_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of an OS user, from getpwnam.
pub(crate) fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam gets a valid C string; the result is read before any other pw call.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// The ids of OS user `postgres`, when we are root (PostgreSQL refuses to run as root).
pub(crate) fn postgres_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    Some(user_ids("postgres").unwrap_or_else(|| {
        panic!("running as root but OS user `postgres` does not exist: install `postgresql-15` (it creates the user)")
    }))
}

/// chown a path to the given ids (no-op on None).
pub(crate) fn chown(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string path.
        let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
        if rc != 0 {
            panic!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A command for a PostgreSQL server binary, run as `postgres` via `runuser` when we are root.
pub(crate) fn pg_command(bin: &Path) -> Command {
    if is_root() {
        postgres_ids();
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

static PORT_SEQ: AtomicU32 = AtomicU32::new(0);

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback TCP port that is free right now.
///
/// Picks a random port below the kernel's ephemeral range (so outgoing client connections of a
/// busy test cannot take it before the server binds it) and checks it with a bind on 127.0.0.1;
/// falls back to binding port 0.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    let (start, end) = (15000u32, low.min(65000));
    if end > start + 1000 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut x = nanos
            ^ std::process::id().wrapping_mul(2_654_435_761)
            ^ PORT_SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(40503);
        for _ in 0..200 {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = (start + x % (end - start)) as u16;
            if bindable(port) {
                return port;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Runs `psql` over TCP: `-X -A -t -v ON_ERROR_STOP=1`, PGPASSWORD from `password`,
/// PGCONNECT_TIMEOUT=10, `sslmode=disable`. Returns the raw output.
pub fn psql(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
    sql: &str,
) -> Output {
    let mut c = Command::new(client_tool("psql"));
    c.arg("-X")
        .arg("-A")
        .arg("-t")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-h")
        .arg(host)
        .arg("-p")
        .arg(port.to_string())
        .arg("-U")
        .arg(user)
        .arg("-d")
        .arg(db)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    match password {
        Some(p) => {
            c.env("PGPASSWORD", p);
        }
        None => {
            c.env_remove("PGPASSWORD");
        }
    }
    // Never let psql prompt on our stdin.
    c.arg("-w");
    c.stdin(std::process::Stdio::null());
    c.output().expect("spawn psql")
}

/// Like [`psql`] but over a Unix socket directory (`-h <dir>`).
pub fn psql_unix(
    socket_dir: &Path,
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
    sql: &str,
) -> Output {
    psql(
        socket_dir.to_str().expect("utf-8 socket dir"),
        port,
        user,
        password,
        db,
        sql,
    )
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a pid (ESRCH ignored). Returns whether it was delivered.
pub(crate) fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// (ppid, starttime) of a process, from /proc/<pid>/stat.
pub(crate) fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' : state(0) ppid(1) ... starttime is field 22 overall => index 19 here
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// All pids whose parent is `parent`, from /proc/*/stat.
pub(crate) fn children_of(parent: i32) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = CStr::from_bytes_with_nul(&[name.as_bytes(), b"\0"].concat())
                .ok()
                .and_then(|c| c.to_str().ok().and_then(|s| s.parse::<i32>().ok()))
            else {
                continue;
            };
            if let Some((ppid, start)) = proc_stat(pid) {
                if ppid == parent {
                    out.push((pid, start));
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s.rfind(')') {
            Some(i) => !matches!(
                s[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X')
            ),
            None => false,
        },
        Err(_) => false,
    }
}

/// Makes this (test) process a child subreaper, so that processes orphaned by what the tests start
/// (the postmaster after `pg_ctl` exits, workers left by a killed daemon) can be reaped by
/// [`reap`] instead of staying zombies under a PID 1 that may not reap.
pub(crate) fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument; no memory is passed.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
        }
    });
}

/// Reaps `pid` if it is an exited child of this process (non-blocking, polls up to `timeout`
/// while the process is still a zombie-to-be).
pub(crate) fn reap(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid || rc < 0 {
            return; // reaped, or not our child
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
