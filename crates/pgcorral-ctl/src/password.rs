//! The admin password for remote management: `-P`, else `$PGCORRAL_PASSWORD`, else a prompt without
//! echo when standard input is a terminal, else an error.

use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;

/// The environment variable read when `-P` is not given.
pub const PASSWORD_ENV: &str = "PGCORRAL_PASSWORD";

/// Picks the password from the option or the environment value; `None`: neither gave one.
pub fn from_sources(option: Option<&str>, env: Option<String>) -> Option<String> {
    option.map(str::to_string).or(env)
}

/// The password to log in with; `Err` says why there is none.
pub fn resolve(option: Option<&str>, user: &str, host: &str) -> Result<String, String> {
    if let Some(p) = from_sources(option, std::env::var(PASSWORD_ENV).ok()) {
        return Ok(p);
    }
    let stdin = io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(stdin.as_raw_fd()) } != 1 {
        return Err(format!(
            "no password for \"{user}\": give -P PASSWORD or set {PASSWORD_ENV} (standard input is not a terminal to prompt on)"
        ));
    }
    prompt(&format!("Password for {user}@{host}: "))
        .map_err(|e| format!("cannot read the password: {e}"))
}

/// Restores the terminal's attributes when dropped (also when reading fails).
struct EchoOff {
    fd: i32,
    saved: libc::termios,
}

impl EchoOff {
    fn new(fd: i32) -> io::Result<EchoOff> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: fd is a terminal, quiet a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores what tcgetattr returned.
        unsafe { libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved) };
    }
}

/// Prompts on standard error and reads one line from the terminal on standard input, echo off.
fn prompt(text: &str) -> io::Result<String> {
    let stdin = io::stdin();
    let mut err = io::stderr().lock();
    err.write_all(text.as_bytes())?;
    err.flush()?;
    let _guard = EchoOff::new(stdin.as_raw_fd())?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(strip_newline(line))
}

/// The line without its line ending.
fn strip_newline(mut line: String) -> String {
    while line.ends_with(['\n', '\r']) {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_wins_over_environment() {
        assert_eq!(
            from_sources(Some("opt"), Some("env".into())).as_deref(),
            Some("opt")
        );
        assert_eq!(
            from_sources(None, Some("env".into())).as_deref(),
            Some("env")
        );
        assert_eq!(from_sources(None, None), None);
        // An empty -P is a password like any other (the daemon decides).
        assert_eq!(
            from_sources(Some(""), Some("env".into())).as_deref(),
            Some("")
        );
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(strip_newline("secret\n".into()), "secret");
        assert_eq!(strip_newline("secret\r\n".into()), "secret");
        assert_eq!(strip_newline("sec ret ".into()), "sec ret ");
    }
}
