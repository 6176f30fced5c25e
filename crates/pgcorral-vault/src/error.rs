use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the vault. Each message names the file
/// (and line) involved and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Reading, writing or creating a file or directory failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Neither `PGCORRAL_HOME_DIR` nor `HOME` tells where `master.key` is.
    #[error("cannot find the home directory: set HOME, or PGCORRAL_HOME_DIR to the directory that holds master.key")]
    NoHomeDir,

    /// A file or directory that holds secrets is open to others.
    #[error(
        "{path} has mode {found:04o} but must be {wanted:04o}: run `chmod {wanted:04o} {path}`"
    )]
    Permissions {
        path: PathBuf,
        found: u32,
        wanted: u32,
    },

    /// Something that should be a regular file or a directory is not.
    #[error("{path} is not a {wanted}")]
    WrongFileType { path: PathBuf, wanted: &'static str },

    /// `master.key` does not exist.
    #[error("master key {path} not found: create it with `pgcorral-admin master-key`")]
    MasterKeyMissing { path: PathBuf },

    /// `master.key` exists and `create` will not replace it.
    #[error("master key {path} already exists; refusing to overwrite it (every users file is encrypted with it: remove it yourself only if you will re-create all of them)")]
    MasterKeyExists { path: PathBuf },

    /// A pgagroal 2.0 (single line) `master.key`.
    #[error("{path}: missing salt line; regenerate master.key (this is the pgagroal 2.0 format: move it away, run `pgcorral-admin master-key` and re-add every user)")]
    MissingSalt { path: PathBuf },

    /// `master.key` is not two base64 lines.
    #[error("{path}:{line}: {reason}; regenerate master.key with `pgcorral-admin master-key`")]
    MasterKeyFormat {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// The passphrase has fewer than 8 characters.
    #[error("the master key passphrase has {chars} characters; it needs at least {min}")]
    PassphraseTooShort { chars: usize, min: usize },

    /// The passphrase is too long.
    #[error("the master key passphrase has {bytes} bytes; at most {max} are allowed")]
    PassphraseTooLong { bytes: usize, max: usize },

    /// An entry does not decrypt (no file or line known).
    #[error("entry for user {user} is corrupt or was encrypted with another master key: set the password again with `pgcorral-admin user edit -U {user}`")]
    Corrupt { user: String },

    /// An entry of a users file does not decrypt.
    #[error("{path}:{line}: entry for user {user} is corrupt or was encrypted with another master key: set the password again with `pgcorral-admin -f {path} user edit -U {user}`")]
    CorruptEntry {
        path: PathBuf,
        line: usize,
        user: String,
    },

    /// The users file does not exist.
    #[error(
        "users file {path} not found: create it with `pgcorral-admin -f {path} user add -U USER`"
    )]
    UsersFileMissing { path: PathBuf },

    /// A line of a users file is not `user:entry`.
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// The same user appears twice in a users file.
    #[error("{path}:{second}: user {user} is already defined at line {first}: remove one of the two lines")]
    DuplicateInFile {
        path: PathBuf,
        user: String,
        first: usize,
        second: usize,
    },

    /// [`UsersFile::add`](crate::UsersFile::add) of a user that exists.
    #[error("user {user} already exists in {path}: use `user edit` to change the password")]
    UserExists { path: PathBuf, user: String },

    /// A user name that cannot be stored in a users file.
    #[error("invalid user name {user:?}: {reason}")]
    InvalidUser { user: String, reason: &'static str },

    /// A string that is not an entry made by [`MasterKey::encrypt`](crate::MasterKey::encrypt).
    #[error("invalid entry for user {user}: {reason}")]
    InvalidEntry { user: String, reason: &'static str },
}

impl VaultError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        VaultError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
