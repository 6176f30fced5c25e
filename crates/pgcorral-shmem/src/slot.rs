//! A connection slot: one backend connection's state, shared by every process.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Bytes kept for a user, database or application name (PostgreSQL's NAMEDATALEN is 64).
pub const NAME_LEN: usize = 64;
/// Bytes kept for the startup parameters a backend was opened with.
pub const STARTUP_LEN: usize = 1024;
/// Bytes kept for the ParameterStatus messages a backend sent at startup.
pub const PARAMS_LEN: usize = 2048;

/// The states of pgagroal's connection slots.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    NotInit = -2,
    Init = -1,
    Free = 0,
    InUse = 1,
    Gracefully = 2,
    Flush = 3,
    IdleCheck = 4,
    MaxConnectionAge = 5,
    Validation = 6,
    Remove = 7,
}

impl SlotState {
    fn from_i32(v: i32) -> SlotState {
        match v {
            -1 => SlotState::Init,
            0 => SlotState::Free,
            1 => SlotState::InUse,
            2 => SlotState::Gracefully,
            3 => SlotState::Flush,
            4 => SlotState::IdleCheck,
            5 => SlotState::MaxConnectionAge,
            6 => SlotState::Validation,
            7 => SlotState::Remove,
            _ => SlotState::NotInit,
        }
    }

    /// Lower-case name for status output and logs.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::NotInit => "not_init",
            SlotState::Init => "init",
            SlotState::Free => "free",
            SlotState::InUse => "in_use",
            SlotState::Gracefully => "gracefully",
            SlotState::Flush => "flush",
            SlotState::IdleCheck => "idle_check",
            SlotState::MaxConnectionAge => "max_connection_age",
            SlotState::Validation => "validation",
            SlotState::Remove => "remove",
        }
    }
}

/// How the backend of a slot authenticated its first client, which decides how a later client of the
/// same user may be verified without a stored secret.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Unknown = 0,
    Trust = 1,
    Password = 2,
    Md5 = 3,
    Scram = 4,
    /// pgcorral logged in itself with a secret it holds (vault or auth_query): any client pgcorral
    /// verified may reuse the backend.
    Pooler = 5,
}

impl AuthMethod {
    fn from_u8(v: u8) -> AuthMethod {
        match v {
            1 => AuthMethod::Trust,
            2 => AuthMethod::Password,
            3 => AuthMethod::Md5,
            4 => AuthMethod::Scram,
            5 => AuthMethod::Pooler,
            _ => AuthMethod::Unknown,
        }
    }
}

/// A fixed-capacity byte string stored inline in the region.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FixedBytes<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> FixedBytes<N> {
    /// Stores `value`; returns false (and stores nothing) when it does not fit.
    pub fn set(&mut self, value: &[u8]) -> bool {
        if value.len() > N {
            self.len = 0;
            return false;
        }
        self.bytes[..value.len()].copy_from_slice(value);
        self.len = value.len() as u16;
        true
    }
    /// The stored bytes.
    pub fn get(&self) -> &[u8] {
        &self.bytes[..(self.len as usize).min(N)]
    }
    /// The stored bytes as text (lossy: names are UTF-8 when pgcorral stored them).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.get()).unwrap_or("")
    }
}

/// The non-atomic part of a slot, written only by the process that owns the slot (state INIT or
/// IN_USE with its PID as owner) and read by others only after a compare-and-swap handed it over.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SlotData {
    pub user: FixedBytes<NAME_LEN>,
    pub database: FixedBytes<NAME_LEN>,
    pub appname: FixedBytes<NAME_LEN>,
    /// The `options` startup parameter: it cannot be changed with SET, so only equal values share.
    pub options: FixedBytes<NAME_LEN>,
    pub auth_method: u8,
    /// For a backend that asked for a cleartext password: SHA-256(salt ‖ password), never the password.
    pub password_salt: [u8; 16],
    pub password_hash: [u8; 32],
    /// Startup parameters the backend was opened with, as `name\0value\0` pairs.
    pub startup: FixedBytes<STARTUP_LEN>,
    /// ParameterStatus messages the backend sent at startup, as received.
    pub params: FixedBytes<PARAMS_LEN>,
    /// When `current_set` is 1: the startup parameters the backend's session has now, because a
    /// client with other parameters SET them (transaction pipeline). Keeping them, instead of
    /// resetting after every transaction, means clients with the same parameters pay the SET once
    /// per backend, not once per transaction.
    pub current: FixedBytes<STARTUP_LEN>,
    /// With `current`: the ParameterStatus values of the session now (what a login's greeting reports).
    pub current_params: FixedBytes<PARAMS_LEN>,
    pub current_set: u8,
}

