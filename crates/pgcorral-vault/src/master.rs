//! `master.key` and the entry encryption.

use std::fmt;
use std::fs::DirBuilder;
use std::io;
use std::num::NonZeroU32;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

use crate::fsutil::{check_mode, parent_dir, read_to_string, write_atomically};
use crate::VaultError;

/// The environment variable naming the directory that replaces `~/.pgcorral`.
pub const HOME_DIR_ENV: &str = "PGCORRAL_HOME_DIR";
/// The file name of the master key in that directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// PBKDF2 iterations of the master key derivation (pgagroal 2.1).
pub const MASTER_KEY_ITERATIONS: u32 = 600_000;
/// Fewest characters (Unicode code points) of a master key passphrase.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// Most bytes of a master key passphrase (pgagroal's `MAX_PASSWORD_LENGTH - 1`).
pub const MAX_PASSPHRASE_BYTES: usize = 8191;

const KEY_LEN: usize = 64;
const SALT_LEN: usize = 16;
const AES_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Shortest blob: salt, nonce and tag around an empty ciphertext.
pub(crate) const MIN_BLOB_LEN: usize = SALT_LEN + NONCE_LEN + TAG_LEN;

/// The directory holding `master.key`: `$PGCORRAL_HOME_DIR` if set and not
/// empty, else `$HOME/.pgcorral`.
pub fn home_dir() -> Result<PathBuf, VaultError> {
    if let Some(dir) = std::env::var_os(HOME_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".pgcorral")),
        None => Err(VaultError::NoHomeDir),
    }
}

/// `home_dir()/master.key`.
pub fn default_master_key_path() -> Result<PathBuf, VaultError> {
    Ok(home_dir()?.join(MASTER_KEY_FILE))
}

/// The 64-byte master key derived from the passphrase and salt of
/// `master.key`. The bytes are overwritten with zeros when it is dropped, and
/// `Debug` does not show them.
pub struct MasterKey {
    key: [u8; KEY_LEN],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        for b in self.key.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl MasterKey {
    /// Derives the master key: PBKDF2-HMAC-SHA256 with 600000 iterations.
    /// This takes about half a second; do it once per process.
    pub fn derive(passphrase: &str, salt: &[u8; SALT_LEN]) -> MasterKey {
        let mut key = [0u8; KEY_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(MASTER_KEY_ITERATIONS).expect("non-zero"),
            salt,
            passphrase.as_bytes(),
            &mut key,
        );
        MasterKey { key }
    }

    /// Loads `$PGCORRAL_HOME_DIR/master.key`, or `~/.pgcorral/master.key`.
    pub fn load_default() -> Result<MasterKey, VaultError> {
        MasterKey::load(&default_master_key_path()?)
    }

    /// Loads and derives the master key in `path`, after checking that its
    /// directory is mode 0700 and the file 0600.
    pub fn load(path: &Path) -> Result<MasterKey, VaultError> {
        let (passphrase, salt) = read_master_file(path)?;
        Ok(MasterKey::derive(&passphrase, &salt))
    }

    /// Checks `master.key` at `path` as [`load`](Self::load) does
    /// (permissions, format) without the costly derivation.
    pub fn check(path: &Path) -> Result<(), VaultError> {
        read_master_file(path).map(|_| ())
    }

    /// Creates `master.key` at `path` with a new random salt. Refuses to
    /// replace an existing file; creates the directory (mode 0700) if it is
    /// missing and refuses one with another mode. The passphrase needs at
    /// least 8 characters.
    pub fn create(path: &Path, passphrase: &str) -> Result<(), VaultError> {
        check_passphrase(passphrase)?;
        let dir = parent_dir(path);
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| VaultError::io("create directory", &dir, e))?,
            Err(e) => return Err(VaultError::io("inspect", &dir, e)),
            Ok(_) => {}
        }
        check_mode(&dir, 0o700, true)?;
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(VaultError::MasterKeyExists {
                path: path.to_path_buf(),
            });
        }
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt);
        let contents = format!("{}\n{}\n", B64.encode(passphrase), B64.encode(salt));
        write_atomically(path, contents.as_bytes(), false).map_err(|e| match e {
            VaultError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                VaultError::MasterKeyExists {
                    path: path.to_path_buf(),
                }
            }
            e => e,
        })
    }

    /// Encrypts a password; returns the base64 entry stored after `user:`.
    pub fn encrypt(&self, password: &str) -> String {
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt);
        self.encrypt_with_salt(password, &salt)
    }

    /// [`encrypt`](Self::encrypt) with a given entry salt (for test vectors).
    #[doc(hidden)]
    pub fn encrypt_with_salt(&self, password: &str, salt: &[u8; SALT_LEN]) -> String {
        let (cipher, nonce) = self.entry_cipher(salt);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), password.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(SALT_LEN + NONCE_LEN + sealed.len());
        blob.extend_from_slice(salt);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        B64.encode(blob)
    }

    /// Decrypts the entry of `user` (used in the error message only). Any
    /// change to the blob, or another master key, gives
    /// [`VaultError::Corrupt`].
    pub fn decrypt(&self, user: &str, blob: &str) -> Result<String, VaultError> {
        let corrupt = || VaultError::Corrupt {
            user: user.to_string(),
        };
        let raw = B64.decode(blob.trim()).map_err(|_| corrupt())?;
        if raw.len() < MIN_BLOB_LEN {
            return Err(corrupt());
        }
        let salt: [u8; SALT_LEN] = raw[..SALT_LEN].try_into().expect("length checked");
        let (cipher, nonce) = self.entry_cipher(&salt);
        if raw[SALT_LEN..SALT_LEN + NONCE_LEN] != nonce {
            return Err(corrupt());
        }
        let mut plain = cipher
            .decrypt(Nonce::from_slice(&nonce), &raw[SALT_LEN + NONCE_LEN..])
            .map_err(|_| corrupt())?;
        // A C writer might have encrypted the terminating NUL; PostgreSQL
        // passwords cannot contain NUL, so dropping it is safe.
        while plain.last() == Some(&0) {
            plain.pop();
        }
        String::from_utf8(plain).map_err(|_| corrupt())
    }

    /// The AES-256-GCM cipher and nonce of an entry salt.
    fn entry_cipher(&self, salt: &[u8; SALT_LEN]) -> (Aes256Gcm, [u8; NONCE_LEN]) {
        let mut d = [0u8; AES_KEY_LEN + NONCE_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(1).expect("non-zero"),
            salt,
            &self.key,
            &mut d,
        );
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&d[..AES_KEY_LEN]));
        let nonce: [u8; NONCE_LEN] = d[AES_KEY_LEN..].try_into().expect("length");
        d.fill(0);
        (cipher, nonce)
    }
}

