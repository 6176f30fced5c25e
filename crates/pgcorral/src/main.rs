//! pgcorral: a PostgreSQL connection pooler that forks one worker process per client, in the manner
//! of pgagroal. This binary is the daemon; see doc/architecture.md for how its processes share state.

mod auth_query;
mod backend;
mod context;
mod daemon;
mod io;
mod logging;
mod management;
mod notify;
mod pipeline;
mod pool;
mod prefill;
mod relay;
mod remote;
mod secrets;
mod security;
mod signals;
mod title;
mod transfer;
mod worker;

use clap::{ArgAction, Parser};
use pgcorral_config::{Config, LogType, Pipeline as PipelineKind};
use pgcorral_shmem::Region;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

const DEFAULT_DIR: &str = "/etc/pgcorral";

/// Command line, as pgagroal's.
#[derive(Parser, Debug)]
#[command(
    name = "pgcorral",
    version,
    about = "PostgreSQL connection pooler",
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Cli {
    /// Main configuration file
    #[arg(short = 'c', long = "config", value_name = "CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Host-based access file
    #[arg(short = 'a', long = "hba", value_name = "HBA_FILE")]
    hba: Option<PathBuf>,
    /// Limits (databases) file
    #[arg(short = 'l', long = "limit", value_name = "LIMIT_FILE")]
    limit: Option<PathBuf>,
    /// Users file: backend passwords (encrypted with the master key)
    #[arg(short = 'u', long = "users", value_name = "USERS_FILE")]
    users: Option<PathBuf>,
    /// Frontend users file: client passwords that differ from the backend ones
    #[arg(short = 'F', long = "frontend", value_name = "FRONTEND_USERS_FILE")]
    frontend: Option<PathBuf>,
    /// Admins file (remote management)
    #[arg(short = 'A', long = "admins", value_name = "ADMINS_FILE")]
    admins: Option<PathBuf>,
    /// Superuser file: the user auth_query reads role secrets as
    #[arg(short = 'S', long = "superuser", value_name = "SUPERUSER_FILE")]
    superuser: Option<PathBuf>,
    /// Run as a daemon
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Print the version and exit
    #[arg(short = 'V', long = "version", action = ArgAction::Version)]
    version: Option<bool>,
    /// Print help and exit
    #[arg(short = '?', long = "help", action = ArgAction::Help)]
    help: Option<bool>,
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("pgcorral: {message}");
    std::process::exit(1);
}

fn listen_addresses(host: &str, port: u16) -> Vec<SocketAddr> {
    if host == "*" {
        return vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ];
    }
    match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => fail(format!("cannot resolve host '{host}': {e}")),
    }
}

fn tcp_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        // With host = *, the IPv4 wildcard has its own socket.
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(
        &fd,
        Backlog::new(backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN),
    )?;
    Ok(TcpListener::from(fd))
}

/// Binds a Unix socket, replacing a stale file left by a crashed run but never a live server's socket.
fn unix_listener(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another server is listening there",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

fn management_listener(path: &Path) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // Only the pgcorral user may hand sockets in or take them out.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// Creates the pidfile with O_EXCL; a file whose PID is no longer alive is replaced.
fn write_pidfile(path: &Path) {
    use std::fs::OpenOptions;
    for _ in 0..2 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0644()
            .open(path)
        {
            Ok(mut f) => {
                if let Err(e) = writeln!(f, "{}", std::process::id()) {
                    fail(format!("cannot write pidfile {}: {e}", path.display()));
                }
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let old = std::fs::read_to_string(path).unwrap_or_default();
                let alive = old.trim().parse::<i32>().ok().is_some_and(|pid| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
                });
                if alive {
                    fail(format!(
                        "pidfile {} exists and process {} is running: is another pgcorral using this configuration?",
                        path.display(),
                        old.trim()
                    ));
                }
                log::warn!(
                    "removing stale pidfile {} (process {} is gone)",
                    path.display(),
                    old.trim()
                );
                let _ = std::fs::remove_file(path);
            }
            Err(e) => fail(format!("cannot create pidfile {}: {e}", path.display())),
        }
    }
    fail(format!("cannot create pidfile {}", path.display()));
}

