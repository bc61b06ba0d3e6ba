//! Injected store faults (feature `testing`): verification denies on every
//! fault of an operation it needs, and every management call returns an
//! error and leaves the stored data exactly as it was.
#![cfg(feature = "testing")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyward::*;
use keyward::{
    hash::Argon2Hasher, key::KeyKind, manager::ImportKey, policy::EditPolicy,
    policy::PermissionGrant, policy::ResourceScope, session::SessionConfig, store::Fault,
    store::FaultyStore, store::ListQuery, store::Op, store::SessionStore, store::StoreError,
    verify::DenialKind, verify::SessionError, verify::VerifierConfig,
};

type Store = Arc<FaultyStore<MemoryStore>>;

/// The faults tried on every operation. `Hang` is ended by the test's own
/// `tokio::time::timeout`.
const FAULTS: [Fault; 3] = [
    Fault::Fail,
    Fault::Timeout(Duration::from_millis(2)),
    Fault::Hang,
];

/// Long enough for any call here without a hanging store.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long a hanging call is given before it counts as not completed.
const HANG_WAIT: Duration = Duration::from_millis(50);

fn faulty_fixture() -> (Store, Fixture<Store>) {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let clock = ManualClock::new(start());
    let counters = Counters::default();
    let manager = KeyManager::builder(
        Arc::clone(&store),
        format(),
        policy().with_edits(EditPolicy::permissive()),
    )
    .hasher(CountingHasher::new(counters.clone()))
    .clock(clock.clone())
    .sessions(SessionConfig::new("mkhs"))
    .build()
    .unwrap();
    let f = Fixture {
        manager,
        clock,
        counters,
        registry: registry(),
        live: Environment::new("live").expect("env"),
        test: Environment::new("test").expect("env"),
    };
    (store, f)
}

fn calls(store: &Store) -> BTreeMap<Op, u64> {
    Op::ALL.iter().map(|op| (*op, store.calls(*op))).collect()
}

/// The operations called between two `calls` readings.
fn used(before: &BTreeMap<Op, u64>, after: &BTreeMap<Op, u64>) -> Vec<Op> {
    Op::ALL
        .iter()
        .copied()
        .filter(|op| after[op] > before[op])
        .collect()
}

/// Runs `fut` with a deadline: `None` if it did not complete (a hang).
async fn bounded<T>(fault: Fault, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let wait = if fault == Fault::Hang {
        HANG_WAIT
    } else {
        PATIENCE
    };
    tokio::time::timeout(wait, fut).await.ok()
}

#[tokio::test]
async fn the_wrapper_counts_forwards_and_heals() {
    let store = FaultyStore::new(MemoryStore::new());
    let id = KeyId::generate();
    assert_eq!(store.get(&id).await, Ok(None));
    assert_eq!(store.calls(Op::Get), 1);

    store.fail(Op::Get);
    assert_eq!(store.fault(Op::Get), Some(Fault::Fail));
    assert!(matches!(
        store.get(&id).await,
        Err(StoreError::Backend(m)) if m.contains("Get")
    ));
    assert_eq!(store.calls(Op::Get), 2, "faulty calls are counted");
    assert_eq!(
        store.delete(&id).await,
        Err(StoreError::NotFound(id.clone()))
    );

    store.delay(Op::Get, Duration::from_millis(1));
    assert_eq!(store.get(&id).await, Ok(None), "a delay still answers");

    store.hang(Op::Get);
    assert!(
        tokio::time::timeout(HANG_WAIT, store.get(&id))
            .await
            .is_err()
    );

    store.heal();
    assert_eq!(store.fault(Op::Get), None);
    assert_eq!(store.get(&id).await, Ok(None));
    store.fail_all();
    assert!(
        Op::ALL
            .iter()
            .all(|op| store.fault(*op) == Some(Fault::Fail))
    );
    store.heal_op(Op::Delete);
    assert_eq!(store.fault(Op::Delete), None);
    assert_eq!(store.fault(Op::Insert), Some(Fault::Fail));
}

