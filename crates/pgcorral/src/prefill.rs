//! Prefill: opening backends ahead of clients. At start each limit rule gets INITIAL_SIZE backends, and
//! afterwards MIN_SIZE is kept up when backends close. Only rules naming a user and a database, with
//! the user in the vault (pgcorral must log in by itself), are filled. Runs in a child of main, so the
//! main loop never waits on a server.

use crate::backend;
use crate::context::Context;
use crate::pool::{self, Lease};
use crate::security::BackendCredential;
use pgcorral_shmem::now_secs;
use pgcorral_wire::StartupMessage;
use ring::rand::SystemRandom;
use std::time::Instant;

/// The rules prefill can serve, with the size to reach: (rule index, target).
pub fn targets(ctx: &Context, initial: bool) -> Vec<(usize, usize)> {
    ctx.config
        .limits
        .iter()
        .enumerate()
        .filter(|(_, r)| r.user != "all" && r.database != "all")
        .filter(|(_, r)| ctx.secrets.backend_password(&r.user).is_some())
        .map(|(i, r)| {
            (
                i,
                if initial {
                    r.initial_size.max(r.min_size)
                } else {
                    r.min_size
                },
            )
        })
        .filter(|&(_, target)| target > 0)
        .collect()
}

/// True when some rule has fewer backends than its MIN_SIZE.
pub fn needed(ctx: &Context) -> bool {
    targets(ctx, false)
        .iter()
        .any(|&(rule, target)| ctx.region.rule_count(rule) < target)
}

/// Opens backends until every rule reaches its target (INITIAL_SIZE when `initial`, else MIN_SIZE).
pub fn run(ctx: &Context, initial: bool) {
    let rng = SystemRandom::new();
    let me = std::process::id() as i32;
    for (rule, target) in targets(ctx, initial) {
        let limit = &ctx.config.limits[rule];
        let Some(password) = ctx.secrets.backend_password(&limit.user) else {
            continue;
        };
        let credential = BackendCredential::Password(password.to_string());
        let key = pool::PoolKey::new(&limit.user, &limit.database, "");
        let startup = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), limit.user.clone()),
                ("database".into(), limit.database.clone()),
            ],
        };
        let mut opened = 0;
        while ctx.region.rule_count(rule) < target {
            if !ctx.region.reserve(
                ctx.config.main.max_connections,
                Some((rule, limit.max_size)),
            ) {
                break;
            }
            let Some(slot) = ctx.region.claim_empty_slot(me, Some(rule), key.hash) else {
                ctx.region.unreserve(Some(rule));
                break;
            };
            let s = ctx.region.slot(slot);
            s.set_start_time(now_secs());
            s.set_last_use(now_secs());
            let mut lease = Lease {
                slot,
                generation: s.generation(),
                fresh: true,
                fd: None,
            };
            let deadline = Instant::now() + ctx.config.main.authentication_timeout;
            match backend::open_as_pooler(ctx, &mut lease, &startup, &credential, &rng, deadline) {
                Ok((_, true)) => {
                    pool::give_back(ctx, lease);
                    opened += 1;
                }
                Ok((_, false)) => {
                    log::warn!(
                        "prefill of {}@{}: the login does not fit a slot's record",
                        limit.user,
                        limit.database
                    );
                    pool::kill(ctx, lease);
                    break;
                }
                Err(e) => {
                    log::warn!("prefill of {}@{}: {e}", limit.user, limit.database);
                    pool::kill(ctx, lease);
                    break;
                }
            }
        }
        if opened > 0 {
            log::info!(
                "prefill: opened {opened} backend(s) for {}@{} (target {target})",
                limit.user,
                limit.database
            );
        }
    }
}
