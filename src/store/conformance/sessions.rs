//! The session store check.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::session::{SessionCap, SessionHash, SessionRecord};
use crate::store::SessionStore;
use crate::store::StoreError;

/// A window start of its own for [`session_store_conformance`]: in the
/// distant past (between the years 1200 and 1700, at a random minute with
/// odd microseconds), so that its global `delete_expired_sessions` calls
/// never reach a session of a real time or of the other checks, and two
/// runs on a database reused across runs practically never share a window.
fn session_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1200, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        + TimeDelta::minutes(i64::from(rand::random::<u32>() % 260_000_000))
        + TimeDelta::microseconds(i64::from(rand::random::<u32>() % 1_000_000))
}

/// A session of `key_id` from `created_at` to `expires_at`, with a snapshot
/// like the one an exchange takes, a random hash and awkward text.
fn session(
    key_id: &KeyId,
    owner: &OwnerId,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> SessionRecord {
    SessionRecord {
        id: KeyId::generate(),
        key_id: key_id.clone(),
        owner: owner.clone(),
        environment: env("live"),
        key_name: "CI 🚀 \"nightly\" 'push' \\ Ünïcødé".into(),
        permissions: PermissionGrant::only(["package:push", "package:unlist"]),
        resources: ResourceScope::only(["Contoso.*", "Fabrikam.Core", "Fabrikam.?.Tools"]),
        ip_allowlist: IpAllowlist::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
            .expect("valid CIDRs"),
        created_at,
        expires_at,
        revoked: false,
        secret_hash: SessionHash::from_bytes(rand::random()),
    }
}

async fn must_get_session<S: SessionStore>(
    store: &S,
    id: &KeyId,
    what: &str,
) -> Option<SessionRecord> {
    const C: &str = "session_store_conformance";
    match store.get_session(id).await {
        Ok(found) => found,
        Err(e) => panic!("{C}: get_session({id}) {what} failed: {e}"),
    }
}

async fn must_revoke_sessions<S: SessionStore>(store: &S, key_id: &KeyId, what: &str) -> u64 {
    const C: &str = "session_store_conformance";
    match store.revoke_sessions(key_id).await {
        Ok(n) => n,
        Err(e) => panic!("{C}: revoke_sessions({key_id}) {what} failed: {e}"),
    }
}

async fn must_delete_expired<S: SessionStore>(store: &S, now: DateTime<Utc>, what: &str) -> u64 {
    const C: &str = "session_store_conformance";
    match store.delete_expired_sessions(now).await {
        Ok(n) => n,
        Err(e) => panic!("{C}: delete_expired_sessions({now}) {what} failed: {e}"),
    }
}

/// Checks a [`SessionStore`] against the contract written on the trait:
///
/// * `insert_session` then `get_session` gives back every field exactly:
///   the key snapshot (non-ASCII name, permission and resource lists, IPv4
///   and IPv6 ranges; also `All`, empty and "any" values), times to the
///   microsecond, the `revoked` flag and all 32 hash bytes;
/// * `get_session` of an unknown id is `Ok(None)`, and revoked and expired
///   sessions are returned until deleted (every session of the check is
///   expired by the wall clock, so a store that filters by its own clock is
///   caught);
/// * inserting an id that exists is [`StoreError::DuplicateId`] carrying
///   that id, even for an identical record, and writes nothing;
/// * `revoke_sessions(key_id)` marks every session of that key (and
///   nothing else of it) revoked, leaves other keys' sessions alone,
///   matches on the key id and not the session id, and returns how many
///   were not revoked before: sessions already revoked, unknown keys, a
///   second call and deleted sessions count 0;
/// * `delete_expired_sessions(now)` deletes exactly the sessions that
///   expired at or before `now` (`expires_at == now` included), revoked or
///   not, returns how many, and leaves the others untouched;
/// * `session_owner(key_id)` is the owner stored with the key's sessions
///   (revoked ones too), `None` for a session id, an unknown key or a key
///   whose sessions were all deleted;
/// * `insert_session` with a [`SessionCap`] refuses, with
///   [`StoreError::TooManySessions`] and without storing it, a session of a
///   key that already has `max_live` live sessions (not revoked, expiring
///   after `cap.now`); sessions of other keys, revoked ones and ones
///   expired at `cap.now` do not count, no cap means no count, and 32
///   concurrent inserts under a cap of 3 store exactly 3.
///
/// It works in a time window of its own in the distant past (between the
/// years 1200 and 1700, random per run), with its own key and session ids,
/// so it may share a store with other checks and with sessions of real
/// times, which it never touches. `delete_expired_sessions` is global,
/// though: the check first deletes every session that expired before its
/// window (left behind by an earlier failed run), and at the end deletes
/// its own. So two runs must not use one store at the same time.
///
/// # Panics
///
/// When the store breaks a rule: the message says which.
pub async fn session_store_conformance<S: SessionStore>(store: S) {
    const C: &str = "session_store_conformance";
    let ts = session_epoch();
    let at = |minutes: i64| ts + TimeDelta::minutes(minutes);
    let (oa, ob) = (owner(), owner());
    let (ka, kb, kc) = (KeyId::generate(), KeyId::generate(), KeyId::generate());

    // Sessions an earlier, failed run left in a window before this one
    // would be counted below.
    must_delete_expired(&store, ts - TimeDelta::microseconds(1), "before the window").await;

    // Key a: two live sessions and one already revoked.
    let mut a15 = session(&ka, &oa, at(-5) + TimeDelta::microseconds(17), at(15));
    a15.secret_hash = SessionHash::from_bytes(std::array::from_fn(|i| match i {
        0 => 0x00,
        31 => 0xff,
        _ => (i as u8).wrapping_mul(41).wrapping_add(0x80),
    }));
    let a30 = session(&ka, &oa, at(0), at(30) + TimeDelta::microseconds(999_999));
    let a45_revoked = SessionRecord {
        revoked: true,
        ..session(&ka, &oa, at(0), at(45))
    };
    // Key b (another owner, another environment): a session expiring with
    // a15, and one later.
    let b15 = SessionRecord {
        environment: env("test"),
        ..session(&kb, &ob, at(-1), at(15))
    };
    let b60 = session(&kb, &ob, at(0), at(60));
    // Key c: the smallest snapshots a key can give.
    let c90 = SessionRecord {
        key_name: String::new(),
        permissions: PermissionGrant::All,
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::any(),
        ..session(&kc, &oa, at(0), at(90))
    };
    let c120 = SessionRecord {
        permissions: PermissionGrant::only(Vec::<String>::new()),
        resources: ResourceScope::only(Vec::<String>::new()),
        ..session(&kc, &oa, at(0), at(120))
    };
    let all = [&a15, &a30, &a45_revoked, &b15, &b60, &c90, &c120];
    for r in all {
        if let Err(e) = store.insert_session(r, None).await {
            panic!("{C}: insert_session of {} failed: {e}", r.id);
        }
    }
    for r in all {
        assert_eq!(
            must_get_session(&store, &r.id, "after insert")
                .await
                .as_ref(),
            Some(r),
            "{C}: a session must come back from get_session exactly as inserted \
             (expired by the wall clock, but not deleted)"
        );
    }
    let unknown = KeyId::generate();
    assert_eq!(
        must_get_session(&store, &unknown, "of an unknown id").await,
        None,
        "{C}: get_session of an unknown id must be Ok(None)"
    );

    // Duplicate ids: refused, nothing written.
    let clash = SessionRecord {
        id: a15.id.clone(),
        ..session(&KeyId::generate(), &ob, at(-30), at(1))
    };
    assert_eq!(
        store.insert_session(&clash, None).await,
        Err(StoreError::DuplicateId(a15.id.clone())),
        "{C}: inserting an id that exists must be refused with DuplicateId"
    );
    assert_eq!(
        store.insert_session(&a30, None).await,
        Err(StoreError::DuplicateId(a30.id.clone())),
        "{C}: inserting an identical record again must be refused with DuplicateId"
    );
    assert_eq!(
        must_get_session(&store, &a15.id, "after a refused duplicate").await,
        Some(a15.clone()),
        "{C}: a refused duplicate insert changed the stored session"
    );
    assert_eq!(
        must_revoke_sessions(&store, &clash.key_id, "of the refused duplicate's key").await,
        0,
        "{C}: a refused duplicate insert stored a session of its key"
    );

    // Revoking: by key id, counting only sessions not revoked before.
    assert_eq!(
        must_revoke_sessions(&store, &unknown, "of a key without sessions").await,
        0,
        "{C}: revoke_sessions of a key without sessions must return 0"
    );
    assert_eq!(
        must_revoke_sessions(&store, &b15.id, "of a session id").await,
        0,
        "{C}: revoke_sessions must match the key id, not the session id"
    );
    assert_eq!(
        must_revoke_sessions(&store, &ka, "of key a").await,
        2,
        "{C}: revoke_sessions must return how many sessions of the key were not revoked \
         before (2 of 3: one was inserted revoked)"
    );
    let revoked = |r: &SessionRecord| SessionRecord {
        revoked: true,
        ..r.clone()
    };
    let (a15, a30) = (revoked(&a15), revoked(&a30));
    let all = [&a15, &a30, &a45_revoked, &b15, &b60, &c90, &c120];
    for r in all {
        assert_eq!(
            must_get_session(&store, &r.id, "after revoking key a")
                .await
                .as_ref(),
            Some(r),
            "{C}: revoke_sessions must set `revoked` on every session of the key, change \
             nothing else, and leave other keys' sessions alone"
        );
    }
    assert_eq!(
        must_revoke_sessions(&store, &ka, "of key a again").await,
        0,
        "{C}: a second revoke_sessions of a key must return 0 (all already revoked)"
    );

    // Deleting expired sessions: at or before `now`, revoked or not, counted.
    assert_eq!(
        must_delete_expired(
            &store,
            at(15) - TimeDelta::microseconds(1),
            "before any expiry"
        )
        .await,
        0,
        "{C}: delete_expired_sessions must not delete sessions expiring after `now`"
    );
    for r in all {
        assert_eq!(
            must_get_session(&store, &r.id, "after deleting none")
                .await
                .as_ref(),
            Some(r),
            "{C}: delete_expired_sessions deleted or changed a session expiring after `now`"
        );
    }
    assert_eq!(
        must_delete_expired(&store, at(15), "at the first expiry").await,
        2,
        "{C}: delete_expired_sessions must delete the sessions expiring at `now` (one \
         revoked, one not) and return how many"
    );
    assert_eq!(
        must_delete_expired(&store, at(15), "at the first expiry again").await,
        0,
        "{C}: a second delete_expired_sessions at the same `now` must return 0"
    );
    for r in [&a15, &b15] {
        assert_eq!(
            must_get_session(&store, &r.id, "of a deleted session").await,
            None,
            "{C}: a session expired at `now` must be gone after delete_expired_sessions"
        );
    }
    let left = [&a30, &a45_revoked, &b60, &c90, &c120];
    for r in left {
        assert_eq!(
            must_get_session(&store, &r.id, "after the first delete")
                .await
                .as_ref(),
            Some(r),
            "{C}: delete_expired_sessions deleted or changed a session expiring after `now`"
        );
    }
    assert_eq!(
        must_revoke_sessions(&store, &kb, "of key b after one was deleted").await,
        1,
        "{C}: revoke_sessions must count only the key's stored sessions (one of two was deleted)"
    );
    let b60 = revoked(&b60);
    assert_eq!(
        must_get_session(&store, &b60.id, "after revoking key b").await,
        Some(b60.clone()),
        "{C}: revoke_sessions did not revoke the remaining session of the key"
    );
    assert_eq!(
        must_delete_expired(&store, at(45), "at a revoked session's expiry").await,
        2,
        "{C}: delete_expired_sessions must delete every session expired by `now`, not only \
         those expiring at `now`, revoked or not"
    );
    for r in [&a30, &a45_revoked] {
        assert_eq!(
            must_get_session(&store, &r.id, "of a deleted session").await,
            None,
            "{C}: a session expired before `now` must be gone after delete_expired_sessions"
        );
    }
    for r in [&b60, &c90, &c120] {
        assert_eq!(
            must_get_session(&store, &r.id, "after the second delete")
                .await
                .as_ref(),
            Some(r),
            "{C}: delete_expired_sessions deleted or changed a session expiring after `now`"
        );
    }
    assert_eq!(
        must_delete_expired(&store, at(24 * 60), "after the window").await,
        3,
        "{C}: delete_expired_sessions must delete the remaining three sessions"
    );
    for r in [&b60, &c90, &c120] {
        assert_eq!(
            must_get_session(&store, &r.id, "after the last delete").await,
            None,
            "{C}: a session expired before `now` must be gone after delete_expired_sessions"
        );
    }
    assert_eq!(
        must_revoke_sessions(&store, &kc, "of key c after its sessions were deleted").await,
        0,
        "{C}: revoke_sessions must not count deleted sessions"
    );
    assert_eq!(
        must_session_owner(&store, &kc, "after its sessions were deleted").await,
        None,
        "{C}: session_owner must return None once the key's sessions are deleted"
    );

    session_cap(store, ts).await;
}

async fn must_session_owner<S: SessionStore>(
    store: &S,
    key_id: &KeyId,
    what: &str,
) -> Option<OwnerId> {
    const C: &str = "session_store_conformance";
    match store.session_owner(key_id).await {
        Ok(owner) => owner,
        Err(e) => panic!("{C}: session_owner({key_id}) {what} failed: {e}"),
    }
}

/// The cap part of [`session_store_conformance`], in the same window,
/// after the other sessions were deleted.
async fn session_cap<S: SessionStore>(store: S, ts: DateTime<Utc>) {
    const C: &str = "session_store_conformance";
    let at = move |minutes: i64| ts + TimeDelta::days(10) + TimeDelta::minutes(minutes);
    let cap = move |max_live: u32| {
        Some(SessionCap {
            max_live,
            now: at(0),
        })
    };
    let (od, oe) = (owner(), owner());
    let (kd, ke) = (KeyId::generate(), KeyId::generate());
    let insert = |r: SessionRecord, c: Option<SessionCap>| {
        let store = &store;
        async move { (store.insert_session(&r, c).await, r) }
    };
    // Expired at `now` (not live), then one live: the cap of 1 is not reached.
    let (res, d_old) = insert(session(&kd, &od, at(-20), at(0)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must allow a session under the cap (no live session)"
    );
    let (res, d1) = insert(session(&kd, &od, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must not count a session expired at `cap.now` as live"
    );
    let (res, d2) = insert(session(&kd, &od, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Err(StoreError::TooManySessions {
            key_id: kd.clone(),
            limit: 1
        }),
        "{C}: insert_session must refuse a session of a key at its cap with TooManySessions"
    );
    assert_eq!(
        must_get_session(&store, &d2.id, "of a session refused by the cap").await,
        None,
        "{C}: insert_session must refuse a session over the cap without storing it"
    );
    // Another key's sessions do not count; a higher cap, or none, lets it in.
    let (res, e1) = insert(session(&ke, &oe, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must count only the sessions of the record's key"
    );
    assert_eq!(
        insert(d2.clone(), cap(2)).await.0,
        Ok(()),
        "{C}: insert_session must allow a session under a cap of 2 with one live session"
    );
    let (res, d3) = insert(session(&kd, &od, at(-1), at(10)), None).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session without a cap must not count"
    );
    assert_eq!(
        must_session_owner(&store, &kd, "of a key with sessions").await,
        Some(od.clone()),
        "{C}: session_owner must return the owner stored with the key's sessions"
    );
    assert_eq!(
        must_session_owner(&store, &ke, "of another key").await,
        Some(oe.clone()),
        "{C}: session_owner must return the owner stored with the key's sessions"
    );
    assert_eq!(
        must_session_owner(&store, &d1.id, "of a session id").await,
        None,
        "{C}: session_owner must match the key id, not the session id"
    );
    // Revoked sessions do not count.
    assert_eq!(
        must_revoke_sessions(&store, &kd, "of the capped key").await,
        4,
        "{C}: revoke_sessions must end the capped key's four sessions"
    );
    assert_eq!(
        must_session_owner(&store, &kd, "of a key with revoked sessions").await,
        Some(od.clone()),
        "{C}: session_owner must return the owner stored with the key's sessions, revoked too"
    );
    let (res, d4) = insert(session(&kd, &od, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must not count revoked sessions against the cap"
    );

    // Under concurrency: 32 inserts with a cap of 3 for a new key.
    let kf = KeyId::generate();
    let store = Arc::new(store);
    let barrier = Arc::new(Barrier::new(32));
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let r = session(&kf, &od, at(-1), at(10));
        tasks.spawn(async move {
            barrier.wait().await;
            store.insert_session(&r, cap(3)).await
        });
    }
    let (mut stored, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => stored += 1,
            Ok(Err(StoreError::TooManySessions { .. })) => refused += 1,
            Ok(Err(e)) => panic!("{C}: a concurrent capped insert_session failed: {e}"),
            Err(e) => panic!("{C}: a concurrent capped insert_session panicked: {e}"),
        }
    }
    assert_eq!(
        (stored, refused),
        (3, 29),
        "{C}: insert_session must refuse a session over the cap under concurrency \
         (32 inserts, cap 3)"
    );
    let _ = (d_old, d1, d3, d4, e1);
    assert_eq!(
        must_delete_expired(&*store, at(24 * 60), "after the cap checks").await,
        9,
        "{C}: delete_expired_sessions must delete the cap checks' nine sessions"
    );
}
