//! The verifier's cache, throttle, hashing cap and failure behaviour.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use keyward::*;
use keyward::{
    hash::Argon2Hasher, key::SecretHash, policy::EditPolicy, policy::ExpiryChoice,
    policy::PermissionGrant, policy::ResourceScope, store::StoreError, verify::DenialKind,
    verify::VerifierConfig,
};

#[tokio::test]
async fn a_cache_hit_costs_no_argon2_and_each_change_is_seen_on_the_next_check() {
    let f = fixture_with(
        Arc::new(MemoryStore::new()),
        policy().with_edits(EditPolicy::permissive()),
        VerifierConfig::default(),
    );
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    let id = &created.key.id;
    for _ in 0..5 {
        assert!(f.manager.verify(t, &f.req()).await.is_ok());
    }
    assert_eq!(f.hash_verifies(), 1, "one argon2, then cache hits");
    assert_eq!(f.manager.verifier().cached_keys(), 1);

    // Edit (narrowing): the warm entry is no longer trusted at once; the
    // store is read again, but the unchanged stored hash needs no argon2.
    f.manager
        .edit(
            &keyward::Actor::system("tests"),
            id,
            KeyEdit {
                permissions: Some(PermissionGrant::only(["analytics:read"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        f.manager.verify(t, &f.req()).await.unwrap_err().reason,
        DenialReason::PermissionMissing
    );
    assert_eq!(f.hash_verifies(), 1, "an edit keeps the stored hash");

    // Regenerate: the old secret is refused at once, warm cache or not.
    let read = VerifyRequest::new(&f.live, f.perm("analytics:read"));
    assert!(f.manager.verify(t, &read).await.is_ok());
    let new = f
        .manager
        .regenerate(&keyward::Actor::system("tests"), id)
        .await
        .unwrap();
    assert_eq!(
        f.manager.verify(t, &read).await.unwrap_err().reason,
        DenialReason::WrongSecret
    );
    let t2 = new.token.expose_secret();
    assert!(f.manager.verify(t2, &read).await.is_ok());

    // Revoke.
    f.manager
        .revoke(&keyward::Actor::system("tests"), id)
        .await
        .unwrap();
    assert_eq!(
        f.manager.verify(t2, &read).await.unwrap_err().reason,
        DenialReason::Revoked
    );

    // Delete (a second key, warm).
    let other = f.push_key().await;
    let t3 = other.token.expose_secret();
    assert!(f.manager.verify(t3, &f.req()).await.is_ok());
    f.manager
        .delete(&keyward::Actor::system("tests"), &other.key.id)
        .await
        .unwrap();
    assert_eq!(
        f.manager.verify(t3, &f.req()).await.unwrap_err().reason,
        DenialReason::UnknownKey
    );
}

#[tokio::test]
async fn a_revoked_key_retrying_costs_argon2_once() {
    let f = fixture();
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    f.manager
        .revoke(&keyward::Actor::system("tests"), &created.key.id)
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            f.manager.verify(t, &f.req()).await.unwrap_err().reason,
            DenialReason::Revoked
        );
    }
    assert_eq!(f.hash_verifies(), 1, "negative cache");
}

#[tokio::test]
async fn expiry_is_checked_on_cache_hits() {
    let f = fixture();
    let created = f
        .create(
            NewKey::new(OWNER, "live", "short")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await;
    let t = created.token.expose_secret();
    f.clock
        .advance(TimeDelta::hours(24) - TimeDelta::seconds(10));
    assert!(f.manager.verify(t, &f.req()).await.is_ok());
    f.clock.advance(TimeDelta::seconds(10));
    assert_eq!(
        f.manager.verify(t, &f.req()).await.unwrap_err().reason,
        DenialReason::Expired
    );
    assert_eq!(
        f.hash_verifies(),
        1,
        "the expiry was caught on the cached entry"
    );
}

#[tokio::test]
async fn a_change_made_elsewhere_is_seen_after_the_ttl_or_an_invalidation() {
    let config = VerifierConfig {
        cache_ttl: Duration::from_secs(30),
        ..VerifierConfig::default()
    };
    let store = Arc::new(MemoryStore::new());
    let f = fixture_with(Arc::clone(&store), policy(), config);
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    assert!(f.manager.verify(t, &f.req()).await.is_ok());

    // Another process revokes through the store directly; this one is not told.
    let mut record = store.get(&created.key.id).await.unwrap().unwrap();
    let expected = record.generation;
    record.revoked_at = Some(start());
    record.generation += 1;
    store.update(&record, expected).await.unwrap();

    f.clock.advance(TimeDelta::seconds(29));
    assert!(
        f.manager.verify(t, &f.req()).await.is_ok(),
        "stale within the TTL, as documented"
    );
    f.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        f.manager.verify(t, &f.req()).await.unwrap_err().reason,
        DenialReason::Revoked
    );

    // An invalidation from a change feed works at once.
    let second = f.push_key().await;
    let t2 = second.token.expose_secret();
    assert!(f.manager.verify(t2, &f.req()).await.is_ok());
    store.delete(&second.key.id).await.unwrap();
    f.manager.verifier().invalidate(&second.key.id);
    assert_eq!(
        f.manager.verify(t2, &f.req()).await.unwrap_err().reason,
        DenialReason::UnknownKey
    );

    // And invalidate_all empties the cache.
    let third = f.push_key().await;
    assert!(
        f.manager
            .verify(third.token.expose_secret(), &f.req())
            .await
            .is_ok()
    );
    assert!(f.manager.verifier().cached_keys() >= 1);
    f.manager.verifier().invalidate_all();
    assert_eq!(f.manager.verifier().cached_keys(), 0);
}

#[tokio::test]
async fn wrong_secrets_are_throttled_while_the_cached_right_secret_passes() {
    let config = VerifierConfig {
        failure_burst: 5,
        failure_refill: Duration::from_secs(10),
        ..VerifierConfig::default()
    };
    let f = fixture_with(Arc::new(MemoryStore::new()), policy(), config);
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    assert!(f.manager.verify(t, &f.req()).await.is_ok());
    let before = f.hash_verifies();

    let mut throttled = 0;
    for _ in 0..50 {
        let forged = f.manager.format().generate(&f.live, &created.key.id);
        let d = f
            .manager
            .verify(forged.expose_secret(), &f.req())
            .await
            .unwrap_err();
        match d.reason {
            DenialReason::WrongSecret => {}
            DenialReason::Throttled => {
                throttled += 1;
                assert_eq!(d.kind(), DenialKind::Throttled);
                let wait = d.retry_after.expect("retry after");
                assert!(
                    wait > Duration::ZERO && wait <= Duration::from_secs(10),
                    "{wait:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(throttled, 45);
    assert_eq!(
        f.hash_verifies() - before,
        5,
        "argon2 ran only for the burst"
    );
    assert!(
        f.manager.verify(t, &f.req()).await.is_ok(),
        "the cached right secret is not locked out"
    );

    // One token comes back per refill interval.
    f.clock.advance(TimeDelta::seconds(10));
    let forged = f.manager.format().generate(&f.live, &created.key.id);
    assert_eq!(
        f.manager
            .verify(forged.expose_secret(), &f.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::WrongSecret
    );
    let forged = f.manager.format().generate(&f.live, &created.key.id);
    assert_eq!(
        f.manager
            .verify(forged.expose_secret(), &f.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::Throttled
    );

    // Another key is not affected.
    let other = f.push_key().await;
    assert!(
        f.manager
            .verify(other.token.expose_secret(), &f.req())
            .await
            .is_ok()
    );
}

/// A manager whose argon2 takes `delay` and runs at most 2 at once, and
/// the tokens of `keys` keys of different owners, not yet cached.
async fn capped_manager(
    keys: usize,
    delay: Duration,
) -> (Counters, KeyManager<Arc<MemoryStore>>, Vec<String>) {
    let counters = Counters::default();
    let manager = KeyManager::builder(
        Arc::new(MemoryStore::new()),
        format(),
        Policy::new(registry()),
    )
    .hasher(CountingHasher::with_delay(counters.clone(), delay))
    .clock(ManualClock::new(start()))
    .verifier_config(VerifierConfig {
        max_concurrent_hashes: 2,
        ..VerifierConfig::default()
    })
    .build()
    .unwrap();
    let mut tokens = Vec::new();
    for i in 0..keys {
        let created = manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(format!("owner{i}"), "live", "k").permissions(PermissionGrant::All),
            )
            .await
            .unwrap();
        tokens.push(created.token.expose_secret().to_owned());
    }
    counters.max_running.store(0, Ordering::SeqCst);
    (counters, manager, tokens)
}

/// A hasher whose verifies wait, each, until two have run at once (or
/// `GATE_LIMIT` passed), then hold their thread for a while: whether the
/// cap of 2 is reached no longer depends on how fast the test's tasks
/// are scheduled, and a third thread, if the pool started one, would be
/// caught running beside the two.
struct GatedHasher {
    inner: Argon2Hasher,
    counters: Counters,
    pair: std::sync::Mutex<bool>,
    paired: std::sync::Condvar,
}

/// How long a verify waits for a second one: only a pool that never runs
/// two at once waits this long (and then fails the test).
const GATE_LIMIT: Duration = Duration::from_secs(30);

impl keyward::hash::SecretHasher for GatedHasher {
    fn hash(&self, secret: &[u8]) -> Result<String, keyward::hash::HashError> {
        self.inner.hash(secret)
    }
    fn verify(&self, secret: &[u8], stored: &str) -> Result<bool, keyward::hash::HashError> {
        self.counters.verifies.fetch_add(1, Ordering::SeqCst);
        let now = self.counters.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.max_running.fetch_max(now, Ordering::SeqCst);
        {
            let mut paired = self.pair.lock().unwrap();
            if now >= 2 {
                *paired = true;
                self.paired.notify_all();
            }
            let _ = self
                .paired
                .wait_timeout_while(paired, GATE_LIMIT, |paired| !*paired)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let r = self.inner.verify(secret, stored);
        self.counters.running.fetch_sub(1, Ordering::SeqCst);
        r
    }
    fn needs_rehash(&self, stored: &str) -> bool {
        self.inner.needs_rehash(stored)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrent_argon2_cap_holds() {
    let counters = Counters::default();
    let manager = KeyManager::builder(
        Arc::new(MemoryStore::new()),
        format(),
        Policy::new(registry()),
    )
    .hasher(GatedHasher {
        inner: Argon2Hasher::new(Argon2Params::insecure_for_tests()),
        counters: counters.clone(),
        pair: std::sync::Mutex::new(false),
        paired: std::sync::Condvar::new(),
    })
    .clock(ManualClock::new(start()))
    .verifier_config(VerifierConfig {
        max_concurrent_hashes: 2,
        // Queued checks wait for the gate (hashing threads run at nice 19
        // and may start late on a busy machine): none may be refused as
        // overloaded, which is not what this test is about.
        max_hash_wait: GATE_LIMIT * 4,
        max_hash_queue: 64,
        ..VerifierConfig::default()
    })
    .build()
    .unwrap();
    let mut tokens = Vec::new();
    for i in 0..12 {
        let created = manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(format!("owner{i}"), "live", "k").permissions(PermissionGrant::All),
            )
            .await
            .unwrap();
        tokens.push(created.token.expose_secret().to_owned());
    }
    let push = registry().get("package:push").unwrap();
    let mut tasks = Vec::new();
    for t in tokens {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move {
            let live = Environment::new("live").unwrap();
            m.verify(&t, &VerifyRequest::new(&live, push))
                .await
                .map(drop)
                .map_err(|d| d.reason)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(()));
    }
    assert_eq!(counters.verifies.load(Ordering::SeqCst), 12);
    assert_eq!(
        counters.max_running.load(Ordering::SeqCst),
        2,
        "never more than the cap, and the cap is used"
    );
}

/// Checks abandoned by their callers (a client gone, a timeout) keep their
/// argon2 slot until the computation really ends: the cap counts what runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argon2_cap_holds_when_checks_are_cancelled() {
    let (counters, manager, tokens) = capped_manager(8, Duration::from_millis(150)).await;
    let push = registry().get("package:push").unwrap();
    let live = Environment::new("live").unwrap();
    // Each check is given up as soon as its argon2 runs, long before its
    // 150 ms end. (Given up after a fixed 10 ms, a check on a loaded
    // machine was sometimes dropped before its hashing thread, at nice 19,
    // had taken it: it then never ran, and the cap was never reached.)
    let req = VerifyRequest::new(&live, push);
    for t in &tokens {
        let before = counters.verifies.load(Ordering::SeqCst);
        let started = async {
            while counters.verifies.load(Ordering::SeqCst) == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            _ = manager.verify(t, &req) => {
                panic!("the check ended while its argon2 still ran")
            }
            waited = tokio::time::timeout(Duration::from_secs(30), started) => {
                assert!(waited.is_ok(), "the check's argon2 never started");
            }
        }
    }
    // Let every abandoned computation that did start finish.
    for _ in 0..100 {
        if counters.running.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counters.running.load(Ordering::SeqCst), 0);
    assert_eq!(
        counters.max_running.load(Ordering::SeqCst),
        2,
        "abandoned checks freed their slot while argon2 still ran"
    );
    assert!(counters.verifies.load(Ordering::SeqCst) >= 2);
}

/// One verifier serving two environments: a key proven (and cached) in
/// `test` is never accepted in `live`, however its id and secret are sent.
#[tokio::test]
async fn a_cached_key_of_one_environment_is_refused_in_another() {
    let manager = KeyManager::builder(
        Arc::new(MemoryStore::new()),
        format(),
        Policy::new(registry()),
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .build()
    .unwrap();
    let created = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new("contoso", "test", "sandbox").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    let push = registry().get("package:push").unwrap();
    let test = Environment::new("test").unwrap();
    let live = Environment::new("live").unwrap();
    let token = created.token.expose_secret();
    // Warm the cache in `test`.
    manager
        .verify(token, &VerifyRequest::new(&test, push))
        .await
        .unwrap();
    let parsed = format().parse(token).unwrap();
    // The same id and secret rebuilt as a live token (a new CRC is easy).
    let as_live = format()
        .from_pair(&live, parsed.key_id(), parsed.expose_secret())
        .unwrap();
    let d = manager
        .verify(as_live.expose_secret(), &VerifyRequest::new(&live, push))
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::UnknownKey);
    let d = manager
        .verify_pair(
            parsed.key_id(),
            parsed.expose_secret(),
            &VerifyRequest::new(&live, push),
        )
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::UnknownKey);
    // And the test key still works in `test`, from the cache.
    manager
        .verify(token, &VerifyRequest::new(&test, push))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_store_denies_and_management_calls_return_the_error() {
    let store = Arc::new(FlakyStore::new(MemoryStore::new()));
    let f = fixture_with(Arc::clone(&store), policy(), VerifierConfig::default());
    let created = f.push_key().await;
    let t = created.token.expose_secret();

    store.fail_reads.store(true, Ordering::SeqCst);
    let d = f.manager.verify(t, &f.req()).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::StoreUnavailable);
    assert_eq!(d.kind(), DenialKind::Unavailable);
    assert!(matches!(
        f.manager
            .get(&keyward::Actor::system("tests"), &created.key.id)
            .await,
        Err(KeywardError::Store(StoreError::Backend(_)))
    ));
    store.fail_reads.store(false, Ordering::SeqCst);

    store.fail_writes.store(true, Ordering::SeqCst);
    let before = snapshot(&store.inner, OWNER).await;
    assert!(matches!(
        f.manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "x").permissions(PermissionGrant::All)
            )
            .await,
        Err(KeywardError::Store(StoreError::Backend(_)))
    ));
    assert!(matches!(
        f.manager
            .revoke(&keyward::Actor::system("tests"), &created.key.id)
            .await,
        Err(KeywardError::Store(_))
    ));
    assert!(matches!(
        f.manager
            .regenerate(&keyward::Actor::system("tests"), &created.key.id)
            .await,
        Err(KeywardError::Store(_))
    ));
    assert!(matches!(
        f.manager
            .delete(&keyward::Actor::system("tests"), &created.key.id)
            .await,
        Err(KeywardError::Store(_))
    ));
    assert_eq!(
        snapshot(&store.inner, OWNER).await,
        before,
        "nothing half-written"
    );
    store.fail_writes.store(false, Ordering::SeqCst);
    assert!(
        f.manager.verify(t, &f.req()).await.is_ok(),
        "the old secret still works: regenerate failed"
    );
}

#[tokio::test]
async fn corrupt_records_deny() {
    let store = Arc::new(MemoryStore::new());
    let f = fixture_with(Arc::clone(&store), policy(), VerifierConfig::default());
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    let mut record = store.get(&created.key.id).await.unwrap().unwrap();
    let good_hash = record.secret_hash.clone();

    record.secret_hash = SecretHash::new("garbage".into());
    store.update(&record, record.generation).await.unwrap();
    let d = f.manager.verify(t, &f.req()).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::CorruptRecord);
    assert_eq!(d.kind(), DenialKind::Unavailable);

    record.secret_hash = good_hash;
    record.resources = ResourceScope::only(["bad pattern/"]);
    store.update(&record, record.generation).await.unwrap();
    assert_eq!(
        f.manager.verify(t, &f.req()).await.unwrap_err().reason,
        DenialReason::CorruptRecord
    );
}

#[tokio::test]
async fn weak_hashes_are_upgraded_on_a_successful_check() {
    let store = Arc::new(MemoryStore::new());
    let weak = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let created = weak.push_key_for_test().await;
    let stronger = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::new(64, 2, 1).unwrap()))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
    assert!(
        stronger
            .verify(created.token.expose_secret(), &req)
            .await
            .is_ok()
    );
    let record = store.get(&created.key.id).await.unwrap().unwrap();
    assert!(
        record
            .secret_hash
            .as_str()
            .starts_with("$argon2id$v=19$m=64,t=2,p=1$")
    );
    assert_eq!(record.generation, 2);
    stronger.verifier().invalidate_all();
    assert!(
        stronger
            .verify(created.token.expose_secret(), &req)
            .await
            .is_ok(),
        "the new hash verifies"
    );
}

trait PushKey {
    async fn push_key_for_test(&self) -> CreatedKey;
}
impl<S: KeyStore> PushKey for KeyManager<S> {
    async fn push_key_for_test(&self) -> CreatedKey {
        self.create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap()
    }
}

/// Many tasks verify while the manager revokes: no check that starts after
/// `revoke` returned may pass. Each task keeps checking until it has seen
/// `AFTER` checks start after the change, so the race cannot pass vacuously
/// by finishing before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_check_started_after_a_revoke_returned_is_granted() {
    const AFTER: usize = 50;
    for round in 0..5 {
        let f = fixture();
        let created = f.push_key().await;
        let token = created.token.expose_secret().to_owned();
        let done = Arc::new(AtomicBool::new(false));
        // The denial each change must cause (repeated wrong secrets may
        // also be throttled: a denial all the same).
        let expected = match round % 3 {
            0 => DenialReason::Revoked,
            1 => DenialReason::WrongSecret,
            _ => DenialReason::PermissionMissing,
        };
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let m = f.manager.clone();
            let token = token.clone();
            let done = Arc::clone(&done);
            let expected = expected.clone();
            tasks.push(tokio::spawn(async move {
                let live = Environment::new("live").unwrap();
                let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
                let mut after = 0;
                let mut wrong_outcomes = Vec::new();
                while after < AFTER {
                    let started_after = done.load(Ordering::SeqCst);
                    let outcome = m.verify(&token, &req).await;
                    if started_after {
                        after += 1;
                        match outcome {
                            Err(d)
                                if d.reason == expected || d.reason == DenialReason::Throttled => {}
                            Err(d) => wrong_outcomes.push(format!("denied for {:?}", d.reason)),
                            Ok(_) => wrong_outcomes.push("granted".to_owned()),
                        }
                    }
                    tokio::task::yield_now().await;
                }
                wrong_outcomes
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        match round % 3 {
            0 => {
                f.manager
                    .revoke(&keyward::Actor::system("tests"), &created.key.id)
                    .await
                    .unwrap();
            }
            1 => {
                f.manager
                    .regenerate(&keyward::Actor::system("tests"), &created.key.id)
                    .await
                    .unwrap();
            }
            _ => {
                f.manager
                    .edit(
                        &keyward::Actor::system("tests"),
                        &created.key.id,
                        KeyEdit {
                            permissions: Some(PermissionGrant::only(["package:push-new"])),
                            ..KeyEdit::default()
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        done.store(true, Ordering::SeqCst);
        for t in tasks {
            // The task returns only once AFTER checks started after the change.
            let wrong_outcomes = t.await.unwrap();
            assert!(
                wrong_outcomes.is_empty(),
                "round {round}: checks started after the change were {wrong_outcomes:?}, \
                 not denied for {expected:?}"
            );
        }
    }
}
