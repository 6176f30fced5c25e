//! The mapping itself and its header.

use crate::admin::DisabledTable;
use crate::auth_cache::{AuthCacheEntry, AUTH_CACHE_ENTRIES};
use crate::prepared::{self, PreparedCell, SlotStats};
use crate::slot::{Slot, SlotDataCell, SlotState};
use crate::wait::{Waiter, MAX_WAITERS};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use thiserror::Error;

/// Most connection slots a region can hold (pgagroal's limit).
pub const MAX_CAPACITY: usize = 10_000;
/// Most limit rules (lines of pgcorral_databases.conf).
pub const MAX_RULES: usize = 256;

const MAGIC: u64 = 0x7067_636f_7272_616c; // "pgcorral"

/// Failures creating the region.
#[derive(Debug, Error)]
pub enum ShmemError {
    #[error("max_connections must be between 1 and {MAX_CAPACITY}, not {0}")]
    Capacity(usize),
    #[error("cannot map {len} bytes of shared memory: {source}")]
    Map { len: usize, source: std::io::Error },
}

/// Counters and the wait machinery, at the start of the region.
#[repr(C, align(64))]
pub struct Header {
    magic: u64,
    capacity: u64,
    /// Backends that exist or are being created (slots not in NOTINIT).
    active: AtomicU32,
    /// Per limit rule: backends counted against the rule.
    rule_counts: [AtomicU32; MAX_RULES],
    /// Set when the daemon stops accepting clients.
    pub shutting_down: AtomicU32,
    /// Set during a graceful shutdown (refuse new clients, let the connected ones finish).
    pub(crate) gracefully: AtomicU32,
    pub(crate) disabled: DisabledTable,
    /// Futex word bumped whenever a slot becomes available; waiting clients sleep on it.
    pub(crate) release_seq: AtomicU32,
    pub(crate) waiting: AtomicU32,
    pub(crate) next_ticket: AtomicU64,
    /// Statistics.
    pub clients_served: AtomicU64,
    pub clients_waited: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub backends_created: AtomicU64,
    pub backends_killed: AtomicU64,
    pub started_at: AtomicI64,
    /// Microseconds clients spent waiting for a backend, in total.
    pub wait_time_us: AtomicU64,
    /// Clients (transactions, in transaction mode) served without waiting in the queue.
    pub checkouts: AtomicU64,
    /// One past the highest waiter entry ever used: scans of the queue stop there.
    pub(crate) waiter_high: AtomicU32,
    /// Clients sleeping without a queue entry (the queue was full): woken through `release_seq`.
    pub(crate) unqueued_sleepers: AtomicU32,
    /// One past the highest slot ever claimed: slots are claimed lowest first, so the ones in use sit
    /// below this and scans for a backend stop here (max_connections may be far above the pool).
    pub(crate) slot_high: AtomicU32,
    /// Clients the shared transaction relay serves now (they have no worker process of their own).
    pub relay_clients: AtomicU64,
    /// Clients a worker sent to the relay that the relay has not taken yet.
    pub relay_handed: AtomicU64,
    /// Set while the shared relay has clients waiting for a backend: a process that frees a backend
    /// then wakes the relay (its eventfd).
    pub relay_waiting: AtomicU32,
}

/// The shared region: a header, the waiter queue and the slots, in one `MAP_SHARED` mapping.
pub struct Region {
    base: *mut u8,
    len: usize,
    capacity: usize,
    waiters_at: usize,
    slots_at: usize,
    data_at: usize,
    cache_at: usize,
    stats_at: usize,
    prepared_at: usize,
    prepared_capacity: usize,
}

// SAFETY: the region is a fixed mapping that lives as long as the `Region`; everything in it is reached
// through atomics or through the slot ownership protocol documented on `Slot`.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

impl Region {
    /// Maps a region with `capacity` slots and no prepared-statement sets.
    pub fn create(capacity: usize) -> Result<Region, ShmemError> {
        Region::create_with(capacity, 0)
    }

