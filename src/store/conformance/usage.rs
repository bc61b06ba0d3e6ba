//! The usage-controls check: limits and credits kept by insert, get, list
//! and update, and the atomic lease, settle, change and rate operations.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use crate::ids::{KeyId, OwnerId};
use crate::key::KeyRecord;
use crate::store::{KeyStore, StoreError};
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateLease, RateLimit, RateLimits, Refill,
    RefillDue, UsageControls, UsageError, gcra_take,
};

const C: &str = "usage_conformance";

fn limits(spec: &[(&str, u32, u64)]) -> RateLimits {
    RateLimits::new(spec.iter().map(|(name, limit, secs)| {
        RateLimit::new(name, *limit, Duration::from_secs(*secs)).expect("valid limit")
    }))
    .expect("valid limits")
}

fn credits(remaining: u64) -> Credits {
    Credits::new(remaining).expect("valid balance")
}

/// A record of `owner` with usage controls `usage`.
fn metered(owner: &OwnerId, usage: UsageControls) -> KeyRecord {
    let mut r = record(owner, "live");
    r.usage = usage;
    r
}

fn day(n: i64) -> DateTime<Utc> {
    Refill::daily(1).expect("refill").period_start(t0()) + TimeDelta::days(n)
}

async fn stored_credits<S: KeyStore>(store: &S, id: &KeyId) -> Option<Credits> {
    must_get(store, id, C).await.usage.credits
}

