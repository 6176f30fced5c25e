//! A small cache of role secrets fetched by `auth_query`, shared by every worker so that a role's secret
//! is read from PostgreSQL once per `auth_query_cache` period, not once per client.
//!
//! It holds only what PostgreSQL stores in `pg_authid` (a SCRAM secret or an MD5 hash), never a
//! cleartext password. Each entry is a seqlock: a writer makes the version odd, writes, and makes it
//! even again; a reader copies the entry and keeps the copy only if the version was even and unchanged.

use crate::region::Region;
use crate::slot::FixedBytes;
use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicI64, AtomicU32, Ordering};

/// Entries in the cache (a full cache replaces its oldest entry).
pub const AUTH_CACHE_ENTRIES: usize = 128;
/// Longest secret kept (a SCRAM-SHA-256 secret is about 140 bytes).
pub const SECRET_LEN: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    user: FixedBytes<64>,
    secret: FixedBytes<SECRET_LEN>,
}

/// One cache entry in the region.
#[repr(C, align(64))]
pub struct AuthCacheEntry {
    version: AtomicU32,
    expires: AtomicI64,
    data: UnsafeCell<Entry>,
}

// SAFETY: `data` is only written between the odd and even version stores by the one writer that won the
// CAS to an odd version; readers validate their copy against the version (seqlock).
unsafe impl Sync for AuthCacheEntry {}

impl AuthCacheEntry {
    fn read(&self) -> Option<(Entry, i64)> {
        let v1 = self.version.load(Ordering::Acquire);
        if v1 % 2 == 1 {
            return None;
        }
        // SAFETY: a racy copy is discarded below when a writer interfered; volatile keeps the compiler
        // from assuming the bytes cannot change.
        let copy = unsafe { std::ptr::read_volatile(self.data.get()) };
        let expires = self.expires.load(Ordering::Acquire);
        fence(Ordering::Acquire);
        (self.version.load(Ordering::Acquire) == v1).then_some((copy, expires))
    }

    fn write(&self, user: &str, secret: &str, expires: i64) -> bool {
        let v = self.version.load(Ordering::Acquire);
        if v % 2 == 1
            || self
                .version
                .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        // SAFETY: the odd version makes this process the only writer; readers discard torn copies.
        unsafe {
            let e = &mut *self.data.get();
            e.user.set(user.as_bytes());
            e.secret.set(secret.as_bytes());
        }
        self.expires.store(expires, Ordering::Release);
        self.version.store(v + 2, Ordering::Release);
        true
    }
}

impl Region {
    /// The cached secret of `user`, if fetched less than its lifetime ago.
    pub fn cached_secret(&self, user: &str, now: i64) -> Option<String> {
        self.auth_cache().iter().find_map(|e| {
            let (entry, expires) = e.read()?;
            (expires > now && entry.user.get() == user.as_bytes())
                .then(|| entry.secret.as_str().to_string())
        })
    }

    /// Caches `secret` for `user` until `expires` (replacing the user's entry, an expired one, or the
    /// one closest to expiry). A secret too long to keep is not cached.
    pub fn cache_secret(&self, user: &str, secret: &str, expires: i64) {
        if secret.len() > SECRET_LEN || user.len() > 64 {
            return;
        }
        let entries = self.auth_cache();
        let mut victim = 0;
        let mut victim_expires = i64::MAX;
        for (i, e) in entries.iter().enumerate() {
            match e.read() {
                Some((entry, _)) if entry.user.get() == user.as_bytes() => {
                    victim = i;
                    break;
                }
                Some((_, exp)) if exp < victim_expires => {
                    victim = i;
                    victim_expires = exp;
                }
                _ => {}
            }
        }
        entries[victim].write(user, secret, expires);
    }

    /// Forgets every cached secret (a failed login with a cached secret may mean the role changed).
    pub fn forget_secret(&self, user: &str) {
        for e in self.auth_cache() {
            if e.read()
                .is_some_and(|(entry, _)| entry.user.get() == user.as_bytes())
            {
                e.write("", "", 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_expiry() {
        let r = Region::create(1).unwrap();
        assert_eq!(r.cached_secret("alice", 100), None);
        r.cache_secret("alice", "SCRAM-SHA-256$4096:c2FsdA==$a:b", 200);
        assert_eq!(
            r.cached_secret("alice", 100).as_deref(),
            Some("SCRAM-SHA-256$4096:c2FsdA==$a:b")
        );
        assert_eq!(r.cached_secret("alice", 200), None, "expired");
        assert_eq!(r.cached_secret("bob", 100), None);
        r.cache_secret("alice", "md5abc", 300);
        assert_eq!(
            r.cached_secret("alice", 100).as_deref(),
            Some("md5abc"),
            "replaced in place"
        );
        r.forget_secret("alice");
        assert_eq!(r.cached_secret("alice", 100), None);
    }

    #[test]
    fn a_full_cache_replaces_the_entry_closest_to_expiry() {
        let r = Region::create(1).unwrap();
        for i in 0..AUTH_CACHE_ENTRIES {
            r.cache_secret(&format!("u{i}"), "s", 1000 + i as i64);
        }
        r.cache_secret("newcomer", "s", 5000);
        assert_eq!(r.cached_secret("u0", 0), None);
        assert!(r.cached_secret("u1", 0).is_some());
        assert!(r.cached_secret("newcomer", 0).is_some());
    }
}
