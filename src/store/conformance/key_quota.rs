//! Key checks on the quota: what counts, what a refusal writes, races.

use std::sync::Arc;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use crate::store::StoreError;
use crate::store::{KeyStore, QuotaCheck};

/// The quota counts live keys per owner **and** environment: with quota 2,
/// a third key in the same environment is [`StoreError::QuotaExceeded`],
/// while another environment, another owner, or no quota check still insert.
pub async fn quota_counts_live_keys<S: KeyStore>(store: S) {
    const C: &str = "quota_counts_live_keys";
    let o = owner();
    must_insert(&store, &record(&o, "live"), quota(2), C).await;
    must_insert(&store, &record(&o, "live"), quota(2), C).await;
    let third = record(&o, "live");
    assert_eq!(
        store.insert(&third, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: third live key with quota 2"
    );
    must_insert(&store, &record(&o, "test"), quota(2), C).await;
    let other = owner();
    must_insert(&store, &record(&other, "live"), quota(2), C).await;
    must_insert(&store, &third, quota(3), C).await;
    let fourth = record(&o, "live");
    assert_eq!(
        store.insert(&fourth, quota(3)).await,
        Err(StoreError::QuotaExceeded { limit: 3 }),
        "{C}: fourth live key with quota 3"
    );
    must_insert(&store, &fourth, None, C).await;
    let live = must_list(&store, &query(&o).environment(env("live")), C).await;
    assert_eq!(
        live.len(),
        4,
        "{C}: an insert without a quota check is not limited"
    );
    delete_keys_of(&store, &[&o, &other], C).await;
}

/// Revoked keys and keys expired at `quota.now` do not count against the quota.
pub async fn quota_frees_slot_on_revoke_and_expiry<S: KeyStore>(store: S) {
    const C: &str = "quota_frees_slot_on_revoke_and_expiry";
    let o = owner();
    let mut a = record(&o, "live");
    let mut b = record(&o, "live");
    b.expires_at = Some(t0() + secs(60));
    must_insert(&store, &a, quota(2), C).await;
    must_insert(&store, &b, quota(2), C).await;
    let c = record(&o, "live");
    assert_eq!(
        store.insert(&c, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: quota full"
    );
    a.revoked_at = Some(t0());
    a.generation = 2;
    if let Err(e) = store.update(&a, 1).await {
        panic!("{C}: revoking update failed: {e}");
    }
    must_insert(&store, &c, quota(2), C).await;
    let d = record(&o, "live");
    assert_eq!(
        store.insert(&d, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: quota full again after the freed slot was used"
    );
    let later = Some(QuotaCheck::new(2, t0() + secs(60)));
    must_insert(&store, &d, later, C).await;
    let mut already_expired = record(&o, "live");
    already_expired.expires_at = Some(t0() - secs(1));
    must_insert(&store, &already_expired, None, C).await;
    let e = record(&o, "live");
    assert_eq!(
        store.insert(&e, later).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: an expired key must not free more than its own slot"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// A refused insert (quota) writes nothing: the id is unknown afterwards.
pub async fn quota_refusal_writes_nothing<S: KeyStore>(store: S) {
    const C: &str = "quota_refusal_writes_nothing";
    let o = owner();
    must_insert(&store, &record(&o, "live"), quota(1), C).await;
    let refused = record(&o, "live");
    assert_eq!(
        store.insert(&refused, quota(1)).await,
        Err(StoreError::QuotaExceeded { limit: 1 }),
        "{C}: second key with quota 1"
    );
    assert_eq!(
        store.get(&refused.id).await,
        Ok(None),
        "{C}: a refused insert was stored"
    );
    assert_eq!(
        must_list(&store, &query(&o), C).await.len(),
        1,
        "{C}: listing after refusal"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// 64 inserts for one owner and environment start at the same moment with
/// quota 3: exactly 3 succeed, the other 61 are
/// [`StoreError::QuotaExceeded`], and exactly 3 keys are stored.
///
/// Run it on a multi-threaded runtime for real parallelism (the macro does).
pub async fn quota_holds_under_concurrency<S: KeyStore>(store: S) {
    const C: &str = "quota_holds_under_concurrency";
    const TASKS: usize = 64;
    let store = Arc::new(store);
    let o = owner();
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut set = JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let r = record(&o, "live");
        set.spawn(async move {
            barrier.wait().await;
            store.insert(&r, quota(3)).await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => ok += 1,
            Ok(Err(StoreError::QuotaExceeded { limit: 3 })) => refused += 1,
            Ok(Err(e)) => panic!(
                "{C}: a concurrent insert failed with {e}, expected success or QuotaExceeded"
            ),
            Err(e) => panic!("{C}: an insert task panicked: {e}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (3, TASKS - 3),
        "{C}: successes and refusals with quota 3"
    );
    let stored = must_list(&store, &query(&o), C).await;
    assert_eq!(stored.len(), 3, "{C}: stored keys after the race");
    delete_keys_of(&store, &[&o], C).await;
}

/// A suspended key still counts against the quota (it can be resumed).
pub async fn quota_counts_suspended_keys<S: KeyStore>(store: S) {
    const C: &str = "quota_counts_suspended_keys";
    let o = owner();
    let mut a = record(&o, "live");
    must_insert(&store, &a, quota(2), C).await;
    let mut b = record(&o, "live");
    b.suspended_at = Some(t0() - secs(1));
    must_insert(&store, &b, quota(2), C).await;
    a.suspended_at = Some(t0());
    a.generation = 2;
    if let Err(e) = store.update(&a, 1).await {
        panic!("{C}: suspending update failed: {e}");
    }
    let c = record(&o, "live");
    assert_eq!(
        store.insert(&c, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: two suspended keys fill a quota of 2"
    );
    must_insert(&store, &c, quota(3), C).await;
    delete_keys_of(&store, &[&o], C).await;
}
