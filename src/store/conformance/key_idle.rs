//! Key check on idle expiry: the status filter and the quota judge a key
//! unused for the query's idle window as expired, as a check does.

use chrono::TimeDelta;

use super::fixtures::*;
use crate::key::{KeyRecord, KeyStatus};
use crate::store::StoreError;
use crate::store::{KeyStore, QuotaCheck};

/// With `idle_expiry` given, a key neither revoked nor past its expiry
/// whose last use (or creation, if never used, or if the use is recorded
/// before the creation) is that long before `now` or more is listed under
/// [`KeyStatus::Expired`], never under Active or Suspended, and does not
/// count against a [`QuotaCheck`] with the same window
/// ([`KeyRecord::status_with_idle`], [`QuotaCheck::counts`]). A key
/// exactly at the window is expired; a microsecond inside it is not. A
/// recorded use brings a key back. Without `idle_expiry`, nothing changes.
/// [`KeyStore::count`] agrees with the listing, idle window included.
pub async fn list_and_quota_apply_idle_expiry<S: KeyStore>(store: S) {
    const C: &str = "list_and_quota_apply_idle_expiry";
    let idle = TimeDelta::days(10);
    let days = TimeDelta::days;
    let o = owner();
    let made = |created: TimeDelta, used: Option<TimeDelta>| {
        let mut r = record(&o, "live");
        r.created_at = t0() - created;
        r.last_used_at = used.map(|u| t0() - u);
        r
    };
    let fresh = made(days(5), None);
    let stale = made(days(20), None);
    let used = made(days(20), Some(days(2)));
    let used_stale = made(days(30), Some(days(15)));
    let boundary = made(idle, None);
    let inside = made(idle - TimeDelta::microseconds(1), None);
    let use_before_creation = made(days(5), Some(days(40)));
    let mut suspended_stale = made(days(20), None);
    suspended_stale.suspended_at = Some(t0() - days(19));
    let mut suspended_fresh = made(days(1), None);
    suspended_fresh.suspended_at = Some(t0() - secs(60));
    let mut revoked_stale = made(days(20), None);
    revoked_stale.revoked_at = Some(t0() - days(19));
    let mut expired_used = made(days(20), Some(days(1)));
    expired_used.expires_at = Some(t0() - secs(1));
    let all: Vec<&KeyRecord> = vec![
        &fresh,
        &stale,
        &used,
        &used_stale,
        &boundary,
        &inside,
        &use_before_creation,
        &suspended_stale,
        &suspended_fresh,
        &revoked_stale,
        &expired_used,
    ];
    for r in &all {
        must_insert(&store, r, None, C).await;
    }
    let listed = |status: KeyStatus, window: Option<TimeDelta>| {
        let q = query(&o).status(status).idle_expiry(window);
        let store = &store;
        async move {
            let mut got: Vec<String> = must_list(store, &q, C)
                .await
                .iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            got.sort();
            got
        }
    };
    let sorted = |records: &[&KeyRecord]| {
        let mut v: Vec<String> = records.iter().map(|r| r.id.as_str().to_owned()).collect();
        v.sort();
        v
    };
    // Spelled out, so a wrong KeyRecord::status_with_idle cannot hide a wrong store.
    let want = [
        (
            KeyStatus::Active,
            sorted(&[&fresh, &used, &inside, &use_before_creation]),
        ),
        (KeyStatus::Suspended, sorted(&[&suspended_fresh])),
        (
            KeyStatus::Expired,
            sorted(&[
                &stale,
                &used_stale,
                &boundary,
                &suspended_stale,
                &expired_used,
            ]),
        ),
        (KeyStatus::Revoked, sorted(&[&revoked_stale])),
    ];
    for (status, ids) in &want {
        assert_eq!(
            &listed(*status, Some(idle)).await,
            ids,
            "{C}: {status:?} at t0 with a 10-day idle expiry"
        );
        let counted = store
            .count(&query(&o).status(*status).idle_expiry(Some(idle)))
            .await
            .unwrap_or_else(|e| panic!("{C}: count failed: {e}"));
        assert_eq!(
            counted,
            ids.len() as u64,
            "{C}: {status:?}: count agrees with list under the idle expiry"
        );
        let by_rule: Vec<&KeyRecord> = all
            .iter()
            .copied()
            .filter(|r| r.status_with_idle(t0(), Some(idle)) == *status)
            .collect();
        assert_eq!(
            &sorted(&by_rule),
            ids,
            "{C}: {status:?}: KeyRecord::status_with_idle disagrees"
        );
    }
    // Without a window, idle keys are what their expiry says.
    let active = listed(KeyStatus::Active, None).await;
    assert!(
        active.contains(&stale.id.as_str().to_owned()),
        "{C}: without idle_expiry an unused key is still Active"
    );
    assert_eq!(
        listed(KeyStatus::Expired, None).await,
        sorted(&[&expired_used]),
        "{C}: Expired without idle_expiry"
    );

    // The quota: 5 keys count with the window (4 active, 1 suspended), 9
    // without it.
    let live: Vec<&KeyRecord> = all
        .iter()
        .copied()
        .filter(|r| QuotaCheck::new(1, t0()).idle_expiry(Some(idle)).counts(r))
        .collect();
    assert_eq!(live.len(), 5, "{C}: QuotaCheck::counts");
    let extra = record(&o, "live");
    assert_eq!(
        store.insert(&extra, Some(QuotaCheck::new(6, t0()))).await,
        Err(StoreError::QuotaExceeded { limit: 6 }),
        "{C}: without idle_expiry, unused keys count"
    );
    let with_idle = Some(QuotaCheck::new(6, t0()).idle_expiry(Some(idle)));
    must_insert(&store, &extra, with_idle, C).await;
    let another = record(&o, "live");
    assert_eq!(
        store.insert(&another, with_idle).await,
        Err(StoreError::QuotaExceeded { limit: 6 }),
        "{C}: 5 live keys and the one just inserted fill a quota of 6"
    );
    // A use brings the stale key back: Active, and counted.
    if let Err(e) = store
        .record_usage(&stale.id, t0() - days(1), Some(ip("192.0.2.1")))
        .await
    {
        panic!("{C}: record_usage failed: {e}");
    }
    assert!(
        listed(KeyStatus::Active, Some(idle))
            .await
            .contains(&stale.id.as_str().to_owned()),
        "{C}: a key used a day ago is Active again"
    );
    assert_eq!(
        store
            .insert(
                &another,
                Some(QuotaCheck::new(7, t0()).idle_expiry(Some(idle)))
            )
            .await,
        Err(StoreError::QuotaExceeded { limit: 7 }),
        "{C}: the key used again counts against the quota"
    );
    delete_keys_of(&store, &[&o], C).await;
}
