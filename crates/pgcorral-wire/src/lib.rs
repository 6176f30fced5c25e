//! PostgreSQL protocol v3 for pgcorral.
//!
//! This crate knows the bytes of the protocol and nothing of sockets: the startup packets a client opens
//! with (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest), one type per message the pooler
//! reads or writes, a [`FrameTracker`] that follows message boundaries across arbitrary read chunks
//! without copying them, MD5 password hashing and checking, and both ends of SCRAM-SHA-256
//! ([`ScramClient`], [`ScramServer`]). Every length a peer declares is checked against a cap before
//! anything is allocated for it, no parser panics on short or malformed input, and secrets are
//! compared in constant time.

mod ct;
mod error;
pub mod extended;
mod frame;
pub mod messages;
mod password;
pub mod scram;
mod startup;

pub use ct::ct_eq;
pub use error::WireError;
pub use frame::{FrameEvent, FrameTracker};
pub use password::{md5_password_hash, md5_salted, md5_verify, Md5Secret};
pub use scram::{
    authentication_sasl, authentication_sasl_continue, authentication_sasl_final,
    parse_sasl_initial_response, parse_sasl_mechanisms, sasl_initial_response, sasl_response,
    ScramClient, ScramSecret, ScramServer, DEFAULT_SCRAM_ITERATIONS, MAX_SCRAM_ITERATIONS,
    SCRAM_KEY_LEN, SCRAM_SHA_256,
};
pub use startup::{
    parse_startup, startup_packet_length, StartupMessage, StartupRequest, CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LENGTH, PROTOCOL_3_0, SSL_REQUEST_CODE,
};

/// Largest regular message pgcorral accepts from a peer (PostgreSQL's own cap on a message is 1 GB).
pub const MAX_MESSAGE_LENGTH: usize = 1 << 30;
/// Largest message pgcorral buffers whole during authentication (passwords, SASL exchanges).
pub const MAX_AUTH_MESSAGE_LENGTH: usize = 8192;
