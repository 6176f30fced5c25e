//! The password vault of pgcorral, in the pgagroal 2.1 format.
//!
//! pgcorral keeps the passwords it needs (backend users, frontend users,
//! admins, the superuser) in *users files* whose lines are
//! `user:base64(entry)`. Each entry is encrypted with a key derived from the
//! *master key*, which lives in `~/.pgcorral/master.key` (or in the
//! directory named by `PGCORRAL_HOME_DIR`). A pgagroal 2.1 `master.key` and
//! users file work here unchanged, and the other way round.
//!
//! * `master.key`: two lines, `base64(passphrase)` and `base64(salt)` with a
//!   16-byte random salt. The directory must be mode 0700 and the file 0600.
//! * Master key `MK = PBKDF2-HMAC-SHA256(passphrase, salt, 600000, 64 bytes)`:
//!   costly (about half a second), so derive it once per process and keep the
//!   [`MasterKey`].
//! * Entry: random 16-byte salt `s`, `D = PBKDF2-HMAC-SHA256(MK, s, 1, 44)`,
//!   key `D[0..32]`, nonce `D[32..44]`, AES-256-GCM without associated data,
//!   stored as `base64(s ‖ nonce ‖ ciphertext ‖ tag)`.
//!
//! Every file is written to a temporary file in the same directory (mode
//! 0600), synced, then renamed over the target, so a reader never sees a
//! half-written file.
//!
//! ```no_run
//! use pgcorral_vault::{MasterKey, UsersFile};
//! # fn main() -> Result<(), pgcorral_vault::VaultError> {
//! let key = MasterKey::load_default()?;
//! let mut users = UsersFile::load("/etc/pgcorral/pgcorral_users.conf".as_ref())?;
//! users.set("alice", &key.encrypt("secret"))?;
//! users.save()?;
//! for (user, password) in users.decrypt_all(&key)? {
//!     println!("{user}: {} characters", password.chars().count());
//! }
//! # Ok(()) }
//! ```

mod error;
mod fsutil;
mod master;
mod users;

pub use error::VaultError;
pub use master::{
    default_master_key_path, home_dir, MasterKey, HOME_DIR_ENV, MASTER_KEY_FILE,
    MASTER_KEY_ITERATIONS, MAX_PASSPHRASE_BYTES, MIN_PASSPHRASE_CHARS,
};
pub use users::{validate_user_name, UsersFile};
