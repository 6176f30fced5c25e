//! PostgreSQL protocol v3 for pgcorral.
//!
//! This crate knows the bytes of the protocol and nothing of sockets: the startup packets a client opens
//! with (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest), one type per message the pooler
//! reads or writes, a [`FrameTracker`] that follows message boundaries across arbitrary read chunks
//! without copying them, and the MD5 password hash. Every length a peer declares is checked against a
//! cap before anything is allocated for it, and no parser panics on short or malformed input.

mod error;
mod frame;
pub mod messages;
mod password;
mod startup;

pub use error::WireError;
pub use frame::{FrameEvent, FrameTracker};
pub use password::{md5_password_hash, md5_salted};
pub use startup::{
    parse_startup, startup_packet_length, StartupMessage, StartupRequest, CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LENGTH, PROTOCOL_3_0, SSL_REQUEST_CODE,
};

/// Largest regular message pgcorral accepts from a peer (PostgreSQL's own cap on a message is 1 GB).
pub const MAX_MESSAGE_LENGTH: usize = 1 << 30;
/// Largest message pgcorral buffers whole during authentication (passwords, SASL exchanges).
pub const MAX_AUTH_MESSAGE_LENGTH: usize = 8192;
