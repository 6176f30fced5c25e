//! The transaction pipeline: a backend is held only for the length of a transaction.
//!
//! The client is authenticated and greeted as in session mode; from then on the worker follows every
//! message boundary in both directions and keeps, in order, what each request it forwarded will be
//! answered with ([`Expect`]). A backend is checked out of the pool at the first message of a
//! transaction and given back when the answers are all in and the last ReadyForQuery says `I`.
//!
//! Around that, three things keep clients apart on shared backends:
//! - **Session state** ([`Dirty`]): what a client changed that outlives a transaction (SET, temp
//!   tables, LISTEN, advisory locks, SQL PREPARE, cursors WITH HOLD) is seen in the command tags,
//!   ParameterStatus messages and query text, and undone before the backend goes back (only what was
//!   changed; `server_reset_query_always` runs the full `server_reset_query` every time).
//! - **Prepared statements**: a client's named statements are renamed to `pgc_<hash of text and
//!   types>`, prepared lazily on whichever backend runs the transaction, and remembered per backend in
//!   the shared region (an LRU bounded by `max_prepared_statements`). Parse messages pgcorral skips or
//!   injects are answered (or swallowed) in order through the expectation queue.
//! - **Cancel**: the client's key is on the slot only while it holds the backend (see `pool`).

use super::{read_into, Buffer, ReadOutcome, RELAY_BUFFER};
use crate::backend;
use crate::context::Context;
use crate::io::STOP_REQUESTED;
use crate::pool::{self, FdCache, Lease, PoolError, PoolKey};
use crate::security::BackendCredential;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use pgcorral_shmem::{SlotData, StatementId};
use pgcorral_wire::extended::{self, tag as xtag, BindHead, ParseView, TargetView};
use pgcorral_wire::messages::{tag, ErrorFields, ReceivedError};
use pgcorral_wire::{StartupMessage, MAX_MESSAGE_LENGTH};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Largest named Parse pgcorral holds whole to hash it.
const MAX_NAMED_PARSE: usize = 64 << 20;
/// Most bytes of statement text one client may keep prepared.
const MAX_STATEMENT_BYTES: usize = 256 << 20;
/// Largest Describe or Close (PostgreSQL's own cap on such messages is 10000 bytes).
const MAX_SMALL_MESSAGE: usize = 64 << 10;
/// Stop reading a side while this much output for the other side is pending.
const HIGH_WATER: usize = 256 << 10;

/// What a forwarded request will be answered with, in order.
#[derive(Debug)]
enum Expect {
    /// Query, FunctionCall (`sync` false) or Sync (`sync` true): everything up to ReadyForQuery.
    /// After an error in an extended-query batch PostgreSQL skips every message but Sync, so only a
    /// Sync's entry ends the skip. `ext`: the count of extended-query messages sent before it (a
    /// Query's ReadyForQuery ends the implicit transaction those opened only if none came after).
    Ready {
        sync: bool,
        ext: u32,
    },
    /// ParseComplete. `swallow`: pgcorral injected the Parse, the client must not see the answer.
    /// `id`: the statement recorded in the backend's set (forgotten if the Parse fails).
    Parse {
        swallow: bool,
        id: Option<StatementId>,
        /// The client's name for a Parse the client sent: if it fails (or is skipped) the client's
        /// statement does not exist, as with PostgreSQL.
        client: Option<Vec<u8>>,
    },
    /// pgcorral's own ParseComplete for a client's Parse of a statement the backend already has (or
    /// that will be prepared on first use): like `Fake`, and if it is skipped the client's statement
    /// does not exist.
    FakeParse {
        client: Vec<u8>,
        id: StatementId,
    },
    /// pgcorral's own CloseComplete for a client's Close of its statement; if it is skipped the
    /// statement still exists.
    FakeClose {
        client: Vec<u8>,
        statement: ClientStatement,
    },
    Bind,
    /// RowDescription or NoData (after a ParameterDescription for a statement).
    Describe,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// CloseComplete; `swallow` for a Close pgcorral injected (LRU eviction of `victim`).
    Close {
        swallow: bool,
        victim: Option<StatementId>,
    },
    /// The client ended a COPY IN here (CopyDone or CopyFail): Syncs before it reach the server in
    /// COPY IN mode and are ignored; Syncs after it are answered. Answered by nothing.
    CopyEnd,
    /// pgcorral's own ReadyForQuery `I` for a Sync between transactions (all that was owed was
    /// pgcorral's own answers), sent when its turn comes.
    FakeReady,
}

/// Session state a client changed, to be undone before the backend serves someone else.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dirty(u8);

impl Dirty {
    const GUC: u8 = 1;
    const TEMP: u8 = 2;
    const LISTEN: u8 = 4;
    const ADVISORY: u8 = 8;
    const SQL_PREPARE: u8 = 16;
    const CURSOR: u8 = 32;

    fn set(&mut self, f: u8) {
        self.0 |= f;
    }
    fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }

    /// The statements that undo exactly this state.
    fn reset_sql(self) -> String {
        let mut sql = String::new();
        if self.has(Dirty::CURSOR) {
            sql.push_str("CLOSE ALL;");
        }
        if self.has(Dirty::GUC) {
            sql.push_str(backend::RESET_SETTINGS);
        }
        if self.has(Dirty::LISTEN) {
            sql.push_str("UNLISTEN *;");
        }
        if self.has(Dirty::ADVISORY) {
            sql.push_str("SELECT pg_advisory_unlock_all();");
        }
        if self.has(Dirty::TEMP) {
            sql.push_str("DISCARD TEMP;");
        }
        if self.has(Dirty::SQL_PREPARE) {
            sql.push_str("DEALLOCATE ALL;");
        }
        sql
    }
}

/// Words in query text that mean session state a command tag does not show.
const KEYWORDS: &[(&[u8], u8)] = &[
    (b"temp", Dirty::TEMP),
    (b"advisory", Dirty::ADVISORY),
    (b"set_config", Dirty::GUC),
];
const KEYWORD_OVERLAP: usize = 9; // longest keyword - 1

/// Looks for [`KEYWORDS`] in text that arrives in pieces (case-insensitively).
#[derive(Default)]
struct KeywordScan {
    tail: [u8; KEYWORD_OVERLAP],
    tail_len: usize,
}

impl KeywordScan {
    fn reset(&mut self) {
        self.tail_len = 0;
    }

    fn feed(&mut self, chunk: &[u8], dirty: &mut Dirty) {
        // The seam between the previous piece and this one.
        let mut seam = [0u8; 2 * KEYWORD_OVERLAP];
        let head = chunk.len().min(KEYWORD_OVERLAP);
        seam[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        seam[self.tail_len..self.tail_len + head].copy_from_slice(&chunk[..head]);
        scan_keywords(&seam[..self.tail_len + head], dirty);
        scan_keywords(chunk, dirty);
        if chunk.len() >= KEYWORD_OVERLAP {
            self.tail
                .copy_from_slice(&chunk[chunk.len() - KEYWORD_OVERLAP..]);
            self.tail_len = KEYWORD_OVERLAP;
        } else {
            let keep = (self.tail_len + chunk.len()).min(KEYWORD_OVERLAP);
            let mut joined = [0u8; 2 * KEYWORD_OVERLAP];
            joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joined[self.tail_len..self.tail_len + chunk.len()].copy_from_slice(chunk);
            let total = self.tail_len + chunk.len();
            self.tail[..keep].copy_from_slice(&joined[total - keep..total]);
            self.tail_len = keep;
        }
    }
}

fn scan_keywords(text: &[u8], dirty: &mut Dirty) {
    for &(word, flag) in KEYWORDS {
        if !dirty.has(flag)
            && text
                .windows(word.len())
                .any(|w| w.eq_ignore_ascii_case(word))
        {
            dirty.set(flag);
        }
    }
}

/// What a CommandComplete tag says about session state.
fn note_command_tag(tag_text: &[u8], dirty: &mut Dirty, lost_statements: &mut bool) {
    let word = |w: &[u8]| {
        tag_text.len() >= w.len()
            && &tag_text[..w.len()] == w
            && tag_text.get(w.len()).is_none_or(|&c| c == b' ' || c == 0)
    };
    if word(b"SET") || word(b"RESET") {
        dirty.set(Dirty::GUC);
    } else if word(b"LISTEN") {
        dirty.set(Dirty::LISTEN);
    } else if word(b"PREPARE") {
        dirty.set(Dirty::SQL_PREPARE);
    } else if word(b"DECLARE") {
        dirty.set(Dirty::CURSOR);
    } else if word(b"DEALLOCATE") || word(b"DISCARD") {
        // DEALLOCATE ALL and DISCARD ALL drop pgcorral's statements too.
        *lost_statements = true;
        dirty.set(Dirty::SQL_PREPARE | Dirty::GUC);
    }
}

/// A client's named statement.
#[derive(Debug)]
struct ClientStatement {
    id: StatementId,
    /// Session state its text suggests (an advisory lock taken by a statement prepared in an earlier
    /// transaction is only seen here).
    dirty: Dirty,
    /// The renamed Parse message, whole, to prepare the statement on another backend.
    parse: Vec<u8>,
}

fn statement_id(rest: &[u8]) -> StatementId {
    let d = ring::digest::digest(&ring::digest::SHA256, rest);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.as_ref()[..16]);
    id
}

fn statement_name(id: &StatementId) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = [0u8; 36];
    name[..4].copy_from_slice(b"pgc_");
    for (i, b) in id.iter().enumerate() {
        name[4 + 2 * i] = HEX[(b >> 4) as usize];
        name[5 + 2 * i] = HEX[(b & 15) as usize];
    }
    name
}

