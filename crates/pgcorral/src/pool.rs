//! Getting, returning and killing backend connections (pgagroal's pool.c).
//!
//! Checkout order: a FREE slot of the same pool key that the client may reuse (CAS FREE→IN_USE); else a
//! new backend within `max_connections` and the limit rule's `max_size` (CAS NOTINIT→INIT); else, when
//! a limit is reached but an idle backend of another kind holds the room, that backend is closed to make
//! room; else the client queues (FIFO per pool key) and sleeps on the region's futex until a backend is
//! released or `blocking_timeout` passes.

use crate::context::Context;
use crate::transfer::MainLink;
use pgcorral_shmem::{now_secs, SlotData, SlotState};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why no backend could be had.
#[derive(Debug, Error)]
pub enum PoolError {
    #[error("connection pool is full")]
    Full,
    #[error("pgcorral is shutting down")]
    ShuttingDown,
    #[error("cannot get the pooled connection's socket from the main process: {0}")]
    Transfer(#[from] crate::transfer::TransferError),
}

/// What makes two clients able to share a backend.
#[derive(Debug, Clone)]
pub struct PoolKey {
    pub user: String,
    pub database: String,
    pub options: String,
    pub hash: u64,
}

impl PoolKey {
    pub fn new(user: &str, database: &str, options: &str) -> PoolKey {
        // FNV-1a: a cheap filter; equality of the strings is checked after taking a slot.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [
            user.as_bytes(),
            b"\0",
            database.as_bytes(),
            b"\0",
            options.as_bytes(),
        ] {
            for &b in part {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        PoolKey {
            user: user.to_string(),
            database: database.to_string(),
            options: options.to_string(),
            hash: h.max(1),
        }
    }

    fn matches(&self, d: &SlotData) -> bool {
        d.user.get() == self.user.as_bytes()
            && d.database.get() == self.database.as_bytes()
            && d.options.get() == self.options.as_bytes()
    }
}

/// A backend a worker holds.
pub struct Lease {
    pub slot: usize,
    pub generation: u32,
    /// True when this worker opened the backend (main does not have it yet).
    pub fresh: bool,
    /// The backend socket (None for a fresh lease until the worker connects).
    pub fd: Option<OwnedFd>,
}

/// How a checkout went.
pub struct Checkout {
    pub lease: Lease,
    /// How long the client waited in the queue.
    pub waited: Duration,
}

/// Backend sockets a worker keeps between its transactions, by slot and generation: a backend this
/// worker used before needs no new transfer from main when it comes back to this worker. A copy whose
/// slot got a new backend is stale (main shut the old socket down) and is closed when next looked at.
#[derive(Default)]
pub struct FdCache {
    fds: Vec<Option<(u32, OwnedFd)>>,
}

impl FdCache {
    /// The kept socket of `slot` if it belongs to `generation`.
    pub fn take(&mut self, slot: usize, generation: u32) -> Option<OwnedFd> {
        let entry = self.fds.get_mut(slot)?;
        match entry.take() {
            Some((g, fd)) if g == generation => Some(fd),
            _ => None, // stale: dropped (closed) here
        }
    }

