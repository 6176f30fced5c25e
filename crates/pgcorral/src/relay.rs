//! The shared transaction relay: one process that relays every logged-in client of the transaction
//! pipeline, so that a transaction costs no process wake-ups beyond the relay's own.
//!
//! With a worker per client, every query, every result and every hand-over of a backend wakes a
//! process; on few cores those wake-ups, not the relaying, are most of the cost (`doc/performance.md`).
//! Here a worker still forks per client and logs it in, then hands the client's socket to the relay
//! over a SOCK_SEQPACKET channel (SCM_RIGHTS, with what the pipeline needs to know about the client)
//! and exits. The relay runs the same per-client state machine as a worker ([`Tx`]), driven by one
//! edge-triggered epoll over every client and every backend its clients hold, and never sleeps for
//! one client: a client that needs a backend when none is free is parked, in FIFO order, and stepped
//! again when a backend comes free (one of its own clients gives one back, or another process wakes
//! it through a pipe).
//!
//! Main forks the relay at start and again if it dies; slots it held are reclaimed like a worker's.

use crate::context::Context;
use crate::io::STOP_REQUESTED;
use crate::pipeline::transaction::{
    client_token, give_back_login, LoginBackend, RelayHooks, Shared, Tx, TxClient, TxEnd,
    FIRST_RELAY_TOKEN,
};
use crate::pool::{FdCache, PoolKey};
use crate::security::BackendCredential;
use crate::transfer;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use pgcorral_wire::{parse_startup, StartupRequest};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHANNEL: Token = Token(0);
const WAKE: Token = Token(1);

/// Largest hand-over record (a startup packet is at most 10,000 bytes; credentials and names add
/// little).
const MAX_RECORD: usize = 64 * 1024;

/// How often the relay looks at its queue of parked clients without being woken: a safety net for
/// backends freed by processes that do not wake it (main closing an idle backend, a reaped worker).
const PARKED_RECHECK: Duration = Duration::from_millis(100);

/// Looks (each after a yield) the relay makes for new events before it sleeps in epoll_wait. Under
/// load the relay then stays runnable, and the clients and backends that write to it do not have to
/// wake it: measured at 50 clients on 2 cores, pooler CPU 23-30 µs per transaction with 20 looks
/// against 29-33 µs with none (doc/performance.md). Idle, it costs 20 yields once per burst.
const RELAY_SPINS: u32 = 20;

static IS_RELAY: AtomicBool = AtomicBool::new(false);

/// Raises (or lowers) the relay's priority. A woken backend or client otherwise preempts the relay in
/// the middle of the batch of events one epoll_wait returned, and every transaction behind it waits.
/// Too high a priority is no better: the relay then drains its events at once and sleeps more often,
/// and every sleep is a wake-up its writers pay for. On 2 cores, 0, -20 and SCHED_FIFO measured worse
/// than -10; -5 and -15 could not be told from it (doc/performance.md).
fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority on this process (PRIO_PROCESS, who 0) with a plain integer; no memory is
    // passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, nice) } != 0 {
        log::warn!(
            "transaction relay: cannot set nice {nice} ({}); it runs at the default priority \
             (a negative transaction_relay_nice needs root or CAP_SYS_NICE)",
            io::Error::last_os_error()
        );
    }
}

/// Whether this process is the shared relay.
pub fn is_relay() -> bool {
    IS_RELAY.load(Ordering::Relaxed)
}

/// Hands a logged-in client to the shared relay. Gives the client back (with its login backend) when
/// there is no relay or the hand-over failed, for the worker to relay it itself.
pub fn hand_over(
    ctx: &Context,
    client: TxClient,
    login: Option<LoginBackend>,
    host: &str,
) -> Result<(), Box<(TxClient, Option<LoginBackend>)>> {
    let Some(channel) = ctx.relay.as_ref() else {
        return Err(Box::new((client, login)));
    };
    let client = match login {
        Some(login) => give_back_login(ctx, client, login),
        None => client,
    };
    let record = encode(&client, host);
    if record.len() > MAX_RECORD {
        return Err(Box::new((client, None)));
    }
    let h = ctx.region.header();
    h.relay_handed.fetch_add(1, Ordering::AcqRel);
    match transfer::send_record(channel.send.as_raw_fd(), &record, Some(client.fd)) {
        Ok(()) => Ok(()),
        Err(e) => {
            log::warn!("cannot hand the client to the transaction relay ({e}); relaying it here");
            decrement(&h.relay_handed);
            Err(Box::new((client, None)))
        }
    }
}