/// The backend a worker holds for the current transaction.
struct Held {
    lease: Lease,
    fd: RawFd,
    dirty: Dirty,
    /// The client's statements on this backend were dropped by the client itself (DISCARD ALL, ...).
    lost_statements: bool,
    queries: u64,
}

/// Where the server's stream stands.
#[derive(Default)]
struct ServerReader {
    header: [u8; 5],
    header_have: usize,
    body_left: usize,
    tag: u8,
    forward: bool,
    /// First bytes of bodies pgcorral looks at (ReadyForQuery, CommandComplete, ErrorResponse).
    peek: Vec<u8>,
    peek_want: usize,
}

const PEEK: usize = 256;

impl ServerReader {
    fn at_boundary(&self) -> bool {
        self.header_have == 0
    }
}

/// How the transaction session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEnd {
    ClientTerminated,
    ClientGone,
    ServerGone,
    ProtocolError,
    PoolFull,
    Stopped,
    /// Not an end: in the shared relay, the client needs a backend and none is free. The message
    /// that needs it is left unread; the relay steps the client again when a backend may be free.
    Parked,
}

/// Where a client message stands.
enum ClientMessage {
    /// Between messages.
    Boundary,
    /// Relaying the rest of a message's body (`scan`: look for keywords in it).
    Streaming { left: usize, scan: bool },
    /// Dropping the rest of a message nobody will read (COPY data after the COPY ended).
    Discarding { left: usize },
}

/// Everything the pipeline needs to know about its client.
pub struct TxClient {
    pub fd: RawFd,
    pub key: PoolKey,
    pub rule: Option<usize>,
    pub startup: StartupMessage,
    pub client_key: (i32, i32),
    /// How pgcorral logs in to new backends for this client (`None`: only a server that trusts the
    /// user can be reached; pooled backends can always be used).
    pub credential: Option<BackendCredential>,
}

/// The backend the client's login used, idle, handed to the pipeline to give back.
pub struct LoginBackend {
    pub lease: Lease,
    /// The login ran SET statements to match the client's startup parameters (undo them).
    /// When the login SET the backend's startup parameters to the client's: the session's
    /// ParameterStatus values after the SETs.
    pub session_reported: Option<Vec<u8>>,
}

/// What the transactions of one process share: its copies of backend sockets and, in the shared
/// relay, the event registry and the rule that keeps waiting clients in order.
pub struct Shared {
    pub fds: RefCell<FdCache>,
    pub relay: Option<RelayHooks>,
    /// With `server_reset_query_always`: the query run after every transaction (worked out once;
    /// a process keeps its configuration for its life) and whether it deallocates statements.
    pub reset_always: std::cell::OnceCell<(String, bool)>,
}

impl Shared {
    /// A worker that relays its one client.
    pub fn worker() -> Rc<Shared> {
        Rc::new(Shared {
            fds: RefCell::new(FdCache::default()),
            relay: None,
            reset_always: Default::default(),
        })
    }
}

/// How a transaction runs inside the shared relay (`crate::relay`).
pub struct RelayHooks {
    /// The relay's epoll. A backend socket is registered once, under [`server_token`] of its slot,
    /// and stays registered while the relay keeps its copy (between transactions too): registering
    /// and removing it per transaction would cost two system calls each time.
    pub registry: Registry,
    /// Per slot: the (generation, fd) registered with epoll.
    pub watched: RefCell<Vec<Option<(u32, RawFd)>>>,
    /// Per slot: the index of the client holding it (`NO_HOLDER`: none).
    pub holders: RefCell<Vec<usize>>,
    /// Clients of the relay parked waiting for a backend, per pool key hash.
    parked: RefCell<HashMap<u64, usize>>,
    /// Set while the relay steps the head of its queue: only that client may take a backend while
    /// others wait (FIFO).
    pub resuming: Cell<bool>,
    /// Bumped whenever a client of the relay gives a backend back or closes one.
    pub releases: Cell<u64>,
}

/// The epoll token of client `index`'s socket in the shared relay.
pub fn client_token(index: usize) -> Token {
    Token(FIRST_RELAY_TOKEN + 2 * index)
}

/// The epoll token of the backend of `slot` in the shared relay.
pub fn server_token(slot: usize) -> Token {
    Token(FIRST_RELAY_TOKEN + 2 * slot + 1)
}

/// No client holds the slot.
pub const NO_HOLDER: usize = usize::MAX;

impl RelayHooks {
    pub fn new(registry: Registry) -> RelayHooks {
        RelayHooks {
            registry,
            watched: RefCell::new(Vec::new()),
            holders: RefCell::new(Vec::new()),
            parked: RefCell::new(HashMap::new()),
            resuming: Cell::new(false),
            releases: Cell::new(0),
        }
    }

    /// Client `index` holds `slot` (backend socket `fd`): events of the socket go to it. The socket
    /// is registered unless this very (generation, fd) already is. An fd the relay closed is never
    /// deregistered later (its number may belong to another socket by then): the kernel drops the
    /// registration when main closes the last copy, and until then its events only mark a holder
    /// readable for nothing (a read that finds no data).
    fn hold(&self, slot: usize, generation: u32, fd: RawFd, index: usize) -> io::Result<()> {
        let mut watched = self.watched.borrow_mut();
        if watched.len() <= slot {
            watched.resize(slot + 1, None);
        }
        if watched[slot] != Some((generation, fd)) {
            let interest = Interest::READABLE | Interest::WRITABLE;
            match self
                .registry
                .register(&mut SourceFd(&fd), server_token(slot), interest)
            {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.registry
                        .reregister(&mut SourceFd(&fd), server_token(slot), interest)?
                }
                Err(e) => return Err(e),
            }
            watched[slot] = Some((generation, fd));
        }
        let mut holders = self.holders.borrow_mut();
        if holders.len() <= slot {
            holders.resize(slot + 1, NO_HOLDER);
        }
        holders[slot] = index;
        Ok(())
    }

    /// Counts a client of pool key `key` parked.
    pub fn park(&self, key: u64) {
        *self.parked.borrow_mut().entry(key).or_insert(0) += 1;
    }

    /// Counts a client of pool key `key` no longer parked.
    pub fn unpark(&self, key: u64) {
        let mut parked = self.parked.borrow_mut();
        if let Some(n) = parked.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                parked.remove(&key);
            }
        }
    }

    fn parked_for(&self, key: u64) -> bool {
        self.parked.borrow().contains_key(&key)
    }

    /// The client holding `slot`, if any.
    pub fn holder(&self, slot: usize) -> Option<usize> {
        match self.holders.borrow().get(slot) {
            Some(&i) if i != NO_HOLDER => Some(i),
            _ => None,
        }
    }

    fn let_go(&self, slot: usize) {
        if let Some(h) = self.holders.borrow_mut().get_mut(slot) {
            *h = NO_HOLDER;
        }
        self.releases.set(self.releases.get() + 1);
    }
}

/// Tokens below this are the relay's own (its channel, its wake-up eventfd).
pub const FIRST_RELAY_TOKEN: usize = 16;

pub struct Tx<'a> {
    ctx: &'a Context,
    c: TxClient,
    held: Option<Held>,
    shared: Rc<Shared>,
    /// This client's index in the shared relay (its tokens); 0 in a worker.
    index: usize,
    cin: Vec<u8>,
    cin_start: usize,
    cin_end: usize,
    cmsg: ClientMessage,
    to_server: Vec<u8>,
    to_server_at: usize,
    to_client: Vec<u8>,
    to_client_at: usize,
    sin: Buffer,
    sr: ServerReader,
    expect: VecDeque<Expect>,
    statements: HashMap<Vec<u8>, ClientStatement>,
    scan: KeywordScan,
    status: u8,
    copy_in: bool,
    /// An extended-query message failed and the server discards everything up to the client's next
    /// Sync (which the client has not sent yet).
    skipping: bool,
    /// Extended-query messages went to the server since the last Sync: an implicit transaction may
    /// hold uncommitted work that a Sync would commit.
    unsynced: bool,
    /// Extended-query messages (Parse, Bind, Describe, Execute, Close) sent so far.
    ext_seq: u32,
    /// The transaction ended (ReadyForQuery `I`, nothing owed) while the backend could not be given
    /// back yet (a client message was half relayed): give it back as soon as it can be.
    release_due: bool,
    /// The server message being handled is followed by more bytes of the same read.
    more_in_read: bool,
    /// Bytes of Parse messages kept for the client's named statements.
    statement_bytes: usize,
    /// The client's startup parameters as a slot records them.
    startup_encoded: Vec<u8>,
    /// Answers go nowhere: the client left and the backend is being drained.
    discard: bool,
    server_fatal: bool,
    client_readable: bool,
    client_writable: bool,
    server_readable: bool,
    server_writable: bool,
    prepared_enabled: bool,
    rng: ring::rand::SystemRandom,
}

enum Flow {
    Go,
    End(TxEnd),
}

/// What became of a Bind.
enum BindOutcome {
    End(TxEnd),
    /// The names are not all in the buffer yet.
    Incomplete,
    /// The renamed header was written; the rest of the body (after the client's `names_len` bytes of
    /// names) follows as it is.
    Renamed {
        names_len: usize,
    },
    /// Relay the whole message as it is.
    AsIs,
}

/// Whether a checkout may wait for a backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    /// Only take a backend that is free now (Go with none held otherwise).
    No,
}

/// Runs the transaction pipeline for an authenticated, greeted client. `login` is the backend the
/// login used (idle); it goes back to the pool at once.
pub fn run(ctx: &Context, client: TxClient, login: Option<LoginBackend>) -> TxEnd {
    let mut tx = Tx::new(ctx, client, Shared::worker(), 0);
    if let Some(login) = login {
        tx.adopt_login(login);
    }
    let end = tx.relay();
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            log::warn!("transaction relay failed: {e}");
            TxEnd::ServerGone
        }
    };
    tx.finish(end);
    end
}

