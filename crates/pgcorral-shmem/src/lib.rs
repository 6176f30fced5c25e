//! The shared region of pgcorral.
//!
//! One anonymous `MAP_SHARED` mapping, created by the main process before its first fork, is seen at
//! the same address by main and by every worker. It holds a header (counters, the futex word waiting
//! clients sleep on, the FIFO queue of waiting clients) and an array of 64-byte aligned connection
//! slots whose states move only by compare-and-swap. All the `unsafe` about shared memory in pgcorral
//! lives in this crate; the policy (when to flush, whom to kill) lives in the daemon.

mod admin;
mod auth_cache;
mod prepared;
mod region;
mod slot;
mod wait;

pub use admin::MAX_DISABLED;
pub use auth_cache::{AUTH_CACHE_ENTRIES, SECRET_LEN};
pub use prepared::{PreparedCell, PreparedSet, SlotStats, StatementId};
pub use region::{Header, Region, ShmemError, MAX_CAPACITY, MAX_RULES};
pub use slot::{
    AuthMethod, FixedBytes, Slot, SlotData, SlotState, NAME_LEN, PARAMS_LEN, STARTUP_LEN,
};
pub use wait::{Waiter, WaiterTicket, MAX_WAITERS};

/// Seconds since the Unix epoch, for slot timestamps.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