fn decrement(counter: &std::sync::atomic::AtomicU64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// A client of the relay left.
fn sub_client(ctx: &Context) {
    decrement(&ctx.region.header().relay_clients);
}

/// A hand-over record was taken from the channel (the client is admitted or refused next).
fn took_record(ctx: &Context) {
    decrement(&ctx.region.header().relay_handed);
}

// ---- the hand-over record ------------------------------------------------------------------------

const MAGIC: &[u8; 4] = b"PGR1";

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn encode(c: &TxClient, host: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&c.rule.map(|r| r as u32).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&c.client_key.0.to_be_bytes());
    out.extend_from_slice(&c.client_key.1.to_be_bytes());
    put_str(&mut out, c.key.user.as_bytes());
    put_str(&mut out, c.key.database.as_bytes());
    put_str(&mut out, c.key.options.as_bytes());
    // The startup packet without its length word, read back with the wire crate's parser.
    put_str(&mut out, &c.startup.encode()[4..]);
    match &c.credential {
        None => out.push(0),
        Some(BackendCredential::Password(p)) => {
            out.push(1);
            put_str(&mut out, p.as_bytes());
        }
        Some(BackendCredential::ScramKeys {
            client_key,
            server_key,
        }) => {
            out.push(2);
            out.extend_from_slice(client_key);
            out.extend_from_slice(server_key);
        }
        Some(BackendCredential::Md5Hash(h)) => {
            out.push(3);
            put_str(&mut out, h.as_bytes());
        }
    }
    put_str(&mut out, host.as_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    out.extend_from_slice(&now.to_be_bytes());
    out
}

/// A cursor over a record; every read fails cleanly on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
}

/// What the relay learns of a client besides the pipeline's [`TxClient`].
struct Arrival {
    client: TxClient,
    host: String,
    /// When the worker handed the client over (microseconds since the epoch).
    handed_at_us: u64,
}

fn decode(bytes: &[u8], fd: RawFd) -> Option<Arrival> {
    let mut r = Reader(bytes);
    if r.bytes(4)? != MAGIC {
        return None;
    }
    let rule = match r.u32()? {
        u32::MAX => None,
        n => Some(n as usize),
    };
    let client_key = (r.u32()? as i32, r.u32()? as i32);
    let user = r.string()?;
    let database = r.string()?;
    let options = r.string()?;
    let packet_len = r.u32()? as usize;
    let startup = match parse_startup(r.bytes(packet_len)?) {
        Ok(StartupRequest::Startup(m)) => m,
        _ => return None,
    };
    let credential = match r.bytes(1)?[0] {
        0 => None,
        1 => Some(BackendCredential::Password(r.string()?)),
        2 => Some(BackendCredential::ScramKeys {
            client_key: r.bytes(32)?.try_into().ok()?,
            server_key: r.bytes(32)?.try_into().ok()?,
        }),
        3 => Some(BackendCredential::Md5Hash(r.string()?)),
        _ => return None,
    };
    let host = r.string()?;
    let handed_at_us = r.u64()?;
    if !r.0.is_empty() {
        return None;
    }
    Some(Arrival {
        client: TxClient {
            fd,
            key: PoolKey::new(&user, &database, &options),
            rule,
            startup,
            client_key,
            credential,
        },
        host,
        handed_at_us,
    })
}

// ---- the relay process -----------------------------------------------------------------------------

/// One client of the relay.
struct Entry<'a> {
    tx: Tx<'a>,
    /// The client's socket (the Tx borrows its number).
    socket: OwnedFd,
    host: String,
    handed_at_us: u64,
    /// When the client was parked, while it waits for a backend.
    parked_since: Option<Instant>,
}

