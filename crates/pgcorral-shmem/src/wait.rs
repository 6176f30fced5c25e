//! Waiting for a slot: a FIFO queue of tickets in the region, each entry with its own futex word.
//!
//! A client that finds no usable backend takes a ticket (a number from a shared counter) and registers
//! it with its PID and pool key. It may take a backend only when no older ticket with the same pool key
//! is registered, so clients of one (user, database) are served in arrival order. A returned backend
//! wakes exactly one sleeping waiter (the oldest of that pool key, else the oldest of any), by bumping
//! that entry's futex word: no polling, no back-off, and no herd of hundreds of workers woken for one
//! backend. A waiter that leaves the queue passes the wake-up on when it did not use it, or when a
//! backend of its key is still free (a younger waiter may have stood back for it). Clients that found
//! the queue full sleep on the shared word `release_seq` instead, woken by every release.

use crate::region::Region;
use crate::slot::SlotState;
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Most clients waiting at once with FIFO order; beyond that, clients still wait, unordered.
pub const MAX_WAITERS: usize = 4096;

/// Ticket value of an entry being filled in.
const CLAIMING: u64 = u64::MAX;

/// A queue entry.
#[repr(C)]
pub struct Waiter {
    ticket: AtomicU64,
    key: AtomicU64,
    pid: AtomicI32,
    /// Futex word: bumped to wake this waiter.
    wake: AtomicU32,
    /// 1 while the waiter is awake (checking) or already woken: releasers pick a sleeping one.
    awake: AtomicU32,
    _pad: u32,
}

/// A registered place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaiterTicket {
    index: usize,
    ticket: u64,
}

