//! The main process: one single-threaded mio loop over the client listeners, the management socket
//! and the signal pipe. It forks a worker per client, keeps every pooled backend socket, and reclaims
//! what a dead worker held. It never waits on a client or a backend.

use crate::context::Context;
use crate::signals;
use crate::transfer::{decode, recv_record, send_record, Request};
use crate::worker;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use pgcorral_shmem::SlotState;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SIGNAL: Token = Token(0);
const MANAGEMENT: Token = Token(1);
const CONTROL: Token = Token(2);
const FIRST_LISTENER: usize = 3;
const FIRST_MANAGEMENT_CONN: usize = 1000;
/// Tokens of control connections: a range of their own, far from the transfer connections'.
const FIRST_CONTROL_CONN: usize = 1 << 40;

/// A socket clients connect to.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// Remote management (`management = PORT`).
    Remote(TcpListener),
}

impl Listener {
    fn raw(&self) -> RawFd {
        match self {
            Listener::Tcp(l) | Listener::Remote(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

/// Files main removes when it stops.
pub struct Cleanup {
    pub pidfile: Option<PathBuf>,
    pub management_socket: PathBuf,
    pub control_socket: PathBuf,
}

pub struct Daemon {
    pub(crate) ctx: Context,
    pub(crate) files: crate::management::Files,
    control: UnixListener,
    control_conns: HashMap<Token, crate::management::ControlConn>,
    next_control_token: usize,
    /// Children that are not client workers (prefill, cancel jobs).
    helpers: HashSet<i32>,
    graceful_deadline: Option<Instant>,
    poll: Poll,
    listeners: Vec<Listener>,
    management: OwnedFd,
    management_conns: HashMap<Token, OwnedFd>,
    next_conn_token: usize,
    signal_pipe: (OwnedFd, OwnedFd),
    workers: HashSet<i32>,
    /// The shared transaction relay (`transaction_relay = shared`), while it runs.
    relay: Option<i32>,
    /// Relays replaced after a reload, serving their last clients with the old configuration.
    retiring_relays: HashSet<i32>,
    stopping: Option<Instant>,
    cleanup: Cleanup,
    /// The running prefill child, if any (one at a time).
    prefill: Option<i32>,
    /// Held slots whose owner was not a live child at the last maintenance: (slot, generation, state).
    orphans: HashSet<(usize, u32, i32)>,
    next_maintenance: Instant,
}

/// How often main checks idle backends and the prefill targets.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(2);

/// How long workers get to finish after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Daemon {
    pub fn new(
        ctx: Context,
        files: crate::management::Files,
        listeners: Vec<Listener>,
        management: OwnedFd,
        control: UnixListener,
        signal_pipe: (OwnedFd, OwnedFd),
        cleanup: Cleanup,
    ) -> io::Result<Daemon> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&signal_pipe.0.as_raw_fd()),
            SIGNAL,
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut SourceFd(&management.as_raw_fd()),
            MANAGEMENT,
            Interest::READABLE,
        )?;
        for (i, l) in listeners.iter().enumerate() {
            poll.registry().register(
                &mut SourceFd(&l.raw()),
                Token(FIRST_LISTENER + i),
                Interest::READABLE,
            )?;
        }
        poll.registry().register(
            &mut SourceFd(&control.as_raw_fd()),
            CONTROL,
            Interest::READABLE,
        )?;
        Ok(Daemon {
            ctx,
            files,
            control,
            control_conns: HashMap::new(),
            next_control_token: FIRST_CONTROL_CONN,
            helpers: HashSet::new(),
            graceful_deadline: None,
            poll,
            listeners,
            management,
            management_conns: HashMap::new(),
            next_conn_token: FIRST_MANAGEMENT_CONN,
            signal_pipe,
            workers: HashSet::new(),
            relay: None,
            retiring_relays: HashSet::new(),
            stopping: None,
            cleanup,
            prefill: None,
            orphans: HashSet::new(),
            next_maintenance: Instant::now() + MAINTENANCE_INTERVAL,
        })
    }