async fn lease<S: KeyStore>(
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

fn rate(name: &LimitName, limit: &RateLimit, want: u32, now_us: i64) -> RateLease {
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
/// - rate leases follow [`gcra_take`] step by step, also under 32
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
    leases_settles_and_changes(&*store, &owner).await;
    refills_once_per_period(&*store, &owner).await;
    unknown_keys(&*store).await;
    concurrent_credit_leases(&store, &owner).await;
    rate_leases_follow_gcra(&*store, &owner).await;
    concurrent_rate_leases(&store, &owner).await;
    removed_limits_start_full(&*store, &owner).await;
    deleted_state_does_not_leak(&*store, &owner).await;
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
        (6, 4, None),
        "{C}: update must never change an existing balance, its leases or its refill period"
    );
    assert_eq!(
        c.refill,
        Some(Refill::daily(70).expect("refill")),
        "{C}: update must replace the refill"
    );

    // Credits off, then on again with the record's balance.
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

async fn leases_settles_and_changes<S: KeyStore>(store: &S, owner: &OwnerId) {
    let r = metered(
        owner,
        UsageControls {
            rate_limits: RateLimits::none(),
            credits: Some(credits(10)),
        },
    );
    must_insert(store, &r, None, C).await;
    let g = lease(store, &r.id, 4, None).await;
    assert_eq!((g.granted, g.remaining), (4, 6), "{C}: lease of 4 from 10");
    let g = lease(store, &r.id, 100, None).await;
    assert_eq!(
        (g.granted, g.remaining),
        (6, 0),
        "{C}: a lease past the balance must grant what is left"
    );
    let g = lease(store, &r.id, 1, None).await;
    assert_eq!(
        (g.granted, g.remaining),
        (0, 0),
        "{C}: an empty balance grants 0"
    );
    let c = stored_credits(store, &r.id).await.expect("credits");
    assert_eq!(
        (c.remaining, c.leased),
        (0, 10),
        "{C}: leased credits must move from remaining to leased"
    );
    assert_eq!(
        must_get(store, &r.id, C).await.generation,
        r.generation,
        "{C}: leases must not bump the generation"
    );
    store
        .settle_credits(&r.id, 3, 5)
        .await
        .unwrap_or_else(|e| panic!("{C}: settle failed: {e}"));
    let c = stored_credits(store, &r.id).await.expect("credits");
    assert_eq!(
        (c.remaining, c.leased),
        (3, 2),
        "{C}: settle must return the unspent credits and retire returned + spent from leased"
    );
    store.settle_credits(&r.id, 0, 100).await.expect("settle");
    let c = stored_credits(store, &r.id).await.expect("credits");
    assert_eq!(c.leased, 0, "{C}: settle must never take leased below zero");

    let set = store
        .change_credits(&r.id, CreditChange::Set(42))
        .await
        .unwrap_or_else(|e| panic!("{C}: change failed: {e}"));
    assert_eq!(
        set.map(|c| c.remaining),
        Some(42),
        "{C}: Set must set the balance and return it"
    );
    let added = store
        .change_credits(&r.id, CreditChange::Add(8))
        .await
        .expect("add");
    assert_eq!(added.map(|c| c.remaining), Some(50), "{C}: Add must add");
    for change in [
        CreditChange::Add(Credits::MAX),
        CreditChange::Add(Credits::MAX - 49),
        CreditChange::Add(u64::MAX),
        CreditChange::Set(Credits::MAX + 1),
    ] {
        assert!(
            matches!(
                store.change_credits(&r.id, change).await,
                Err(StoreError::Usage { ref id, error: UsageError::CreditsTooLarge { .. } }) if *id == r.id
            ),
            "{C}: {change:?} past the maximum must be refused with StoreError::Usage"
        );
        assert_eq!(
            stored_credits(store, &r.id).await.map(|c| c.remaining),
            Some(50),
            "{C}: a refused change must change nothing"
        );
    }
    let full = store
        .change_credits(&r.id, CreditChange::Add(Credits::MAX - 50))
        .await
        .expect("add up to the maximum");
    assert_eq!(
        full.map(|c| c.remaining),
        Some(Credits::MAX),
        "{C}: Add up to exactly the maximum must pass"
    );
    store.settle_credits(&r.id, 5, 0).await.expect("settle");
    assert_eq!(
        stored_credits(store, &r.id).await.map(|c| c.remaining),
        Some(Credits::MAX),
        "{C}: returned credits must never push the balance past the maximum"
    );
    assert_eq!(
        must_get(store, &r.id, C).await.generation,
        r.generation,
        "{C}: changes must not bump the generation"
    );

    let plain = record(owner, "live");
    must_insert(store, &plain, None, C).await;
    assert_eq!(
        store.change_credits(&plain.id, CreditChange::Set(5)).await,
        Ok(None),
        "{C}: a change on a key without credits must be Ok(None)"
    );
    store.settle_credits(&plain.id, 5, 5).await.expect("settle");
    assert_eq!(
        must_get(store, &plain.id, C).await.usage.credits,
        None,
        "{C}: settle and change must not give credits to a key without them"
    );
}

async fn refills_once_per_period<S: KeyStore>(store: &S, owner: &OwnerId) {
    let refill = Refill::daily(100).expect("refill");
    let due = |n: i64| {
        Some(RefillDue {
            amount: refill.amount(),
            period_start: day(n),
        })
    };
    let mut c = credits(10).with_refill(refill);
    c.refilled_for = Some(day(0));
    let r = metered(
        owner,
        UsageControls {
            rate_limits: RateLimits::none(),
            credits: Some(c),
        },
    );
    must_insert(store, &r, None, C).await;
    let g = lease(store, &r.id, 1, due(0)).await;
    assert_eq!(
        g.remaining, 9,
        "{C}: no refill in the period the balance was refilled for"
    );
    let g = lease(store, &r.id, 5, due(1)).await;
    assert_eq!(
        (g.granted, g.remaining),
        (5, 95),
        "{C}: the first lease of a new period must refill, then grant"
    );
    let c = stored_credits(store, &r.id).await.expect("credits");
    assert_eq!(
        c.refilled_for,
        Some(day(1)),
        "{C}: a refill must record its period"
    );
    let g = lease(store, &r.id, 5, due(1)).await;
    assert_eq!(g.remaining, 90, "{C}: a period must be refilled only once");
    let g = lease(store, &r.id, 5, due(0)).await;
    assert_eq!(g.remaining, 85, "{C}: an older period must never refill");
    let g = lease(store, &r.id, 0, due(2)).await;
    assert_eq!(
        (g.granted, g.remaining),
        (0, 100),
        "{C}: the next period must refill again (a lease of 0 too)"
    );
    // Never refilled: the first lease with a refill refills.
    let fresh = metered(
        owner,
        UsageControls {
            rate_limits: RateLimits::none(),
            credits: Some(credits(3).with_refill(refill)),
        },
    );
    must_insert(store, &fresh, None, C).await;
    let g = lease(store, &fresh.id, 1, due(0)).await;
    assert_eq!(
        g.remaining, 99,
        "{C}: a balance never refilled must be refilled by the first lease with a refill"
    );
}

async fn unknown_keys<S: KeyStore>(store: &S) {
    let id = KeyId::generate();
    assert_eq!(
        store.lease_credits(&id, 1, None).await,
        Err(StoreError::NotFound(id.clone())),
        "{C}: lease_credits of an unknown key must be NotFound"
    );
    assert_eq!(
        store.change_credits(&id, CreditChange::Add(1)).await,
        Err(StoreError::NotFound(id.clone())),
        "{C}: change_credits of an unknown key must be NotFound"
    );
    assert_eq!(
        store.change_credits(&id, CreditChange::Add(u64::MAX)).await,
        Err(StoreError::NotFound(id.clone())),
        "{C}: change_credits of an unknown key must be NotFound, even with a bad amount"
    );
    let limit = RateLimit::new("requests", 5, Duration::from_secs(1)).expect("limit");
    assert_eq!(
        store
            .lease_rate(&id, &rate(limit.name(), &limit, 1, 0))
            .await,
        Err(StoreError::NotFound(id.clone())),
        "{C}: lease_rate of an unknown key must be NotFound"
    );
    assert_eq!(
        store.settle_credits(&id, 1, 1).await,
        Ok(()),
        "{C}: settle_credits of an unknown key must do nothing"
    );
    assert_eq!(
        store
            .return_rate(&id, limit.name(), 1, limit.interval_us())
            .await,
        Ok(()),
        "{C}: return_rate of an unknown key must do nothing"
    );
}

async fn concurrent_credit_leases<S: KeyStore>(store: &Arc<S>, owner: &OwnerId) {
    const BALANCE: u64 = 500;
    let r = metered(
        owner,
        UsageControls {
            rate_limits: RateLimits::none(),
            credits: Some(credits(BALANCE)),
        },
    );
    must_insert(&**store, &r, None, C).await;
    let barrier = Arc::new(Barrier::new(32));
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let (store, barrier, id) = (Arc::clone(store), Arc::clone(&barrier), r.id.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let mut total = 0;
            // Until the balance is gone (bounded, in case a store never
            // runs dry).
            for _ in 0..200 {
                match store.lease_credits(&id, 3, None).await {
                    Ok(Some(g)) if g.granted == 0 => break,
                    Ok(Some(g)) => total += g.granted,
                    other => return Err(format!("{other:?}")),
                }
            }
            Ok(total)
        });
    }
    let mut granted = 0;
    while let Some(t) = tasks.join_next().await {
        match t.expect("task") {
            Ok(n) => granted += n,
            Err(e) => panic!("{C}: a concurrent lease failed: {e}"),
        }
    }
    assert_eq!(
        granted, BALANCE,
        "{C}: concurrent credit leases must grant exactly the balance"
    );
    let c = stored_credits(&**store, &r.id).await.expect("credits");
    assert_eq!(
        (c.remaining, c.leased),
        (0, BALANCE),
        "{C}: after concurrent leases everything granted must be leased"
    );
}

