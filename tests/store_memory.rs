//! The conformance suite against [`keyward::MemoryStore`]. (The self-tests
//! proving the suite catches broken stores are in `src/store/conformance/selftest.rs`.)
#![cfg(feature = "testing")]

use keyward::MemoryStore;

// One test per contract item.
keyward::store_conformance_tests!(async { MemoryStore::new() });

/// All checks sharing one store, as `run_all` allows; passing, they leave
/// no key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_shared_store() {
    use keyward::store::{FaultyStore, Op};
    // FaultyStore with no fault injected: a pass-through that counts calls.
    let store = std::sync::Arc::new(FaultyStore::new(MemoryStore::new()));
    keyward::store::conformance::run_all(|| {
        let store = std::sync::Arc::clone(&store);
        async move { store }
    })
    .await;
    keyward::store::conformance::usage_conformance(std::sync::Arc::clone(&store)).await;
    assert!(
        store.calls(Op::Insert) > 50,
        "the checks wrote to the shared store"
    );
    for op in [
        Op::LeaseCredits,
        Op::SettleCredits,
        Op::ChangeCredits,
        Op::LeaseRate,
        Op::ReturnRate,
    ] {
        assert!(store.calls(op) > 0, "the usage checks went through {op}");
    }
    assert!(
        store.inner().is_empty(),
        "the checks deleted the keys they wrote ({} left)",
        store.inner().len()
    );
}

#[tokio::test]
async fn memory_session_store_conformance() {
    keyward::store::conformance::session_store_conformance(MemoryStore::new()).await;
}

/// The session check shares a store with the key checks, and runs twice on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_conformance_on_a_store_shared_with_the_key_checks() {
    let store = std::sync::Arc::new(MemoryStore::new());
    keyward::store::conformance::run_all(|| {
        let store = std::sync::Arc::clone(&store);
        async move { store }
    })
    .await;
    keyward::store::conformance::session_store_conformance(std::sync::Arc::clone(&store)).await;
    keyward::store::conformance::session_store_conformance(store).await;
}

#[test]
fn every_check_is_named() {
    assert_eq!(keyward::store::conformance::CHECKS.len(), 29);
}

#[tokio::test]
async fn memory_audit_sink_conformance() {
    keyward::store::conformance::audit_sink_conformance(keyward::store::MemoryAuditSink::new())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_usage_conformance() {
    keyward::store::conformance::usage_conformance(MemoryStore::new()).await;
}

/// A failing usage operation fails; it never reaches the inner store.
#[tokio::test]
async fn faulty_usage_operations_fail_and_change_nothing() {
    use keyward::store::{FaultyStore, Op, StoreError};
    use keyward::usage::{CreditChange, Credits, UsageControls};
    use keyward::{KeyStore, hash::Argon2Hasher, policy::PermissionGrant};
    let store = std::sync::Arc::new(FaultyStore::new(MemoryStore::new()));
    let registry = keyward::PermissionRegistry::builder()
        .permission("p")
        .build()
        .unwrap();
    let manager = keyward::KeyManager::builder(
        std::sync::Arc::clone(&store),
        keyward::TokenFormat::new("mkh", &["live"]).unwrap(),
        keyward::Policy::new(registry),
    )
    .hasher(Argon2Hasher::new(
        keyward::Argon2Params::insecure_for_tests(),
    ))
    .build()
    .unwrap();
    // A starting balance is the application's to give (ManagementAction::Usage).
    let app = keyward::Actor::system("billing");
    let created = manager
        .create(
            &app,
            keyward::NewKey::new("contoso", "live", "CI")
                .permissions(PermissionGrant::All)
                .credits(Credits::new(10).unwrap()),
        )
        .await
        .unwrap();
    let id = created.key.id.clone();
    for op in [Op::LeaseCredits, Op::ChangeCredits] {
        store.fail(op);
    }
    assert!(matches!(
        store.lease_credits(&id, 5, None).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.change_credits(&id, CreditChange::Set(0)).await,
        Err(StoreError::Backend(_))
    ));
    let usage: UsageControls = store.get(&id).await.unwrap().unwrap().usage;
    assert_eq!(usage.credits.map(|c| c.remaining), Some(10));
    store.heal();
    assert_eq!(
        store
            .lease_credits(&id, 5, None)
            .await
            .unwrap()
            .map(|g| g.granted),
        Some(5)
    );
    assert_eq!(store.calls(Op::LeaseCredits), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_trust_store_conformance() {
    keyward::store::conformance::trust_store_conformance(MemoryStore::new()).await;
}