impl Default for SlotData {
    fn default() -> Self {
        // SAFETY: SlotData is plain bytes and integers; all-zero is a valid (empty) value.
        unsafe { std::mem::zeroed() }
    }
}

impl SlotData {
    /// The authentication method recorded for this backend.
    pub fn auth(&self) -> AuthMethod {
        AuthMethod::from_u8(self.auth_method)
    }

    /// The startup parameters the backend's session has now, as `name\0value\0` pairs.
    pub fn session_params(&self) -> &[u8] {
        if self.current_set != 0 {
            self.current.get()
        } else {
            self.startup.get()
        }
    }

    /// The ParameterStatus messages that describe the session now.
    pub fn session_reported(&self) -> &[u8] {
        if self.current_set != 0 {
            self.current_params.get()
        } else {
            self.params.get()
        }
    }

    /// Records that the session's startup parameters are now `encoded`, reported by the server as the
    /// ParameterStatus messages `reported` (false, and nothing recorded, when they do not fit: the
    /// caller must then reset the session after use).
    pub fn set_session_params(&mut self, encoded: &[u8], reported: &[u8]) -> bool {
        let fits = self.current.set(encoded) && self.current_params.set(reported);
        self.current_set = fits as u8;
        fits
    }

    /// Records that the session is back at the parameters it was opened with (RESET ALL, DISCARD ALL).
    pub fn forget_session_params(&mut self) {
        self.current_set = 0;
    }
}

/// One connection slot: the atomics every process reads when it looks for a backend, 64-byte aligned
/// so that slots do not share cache lines. The slot's larger data block lives in a separate array
/// ([`SlotDataCell`], via `Region::slot_data`), so a scan of all slots touches only a few pages.
#[repr(C, align(64))]
pub struct Slot {
    state: AtomicI32,
    generation: AtomicU32,
    owner: AtomicI32,
    server: AtomicU16,
    in_transaction: AtomicU16,
    rule: AtomicI32,
    backend_pid: AtomicI32,
    backend_secret: AtomicI32,
    client_pid: AtomicI32,
    client_secret: AtomicI32,
    pool_key: AtomicU64,
    start_time: AtomicI64,
    last_use: AtomicI64,
}

impl Slot {
    /// The current state.
    pub fn state(&self) -> SlotState {
        SlotState::from_i32(self.state.load(Ordering::Acquire))
    }