/// Cold path: the key is not cached, so the check must read the store; any
/// fault of a read it makes is a denial, never a grant. Faults of operations
/// the check does not use change nothing.
#[tokio::test]
async fn a_cold_check_denies_on_every_fault_of_what_it_reads() {
    for op in Op::ALL.iter().copied() {
        for fault in FAULTS {
            let (store, f) = faulty_fixture();
            let created = f.push_key().await;
            let token = created.token.expose_secret();
            let before = calls(&store);
            store.inject(op, fault);
            let result = bounded(fault, f.manager.verify(token, &f.req())).await;
            let reads = used(&before, &calls(&store));
            let case = format!("{op} {fault:?}");
            if reads.contains(&op) {
                match result {
                    None => assert_eq!(fault, Fault::Hang, "{case}: only a hang never completes"),
                    Some(Ok(_)) => panic!("{case}: granted with a faulty store"),
                    Some(Err(d)) => {
                        assert_eq!(d.reason, DenialReason::StoreUnavailable, "{case}");
                        assert_eq!(d.kind(), DenialKind::Unavailable, "{case}");
                    }
                }
            } else {
                // Not done within the hang's short wait, yet it never called
                // the hanging operation: it was waiting for something else
                // (argon2 on a hashing thread at nice 19, on a loaded
                // machine). Given the full patience, it must pass, still
                // without the faulty operation.
                let result = match result {
                    None => {
                        let again = bounded(Fault::Fail, f.manager.verify(token, &f.req())).await;
                        let reads = used(&before, &calls(&store));
                        assert!(!reads.contains(&op), "{case}: used on a second try");
                        again
                    }
                    done => done,
                };
                assert!(matches!(result, Some(Ok(_))), "{case}: unused op");
            }
            // Healed, the same check passes (a hang left nothing stuck).
            store.heal();
            assert!(
                f.manager.verify(token, &f.req()).await.is_ok(),
                "{case}: healed"
            );
        }
    }
}

#[tokio::test]
async fn a_cold_check_reads_the_key_and_nothing_else() {
    let (store, f) = faulty_fixture();
    let created = f.push_key().await;
    let before = calls(&store);
    f.manager
        .verify(created.token.expose_secret(), &f.req())
        .await
        .unwrap();
    assert_eq!(used(&before, &calls(&store)), vec![Op::Get]);
}

/// The design: a key checked successfully is cached for `cache_ttl`; within
/// it, checks need no store, so a failing store does not deny them. Once the
/// entry is older than the TTL, the check reads the store again and is
/// denied while it fails.
#[tokio::test]
async fn a_cached_key_verifies_until_its_entry_expires_then_denies() {
    let (store, f) = faulty_fixture();
    let created = f.push_key().await;
    let token = created.token.expose_secret();
    f.manager.verify(token, &f.req()).await.unwrap();
    store.fail_all();
    let before = calls(&store);
    assert!(f.manager.verify(token, &f.req()).await.is_ok());
    assert_eq!(calls(&store), before, "a cache hit reads no store");

    let ttl = VerifierConfig::default().cache_ttl + Duration::from_secs(1);
    f.clock.advance(chrono::TimeDelta::from_std(ttl).unwrap());
    let d = f.manager.verify(token, &f.req()).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::StoreUnavailable);

    // A wrong secret for the cached id is refused whatever the store does.
    store.heal();
    f.manager.verify(token, &f.req()).await.unwrap();
    store.fail_all();
    let wrong = format()
        .from_pair(
            &f.live,
            created.key.id.as_str(),
            &"x".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    assert!(
        f.manager
            .verify(wrong.expose_secret(), &f.req())
            .await
            .is_err()
    );
}

/// A failed revoke (or any failed change) forgets the cached key, so the
/// next check goes to the store: while the store also fails to read, it is
/// denied; it is never answered from a cache that may be stale.
#[tokio::test]
async fn a_failed_change_drops_the_cached_key() {
    let (store, f) = faulty_fixture();
    let created = f.push_key().await;
    let token = created.token.expose_secret();
    f.manager.verify(token, &f.req()).await.unwrap();
    store.time_out(Op::Update, Duration::from_millis(2));
    assert!(
        f.manager
            .revoke(&keyward::Actor::system("tests"), &created.key.id)
            .await
            .is_err()
    );
    store.fail(Op::Get);
    assert_eq!(
        f.manager.verify(token, &f.req()).await.unwrap_err().reason,
        DenialReason::StoreUnavailable
    );
    store.heal();
    assert!(
        f.manager.verify(token, &f.req()).await.is_ok(),
        "the revoke did not happen, the key is still live"
    );
}

