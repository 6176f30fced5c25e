//! Signal handling. Main turns signals into bytes on a self-pipe that its poll loop reads, so all the
//! work happens in the loop, never in a handler. A worker's handler only sets a flag that its loops
//! check when a blocking call returns EINTR.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn to_pipe(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, so a full pipe drops the byte
        // (the loop is then busy handling signals anyway). errno is saved and restored around it.
        unsafe {
            let saved = *libc::__errno_location();
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
            *libc::__errno_location() = saved;
        }
    }
}

extern "C" fn request_stop(_sig: libc::c_int) {
    crate::io::STOP_REQUESTED.store(true, Ordering::Relaxed);
}

/// Set in the transaction relay by SIGUSR2: main started a new relay with a new configuration; this
/// one takes no new client and ends when its clients are gone.
pub static RETIRE_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_retire(_sig: libc::c_int) {
    RETIRE_REQUESTED.store(true, Ordering::Relaxed);
}

/// The transaction relay's extra signal: SIGUSR2 retires it.
pub fn install_relay() {
    let _ = install(
        Signal::SIGUSR2,
        SigHandler::Handler(request_retire),
        SaFlags::empty(),
    );
}

fn install(sig: Signal, handler: SigHandler, flags: SaFlags) -> nix::Result<()> {
    let action = SigAction::new(handler, flags, SigSet::empty());
    // SAFETY: the handlers installed here only touch atomics and call write(2).
    unsafe { sigaction(sig, &action) }.map(|_| ())
}

/// The signals main reacts to.
pub const MAIN_SIGNALS: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGALRM,
    Signal::SIGTRAP,
    Signal::SIGUSR1,
    Signal::SIGABRT,
];

/// Creates the self-pipe and routes main's signals into it; returns the read end.
pub fn install_main() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
    PIPE_WRITE.store(w.as_raw_fd(), Ordering::Relaxed);
    for sig in MAIN_SIGNALS {
        install(sig, SigHandler::Handler(to_pipe), SaFlags::SA_RESTART)?;
    }
    install(Signal::SIGPIPE, SigHandler::SigIgn, SaFlags::empty())?;
    Ok((r, w))
}

/// Reads the signals that arrived since the last call.
pub fn drain(read_end: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = nix::unistd::read(read_end, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// In a freshly forked worker: SIGTERM, SIGINT and SIGQUIT ask it to stop (no SA_RESTART, so blocking
/// calls return EINTR and the loops look at the flag); the rest back to their defaults.
pub fn install_worker() {
    PIPE_WRITE.store(-1, Ordering::Relaxed);
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        let _ = install(sig, SigHandler::Handler(request_stop), SaFlags::empty());
    }
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGALRM,
        Signal::SIGTRAP,
        Signal::SIGUSR1,
        Signal::SIGABRT,
    ] {
        let _ = install(sig, SigHandler::SigDfl, SaFlags::empty());
    }
}

/// Aborts with a core dump (SIGABRT's default action), after main logged the pool status.
pub fn abort_now() -> ! {
    let _ = install(Signal::SIGABRT, SigHandler::SigDfl, SaFlags::empty());
    std::process::abort()
}

/// Blocks every signal; returns the previous mask for [`restore`].
pub fn block_all() -> SigSet {
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    old
}

/// Restores a mask saved by [`block_all`].
pub fn restore(mask: &SigSet) {
    let _ =
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(mask), None);
}
