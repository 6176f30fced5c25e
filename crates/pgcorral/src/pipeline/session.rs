//! The session pipeline: the relay plus per-slot activity bookkeeping in the shared region (the last
//! time the client was active, which `disconnect_client` and status output use), and the place TLS
//! will be added.

use super::Pipeline;
use pgcorral_shmem::{now_secs, Slot};
use std::time::{Duration, Instant};

/// Relays like the performance pipeline and records client activity at most once a second.
#[derive(Debug)]
pub struct Session {
    last_mark: Instant,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            last_mark: Instant::now(),
        }
    }
}

impl Pipeline for Session {
    fn name(&self) -> &'static str {
        "session"
    }
    fn start(&mut self, slot: &Slot) {
        slot.set_last_use(now_secs());
    }
    fn client(&mut self, slot: &Slot, _bytes: usize) {
        if self.last_mark.elapsed() >= Duration::from_secs(1) {
            self.last_mark = Instant::now();
            slot.set_last_use(now_secs());
        }
    }
    fn periodic_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(30))
    }
}