fn fill_random(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the system random number generator failed");
}

fn check_passphrase(passphrase: &str) -> Result<(), VaultError> {
    let chars = passphrase.chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(VaultError::PassphraseTooShort {
            chars,
            min: MIN_PASSPHRASE_CHARS,
        });
    }
    if passphrase.len() > MAX_PASSPHRASE_BYTES {
        return Err(VaultError::PassphraseTooLong {
            bytes: passphrase.len(),
            max: MAX_PASSPHRASE_BYTES,
        });
    }
    Ok(())
}

/// Checks the permissions and reads the passphrase and salt of `master.key`.
fn read_master_file(path: &Path) -> Result<(String, [u8; SALT_LEN]), VaultError> {
    let dir = parent_dir(path);
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VaultError::MasterKeyMissing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(VaultError::io("inspect", path, e)),
        Ok(_) => {}
    }
    check_mode(&dir, 0o700, true)?;
    check_mode(path, 0o600, false)?;
    let text = read_to_string(path, || VaultError::MasterKeyMissing {
        path: path.to_path_buf(),
    })?;
    let format_err = |line: usize, reason: String| VaultError::MasterKeyFormat {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let Some(first) = lines.first().filter(|l| !l.is_empty()) else {
        return Err(format_err(1, "empty master key file".into()));
    };
    let passphrase = B64
        .decode(first)
        .map_err(|e| format_err(1, format!("the passphrase line is not valid base64 ({e})")))?;
    let passphrase = String::from_utf8(passphrase)
        .map_err(|_| format_err(1, "the passphrase is not valid UTF-8".into()))?;
    let Some(second) = lines.get(1).filter(|l| !l.is_empty()) else {
        return Err(VaultError::MissingSalt {
            path: path.to_path_buf(),
        });
    };
    let salt = B64
        .decode(second)
        .map_err(|e| format_err(2, format!("the salt line is not valid base64 ({e})")))?;
    let salt: [u8; SALT_LEN] = salt.as_slice().try_into().map_err(|_| {
        format_err(
            2,
            format!("the salt has {} bytes instead of {SALT_LEN}", salt.len()),
        )
    })?;
    if let Some(extra) = lines.iter().skip(2).position(|l| !l.is_empty()) {
        return Err(format_err(
            extra + 3,
            "unexpected text after the salt line".into(),
        ));
    }
    Ok((passphrase, salt))
}
