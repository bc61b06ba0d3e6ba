//! Key checks on single records: round trips, duplicates, compare-and-swap
//! updates, deletes, usage fields.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};

use super::fixtures::*;
use crate::ids::KeyId;
use crate::key::KeyKind;
use crate::store::KeyStore;
use crate::store::StoreError;

/// Every field of an inserted record comes back from `get` exactly: grants,
/// scopes, IPv4 and IPv6 ranges, optional times to the microsecond, a
/// generation above 2³², non-ASCII names and the hash string.
pub async fn insert_then_get_roundtrips<S: KeyStore>(store: S) {
    const C: &str = "insert_then_get_roundtrips";
    let o = owner();
    let full = full_record(&o);
    let minimal = record(&o, "test");
    must_insert(&store, &full, None, C).await;
    must_insert(&store, &minimal, None, C).await;
    assert_eq!(
        must_get(&store, &full.id, C).await,
        full,
        "{C}: full record changed on the way"
    );
    assert_eq!(
        must_get(&store, &minimal.id, C).await,
        minimal,
        "{C}: minimal record changed on the way"
    );
    let listed = must_list(&store, &query(&o), C).await;
    let mut expected = vec![full, minimal];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        listed, expected,
        "{C}: list must return the same records, ordered by id"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// `get` of an id that was never stored is `Ok(None)`, not an error.
pub async fn get_unknown_is_none<S: KeyStore>(store: S) {
    const C: &str = "get_unknown_is_none";
    let id = KeyId::generate();
    match store.get(&id).await {
        Ok(None) => {}
        Ok(Some(r)) => panic!("{C}: get of an unknown id returned record {}", r.id),
        Err(e) => panic!("{C}: get of an unknown id failed: {e}"),
    }
}

/// A second insert with an existing id is [`StoreError::DuplicateId`] (even
/// for another owner, even with a quota check that would pass), and the
/// first record is untouched.
pub async fn insert_duplicate_id_is_refused<S: KeyStore>(store: S) {
    const C: &str = "insert_duplicate_id_is_refused";
    let first = record(&owner(), "live");
    must_insert(&store, &first, None, C).await;
    let mut second = record(&owner(), "test");
    second.id = first.id.clone();
    second.name = "impostor".into();
    for q in [None, quota(10)] {
        assert_eq!(
            store.insert(&second, q).await,
            Err(StoreError::DuplicateId(first.id.clone())),
            "{C}: a duplicate id must be refused with DuplicateId (quota {q:?})"
        );
    }
    assert_eq!(
        must_get(&store, &first.id, C).await,
        first,
        "{C}: the first record was changed"
    );
    assert!(
        must_list(&store, &query(&second.owner), C).await.is_empty(),
        "{C}: the refused record shows up in its owner's listing"
    );
    delete_keys_of(&store, &[&first.owner], C).await;
}

/// `update` with the stored generation replaces every field but the usage
/// fields (`last_used_at`, `last_used_ip`, which stay as stored), and the
/// next update must name the new generation.
pub async fn update_replaces_record<S: KeyStore>(store: S) {
    const C: &str = "update_replaces_record";
    let o = owner();
    let old = record(&o, "live");
    must_insert(&store, &old, None, C).await;
    let mut new = full_record(&o);
    new.id = old.id.clone();
    new.generation = old.generation + 1;
    if let Err(e) = store.update(&new, old.generation).await {
        panic!("{C}: update with the right generation failed: {e}");
    }
    // Every field is written except the usage ones, which only
    // `record_usage` writes: they stay as inserted (none).
    let mut expected = new.clone();
    expected.last_used_at = old.last_used_at;
    expected.last_used_ip = old.last_used_ip;
    assert_eq!(
        must_get(&store, &old.id, C).await,
        expected,
        "{C}: update did not write every field (or wrote the usage fields)"
    );
    let new = expected;
    let mut newer = new.clone();
    newer.name = "renamed".into();
    newer.generation = new.generation + 1;
    assert!(
        matches!(
            store.update(&newer, old.generation).await,
            Err(StoreError::Conflict { .. })
        ),
        "{C}: an update naming a superseded generation must conflict"
    );
    if let Err(e) = store.update(&newer, new.generation).await {
        panic!("{C}: second update with the right generation failed: {e}");
    }
    assert_eq!(
        must_get(&store, &old.id, C).await,
        newer,
        "{C}: second update not written"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// `update` with a stale generation is [`StoreError::Conflict`] carrying
/// the expected and the stored generation, and writes nothing.
pub async fn update_conflict_writes_nothing<S: KeyStore>(store: S) {
    const C: &str = "update_conflict_writes_nothing";
    let mut stored = record(&owner(), "live");
    stored.generation = 5;
    must_insert(&store, &stored, None, C).await;
    let mut changed = stored.clone();
    changed.name = "lost update".into();
    changed.revoked_at = Some(t0());
    changed.generation = 5;
    for expected in [4, 6, 0] {
        assert_eq!(
            store.update(&changed, expected).await,
            Err(StoreError::Conflict {
                id: stored.id.clone(),
                expected,
                found: 5
            }),
            "{C}: wrong expected generation {expected} must be a Conflict"
        );
    }
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        stored,
        "{C}: a conflicting update wrote"
    );
    delete_keys_of(&store, &[&stored.owner], C).await;
}

/// `update` of an unknown id is [`StoreError::NotFound`] and creates nothing.
pub async fn update_unknown_is_not_found<S: KeyStore>(store: S) {
    const C: &str = "update_unknown_is_not_found";
    let r = record(&owner(), "live");
    assert_eq!(
        store.update(&r, 1).await,
        Err(StoreError::NotFound(r.id.clone())),
        "{C}: update of an unknown id must be NotFound"
    );
    assert_eq!(
        store.get(&r.id).await,
        Ok(None),
        "{C}: update of an unknown id created it"
    );
}

/// `delete` removes the record from `get` and `list`, leaves its neighbours,
/// and a second delete is [`StoreError::NotFound`].
pub async fn delete_removes_record<S: KeyStore>(store: S) {
    const C: &str = "delete_removes_record";
    let o = owner();
    let gone = record(&o, "live");
    let kept = record(&o, "live");
    must_insert(&store, &gone, None, C).await;
    must_insert(&store, &kept, None, C).await;
    if let Err(e) = store.delete(&gone.id).await {
        panic!("{C}: delete failed: {e}");
    }
    assert_eq!(
        store.get(&gone.id).await,
        Ok(None),
        "{C}: deleted record still returned by get"
    );
    let listed = must_list(&store, &query(&o), C).await;
    assert_eq!(
        ids(&listed),
        vec![kept.id.as_str()],
        "{C}: listing after delete is wrong"
    );
    assert_eq!(
        store.delete(&gone.id).await,
        Err(StoreError::NotFound(gone.id.clone())),
        "{C}: deleting twice must be NotFound"
    );
    assert_eq!(
        must_get(&store, &kept.id, C).await,
        kept,
        "{C}: delete touched another record"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// `delete` of an unknown id is [`StoreError::NotFound`].
pub async fn delete_unknown_is_not_found<S: KeyStore>(store: S) {
    const C: &str = "delete_unknown_is_not_found";
    let id = KeyId::generate();
    assert_eq!(
        store.delete(&id).await,
        Err(StoreError::NotFound(id.clone())),
        "{C}: delete of an unknown id must be NotFound"
    );
}

/// The fields added with key kinds, suspension, usage addresses and expiry
/// reminders come back exactly: a legacy key with `suspended_at`, an IPv4
/// `last_used_ip` and `reminded_at`, and a scoped one with an IPv6 address.
pub async fn new_fields_roundtrip<S: KeyStore>(store: S) {
    const C: &str = "new_fields_roundtrip";
    let o = owner();
    let mut legacy = record(&o, "live");
    legacy.kind = KeyKind::Legacy;
    legacy.suspended_at = Some(t0() - secs(30) + TimeDelta::microseconds(1));
    legacy.last_used_at = Some(t0() - secs(40));
    legacy.last_used_ip = Some(ip("203.0.113.9"));
    legacy.reminded_at = Some(t0() - secs(50) + TimeDelta::microseconds(999_999));
    let mut v6 = record(&o, "live");
    v6.last_used_at = Some(t0() - secs(1));
    v6.last_used_ip = Some(ip("2001:db8::ff00:42:8329"));
    let full = full_record(&o);
    for r in [&legacy, &v6, &full] {
        must_insert(&store, r, None, C).await;
    }
    for r in [&legacy, &v6, &full] {
        assert_eq!(
            must_get(&store, &r.id, C).await,
            *r,
            "{C}: kind, suspended_at, last_used_ip or reminded_at changed on the way"
        );
    }
    let mut expected = vec![legacy, v6, full];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        must_list(&store, &query(&o), C).await,
        expected,
        "{C}: list must return the new fields too"
    );
    delete_keys_of(&store, &[&o], C).await;
}

/// `update` never writes the usage fields: a use recorded before the
/// update survives it, whatever the updating record says, while the other
/// new fields (kind, `suspended_at`, `reminded_at`) are written.
pub async fn update_leaves_usage_fields_alone<S: KeyStore>(store: S) {
    const C: &str = "update_leaves_usage_fields_alone";
    let stored = record(&owner(), "live");
    must_insert(&store, &stored, None, C).await;
    let used_at = t0() + secs(10);
    if let Err(e) = store
        .record_usage(&stored.id, used_at, Some(ip("198.51.100.20")))
        .await
    {
        panic!("{C}: record_usage failed: {e}");
    }
    // A manager read the record before the use and writes it back after.
    let mut changed = stored.clone();
    changed.name = "suspended for review".into();
    changed.kind = KeyKind::Legacy;
    changed.suspended_at = Some(t0() + secs(20));
    changed.reminded_at = Some(t0() + secs(21));
    changed.generation = 2;
    if let Err(e) = store.update(&changed, 1).await {
        panic!("{C}: update failed: {e}");
    }
    let mut expected = changed.clone();
    expected.last_used_at = Some(used_at);
    expected.last_used_ip = Some(ip("198.51.100.20"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: update erased a recorded use (or did not write kind / suspended_at / reminded_at)"
    );
    // Usage fields in the updating record are ignored, later or not.
    let mut newer = expected.clone();
    newer.last_used_at = Some(used_at + secs(3_600));
    newer.last_used_ip = Some(ip("2001:db8::1"));
    newer.suspended_at = None;
    newer.generation = 3;
    if let Err(e) = store.update(&newer, 2).await {
        panic!("{C}: second update failed: {e}");
    }
    let mut expected = newer.clone();
    expected.last_used_at = Some(used_at);
    expected.last_used_ip = Some(ip("198.51.100.20"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: update wrote last_used_at / last_used_ip"
    );
    delete_keys_of(&store, &[&stored.owner], C).await;
}

/// `record_usage` sets `last_used_at` and `last_used_ip` together, ignores
/// a use older than the stored one (an equal time still writes), never
/// changes the generation or any other field, and is `Ok` (doing nothing)
/// for an unknown id.
pub async fn record_usage_sets_last_use<S: KeyStore>(store: S) {
    const C: &str = "record_usage_sets_last_use";
    let stored = record(&owner(), "live");
    must_insert(&store, &stored, None, C).await;
    let use_once = |at: DateTime<Utc>, addr: Option<IpAddr>| {
        let store = &store;
        let id = stored.id.clone();
        async move {
            if let Err(e) = store.record_usage(&id, at, addr).await {
                panic!("{C}: record_usage({id}, {at}) failed: {e}");
            }
        }
    };
    let t1 = t0() + secs(100) + TimeDelta::microseconds(7);
    use_once(t1, Some(ip("2001:db8::7"))).await;
    let mut expected = stored.clone();
    expected.last_used_at = Some(t1);
    expected.last_used_ip = Some(ip("2001:db8::7"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: first use not recorded exactly (or the generation / another field changed)"
    );
    use_once(t1 - secs(5), Some(ip("192.0.2.1"))).await;
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: an older use overwrote a newer one"
    );
    use_once(t1, Some(ip("192.0.2.2"))).await;
    expected.last_used_ip = Some(ip("192.0.2.2"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: a use at the stored time must be written"
    );
    let t2 = t1 + secs(60);
    use_once(t2, None).await;
    expected.last_used_at = Some(t2);
    expected.last_used_ip = None;
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: a later use without an address must set the time and clear the address"
    );
    assert_eq!(
        expected.generation, stored.generation,
        "{C}: record_usage must not bump the generation"
    );
    // The generation is unchanged, so an update naming it still succeeds.
    let mut renamed = expected.clone();
    renamed.name = "after use".into();
    renamed.generation = stored.generation + 1;
    if let Err(e) = store.update(&renamed, stored.generation).await {
        panic!("{C}: update after record_usage failed (generation bumped?): {e}");
    }
    let unknown = KeyId::generate();
    assert_eq!(
        store
            .record_usage(&unknown, t1, Some(ip("192.0.2.3")))
            .await,
        Ok(()),
        "{C}: record_usage of an unknown id must be Ok"
    );
    assert_eq!(
        store.get(&unknown).await,
        Ok(None),
        "{C}: record_usage of an unknown id created it"
    );
    delete_keys_of(&store, &[&stored.owner], C).await;
}

/// A deleted id is never reused: inserting a record with it again is
/// [`StoreError::DuplicateId`], with or without a quota, for scoped and
/// legacy keys, and nothing is stored.
pub async fn deleted_ids_are_never_reused<S: KeyStore>(store: S) {
    const C: &str = "deleted_ids_are_never_reused";
    let o = owner();
    let scoped = record(&o, "live");
    let mut legacy = record(&o, "live");
    legacy.kind = KeyKind::Legacy;
    for r in [&scoped, &legacy] {
        must_insert(&store, r, None, C).await;
        if let Err(e) = store.delete(&r.id).await {
            panic!("{C}: delete failed: {e}");
        }
        let mut again = record(&owner(), "test");
        again.id = r.id.clone();
        again.secret_hash = phc(&again.id);
        again.kind = r.kind;
        for q in [None, quota(10)] {
            assert_eq!(
                store.insert(&again, q).await,
                Err(StoreError::DuplicateId(r.id.clone())),
                "{C}: re-inserting a deleted {:?} id must be DuplicateId (quota {q:?})",
                r.kind
            );
        }
        assert_eq!(
            store.get(&r.id).await,
            Ok(None),
            "{C}: a refused re-insert was stored"
        );
        assert!(
            must_list(&store, &query(&again.owner), C).await.is_empty(),
            "{C}: a refused re-insert shows up in a listing"
        );
    }
    // Other ids still insert.
    must_insert(&store, &record(&o, "live"), quota(1), C).await;
    delete_keys_of(&store, &[&o], C).await;
}
