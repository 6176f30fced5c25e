//! The secrets pgcorral holds: backend passwords (`-u`), frontend passwords (`-F`), admins (`-A`) and
//! the auth_query superuser (`-S`), decrypted with the master key when the daemon starts.
//!
//! They live in main's memory and reach each worker through fork, so the shared region never holds
//! them (it holds only what auth_query fetched: SCRAM and MD5 secrets as PostgreSQL stores them, never
//! a cleartext password). They are never logged.

use pgcorral_vault::{MasterKey, UsersFile, VaultError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the user files could not be used.
#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("-F (frontend users) needs -u (users): every frontend user must also have a backend password")]
    FrontendWithoutUsers,
    #[error("{file}: frontend user '{user}' is not in the users file {users}: add it with `pgcorral-admin -f {users} user add -U {user}`")]
    FrontendNotInUsers {
        file: PathBuf,
        users: PathBuf,
        user: String,
    },
    #[error("{file}: the superuser file must hold exactly one user, it holds {count}")]
    Superuser { file: PathBuf, count: usize },
}

/// The decrypted secrets.
#[derive(Default)]
pub struct Secrets {
    users: HashMap<String, String>,
    frontend: HashMap<String, String>,
    admins: HashMap<String, String>,
    superuser: Option<(String, String)>,
    /// The derived master key, kept so a reload does not pay the 600,000 PBKDF2 iterations in main.
    master_key: Option<std::sync::Arc<MasterKey>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a secret must never reach a log line by way of Debug.
        f.debug_struct("Secrets")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("frontend", &self.frontend.keys().collect::<Vec<_>>())
            .field("admins", &self.admins.keys().collect::<Vec<_>>())
            .field("superuser", &self.superuser.as_ref().map(|(u, _)| u))
            .finish()
    }
}

fn read(path: &Path, key: &MasterKey) -> Result<HashMap<String, String>, SecretsError> {
    Ok(UsersFile::load(path)?
        .decrypt_all(key)?
        .into_iter()
        .collect())
}

impl Secrets {
    /// Loads the files given on the command line; none given: no secrets, no master key needed.
    pub fn load(
        users: Option<&Path>,
        frontend: Option<&Path>,
        admins: Option<&Path>,
        superuser: Option<&Path>,
    ) -> Result<Secrets, SecretsError> {
        Self::load_with(None, users, frontend, admins, superuser)
    }

    /// Re-reads the files for a reload with the master key derived at start; only when that key no
    /// longer decrypts them (master.key was replaced) is the key derived again.
    pub fn reload(
        &self,
        users: Option<&Path>,
        frontend: Option<&Path>,
        admins: Option<&Path>,
        superuser: Option<&Path>,
    ) -> Result<Secrets, SecretsError> {
        match self.master_key.as_ref() {
            Some(key) => Self::load_with(Some(key), users, frontend, admins, superuser)
                .or_else(|_| Self::load(users, frontend, admins, superuser)),
            None => Self::load(users, frontend, admins, superuser),
        }
    }

    fn load_with(
        cached: Option<&std::sync::Arc<MasterKey>>,
        users: Option<&Path>,
        frontend: Option<&Path>,
        admins: Option<&Path>,
        superuser: Option<&Path>,
    ) -> Result<Secrets, SecretsError> {
        if users.is_none() && frontend.is_none() && admins.is_none() && superuser.is_none() {
            return Ok(Secrets::default());
        }
        if frontend.is_some() && users.is_none() {
            return Err(SecretsError::FrontendWithoutUsers);
        }
        let key = match cached {
            Some(k) => k.clone(),
            None => std::sync::Arc::new(MasterKey::load_default()?),
        };
        let mut s = Secrets::default();
        if let Some(p) = users {
            s.users = read(p, &key)?;
        }
        if let Some(p) = frontend {
            s.frontend = read(p, &key)?;
            if let Some(user) = s.frontend.keys().find(|u| !s.users.contains_key(*u)) {
                return Err(SecretsError::FrontendNotInUsers {
                    file: p.to_path_buf(),
                    users: users.map(Path::to_path_buf).unwrap_or_default(),
                    user: user.clone(),
                });
            }
        }
        if let Some(p) = admins {
            s.admins = read(p, &key)?;
        }
        if let Some(p) = superuser {
            let mut all: Vec<_> = read(p, &key)?.into_iter().collect();
            if all.len() != 1 {
                return Err(SecretsError::Superuser {
                    file: p.to_path_buf(),
                    count: all.len(),
                });
            }
            s.superuser = all.pop();
        }
        s.master_key = Some(key);
        Ok(s)
    }

    /// The password pgcorral logs in to PostgreSQL with.
    pub fn backend_password(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// The password a client must give: the frontend one when the user has one, else the backend one.
    pub fn client_password(&self, user: &str) -> Option<&str> {
        self.frontend
            .get(user)
            .or_else(|| self.users.get(user))
            .map(String::as_str)
    }

    /// The auth_query superuser and its password.
    pub fn superuser(&self) -> Option<(&str, &str)> {
        self.superuser
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// True when no users file was given.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.frontend.is_empty() && self.superuser.is_none()
    }

    /// Number of users with a backend password (for the start-up log line).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Admin passwords (remote management, a later issue).
    #[allow(dead_code)]
    pub fn admin_password(&self, user: &str) -> Option<&str> {
        self.admins.get(user).map(String::as_str)
    }
}
