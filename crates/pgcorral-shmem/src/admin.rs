//! State the management commands set in main and every worker reads: databases disabled by
//! `pgcorral-ctl disable`, and the graceful-shutdown flag.
//!
//! Only main writes the disabled table, so a version counter around the whole table is enough: a
//! reader retries while the version is odd or changed under it.

use crate::region::Region;
use crate::slot::FixedBytes;
use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// Most databases disabled by name at once (`disable all` needs no entry).
pub const MAX_DISABLED: usize = 64;

/// The disabled-database table.
#[repr(C, align(64))]
pub struct DisabledTable {
    version: AtomicU32,
    all: AtomicU32,
    names: UnsafeCell<[FixedBytes<64>; MAX_DISABLED]>,
}

// SAFETY: `names` is written only by main between odd and even versions; readers validate their copy.
unsafe impl Sync for DisabledTable {}

impl DisabledTable {
    fn snapshot(&self) -> (bool, Vec<String>) {
        loop {
            let v1 = self.version.load(Ordering::Acquire);
            if v1.is_multiple_of(2) {
                // SAFETY: racy copy validated by the version check below.
                let names = unsafe { std::ptr::read_volatile(self.names.get()) };
                let all = self.all.load(Ordering::Acquire) != 0;
                fence(Ordering::Acquire);
                if self.version.load(Ordering::Acquire) == v1 {
                    let list = names
                        .iter()
                        .filter(|n| !n.get().is_empty())
                        .map(|n| n.as_str().to_string())
                        .collect();
                    return (all, list);
                }
            }
            std::hint::spin_loop();
        }
    }

    fn update(
        &self,
        f: impl FnOnce(&mut [FixedBytes<64>; MAX_DISABLED], &AtomicU32) -> bool,
    ) -> bool {
        self.version.fetch_add(1, Ordering::AcqRel);
        // SAFETY: main is the only writer (management commands run in main), and the odd version
        // tells readers to retry.
        let ok = f(unsafe { &mut *self.names.get() }, &self.all);
        self.version.fetch_add(1, Ordering::AcqRel);
        ok
    }
}

impl Region {
    /// True when new clients of `database` must be refused.
    pub fn is_disabled(&self, database: &str) -> bool {
        let (all, list) = self.disabled_table().snapshot();
        all || list.iter().any(|n| n == database)
    }

    /// The disabled databases (`"all"` first when everything is disabled).
    pub fn disabled(&self) -> Vec<String> {
        let (all, mut list) = self.disabled_table().snapshot();
        if all {
            list.insert(0, "all".to_string());
        }
        list
    }

    /// Disables `database` (`"all"`: every database). False when the table is full. Main only.
    pub fn disable(&self, database: &str) -> bool {
        if database == "all" {
            self.disabled_table().all.store(1, Ordering::Release);
            return true;
        }
        if self.is_disabled(database) && !self.disabled_table().snapshot().0 {
            return true;
        }
        self.disabled_table().update(|names, _| {
            match names.iter_mut().find(|n| n.get().is_empty()) {
                Some(slot) => slot.set(database.as_bytes()),
                None => false,
            }
        })
    }

    /// Enables `database` again (`"all"`: clears every entry). Main only.
    pub fn enable(&self, database: &str) {
        self.disabled_table().update(|names, all| {
            if database == "all" {
                all.store(0, Ordering::Release);
                for n in names.iter_mut() {
                    n.set(b"");
                }
            } else {
                for n in names.iter_mut().filter(|n| n.get() == database.as_bytes()) {
                    n.set(b"");
                }
            }
            true
        });
    }

    /// Graceful shutdown in progress: new clients are refused.
    pub fn gracefully(&self) -> bool {
        self.header().gracefully.load(Ordering::Acquire) != 0
    }

    /// Starts or cancels a graceful shutdown. Main only.
    pub fn set_gracefully(&self, on: bool) {
        self.header().gracefully.store(on as u32, Ordering::Release);
    }

    /// Resets the statistics counters (`clear prometheus`).
    pub fn reset_statistics(&self) {
        let h = self.header();
        for c in [
            &h.clients_served,
            &h.clients_waited,
            &h.wait_timeouts,
            &h.backends_created,
            &h.backends_killed,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_and_enable() {
        let r = Region::create(1).unwrap();
        assert!(!r.is_disabled("a"));
        assert!(r.disable("a"));
        assert!(r.disable("a"), "idempotent");
        assert!(r.disable("b"));
        assert!(r.is_disabled("a") && r.is_disabled("b") && !r.is_disabled("c"));
        assert_eq!(r.disabled(), vec!["a".to_string(), "b".to_string()]);
        r.enable("a");
        assert!(!r.is_disabled("a") && r.is_disabled("b"));
        assert!(r.disable("all"));
        assert!(r.is_disabled("c"));
        r.enable("all");
        assert!(!r.is_disabled("b") && !r.is_disabled("c"));
        for i in 0..MAX_DISABLED {
            assert!(r.disable(&format!("db{i}")));
        }
        assert!(!r.disable("one-too-many"));
    }
}