trait Mode0644 {
    fn mode_0644(&mut self) -> &mut Self;
}
impl Mode0644 for std::fs::OpenOptions {
    fn mode_0644(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o644)
    }
}

fn raise_fd_limit() {
    if let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
    }
}

fn daemonize() {
    // SAFETY: called before any thread exists; the parent exits at once.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => fail(format!("cannot fork to become a daemon: {e}")),
    }
    let _ = nix::unistd::setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for target in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), target);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let conf = cli
        .config
        .unwrap_or_else(|| Path::new(DEFAULT_DIR).join("pgcorral.conf"));
    let hba = cli
        .hba
        .unwrap_or_else(|| Path::new(DEFAULT_DIR).join("pgcorral_hba.conf"));
    let limits = cli.limit.or_else(|| {
        let p = Path::new(DEFAULT_DIR).join("pgcorral_databases.conf");
        p.exists().then_some(p)
    });
    let (config, warnings) = match Config::load(&conf, &hba, limits.as_deref()) {
        Ok(c) => c,
        Err(e) => fail(e),
    };
    if cli.daemon && config.main.log_type == LogType::Console {
        fail("-d (daemon mode) needs log_type = file: a daemon has no console to log to");
    }
    logging::init(&config).unwrap_or_else(|e| fail(e));
    // The command line has been parsed (std never reads argv again), so its memory can hold the title;
    // set before any socket exists, so nobody can see the daemon up under its old name.
    title::set(config.main.update_process_title, "pgcorral: main");
    for w in &warnings {
        log::warn!("{w}");
    }
    let secrets = secrets::Secrets::load(
        cli.users.as_deref(),
        cli.frontend.as_deref(),
        cli.admins.as_deref(),
        cli.superuser.as_deref(),
    )
    .unwrap_or_else(|e| fail(e));
    if config.main.auth_query && secrets.superuser().is_none() {
        fail("auth_query = on needs the superuser file (-S) with the user pgcorral reads pg_authid as");
    }
    if !secrets.is_empty() {
        log::info!(
            "user vault: {} user(s) with a backend password",
            secrets.user_count()
        );
    }
    if nix::unistd::geteuid().is_root() {
        log::warn!("running as root: prefer an unprivileged user (root is needed only for the cgroup mover)");
    }
    raise_fd_limit();
    if cli.daemon {
        daemonize();
    }
    let main = &config.main;
    let pidfile = main.pidfile.clone().unwrap_or_else(|| {
        main.unix_socket_dir
            .join(format!("pgcorral.{}.pid", main.port))
    });
    write_pidfile(&pidfile);
    let remove_pidfile_and_fail = |msg: String| -> ! {
        let _ = std::fs::remove_file(&pidfile);
        fail(msg)
    };

    let mut listeners = Vec::new();
    for addr in listen_addresses(&main.host, main.port) {
        match tcp_listener(addr, main.backlog) {
            Ok(l) => listeners.push(daemon::Listener::Tcp(l)),
            // An IPv6 wildcard on a host without IPv6 is not worth failing for when IPv4 works.
            Err(e) if main.host == "*" && addr.is_ipv6() => {
                log::warn!("not listening on {addr}: {e}")
            }
            Err(e) => remove_pidfile_and_fail(format!("cannot listen on {addr}: {e}")),
        }
    }
    let mut management_listeners = Vec::new();
    if main.management != 0 {
        for addr in listen_addresses(&main.host, main.management) {
            match tcp_listener(addr, 16) {
                Ok(l) => management_listeners.push(l),
                Err(e) if main.host == "*" && addr.is_ipv6() => {
                    log::warn!("remote management not listening on {addr}: {e}")
                }
                Err(e) => remove_pidfile_and_fail(format!(
                    "cannot listen for remote management on {addr}: {e}"
                )),
            }
        }
    }
    let socket_path = main.unix_socket_dir.join(format!(".s.PGSQL.{}", main.port));
    match unix_listener(&socket_path, 0o777) {
        Ok(l) => listeners.push(daemon::Listener::Unix(l, socket_path.clone())),
        Err(e) => {
            remove_pidfile_and_fail(format!("cannot listen on {}: {e}", socket_path.display()))
        }
    }
    let management_path = main
        .unix_socket_dir
        .join(format!(".s.pgcorral.tu.{}", main.port));
    let management = management_listener(&management_path).unwrap_or_else(|e| {
        remove_pidfile_and_fail(format!(
            "cannot create the transfer socket {}: {e}",
            management_path.display()
        ))
    });
    // The control socket (pgcorral-ctl): only the pgcorral user may use it.
    let control_path = main
        .unix_socket_dir
        .join(format!(".s.pgcorral.{}", main.port));
    let control = unix_listener(&control_path, 0o600).unwrap_or_else(|e| {
        remove_pidfile_and_fail(format!(
            "cannot create the control socket {}: {e}",
            control_path.display()
        ))
    });
    // Prepared-statement sets only matter to the transaction pipeline.
    let prepared = if main.pipeline == pgcorral_config::Pipeline::Transaction {
        main.max_prepared_statements
    } else {
        0
    };
    let region = Region::create_with(main.max_connections, prepared)
        .unwrap_or_else(|e| remove_pidfile_and_fail(e.to_string()));
    let signal_pipe = signals::install_main()
        .unwrap_or_else(|e| remove_pidfile_and_fail(format!("cannot set up signals: {e}")));
    let pipeline = match main.pipeline {
        PipelineKind::Session => "session",
        PipelineKind::Auto | PipelineKind::Performance => "performance",
        PipelineKind::Transaction => "transaction",
    };
    log::info!(
        "pgcorral {} started: {}:{} and {}, pipeline {pipeline}, max_connections {}, server {}:{}",
        env!("CARGO_PKG_VERSION"),
        main.host,
        main.port,
        socket_path.display(),
        main.max_connections,
        config.servers[config.primary_index()].host,
        config.servers[config.primary_index()].port,
    );
    let capacity = main.max_connections;
    let cleanup = daemon::Cleanup {
        pidfile: Some(pidfile.clone()),
        management_socket: management_path.clone(),
        control_socket: control_path.clone(),
    };
    let files = management::Files {
        main: conf.clone(),
        hba: hba.clone(),
        limits: limits.clone(),
        users: cli.users.clone(),
        frontend: cli.frontend.clone(),
        admins: cli.admins.clone(),
        superuser: cli.superuser.clone(),
    };
    // The shared transaction relay's channel exists before any fork: every worker inherits it.
    let relay = if config.main.pipeline == PipelineKind::Transaction
        && config.main.transaction_relay_shared
    {
        Some(context::RelayChannel::new().unwrap_or_else(|e| {
            remove_pidfile_and_fail(format!(
                "cannot create the transaction relay's channel: {e}"
            ))
        }))
    } else {
        None
    };
    let ctx = context::Context {
        config,
        region,
        main_fds: vec![None; capacity],
        management_path,
        secrets,
        relay,
    };
    listeners.extend(
        management_listeners
            .into_iter()
            .map(daemon::Listener::Remote),
    );
    if ctx.config.limits.len() > pgcorral_shmem::MAX_RULES {
        remove_pidfile_and_fail(format!(
            "{} limit rules defined; pgcorral supports at most {}",
            ctx.config.limits.len(),
            pgcorral_shmem::MAX_RULES
        ));
    }
    let daemon = daemon::Daemon::new(
        ctx,
        files,
        listeners,
        management,
        control,
        signal_pipe,
        cleanup,
    )
    .unwrap_or_else(|e| remove_pidfile_and_fail(format!("cannot start the event loop: {e}")));
    notify::notify("READY=1");
    std::process::exit(daemon.run());
}