#[tokio::test]
async fn a_cold_session_check_denies_on_every_fault_of_what_it_reads() {
    for fault in FAULTS {
        let (store, f) = faulty_fixture();
        let created = f.push_key().await;
        let session = f
            .manager
            .exchange(created.token.expose_secret(), &f.live, None, None)
            .await
            .unwrap();
        let token = session.token.expose_secret();
        // Cold: a second manager on the same store has an empty session cache.
        let other = KeyManager::builder(Arc::clone(&store), format(), policy())
            .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
            .clock(f.clock.clone())
            .sessions(SessionConfig::new("mkhs"))
            .build()
            .unwrap();
        store.inject(Op::GetSession, fault);
        match bounded(fault, other.verify_session(token, &f.req())).await {
            None => assert_eq!(fault, Fault::Hang),
            Some(Ok(_)) => panic!("{fault:?}: session granted with a faulty store"),
            Some(Err(d)) => assert_eq!(d.reason, DenialReason::StoreUnavailable, "{fault:?}"),
        }
        store.heal();
        assert!(other.verify_session(token, &f.req()).await.is_ok());
    }
}

/// One management call, named, run against a fixture holding `key`.
#[derive(Debug, Clone, Copy)]
enum Call {
    Create,
    Edit,
    Regenerate,
    Revoke,
    Delete,
    Exchange,
    EndSessions,
    Rotate,
    Suspend,
    Import,
    TakeReminders,
}

const CALLS: [Call; 11] = [
    Call::Create,
    Call::Edit,
    Call::Regenerate,
    Call::Revoke,
    Call::Delete,
    Call::Exchange,
    Call::EndSessions,
    Call::Rotate,
    Call::Suspend,
    Call::Import,
    Call::TakeReminders,
];

async fn run(call: Call, f: &Fixture<Store>, key: &CreatedKey) -> Result<(), String> {
    let id = &key.key.id;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match call {
        Call::Create => f
            .manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "second").permissions(PermissionGrant::All),
            )
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::Edit => f
            .manager
            .edit(
                &keyward::Actor::system("tests"),
                id,
                KeyEdit {
                    name: Some("renamed".into()),
                    permissions: Some(PermissionGrant::only(["package:push-new"])),
                    ip_allowlist: Some(vec!["10.0.0.0/8".into()]),
                    ..KeyEdit::default()
                },
            )
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::Regenerate => f
            .manager
            .regenerate(&keyward::Actor::system("tests"), id)
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::Revoke => f
            .manager
            .revoke(&keyward::Actor::system("tests"), id)
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::Delete => f
            .manager
            .delete(&keyward::Actor::system("tests"), id)
            .await
            .map_err(|e| err(&e)),
        Call::Exchange => f
            .manager
            .exchange(key.token.expose_secret(), &f.live, None, None)
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::EndSessions => f
            .manager
            .end_sessions(&keyward::Actor::system("tests"), id)
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        // Two writes: the successor, then the old key's shorter expiry.
        Call::Rotate => f
            .manager
            .rotate(
                &keyward::Actor::system("tests"),
                id,
                Duration::from_secs(3600),
            )
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::Suspend => f
            .manager
            .suspend(&keyward::Actor::system("tests"), id)
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        Call::Import => f
            .manager
            .import(
                &keyward::Actor::system("tests"),
                ImportKey {
                    id: "imported1".into(),
                    owner: OWNER.into(),
                    environment: "live".into(),
                    name: "from the old registry".into(),
                    kind: KeyKind::Scoped,
                    permissions: PermissionGrant::All,
                    resources: ResourceScope::All,
                    expires_at: None,
                    ip_allowlist: Vec::new(),
                    created_at: None,
                    external_id: None,
                    metadata: None,
                    usage: Default::default(),
                    sha256_hex: "ab".repeat(32),
                },
            )
            .await
            .map(drop)
            .map_err(|e| err(&e)),
        // The key expires in 90 days: due within 100.
        Call::TakeReminders => match f
            .manager
            .take_expiry_reminders(&keyward::Actor::system("tests"), 100, 10)
            .await
        {
            Ok(due) if due.len() == 1 => Ok(()),
            Ok(due) => Err(format!("{} keys due, expected 1", due.len())),
            Err(e) => Err(err(&e)),
        },
    }
}

