//! Logging: env_logger formatting to the console or to `log_path`. The log file keeps one fd number for
//! the daemon's whole life, so SIGUSR1 can reopen the file (after logrotate moved it) by dup2 of a new
//! open onto that number, and every process writing through it follows.

use pgcorral_config::{Config, LogType};
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

static LOG_FD: AtomicI32 = AtomicI32::new(-1);
static LOG_PATH: OnceLock<std::path::PathBuf> = OnceLock::new();

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Sets up the logger. The level is the `log` crate's global maximum, so `conf set log_level` and reload
/// can change it at run time.
pub fn init(config: &Config) -> Result<(), String> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    builder.format(|buf, record| {
        writeln!(
            buf,
            "{} {:<5} [{}] {}",
            buf.timestamp_seconds(),
            record.level(),
            std::process::id(),
            record.args()
        )
    });
    match config.main.log_type {
        LogType::Console => {
            builder.target(env_logger::Target::Stderr);
        }
        LogType::File => {
            let path = &config.main.log_path;
            let file =
                open(path).map_err(|e| format!("cannot open log_path {}: {e}", path.display()))?;
            LOG_FD.store(file.as_raw_fd(), Ordering::Relaxed);
            let _ = LOG_PATH.set(path.clone());
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    builder.init();
    log::set_max_level(config.main.log_level.to_filter());
    Ok(())
}

/// Reopens the log file at its path (SIGUSR1). A no-op when logging to the console.
pub fn reopen() {
    let (fd, Some(path)) = (LOG_FD.load(Ordering::Relaxed), LOG_PATH.get()) else {
        return;
    };
    if fd < 0 {
        return;
    }
    match open(path) {
        Ok(file) => {
            let new = file.into_raw_fd();
            // SAFETY: both fds are open and ours; dup2 atomically points the logger's fd at the new file.
            unsafe {
                libc::dup2(new, fd);
                libc::close(new);
            }
            log::info!("log file {} reopened", path.display());
        }
        Err(e) => log::error!("cannot reopen log file {}: {e}", path.display()),
    }
}
