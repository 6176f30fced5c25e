//! A pgcorral daemon in front of a [`PgCluster`].

use std::fmt;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::PgCluster;
use crate::util::{
    become_subreaper, children_of, chown, free_port, is_root, kill, pid_alive, proc_stat, reap,
    user_ids, TempDir,
};

/// How to configure a pgcorral instance. `Default` gives the values below.
#[derive(Debug, Clone)]
pub struct PgcorralOptions {
    /// `pipeline` (default "performance").
    pub pipeline: &'static str,
    /// `max_connections` (default 20).
    pub max_connections: usize,
    /// `blocking_timeout` in seconds (default 30).
    pub blocking_timeout: u64,
    /// `authentication_timeout` in seconds (default 5).
    pub authentication_timeout: u64,
    /// Lines of `pgcorral_hba.conf` (default `host all all all all`, `local all all all`).
    pub hba: Vec<String>,
    /// Lines of `pgcorral_databases.conf`; empty (the default) means no `-l`.
    pub limits: Vec<String>,
    /// Extra `key = value` lines for the `[pgcorral]` section. A line whose key is one the kit
    /// writes itself (e.g. `max_connections`) replaces the kit's line in place.
    pub extra_main: Vec<String>,
    /// User files to encrypt and pass with `-u`, `-F`, `-A` and `-S` (default none).
    pub vault: Option<Vault>,
    /// Extra environment variables of the daemon (e.g. `NOTIFY_SOCKET`; default none).
    pub env: Vec<(String, String)>,
}

/// The users pgcorral gets secrets for: written with a fresh master key under the daemon's home.
#[derive(Debug, Clone, Default)]
pub struct Vault {
    /// Backend passwords (`-u`).
    pub users: Vec<(String, String)>,
    /// Frontend passwords (`-F`; omitted when empty).
    pub frontend: Vec<(String, String)>,
    /// The auth_query superuser (`-S`).
    pub superuser: Option<(String, String)>,
    /// Remote management admins (`-A`; omitted when empty).
    pub admins: Vec<(String, String)>,
}

impl Vault {
    /// A vault with backend passwords for `users`.
    pub fn users(users: &[(&str, &str)]) -> Vault {
        Vault {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            ..Default::default()
        }
    }
}

/// Writes master.key under `home` and the user files into `dir`; returns the daemon's extra arguments.
fn write_vault(v: &Vault, dir: &Path, home: &Path) -> Vec<String> {
    use pgcorral_vault::{MasterKey, UsersFile};
    let key_path = home.join("master.key");
    MasterKey::create(&key_path, "testkit master passphrase").expect("create master.key");
    let key = MasterKey::load(&key_path).expect("load master.key");
    let mut args = Vec::new();
    let mut write = |flag: &str, name: &str, entries: &[(String, String)]| {
        let path = dir.join(name);
        let mut f = UsersFile::empty(&path);
        for (u, p) in entries {
            f.add(u, &key.encrypt(p)).expect("add user");
        }
        f.save().expect("save users file");
        args.push(flag.to_string());
        args.push(path.display().to_string());
    };
    write("-u", "pgcorral_users.conf", &v.users);
    if !v.frontend.is_empty() {
        write("-F", "pgcorral_frontend_users.conf", &v.frontend);
    }
    if !v.admins.is_empty() {
        write("-A", "pgcorral_admins.conf", &v.admins);
    }
    if let Some(su) = &v.superuser {
        write("-S", "pgcorral_superuser.conf", std::slice::from_ref(su));
    }
    args
}

impl Default for PgcorralOptions {
    fn default() -> Self {
        PgcorralOptions {
            pipeline: "performance",
            max_connections: 20,
            blocking_timeout: 30,
            authentication_timeout: 5,
            hba: vec!["host all all all all".into(), "local all all all".into()],
            limits: Vec::new(),
            extra_main: Vec::new(),
            vault: None,
            env: Vec::new(),
        }
    }
}

/// Why [`Pgcorral::try_start`] failed: the daemon's exit status (None: it was still running
/// after 10 s and got killed, or could not be spawned) and everything it printed.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub log: String,
    /// Path of the `pgcorral.conf` that was used (the directory is gone by now).
    pub conf_path: PathBuf,
    /// The text of that `pgcorral.conf`.
    pub conf: String,
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pgcorral did not start (status {:?}); config {}:\n{}\n--- output ---\n{}",
            self.status,
            self.conf_path.display(),
            self.conf,
            self.log
        )
    }
}

