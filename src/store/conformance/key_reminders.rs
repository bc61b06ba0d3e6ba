//! Key checks on expiry reminders: taken once, in order, also under races.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use crate::key::KeyRecord;
use crate::store::KeyStore;
use crate::store::StoreError;

/// `take_expiry_reminders(now, until, limit)` returns exactly the keys that
/// expire in `(now, until]`, are not revoked and not yet reminded (suspended
/// ones included), ordered by expiry, at most `limit`, with `reminded_at`
/// set to `now` in the result and in the store, other fields and the
/// generation unchanged. A second call returns the rest, a third none.
pub async fn take_expiry_reminders_returns_due_keys<S: KeyStore>(store: S) {
    const C: &str = "take_expiry_reminders_returns_due_keys";
    let now = own_epoch();
    let until = now + TimeDelta::days(7);
    let o = owner();
    let expiring = |at: DateTime<Utc>| {
        let mut r = record(&o, "live");
        r.expires_at = Some(at);
        r
    };
    let at_until = expiring(until);
    let in_two_days = expiring(now + TimeDelta::days(2));
    let mut suspended = expiring(now + TimeDelta::days(3));
    suspended.suspended_at = Some(now - secs(1));
    suspended.generation = 9;
    let just_after = expiring(now + TimeDelta::microseconds(1));
    let mut used = expiring(now + TimeDelta::days(5));
    used.last_used_at = Some(now - secs(5));
    used.last_used_ip = Some(ip("2001:db8::5"));
    // In expiry order: the order the calls must return them in.
    let due = [&just_after, &in_two_days, &suspended, &used, &at_until];

    let expired_at_now = expiring(now);
    let expired_before = expiring(now - TimeDelta::days(1));
    let too_late = expiring(until + TimeDelta::microseconds(1));
    let mut revoked = expiring(now + TimeDelta::days(1));
    revoked.revoked_at = Some(now - secs(10));
    let mut reminded = expiring(now + TimeDelta::days(1));
    reminded.reminded_at = Some(now - TimeDelta::days(1));
    let never = record(&o, "live");
    let not_due = [
        &expired_at_now,
        &expired_before,
        &too_late,
        &revoked,
        &reminded,
        &never,
    ];
    // Inserted out of expiry order.
    for r in [&at_until, &revoked, &used, &expired_at_now, &just_after]
        .into_iter()
        .chain([&never, &suspended, &too_late, &in_two_days, &reminded])
        .chain([&expired_before])
    {
        must_insert(&store, r, None, C).await;
    }
    let reminded_copy = |r: &KeyRecord| {
        let mut r = r.clone();
        r.reminded_at = Some(now);
        r
    };
    let take = |limit: usize| {
        let store = &store;
        async move {
            match store.take_expiry_reminders(now, until, limit).await {
                Ok(v) => v,
                Err(e) => panic!("{C}: take_expiry_reminders failed: {e}"),
            }
        }
    };

    let first = take(2).await;
    let want: Vec<KeyRecord> = due[..2].iter().map(|r| reminded_copy(r)).collect();
    assert_eq!(
        first, want,
        "{C}: first call with limit 2 must return the two keys expiring first, marked"
    );
    let rest = take(100).await;
    let want: Vec<KeyRecord> = due[2..].iter().map(|r| reminded_copy(r)).collect();
    assert_eq!(
        rest, want,
        "{C}: second call must return the remaining due keys, ordered by expiry"
    );
    assert!(
        take(100).await.is_empty(),
        "{C}: a third call must return nothing: every due key was reminded"
    );
    assert!(
        store
            .take_expiry_reminders(now, until, 0)
            .await
            .is_ok_and(|v| v.is_empty()),
        "{C}: limit 0 must return nothing"
    );
    for r in due {
        assert_eq!(
            must_get(&store, &r.id, C).await,
            reminded_copy(r),
            "{C}: a taken key must be stored with reminded_at = now and nothing else changed"
        );
    }
    for r in not_due {
        assert_eq!(
            must_get(&store, &r.id, C).await,
            *r,
            "{C}: a key that was not due was changed"
        );
    }
    delete_keys_of(&store, &[&o], C).await;
}

/// Two callers taking reminders at the same time, in batches of 3, over 50
/// due keys: every key is returned exactly once in total, and afterwards
/// none is left.
///
/// Run it on a multi-threaded runtime for real parallelism (the macro does).
pub async fn take_expiry_reminders_once_under_concurrency<S: KeyStore>(store: S) {
    const C: &str = "take_expiry_reminders_once_under_concurrency";
    const KEYS: usize = 50;
    const WORKERS: usize = 2;
    let now = own_epoch();
    let until = now + TimeDelta::days(30);
    let o = owner();
    let mut want = Vec::new();
    for i in 0..KEYS {
        let mut r = record(&o, "live");
        // Some keys share an expiry instant.
        r.expires_at = Some(now + TimeDelta::hours(1 + (i as i64 % 17)));
        must_insert(&store, &r, None, C).await;
        want.push(r.id.as_str().to_owned());
    }
    want.sort();
    let store = Arc::new(store);
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut set = JoinSet::new();
    for _ in 0..WORKERS {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = store.take_expiry_reminders(now, until, 3).await?;
                if batch.is_empty() {
                    return Ok::<_, StoreError>(got);
                }
                if batch.len() > 3 {
                    panic!("{C}: a call with limit 3 returned {} keys", batch.len());
                }
                got.extend(batch.into_iter().map(|r| r.id.as_str().to_owned()));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(got)) => all.extend(got),
            Ok(Err(e)) => panic!("{C}: a concurrent take_expiry_reminders failed: {e}"),
            Err(e) => panic!("{C}: a worker panicked: {e}"),
        }
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "{C}: a key was returned to more than one call"
    );
    all.sort();
    assert_eq!(
        all, want,
        "{C}: every due key must be returned exactly once"
    );
    match store.take_expiry_reminders(now, until, KEYS).await {
        Ok(left) => assert!(left.is_empty(), "{C}: keys left after the workers finished"),
        Err(e) => panic!("{C}: final take_expiry_reminders failed: {e}"),
    }
    delete_keys_of(&store, &[&o], C).await;
}