async fn rate_leases_follow_gcra<S: KeyStore>(store: &S, owner: &OwnerId) {
    let lim = limits(&[("requests", 10, 1), ("publish", 3, 60)]);
    let r = metered(
        owner,
        UsageControls {
            rate_limits: lim.clone(),
            credits: None,
        },
    );
    must_insert(store, &r, None, C).await;
    let requests = lim.get("requests").expect("limit").clone();
    let publish = lim.get("publish").expect("limit").clone();
    let now = t0().timestamp_micros();
    // (limit, want, microseconds after t0): bursts, an empty bucket, partial
    // refills, a clock that went back, a big ask.
    let steps: &[(&RateLimit, u32, i64)] = &[
        (&requests, 4, 0),
        (&requests, 4, 0),
        (&requests, 4, 0),
        (&requests, 1, 0),
        (&requests, 1, 99_999),
        (&requests, 3, 100_000),
        (&requests, 2, 250_000),
        (&requests, 2, 150_000),
        (&requests, 50, 5_000_000),
        (&publish, 2, 0),
        (&publish, 5, 1),
        (&publish, 1, 20_000_000),
        (&requests, 0, 6_000_000),
    ];
    let mut model: Vec<(String, Option<i64>)> = Vec::new();
    for (i, (limit, want, after)) in steps.iter().enumerate() {
        let at = now + after;
        let slot = match model.iter().position(|(n, _)| n == limit.name().as_str()) {
            Some(s) => s,
            None => {
                model.push((limit.name().to_string(), None));
                model.len() - 1
            }
        };
        let (expected, tat) = gcra_take(
            model[slot].1,
            at,
            *want,
            limit.interval_us(),
            limit.burst_us(),
        );
        model[slot].1 = Some(tat);
        let got = store
            .lease_rate(&r.id, &rate(limit.name(), limit, *want, at))
            .await
            .unwrap_or_else(|e| panic!("{C}: lease_rate failed: {e}"));
        assert_eq!(
            (got.granted, got.tat_us),
            (expected, tat),
            "{C}: rate lease step {i} must match gcra_take"
        );
    }
    // A return gives tokens back: the next lease gets them again (at a
    // time the bucket has room for one token, not two).
    let at = now + 21_000_000;
    let before = store
        .lease_rate(&r.id, &rate(publish.name(), &publish, 0, at))
        .await
        .expect("lease");
    store
        .return_rate(&r.id, publish.name(), 1, publish.interval_us())
        .await
        .unwrap_or_else(|e| panic!("{C}: return_rate failed: {e}"));
    let again = store
        .lease_rate(&r.id, &rate(publish.name(), &publish, 1, at))
        .await
        .expect("lease");
    let (expected, tat) = gcra_take(
        Some(before.tat_us - i64::try_from(publish.interval_us()).expect("fits")),
        at,
        1,
        publish.interval_us(),
        publish.burst_us(),
    );
    assert_eq!(
        (again.granted, again.tat_us),
        (expected, tat),
        "{C}: return_rate must move the bucket back by tokens × interval"
    );
    assert_eq!(
        again.granted, 1,
        "{C}: a returned token must be leasable again"
    );
}

