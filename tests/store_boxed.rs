//! The conformance suite against stores chosen at run time:
//! [`keyward::store::BoxedStore`] and [`keyward::store::BoxedSessionStore`]
//! over [`keyward::MemoryStore`] pass it as the memory store does.
#![cfg(feature = "testing")]

use keyward::MemoryStore;
use keyward::hash::Argon2Hasher;
use keyward::policy::PermissionGrant;
use keyward::session::SessionConfig;
use keyward::store::{BoxedSessionStore, BoxedStore};

// One test per contract item, through the boxed key store.
keyward::store_conformance_tests!(async { BoxedStore::new(MemoryStore::new()) });

/// All key checks, then the session checks, on one boxed store with sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boxed_session_store_passes_key_and_session_checks() {
    let store = BoxedSessionStore::new(MemoryStore::new());
    keyward::store::conformance::run_all(|| {
        let store = store.clone();
        async move { store }
    })
    .await;
    keyward::store::conformance::session_store_conformance(store.clone()).await;
    keyward::store::conformance::usage_conformance(store).await;
}

/// The usage operations go through the boxed store (which forwards them;
/// the trait's defaults would refuse them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boxed_store_passes_the_usage_checks() {
    keyward::store::conformance::usage_conformance(BoxedStore::new(MemoryStore::new())).await;
}

/// The boxed store forwards to the store it holds: what one writes, the
/// inner store reads.
#[tokio::test]
async fn a_boxed_store_shares_its_inner_store() {
    use keyward::*;
    let inner = std::sync::Arc::new(MemoryStore::new());
    let registry = PermissionRegistry::builder()
        .permission("p")
        .build()
        .unwrap();
    let manager = KeyManager::builder(
        BoxedSessionStore::new(std::sync::Arc::clone(&inner)),
        TokenFormat::new("mkh", &["live"]).unwrap(),
        Policy::new(registry),
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .sessions(SessionConfig::new("mkhs"))
    .build()
    .unwrap();
    let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
    let created = manager
        .create(
            &admin,
            NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    assert_eq!(inner.len(), 1);
    let stored = KeyStore::get(&*inner, &created.key.id).await.unwrap();
    assert_eq!(stored.map(|r| r.id), Some(created.key.id.clone()));
    let live = Environment::new("live").unwrap();
    let session = manager
        .exchange(created.token.expose_secret(), &live, None, None)
        .await
        .unwrap();
    let ended = manager.end_sessions(&admin, &created.key.id).await.unwrap();
    assert_eq!(ended, 1);
    assert!(
        manager
            .authenticate_session(session.token.expose_secret(), &live, None)
            .await
            .is_err()
    );
}