struct Relay<'a> {
    ctx: &'a Context,
    poll: Poll,
    shared: Rc<Shared>,
    clients: Vec<Option<Entry<'a>>>,
    free: Vec<usize>,
    queue: VecDeque<usize>,
    /// `releases` of the hooks when the queue was last looked at.
    seen_releases: u64,
    next_recheck: Instant,
    /// Empty looks (with a yield before each) before the relay sleeps in epoll_wait.
    spin: u32,
    /// Reading the channel failed: read it again on the next turn.
    channel_retry: bool,
    /// A successor took over the channel (SIGUSR2 after a reload).
    retiring: bool,
    /// Where hand-over records are received (allocated once).
    record_buf: Vec<u8>,
}

/// The relay's main loop; returns the process's exit code.
pub fn run(ctx: &Context) -> i32 {
    IS_RELAY.store(true, Ordering::Relaxed);
    crate::signals::install_relay();
    crate::title::set(
        ctx.config.main.update_process_title,
        "pgcorral: transaction relay",
    );
    let Some(channel) = ctx.relay.as_ref() else {
        return 1;
    };
    set_nice(ctx.config.main.transaction_relay_nice);
    let mut relay = match Relay::new(ctx, channel) {
        Ok(r) => r,
        Err(e) => {
            log::error!("transaction relay: cannot start its event loop: {e}");
            return 1;
        }
    };
    log::debug!("transaction relay started");
    let code = relay.serve(channel);
    relay.stop_all();
    code
}