async fn concurrent_rate_leases<S: KeyStore>(store: &Arc<S>, owner: &OwnerId) {
    let lim = limits(&[("requests", 10, 1)]);
    let r = metered(
        owner,
        UsageControls {
            rate_limits: lim.clone(),
            credits: None,
        },
    );
    must_insert(&**store, &r, None, C).await;
    let limit = lim.get("requests").expect("limit").clone();
    let now = t0().timestamp_micros();
    let barrier = Arc::new(Barrier::new(32));
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let (store, barrier, id) = (Arc::clone(store), Arc::clone(&barrier), r.id.clone());
        let lease = rate(limit.name(), &limit, 3, now);
        tasks.spawn(async move {
            barrier.wait().await;
            store.lease_rate(&id, &lease).await
        });
    }
    let mut grants = Vec::new();
    while let Some(t) = tasks.join_next().await {
        match t.expect("task") {
            Ok(g) => grants.push(g.granted),
            Err(e) => panic!("{C}: a concurrent rate lease failed: {e}"),
        }
    }
    // The same 32 leases taken in turn.
    let mut tat = None;
    let mut in_turn = Vec::new();
    for _ in 0..32 {
        let (g, t) = gcra_take(tat, now, 3, limit.interval_us(), limit.burst_us());
        in_turn.push(g);
        tat = Some(t);
    }
    grants.sort_unstable();
    in_turn.sort_unstable();
    assert_eq!(
        grants, in_turn,
        "{C}: concurrent rate leases must grant exactly what leases in turn would"
    );
    let last = store
        .lease_rate(&r.id, &rate(limit.name(), &limit, 0, now))
        .await
        .expect("lease");
    assert_eq!(
        Some(last.tat_us),
        tat,
        "{C}: after concurrent rate leases the bucket must be where leases in turn leave it"
    );
}

