//! What every process of the daemon shares: the configuration, the shared region, and the table of
//! backend sockets main holds (a worker sees main's table as it was when the worker was forked).

use pgcorral_config::Config;
use pgcorral_shmem::Region;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// State inherited by every process forked from main.
pub struct Context {
    pub config: Config,
    pub region: Region,
    /// For each slot, the backend socket main holds and the slot generation it belongs to. In a worker
    /// this is main's table at fork time: the fds in it are open in the worker too, at the same numbers.
    pub main_fds: Vec<Option<(RawFd, u32)>>,
    /// Main's management socket (fd transfers, later the control protocol).
    pub management_path: PathBuf,
    /// Decrypted user files (inherited by workers through fork, never in the shared region).
    pub secrets: crate::secrets::Secrets,
    /// The shared transaction relay's channel (`pipeline = transaction`, `transaction_relay =
    /// shared`), made by main before any fork so that every worker inherits it.
    pub relay: Option<RelayChannel>,
}

/// How workers reach the shared transaction relay.
pub struct RelayChannel {
    /// Workers send a logged-in client here: one SOCK_SEQPACKET record with its socket attached.
    pub send: OwnedFd,
    /// The relay receives clients here (non-blocking).
    pub recv: OwnedFd,
    /// A byte written here wakes the relay (a backend came free while it had clients waiting).
    pub wake_write: OwnedFd,
    /// The relay's end of the wake-up pipe (non-blocking).
    pub wake_read: OwnedFd,
}

impl RelayChannel {
    pub fn new() -> std::io::Result<RelayChannel> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (send, recv) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        crate::io::set_nonblocking(&recv)?;
        let (wake_read, wake_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(RelayChannel {
            send,
            recv,
            wake_write,
            wake_read,
        })
    }
}

impl Context {
    /// Wakes the shared relay when it has clients waiting for a backend (called by whoever frees
    /// one). The relay frees backends too, and looks at its own queue then without being woken.
    pub fn wake_relay(&self) {
        let Some(r) = self.relay.as_ref() else {
            return;
        };
        if self.region.header().relay_waiting.load(Ordering::Acquire) == 0
            || crate::relay::is_relay()
        {
            return;
        }
        // A full pipe already holds a wake-up: EAGAIN is fine.
        let _ = nix::unistd::write(&r.wake_write, &[1u8]);
    }

    /// The fd main held for `slot` when this process was forked, if it belongs to `generation`.
    pub fn inherited_fd(&self, slot: usize, generation: u32) -> Option<RawFd> {
        match self.main_fds.get(slot) {
            Some(Some((fd, g))) if *g == generation => Some(*fd),
            _ => None,
        }
    }
}
