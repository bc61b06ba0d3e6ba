//! The rate-limit checks of [`usage_conformance`](super::usage_conformance).

use std::sync::Arc;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use super::usage::{C, credits, lease, limits, metered, rate};
use crate::ids::OwnerId;
use crate::store::{KeyStore, StoreError};
use crate::usage::{RateLimit, UsageControls, gcra_take};

pub(super) async fn rate_leases_follow_gcra<S: KeyStore>(store: &S, owner: &OwnerId) {
    let lim = limits(&[("requests", 10, 1), ("publish", 3, 60), ("uploads", 10, 10)]);
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
    rate_give_backs(store, &r.id, lim.get("uploads").expect("limit"), now).await;
}

/// Give-backs of unspent tokens ([`KeyStore::return_rate`]) on a bucket of
/// 10 tokens, one a second, each step checked by what the next lease gets.
async fn rate_give_backs<S: KeyStore>(
    store: &S,
    id: &crate::ids::KeyId,
    limit: &RateLimit,
    t: i64,
) {
    let name = limit.name();
    let lease = |want, at| rate(name, limit, want, at);
    let give = |tokens, number| store.return_rate(id, name, tokens, limit.interval_us(), number);
    let granted = |want, at| async move {
        store
            .lease_rate(id, &lease(want, at))
            .await
            .unwrap_or_else(|e| panic!("{C}: lease_rate failed: {e}"))
    };
    let first = granted(4, t).await;
    // The latest lease's own tokens go back whole.
    give(2, first.lease).await.expect("return_rate");
    let second = granted(10, t).await;
    assert_eq!(
        (second.granted, second.lease),
        (8, first.lease + 1),
        "{C}: the latest lease's tokens given back must be leasable again, \
         and each lease must be numbered one more than the one before"
    );
    // The second lease found the TAT 2 tokens ahead of the clock: an
    // earlier lease's tokens move it back at most that far (further, and
    // that lease would have started from the clock: the give-back would
    // credit time that has passed); the latest lease's go back whole.
    give(4, first.lease).await.expect("return_rate");
    give(3, second.lease).await.expect("return_rate");
    let third = granted(10, t).await;
    assert_eq!(
        third.granted, 5,
        "{C}: of an earlier lease's tokens only the slack (2) may go back, \
         and the latest lease's (3) whole"
    );
    // Numbers the bucket never gave move nothing.
    give(5, third.lease + 1).await.expect("return_rate");
    give(5, first.lease.wrapping_sub(1))
        .await
        .expect("return_rate");
    give(5, u64::MAX).await.expect("return_rate");
    let none = granted(1, t).await;
    assert_eq!(
        none.granted, 0,
        "{C}: a give-back with a lease number the bucket never gave must move nothing"
    );
    // An hour on, the TAT is behind the clock: the lease starts the bucket
    // again from it. Tokens leased before that restart are refused back
    // (their charge is forgotten: given back, they would count twice);
    // tokens leased since go back.
    let later = t + 3_600_000_000;
    let restarted = granted(1, later).await;
    assert_eq!(restarted.granted, 1, "{C}: a restarted bucket is full");
    give(10, third.lease).await.expect("return_rate");
    let full = granted(10, later).await;
    assert_eq!(
        full.granted, 9,
        "{C}: tokens leased before the bucket's last restart must not go back"
    );
    give(9, full.lease).await.expect("return_rate");
    give(1, restarted.lease).await.expect("return_rate");
    let again = granted(10, later).await;
    assert_eq!(
        again.granted, 10,
        "{C}: tokens leased since the restart must go back (the latest lease's \
         9 whole; the restart's 1 within the slack: the lease after it found \
         the TAT one token ahead)"
    );
}

pub(super) async fn concurrent_rate_leases<S: KeyStore>(store: &Arc<S>, owner: &OwnerId) {
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

pub(super) async fn removed_limits_start_full<S: KeyStore>(store: &S, owner: &OwnerId) {
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

pub(super) async fn deleted_state_does_not_leak<S: KeyStore>(store: &S, owner: &OwnerId) {
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