/// Gives the login's backend back (undoing the SET statements the login ran) and returns the client,
/// for a worker that hands its client to the shared relay.
pub fn give_back_login(ctx: &Context, client: TxClient, login: LoginBackend) -> TxClient {
    let mut tx = Tx::new(ctx, client, Shared::worker(), 0);
    tx.adopt_login(login);
    tx.c
}

impl<'a> Tx<'a> {
    /// A client between transactions, holding no backend.
    pub fn new(ctx: &'a Context, client: TxClient, shared: Rc<Shared>, index: usize) -> Tx<'a> {
        let startup_encoded = backend::encode_params(&client.startup);
        Tx {
            ctx,
            c: client,
            held: None,
            shared,
            index,
            cin: vec![0u8; RELAY_BUFFER],
            cin_start: 0,
            cin_end: 0,
            cmsg: ClientMessage::Boundary,
            to_server: Vec::with_capacity(RELAY_BUFFER),
            to_server_at: 0,
            to_client: Vec::with_capacity(RELAY_BUFFER),
            to_client_at: 0,
            sin: Buffer::new(),
            sr: ServerReader {
                peek: Vec::with_capacity(PEEK),
                ..Default::default()
            },
            expect: VecDeque::with_capacity(64),
            statements: HashMap::new(),
            scan: KeywordScan::default(),
            status: b'I',
            copy_in: false,
            skipping: false,
            unsynced: false,
            ext_seq: 0,
            release_due: false,
            more_in_read: false,
            statement_bytes: 0,
            startup_encoded,
            discard: false,
            server_fatal: false,
            client_readable: true,
            client_writable: true,
            server_readable: false,
            server_writable: true,
            prepared_enabled: ctx.config.main.max_prepared_statements > 0,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// After SETs made a backend's session match this client's startup parameters: records that in
    /// the slot, so the backend keeps them and the next client with the same parameters needs no
    /// SET. False when they could not be recorded (the session must then be reset after use).
    fn keep_session_params(&self, slot: usize, reported: &[u8]) -> bool {
        self.ctx
            .region
            .slot_data(slot)
            .with_data_mut(|d| d.set_session_params(&self.startup_encoded, reported))
    }

    /// Takes the login's idle backend and gives it back at once (before waiting for the client).
    fn adopt_login(&mut self, login: LoginBackend) {
        let mut dirty = Dirty::default();
        if let Some(reported) = login.session_reported.as_deref() {
            if !self.keep_session_params(login.lease.slot, reported) {
                dirty.set(Dirty::GUC);
            }
        }
        self.held = Some(Held {
            fd: login.lease.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1),
            lease: login.lease,
            dirty,
            lost_statements: false,
            queries: 0,
        });
        self.release(false);
    }

    /// The user and database of the client (for log lines).
    pub fn key(&self) -> &PoolKey {
        &self.c.key
    }

    /// Records what epoll said of the client's socket.
    pub fn client_ready(&mut self, readable: bool, writable: bool) {
        self.client_readable |= readable;
        self.client_writable |= writable;
    }

    /// Records what epoll said of the held backend's socket.
    pub fn server_ready(&mut self, readable: bool, writable: bool) {
        if self.held.is_some() {
            self.server_readable |= readable;
            self.server_writable |= writable;
        }
    }

    fn relay(&mut self) -> io::Result<TxEnd> {
        loop {
            if let Some(end) = self.step()? {
                return Ok(end);
            }
            self.wait()?;
        }
    }

    /// Does everything that can be done without waiting for a socket. `Some(end)`: the session ended
    /// (or, in the shared relay, [`TxEnd::Parked`]: it waits for a backend).
    pub fn step(&mut self) -> io::Result<Option<TxEnd>> {
        {
            let mut progress = true;
            while progress {
                progress = false;
                if STOP_REQUESTED.load(Ordering::Relaxed) {
                    return Ok(Some(TxEnd::Stopped));
                }
                // Client → server.
                if self.held.is_some() && self.to_server_at < self.to_server.len() {
                    match self.flush_server() {
                        Ok(p) => progress |= p,
                        Err(()) => return Ok(Some(TxEnd::ServerGone)),
                    }
                }
                if self.to_server.len() - self.to_server_at < HIGH_WATER {
                    let mut consumed = false;
                    if self.cin_start < self.cin_end {
                        let before = (self.cin_start, self.to_server.len());
                        if let Flow::End(e) = self.process_client()? {
                            if e == TxEnd::Parked
                                && self.client_writable
                                && self.flush_client().is_err()
                            {
                                // What earlier requests' answers the client is owed goes out while
                                // it waits (it may need them before anything frees a backend).
                                return Ok(Some(TxEnd::ClientGone));
                            }
                            return Ok(Some(e));
                        }
                        consumed = (self.cin_start, self.to_server.len()) != before;
                        progress |= consumed;
                        if self.to_server.len() > before.1 {
                            // A new request went out: the backend stays with this client.
                            self.release_due = false;
                        }
                    }
                    // Read when everything read so far is handled, or when what is left is a piece
                    // of a message that needs more bytes (read_client makes room for them).
                    if self.client_readable && (self.cin_start == self.cin_end || !consumed) {
                        match self.read_client() {
                            Ok(true) => progress = true,
                            Ok(false) => {}
                            Err(()) => return Ok(Some(TxEnd::ClientGone)),
                        }
                    }
                }
                if self.release_due
                    && self.expect.is_empty()
                    && self.status == b'I'
                    && !self.unsynced
                    && self.can_release()
                {
                    self.release_due = false;
                    self.release(true);
                }
                // Server → client.
                if self.to_client_at < self.to_client.len() && self.client_writable {
                    match self.flush_client() {
                        Ok(p) => progress |= p,
                        Err(()) => return Ok(Some(TxEnd::ClientGone)),
                    }
                }
                if self.server_fatal && self.to_client_at == self.to_client.len() {
                    return Ok(Some(TxEnd::ServerGone));
                }
                if self.held.is_some()
                    && self.server_readable
                    && self.to_client.len() - self.to_client_at < HIGH_WATER
                {
                    match read_into(self.held_fd(), &mut self.sin) {
                        Ok(ReadOutcome::Data(n)) => {
                            progress = true;
                            self.server_readable = n == self.sin.data.len();
                            if let Flow::End(e) = self.process_server(n)? {
                                return Ok(Some(e));
                            }
                        }
                        Ok(ReadOutcome::WouldBlock) => self.server_readable = false,
                        Ok(ReadOutcome::Closed) | Err(_) => {
                            self.server_fatal = true;
                            return Ok(Some(TxEnd::ServerGone));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Sleeps until a socket the relay waits on is ready. poll(2), not epoll: the backend changes with
    /// every transaction, and registering and removing it with epoll would cost two more system
    /// calls per transaction (measured: 10 calls per `pgbench -S` transaction with epoll, 6 with poll).
    fn wait(&mut self) -> io::Result<()> {
        // SAFETY: both fds are open for the duration of the call (the client socket for the whole
        // relay, the backend's while it is held).
        let client = unsafe { BorrowedFd::borrow_raw(self.c.fd) };
        // poll(2) is level-triggered: ask to read a side only while the relay would read it, or a
        // side with unread bytes (a slow peer on the other end) would spin this loop.
        let to_server_pending = self.to_server.len() - self.to_server_at;
        let to_client_pending = self.to_client.len() - self.to_client_at;
        let mut client_events = PollFlags::empty();
        if to_server_pending < HIGH_WATER
            && to_client_pending < HIGH_WATER
            && (self.cin_end < self.cin.len() || self.cin_start > 0)
        {
            client_events |= PollFlags::POLLIN;
        }
        if to_client_pending > 0 && !self.client_writable {
            client_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(client, client_events),
            PollFd::new(client, PollFlags::empty()),
        ];
        let n = if let Some(h) = self.held.as_ref() {
            // SAFETY: see above.
            let server = unsafe { BorrowedFd::borrow_raw(h.fd) };
            let mut server_events = PollFlags::empty();
            if to_client_pending < HIGH_WATER {
                server_events |= PollFlags::POLLIN;
            }
            if to_server_pending > 0 && !self.server_writable {
                server_events |= PollFlags::POLLOUT;
            }
            fds[1] = PollFd::new(server, server_events);
            2
        } else {
            1
        };
        match nix::poll::poll(&mut fds[..n], PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        let r = fds[0].revents().unwrap_or(PollFlags::empty());
        self.client_readable |= r.intersects(PollFlags::POLLIN | gone);
        self.client_writable |= r.intersects(PollFlags::POLLOUT | gone);
        if n == 2 {
            let r = fds[1].revents().unwrap_or(PollFlags::empty());
            self.server_readable |= r.intersects(PollFlags::POLLIN | gone);
            self.server_writable |= r.intersects(PollFlags::POLLOUT | gone);
        }
        Ok(())
    }

    fn held_fd(&self) -> RawFd {
        self.held.as_ref().map(|h| h.fd).unwrap_or(-1)
    }

    /// Reads from the client into the free end of `cin`. Ok(true) when bytes came.
    fn read_client(&mut self) -> Result<bool, ()> {
        if self.cin_start == self.cin_end {
            self.cin_start = 0;
            self.cin_end = 0;
        } else if self.cin_end == self.cin.len() && self.cin_start > 0 {
            self.cin.copy_within(self.cin_start..self.cin_end, 0);
            self.cin_end -= self.cin_start;
            self.cin_start = 0;
        }
        if self.cin_end == self.cin.len() {
            return Ok(false); // a whole message is being gathered and the buffer grows on demand
        }
        loop {
            match nix::unistd::read(self.c.fd, &mut self.cin[self.cin_end..]) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    let room = self.cin.len() - self.cin_end;
                    self.cin_end += n;
                    self.client_readable = n == room;
                    return Ok(true);
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    self.client_readable = false;
                    return Ok(false);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Err(()),
            }
        }
    }

    fn flush_server(&mut self) -> Result<bool, ()> {
        if !self.server_writable {
            return Ok(false);
        }
        let n = write_some(self.held_fd(), &self.to_server[self.to_server_at..])?;
        self.to_server_at += n;
        if self.to_server_at < self.to_server.len() {
            self.server_writable = false;
        } else {
            self.to_server.clear();
            self.to_server_at = 0;
        }
        Ok(n > 0)
    }

    fn flush_client(&mut self) -> Result<bool, ()> {
        if self.discard {
            self.to_client.clear();
            self.to_client_at = 0;
            return Ok(false);
        }
        let before = self.to_client_at;
        match write_some(self.c.fd, &self.to_client[self.to_client_at..]) {
            Ok(n) => {
                self.to_client_at += n;
                if self.to_client_at < self.to_client.len() {
                    self.client_writable = false;
                }
            }
            Err(()) => return Err(()),
        }
        let moved = self.to_client_at != before;
        if self.to_client_at == self.to_client.len() {
            self.to_client.clear();
            self.to_client_at = 0;
        }
        Ok(moved)
    }

    // ---- client side -------------------------------------------------------------------------

    /// Handles the client bytes in `cin`: whole messages, or the streamed part of a large one.
    fn process_client(&mut self) -> io::Result<Flow> {
        while self.cin_start < self.cin_end
            && self.to_server.len() - self.to_server_at < HIGH_WATER
            && self.to_client.len() - self.to_client_at < HIGH_WATER
        {
            if let ClientMessage::Discarding { left } = self.cmsg {
                let n = left.min(self.cin_end - self.cin_start);
                self.cin_start += n;
                self.cmsg = if left == n {
                    ClientMessage::Boundary
                } else {
                    ClientMessage::Discarding { left: left - n }
                };
                continue;
            }
            if let ClientMessage::Streaming { left, scan } = self.cmsg {
                let n = left.min(self.cin_end - self.cin_start);
                let chunk = &self.cin[self.cin_start..self.cin_start + n];
                if scan {
                    if let Some(h) = self.held.as_mut() {
                        self.scan.feed(chunk, &mut h.dirty);
                    }
                }
                self.to_server.extend_from_slice(chunk);
                self.cin_start += n;
                self.cmsg = if left == n {
                    ClientMessage::Boundary
                } else {
                    ClientMessage::Streaming {
                        left: left - n,
                        scan,
                    }
                };
                continue;
            }
            let avail = self.cin_end - self.cin_start;
            if avail < 5 {
                break;
            }
            let at = self.cin_start;
            let t = self.cin[at];
            let len = u32::from_be_bytes([
                self.cin[at + 1],
                self.cin[at + 2],
                self.cin[at + 3],
                self.cin[at + 4],
            ]) as usize;
            if !(4..=MAX_MESSAGE_LENGTH).contains(&len) {
                self.client_error("08P01", "invalid message length from client");
                return Ok(Flow::End(TxEnd::ProtocolError));
            }
            let whole = avail > len; // tag + len bytes available
            match t {
                tag::TERMINATE => return Ok(Flow::End(TxEnd::ClientTerminated)),
                // COPY data with no COPY running (the server ended it with an error, and the client
                // goes on sending until it reads that): PostgreSQL drops it; so does pgcorral,
                // without taking a backend or expecting anything.
                b'd' | xtag::COPY_DONE | tag::COPY_FAIL
                    if !self.copy_in && (self.held.is_none() || self.expect.is_empty()) =>
                {
                    self.cin_start += 5;
                    if len > 4 {
                        self.cmsg = ClientMessage::Discarding { left: len - 4 };
                    }
                }
                // PostgreSQL ignores Sync and Flush during COPY IN, except when it has just left COPY
                // (an error in the data) and would answer a Sync pgcorral did not count: never
                // forward them.
                tag::SYNC | xtag::FLUSH if self.copy_in && len == 4 => self.cin_start += 5,
                // Between transactions a Sync or Flush needs no backend: every answer due is
                // pgcorral's own (a lazily prepared statement's ParseComplete), and the session is
                // idle. Answering here is what lets a client prepare statements without waiting for
                // a backend (pgbench -M prepared prepares synchronously, one client at a time).
                tag::SYNC | xtag::FLUSH
                    if self.held.is_none()
                        && len == 4
                        && self.expect.iter().all(|e| {
                            matches!(
                                e,
                                Expect::FakeReady
                                    | Expect::FakeParse { .. }
                                    | Expect::FakeClose { .. }
                            )
                        }) =>
                {
                    self.cin_start += 5;
                    if t == tag::SYNC {
                        self.expect.push_back(Expect::FakeReady);
                    }
                    self.drain_fakes();
                }
                xtag::PARSE | xtag::DESCRIBE | xtag::CLOSE => {
                    let cap = if t == xtag::PARSE {
                        MAX_NAMED_PARSE
                    } else {
                        MAX_SMALL_MESSAGE
                    };
                    let body_start = &self.cin[at + 5..self.cin_end];
                    let unnamed_parse = t == xtag::PARSE && body_start.first() == Some(&0);
                    if unnamed_parse && !whole {
                        // An unnamed statement is relayed as it comes, however long.
                        if let Flow::End(e) = self.ensure_backend(Wait::Yes)? {
                            return Ok(Flow::End(e));
                        }
                        self.expect.push_back(Expect::Parse {
                            swallow: false,
                            id: None,
                            client: None,
                        });
                        self.start_stream(len, true);
                        continue;
                    }
                    if !whole {
                        if len + 1 > cap {
                            self.client_error(
                                "54000",
                                "message too long for pgcorral's transaction pipeline",
                            );
                            return Ok(Flow::End(TxEnd::ProtocolError));
                        }
                        self.make_room(len + 1);
                        break;
                    }
                    self.cin_start += 1 + len;
                    // The handlers need `self` and the message, which lives in `self.cin`: lend the
                    // buffer out for the call instead of copying the message (nothing they call
                    // touches `cin`).
                    let cin = std::mem::take(&mut self.cin);
                    let msg = &cin[at..at + 1 + len];
                    let flow = match t {
                        xtag::PARSE => self.on_parse(msg),
                        xtag::DESCRIBE => self.on_describe(msg),
                        _ => self.on_close(msg),
                    };
                    self.cin = cin;
                    match flow? {
                        Flow::End(TxEnd::Parked) => {
                            // Read again when a backend is free: nothing of it was used yet.
                            self.cin_start = at;
                            return Ok(Flow::End(TxEnd::Parked));
                        }
                        Flow::End(e) => return Ok(Flow::End(e)),
                        Flow::Go => {}
                    }
                }
                xtag::BIND => {
                    let body_len = len - 4;
                    let have = (avail - 5).min(body_len);
                    // Lend the buffer out while the names in it are used (see Parse above).
                    let cin = std::mem::take(&mut self.cin);
                    let outcome = match BindHead::decode(&cin[at + 5..at + 5 + have]) {
                        Some(head) => self.on_bind(&head, body_len),
                        None => Ok(BindOutcome::Incomplete),
                    };
                    self.cin = cin;
                    match outcome? {
                        BindOutcome::Incomplete => {
                            if have == body_len || have >= 4096 {
                                self.client_error("08P01", "invalid Bind message");
                                return Ok(Flow::End(TxEnd::ProtocolError));
                            }
                            self.make_room(5 + 4096.min(body_len));
                            break;
                        }
                        BindOutcome::End(e) => return Ok(Flow::End(e)),
                        BindOutcome::Renamed { names_len } => {
                            self.cin_start += 5 + names_len;
                            let rest = body_len - names_len;
                            if rest > 0 {
                                self.cmsg = ClientMessage::Streaming {
                                    left: rest,
                                    scan: false,
                                };
                            }
                        }
                        BindOutcome::AsIs => self.start_stream(len, false),
                    }
                }
                _ => {
                    if let Flow::End(e) = self.on_other(t)? {
                        return Ok(Flow::End(e));
                    }
                    self.start_stream(len, t == tag::QUERY);
                }
            }
        }
        if self.cin_start == self.cin_end {
            self.cin_start = 0;
            self.cin_end = 0;
            if self.cin.len() > RELAY_BUFFER {
                // A large message grew the buffer: give the memory back.
                self.cin.truncate(RELAY_BUFFER);
                self.cin.shrink_to_fit();
            }
        }
        Ok(Flow::Go)
    }

    /// Forwards the 5 header bytes of the message at `cin_start` and relays its body as it comes.
    fn start_stream(&mut self, len: usize, scan: bool) {
        let at = self.cin_start;
        self.to_server.extend_from_slice(&self.cin[at..at + 5]);
        self.cin_start += 5;
        if scan {
            self.scan.reset();
        }
        if len > 4 {
            self.cmsg = ClientMessage::Streaming {
                left: len - 4,
                scan,
            };
        }
    }

    /// Makes `cin` able to hold `need` bytes from `cin_start`.
    fn make_room(&mut self, need: usize) {
        if self.cin_start > 0 {
            self.cin.copy_within(self.cin_start..self.cin_end, 0);
            self.cin_end -= self.cin_start;
            self.cin_start = 0;
        }
        if self.cin.len() < need {
            self.cin.resize(need, 0);
        }
        self.client_readable = true; // there is room again: read whatever the socket holds
    }

    /// Bookkeeping for a message relayed as is (Query, Execute, Sync, Flush, FunctionCall, COPY data).
    fn on_other(&mut self, t: u8) -> io::Result<Flow> {
        if t == xtag::FLUSH && self.held.is_none() {
            return Ok(Flow::Go); // nothing in flight: nothing to flush (the caller still relays it)
        }
        if let Flow::End(e) = self.ensure_backend(Wait::Yes)? {
            return Ok(Flow::End(e));
        }
        let h = self.held.as_mut().expect("a backend is held");
        if self.skipping {
            // The server discards everything up to the next Sync after an error: no answers due.
            if t == tag::SYNC {
                self.skipping = false;
                self.unsynced = false;
                self.expect.push_back(Expect::Ready {
                    sync: true,
                    ext: self.ext_seq,
                });
            }
            return Ok(Flow::Go);
        }
        match t {
            tag::QUERY => {
                h.queries += 1;
                self.expect.push_back(Expect::Ready {
                    sync: false,
                    ext: self.ext_seq,
                });
            }
            xtag::FUNCTION_CALL => self.expect.push_back(Expect::Ready {
                sync: false,
                ext: self.ext_seq,
            }),
            tag::SYNC => {
                self.unsynced = false;
                self.expect.push_back(Expect::Ready {
                    sync: true,
                    ext: self.ext_seq,
                });
            }
            xtag::EXECUTE => {
                h.queries += 1;
                self.unsynced = true;
                self.ext_seq = self.ext_seq.wrapping_add(1);
                self.expect.push_back(Expect::Execute);
            }
            xtag::COPY_DONE | tag::COPY_FAIL => {
                self.copy_in = false;
                if !self.expect.is_empty() {
                    self.expect.push_back(Expect::CopyEnd);
                }
            }
            _ => {}
        }
        self.release_due = false;
        Ok(Flow::Go)
    }

    /// A Bind's names are in `head`; writes the renamed header when the statement is one of the
    /// client's (the caller relays the rest of the message).
    fn on_bind(&mut self, head: &BindHead<'_>, body_len: usize) -> io::Result<BindOutcome> {
        if let Flow::End(e) = self.ensure_backend(Wait::Yes)? {
            return Ok(BindOutcome::End(e));
        }
        self.unsynced = true;
        self.ext_seq = self.ext_seq.wrapping_add(1);
        self.release_due = false;
        // A Parse injected for the statement goes (and is answered) before the Bind.
        let renamed = if self.skipping {
            None
        } else {
            self.prepare_for_use(head.statement)
        };
        self.expect.push_back(Expect::Bind);
        Ok(match renamed {
            Some(name) => {
                head.encode_renamed(&name, body_len, &mut self.to_server);
                BindOutcome::Renamed {
                    names_len: head.names_len,
                }
            }
            None => BindOutcome::AsIs,
        })
    }

    fn on_parse(&mut self, msg: &[u8]) -> io::Result<Flow> {
        let Ok(view) = ParseView::decode(&msg[5..]) else {
            self.client_error("08P01", "invalid Parse message");
            return Ok(Flow::End(TxEnd::ProtocolError));
        };
        if self.skipping {
            // Discarded by the server (an earlier message failed): relay it, expect nothing.
            self.to_server.extend_from_slice(msg);
            return Ok(Flow::Go);
        }
        let named = !view.name.is_empty() && self.prepared_enabled;
        // A named statement is checked on a backend at once when one is free, so that its errors come
        // where PostgreSQL gives them. When none is free it is prepared lazily, on the backend of the
        // transaction that first uses it (errors then come at that first use): waiting here would
        // deadlock a client that prepares synchronously while its other connections hold every
        // backend (pgbench -M prepared with more clients per thread than backends).
        let wait = if named { Wait::No } else { Wait::Yes };
        if let Flow::End(e) = self.ensure_backend(wait)? {
            return Ok(Flow::End(e));
        }
        let mut dirty = Dirty::default();
        scan_keywords(view.query(), &mut dirty);
        if let Some(h) = self.held.as_mut() {
            h.dirty.set(dirty.0);
        }
        if let Some(h) = self.held.as_mut() {
            if !view.name.is_empty() && !named {
                // Not renamed (max_prepared_statements = 0): the statement must not outlive the
                // transaction on a shared backend.
                h.dirty.set(Dirty::SQL_PREPARE);
            }
        }
        if !named {
            self.unsynced = true;
            self.ext_seq = self.ext_seq.wrapping_add(1);
            self.release_due = false;
            self.to_server.extend_from_slice(msg);
            self.expect.push_back(Expect::Parse {
                swallow: false,
                id: None,
                client: None,
            });
            return Ok(Flow::Go);
        }
        let id = statement_id(view.rest);
        let name = statement_name(&id);
        let mut parse = Vec::with_capacity(msg.len() + 40);
        view.encode_renamed(&name, &mut parse);
        let replaced = self
            .statements
            .get(view.name)
            .map(|s| s.parse.len())
            .unwrap_or(0);
        self.statement_bytes = self.statement_bytes - replaced + parse.len();
        if self.statement_bytes > MAX_STATEMENT_BYTES {
            self.client_error(
                "54000",
                "the client's prepared statements exceed pgcorral's limit (256 MB of statement text)",
            );
            return Ok(Flow::End(TxEnd::ProtocolError));
        }
        if self.held.is_none() || (self.backend_has(&id) && !self.uncertain(&id)) {
            self.expect.push_back(Expect::FakeParse {
                client: view.name.to_vec(),
                id,
            });
            self.drain_fakes();
        } else {
            self.inject_parse(&id, &parse, false, Some(view.name.to_vec()));
        }
        self.statements
            .insert(view.name.to_vec(), ClientStatement { id, dirty, parse });
        Ok(Flow::Go)
    }

    fn on_describe(&mut self, msg: &[u8]) -> io::Result<Flow> {
        let Ok(view) = TargetView::decode(&msg[5..]) else {
            self.client_error("08P01", "invalid Describe message");
            return Ok(Flow::End(TxEnd::ProtocolError));
        };
        if let Flow::End(e) = self.ensure_backend(Wait::Yes)? {
            return Ok(Flow::End(e));
        }
        if self.skipping {
            self.to_server.extend_from_slice(msg);
            return Ok(Flow::Go);
        }
        self.unsynced = true;
        self.ext_seq = self.ext_seq.wrapping_add(1);
        self.release_due = false;
        let renamed = if view.is_statement() {
            self.prepare_for_use(view.name)
        } else {
            None
        };
        match renamed {
            Some(name) => TargetView::encode(xtag::DESCRIBE, b'S', &name, &mut self.to_server),
            None => self.to_server.extend_from_slice(msg),
        }
        self.expect.push_back(Expect::Describe);
        Ok(Flow::Go)
    }

    fn on_close(&mut self, msg: &[u8]) -> io::Result<Flow> {
        let Ok(view) = TargetView::decode(&msg[5..]) else {
            self.client_error("08P01", "invalid Close message");
            return Ok(Flow::End(TxEnd::ProtocolError));
        };
        if self.skipping {
            if let Flow::End(e) = self.ensure_backend(Wait::Yes)? {
                return Ok(Flow::End(e));
            }
            self.to_server.extend_from_slice(msg);
            return Ok(Flow::Go);
        }
        if let Some(gone) = view
            .is_statement()
            .then(|| self.statements.remove(view.name))
            .flatten()
        {
            self.statement_bytes -= gone.parse.len();
            // The statement stays prepared on the backends (others may use it); the client's name is
            // gone, as if closed (and back if the server would have skipped this Close).
            self.expect.push_back(Expect::FakeClose {
                client: view.name.to_vec(),
                statement: gone,
            });
            self.drain_fakes();
            return Ok(Flow::Go);
        }
        if let Flow::End(e) = self.ensure_backend(Wait::Yes)? {
            return Ok(Flow::End(e));
        }
        if view.is_statement() && view.name.starts_with(b"pgc_") {
            // It may close one of pgcorral's own statements: the backend's set cannot be trusted.
            self.distrust_statements();
        }
        self.unsynced = true;
        self.ext_seq = self.ext_seq.wrapping_add(1);
        self.release_due = false;
        self.to_server.extend_from_slice(msg);
        self.expect.push_back(Expect::Close {
            swallow: false,
            victim: None,
        });
        Ok(Flow::Go)
    }

    /// For a client statement name used by Bind or Describe: makes sure the held backend has it and
    /// returns the name it has there (`None`: not a statement pgcorral renamed; relay as is).
    fn prepare_for_use(&mut self, client_name: &[u8]) -> Option<[u8; 36]> {
        if client_name.is_empty() || !self.prepared_enabled {
            return None;
        }
        let stmt = self.statements.get(client_name)?;
        let id = stmt.id;
        if let Some(h) = self.held.as_mut() {
            h.dirty.set(stmt.dirty.0);
        }
        if !self.backend_has(&id) || self.uncertain(&id) {
            let parse = stmt.parse.clone();
            self.inject_parse(&id, &parse, true, None);
        }
        Some(statement_name(&id))
    }

    /// Whether the backend's record of `id` may be wrong: pgcorral prepared (or evicted) it in an
    /// earlier batch whose answer has not come yet. If that batch fails, the server skips the Parse
    /// (or the Close) while this batch, sent after the earlier Sync, is executed: so prepare it again,
    /// behind a Close (harmless when the statement does not exist).
    fn uncertain(&self, id: &StatementId) -> bool {
        let mut pending = false;
        for e in &self.expect {
            match e {
                Expect::Parse { id: Some(p), .. } if p == id => pending = true,
                Expect::Close {
                    victim: Some(v), ..
                } if v == id => pending = true,
                Expect::Ready { sync: true, .. } if pending => return true,
                _ => {}
            }
        }
        false
    }

    fn backend_has(&self, id: &StatementId) -> bool {
        let Some(h) = self.held.as_ref() else {
            return false;
        };
        self.ctx
            .region
            .prepared(h.lease.slot)
            .with(h.lease.generation, |set| set.touch(id))
    }

    /// Prepares statement `id` on the held backend (closing the least recently used one first when
    /// the backend's set is full). `swallow`: the client did not ask for this Parse.
    fn inject_parse(
        &mut self,
        id: &StatementId,
        parse: &[u8],
        swallow: bool,
        client: Option<Vec<u8>>,
    ) {
        let Some(h) = self.held.as_ref() else {
            return;
        };
        let cell = self.ctx.region.prepared(h.lease.slot);
        let (known, victim) = cell.with(h.lease.generation, |set| {
            let known = set.touch(id);
            let victim = if known { None } else { set.victim() };
            if let Some(v) = victim {
                set.remove(&v);
            }
            set.insert(*id);
            (known, victim)
        });
        if known || self.uncertain(id) {
            // Re-preparing a statement the backend may have: close it first (a no-op if it does
            // not exist) so that the Parse cannot fail with "already exists".
            TargetView::encode(xtag::CLOSE, b'S', &statement_name(id), &mut self.to_server);
            self.expect.push_back(Expect::Close {
                swallow: true,
                victim: None,
            });
        }
        if let Some(v) = victim {
            TargetView::encode(xtag::CLOSE, b'S', &statement_name(&v), &mut self.to_server);
            self.expect.push_back(Expect::Close {
                swallow: true,
                victim: Some(v),
            });
        }
        self.to_server.extend_from_slice(parse);
        self.expect.push_back(Expect::Parse {
            swallow,
            id: Some(*id),
            client,
        });
    }

    // ---- server side -------------------------------------------------------------------------

    /// Handles `n` bytes the server sent (in `sin`).
    fn process_server(&mut self, n: usize) -> io::Result<Flow> {
        let mut i = 0;
        while i < n {
            if self.sr.header_have < 5 {
                let take = (5 - self.sr.header_have).min(n - i);
                self.sr.header[self.sr.header_have..self.sr.header_have + take]
                    .copy_from_slice(&self.sin.data[i..i + take]);
                self.sr.header_have += take;
                i += take;
                if self.sr.header_have < 5 {
                    break;
                }
                let t = self.sr.header[0];
                let len = u32::from_be_bytes([
                    self.sr.header[1],
                    self.sr.header[2],
                    self.sr.header[3],
                    self.sr.header[4],
                ]) as usize;
                if !(4..=MAX_MESSAGE_LENGTH).contains(&len) {
                    self.client_error("08P01", "invalid message length from server");
                    self.server_fatal = true;
                    return Ok(Flow::End(TxEnd::ServerGone));
                }
                self.sr.tag = t;
                self.sr.body_left = len - 4;
                while matches!(self.expect.front(), Some(Expect::CopyEnd)) {
                    self.expect.pop_front();
                }
                self.sr.forward = !self.swallows(t);
                self.sr.peek.clear();
                self.sr.peek_want = if matches!(
                    t,
                    tag::READY_FOR_QUERY | tag::ERROR_RESPONSE | xtag::COMMAND_COMPLETE
                ) {
                    self.sr.body_left.min(PEEK)
                } else {
                    0
                };
                if self.sr.forward && !self.discard {
                    self.to_client.extend_from_slice(&self.sr.header);
                }
            } else {
                let take = self.sr.body_left.min(n - i);
                let chunk = &self.sin.data[i..i + take];
                if self.sr.peek.len() < self.sr.peek_want {
                    let k = (self.sr.peek_want - self.sr.peek.len()).min(take);
                    self.sr.peek.extend_from_slice(&chunk[..k]);
                }
                if self.sr.forward && !self.discard {
                    self.to_client.extend_from_slice(chunk);
                }
                self.sr.body_left -= take;
                i += take;
            }
            if self.sr.header_have == 5 && self.sr.body_left == 0 {
                self.sr.header_have = 0;
                self.more_in_read = i < n;
                if let Flow::End(e) = self.on_server_message()? {
                    return Ok(Flow::End(e));
                }
            }
        }
        Ok(Flow::Go)
    }

    /// Whether the message starting now answers a request pgcorral injected.
    fn swallows(&self, t: u8) -> bool {
        match self.expect.front() {
            Some(Expect::Parse { swallow: true, .. }) => t == xtag::PARSE_COMPLETE,
            Some(Expect::Close { swallow: true, .. }) => t == xtag::CLOSE_COMPLETE,
            _ => false,
        }
    }

    /// A whole server message went by.
    fn on_server_message(&mut self) -> io::Result<Flow> {
        let t = self.sr.tag;
        match t {
            tag::READY_FOR_QUERY => {
                self.status = self.sr.peek.first().copied().unwrap_or(b'I');
                self.copy_in = false;
                let mut answered = false;
                while let Some(e) = self.expect.pop_front() {
                    if let Expect::Ready { sync, ext } = e {
                        // A Query or FunctionCall ends the implicit transaction of extended
                        // messages sent before it.
                        if !sync && ext == self.ext_seq {
                            self.unsynced = false;
                        }
                        answered = true;
                        break;
                    }
                    self.forget_failed(e);
                }
                if !answered {
                    // A ReadyForQuery nothing asked for: pgcorral lost track of this stream, and
                    // the backend cannot be trusted with another client.
                    log::warn!("unexpected ReadyForQuery from the server; closing the session");
                    self.client_error("08P01", "pgcorral lost track of the server's answers");
                    self.server_fatal = true;
                    return Ok(Flow::End(TxEnd::ServerGone));
                }
                self.drain_fakes();
                if self.expect.is_empty() && self.status == b'I' && !self.unsynced {
                    // Bytes after the ReadyForQuery in this read (a notification) are this
                    // client's: give the backend back once they are through.
                    if self.can_release() && !self.more_in_read {
                        self.release(true);
                    } else {
                        self.release_due = true;
                    }
                }
            }
            tag::ERROR_RESPONSE => {
                let fatal = ReceivedError::parse(&self.sr.peek).is_fatal();
                if fatal {
                    self.server_fatal = true;
                    if let Some(h) = self.held.as_mut() {
                        h.lost_statements = true;
                    }
                    return Ok(Flow::Go);
                }
                self.copy_in = false;
                // In the extended protocol the server skips to the next Sync (Query and FunctionCall
                // included): so do the answers. A Query's own error is followed by its ReadyForQuery.
                if !matches!(self.expect.front(), Some(Expect::Ready { .. }) | None) {
                    let exists = ReceivedError::parse(&self.sr.peek).code == b"42P05";
                    if let (true, Some(Expect::Parse { id: Some(id), .. }), Some(h)) =
                        (exists, self.expect.front(), self.held.as_ref())
                    {
                        // The backend has the statement after all: remember it, never re-inject.
                        let id = *id;
                        self.ctx
                            .region
                            .prepared(h.lease.slot)
                            .with(h.lease.generation, |set| set.insert(id));
                        self.expect.pop_front();
                    }
                    while let Some(e) = self.expect.front() {
                        if matches!(e, Expect::Ready { sync: true, .. }) {
                            break;
                        }
                        let e = self.expect.pop_front().expect("front exists");
                        self.forget_failed(e);
                    }
                    if self.expect.is_empty() {
                        self.skipping = true;
                    }
                }
            }
            xtag::PARSE_COMPLETE => self.pop_if(|e| matches!(e, Expect::Parse { .. })),
            xtag::BIND_COMPLETE => self.pop_if(|e| matches!(e, Expect::Bind)),
            xtag::CLOSE_COMPLETE => self.pop_if(|e| matches!(e, Expect::Close { .. })),
            xtag::ROW_DESCRIPTION | xtag::NO_DATA => self.pop_if(|e| matches!(e, Expect::Describe)),
            xtag::COMMAND_COMPLETE => {
                self.copy_in = false;
                let mut lost = false;
                if let Some(h) = self.held.as_mut() {
                    note_command_tag(&self.sr.peek, &mut h.dirty, &mut lost);
                }
                if lost {
                    // DISCARD ALL / DEALLOCATE: from now on, prepare everything again here.
                    self.distrust_statements();
                }
                self.pop_if(|e| matches!(e, Expect::Execute))
            }
            xtag::EMPTY_QUERY | xtag::PORTAL_SUSPENDED => {
                self.pop_if(|e| matches!(e, Expect::Execute))
            }
            tag::PARAMETER_STATUS => {
                if let Some(h) = self.held.as_mut() {
                    h.dirty.set(Dirty::GUC);
                }
            }
            tag::COPY_IN_RESPONSE => {
                // The client may have ended the COPY already (it sent everything in one write).
                self.copy_in = !self.expect.iter().any(|e| matches!(e, Expect::CopyEnd));
                // Syncs sent after the Execute that started this COPY reach the server in COPY IN
                // mode and are ignored there: no ReadyForQuery will answer them.
                // Only those sent before the client ended the COPY: later ones are answered.
                if matches!(self.expect.front(), Some(Expect::Execute)) {
                    let mut in_copy = true;
                    let keep: VecDeque<Expect> = self
                        .expect
                        .drain(..)
                        .enumerate()
                        .filter(|(i, e)| {
                            if matches!(e, Expect::CopyEnd) {
                                in_copy = false;
                            }
                            *i == 0 || !(in_copy && matches!(e, Expect::Ready { sync: true, .. }))
                        })
                        .map(|(_, e)| e)
                        .collect();
                    self.expect = keep;
                }
            }
            _ => {}
        }
        self.drain_fakes();
        Ok(Flow::Go)
    }

    /// Pops the front expectation when the message answers it (other messages — notices,
    /// notifications — answer nothing).
    fn pop_if(&mut self, answers: impl Fn(&Expect) -> bool) {
        if self.expect.front().is_some_and(answers) {
            self.expect.pop_front();
            self.drain_fakes();
        }
    }

    /// A request the server skipped or refused: a statement its Parse did not create is forgotten.
    fn forget_failed(&mut self, e: Expect) {
        if let Expect::FakeClose { client, statement } = e {
            // The server would have skipped this Close: the statement is still the client's.
            self.statement_bytes += statement.parse.len();
            self.statements.insert(client, statement);
            return;
        }
        let failed_client_parse = match &e {
            Expect::Parse {
                client: Some(name),
                id: Some(id),
                ..
            }
            | Expect::FakeParse { client: name, id } => Some((name, id)),
            _ => None,
        };
        if let Some((name, id)) = failed_client_parse {
            if self.statements.get(name).is_some_and(|s| &s.id == id) {
                if let Some(gone) = self.statements.remove(name) {
                    self.statement_bytes -= gone.parse.len();
                }
            }
        }
        let Some(h) = self.held.as_mut() else {
            return;
        };
        let set = self.ctx.region.prepared(h.lease.slot);
        match &e {
            Expect::Parse { id: Some(id), .. } => set.with(h.lease.generation, |s| s.remove(id)),
            Expect::Close {
                swallow: true,
                victim: Some(v),
            } => {
                // The eviction did not happen: the backend still has the statement.
                let restored = set.with(h.lease.generation, |s| s.insert(*v));
                if !restored {
                    h.lost_statements = true;
                    h.dirty.set(Dirty::SQL_PREPARE);
                    set.with(h.lease.generation, |s| s.clear());
                }
            }
            _ => {}
        }
    }

    /// The held backend's statements are no longer known: forget the record now (statements used from
    /// here on are prepared again) and clear the backend before it is given back.
    fn distrust_statements(&mut self) {
        if let Some(h) = self.held.as_mut() {
            h.lost_statements = true;
            h.dirty.set(Dirty::SQL_PREPARE);
            self.ctx
                .region
                .prepared(h.lease.slot)
                .with(h.lease.generation, |s| s.clear());
        }
    }

    /// Sends pgcorral's own answers that are next in line.
    fn drain_fakes(&mut self) {
        if !self.sr.at_boundary() {
            return;
        }
        while let Some(
            Expect::FakeReady
            | Expect::FakeParse { .. }
            | Expect::FakeClose { .. }
            | Expect::CopyEnd,
        ) = self.expect.front()
        {
            let t = match self.expect.front() {
                Some(Expect::FakeReady) => tag::READY_FOR_QUERY,
                Some(Expect::FakeParse { .. }) => xtag::PARSE_COMPLETE,
                Some(Expect::FakeClose { .. }) => xtag::CLOSE_COMPLETE,
                _ => {
                    self.expect.pop_front();
                    continue;
                }
            };
            if !self.discard {
                if t == tag::READY_FOR_QUERY {
                    pgcorral_wire::messages::ready_for_query(&mut self.to_client, b'I');
                } else {
                    extended::empty_message(t, &mut self.to_client);
                }
            }
            self.expect.pop_front();
        }
    }

    // ---- holding and releasing backends -------------------------------------------------------

    fn can_release(&self) -> bool {
        matches!(self.cmsg, ClientMessage::Boundary)
            && self.to_server_at == self.to_server.len()
            && self.sr.at_boundary()
            && !self.server_fatal
    }

    /// Checks a backend out for the transaction that starts now, if none is held.
    fn ensure_backend(&mut self, wait: Wait) -> io::Result<Flow> {
        if self.held.is_some() {
            return Ok(Flow::Go);
        }
        let ctx = self.ctx;
        let mut timeout = match wait {
            Wait::Yes => ctx.config.main.blocking_timeout,
            Wait::No => Duration::ZERO,
        };
        let mut may_park = false;
        if let Some(hooks) = self.shared.relay.as_ref() {
            if wait == Wait::Yes {
                // The relay never sleeps for one client: look, and park the client when none is
                // free. Clients of the same pool key already parked go first.
                if !hooks.resuming.get() && hooks.parked_for(self.c.key.hash) {
                    return Ok(Flow::End(TxEnd::Parked));
                }
                may_park = true;
                timeout = Duration::ZERO;
            }
        } else {
            // The client may wait for what is already due to it while this worker sleeps in the
            // queue.
            let _ = self.flush_client();
        }
        let any: fn(&SlotData) -> bool = |_| true;
        let checkout = pool::checkout(
            ctx,
            &self.c.key,
            self.c.rule,
            Some(&any),
            timeout,
            Some(&mut self.shared.fds.borrow_mut()),
        );
        let mut lease = match checkout {
            Ok(c) => c.lease,
            Err(PoolError::Full) if wait == Wait::No => return Ok(Flow::Go),
            Err(PoolError::Full) if may_park => return Ok(Flow::End(TxEnd::Parked)),
            Err(PoolError::Full) => {
                self.client_error(
                    "53300",
                    "no server connection became free within blocking_timeout",
                );
                return Ok(Flow::End(TxEnd::PoolFull));
            }
            Err(PoolError::ShuttingDown) => {
                self.client_error("57P01", "pgcorral is shutting down");
                return Ok(Flow::End(TxEnd::Stopped));
            }
            Err(e) => {
                self.client_error("08006", &e.to_string());
                return Ok(Flow::End(TxEnd::ServerGone));
            }
        };
        let slot = ctx.region.slot(lease.slot);
        let mut dirty = Dirty::default();
        if lease.fresh {
            let credential = self
                .c
                .credential
                .clone()
                .unwrap_or(BackendCredential::Password(String::new()));
            let deadline = Instant::now() + ctx.config.main.authentication_timeout;
            match backend::open_as_pooler(
                ctx,
                &mut lease,
                &self.c.startup,
                &credential,
                &self.rng,
                deadline,
            ) {
                Ok((_, true)) => {}
                Ok((_, false)) | Err(_) => {
                    let user = self.c.key.user.clone();
                    pool::kill(ctx, lease);
                    self.note_release();
                    self.client_error(
                        "08006",
                        &format!(
                            "pgcorral could not open a server connection for user \"{user}\" \
                             (transaction mode logs in as the client: give pgcorral the user's \
                             password in its users vault)"
                        ),
                    );
                    return Ok(Flow::End(TxEnd::ServerGone));
                }
            }
        } else {
            let setup = slot_setup(ctx, lease.slot, &self.c.startup, &self.startup_encoded);
            if !setup.is_empty() {
                let fd = lease.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
                match backend::run_setup(fd, &setup, Instant::now() + backend::RESET_TIMEOUT) {
                    Ok(changed) => {
                        let reported = ctx.region.slot_data(lease.slot).with_data(|d| {
                            crate::worker::reported_params(d.session_reported(), &changed)
                        });
                        if !self.keep_session_params(lease.slot, &reported) {
                            dirty.set(Dirty::GUC);
                        }
                    }
                    Err(backend::SetupError::Server(message)) => {
                        pool::give_back(ctx, lease);
                        self.note_release();
                        self.client_error("22023", &message);
                        return Ok(Flow::End(TxEnd::ProtocolError));
                    }
                    Err(backend::SetupError::Io(_)) => {
                        pool::kill(ctx, lease);
                        self.note_release();
                        return self.ensure_backend(Wait::Yes);
                    }
                }
            }
        }
        slot.set_client_key(self.c.client_key.0, self.c.client_key.1);
        let fd = lease.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        if let Some(hooks) = self.shared.relay.as_ref() {
            if let Err(e) = hooks.hold(lease.slot, lease.generation, fd, self.index) {
                log::warn!("slot {}: cannot watch the backend: {e}", lease.slot);
                pool::kill(ctx, lease);
                self.note_release();
                self.client_error("08006", "pgcorral could not watch a server connection");
                return Ok(Flow::End(TxEnd::ServerGone));
            }
        }
        self.held = Some(Held {
            lease,
            fd,
            dirty,
            lost_statements: false,
            queries: 0,
        });
        self.skipping = false;
        self.unsynced = false;
        self.release_due = false;
        self.server_readable = false; // an idle backend has nothing to say until it gets a query
        self.server_writable = true;
        self.status = b'I';
        Ok(Flow::Go)
    }

    /// Ends the transaction on the held backend: undoes the session state the client changed and
    /// gives the backend back (or closes it when that fails). `counted`: a client transaction ended.
    fn release(&mut self, counted: bool) {
        let Some(h) = self.take_held() else {
            return;
        };
        let ctx = self.ctx;
        self.server_readable = false;
        ctx.region
            .slot_stats(h.lease.slot)
            .add(h.queries, counted as u64);
        let main = &ctx.config.main;
        let shared = Rc::clone(&self.shared);
        let dirty_sql;
        let (sql, drops_statements, resets_params) = if main.server_reset_query_always {
            // A query that does not reset every setting could leave this client's SETs, or reset
            // only some of them: either way the slot's record of the session's parameters would be
            // wrong, so every setting is reset with it, in one round trip.
            let (sql, deallocates) = shared
                .reset_always
                .get_or_init(|| backend::resetting_all(&main.server_reset_query));
            (sql.as_str(), *deallocates, true)
        } else {
            dirty_sql = h.dirty.reset_sql();
            (
                dirty_sql.as_str(),
                h.dirty.has(Dirty::SQL_PREPARE) || h.lost_statements,
                h.dirty.has(Dirty::GUC),
            )
        };
        if drops_statements || h.lost_statements {
            ctx.region
                .prepared(h.lease.slot)
                .with(h.lease.generation, |set| set.clear());
        }
        if !sql.is_empty() {
            log::debug!("slot {}: resetting session state: {sql}", h.lease.slot);
            if backend::run_setup(h.fd, sql, Instant::now() + backend::RESET_TIMEOUT).is_err() {
                log::warn!(
                    "slot {}: resetting the backend failed; closing it",
                    h.lease.slot
                );
                pool::kill(ctx, h.lease);
                return;
            }
            if resets_params {
                // The session is back at the parameters the backend was opened with.
                ctx.region
                    .slot_data(h.lease.slot)
                    .with_data_mut(|d| d.forget_session_params());
            }
        }
        if let Some((slot, generation, fd)) = pool::give_back_keeping(ctx, h.lease) {
            self.shared.fds.borrow_mut().put(slot, generation, fd);
        }
    }

    /// In the shared relay: a backend was given back or closed outside `take_held` (capacity may be
    /// free for a parked client).
    fn note_release(&self) {
        if let Some(hooks) = self.shared.relay.as_ref() {
            hooks.releases.set(hooks.releases.get() + 1);
        }
    }

    /// Lets go of the held backend (in the shared relay, its events go to nobody from now on).
    fn take_held(&mut self) -> Option<Held> {
        let h = self.held.take()?;
        if let Some(hooks) = self.shared.relay.as_ref() {
            hooks.let_go(h.lease.slot);
        }
        Some(h)
    }

    /// After the relay: give back, drain, or kill the held backend.
    pub fn finish(&mut self, end: TxEnd) {
        if end == TxEnd::Stopped {
            self.client_error(
                "57P01",
                "terminating connection due to administrator command",
            );
        }
        let Some(h) = self.held.as_ref() else {
            return;
        };
        let ctx = self.ctx;
        let slot = h.lease.slot;
        let usable =
            matches!(end, TxEnd::ClientTerminated | TxEnd::ClientGone) && !self.server_fatal;
        if !usable {
            let h = self.take_held().expect("held");
            pool::kill(ctx, h.lease);
            return;
        }
        if matches!(self.cmsg, ClientMessage::Boundary) && self.to_server_at < self.to_server.len()
        {
            // Whole messages the client sent before its Terminate or its close still go to the
            // server, as they would without a pooler: their answers are already expected, and the
            // drain below rolls back what they did. (The relay can read a batch and the client's
            // close in one step, before it wrote the batch on; judging the backend half-written
            // then would close a backend that is fine.)
            let fd = self.held_fd();
            let deadline = Instant::now() + backend::RESET_TIMEOUT;
            if crate::io::write_all(fd, &self.to_server[self.to_server_at..], deadline).is_ok() {
                self.to_server.clear();
                self.to_server_at = 0;
            }
        }
        if self.expect.is_empty() && self.status == b'I' && !self.unsynced && self.can_release() {
            self.release(false);
            return;
        }
        // The client left mid-transaction or mid-result. A message half sent cannot be completed.
        let half_sent = !matches!(self.cmsg, ClientMessage::Boundary)
            || self.to_server_at < self.to_server.len();
        if half_sent || !self.drain(end == TxEnd::ClientGone) {
            log::debug!("slot {slot}: backend left in an unknown state; closing it");
            let h = self.take_held().expect("held");
            pool::kill(ctx, h.lease);
            return;
        }
        self.release(false);
    }

    /// Brings the held backend to idle after its client left: cancel what runs, end a COPY, Sync,
    /// read every answer owed, roll back. False when that failed.
    fn drain(&mut self, cancel: bool) -> bool {
        let ctx = self.ctx;
        let Some(h) = self.held.as_ref() else {
            return false;
        };
        let (fd, slot) = (h.fd, h.lease.slot);
        self.discard = true;
        let deadline = Instant::now() + backend::RESET_TIMEOUT;
        let server = &ctx.config.servers[ctx
            .region
            .slot(slot)
            .server()
            .min(ctx.config.servers.len() - 1)];
        // A client that vanished does not want its query finished; one that said Terminate does.
        if cancel && !self.expect.is_empty() {
            let _ = backend::cancel(server, ctx.region.slot(slot).backend_key());
        }
        let mut msgs = Vec::with_capacity(64);
        if self.copy_in {
            msgs.push(tag::COPY_FAIL);
            let text = b"client disconnected\0";
            msgs.extend_from_slice(&((4 + text.len()) as u32).to_be_bytes());
            msgs.extend_from_slice(text);
            self.copy_in = false;
        }
        if self.unsynced && !self.skipping {
            // A Sync would commit the implicit transaction's work: make it fail first, so the Sync
            // rolls it back (Execute of a portal that cannot exist).
            msgs.push(xtag::EXECUTE);
            let portal = b"pgcorral: client left\0";
            msgs.extend_from_slice(&((4 + portal.len() + 4) as u32).to_be_bytes());
            msgs.extend_from_slice(portal);
            msgs.extend_from_slice(&0u32.to_be_bytes());
            self.expect.push_back(Expect::Execute);
        }
        self.unsynced = false;
        extended::empty_message(tag::SYNC, &mut msgs);
        self.expect.push_back(Expect::Ready {
            sync: true,
            ext: self.ext_seq,
        });
        if crate::io::write_all(fd, &msgs, deadline).is_err() {
            return false;
        }
        while !self.expect.is_empty() {
            let n = match crate::io::read_some(fd, &mut self.sin.data, deadline) {
                Ok(n) => n,
                Err(_) => return false,
            };
            match self.process_server(n) {
                Ok(Flow::Go) => {}
                _ => return false,
            }
            if self.server_fatal {
                return false;
            }
            if self.held.is_none() {
                return true; // released at the last ReadyForQuery
            }
        }
        if self.status != b'I' {
            if backend::run_setup(fd, "ROLLBACK", deadline).is_err() {
                return false;
            }
            self.status = b'I';
        }
        true
    }

    /// Sends the client a FATAL ErrorResponse (the relay's blocking_timeout).
    pub fn fail(&mut self, code: &str, message: &str) {
        self.client_error(code, message);
    }

    /// Sends the client an ErrorResponse (FATAL: the session ends after it).
    fn client_error(&mut self, code: &str, message: &str) {
        if self.discard {
            return;
        }
        let _ = self.flush_client();
        let mut buf = Vec::with_capacity(96 + message.len());
        pgcorral_wire::messages::error_response(&mut buf, &ErrorFields::fatal(code, message));
        let _ = crate::io::write_all(
            self.c.fd,
            &buf,
            crate::io::deadline_in(Duration::from_millis(500)),
        );
    }
}

/// SET statements that make a pooled backend match this client's startup parameters (`encoded`: the
/// same parameters as a slot records them, to skip the work when the backend's session already has
/// exactly these, as it does for every transaction of a uniform pool).
fn slot_setup(ctx: &Context, slot: usize, startup: &StartupMessage, encoded: &[u8]) -> String {
    ctx.region.slot_data(slot).with_data(|record| {
        if record.session_params() == encoded {
            String::new()
        } else {
            crate::worker::setup_sql(startup, record)
        }
    })
}

/// Writes what it can; Err when the peer is gone.
fn write_some(fd: RawFd, bytes: &[u8]) -> Result<usize, ()> {
    // SAFETY: fd is the client socket or the held backend's socket, open for the call.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut done = 0;
    while done < bytes.len() {
        match nix::unistd::write(bfd, &bytes[done..]) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Err(()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_found_across_pieces() {
        let text =
            b"select pg_advisory_lock(1); create TEMP table t(); select set_config('a','b',false)";
        for cut in 0..text.len() {
            let mut d = Dirty::default();
            let mut s = KeywordScan::default();
            s.feed(&text[..cut], &mut d);
            s.feed(&text[cut..], &mut d);
            assert!(d.has(Dirty::ADVISORY), "cut {cut}");
            assert!(d.has(Dirty::TEMP), "cut {cut}");
            assert!(d.has(Dirty::GUC), "cut {cut}");
        }
        // Byte by byte.
        let mut d = Dirty::default();
        let mut s = KeywordScan::default();
        for b in b"x AdViSoRy y" {
            s.feed(std::slice::from_ref(b), &mut d);
        }
        assert_eq!(d, Dirty(Dirty::ADVISORY));
        let mut d = Dirty::default();
        KeywordScan::default().feed(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            &mut d,
        );
        assert_eq!(d, Dirty::default(), "plain queries leave nothing to reset");
    }

    #[test]
    fn command_tags() {
        let mut d = Dirty::default();
        let mut lost = false;
        note_command_tag(b"SET\0", &mut d, &mut lost);
        note_command_tag(b"LISTEN\0", &mut d, &mut lost);
        note_command_tag(b"SELECT 1\0", &mut d, &mut lost);
        note_command_tag(b"SETTLE\0", &mut d, &mut lost);
        assert_eq!(d, Dirty(Dirty::GUC | Dirty::LISTEN));
        assert!(!lost);
        note_command_tag(b"DISCARD ALL\0", &mut d, &mut lost);
        assert!(lost);
        assert_eq!(
            Dirty(Dirty::GUC | Dirty::TEMP).reset_sql(),
            "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;DISCARD TEMP;"
        );
    }

    #[test]
    fn statement_names_fit_namedatalen() {
        let id = statement_id(b"SELECT 1\0\0\0");
        let name = statement_name(&id);
        assert_eq!(name.len(), 36);
        assert!(name.starts_with(b"pgc_"));
        assert_ne!(statement_id(b"SELECT 2\0\0\0"), id);
    }
}