impl<'a> Relay<'a> {
    fn new(ctx: &'a Context, channel: &crate::context::RelayChannel) -> io::Result<Relay<'a>> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&channel.recv.as_raw_fd()),
            CHANNEL,
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut SourceFd(&channel.wake_read.as_raw_fd()),
            WAKE,
            Interest::READABLE,
        )?;
        let shared = Rc::new(Shared {
            fds: RefCell::new(FdCache::default()),
            relay: Some(RelayHooks::new(poll.registry().try_clone()?)),
            reset_always: Default::default(),
        });
        Ok(Relay {
            ctx,
            poll,
            shared,
            clients: Vec::new(),
            free: Vec::new(),
            queue: VecDeque::new(),
            seen_releases: 0,
            next_recheck: Instant::now(),
            spin: RELAY_SPINS,
            channel_retry: false,
            retiring: false,
            record_buf: vec![0u8; MAX_RECORD],
        })
    }

    fn hooks(&self) -> &RelayHooks {
        self.shared.relay.as_ref().expect("the relay's hooks")
    }

    fn serve(&mut self, channel: &crate::context::RelayChannel) -> i32 {
        let mut events = Events::with_capacity(256);
        let mut ready: Vec<usize> = Vec::with_capacity(256);
        let mut spins_left = 0u32;
        loop {
            if STOP_REQUESTED.load(Ordering::Relaxed) {
                return 0;
            }
            if crate::signals::RETIRE_REQUESTED.load(Ordering::Relaxed) {
                if !self.retiring {
                    // A reload: main started a relay with the new configuration for new clients.
                    // This one keeps serving its clients, unchanged, and ends when they are gone.
                    self.retiring = true;
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&channel.recv.as_raw_fd()));
                    crate::title::set(
                        self.ctx.config.main.update_process_title,
                        "pgcorral: transaction relay (retiring)",
                    );
                    log::debug!("transaction relay retiring: new clients go to its successor");
                }
                if self.clients.iter().all(|c| c.is_none()) {
                    return 0;
                }
            }
            let mut timeout = if self.queue.is_empty() {
                Duration::from_secs(1)
            } else {
                self.next_recheck
                    .saturating_duration_since(Instant::now())
                    .min(self.earliest_deadline())
            };
            if spins_left > 0 {
                // Let the backends and clients just written to run, then look again without
                // sleeping: a relay that stays runnable under load is never woken by their next
                // message (a wake-up costs the writer more than the relay's look costs it).
                spins_left -= 1;
                let _ = nix::sched::sched_yield();
                timeout = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("transaction relay: poll failed: {e}");
                    return 1;
                }
                continue;
            }
            if !events.is_empty() {
                spins_left = self.spin;
            }
            let mut woken = false;
            ready.clear();
            for ev in events.iter() {
                match ev.token() {
                    CHANNEL => self.accept(channel, &mut ready),
                    WAKE => {
                        let mut buf = [0u8; 64];
                        while matches!(nix::unistd::read(channel.wake_read.as_raw_fd(), &mut buf), Ok(n) if n > 0)
                        {
                        }
                        woken = true;
                    }
                    Token(t) if t >= FIRST_RELAY_TOKEN => {
                        let n = (t - FIRST_RELAY_TOKEN) / 2;
                        let server = (t - FIRST_RELAY_TOKEN) % 2 == 1;
                        // A backend's events go to the client holding it, if any.
                        let index = if server {
                            match self.hooks().holder(n) {
                                Some(i) => i,
                                None => continue,
                            }
                        } else {
                            n
                        };
                        let Some(Some(entry)) = self.clients.get_mut(index) else {
                            continue;
                        };
                        let gone = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
                        let readable = ev.is_readable() || gone;
                        let writable = ev.is_writable() || gone;
                        if server {
                            entry.tx.server_ready(readable, writable);
                        } else {
                            entry.tx.client_ready(readable, writable);
                        }
                        ready.push(index);
                    }
                    _ => {}
                }
            }
            if self.channel_retry && !self.retiring {
                self.accept(channel, &mut ready);
            }
            ready.sort_unstable();
            ready.dedup();
            for &index in &ready {
                self.step(index);
            }
            let now = Instant::now();
            let released = self.hooks().releases.get() != self.seen_releases;
            if !self.queue.is_empty() && (released || woken || now >= self.next_recheck) {
                self.resume_parked();
            }
            self.expire_parked();
        }
    }

    /// Takes every client waiting in the channel. The channel is edge-triggered: it is read until
    /// EAGAIN, and after an error it is read again on the next turn of the loop.
    fn accept(&mut self, channel: &crate::context::RelayChannel, ready: &mut Vec<usize>) {
        self.channel_retry = false;
        let mut buf = std::mem::take(&mut self.record_buf);
        self.accept_records(channel, &mut buf, ready);
        self.record_buf = buf;
    }

    fn accept_records(
        &mut self,
        channel: &crate::context::RelayChannel,
        buf: &mut [u8],
        ready: &mut Vec<usize>,
    ) {
        loop {
            let (n, fd) = match transfer::recv_record(channel.recv.as_raw_fd(), buf) {
                Ok(r) => r,
                Err(transfer::TransferError::Io(nix::errno::Errno::EAGAIN)) => return,
                Err(transfer::TransferError::Io(nix::errno::Errno::EINTR)) => continue,
                Err(e) => {
                    // Most likely the record was taken and its socket lost (out of fds: the control
                    // data was cut): that client is gone.
                    log::warn!("transaction relay: reading the channel failed: {e}");
                    took_record(self.ctx);
                    self.channel_retry = true;
                    return;
                }
            };
            let Some(socket) = fd else {
                if n == 0 {
                    return; // every sender is gone (main is stopping)
                }
                log::warn!("transaction relay: a hand-over without a socket; ignored");
                took_record(self.ctx);
                continue;
            };
            took_record(self.ctx);
            let Some(arrival) = decode(&buf[..n], socket.as_raw_fd()) else {
                log::warn!("transaction relay: a malformed hand-over record; client closed");
                crate::security::send_fatal(
                    socket.as_raw_fd(),
                    "08006",
                    "pgcorral could not hand the connection to its transaction relay",
                );
                continue;
            };
            if let Some(index) = self.admit(arrival, socket) {
                ready.push(index);
            }
        }
    }

    fn admit(&mut self, arrival: Arrival, socket: OwnedFd) -> Option<usize> {
        let index = self.free.pop().unwrap_or_else(|| {
            self.clients.push(None);
            self.clients.len() - 1
        });
        let _ = crate::io::set_nonblocking(&socket);
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            client_token(index),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("transaction relay: cannot watch a client: {e}");
            self.free.push(index);
            return None;
        }
        self.ctx
            .region
            .header()
            .relay_clients
            .fetch_add(1, Ordering::AcqRel);
        let tx = Tx::new(self.ctx, arrival.client, self.shared.clone(), index);
        self.clients[index] = Some(Entry {
            tx,
            socket,
            host: arrival.host,
            handed_at_us: arrival.handed_at_us,
            parked_since: None,
        });
        Some(index)
    }

    /// Runs client `index` as far as it goes.
    fn step(&mut self, index: usize) {
        let Some(Some(entry)) = self.clients.get_mut(index) else {
            return;
        };
        let outcome = match entry.tx.step() {
            Ok(o) => o,
            Err(e) => {
                log::warn!("transaction relay failed for a client: {e}");
                Some(TxEnd::ServerGone)
            }
        };
        match outcome {
            None => {}
            Some(TxEnd::Parked) if entry.parked_since.is_none() => {
                entry.parked_since = Some(Instant::now());
                let key = entry.tx.key().hash;
                self.queue.push_back(index);
                self.hooks().park(key);
                let h = self.ctx.region.header();
                if h.relay_waiting.swap(1, Ordering::AcqRel) == 0 {
                    // A backend freed between the failed checkout and the flag woke nobody: look
                    // again once the flag is visible.
                    self.next_recheck = Instant::now();
                }
                h.clients_waited.fetch_add(1, Ordering::Relaxed);
            }
            Some(TxEnd::Parked) => {}
            Some(end) => self.end(index, end),
        }
    }

    /// Takes client `index` out of the queue of parked clients.
    fn unpark(&mut self, index: usize) {
        let Some(Some(entry)) = self.clients.get_mut(index) else {
            return;
        };
        if entry.parked_since.take().is_none() {
            return;
        }
        let key = entry.tx.key().hash;
        self.queue.retain(|&i| i != index);
        self.hooks().unpark(key);
        if self.queue.is_empty() {
            self.ctx
                .region
                .header()
                .relay_waiting
                .store(0, Ordering::Release);
        }
    }

    /// Steps parked clients, oldest first, while backends are free for them. Waiting is FIFO per pool
    /// key (user, database): once the oldest client of a key finds none, the younger ones of that key
    /// stay parked, while clients of other keys, whose pools may have room, still get their turn.
    fn resume_parked(&mut self) {
        self.seen_releases = self.hooks().releases.get();
        self.next_recheck = Instant::now() + PARKED_RECHECK;
        let mut blocked: Vec<u64> = Vec::new();
        let mut pos = 0;
        while pos < self.queue.len() {
            let index = self.queue[pos];
            let Some(Some(entry)) = self.clients.get_mut(index) else {
                self.queue.remove(pos);
                continue;
            };
            let key = entry.tx.key().hash;
            if blocked.contains(&key) {
                pos += 1;
                continue;
            }
            let hooks = self.shared.relay.as_ref().expect("hooks");
            hooks.resuming.set(true);
            let outcome = entry.tx.step();
            hooks.resuming.set(false);
            if matches!(outcome, Ok(Some(TxEnd::Parked))) {
                blocked.push(key); // none free for this key: its younger clients wait behind
                pos += 1;
                continue;
            }
            if let Some(since) = entry.parked_since {
                self.ctx
                    .region
                    .header()
                    .wait_time_us
                    .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            self.unpark(index); // removes queue[pos]: the next entry moves into pos
            match outcome {
                Ok(None) => {}
                Ok(Some(end)) => self.end(index, end),
                Err(e) => {
                    log::warn!("transaction relay failed for a client: {e}");
                    self.end(index, TxEnd::ServerGone);
                }
            }
        }
    }

    /// Time until the oldest parked client's blocking_timeout (the queue is in parking order).
    fn earliest_deadline(&self) -> Duration {
        let timeout = self.ctx.config.main.blocking_timeout;
        self.queue
            .front()
            .and_then(|&i| self.clients.get(i))
            .and_then(|e| e.as_ref())
            .and_then(|e| e.parked_since)
            .map(|since| (since + timeout).saturating_duration_since(Instant::now()))
            .unwrap_or(PARKED_RECHECK)
    }

    /// Fails the parked clients that waited `blocking_timeout` (the queue is in parking order).
    fn expire_parked(&mut self) {
        let timeout = self.ctx.config.main.blocking_timeout;
        while let Some(&index) = self.queue.front() {
            let expired = match self.clients.get(index) {
                Some(Some(e)) => e.parked_since.is_some_and(|s| s.elapsed() >= timeout),
                _ => {
                    self.queue.pop_front();
                    continue;
                }
            };
            if !expired {
                return;
            }
            self.unpark(index);
            if let Some(Some(entry)) = self.clients.get_mut(index) {
                entry.tx.fail(
                    "53300",
                    "no server connection became free within blocking_timeout",
                );
                self.ctx
                    .region
                    .header()
                    .wait_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                self.end(index, TxEnd::PoolFull);
            }
        }
    }

    /// Ends client `index`'s session: its backend is given back (or drained, or closed) and its
    /// socket closed.
    fn end(&mut self, index: usize, end: TxEnd) {
        self.unpark(index);
        let Some(mut entry) = self.clients.get_mut(index).and_then(|e| e.take()) else {
            return;
        };
        entry.tx.finish(end);
        let fd = entry.socket.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        // Closing a socket with unread input makes the kernel reset the connection, and a reset can
        // destroy the last ErrorResponse before the client reads it (a client parked past
        // blocking_timeout has its Bind, Execute and Sync still unread): send FIN after what was
        // written, and drop what the client sent.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
        let mut sink = [0u8; 4096];
        for _ in 0..64 {
            match nix::unistd::read(fd, &mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        log::debug!("transaction session ended: {end:?}");
        if self.ctx.config.main.log_disconnections {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            let key = entry.tx.key();
            crate::worker::log_disconnection(
                Duration::from_micros(now.saturating_sub(entry.handed_at_us)),
                &key.user,
                &key.database,
                &entry.host,
            );
        }
        drop(entry);
        self.free.push(index);
        sub_client(self.ctx);
    }

    /// On stop: every client gets 57P01 and its backend goes back or is closed.
    fn stop_all(&mut self) {
        for index in 0..self.clients.len() {
            if self.clients[index].is_some() {
                self.end(index, TxEnd::Stopped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcorral_wire::StartupMessage;

    fn client(credential: Option<BackendCredential>) -> TxClient {
        TxClient {
            fd: 7,
            key: PoolKey::new("alice", "shop", "-c x=1"),
            rule: Some(3),
            startup: StartupMessage {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("application_name".into(), "é app".into()),
                ],
            },
            client_key: (-5, 123456),
            credential,
        }
    }

    #[test]
    fn hand_over_records_round_trip() {
        for credential in [
            None,
            Some(BackendCredential::Password("s3cret".into())),
            Some(BackendCredential::Md5Hash("md5abc".into())),
            Some(BackendCredential::ScramKeys {
                client_key: [1; 32],
                server_key: [2; 32],
            }),
        ] {
            let c = client(credential);
            let bytes = encode(&c, "127.0.0.1");
            let a = decode(&bytes, 9).expect("decodes");
            assert_eq!(a.client.fd, 9);
            assert_eq!(a.client.key.user, "alice");
            assert_eq!(a.client.key.database, "shop");
            assert_eq!(a.client.key.options, "-c x=1");
            assert_eq!(a.client.key.hash, c.key.hash);
            assert_eq!(a.client.rule, Some(3));
            assert_eq!(a.client.startup, c.startup);
            assert_eq!(a.client.client_key, (-5, 123456));
            assert_eq!(a.host, "127.0.0.1");
            let same = match (&a.client.credential, &c.credential) {
                (None, None) => true,
                (Some(BackendCredential::Password(x)), Some(BackendCredential::Password(y))) => {
                    x == y
                }
                (Some(BackendCredential::Md5Hash(x)), Some(BackendCredential::Md5Hash(y))) => {
                    x == y
                }
                (
                    Some(BackendCredential::ScramKeys {
                        client_key: a1,
                        server_key: b1,
                    }),
                    Some(BackendCredential::ScramKeys {
                        client_key: a2,
                        server_key: b2,
                    }),
                ) => a1 == a2 && b1 == b2,
                _ => false,
            };
            assert!(same, "credential survives the record");
        }
    }

    #[test]
    fn short_or_padded_records_are_refused() {
        let bytes = encode(&client(None), "h");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 1).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 1).is_none());
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(decode(&bad, 1).is_none());
    }
}
