//! The credit checks of [`usage_conformance`](super::usage_conformance).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use super::usage::{C, credits, day, lease, metered, rate, stored_credits};
use crate::ids::{KeyId, OwnerId};
use crate::store::{KeyStore, StoreError};
use crate::usage::{
    CreditChange, Credits, RateLimit, RateLimits, Refill, RefillDue, UsageControls, UsageError,
};

pub(super) async fn leases_settles_and_changes<S: KeyStore>(store: &S, owner: &OwnerId) {
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

pub(super) async fn refills_once_per_period<S: KeyStore>(store: &S, owner: &OwnerId) {
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

pub(super) async fn unknown_keys<S: KeyStore>(store: &S) {
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
            .return_rate(&id, limit.name(), 1, limit.interval_us(), 0)
            .await,
        Ok(()),
        "{C}: return_rate of an unknown key must do nothing"
    );
}

pub(super) async fn concurrent_credit_leases<S: KeyStore>(store: &Arc<S>, owner: &OwnerId) {
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