/// The typed error of a failed management call is a store error (never a
/// policy error or a panic): checked per call on the `Fail` fault.
#[tokio::test]
async fn management_calls_return_the_store_error() {
    let (store, f) = faulty_fixture();
    let key = f.push_key().await;
    store.fail_all();
    let store_err =
        |r: Result<_, KeywardError>| matches!(r, Err(KeywardError::Store(StoreError::Backend(_))));
    assert!(store_err(
        f.manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "x").permissions(PermissionGrant::All)
            )
            .await
            .map(drop)
    ));
    assert!(store_err(
        f.manager
            .edit(
                &keyward::Actor::system("tests"),
                &key.key.id,
                KeyEdit::default()
            )
            .await
            .map(drop)
    ));
    assert!(store_err(
        f.manager
            .regenerate(&keyward::Actor::system("tests"), &key.key.id)
            .await
            .map(drop)
    ));
    assert!(store_err(
        f.manager
            .revoke(&keyward::Actor::system("tests"), &key.key.id)
            .await
            .map(drop)
    ));
    assert!(store_err(
        f.manager
            .delete(&keyward::Actor::system("tests"), &key.key.id)
            .await
    ));
    assert!(store_err(
        f.manager
            .end_sessions(&keyward::Actor::system("tests"), &key.key.id)
            .await
            .map(drop)
    ));
    assert!(store_err(
        f.manager
            .get(&keyward::Actor::system("tests"), &key.key.id)
            .await
            .map(drop)
    ));
    assert!(store_err(
        f.manager
            .list(
                &keyward::Actor::system("tests"),
                ListQuery::new(OwnerId::new(OWNER).unwrap())
            )
            .await
            .map(drop)
    ));
    f.manager.verifier().invalidate_all();
    assert!(matches!(
        f.manager
            .exchange(key.token.expose_secret(), &f.live, None, None)
            .await,
        Err(SessionError::Denied(d)) if d.reason == DenialReason::StoreUnavailable
    ));
    store.heal();
    store.fail(Op::InsertSession);
    assert!(matches!(
        f.manager
            .exchange(key.token.expose_secret(), &f.live, None, None)
            .await,
        Err(SessionError::Store(StoreError::Backend(_)))
    ));
}