async fn removed_limits_start_full<S: KeyStore>(store: &S, owner: &OwnerId) {
    let both = limits(&[("requests", 2, 1), ("publish", 2, 60)]);
    let r = metered(
        owner,
        UsageControls {
            rate_limits: both.clone(),
            credits: None,
        },
    );
    must_insert(store, &r, None, C).await;
    let now = t0().timestamp_micros();
    for limit in &both {
        let g = store
            .lease_rate(&r.id, &rate(limit.name(), limit, 2, now))
            .await
            .expect("lease");
        assert_eq!(g.granted, 2, "{C}: a fresh bucket must be full");
    }
    // Remove `publish`, then add it back: its bucket starts full again;
    // `requests`, kept throughout, stays empty.
    let mut without = r.clone();
    without.generation += 1;
    without.usage.rate_limits = limits(&[("requests", 2, 1)]);
    store.update(&without, r.generation).await.expect("update");
    let mut again = without.clone();
    again.generation += 1;
    again.usage.rate_limits = both.clone();
    store
        .update(&again, without.generation)
        .await
        .expect("update");
    let publish = both.get("publish").expect("limit");
    let requests = both.get("requests").expect("limit");
    let g = store
        .lease_rate(&r.id, &rate(publish.name(), publish, 2, now))
        .await
        .expect("lease");
    assert_eq!(
        g.granted, 2,
        "{C}: update must drop the state of a limit the key no longer carries"
    );
    let g = store
        .lease_rate(&r.id, &rate(requests.name(), requests, 1, now))
        .await
        .expect("lease");
    assert_eq!(
        g.granted, 0,
        "{C}: update must keep the state of a limit the key still carries"
    );
}

async fn deleted_state_does_not_leak<S: KeyStore>(store: &S, owner: &OwnerId) {
    let lim = limits(&[("requests", 2, 1)]);
    let r = metered(
        owner,
        UsageControls {
            rate_limits: lim.clone(),
            credits: Some(credits(5)),
        },
    );
    must_insert(store, &r, None, C).await;
    let limit = lim.get("requests").expect("limit").clone();
    let now = t0().timestamp_micros();
    store
        .lease_rate(&r.id, &rate(limit.name(), &limit, 2, now))
        .await
        .expect("lease");
    lease(store, &r.id, 2, None).await;
    store
        .delete(&r.id)
        .await
        .unwrap_or_else(|e| panic!("{C}: delete failed: {e}"));
    assert_eq!(
        store.get(&r.id).await,
        Ok(None),
        "{C}: a deleted key must be gone"
    );
    assert!(
        must_list(store, &query(owner), C)
            .await
            .iter()
            .all(|l| l.id != r.id),
        "{C}: a deleted key must not be listed"
    );
    assert_eq!(
        store
            .lease_rate(&r.id, &rate(limit.name(), &limit, 1, now))
            .await,
        Err(StoreError::NotFound(r.id.clone())),
        "{C}: a deleted key's rate state must not be leased from"
    );
    assert_eq!(
        store.lease_credits(&r.id, 1, None).await,
        Err(StoreError::NotFound(r.id.clone())),
        "{C}: a deleted key's credits must not be leased from"
    );
    assert_eq!(
        store.insert(&r, None).await,
        Err(StoreError::DuplicateId(r.id.clone())),
        "{C}: a deleted key's id must not be reused"
    );
}
