//! The usage-controls check: limits and credits kept by insert, get, list
//! and update, and the atomic lease, settle, change and rate operations.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::fixtures::*;
use super::{usage_credits, usage_rates};
use crate::ids::{KeyId, OwnerId};
use crate::key::KeyRecord;
use crate::store::KeyStore;
use crate::usage::{
    CreditGrant, Credits, LimitName, RateLease, RateLimit, RateLimits, Refill, RefillDue,
    UsageControls,
};

pub(super) const C: &str = "usage_conformance";

pub(super) fn limits(spec: &[(&str, u32, u64)]) -> RateLimits {
    RateLimits::new(spec.iter().map(|(name, limit, secs)| {
        RateLimit::new(name, *limit, Duration::from_secs(*secs)).expect("valid limit")
    }))
    .expect("valid limits")
}

pub(super) fn credits(remaining: u64) -> Credits {
    Credits::new(remaining).expect("valid balance")
}

/// A record of `owner` with usage controls `usage`.
pub(super) fn metered(owner: &OwnerId, usage: UsageControls) -> KeyRecord {
    let mut r = record(owner, "live");
    r.usage = usage;
    r
}

pub(super) fn day(n: i64) -> DateTime<Utc> {
    Refill::daily(1).expect("refill").period_start(t0()) + TimeDelta::days(n)
}

pub(super) async fn stored_credits<S: KeyStore>(store: &S, id: &KeyId) -> Option<Credits> {
    must_get(store, id, C).await.usage.credits
}

pub(super) async fn lease<S: KeyStore>(
    store: &S,
    id: &KeyId,
    want: u64,
    refill: Option<RefillDue>,
) -> CreditGrant {
    match store.lease_credits(id, want, refill).await {
        Ok(Some(g)) => g,
        Ok(None) => panic!("{C}: lease_credits found no credits on a metered key"),
        Err(e) => panic!("{C}: lease_credits failed: {e}"),
    }
}

pub(super) fn rate(name: &LimitName, limit: &RateLimit, want: u32, now_us: i64) -> RateLease {
    RateLease {
        name: name.clone(),
        want,
        now_us,
        interval_us: limit.interval_us(),
        burst_us: limit.burst_us(),
    }
}

/// Checks a store's usage controls ([`KeyStore::lease_credits`],
/// [`KeyStore::settle_credits`], [`KeyStore::change_credits`],
/// [`KeyStore::lease_rate`], [`KeyStore::return_rate`], and the usage
/// fields of insert, get, list and update):
///
/// - limits and credits (refill, `refilled_for`, `leased`) round-trip
///   through insert, get and list;
/// - `update` replaces the limits and the refill and turns credits on
///   and off, but never changes an existing balance, even from a record
///   read before a lease;
/// - a lease grants `min(want, remaining)` and moves it to `leased`; a
///   refill is applied once per period, never for an older period;
/// - settle returns and retires leased credits; `Set` and `Add` change the
///   balance, an `Add` past [`Credits::MAX`] is refused with nothing
///   changed; unknown keys are `NotFound` (lease, change) or nothing
///   (settle, return);
/// - 32 concurrent leasers get grants summing exactly to the balance (a
///   store that reads then writes fails it);
/// - rate leases follow [`gcra_take`](crate::usage::gcra_take) step by step, also under 32
///   concurrent leasers; a return gives the tokens back;
/// - `update` drops the state of a limit it removes (added back, it starts
///   full) and keeps the others';
/// - a deleted key's state does not come back through get, list or leases.
///
/// Uses its own random owners and deletes its keys before it returns.
/// Stores that do not implement usage controls (the trait's defaults refuse
/// them) fail it at the first insert of a metered key.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// keyward::store::conformance::usage_conformance(keyward::MemoryStore::new()).await;
/// # });
/// ```
pub async fn usage_conformance<S: KeyStore>(store: S) {
    let store = Arc::new(store);
    let owner = owner();
    roundtrips(&*store, &owner).await;
    update_keeps_the_balance(&*store, &owner).await;
    usage_credits::leases_settles_and_changes(&*store, &owner).await;
    usage_credits::refills_once_per_period(&*store, &owner).await;
    usage_credits::unknown_keys(&*store).await;
    usage_credits::concurrent_credit_leases(&store, &owner).await;
    usage_rates::rate_leases_follow_gcra(&*store, &owner).await;
    usage_rates::concurrent_rate_leases(&store, &owner).await;
    usage_rates::removed_limits_start_full(&*store, &owner).await;
    usage_rates::deleted_state_does_not_leak(&*store, &owner).await;
    delete_keys_of(&*store, &[&owner], C).await;
}