/// The one documented exception to "a failed call changes nothing": a
/// revoke whose session ending fails (or hangs) leaves the key revoked
/// (never undone: the key may be compromised) and says so
/// ([`KeywardError::SessionsNotEnded`]); `revoke_compromised` finishes it.
async fn revoke_whose_sessions_fail(
    case: &str,
    fault: Fault,
    store: &Store,
    f: &Fixture<Store>,
    key: &CreatedKey,
    session_id: &KeyId,
) {
    match bounded(fault, run(Call::Revoke, f, key)).await {
        None => assert_eq!(fault, Fault::Hang, "{case}: only a hang never completes"),
        Some(Ok(())) => panic!("{case}: succeeded with a faulty store"),
        Some(Err(message)) => assert!(
            message.contains("revoked, but its sessions could not be ended"),
            "{case}: {message}"
        ),
    }
    store.heal();
    let stored = store.inner().get(&key.key.id).await.unwrap().unwrap();
    assert!(stored.revoked_at.is_some(), "{case}: the key is revoked");
    f.manager
        .revoke_compromised(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap_or_else(|e| panic!("{case}: healed: {e}"));
    let session = store
        .inner()
        .get_session(session_id)
        .await
        .unwrap()
        .unwrap();
    assert!(session.revoked, "{case}: healed: the session is ended");
}

/// Every management call, under every fault of every operation it uses:
/// it returns an error (or, for a hang, never completes), and the stored
/// keys are exactly as before (read back from the inner store and
/// compared), except for a revoke whose session ending fails
/// (`revoke_whose_sessions_fail`). A fault of an operation the call does not use changes nothing.
#[tokio::test]
async fn management_calls_fail_cleanly_under_every_fault() {
    for call in CALLS {
        // Which operations the call uses, from a clean run.
        let (store, f) = faulty_fixture();
        let key = f.push_key().await;
        f.manager.verifier().invalidate_all();
        let before = calls(&store);
        run(call, &f, &key)
            .await
            .unwrap_or_else(|e| panic!("{call:?} without faults: {e}"));
        let ops = used(&before, &calls(&store));
        assert!(!ops.is_empty(), "{call:?} uses the store");

        for op in ops.iter().copied() {
            for fault in FAULTS {
                let case = format!("{call:?} under {fault:?} of {op}");
                let (store, f) = faulty_fixture();
                let key = f.push_key().await;
                let session = f
                    .manager
                    .exchange(key.token.expose_secret(), &f.live, None, None)
                    .await
                    .unwrap();
                f.manager.verifier().invalidate_all();
                let keys_before = snapshot(store.inner(), OWNER).await;
                let session_id = KeyId::new(
                    f.manager
                        .session_format()
                        .unwrap()
                        .parse(session.token.expose_secret())
                        .unwrap()
                        .key_id(),
                )
                .unwrap();
                let session_before = store.inner().get_session(&session_id).await.unwrap();

                store.inject(op, fault);
                if matches!(call, Call::Revoke) && op == Op::RevokeSessions {
                    revoke_whose_sessions_fail(&case, fault, &store, &f, &key, &session_id).await;
                    continue;
                }
                match bounded(fault, run(call, &f, &key)).await {
                    None => assert_eq!(fault, Fault::Hang, "{case}: only a hang never completes"),
                    Some(Ok(())) => panic!("{case}: succeeded with a faulty store"),
                    Some(Err(message)) => assert!(!message.is_empty(), "{case}"),
                }
                store.heal();
                // A dropped call's clean-up (rotation's successor) runs as a
                // task of its own: give it a moment.
                if fault == Fault::Hang {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(
                    snapshot(store.inner(), OWNER).await,
                    keys_before,
                    "{case}: keys changed"
                );
                assert_eq!(
                    store.inner().get_session(&session_id).await.unwrap(),
                    session_before,
                    "{case}: the session changed"
                );
                // The old key still works: nothing was revoked, regenerated
                // or narrowed.
                assert!(
                    f.manager
                        .verify(key.token.expose_secret(), &f.req())
                        .await
                        .is_ok(),
                    "{case}: the key no longer verifies"
                );
                // And the call succeeds once healed.
                run(call, &f, &key)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: healed: {e}"));
            }
        }
    }
}

/// A write whose reply is lost (the store committed, the connection dropped
/// before the answer) is recognised by reading back: the call succeeds, and
/// nothing is lost, such as the only copy of a new key's token.
#[tokio::test]
async fn a_write_whose_reply_is_lost_is_recovered_by_reading_back() {
    let cases = [
        (Call::Create, Op::Insert),
        (Call::Edit, Op::Update),
        (Call::Regenerate, Op::Update),
        (Call::Revoke, Op::Update),
        (Call::Delete, Op::Delete),
        (Call::Rotate, Op::Insert),
        (Call::Rotate, Op::Update),
        (Call::Suspend, Op::Update),
        (Call::Import, Op::Insert),
        (Call::Exchange, Op::InsertSession),
    ];
    for (call, op) in cases {
        let (store, f) = faulty_fixture();
        let key = f.push_key().await;
        store.inject(op, Fault::LostReply);
        run(call, &f, &key)
            .await
            .unwrap_or_else(|e| panic!("{call:?} with a lost reply of {op}: {e}"));
        assert!(store.calls(op) >= 1, "{call:?} used {op}");
    }

    // The token of a key created that way works.
    let (store, f) = faulty_fixture();
    store.inject(Op::Insert, Fault::LostReply);
    let created = f
        .manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .expect("recovered");
    store.heal();
    f.manager
        .verify(created.token.expose_secret(), &f.req())
        .await
        .expect("the returned token is the stored key's");
    // A lost reply with the read-back failing too stays an error.
    store.inject(Op::Insert, Fault::LostReply);
    store.fail(Op::Get);
    assert!(
        f.manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
            )
            .await
            .is_err()
    );
}

/// A delayed store is slow, not wrong: every call still succeeds.
#[tokio::test]
async fn delays_only_slow_calls_down() {
    for call in CALLS {
        let (store, f) = faulty_fixture();
        let key = f.push_key().await;
        for op in Op::ALL {
            store.delay(*op, Duration::from_millis(1));
        }
        run(call, &f, &key)
            .await
            .unwrap_or_else(|e| panic!("{call:?} delayed: {e}"));
        f.manager.verifier().invalidate_all();
        store.heal();
        // The call did what it does: the old token still passes exactly
        // when the call leaves it able to push.
        let still_pushes = matches!(
            call,
            Call::Create
                | Call::Exchange
                | Call::EndSessions
                | Call::Rotate
                | Call::Import
                | Call::TakeReminders
        );
        assert_eq!(
            f.manager
                .verify(key.token.expose_secret(), &f.req())
                .await
                .is_ok(),
            still_pushes,
            "{call:?}"
        );
    }
}

/// Without faults the wrapper is invisible: it passes the whole KeyStore
/// conformance suite, and again with every operation delayed (so the 64
/// concurrent inserts of the quota check interleave differently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_passes_the_conformance_suite() {
    keyward::store::conformance::run_all(|| async { FaultyStore::new(MemoryStore::new()) }).await;
    keyward::store::conformance::run_all(|| async {
        let store = FaultyStore::new(MemoryStore::new());
        for op in Op::ALL {
            store.delay(*op, Duration::from_micros(200));
        }
        store
    })
    .await;
}

