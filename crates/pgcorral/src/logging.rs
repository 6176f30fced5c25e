//! Logging: env_logger formatting to the console or to `log_path`, with `log_line_prefix`, rotation by
//! size and age, and `log_mode`. The log file keeps one fd number for the daemon's whole life, so a
//! reopen (SIGUSR1, after logrotate moved the file) or a rotation is a dup2 of a new open onto that
//! number. Workers forked earlier keep writing to the file they started with until they exit, so a
//! rotation loses no line.

use pgcorral_config::{Config, LogType, MainConfig};
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

static LOG_FD: AtomicI32 = AtomicI32::new(-1);
static LOG_PATH: OnceLock<PathBuf> = OnceLock::new();
static OPENED_AT: AtomicI64 = AtomicI64::new(0);
static PREFIX: Mutex<String> = Mutex::new(String::new());
static SYSLOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where syslog datagrams go: `$PGCORRAL_SYSLOG_SOCKET` (containers without /dev/log, tests) or /dev/log.
pub fn syslog_socket() -> PathBuf {
    std::env::var_os("PGCORRAL_SYSLOG_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/log"))
}

/// Sends each log record as one datagram (the formatter writes a record in one write).
struct SyslogWriter {
    sock: std::os::unix::net::UnixDatagram,
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        // A full or absent syslog must never stop the pooler: drop the line.
        let _ = self.sock.send(line);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// RFC 3164 severity of a level (facility daemon = 3).
fn syslog_priority(level: log::Level) -> u8 {
    3 * 8
        + match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn open(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Formats `t` (Unix seconds, UTC) with a strftime subset: %Y %m %d %H %M %S %z %Z %p (pid) %%.
pub fn format_time(fmt: &str, t: i64) -> String {
    let (y, mo, d) = civil(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{mo:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('z') => out.push_str("+0000"),
            Some('Z') => out.push_str("UTC"),
            Some('p') => out.push_str(&std::process::id().to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Sets up the logger. The level is the `log` crate's global maximum, so `conf set log_level` and reload
/// can change it at run time; the prefix likewise.
pub fn init(config: &Config) -> Result<(), String> {
    set_prefix(&config.main.log_line_prefix);
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    builder.format(|buf, record| {
        if SYSLOG.load(Ordering::Relaxed) {
            // syslog adds its own time stamp: no prefix.
            return writeln!(
                buf,
                "<{}>pgcorral[{}]: {} {}",
                syslog_priority(record.level()),
                std::process::id(),
                record.level(),
                record.args()
            );
        }
        let prefix = PREFIX
            .lock()
            .map(|p| format_time(&p, now_secs()))
            .unwrap_or_default();
        writeln!(
            buf,
            "{prefix} {:<5} [{}] {}",
            record.level(),
            std::process::id(),
            record.args()
        )
    });
    match config.main.log_type {
        LogType::Console => {
            builder.target(env_logger::Target::Stderr);
        }
        LogType::Syslog => {
            let path = syslog_socket();
            let sock = std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.connect(&path).map(|_| s))
                .map_err(|e| format!("cannot reach syslog at {}: {e}", path.display()))?;
            SYSLOG.store(true, Ordering::Relaxed);
            builder.target(env_logger::Target::Pipe(Box::new(SyslogWriter { sock })));
        }
        LogType::File => {
            let path = &config.main.log_path;
            let file = open(path, config.main.log_mode_append)
                .map_err(|e| format!("cannot open log_path {}: {e}", path.display()))?;
            LOG_FD.store(file.as_raw_fd(), Ordering::Relaxed);
            OPENED_AT.store(now_secs(), Ordering::Relaxed);
            let _ = LOG_PATH.set(path.clone());
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    builder.init();
    log::set_max_level(config.main.log_level.to_filter());
    Ok(())
}

/// Changes the line prefix (reload, `conf set`).
pub fn set_prefix(prefix: &str) {
    if let Ok(mut p) = PREFIX.lock() {
        *p = prefix.to_string();
    }
}

/// Points the logger's fd at a fresh open of the log path.
fn replace_file() -> std::io::Result<()> {
    let (fd, Some(path)) = (LOG_FD.load(Ordering::Relaxed), LOG_PATH.get()) else {
        return Ok(());
    };
    if fd < 0 {
        return Ok(());
    }
    let new = open(path, true)?.into_raw_fd();
    // SAFETY: both fds are open and ours; dup2 atomically points the logger's fd at the new file.
    unsafe {
        libc::dup2(new, fd);
        libc::close(new);
    }
    OPENED_AT.store(now_secs(), Ordering::Relaxed);
    Ok(())
}

/// Reopens the log file at its path (SIGUSR1). A no-op when logging to the console.
pub fn reopen() {
    match replace_file() {
        Ok(()) => log::info!("log file reopened"),
        Err(e) => log::error!("cannot reopen the log file: {e}"),
    }
}

/// Rotates the log file when it passed `log_rotation_size` or `log_rotation_age`: the current file is
/// renamed to `<log_path>.<UTC time>` and a new one started. Main calls this periodically.
pub fn maybe_rotate(main: &MainConfig) {
    let (fd, Some(path)) = (LOG_FD.load(Ordering::Relaxed), LOG_PATH.get()) else {
        return;
    };
    if fd < 0 {
        return;
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let age = now_secs() - OPENED_AT.load(Ordering::Relaxed);
    let by_size = main.log_rotation_size > 0 && size >= main.log_rotation_size;
    let by_age = !main.log_rotation_age.is_zero() && age >= main.log_rotation_age.as_secs() as i64;
    if !(by_size || by_age) {
        return;
    }
    let mut target = PathBuf::from(format!(
        "{}.{}",
        path.display(),
        format_time("%Y%m%d-%H%M%S", now_secs())
    ));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!(
            "{}.{}-{n}",
            path.display(),
            format_time("%Y%m%d-%H%M%S", now_secs())
        ));
        n += 1;
    }
    if let Err(e) = std::fs::rename(path, &target) {
        log::error!("cannot rotate the log file to {}: {e}", target.display());
        return;
    }
    match replace_file() {
        Ok(()) => log::info!("log file rotated; the previous one is {}", target.display()),
        Err(e) => log::error!("cannot start a new log file after rotation: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        // 2026-11-25 01:11:48 UTC
        let t = 1_795_569_108;
        assert_eq!(
            format_time("%Y-%m-%d %H:%M:%S %z %%", t),
            "2026-11-25 01:11:48 +0000 %"
        );
        assert_eq!(format_time("%Y%m%d", 0), "19700101");
        assert_eq!(format_time("%Y-%m-%d", 951_782_400), "2000-02-29");
        assert_eq!(format_time("%q", 0), "%q");
    }
}