    /// Keeps `fd` for `slot`.
    pub fn put(&mut self, slot: usize, generation: u32, fd: OwnedFd) {
        if self.fds.len() <= slot {
            self.fds.resize_with(slot + 1, || None);
        }
        self.fds[slot] = Some((generation, fd));
    }
}

/// Looks for a backend for `key`. `reusable` says whether the client may be served by a pooled backend
/// (`None`: never, it needs a fresh one).
pub fn checkout(
    ctx: &Context,
    key: &PoolKey,
    rule: Option<usize>,
    reusable: Option<&dyn Fn(&SlotData) -> bool>,
    timeout: Duration,
    mut fds: Option<&mut FdCache>,
) -> Result<Checkout, PoolError> {
    let region = &ctx.region;
    let me = crate::io::my_pid();
    let started = Instant::now();
    let deadline = started + timeout;
    let max_connections = ctx.config.main.max_connections;
    let rule_limit = rule.map(|r| (r, ctx.config.limits[r].max_size));
    let mut ticket = None;
    let result = loop {
        let seen = match ticket {
            Some(t) => region.prepare_to_sleep(t),
            None => region.release_seq(),
        };
        if region
            .header()
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
            != 0
            || crate::io::STOP_REQUESTED.load(std::sync::atomic::Ordering::Relaxed)
        {
            break Err(PoolError::ShuttingDown);
        }
        if !region.has_older_waiter(key.hash, ticket) {
            if let Some(reusable) = reusable {
                if let Some(lease) = take_free(ctx, key, reusable, me, fds.as_deref_mut())? {
                    break Ok(lease);
                }
            }
            if region.reserve(max_connections, rule_limit) {
                match region.claim_empty_slot(me, rule, key.hash) {
                    Some(slot) => {
                        let s = region.slot(slot);
                        s.set_start_time(now_secs());
                        s.set_last_use(now_secs());
                        region
                            .header()
                            .backends_created
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break Ok(Lease {
                            slot,
                            generation: s.generation(),
                            fresh: true,
                            fd: None,
                        });
                    }
                    None => region.unreserve(rule),
                }
            }
            if evict_idle(ctx, key, rule, reusable, me) {
                continue;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            // A zero timeout is a look, not a wait: it times nothing out.
            if !timeout.is_zero() {
                region
                    .header()
                    .wait_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            break Err(PoolError::Full);
        }
        if ticket.is_none() {
            ticket = region.enqueue(me, key.hash);
            if ticket.is_some() {
                continue; // look once more before sleeping: the queue changed nothing yet
            }
        }
        // The 1 s cap is only a safety net: releases wake waiters directly.
        let nap = (deadline - now).min(Duration::from_secs(1));
        match ticket {
            Some(t) => region.sleep(t, seen, nap),
            None => region.wait_for_release(seen, nap),
        }
    };
    if let Some(t) = ticket {
        region.dequeue(t, result.is_ok());
    }
    let waited = started.elapsed();
    let h = region.header();
    if ticket.is_some() {
        h.wait_time_us.fetch_add(
            waited.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    } else if result.is_ok() {
        h.checkouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    result.map(|lease| Checkout { lease, waited })
}

fn take_free(
    ctx: &Context,
    key: &PoolKey,
    reusable: &dyn Fn(&SlotData) -> bool,
    me: i32,
    mut fds: Option<&mut FdCache>,
) -> Result<Option<Lease>, PoolError> {
    let region = &ctx.region;
    for (i, slot) in region.used_slots() {
        if slot.pool_key() != key.hash || slot.state() != SlotState::Free {
            continue;
        }
        if !slot.transition(SlotState::Free, SlotState::InUse) {
            continue;
        }
        let generation = slot.generation();
        let kept = fds.as_deref_mut().and_then(|c| c.take(i, generation));
        // The slot may have been killed and re-created for someone else between the look and the CAS:
        // check what it holds now that it is ours.
        if !region
            .slot_data(i)
            .with_data(|d| key.matches(d) && reusable(d))
        {
            slot.transition(SlotState::InUse, SlotState::Free);
            region.notify_release_for(Some(key.hash));
            if let Some(fd) = kept {
                if let Some(c) = fds.as_deref_mut() {
                    c.put(i, generation, fd);
                }
            }
            continue;
        }
        slot.set_owner(me);
        let now = now_secs();
        let idle_for = now - slot.last_use();
        slot.set_last_use(now);
        let fd = match kept {
            Some(fd) => fd,
            None => match ctx.inherited_fd(i, generation) {
                // SAFETY (borrow_raw): the fd was open in main at fork, so it is open here under the same
                // number, and this process never closes that number.
                // A copy of the inherited fd: the inherited number stays open, so a second checkout of the
                // same slot in this process (auth_query, then the client) still finds it valid.
                Some(raw) => match unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned() {
                    Ok(fd) => fd,
                    Err(e) => {
                        log::warn!("slot {i}: cannot duplicate the inherited socket: {e}");
                        slot.transition(SlotState::InUse, SlotState::Free);
                        region.notify_release_for(Some(key.hash));
                        continue;
                    }
                },
                None => {
                    match MainLink::connect(&ctx.management_path).and_then(|l| l.get(i, generation))
                    {
                        Ok(fd) => fd,
                        Err(e) => {
                            // Main lacks the socket: the backend cannot be used; close the slot.
                            log::warn!("slot {i}: {e}; closing it");
                            let _ = MainLink::connect(&ctx.management_path)
                                .and_then(|l| l.kill(i, generation));
                            region.release_slot(i, SlotState::InUse);
                            continue;
                        }
                    }
                }
            },
        };
        // A backend idle for a while may have been terminated (pg_terminate_backend,
        // idle_session_timeout, a server restart) since main last looked: a client must not get it.
        if idle_for >= 1 && !idle_backend_alive(&fd) {
            log::info!("slot {i}: the pooled backend is gone; closing it");
            kill(
                ctx,
                Lease {
                    slot: i,
                    generation,
                    fresh: false,
                    fd: Some(fd),
                },
            );
            continue;
        }
        return Ok(Some(Lease {
            slot: i,
            generation,
            fresh: false,
            fd: Some(fd),
        }));
    }
    Ok(None)
}

/// Whether an idle backend's socket is still a usable connection: open, and with nothing unread (an
/// idle backend only speaks to say it is going away, such as FATAL 57P01).
fn idle_backend_alive(fd: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut byte,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Closes one idle backend that holds room this client needs: when the global limit is reached any FREE
/// backend this client cannot reuse qualifies; when only the rule's limit is, one of the same rule.
fn evict_idle(
    ctx: &Context,
    key: &PoolKey,
    rule: Option<usize>,
    reusable: Option<&dyn Fn(&SlotData) -> bool>,
    me: i32,
) -> bool {
    let region = &ctx.region;
    let global_full = region.active() >= ctx.config.main.max_connections;
    // Closing another rule's backend only helps when this client's own rule still has room.
    let rule_has_room = rule.is_none_or(|r| region.rule_count(r) < ctx.config.limits[r].max_size);
    for (i, slot) in region.used_slots() {
        if slot.state() != SlotState::Free {
            continue;
        }
        let same_rule = rule.is_some() && slot.rule() == rule;
        if !(same_rule || (global_full && rule_has_room)) {
            continue;
        }
        let usable = slot.pool_key() == key.hash
            && reusable.is_some_and(|r| region.slot_data(i).with_data(|d| key.matches(d) && r(d)));
        if usable {
            continue;
        }
        if !slot.transition(SlotState::Free, SlotState::Remove) {
            continue;
        }
        slot.set_owner(me);
        let generation = slot.generation();
        log::debug!("slot {i}: closing an idle backend to make room");
        if let Err(e) = MainLink::connect(&ctx.management_path).and_then(|l| l.kill(i, generation))
        {
            log::warn!("slot {i}: main did not confirm closing the backend: {e}");
        }
        region.release_slot(i, SlotState::Remove);
        return true;
    }
    false
}

/// Gives a backend back to the pool. The caller has reset it.
pub fn give_back(ctx: &Context, lease: Lease) {
    drop(give_back_keeping(ctx, lease));
}

/// Gives a backend back to the pool and returns this worker's copy of its socket (with the slot and
/// generation) for an [`FdCache`], when the slot went back to FREE.
pub fn give_back_keeping(ctx: &Context, mut lease: Lease) -> Option<(usize, u32, OwnedFd)> {
    let region = &ctx.region;
    let slot = region.slot(lease.slot);
    if lease.fresh {
        let Some(fd) = lease.fd.as_ref() else {
            kill(ctx, lease);
            return None;
        };
        // Main must hold the socket before the slot can be FREE.
        if let Err(e) = MainLink::connect(&ctx.management_path)
            .and_then(|l| l.transfer(lease.slot, lease.generation, fd.as_raw_fd()))
        {
            log::warn!(
                "slot {}: cannot hand the backend to main: {e}; closing it",
                lease.slot
            );
            lease.fresh = true;
            kill(ctx, lease);
            return None;
        }
    }
    slot.set_client_key(0, 0);
    if !wait_for_cancels(ctx, lease.slot) {
        log::warn!(
            "slot {}: a cancel request is still being forwarded; closing the backend rather than \
             risk it reaching the next client",
            lease.slot
        );
        lease.fresh = false; // main holds the socket by now
        kill(ctx, lease);
        return None;
    }
    slot.set_last_use(now_secs());
    slot.set_owner(0);
    if slot.transition(SlotState::InUse, SlotState::Free) {
        region.notify_release_for(Some(slot.pool_key()));
        ctx.wake_relay();
        lease.fd.take().map(|fd| (lease.slot, lease.generation, fd))
    } else {
        // Someone marked it (flush): it must not be reused.
        let state = slot.state();
        lease.fresh = false;
        slot.set_owner(crate::io::my_pid());
        kill_in_state(ctx, lease, state);
        None
    }
}

/// A CancelRequest being forwarded to this backend must reach PostgreSQL before the backend may serve
/// another client: PostgreSQL ignores a cancel that arrives while the backend is idle, never one that
/// arrives during the next client's query. The client key was cleared first, so no new forwarding
/// starts; this waits (briefly: a cancel is one local connection) for those already under way.
fn wait_for_cancels(ctx: &Context, slot: usize) -> bool {
    let stats = ctx.region.slot_stats(slot);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if stats
            .cancels_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ends a backend: Terminate, close every copy, slot back to NOTINIT.
pub fn kill(ctx: &Context, lease: Lease) {
    let state = ctx.region.slot(lease.slot).state();
    kill_in_state(ctx, lease, state)
}

fn kill_in_state(ctx: &Context, lease: Lease, state: SlotState) {
    if let Some(fd) = lease.fd.as_ref() {
        let mut buf = Vec::with_capacity(5);
        pgcorral_wire::messages::terminate(&mut buf);
        // Best effort: the backend may be gone already.
        let _ = crate::io::write_all(
            fd.as_raw_fd(),
            &buf,
            Instant::now() + Duration::from_millis(100),
        );
        let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    if !lease.fresh {
        if let Err(e) = MainLink::connect(&ctx.management_path)
            .and_then(|l| l.kill(lease.slot, lease.generation))
        {
            log::warn!(
                "slot {}: main did not confirm closing the backend: {e}",
                lease.slot
            );
        }
    }
    drop(lease.fd);
    ctx.region.release_slot(lease.slot, state);
    ctx.wake_relay();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn idle_backend_alive_sees_closed_and_chatty_peers() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fd = OwnedFd::from(ours);
        assert!(idle_backend_alive(&fd), "a quiet open peer is alive");
        theirs.write_all(b"E").unwrap();
        assert!(
            !idle_backend_alive(&fd),
            "an idle backend that speaks is going away (FATAL 57P01)"
        );
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = OwnedFd::from(ours);
        drop(theirs);
        assert!(!idle_backend_alive(&fd), "a closed peer is gone");
    }
}