/// Races with a slow store: checks read the store (delayed, so many are in
/// flight) while the key is revoked, regenerated or narrowed. A check that
/// read the old record before the change must not leave it cached: no check
/// that starts after the change returned is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_reads_racing_a_change_never_grant_after_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for round in 0..6 {
        let (store, f) = faulty_fixture();
        let key = f.push_key().await;
        let token = key.token.expose_secret().to_owned();
        store.delay(Op::Get, Duration::from_millis(1));
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let m = f.manager.clone();
            let token = token.clone();
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                let live = Environment::new("live").unwrap();
                let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
                let (mut late, mut after) = (0, 0);
                while after < 20 {
                    let started_after = done.load(Ordering::SeqCst);
                    let ok = m.verify(&token, &req).await.is_ok();
                    if started_after {
                        after += 1;
                        late += usize::from(ok);
                    }
                    // Cache hits never wait: let the timer and the change run.
                    tokio::task::yield_now().await;
                }
                late
            }));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        match round % 3 {
            0 => drop(
                f.manager
                    .revoke(&keyward::Actor::system("tests"), &key.key.id)
                    .await
                    .unwrap(),
            ),
            1 => drop(
                f.manager
                    .regenerate(&keyward::Actor::system("tests"), &key.key.id)
                    .await
                    .unwrap(),
            ),
            _ => drop(
                f.manager
                    .edit(
                        &keyward::Actor::system("tests"),
                        &key.key.id,
                        KeyEdit {
                            permissions: Some(PermissionGrant::only(["package:push-new"])),
                            ..KeyEdit::default()
                        },
                    )
                    .await
                    .unwrap(),
            ),
        }
        done.store(true, Ordering::SeqCst);
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                0,
                "round {round}: granted after the change"
            );
        }
        assert!(store.calls(Op::Get) > 8, "the checks went to the store");
    }
}

/// Once an id is throttled, its cold checks are refused before the store is
/// read: a flood of wrong secrets costs neither argon2 nor store round
/// trips. Another environment's token with the same id is not throttled
/// with it (it is unknown there, as before).
#[tokio::test]
async fn a_throttled_id_is_refused_without_reading_the_store() {
    let (store, f) = faulty_fixture();
    let key = f.push_key().await;
    let format = f.manager.format().clone();
    let parsed = format.parse(key.token.expose_secret()).unwrap();
    let wrong = format
        .from_pair(
            &f.live,
            parsed.key_id(),
            &"W".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    let mut throttled = false;
    for _ in 0..50 {
        let d = f
            .manager
            .verify(wrong.expose_secret(), &f.req())
            .await
            .unwrap_err();
        if d.reason == DenialReason::Throttled {
            throttled = true;
            break;
        }
        assert_eq!(d.reason, DenialReason::WrongSecret);
    }
    assert!(throttled, "the flood got throttled");
    let hashes_now = || {
        f.counters
            .verifies
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let (gets, hashes) = (store.calls(Op::Get), hashes_now());
    for _ in 0..20 {
        let d = f
            .manager
            .verify(wrong.expose_secret(), &f.req())
            .await
            .unwrap_err();
        assert_eq!(d.reason, DenialReason::Throttled);
        assert!(d.retry_after.is_some());
    }
    assert_eq!(store.calls(Op::Get), gets, "no store read while throttled");
    assert_eq!(hashes_now(), hashes, "no argon2 while throttled");
    // The same id as a test-environment token: unknown there, not throttled.
    let as_test = format
        .from_pair(&f.test, parsed.key_id(), parsed.expose_secret())
        .unwrap();
    let req = VerifyRequest::new(&f.test, f.registry.get("package:push").unwrap());
    let d = f
        .manager
        .verify(as_test.expose_secret(), &req)
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::UnknownKey);
}
