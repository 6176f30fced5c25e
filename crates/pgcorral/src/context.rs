//! What every process of the daemon shares: the configuration, the shared region, and the table of
//! backend sockets main holds (a worker sees main's table as it was when the worker was forked).

use pgcorral_config::Config;
use pgcorral_shmem::Region;
use std::os::fd::RawFd;
use std::path::PathBuf;

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
}

impl Context {
    /// The fd main held for `slot` when this process was forked, if it belongs to `generation`.
    pub fn inherited_fd(&self, slot: usize, generation: u32) -> Option<RawFd> {
        match self.main_fds.get(slot) {
            Some(Some((fd, g))) if *g == generation => Some(*fd),
            _ => None,
        }
    }
}