/// A running pgcorral daemon. Dropping it stops it (SIGTERM, SIGKILL after 10 s) and any worker
/// it left behind, and removes its directory.
#[derive(Debug)]
pub struct Pgcorral {
    /// Client TCP port on 127.0.0.1.
    pub port: u16,
    /// `unix_socket_dir`: the client socket is `<socket_dir>/.s.PGSQL.<port>`.
    pub socket_dir: PathBuf,
    /// The directory holding the configuration files, the pidfile and the log.
    pub dir: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
    /// Workers seen by `worker_pids` (pid, starttime), killed on drop if still alive.
    seen_workers: std::sync::Mutex<Vec<(i32, u64)>>,
    _tmp: TempDir,
}

/// The daemon binary: `PGCORRAL_BIN`, else `target/<profile>/pgcorral` next to the running test
/// (`…/target/debug/deps/test-xxx` → `…/target/debug/pgcorral`).
pub fn pgcorral_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PGCORRAL_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("PGCORRAL_BIN={} does not exist", p.display());
        }
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    let mut dir = exe.parent();
    while let Some(d) = dir {
        candidates.push(d.join("pgcorral"));
        if d.file_name().map(|n| n == "target").unwrap_or(false) {
            break;
        }
        dir = d.parent();
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "pgcorral binary not found (looked at {:?}): run `cargo build --workspace --bins` first",
        candidates
    );
}

fn render_conf(opts: &PgcorralOptions, port: u16, dir: &Path, cluster_port: u16) -> String {
    let mut main: Vec<(String, String)> = vec![
        ("host".into(), "127.0.0.1".into()),
        ("port".into(), port.to_string()),
        ("unix_socket_dir".into(), dir.display().to_string()),
        ("max_connections".into(), opts.max_connections.to_string()),
        ("pipeline".into(), opts.pipeline.to_string()),
        ("log_type".into(), "console".into()),
        ("log_level".into(), "info".into()),
        ("blocking_timeout".into(), opts.blocking_timeout.to_string()),
        (
            "authentication_timeout".into(),
            opts.authentication_timeout.to_string(),
        ),
        (
            "pidfile".into(),
            dir.join("pgcorral.pid").display().to_string(),
        ),
    ];
    let mut appended = Vec::new();
    for line in &opts.extra_main {
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (line.trim().to_string(), String::new()),
        };
        if let Some(slot) = main.iter_mut().find(|(mk, _)| *mk == k) {
            slot.1 = v;
        } else {
            appended.push((k, v));
        }
    }
    let mut s = String::from("[pgcorral]\n");
    for (k, v) in main.into_iter().chain(appended) {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push_str(&format!(
        "\n[primary]\nhost = 127.0.0.1\nport = {cluster_port}\n"
    ));
    s
}

/// The OS user the daemon runs as when the tests run as root: `PGCORRAL_TEST_RUN_AS`, default
/// root itself (pgcorral must work as root: CI runs as root and the cgroup mover needs it; it only
/// warns). `PGCORRAL_TEST_RUN_AS=postgres` runs it unprivileged instead.
fn daemon_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let user = std::env::var("PGCORRAL_TEST_RUN_AS").unwrap_or_else(|_| "root".into());
    if user == "root" {
        return None;
    }
    Some(
        user_ids(&user)
            .unwrap_or_else(|| panic!("OS user {user} (PGCORRAL_TEST_RUN_AS) does not exist")),
    )
}

impl Pgcorral {
    /// Starts pgcorral in front of `cluster`; panics with the daemon's output if it does not come
    /// up within 10 s. Retries on another port when the port was taken meanwhile.
    pub fn start(cluster: &PgCluster, opts: PgcorralOptions) -> Pgcorral {
        let mut last = None;
        for _ in 0..3 {
            match Pgcorral::try_start(cluster, opts.clone()) {
                Ok(p) => return p,
                Err(f) => {
                    let lower = f.log.to_lowercase();
                    let port_clash = lower.contains("in use") || lower.contains("eaddrinuse");
                    if !port_clash {
                        panic!("{f}");
                    }
                    last = Some(f);
                }
            }
        }
        panic!("{}", last.unwrap());
    }