fn futex(word: &AtomicU32, op: libc::c_int, val: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map(|t| t as *const libc::timespec)
        .unwrap_or(std::ptr::null());
    // SAFETY: `word` is a live 4-byte aligned atomic in the shared mapping; FUTEX_WAIT/FUTEX_WAKE
    // without FUTEX_PRIVATE_FLAG work across processes sharing the mapping. Errors (EAGAIN when the word
    // already changed, EINTR, ETIMEDOUT) all mean "look again", which every caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            ts_ptr,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

impl Region {
    /// The shared word's current value, for a client without a queue entry: read it before looking
    /// for a backend, then pass it to [`Region::wait_for_release`] so a release in between is not missed.
    pub fn release_seq(&self) -> u32 {
        self.header().release_seq.load(Ordering::SeqCst)
    }

    /// Sleeps on the shared word until a backend is released or `timeout` passes (clients without a
    /// queue entry).
    pub fn wait_for_release(&self, seen: u32, timeout: Duration) {
        let h = self.header();
        h.unqueued_sleepers.fetch_add(1, Ordering::SeqCst);
        futex(&h.release_seq, libc::FUTEX_WAIT, seen, Some(timeout));
        h.unqueued_sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Call with a ticket before each look for a backend: marks the waiter as about to sleep (so a
    /// release from now on picks it) and returns its futex word's value for [`Region::sleep`].
    pub fn prepare_to_sleep(&self, t: WaiterTicket) -> u32 {
        let w = &self.waiters()[t.index];
        w.awake.store(0, Ordering::SeqCst);
        let seen = w.wake.load(Ordering::SeqCst);
        // Pairs with the fence in `notify_release_for`: either the releaser sees this waiter asleep, or
        // this waiter's look sees the released slot.
        fence(Ordering::SeqCst);
        seen
    }

    /// Sleeps until this waiter is woken (its word moves past `seen`) or `timeout` passes.
    pub fn sleep(&self, t: WaiterTicket, seen: u32, timeout: Duration) {
        let w = &self.waiters()[t.index];
        futex(&w.wake, libc::FUTEX_WAIT, seen, Some(timeout));
        w.awake.store(1, Ordering::SeqCst);
    }

    /// A backend became available (or room for one): wakes one waiter.
    pub fn notify_release(&self) {
        self.notify_release_for(None)
    }

    /// A backend of pool key `key` became available: wakes the oldest sleeping waiter of that key, else
    /// the oldest sleeping waiter of any key (it may close an idle backend to make room).
    pub fn notify_release_for(&self, key: Option<u64>) {
        let h = self.header();
        fence(Ordering::SeqCst);
        h.release_seq.fetch_add(1, Ordering::SeqCst);
        if h.unqueued_sleepers.load(Ordering::SeqCst) > 0 {
            futex(&h.release_seq, libc::FUTEX_WAKE, i32::MAX as u32, None);
        }
        if h.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        loop {
            let mut best: Option<(u64, usize)> = None;
            let mut best_any: Option<(u64, usize)> = None;
            for (i, w) in self.active_waiters().iter().enumerate() {
                let t = w.ticket.load(Ordering::SeqCst);
                if t == 0 || t == CLAIMING || w.awake.load(Ordering::SeqCst) != 0 {
                    continue;
                }
                if best_any.is_none_or(|(b, _)| t < b) {
                    best_any = Some((t, i));
                }
                if key.is_some_and(|k| w.key.load(Ordering::Acquire) == k)
                    && best.is_none_or(|(b, _)| t < b)
                {
                    best = Some((t, i));
                }
            }
            let Some((_, i)) = best.or(best_any) else {
                return; // every waiter is awake and will look by itself
            };
            let w = &self.waiters()[i];
            if w.awake
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                w.wake.fetch_add(1, Ordering::SeqCst);
                futex(&w.wake, libc::FUTEX_WAKE, 1, None);
                return;
            }
        }
    }

    /// Joins the queue. `None` when the queue is full (the caller then waits without an order).
    pub fn enqueue(&self, pid: i32, key: u64) -> Option<WaiterTicket> {
        let h = self.header();
        let ticket = h.next_ticket.fetch_add(1, Ordering::AcqRel) + 1;
        for (index, w) in self.waiters().iter().enumerate() {
            // Claim the entry with a sentinel first, so no other process writes its key and PID
            // between ours and the ticket; readers ignore the sentinel.
            if w.ticket.load(Ordering::Acquire) == 0
                && w.ticket
                    .compare_exchange(0, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                w.key.store(key, Ordering::Release);
                w.pid.store(pid, Ordering::Release);
                w.awake.store(1, Ordering::SeqCst);
                h.waiter_high.fetch_max(index as u32 + 1, Ordering::AcqRel);
                w.ticket.store(ticket, Ordering::SeqCst);
                h.waiting.fetch_add(1, Ordering::SeqCst);
                h.clients_waited.fetch_add(1, Ordering::Relaxed);
                return Some(WaiterTicket { index, ticket });
            }
        }
        None
    }

    /// Leaves the queue. `took` says whether the waiter got a backend; if it did not, or a backend of
    /// its key is still free, the next waiter is woken.
    pub fn dequeue(&self, t: WaiterTicket, took: bool) {
        let w = &self.waiters()[t.index];
        let key = w.key.load(Ordering::Acquire);
        if w.ticket
            .compare_exchange(t.ticket, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.header().waiting.fetch_sub(1, Ordering::AcqRel);
            if !took || self.has_free_slot(key) {
                self.notify_release_for(Some(key));
            }
        }
    }

    fn has_free_slot(&self, key: u64) -> bool {
        self.used_slots()
            .any(|(_, s)| s.pool_key() == key && s.state() == SlotState::Free)
    }

    /// The part of the queue that has ever been used.
    fn active_waiters(&self) -> &[Waiter] {
        let high = (self.header().waiter_high.load(Ordering::Acquire) as usize).min(MAX_WAITERS);
        &self.waiters()[..high]
    }

    /// True when a client registered before `mine` (or anyone, when `mine` is `None`) waits for the
    /// same pool key: then this client must not take a backend ahead of it.
    pub fn has_older_waiter(&self, key: u64, mine: Option<WaiterTicket>) -> bool {
        if self.header().waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        let limit = mine.map(|t| t.ticket).unwrap_or(u64::MAX);
        self.active_waiters().iter().any(|w| {
            let t = w.ticket.load(Ordering::Acquire);
            t != 0 && t != CLAIMING && t < limit && w.key.load(Ordering::Acquire) == key
        })
    }

    /// Number of clients waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.header().waiting.load(Ordering::Acquire) as usize
    }

    /// Removes the entries of a process that died while waiting (main calls this on SIGCHLD).
    pub fn clear_waiters_of(&self, pid: i32) {
        for (index, w) in self.active_waiters().iter().enumerate() {
            let ticket = w.ticket.load(Ordering::Acquire);
            if ticket != 0 && ticket != CLAIMING && w.pid.load(Ordering::Acquire) == pid {
                self.dequeue(WaiterTicket { index, ticket }, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn queue_order_is_by_ticket_and_per_key() {
        let r = Region::create(1).unwrap();
        assert!(!r.has_older_waiter(7, None));
        let a = r.enqueue(1, 7).unwrap();
        let b = r.enqueue(2, 7).unwrap();
        let c = r.enqueue(3, 9).unwrap();
        assert!(!r.has_older_waiter(7, Some(a)));
        assert!(r.has_older_waiter(7, Some(b)));
        assert!(
            !r.has_older_waiter(9, Some(c)),
            "another key does not block"
        );
        assert!(
            r.has_older_waiter(7, None),
            "a newcomer queues behind waiters"
        );
        r.dequeue(a, true);
        assert!(!r.has_older_waiter(7, Some(b)));
        r.clear_waiters_of(2);
        assert!(!r.has_older_waiter(7, None));
        assert_eq!(r.waiting(), 1);
        r.dequeue(c, true);
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn futex_wait_times_out_and_wakes() {
        let r = Region::create(1).unwrap();
        let seen = r.release_seq();
        let t = Instant::now();
        r.wait_for_release(seen, Duration::from_millis(50));
        assert!(t.elapsed() >= Duration::from_millis(40));
        r.notify_release();
        let t = Instant::now();
        r.wait_for_release(seen, Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a changed word does not sleep"
        );
    }

    #[test]
    fn a_release_wakes_the_oldest_sleeper_of_its_key_only() {
        let r = Region::create(1).unwrap();
        let a = r.enqueue(1, 7).unwrap();
        let b = r.enqueue(2, 7).unwrap();
        let c = r.enqueue(3, 9).unwrap();
        let seen_a = r.prepare_to_sleep(a);
        let seen_b = r.prepare_to_sleep(b);
        let seen_c = r.prepare_to_sleep(c);
        r.notify_release_for(Some(9));
        let t = Instant::now();
        r.sleep(c, seen_c, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1), "key 9's waiter woken");
        r.notify_release_for(Some(7));
        let t = Instant::now();
        r.sleep(a, seen_a, Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the oldest of key 7 woken"
        );
        let t = Instant::now();
        r.sleep(b, seen_b, Duration::from_millis(50));
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "one release wakes one waiter"
        );
        // a leaves without a backend: the wake-up passes to b.
        let seen_b = r.prepare_to_sleep(b);
        r.dequeue(a, false);
        let t = Instant::now();
        r.sleep(b, seen_b, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1), "passed on to b");
    }

    #[test]
    fn a_release_in_another_process_wakes_a_sleeper() {
        let r = Region::create(1).unwrap();
        let _t = r.enqueue(std::process::id() as i32, 1).unwrap();
        let seen = r.release_seq();
        // SAFETY: the child only touches the shared mapping, sleeps, and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::thread::sleep(Duration::from_millis(100));
            r.notify_release();
            // SAFETY: async-signal-safe exit without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        let t = Instant::now();
        r.wait_for_release(seen, Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5));
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}
