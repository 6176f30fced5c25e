//! Waiting for a slot: a FIFO queue of tickets in the region, and a futex to sleep on.
//!
//! A client that finds no usable backend takes a ticket (a number from a shared counter) and registers
//! it with its PID and pool key. It may try to take a backend only when no older ticket with the same
//! pool key is registered, so clients of one (user, database) are served in arrival order. Between
//! tries it sleeps on the futex word `release_seq`, which is bumped and woken whenever a backend is
//! returned or closed: no polling, no back-off. A waiter that gives up (timeout) or dies (main clears
//! it on SIGCHLD) leaves the queue, which wakes the others.

use crate::region::Region;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
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
    _pad: i32,
}

/// A registered place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaiterTicket {
    index: usize,
    ticket: u64,
}

fn futex(
    word: &std::sync::atomic::AtomicU32,
    op: libc::c_int,
    val: u32,
    timeout: Option<Duration>,
) {
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
    /// The futex word's current value: read it before looking for a backend, then pass it to
    /// [`Region::wait_for_release`] so a release in between is not missed.
    pub fn release_seq(&self) -> u32 {
        self.header().release_seq.load(Ordering::SeqCst)
    }

    /// Sleeps until a backend is released (the word moves past `seen`) or `timeout` passes.
    pub fn wait_for_release(&self, seen: u32, timeout: Duration) {
        futex(
            &self.header().release_seq,
            libc::FUTEX_WAIT,
            seen,
            Some(timeout),
        );
    }

    /// Wakes every waiting client: a backend became available or the queue changed.
    pub fn notify_release(&self) {
        let h = self.header();
        // SeqCst on both sides (here and in enqueue): a waiter that registered must either see this
        // bump or be seen as waiting, never neither (the store-buffer pattern).
        h.release_seq.fetch_add(1, Ordering::SeqCst);
        if h.waiting.load(Ordering::SeqCst) > 0 {
            futex(&h.release_seq, libc::FUTEX_WAKE, i32::MAX as u32, None);
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
                w.ticket.store(ticket, Ordering::Release);
                h.waiting.fetch_add(1, Ordering::SeqCst);
                h.clients_waited.fetch_add(1, Ordering::Relaxed);
                return Some(WaiterTicket { index, ticket });
            }
        }
        None
    }

    /// Leaves the queue and wakes the others (the next in line may now go).
    pub fn dequeue(&self, t: WaiterTicket) {
        let w = &self.waiters()[t.index];
        if w.ticket
            .compare_exchange(t.ticket, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.header().waiting.fetch_sub(1, Ordering::AcqRel);
            self.notify_release();
        }
    }

    /// True when a client registered before `mine` (or anyone, when `mine` is `None`) waits for the
    /// same pool key: then this client must not take a backend ahead of it.
    pub fn has_older_waiter(&self, key: u64, mine: Option<WaiterTicket>) -> bool {
        if self.header().waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        let limit = mine.map(|t| t.ticket).unwrap_or(u64::MAX);
        self.waiters().iter().any(|w| {
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
        for (index, w) in self.waiters().iter().enumerate() {
            let ticket = w.ticket.load(Ordering::Acquire);
            if ticket != 0 && ticket != CLAIMING && w.pid.load(Ordering::Acquire) == pid {
                self.dequeue(WaiterTicket { index, ticket });
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
        r.dequeue(a);
        assert!(!r.has_older_waiter(7, Some(b)));
        r.clear_waiters_of(2);
        assert!(!r.has_older_waiter(7, None));
        assert_eq!(r.waiting(), 1);
        r.dequeue(c);
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