    /// Moves the state from `from` to `to` if it is still `from`. The only way states change.
    pub fn transition(&self, from: SlotState, to: SlotState) -> bool {
        self.state
            .compare_exchange(from as i32, to as i32, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Generation: bumped each time the slot gets a new backend connection.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a new generation (call while holding the slot in INIT).
    pub fn new_generation(&self) -> u32 {
        self.generation
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1)
    }

    pub fn owner(&self) -> i32 {
        self.owner.load(Ordering::Acquire)
    }
    pub fn set_owner(&self, pid: i32) {
        self.owner.store(pid, Ordering::Release)
    }
    pub fn server(&self) -> usize {
        self.server.load(Ordering::Acquire) as usize
    }
    pub fn set_server(&self, server: usize) {
        self.server
            .store(server.min(u16::MAX as usize) as u16, Ordering::Release)
    }
    /// The limit rule the backend counts against, if any.
    pub fn rule(&self) -> Option<usize> {
        let r = self.rule.load(Ordering::Acquire);
        (r >= 0).then_some(r as usize)
    }
    pub fn set_rule(&self, rule: Option<usize>) {
        self.rule
            .store(rule.map(|r| r as i32).unwrap_or(-1), Ordering::Release)
    }
    /// The key of the backend (from its BackendKeyData), to cancel its queries.
    pub fn backend_key(&self) -> (i32, i32) {
        (
            self.backend_pid.load(Ordering::Acquire),
            self.backend_secret.load(Ordering::Acquire),
        )
    }
    pub fn set_backend_key(&self, pid: i32, secret: i32) {
        self.backend_pid.store(pid, Ordering::Release);
        self.backend_secret.store(secret, Ordering::Release);
    }
    /// The key pgcorral gave the client now using this slot.
    pub fn client_key(&self) -> (i32, i32) {
        (
            self.client_pid.load(Ordering::SeqCst),
            self.client_secret.load(Ordering::SeqCst),
        )
    }
    pub fn set_client_key(&self, pid: i32, secret: i32) {
        // SeqCst: pairs with `SlotStats::cancels_in_flight` (a cancel being forwarded either sees the
        // key cleared, or is seen by the owner before it hands the backend over).
        self.client_pid.store(pid, Ordering::SeqCst);
        self.client_secret.store(secret, Ordering::SeqCst);
    }
    /// Hash of (user, database, options): a cheap first filter when looking for a reusable backend.
    pub fn pool_key(&self) -> u64 {
        self.pool_key.load(Ordering::Acquire)
    }
    pub fn set_pool_key(&self, key: u64) {
        self.pool_key.store(key, Ordering::Release)
    }
    pub fn start_time(&self) -> i64 {
        self.start_time.load(Ordering::Acquire)
    }
    pub fn set_start_time(&self, t: i64) {
        self.start_time.store(t, Ordering::Release)
    }
    pub fn last_use(&self) -> i64 {
        self.last_use.load(Ordering::Acquire)
    }
    pub fn set_last_use(&self, t: i64) {
        self.last_use.store(t, Ordering::Release)
    }
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Acquire) != 0
    }
    pub fn set_in_transaction(&self, v: bool) {
        self.in_transaction.store(v as u16, Ordering::Release)
    }

    /// Resets the keys and flags of a slot just claimed (owner, rule and pool key are set by the claim).
    pub fn clear_keys(&self) {
        self.set_backend_key(0, 0);
        self.set_client_key(0, 0);
        self.set_in_transaction(false);
    }
}

/// A slot's data block. Written only by the slot's owner (the process that moved the slot to INIT or
/// IN_USE by CAS) and published to the next owner by the release ordering of the CAS that gives the
/// slot back.
#[repr(C)]
pub struct SlotDataCell(UnsafeCell<SlotData>);

// SAFETY: access follows the slot ownership protocol described above: one writer (the owner) at a time,
// readers after the handing-over CAS, and torn reads tolerated only for display.
unsafe impl Sync for SlotDataCell {}

impl SlotDataCell {
    /// A copy of the slot's data. Sound to call on a slot the caller owns, or one that is FREE (nobody
    /// writes a FREE slot's data); on any other slot the copy may be torn and is for display only.
    pub fn data(&self) -> SlotData {
        // SAFETY: the pointer is valid and aligned (it points into the mapping for the region's whole
        // life). A volatile read tolerates a concurrent writer in another process: at worst the copy is
        // torn, which the documented contract allows only for display.
        unsafe { std::ptr::read_volatile(self.0.get()) }
    }

    /// Reads the slot's data in place without copying it. Same contract as [`SlotDataCell::data`].
    pub fn with_data<R>(&self, f: impl FnOnce(&SlotData) -> R) -> R {
        // SAFETY: see `data`; the reference does not outlive the call.
        f(unsafe { &*self.0.get() })
    }

    /// Changes the slot's data. Only the owner of a slot in INIT or IN_USE may call this.
    pub fn with_data_mut<R>(&self, f: impl FnOnce(&mut SlotData) -> R) -> R {
        // SAFETY: by the ownership protocol (one owner moved the state by CAS) no other process writes
        // this slot's data now, and readers only read it after the CAS that hands the slot over.
        f(unsafe { &mut *self.0.get() })
    }

    /// Empties the data (the caller holds the slot in NOTINIT or INIT).
    pub fn clear(&self) {
        // SAFETY: the caller holds the slot, so nobody else writes or reads it.
        unsafe { std::ptr::write_bytes(self.0.get(), 0, 1) };
    }
}