    /// Starts pgcorral; on failure returns its exit status and output instead of panicking.
    pub fn try_start(cluster: &PgCluster, opts: PgcorralOptions) -> Result<Pgcorral, StartFailure> {
        let bin = pgcorral_binary();
        let ids = daemon_ids();
        become_subreaper();
        let tmp = TempDir::new("pgcorral-");
        let dir = tmp.path().to_path_buf();
        chown(&dir, ids);
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = free_port();
        let conf_path = dir.join("pgcorral.conf");
        let hba_path = dir.join("pgcorral_hba.conf");
        let limits_path = dir.join("pgcorral_databases.conf");
        let log_path = dir.join("pgcorral.log");
        let conf = render_conf(&opts, port, &dir, cluster.port);
        fs::write(&conf_path, &conf).unwrap();
        fs::write(&hba_path, opts.hba.join("\n") + "\n").unwrap();
        chown(&conf_path, ids);
        chown(&hba_path, ids);
        if !opts.limits.is_empty() {
            fs::write(&limits_path, opts.limits.join("\n") + "\n").unwrap();
            chown(&limits_path, ids);
        }
        let log = File::create(&log_path).unwrap();
        chown(&log_path, ids);

        let home = dir.join(".pgcorral");
        let vault_args = match &opts.vault {
            Some(v) => write_vault(v, &dir, &home),
            None => Vec::new(),
        };
        if ids.is_some() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                chown(&entry.path(), ids);
            }
            if home.exists() {
                chown(&home.join("master.key"), ids);
            }
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(&conf_path).arg("-a").arg(&hba_path);
        if !opts.limits.is_empty() {
            cmd.arg("-l").arg(&limits_path);
        }
        cmd.args(&vault_args).env("PGCORRAL_HOME_DIR", &home);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
            cmd.env("USER", "postgres").env("LOGNAME", "postgres");
        }
        let fail = |status: Option<ExitStatus>, extra: String| StartFailure {
            status,
            log: fs::read_to_string(&log_path).unwrap_or_default() + &extra,
            conf_path: conf_path.clone(),
            conf: conf.clone(),
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Err(fail(None, format!("\ncannot spawn {}: {e}", bin.display()))),
        };

        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(Some(status), String::new()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                kill(child.id() as i32, libc::SIGKILL);
                let status = child.wait().ok();
                return Err(fail(
                    status,
                    "\n(testkit: port did not accept within 10 s; killed)".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        // The Unix socket is normally there already; give it a moment, without failing here.
        let sock = dir.join(format!(".s.PGSQL.{port}"));
        crate::util::wait_until(Duration::from_secs(2), || sock.exists());

        Ok(Pgcorral {
            port,
            socket_dir: dir.clone(),
            dir,
            child,
            exit: None,
            seen_workers: Default::default(),
            _tmp: tmp,
        })
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `<dir>/pgcorral.pid`.
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("pgcorral.pid")
    }

    /// `<socket_dir>/.s.PGSQL.<port>`.
    pub fn unix_socket(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// `<dir>/pgcorral.conf`.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("pgcorral.conf")
    }

    /// Runs `pgcorral-ctl -c <conf_path> ARGS` (the binary next to [`pgcorral_binary`]) and
    /// returns its output.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let bin = pgcorral_binary().with_file_name("pgcorral-ctl");
        if !bin.is_file() {
            panic!(
                "{} not found: run `cargo build --workspace --bins` first",
                bin.display()
            );
        }
        Command::new(&bin)
            .arg("-c")
            .arg(self.conf_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
    }

    /// Everything the daemon (and its workers) printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("pgcorral.log")).unwrap_or_default()
    }

    /// Children of the daemon (workers and short-lived job processes), from /proc/*/stat.
    pub fn worker_pids(&self) -> Vec<i32> {
        if self.exit.is_some() {
            return Vec::new();
        }
        let kids = children_of(self.pid());
        let mut seen = self.seen_workers.lock().unwrap();
        for k in &kids {
            if !seen.contains(k) {
                seen.push(*k);
            }
        }
        kids.into_iter().map(|(p, _)| p).collect()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if self.exit.is_none() {
            kill(self.pid(), sig);
        }
    }

    /// Whether the daemon is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                false
            }
            _ => true,
        }
    }

    /// Waits up to `timeout` for the daemon to exit; returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM by pid, wait up to 10 s, then SIGKILL. Idempotent. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            // Remember the current workers so they can be cleaned up if the daemon leaves them.
            let _ = self.worker_pids();
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                kill(self.pid(), libc::SIGKILL);
                if let Ok(st) = self.child.wait() {
                    self.exit = Some(st);
                }
            }
        }
        self.kill_leftover_workers();
        self.exit
    }

    /// SIGKILLs workers the daemon left behind (only processes whose pid and start time match one
    /// seen as the daemon's child). Returns how many were still alive.
    pub fn kill_leftover_workers(&self) -> usize {
        let mut n = 0;
        for &(pid, start) in self.seen_workers.lock().unwrap().iter() {
            if let Some((_, s)) = proc_stat(pid) {
                if s == start && pid_alive(pid) {
                    kill(pid, libc::SIGKILL);
                    n += 1;
                }
                reap(pid, Duration::from_millis(500));
            }
        }
        n
    }

    /// The exit status, once the daemon has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }
}

impl Drop for Pgcorral {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- pgcorral output ({}) ----\n{}",
                self.dir.display(),
                self.log()
            );
        }
    }
}
