use thiserror::Error;

/// What is wrong with bytes received from a peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// A declared length is below the protocol minimum.
    #[error("invalid length {len} in {what}: at least {min} bytes required")]
    LengthTooSmall {
        what: &'static str,
        len: usize,
        min: usize,
    },
    /// A declared length exceeds what pgcorral accepts.
    #[error("invalid length {len} in {what}: at most {max} bytes accepted")]
    LengthTooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The message body does not have the layout its type requires.
    #[error("invalid {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    /// A protocol version pgcorral does not speak.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    /// The client's password, MD5 answer or SCRAM proof is wrong.
    #[error("password authentication failed")]
    AuthFailed,
    /// A SCRAM server ended the exchange with an error attribute (`e=...` in server-final-message).
    #[error("SCRAM authentication failed on the server: {reason}")]
    ScramServerError { reason: String },
    /// The server's SCRAM signature is wrong: the server does not know the password's keys.
    #[error("incorrect SCRAM server signature")]
    ServerSignatureMismatch,
    /// The random number generator failed.
    #[error("random number generator failed")]
    RandomFailed,
}

impl WireError {
    /// The SQLSTATE a client should see for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            WireError::UnsupportedProtocol { .. } => "0A000",
            WireError::AuthFailed => "28P01",
            WireError::ScramServerError { .. } | WireError::ServerSignatureMismatch => "28000",
            WireError::RandomFailed => "58000",
            _ => "08P01",
        }
    }
}
