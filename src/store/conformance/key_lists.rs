//! Key checks on listings: owner, environment and status filters, paging.

use chrono::{DateTime, Utc};

use super::fixtures::*;
use crate::ids::KeyId;
use crate::key::{KeyRecord, KeyStatus};
use crate::store::KeyStore;

/// A revoked record stays: `get` returns it with `revoked_at`, the
/// unfiltered listing and the `Revoked` filter include it, the `Active`
/// filter does not.
pub async fn revoked_stays_listed<S: KeyStore>(store: S) {
    const C: &str = "revoked_stays_listed";
    let o = owner();
    let active = record(&o, "live");
    let mut revoked = record(&o, "live");
    must_insert(&store, &active, None, C).await;
    must_insert(&store, &revoked, None, C).await;
    revoked.revoked_at = Some(t0() - secs(5));
    revoked.generation = 2;
    if let Err(e) = store.update(&revoked, 1).await {
        panic!("{C}: revoking update failed: {e}");
    }
    assert_eq!(
        must_get(&store, &revoked.id, C).await,
        revoked,
        "{C}: revoked record not returned"
    );
    let all = must_list(&store, &query(&o), C).await;
    assert_eq!(
        all.len(),
        2,
        "{C}: unfiltered listing must include the revoked key"
    );
    assert!(
        all.contains(&revoked),
        "{C}: revoked key missing from the listing"
    );
    let only_revoked = must_list(&store, &query(&o).status(KeyStatus::Revoked), C).await;
    assert_eq!(
        ids(&only_revoked),
        vec![revoked.id.as_str()],
        "{C}: Revoked filter"
    );
    let only_active = must_list(&store, &query(&o).status(KeyStatus::Active), C).await;
    assert_eq!(
        ids(&only_active),
        vec![active.id.as_str()],
        "{C}: Active filter"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// A listing returns only the owner's keys, and with an environment only
/// that environment's.
pub async fn list_filters_owner_and_environment<S: KeyStore>(store: S) {
    const C: &str = "list_filters_owner_and_environment";
    let o = owner();
    let other = owner();
    let mut live = vec![record(&o, "live"), record(&o, "live"), record(&o, "live")];
    let mut test = vec![record(&o, "test"), record(&o, "test")];
    let foreign = [record(&other, "live"), record(&other, "test")];
    for r in live.iter().chain(&test).chain(&foreign) {
        must_insert(&store, r, None, C).await;
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    test.sort_by(|a, b| a.id.cmp(&b.id));
    let got = must_list(&store, &query(&o).environment(env("live")), C).await;
    assert_eq!(got, live, "{C}: environment filter 'live'");
    let got = must_list(&store, &query(&o).environment(env("test")), C).await;
    assert_eq!(got, test, "{C}: environment filter 'test'");
    let got = must_list(&store, &query(&o).environment(env("staging")), C).await;
    assert!(
        got.is_empty(),
        "{C}: an environment with no keys must list nothing"
    );
    let got = must_list(&store, &query(&o), C).await;
    assert_eq!(got.len(), 5, "{C}: unfiltered listing of the owner");
    assert!(
        got.iter().all(|r| r.owner == o),
        "{C}: listing returned another owner's key"
    );
    let got = must_list(&store, &query(&owner()), C).await;
    assert!(
        got.is_empty(),
        "{C}: an owner with no keys must list nothing"
    );
    delete_keys_of(&store, &[&o, &other], C).await;
}

/// The status filter judges every key at `query.now`, not at the store's
/// clock: a key expiring between two `now`s moves from Active to Expired;
/// revoked wins over expired.
pub async fn list_filters_status_at_now<S: KeyStore>(store: S) {
    const C: &str = "list_filters_status_at_now";
    let o = owner();
    let never = record(&o, "live");
    let mut later = record(&o, "live");
    later.expires_at = Some(t0() + secs(60));
    let mut past = record(&o, "live");
    past.expires_at = Some(t0() - secs(60));
    let mut at_now = record(&o, "live");
    at_now.expires_at = Some(t0()); // expires_at <= now is expired
    let mut revoked_expired = record(&o, "live");
    revoked_expired.expires_at = Some(t0() - secs(60));
    revoked_expired.revoked_at = Some(t0() - secs(120));
    for r in [&never, &later, &past, &at_now, &revoked_expired] {
        must_insert(&store, r, None, C).await;
    }
    let sorted = |mut v: Vec<&KeyRecord>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let listed = |v: Vec<KeyRecord>| {
        v.into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect::<Vec<_>>()
    };

    let active = must_list(&store, &query(&o).status(KeyStatus::Active), C).await;
    assert_eq!(
        listed(active),
        sorted(vec![&never, &later]),
        "{C}: Active at t0"
    );
    let expired = must_list(&store, &query(&o).status(KeyStatus::Expired), C).await;
    assert_eq!(
        listed(expired),
        sorted(vec![&past, &at_now]),
        "{C}: Expired at t0"
    );
    let revoked = must_list(&store, &query(&o).status(KeyStatus::Revoked), C).await;
    assert_eq!(
        listed(revoked),
        sorted(vec![&revoked_expired]),
        "{C}: Revoked at t0"
    );

    let mut q = query(&o).status(KeyStatus::Expired);
    q.now = t0() + secs(3600);
    let expired = must_list(&store, &q, C).await;
    assert_eq!(
        listed(expired),
        sorted(vec![&later, &past, &at_now]),
        "{C}: Expired an hour after t0"
    );
    let mut q = query(&o).status(KeyStatus::Active);
    q.now = t0() - secs(3600);
    let active = must_list(&store, &q, C).await;
    assert_eq!(
        listed(active),
        sorted(vec![&never, &later, &past, &at_now]),
        "{C}: Active an hour before t0"
    );
    let q = query(&o).environment(env("test")).status(KeyStatus::Active);
    assert!(
        must_list(&store, &q, C).await.is_empty(),
        "{C}: status and environment combine"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// Listings are ordered by id in byte order (uppercase before lowercase), and
/// `after` + `limit` page through all keys with no gap and no repeat.
pub async fn list_paginates_by_id<S: KeyStore>(store: S) {
    const C: &str = "list_paginates_by_id";
    let o = owner();
    let mut all = Vec::new();
    // Mixed-case ids whose byte order differs from a case-insensitive order.
    for fixed in [
        "AAAAzzzz", "aaaaAAAA", "ZZZZaaaa", "zzzzZZZZ", "0000aaaa", "BBBBbbbb",
    ] {
        let mut r = record(&o, "live");
        r.id =
            KeyId::new(&format!("{fixed}{}", &KeyId::generate().as_str()[..6])).expect("valid id");
        r.secret_hash = phc(&r.id);
        all.push(r);
    }
    for _ in 0..19 {
        all.push(record(&o, "live"));
    }
    for r in &all {
        must_insert(&store, r, None, C).await;
    }
    all.sort_by(|a, b| a.id.as_str().as_bytes().cmp(b.id.as_str().as_bytes()));

    let one_page = must_list(&store, &query(&o), C).await;
    assert_eq!(
        ids(&one_page),
        ids(&all),
        "{C}: listing not ordered by id in byte order"
    );

    let mut pages = Vec::new();
    let mut after: Option<KeyId> = None;
    for _ in 0..10 {
        let mut q = query(&o).limit(10);
        if let Some(a) = after.clone() {
            q = q.after(a);
        }
        let page = must_list(&store, &q, C).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10, "{C}: page larger than the limit");
        after = page.last().map(|r| r.id.clone());
        pages.push(page);
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![10, 10, 5],
        "{C}: page sizes with limit 10 over 25 keys"
    );
    let joined: Vec<KeyRecord> = pages.into_iter().flatten().collect();
    assert_eq!(
        joined, all,
        "{C}: pages joined must equal the full ordered listing"
    );

    let q = query(&o).after(all[0].id.clone()).limit(1);
    assert_eq!(
        ids(&must_list(&store, &q, C).await),
        vec![all[1].id.as_str()],
        "{C}: `after` is exclusive"
    );
    let q = query(&o).environment(env("live")).after(all[23].id.clone());
    assert_eq!(
        ids(&must_list(&store, &q, C).await),
        vec![all[24].id.as_str()],
        "{C}: `after` combined with a filter"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// Suspended is a status of its own: `Suspended` lists suspended keys that
/// are neither revoked nor expired at `now`, `Active` excludes them, and
/// revoked and expired win over suspended.
pub async fn list_filters_suspended_and_active<S: KeyStore>(store: S) {
    const C: &str = "list_filters_suspended_and_active";
    let o = owner();
    let active = record(&o, "live");
    let mut suspended = record(&o, "live");
    suspended.suspended_at = Some(t0() - secs(10));
    let mut suspended_expiring = record(&o, "live");
    suspended_expiring.suspended_at = Some(t0() - secs(10));
    suspended_expiring.expires_at = Some(t0() + secs(60));
    let mut suspended_expired = record(&o, "live");
    suspended_expired.suspended_at = Some(t0() - secs(10));
    suspended_expired.expires_at = Some(t0() - secs(60));
    let mut suspended_revoked = record(&o, "live");
    suspended_revoked.suspended_at = Some(t0() - secs(10));
    suspended_revoked.revoked_at = Some(t0() - secs(5));
    let all = [
        &active,
        &suspended,
        &suspended_expiring,
        &suspended_expired,
        &suspended_revoked,
    ];
    for r in all {
        must_insert(&store, r, None, C).await;
    }
    let at = |now: DateTime<Utc>, status: KeyStatus| {
        let mut q = query(&o).status(status);
        q.now = now;
        q
    };
    let expect = |now: DateTime<Utc>, status: KeyStatus| {
        let mut v: Vec<String> = all
            .iter()
            .filter(|r| r.status(now) == status)
            .map(|r| r.id.as_str().to_owned())
            .collect();
        v.sort();
        v
    };
    for now in [t0(), t0() + secs(3_600), t0() - secs(3_600)] {
        for status in [
            KeyStatus::Active,
            KeyStatus::Suspended,
            KeyStatus::Expired,
            KeyStatus::Revoked,
        ] {
            let got: Vec<String> = must_list(&store, &at(now, status), C)
                .await
                .into_iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            assert_eq!(got, expect(now, status), "{C}: {status:?} at {now}");
        }
    }
    // Spelled out at t0, so a wrong KeyRecord::status cannot hide a wrong store.
    let got = must_list(&store, &at(t0(), KeyStatus::Suspended), C).await;
    let mut want = vec![suspended.id.as_str(), suspended_expiring.id.as_str()];
    want.sort();
    assert_eq!(ids(&got), want, "{C}: Suspended at t0");
    let got = must_list(&store, &at(t0(), KeyStatus::Active), C).await;
    assert_eq!(ids(&got), vec![active.id.as_str()], "{C}: Active at t0");
    delete_keys_of(&store, &[&o], C).await;
}