async fn roundtrips<S: KeyStore>(store: &S, owner: &OwnerId) {
    let mut c = credits(1_234).with_refill(Refill::monthly(28, 5_000).expect("refill"));
    c.leased = 17;
    c.refilled_for = Some(day(0));
    let usage = UsageControls {
        rate_limits: limits(&[("requests", 100, 1), ("publish", 10, 3_600)]),
        credits: Some(c),
    };
    let full = metered(owner, usage.clone());
    must_insert(store, &full, None, C).await;
    let plain = record(owner, "live");
    must_insert(store, &plain, None, C).await;
    let only_limits = metered(
        owner,
        UsageControls {
            rate_limits: limits(&[("requests", 5, 1)]),
            credits: None,
        },
    );
    must_insert(store, &only_limits, None, C).await;
    assert_eq!(
        must_get(store, &full.id, C).await,
        full,
        "{C}: limits and credits must come back from get as written"
    );
    assert_eq!(
        must_get(store, &plain.id, C).await.usage,
        UsageControls::default(),
        "{C}: a key without usage controls must come back without them"
    );
    assert_eq!(
        must_get(store, &only_limits.id, C).await,
        only_limits,
        "{C}: limits without credits must come back as written"
    );
    let listed = must_list(store, &query(owner), C).await;
    for r in [&full, &plain, &only_limits] {
        assert_eq!(
            listed.iter().find(|l| l.id == r.id),
            Some(r),
            "{C}: list must return the usage controls as written"
        );
    }
}

async fn update_keeps_the_balance<S: KeyStore>(store: &S, owner: &OwnerId) {
    let r = metered(
        owner,
        UsageControls {
            rate_limits: limits(&[("requests", 100, 1)]),
            credits: Some(credits(10)),
        },
    );
    must_insert(store, &r, None, C).await;
    let stale = must_get(store, &r.id, C).await;
    let g = lease(store, &r.id, 4, None).await;
    assert_eq!(
        (g.granted, g.remaining),
        (4, 6),
        "{C}: a lease must grant min(want, remaining)"
    );
    // An update from the record read before the lease: new limits and a
    // refill, a different balance in the record.
    let mut next = stale.clone();
    next.generation += 1;
    next.name = "renamed".into();
    next.usage.rate_limits = limits(&[("requests", 50, 1), ("publish", 1, 60)]);
    let mut wanted = credits(999).with_refill(Refill::daily(70).expect("refill"));
    wanted.leased = 999;
    wanted.refilled_for = Some(day(5));
    next.usage.credits = Some(wanted);
    store
        .update(&next, stale.generation)
        .await
        .unwrap_or_else(|e| panic!("{C}: update failed: {e}"));
    let got = must_get(store, &r.id, C).await;
    assert_eq!(
        got.usage.rate_limits, next.usage.rate_limits,
        "{C}: update must replace the limits"
    );
    assert_eq!(got.name, "renamed");
    let c = got.usage.credits.clone().expect("credits kept");
    assert_eq!(
        (c.remaining, c.leased, c.refilled_for),
        (6, 4, Some(day(5))),
        "{C}: update must never change an existing balance or its leases, and sets a refill \
         period only where none was (a refill added to a metered key)"
    );
    // A refill period once set is never changed by an update.
    let mut again = got.clone();
    again.generation += 1;
    if let Some(c) = again.usage.credits.as_mut() {
        c.refilled_for = Some(day(9));
    }
    store
        .update(&again, got.generation)
        .await
        .unwrap_or_else(|e| panic!("{C}: update failed: {e}"));
    let c = must_get(store, &r.id, C)
        .await
        .usage
        .credits
        .expect("credits kept");
    assert_eq!(
        c.refilled_for,
        Some(day(5)),
        "{C}: update must never change an existing refill period"
    );
    assert_eq!(
        c.refill,
        Some(Refill::daily(70).expect("refill")),
        "{C}: update must replace the refill"
    );

    // Credits off, then on again with the record's balance.
    let got = must_get(store, &r.id, C).await;
    let mut off = got.clone();
    off.generation += 1;
    off.usage.credits = None;
    store.update(&off, got.generation).await.expect("update");
    assert_eq!(
        must_get(store, &r.id, C).await.usage.credits,
        None,
        "{C}: update must turn credits off"
    );
    assert_eq!(
        store.lease_credits(&r.id, 1, None).await,
        Ok(None),
        "{C}: a lease on a key without credits must be Ok(None)"
    );
    let mut on = off.clone();
    on.generation += 1;
    on.usage.credits = Some(credits(50));
    store.update(&on, off.generation).await.expect("update");
    let c = stored_credits(store, &r.id).await;
    assert_eq!(
        c.map(|c| (c.remaining, c.leased)),
        Some((50, 0)),
        "{C}: update must turn credits on with the record's balance"
    );
    // No limits at all.
    let mut none = on.clone();
    none.generation += 1;
    none.usage = UsageControls::default();
    store.update(&none, on.generation).await.expect("update");
    assert_eq!(
        must_get(store, &r.id, C).await.usage,
        UsageControls::default(),
        "{C}: update must remove the limits and the credits"
    );
}