    /// Runs until a stop signal; returns the exit code.
    pub fn run(mut self) -> i32 {
        let mut events = Events::with_capacity(64);
        self.spawn_relay();
        if !crate::prefill::targets(&self.ctx, true).is_empty() {
            self.prefill = self.run_in_child("prefill", |ctx| crate::prefill::run(ctx, true));
        }
        loop {
            let timeout = match self.stopping {
                Some(_) => Duration::from_millis(100),
                None => self
                    .next_maintenance
                    .saturating_duration_since(Instant::now()),
            };
            let timeout = Some(timeout);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => self.on_signals(),
                    MANAGEMENT => self.accept_management(),
                    CONTROL => self.accept_control(),
                    Token(t) if t >= FIRST_CONTROL_CONN => self.serve_control(Token(t)),
                    Token(t) if t >= FIRST_MANAGEMENT_CONN => self.serve_management(Token(t)),
                    Token(t) => self.accept_clients(t - FIRST_LISTENER),
                }
            }
            if self.stopping.is_none() && self.ctx.region.gracefully() {
                if self.client_count() == 0 {
                    log::info!("graceful shutdown: the last client left");
                    self.begin_stop();
                } else if self.graceful_deadline.is_some_and(|d| Instant::now() >= d) {
                    log::info!(
                        "graceful shutdown timed out with {} client(s): stopping now",
                        self.client_count()
                    );
                    self.begin_stop();
                }
            }
            self.expire_control();
            if self.stopping.is_none() && Instant::now() >= self.next_maintenance {
                self.maintenance();
                self.next_maintenance = Instant::now() + MAINTENANCE_INTERVAL;
            }
            if let Some(deadline) = self.stopping {
                if self.workers.is_empty()
                    && self.helpers.is_empty()
                    && self.relay.is_none()
                    && self.retiring_relays.is_empty()
                {
                    break;
                }
                if Instant::now() >= deadline {
                    self.signal_children(Signal::SIGKILL);
                    self.reap(true);
                    break;
                }
            }
        }
        self.finish();
        0
    }

    fn on_signals(&mut self) {
        for sig in signals::drain(self.signal_pipe.0.as_raw_fd()) {
            match Signal::try_from(sig as i32) {
                Ok(Signal::SIGCHLD) => self.reap(false),
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) | Ok(Signal::SIGALRM) => self.begin_stop(),
                Ok(Signal::SIGTRAP) => self.begin_graceful(None),
                Ok(Signal::SIGHUP) => match self.reload() {
                    Ok((warnings, _)) => {
                        for w in warnings {
                            log::warn!("{w}");
                        }
                    }
                    Err(crate::management::ReloadError::Restart(keys)) => log::warn!(
                        "configuration reload denied: restart required for {}; running state preserved",
                        keys.join(", ")
                    ),
                    Err(crate::management::ReloadError::Invalid(e)) => {
                        log::warn!("configuration reload denied: {e}; running state preserved")
                    }
                },
                Ok(Signal::SIGUSR1) => crate::logging::reopen(),
                Ok(Signal::SIGABRT) => {
                    let status = self.control(br#"{"version":1,"command":"status","args":{"details":true}}"#);
                    log::error!("SIGABRT: pool status before abort: {status}");
                    crate::signals::abort_now();
                }
                _ => {}
            }
        }
    }

    /// Refuses new clients and stops when the last connected one leaves (or at `timeout`).
    pub(crate) fn begin_graceful(&mut self, timeout: Option<Duration>) {
        if self.stopping.is_some() {
            return;
        }
        log::info!(
            "graceful shutdown: refusing new clients, {} connected",
            self.client_count()
        );
        self.ctx.region.set_gracefully(true);
        self.graceful_deadline = timeout.map(|t| Instant::now() + t);
    }

    /// Undoes a graceful shutdown that has not finished.
    pub(crate) fn cancel_graceful(&mut self) {
        if self.ctx.region.gracefully() {
            log::info!("graceful shutdown cancelled");
        }
        self.ctx.region.set_gracefully(false);
        self.graceful_deadline = None;
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Connected clients: workers, and the clients the shared transaction relay serves.
    pub(crate) fn client_count(&self) -> usize {
        let h = self.ctx.region.header();
        let relayed =
            h.relay_clients.load(Ordering::Acquire) + h.relay_handed.load(Ordering::Acquire);
        self.workers.len() + relayed as usize
    }

    pub(crate) fn is_client(&self, pid: i32) -> bool {
        self.workers.contains(&pid)
    }

    pub(crate) fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        log::info!("shutting down: {} client(s) connected", self.client_count());
        crate::notify::notify("STOPPING=1");
        self.stopping = Some(Instant::now() + STOP_GRACE);
        self.ctx
            .region
            .header()
            .shutting_down
            .store(1, Ordering::Release);
        for l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.raw()));
            if let Listener::Unix(_, path) = &l {
                let _ = std::fs::remove_file(path);
            }
        }
        self.signal_children(Signal::SIGTERM);
        // Waiting clients sleep on the futex: wake them so they see the flag.
        self.ctx.region.notify_release();
    }

    fn accept_clients(&mut self, index: usize) {
        loop {
            let accepted = match self.listeners.get(index) {
                Some(Listener::Tcp(l)) => l.accept().map(|(s, a)| {
                    let _ = s.set_nodelay(self.ctx.config.main.nodelay);
                    if self.ctx.config.main.keep_alive {
                        let _ = nix::sys::socket::setsockopt(
                            &s,
                            nix::sys::socket::sockopt::KeepAlive,
                            &true,
                        );
                    }
                    (OwnedFd::from(s), Some(a.ip()))
                }),
                Some(Listener::Unix(l, _)) => l.accept().map(|(s, _)| (OwnedFd::from(s), None)),
                Some(Listener::Remote(l)) => match l.accept() {
                    Ok((s, a)) => {
                        let peer = Some(a.ip());
                        self.run_in_child("remote management", |ctx| {
                            std::process::exit(crate::remote::serve(ctx, OwnedFd::from(s), peer))
                        });
                        continue;
                    }
                    Err(e) => Err(e),
                },
                None => return,
            };
            match accepted {
                Ok((fd, peer)) => self.spawn_worker(fd, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// The fds only main may hold: closed in a worker right after fork.
    fn main_only_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![
            self.poll.as_raw_fd(),
            self.signal_pipe.0.as_raw_fd(),
            self.signal_pipe.1.as_raw_fd(),
            self.management.as_raw_fd(),
            self.control.as_raw_fd(),
        ];
        fds.extend(self.listeners.iter().map(Listener::raw));
        fds.extend(self.management_conns.values().map(|c| c.as_raw_fd()));
        fds.extend(self.control_conns.values().map(|c| c.stream.as_raw_fd()));
        fds
    }

    /// Forks a child of main: the child closes main's fds, gets the worker's signal handlers, runs
    /// `body` and exits with its code; the parent gets the pid. Signals stay blocked across the fork
    /// until the child has its own handlers: a SIGTERM landing in between would otherwise run main's
    /// handler in the child and be lost.
    fn fork_child(&mut self, body: impl FnOnce(&Context) -> i32) -> nix::Result<i32> {
        let blocked = signals::block_all();
        // SAFETY: main is single-threaded (no other thread can hold a lock the child would inherit);
        // the child closes main's fds, runs `body` and exits without returning into main's loop.
        let forked = unsafe { nix::unistd::fork() };
        match forked {
            Ok(ForkResult::Child) => {
                crate::io::refresh_pid();
                for fd in self.main_only_fds() {
                    // SAFETY: these fds belong to main's objects, which the child never uses or drops.
                    unsafe { libc::close(fd) };
                }
                signals::install_worker();
                signals::restore(&blocked);
                std::process::exit(body(&self.ctx));
            }
            Ok(ForkResult::Parent { child }) => {
                signals::restore(&blocked);
                Ok(child.as_raw())
            }
            Err(e) => {
                signals::restore(&blocked);
                Err(e)
            }
        }
    }

    /// Sends `sig` to every child: workers, helpers and relays.
    fn signal_children(&self, sig: Signal) {
        let relays = self.relay.iter().chain(&self.retiring_relays);
        for &pid in self.workers.iter().chain(&self.helpers).chain(relays) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Starts the shared transaction relay, when the configuration has one.
    fn spawn_relay(&mut self) {
        if self.ctx.relay.is_none() || self.relay.is_some() || self.stopping.is_some() {
            return;
        }
        match self.fork_child(crate::relay::run) {
            Ok(pid) => {
                log::debug!("transaction relay started as process {pid}");
                self.relay = Some(pid);
            }
            Err(e) => log::error!("cannot fork the transaction relay: {e}"),
        }
    }

    /// After a configuration change: new clients go to a new relay forked with the new configuration,
    /// while the old one serves its connected clients unchanged and ends when they are gone (connected
    /// clients keep their configuration, as workers do).
    pub(crate) fn replace_relay(&mut self) {
        let Some(old) = self.relay.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(old), Signal::SIGUSR2);
        self.retiring_relays.insert(old);
        self.spawn_relay();
    }

    fn spawn_worker(&mut self, client: OwnedFd, peer: Option<IpAddr>) {
        // The socket stays here unless the child takes it: a failed fork must still answer the client.
        let mut client = Some(client);
        let forked = self.fork_child(|ctx| {
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            match client.take() {
                Some(c) => worker::run(ctx, c, peer),
                None => 1,
            }
        });
        match (forked, client) {
            (Ok(pid), _) => {
                self.workers.insert(pid);
            }
            (Err(e), Some(c)) => {
                log::error!("fork failed: {e}");
                crate::security::send_fatal(
                    c.as_raw_fd(),
                    "53300",
                    "could not fork a new process for the connection",
                );
            }
            (Err(e), None) => log::error!("fork failed: {e}"),
        }
    }

    /// Periodic work: close idle backends the server has closed (they would fail the next client), and
    /// start a prefill child when a rule is below its MIN_SIZE.
    fn maintenance(&mut self) {
        for i in 0..self.ctx.main_fds.len() {
            let Some((fd, generation)) = self.ctx.main_fds[i] else {
                continue;
            };
            let slot = self.ctx.region.slot(i);
            if slot.state() != SlotState::Free
                || slot.generation() != generation
                || !backend_gone(fd)
            {
                continue;
            }
            if slot.transition(SlotState::Free, SlotState::Remove) {
                slot.set_owner(std::process::id() as i32);
                terminate_fd(fd);
                self.ctx.main_fds[i] = None;
                self.ctx.region.release_slot(i, SlotState::Remove);
                log::info!("slot {i}: the server closed an idle backend; removed from the pool");
            }
        }
        self.reclaim_orphans();
        self.drop_stale_fds();
        crate::logging::maybe_rotate(&self.ctx.config.main);
        if self.prefill.is_none() && crate::prefill::needed(&self.ctx) {
            self.prefill = self.run_in_child("prefill", |ctx| crate::prefill::run(ctx, false));
        }
    }

    /// Reclaims held slots whose owner is not a live child of main, once they have stayed so for a whole
    /// maintenance interval. They come from a process killed in the instant between a compare-and-swap
    /// and recording itself as owner (or clearing it): SIGCHLD could not attribute them to anyone.
    fn reclaim_orphans(&mut self) {
        let me = std::process::id() as i32;
        let mut seen = HashSet::new();
        for i in 0..self.ctx.region.capacity() {
            let slot = self.ctx.region.slot(i);
            let state = slot.state();
            if matches!(state, SlotState::NotInit | SlotState::Free) {
                continue;
            }
            let owner = slot.owner();
            if owner == me
                || self.workers.contains(&owner)
                || self.helpers.contains(&owner)
                || self.relay == Some(owner)
                || self.retiring_relays.contains(&owner)
            {
                continue;
            }
            let key = (i, slot.generation(), state as i32);
            if !self.orphans.contains(&key) {
                seen.insert(key);
                continue;
            }
            if let Some((fd, generation)) = self.ctx.main_fds[i] {
                if generation == key.1 {
                    terminate_fd(fd);
                    self.ctx.main_fds[i] = None;
                }
            }
            if self.ctx.region.release_slot(i, state) {
                log::warn!(
                    "slot {i}: reclaimed from a process that ended while taking or returning it"
                );
            }
        }
        self.orphans = seen;
    }

    /// Closes sockets main holds for slots that moved on (a late transfer, a lost kill request).
    fn drop_stale_fds(&mut self) {
        for i in 0..self.ctx.main_fds.len() {
            let Some((fd, generation)) = self.ctx.main_fds[i] else {
                continue;
            };
            let slot = self.ctx.region.slot(i);
            if slot.state() == SlotState::NotInit || slot.generation() != generation {
                terminate_fd(fd);
                self.ctx.main_fds[i] = None;
            }
        }
    }

    /// Runs a slow job in a short-lived child so the loop never blocks on it (pgagroal does the same).
    fn run_in_child(&mut self, what: &str, job: impl FnOnce(&Context)) -> Option<i32> {
        match self.fork_child(|ctx| {
            job(ctx);
            0
        }) {
            Ok(pid) => {
                self.helpers.insert(pid);
                Some(pid)
            }
            Err(e) => {
                log::warn!("cannot fork for {what}: {e}");
                None
            }
        }
    }

    fn reap(&mut self, block: bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let flags = if block {
                None
            } else {
                Some(WaitPidFlag::WNOHANG)
            };
            match waitpid(None, flags) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if code != 0 {
                        log::debug!("worker {pid} exited with {code}");
                    }
                    self.child_gone(pid.as_raw());
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    log::warn!("worker {pid} was killed by {sig:?}");
                    self.child_gone(pid.as_raw());
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            if block
                && ((self.workers.is_empty()
                    && self.helpers.is_empty()
                    && self.relay.is_none()
                    && self.retiring_relays.is_empty())
                    || Instant::now() >= deadline)
            {
                break;
            }
        }
    }

    /// A worker is gone: whatever slot it still held is in an unknown state, so its backend is closed
    /// and the slot freed; its place in the wait queue is dropped.
    fn child_gone(&mut self, pid: i32) {
        self.workers.remove(&pid);
        self.helpers.remove(&pid);
        if self.retiring_relays.remove(&pid) {
            log::debug!("retired transaction relay {pid} ended");
        }
        let relay_died = self.relay == Some(pid);
        if relay_died {
            self.relay = None;
            let h = self.ctx.region.header();
            if self.stopping.is_none() {
                log::error!(
                    "the transaction relay (process {pid}) ended with {} client(s); starting a new one",
                    h.relay_clients.load(Ordering::Acquire)
                );
            }
            // Its clients' sockets closed with it (clients still in the channel go to the next relay).
            // A retiring relay's clients are counted in the same total: leave it then.
            if self.retiring_relays.is_empty() {
                h.relay_clients.store(0, Ordering::Release);
            }
            h.relay_waiting.store(0, Ordering::Release);
        }
        if self.prefill == Some(pid) {
            self.prefill = None;
        }
        self.ctx.region.clear_waiters_of(pid);
        for i in 0..self.ctx.region.capacity() {
            let slot = self.ctx.region.slot(i);
            if slot.owner() != pid {
                continue;
            }
            let state = slot.state();
            if matches!(state, SlotState::Free | SlotState::NotInit) {
                continue;
            }
            // The backend may be running the dead worker's query: cancel it so it notices the client
            // is gone now, not when the query ends.
            let (backend_pid, secret) = slot.backend_key();
            let server_index = slot.server();
            if backend_pid != 0 {
                self.run_in_child("cancel", move |ctx| {
                    let server =
                        &ctx.config.servers[server_index.min(ctx.config.servers.len() - 1)];
                    let _ = crate::backend::cancel(server, (backend_pid, secret));
                });
            }
            let slot = self.ctx.region.slot(i);
            if let Some((fd, generation)) = self.ctx.main_fds[i] {
                if generation == slot.generation() {
                    terminate_fd(fd);
                    self.ctx.main_fds[i] = None;
                }
            }
            if self.ctx.region.release_slot(i, state) {
                log::warn!("slot {i}: reclaimed from worker {pid}, which ended while holding it");
            }
        }
        // Slots may have come free for clients the relay keeps waiting.
        self.ctx.wake_relay();
        if relay_died {
            self.spawn_relay();
        }
    }

    fn accept_management(&mut self) {
        loop {
            match nix::sys::socket::accept4(
                self.management.as_raw_fd(),
                nix::sys::socket::SockFlag::SOCK_NONBLOCK
                    | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(raw) => {
                    // SAFETY: accept4 returned a new fd that nothing else owns.
                    let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    let token = Token(self.next_conn_token);
                    self.next_conn_token = self
                        .next_conn_token
                        .wrapping_add(1)
                        .max(FIRST_MANAGEMENT_CONN);
                    if self
                        .poll
                        .registry()
                        .register(&mut SourceFd(&conn.as_raw_fd()), token, Interest::READABLE)
                        .is_ok()
                    {
                        self.management_conns.insert(token, conn);
                        // The request is usually there already (edge-triggered: look now).
                        self.serve_management(token);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("management accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn serve_management(&mut self, token: Token) {
        let Some(conn) = self.management_conns.get(&token) else {
            return;
        };
        let fd = conn.as_raw_fd();
        let mut buf = [0u8; 64];
        let (n, passed) = match recv_record(fd, &mut buf) {
            Ok(r) => r,
            Err(crate::transfer::TransferError::Io(nix::errno::Errno::EAGAIN)) => return,
            Err(e) => {
                log::debug!("management connection: {e}");
                self.close_management(token);
                return;
            }
        };
        if n == 0 {
            self.close_management(token);
            return;
        }
        let status = match decode(&buf[..n], passed) {
            Ok(rec) => self.handle_record(fd, rec),
            Err(e) => {
                log::warn!("management connection: {e}");
                1
            }
        };
        if status != 0 {
            let _ = send_record(fd, &[status], None);
        }
        self.close_management(token);
    }

    /// Handles one transfer request; returns a non-zero status when no reply was sent yet.
    fn handle_record(&mut self, reply_to: RawFd, rec: crate::transfer::Record) -> u8 {
        let slot = rec.slot as usize;
        if slot >= self.ctx.main_fds.len() {
            return 1;
        }
        match rec.request {
            Request::Transfer => {
                let Some(fd) = rec.fd else { return 1 };
                if let Some((old, _)) = self.ctx.main_fds[slot].take() {
                    // An older backend of this slot: it is dead or being replaced.
                    terminate_fd(old);
                }
                self.ctx.main_fds[slot] = Some((fd.into_raw_fd(), rec.generation));
                let _ = send_record(reply_to, &[0], None);
                0
            }
            Request::Get => match self.ctx.main_fds[slot] {
                Some((fd, g)) if g == rec.generation => {
                    let _ = send_record(reply_to, &[0], Some(fd));
                    0
                }
                _ => 1,
            },
            Request::Kill => {
                if let Some((fd, g)) = self.ctx.main_fds[slot] {
                    if g == rec.generation {
                        terminate_fd(fd);
                        self.ctx.main_fds[slot] = None;
                    }
                }
                let _ = send_record(reply_to, &[0], None);
                0
            }
        }
    }

    fn accept_control(&mut self) {
        loop {
            match self.control.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = Token(self.next_control_token);
                    self.next_control_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut SourceFd(&stream.as_raw_fd()),
                            token,
                            Interest::READABLE,
                        )
                        .is_ok()
                    {
                        let deadline = Instant::now() + crate::management::REQUEST_TIMEOUT;
                        self.control_conns.insert(
                            token,
                            crate::management::ControlConn {
                                stream,
                                buf: Vec::new(),
                                deadline,
                            },
                        );
                        self.serve_control(token);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn serve_control(&mut self, token: Token) {
        let Some(conn) = self.control_conns.get_mut(&token) else {
            return;
        };
        match conn.read_request() {
            Ok(None) => {}
            Ok(Some(request)) => {
                let response = self.control(&request);
                if let Some(mut conn) = self.close_control(token) {
                    conn.respond(&response);
                }
            }
            Err(e) => {
                log::warn!("control connection: {e}");
                if let Some(mut conn) = self.close_control(token) {
                    conn.respond(&serde_json::json!({"version": crate::management::VERSION, "command": "", "status": "error", "error": e}));
                }
            }
        }
    }

    fn close_control(&mut self, token: Token) -> Option<crate::management::ControlConn> {
        let conn = self.control_conns.remove(&token)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        Some(conn)
    }

    /// Drops control connections that did not send a whole request in time.
    fn expire_control(&mut self) {
        let now = Instant::now();
        let late: Vec<Token> = self
            .control_conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            log::warn!(
                "control connection: no whole request within {:?}; closed",
                crate::management::REQUEST_TIMEOUT
            );
            self.close_control(t);
        }
    }

    fn close_management(&mut self, token: Token) {
        if let Some(conn) = self.management_conns.remove(&token) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.as_raw_fd()));
        }
    }

    fn finish(&mut self) {
        for (i, entry) in self.ctx.main_fds.iter_mut().enumerate() {
            if let Some((fd, _)) = entry.take() {
                terminate_fd(fd);
                let slot = self.ctx.region.slot(i);
                let state = slot.state();
                if state != SlotState::NotInit {
                    self.ctx.region.release_slot(i, state);
                }
            }
        }
        let _ = std::fs::remove_file(&self.cleanup.management_socket);
        let _ = std::fs::remove_file(&self.cleanup.control_socket);
        if let Some(p) = &self.cleanup.pidfile {
            let _ = std::fs::remove_file(p);
        }
        log::info!("pgcorral stopped");
    }
}

/// True when an idle backend socket is closed or has something to say (an idle backend only speaks to
/// announce its end, e.g. FATAL 57P01 after pg_terminate_backend).
fn backend_gone(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a peek into a one-byte stack buffer on a socket main owns; nothing is consumed.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        );
    }
    true
}

/// Sends Terminate to a backend, then shuts the socket down for every process holding a copy (workers
/// forked earlier inherited it) and closes main's copy.
pub fn terminate_fd(fd: RawFd) {
    // SAFETY: fd is a backend socket main owns; it is closed here and forgotten by the caller.
    unsafe {
        let x = [b'X', 0, 0, 0, 4];
        libc::send(
            fd,
            x.as_ptr() as *const libc::c_void,
            x.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::shutdown(fd, libc::SHUT_RDWR);
        libc::close(fd);
    }
}
