//! auth_query: for a user not in the vault, pgcorral asks PostgreSQL for the role's secret as the `-S`
//! superuser (over a pooled superuser backend), verifies the client with it, and caches it in the shared
//! region for `auth_query_cache`. With a SCRAM secret pgcorral then logs in with the ClientKey
//! recovered from the client's proof, so it never holds a cleartext password.

use crate::backend;
use crate::context::Context;
use crate::pool::{self, PoolKey};
use crate::security::{AuthError, BackendCredential};
use pgcorral_shmem::{now_secs, SlotData};
use pgcorral_wire::StartupMessage;
use std::time::Instant;

/// The stored secret of `user` (`None`: no such login role), from the cache or from PostgreSQL.
pub fn fetch_secret(
    ctx: &Context,
    user: &str,
    database: &str,
    rng: &dyn ring::rand::SecureRandom,
) -> Result<Option<String>, AuthError> {
    let now = now_secs();
    if let Some(s) = ctx.region.cached_secret(user, now) {
        return Ok(Some(s));
    }
    let Some((superuser, password)) = ctx.secrets.superuser() else {
        return Err(AuthError::refuse(
            "28000",
            "auth_query needs the superuser file (-S)",
        ));
    };
    let key = PoolKey::new(superuser, database, "");
    let rule = ctx.config.find_limit(database, superuser);
    let any: &dyn Fn(&SlotData) -> bool = &|_| true;
    let mut lease = pool::checkout(
        ctx,
        &key,
        rule,
        Some(any),
        ctx.config.main.blocking_timeout,
        None,
    )
    .map_err(|e| AuthError::refuse("53300", format!("auth_query: {e}")))?
    .lease;
    let deadline = Instant::now() + ctx.config.main.authentication_timeout;
    let mut poolable = true;
    if lease.fresh {
        let startup = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), superuser.into()),
                ("database".into(), database.into()),
            ],
        };
        let credential = BackendCredential::Password(password.to_string());
        match backend::open_as_pooler(ctx, &mut lease, &startup, &credential, rng, deadline) {
            Ok((_, recorded)) => poolable = recorded,
            Err(e) => {
                pool::kill(ctx, lease);
                return Err(e);
            }
        }
    }
    let fd = lease
        .fd
        .as_ref()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .unwrap_or(-1);
    let literal = backend::quote_literal(user);
    let sql = match ctx.config.main.auth_query_function.as_str() {
        "" => format!(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = {literal} AND rolcanlogin \
             AND (rolvaliduntil IS NULL OR rolvaliduntil > pg_catalog.now())"
        ),
        function => format!("SELECT {function}({literal})"),
    };
    match backend::query_value(fd, &sql, deadline) {
        Ok(secret) => {
            if poolable {
                pool::give_back(ctx, lease);
            } else {
                pool::kill(ctx, lease);
            }
            if let Some(s) = &secret {
                let ttl = ctx.config.main.auth_query_cache.as_secs() as i64;
                if ttl > 0 {
                    ctx.region.cache_secret(user, s, now + ttl);
                }
            }
            Ok(secret)
        }
        Err(message) => {
            pool::kill(ctx, lease);
            Err(AuthError::refuse(
                "28000",
                format!("auth_query failed: {message}"),
            ))
        }
    }
}