    /// Maps a region with `capacity` slots, each with room for `prepared` prepared statements. Call
    /// before forking: children inherit the mapping.
    pub fn create_with(capacity: usize, prepared: usize) -> Result<Region, ShmemError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(ShmemError::Capacity(capacity));
        }
        let waiters_at = align_up(std::mem::size_of::<Header>(), 64);
        let slots_at = align_up(waiters_at + MAX_WAITERS * std::mem::size_of::<Waiter>(), 64);
        let data_at = align_up(slots_at + capacity * std::mem::size_of::<Slot>(), 64);
        let cache_at = align_up(data_at + capacity * std::mem::size_of::<SlotDataCell>(), 64);
        let stats_at = align_up(
            cache_at + AUTH_CACHE_ENTRIES * std::mem::size_of::<AuthCacheEntry>(),
            64,
        );
        let prepared_at = align_up(stats_at + capacity * std::mem::size_of::<SlotStats>(), 64);
        let len = prepared_at + capacity * prepared::cell_size(prepared);
        // SAFETY: an anonymous mapping with no address hint has no preconditions. MAP_SHARED (not
        // memmap2's MAP_PRIVATE `map_anon`) is what makes writes visible across fork.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(ShmemError::Map {
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        let region = Region {
            base: base as *mut u8,
            len,
            capacity,
            waiters_at,
            slots_at,
            data_at,
            cache_at,
            stats_at,
            prepared_at,
            prepared_capacity: prepared,
        };
        // The mapping is zero-filled, which is a valid value for every atomic and for slot data; only
        // the fields with non-zero initial values are written.
        // SAFETY: base is aligned to a page and the header fits in the mapping.
        unsafe {
            let h = base as *mut Header;
            (*h).magic = MAGIC;
            (*h).capacity = capacity as u64;
        }
        region
            .header()
            .started_at
            .store(crate::now_secs(), Ordering::Relaxed);
        for i in 0..capacity {
            region.slot(i).state_init();
        }
        Ok(region)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the header sits at the start of the live mapping, aligned, initialised in `create`.
        unsafe { &*(self.base as *const Header) }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slot `i` (panics if out of range: indices come from pgcorral itself, never from a peer).
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.capacity, "slot index {i} out of range");
        // SAFETY: in range, 64-byte aligned (slots_at is, and Slot's size is a multiple of 64).
        unsafe { &*(self.base.add(self.slots_at) as *const Slot).add(i) }
    }

    /// Slot `i`'s data block (same range rule as [`Region::slot`]).
    pub fn slot_data(&self, i: usize) -> &SlotDataCell {
        assert!(i < self.capacity, "slot index {i} out of range");
        // SAFETY: in range of the data array inside the mapping, aligned (data_at is 64-aligned and
        // SlotDataCell's alignment is at most 8); a zeroed SlotData is valid.
        unsafe { &*(self.base.add(self.data_at) as *const SlotDataCell).add(i) }
    }

    /// Slot `i`'s counters (same range rule as [`Region::slot`]).
    pub fn slot_stats(&self, i: usize) -> &SlotStats {
        assert!(i < self.capacity, "slot index {i} out of range");
        // SAFETY: in range of the stats array inside the mapping, 64-byte aligned, zeroed atomics.
        unsafe { &*(self.base.add(self.stats_at) as *const SlotStats).add(i) }
    }

    /// Slot `i`'s prepared-statement set (same range rule as [`Region::slot`]).
    pub fn prepared(&self, i: usize) -> PreparedCell {
        assert!(i < self.capacity, "slot index {i} out of range");
        let size = prepared::cell_size(self.prepared_capacity);
        // SAFETY: cell `i` lies inside the mapping (len counts `capacity` cells), 64-byte aligned.
        unsafe {
            PreparedCell::new(
                self.base.add(self.prepared_at + i * size),
                self.prepared_capacity,
            )
        }
    }

    pub(crate) fn disabled_table(&self) -> &DisabledTable {
        &self.header().disabled
    }

    pub(crate) fn auth_cache(&self) -> &[AuthCacheEntry] {
        // SAFETY: the cache array lies inside the mapping, 64-byte aligned, zero-initialised (valid).
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(self.cache_at) as *const AuthCacheEntry,
                AUTH_CACHE_ENTRIES,
            )
        }
    }

    /// All the slots.
    pub fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        (0..self.capacity).map(move |i| (i, self.slot(i)))
    }

    /// The slots that have ever held a backend (every other slot is NOTINIT).
    pub fn used_slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        let high = (self.header().slot_high.load(Ordering::Acquire) as usize).min(self.capacity);
        (0..high).map(move |i| (i, self.slot(i)))
    }

    pub(crate) fn waiters(&self) -> &[Waiter] {
        // SAFETY: the waiter array lies inside the mapping, aligned, zero-initialised (valid atomics).
        unsafe {
            std::slice::from_raw_parts(self.base.add(self.waiters_at) as *const Waiter, MAX_WAITERS)
        }
    }

    /// Backends that exist or are being created.
    pub fn active(&self) -> usize {
        self.header().active.load(Ordering::Acquire) as usize
    }

    /// Backends counted against limit rule `rule`.
    pub fn rule_count(&self, rule: usize) -> usize {
        self.header()
            .rule_counts
            .get(rule)
            .map(|c| c.load(Ordering::Acquire) as usize)
            .unwrap_or(0)
    }

    /// Reserves room for one more backend within `max_connections` and the rule's `max_size`.
    pub fn reserve(&self, max_connections: usize, rule: Option<(usize, usize)>) -> bool {
        let h = self.header();
        if h.active.fetch_add(1, Ordering::AcqRel) as usize >= max_connections.min(self.capacity) {
            h.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if let Some((rule, max_size)) = rule {
            let Some(counter) = h.rule_counts.get(rule) else {
                h.active.fetch_sub(1, Ordering::AcqRel);
                return false;
            };
            if counter.fetch_add(1, Ordering::AcqRel) as usize >= max_size {
                counter.fetch_sub(1, Ordering::AcqRel);
                h.active.fetch_sub(1, Ordering::AcqRel);
                return false;
            }
        }
        true
    }

    /// Gives back what `reserve` took.
    pub fn unreserve(&self, rule: Option<usize>) {
        let h = self.header();
        h.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(counter) = rule.and_then(|r| h.rule_counts.get(r)) {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Takes a NOTINIT slot into INIT for a new backend counted against `rule`; the caller must have
    /// reserved room first. The rule is written before anything else, so whoever releases the slot
    /// (even main, after the owner died) gives back the right reservation.
    pub fn claim_empty_slot(
        &self,
        owner: i32,
        rule: Option<usize>,
        pool_key: u64,
    ) -> Option<usize> {
        for (i, slot) in self.slots() {
            if slot.state() == SlotState::NotInit
                && slot.transition(SlotState::NotInit, SlotState::Init)
            {
                slot.set_rule(rule);
                slot.set_owner(owner);
                slot.clear_keys();
                slot.set_pool_key(pool_key);
                self.slot_data(i).clear();
                slot.new_generation();
                self.header()
                    .slot_high
                    .fetch_max(i as u32 + 1, Ordering::AcqRel);
                return Some(i);
            }
        }
        None
    }
    /// Ends a slot's backend: the slot goes back to NOTINIT and its reservation is released. The
    /// caller must hold the slot (any state but NOTINIT, moved there by itself) and have closed the
    /// backend; waiting clients are woken.
    pub fn release_slot(&self, i: usize, from: SlotState) -> bool {
        let slot = self.slot(i);
        let rule = slot.rule();
        // Clear the owner first: once NOTINIT another process may claim the slot and set its own.
        let owner = slot.owner();
        slot.set_owner(0);
        if !slot.transition(from, SlotState::NotInit) {
            slot.set_owner(owner);
            return false;
        }
        self.unreserve(rule);
        self.header()
            .backends_killed
            .fetch_add(1, Ordering::Relaxed);
        self.notify_release();
        true
    }
}

impl Slot {
    fn state_init(&self) {
        // A fresh mapping is zero, which is FREE: move every slot to NOTINIT.
        self.transition(SlotState::Free, SlotState::NotInit);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; nothing borrows the region past its drop.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_start_not_init_and_are_aligned() {
        let r = Region::create(8).unwrap();
        assert_eq!(std::mem::align_of::<Slot>(), 64);
        assert_eq!(
            std::mem::size_of::<Slot>(),
            64,
            "the hot part of a slot is one cache line"
        );
        for (_, s) in r.slots() {
            assert_eq!(s.state(), SlotState::NotInit);
            assert_eq!(s as *const Slot as usize % 64, 0);
        }
        assert!(Region::create(0).is_err());
        assert!(Region::create(MAX_CAPACITY + 1).is_err());
    }

    #[test]
    fn reservations_respect_both_limits() {
        let r = Region::create(4).unwrap();
        assert!(r.reserve(3, Some((0, 2))));
        assert!(r.reserve(3, Some((0, 2))));
        assert!(!r.reserve(3, Some((0, 2))), "rule max_size 2");
        assert!(r.reserve(3, Some((1, 5))));
        assert!(!r.reserve(3, Some((1, 5))), "max_connections 3");
        assert_eq!(r.active(), 3);
        r.unreserve(Some(0));
        assert_eq!(r.rule_count(0), 1);
        assert!(r.reserve(3, None));
    }

    #[test]
    fn claim_and_release() {
        let r = Region::create(2).unwrap();
        assert!(r.reserve(2, None));
        assert_eq!(r.used_slots().count(), 0);
        let i = r.claim_empty_slot(42, None, 1).unwrap();
        assert_eq!(
            r.used_slots().count(),
            1,
            "scans cover the claimed slot only"
        );
        let g = r.slot(i).generation();
        assert_eq!(r.slot(i).state(), SlotState::Init);
        assert_eq!(r.slot(i).owner(), 42);
        assert!(r.slot(i).transition(SlotState::Init, SlotState::InUse));
        assert!(r.release_slot(i, SlotState::InUse));
        assert_eq!(r.active(), 0);
        assert!(r.reserve(2, None));
        let j = r.claim_empty_slot(43, None, 1).unwrap();
        assert_eq!(i, j);
        assert_ne!(
            r.slot(j).generation(),
            g,
            "a new backend means a new generation"
        );
    }

    #[test]
    fn the_mapping_is_shared_across_fork() {
        let r = Region::create(2).unwrap();
        // SAFETY: the child only touches the shared mapping and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = r.slot(1).transition(SlotState::NotInit, SlotState::Free);
            r.slot(1).set_owner(4242);
            // SAFETY: _exit is async-signal-safe and skips the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0);
        assert_eq!(r.slot(1).state(), SlotState::Free);
        assert_eq!(r.slot(1).owner(), 4242);
    }
}
