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
    assert!(
        store.calls(Op::Insert) > 50,
        "the checks wrote to the shared store"
    );
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
async fn memory_trust_store_conformance() {
    keyward::store::conformance::trust_store_conformance(MemoryStore::new()).await;
}
