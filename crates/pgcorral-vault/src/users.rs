//! Users files: `user:entry` lines, comments and blank lines.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::fsutil::{read_to_string, write_atomically};
use crate::master::MIN_BLOB_LEN;
use crate::{MasterKey, VaultError};

#[derive(Debug, Clone)]
enum Line {
    /// A comment or blank line, kept as it was.
    Other(String),
    /// `user:blob`. `line` is its 1-based line number in the file as loaded
    /// (0 for an entry added since).
    Entry {
        user: String,
        blob: String,
        line: usize,
    },
}

/// A users file (`pgcorral_users.conf`, frontend users, admins, superuser),
/// kept line by line so that comments and blank lines survive a rewrite.
#[derive(Debug, Clone)]
pub struct UsersFile {
    path: PathBuf,
    lines: Vec<Line>,
}

/// Checks that `user` can be stored in a users file: not empty, no `:`, no
/// line break or NUL, and it does not begin with `#` or white space (which
/// would make a comment or be lost when the line is read back).
pub fn validate_user_name(user: &str) -> Result<(), VaultError> {
    let reason = if user.is_empty() {
        Some("it is empty")
    } else if user.contains(':') {
        Some("it contains ':'")
    } else if user.contains(['\n', '\r', '\0']) {
        Some("it contains a line break or NUL")
    } else if user.starts_with('#') {
        Some("it begins with '#'")
    } else if user.starts_with(char::is_whitespace) || user.ends_with(char::is_whitespace) {
        Some("it begins or ends with white space")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VaultError::InvalidUser {
            user: user.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks the shape of an entry: base64 of at least salt, nonce and tag.
fn validate_blob(blob: &str) -> Result<(), &'static str> {
    let raw = B64.decode(blob).map_err(|_| "not valid base64")?;
    if raw.len() < MIN_BLOB_LEN {
        return Err("too short to be an encrypted password");
    }
    Ok(())
}

impl UsersFile {
    /// An empty users file that [`save`](Self::save) will create at `path`.
    pub fn empty(path: &Path) -> UsersFile {
        UsersFile {
            path: path.to_path_buf(),
            lines: Vec::new(),
        }
    }

    /// Reads and checks a users file. A missing file is an error
    /// ([`VaultError::UsersFileMissing`]); use [`empty`](Self::empty) to
    /// start a new one.
    pub fn load(path: &Path) -> Result<UsersFile, VaultError> {
        let text = read_to_string(path, || VaultError::UsersFileMissing {
            path: path.to_path_buf(),
        })?;
        UsersFile::parse(path, &text)
    }

    /// Parses the text of a users file; `path` is used in errors and by
    /// [`save`](Self::save).
    pub fn parse(path: &Path, text: &str) -> Result<UsersFile, VaultError> {
        let mut file = UsersFile::empty(path);
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                file.lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let parse_err = |reason: String| VaultError::Parse {
                path: path.to_path_buf(),
                line: n,
                reason,
            };
            let Some((user, blob)) = trimmed.split_once(':') else {
                return Err(parse_err(
                    "expected `user:encrypted-password` (no ':' found)".into(),
                ));
            };
            let blob = blob.trim();
            validate_user_name(user).map_err(|e| parse_err(e.to_string()))?;
            if blob.is_empty() {
                return Err(parse_err(format!(
                    "user {user} has no encrypted password after ':'"
                )));
            }
            if let Err(reason) = validate_blob(blob) {
                return Err(parse_err(format!(
                    "the encrypted password of user {user} is {reason}: set it again with `pgcorral-admin user edit -U {user}`"
                )));
            }
            if let Some(first) = file.entry_line(user) {
                return Err(VaultError::DuplicateInFile {
                    path: path.to_path_buf(),
                    user: user.to_string(),
                    first,
                    second: n,
                });
            }
            file.lines.push(Line::Entry {
                user: user.to_string(),
                blob: blob.to_string(),
                line: n,
            });
        }
        Ok(file)
    }

    fn entry_line(&self, user: &str) -> Option<usize> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { user: u, line, .. } if u == user => Some(*line),
            _ => None,
        })
    }

    /// The path the file was loaded from and is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The user names, in file order.
    pub fn users(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Entry { user, .. } => Some(user.as_str()),
                Line::Other(_) => None,
            })
            .collect()
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users().len()
    }

    /// True if there is no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encrypted entry of `user`.
    pub fn get(&self, user: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { user: u, blob, .. } if u == user => Some(blob.as_str()),
            _ => None,
        })
    }

    /// Sets the entry of `user`, replacing it in place or appending it.
    pub fn set(&mut self, user: &str, blob: &str) -> Result<(), VaultError> {
        validate_user_name(user)?;
        validate_blob(blob).map_err(|reason| VaultError::InvalidEntry {
            user: user.to_string(),
            reason,
        })?;
        for l in &mut self.lines {
            if let Line::Entry {
                user: u, blob: b, ..
            } = l
            {
                if u == user {
                    *b = blob.to_string();
                    return Ok(());
                }
            }
        }
        self.lines.push(Line::Entry {
            user: user.to_string(),
            blob: blob.to_string(),
            line: 0,
        });
        Ok(())
    }

    /// Adds a new user; an existing one is an error ([`VaultError::UserExists`]).
    pub fn add(&mut self, user: &str, blob: &str) -> Result<(), VaultError> {
        if self.get(user).is_some() {
            return Err(VaultError::UserExists {
                path: self.path.clone(),
                user: user.to_string(),
            });
        }
        self.set(user, blob)
    }

    /// Removes `user`; false if there was no such user.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Entry { user: u, .. } if u == user));
        self.lines.len() != before
    }

    /// The file's text as [`save`](Self::save) writes it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Other(text) => out.push_str(text),
                Line::Entry { user, blob, .. } => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(blob);
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file: to a temporary file (mode 0600) in the same
    /// directory, synced, then renamed over the target.
    pub fn save(&self) -> Result<(), VaultError> {
        write_atomically(&self.path, self.to_text().as_bytes(), true)
    }

    /// Decrypts every entry: `(user, password)` in file order. The first
    /// entry that does not decrypt gives [`VaultError::CorruptEntry`] with
    /// its line.
    pub fn decrypt_all(&self, key: &MasterKey) -> Result<Vec<(String, String)>, VaultError> {
        let mut out = Vec::new();
        for l in &self.lines {
            if let Line::Entry { user, blob, line } = l {
                let password = key
                    .decrypt(user, blob)
                    .map_err(|_| VaultError::CorruptEntry {
                        path: self.path.clone(),
                        line: *line,
                        user: user.clone(),
                    })?;
                out.push((user.clone(), password));
            }
        }
        Ok(out)
    }
}
