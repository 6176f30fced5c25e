//! Per-backend bookkeeping of the transaction pipeline: which protocol-level prepared statements each
//! backend holds (an LRU set of statement ids), and per-slot counters (queries, transactions, cancels
//! in flight).
//!
//! A backend's set is read and written only by the process that owns the slot (state IN_USE with its
//! PID as owner), like the slot's data block; the CAS that hands the slot over publishes it. The set
//! remembers the slot generation it belongs to, so a slot that got a new backend starts empty without
//! anyone having to clear it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A statement's identity: the first 16 bytes of SHA-256 over its text and parameter types.
pub type StatementId = [u8; 16];

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    id: StatementId,
    last_use: u64,
}

#[repr(C)]
struct SetHeader {
    generation: u32,
    len: u32,
    clock: u64,
}

/// One slot's prepared-statement set in the region: a header and `capacity` entries.
pub struct PreparedCell {
    header: *mut SetHeader,
    entries: *mut Entry,
    capacity: usize,
}

/// A slot's prepared-statement set, borrowed by the slot's owner.
pub struct PreparedSet<'a> {
    header: &'a mut SetHeader,
    entries: &'a mut [Entry],
}

/// Bytes one slot's set takes in the region.
pub(crate) fn cell_size(capacity: usize) -> usize {
    let raw = std::mem::size_of::<SetHeader>() + capacity * std::mem::size_of::<Entry>();
    raw.div_ceil(64) * 64
}

impl PreparedCell {
    /// # Safety
    /// `at` must point to `cell_size(capacity)` bytes inside the live mapping, 8-byte aligned.
    pub(crate) unsafe fn new(at: *mut u8, capacity: usize) -> PreparedCell {
        PreparedCell {
            header: at as *mut SetHeader,
            // SAFETY: the entries follow the header inside the same cell (caller's contract).
            entries: unsafe { at.add(std::mem::size_of::<SetHeader>()) } as *mut Entry,
            capacity,
        }
    }

    /// Most statements the set holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Works on the set of the backend of `generation`. Only the slot's owner may call this.
    pub fn with<R>(&self, generation: u32, f: impl FnOnce(&mut PreparedSet<'_>) -> R) -> R {
        // SAFETY: by the ownership protocol only the slot's owner touches its set, and the pointers are
        // valid for the region's life (see `new`); zeroed memory is a valid empty set.
        let (header, entries) = unsafe {
            (
                &mut *self.header,
                std::slice::from_raw_parts_mut(self.entries, self.capacity),
            )
        };
        if header.generation != generation {
            header.generation = generation;
            header.len = 0;
            header.clock = 0;
        }
        f(&mut PreparedSet { header, entries })
    }
}

impl PreparedSet<'_> {
    fn position(&self, id: &StatementId) -> Option<usize> {
        self.entries[..self.header.len as usize]
            .iter()
            .position(|e| &e.id == id)
    }

    fn tick(&mut self) -> u64 {
        self.header.clock += 1;
        self.header.clock
    }

    /// Whether the backend holds `id`; a hit counts as a use.
    pub fn touch(&mut self, id: &StatementId) -> bool {
        match self.position(id) {
            Some(i) => {
                let t = self.tick();
                self.entries[i].last_use = t;
                true
            }
            None => false,
        }
    }

    /// The statement that must be closed on the backend before `insert` can add one (the least
    /// recently used), when the set is full.
    pub fn victim(&self) -> Option<StatementId> {
        let len = self.header.len as usize;
        if len < self.entries.len() {
            return None;
        }
        self.entries[..len]
            .iter()
            .min_by_key(|e| e.last_use)
            .map(|e| e.id)
    }

    /// Records `id` as prepared on the backend. False when the set has no room (capacity 0, or full:
    /// close and `remove` the victim first).
    pub fn insert(&mut self, id: StatementId) -> bool {
        if self.touch(&id) {
            return true;
        }
        let len = self.header.len as usize;
        if len >= self.entries.len() {
            return false;
        }
        let t = self.tick();
        self.entries[len] = Entry { id, last_use: t };
        self.header.len += 1;
        true
    }

    /// Forgets `id` (closed on the backend, or its Parse failed).
    pub fn remove(&mut self, id: &StatementId) {
        if let Some(i) = self.position(id) {
            let last = self.header.len as usize - 1;
            self.entries.swap(i, last);
            self.header.len -= 1;
        }
    }

    /// Forgets everything (the backend dropped its statements: DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.header.len = 0;
    }

    /// How many statements the backend holds.
    pub fn len(&self) -> usize {
        self.header.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.len == 0
    }
}

/// Per-slot counters, on their own cache line.
#[repr(C, align(64))]
pub struct SlotStats {
    /// Queries (simple Query and Execute messages) run on the slot's backends.
    pub queries: AtomicU64,
    /// Transactions run on the slot's backends (in transaction mode: each checkout that ended at
    /// ReadyForQuery `I`; in session mode: each session).
    pub transactions: AtomicU64,
    /// CancelRequests being forwarded to the slot's backend right now: the owner does not hand the
    /// backend to another client while one is in flight.
    pub cancels_in_flight: AtomicU32,
}

impl SlotStats {
    pub fn add(&self, queries: u64, transactions: u64) {
        if queries > 0 {
            self.queries.fetch_add(queries, Ordering::Relaxed);
        }
        if transactions > 0 {
            self.transactions.fetch_add(transactions, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Region;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn lru_set_per_generation() {
        let r = Region::create_with(2, 3).unwrap();
        let cell = r.prepared(1);
        assert_eq!(cell.capacity(), 3);
        cell.with(7, |s| {
            assert!(s.is_empty());
            assert!(s.insert(id(1)));
            assert!(s.insert(id(2)));
            assert!(s.insert(id(3)));
            assert_eq!(s.victim(), Some(id(1)));
            assert!(s.touch(&id(1)));
            assert_eq!(s.victim(), Some(id(2)), "least recently used");
            assert!(!s.insert(id(4)), "full");
            s.remove(&id(2));
            assert!(s.insert(id(4)));
            assert!(s.touch(&id(4)) && s.touch(&id(3)) && !s.touch(&id(2)));
        });
        cell.with(7, |s| assert_eq!(s.len(), 3, "kept for the same backend"));
        cell.with(8, |s| assert!(s.is_empty(), "a new backend starts empty"));
        r.prepared(0).with(1, |s| assert!(s.is_empty()));
        let none = Region::create_with(1, 0).unwrap();
        none.prepared(0).with(1, |s| assert!(!s.insert(id(1))));
    }
}
