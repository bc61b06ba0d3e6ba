//! The conformance suite against [`keyward::MemoryStore`].
#![cfg(feature = "testing")]

use keyward::MemoryStore;

// One test per contract item.
keyward::store_conformance_tests!(async { MemoryStore::new() });

/// All checks sharing one store, as `run_all` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_shared_store() {
    let store = std::sync::Arc::new(MemoryStore::new());
    keyward::store::conformance::run_all(|| {
        let store = std::sync::Arc::clone(&store);
        async move { store }
    })
    .await;
    assert!(store.len() > 50, "the checks wrote to the shared store");
}

#[test]
fn every_check_is_named() {
    assert_eq!(keyward::store::conformance::CHECKS.len(), 24);
}

#[tokio::test]
async fn memory_audit_sink_conformance() {
    keyward::store::conformance::audit_sink_conformance(keyward::MemoryAuditSink::new()).await;
}

/// The audit conformance check fails a sink that loses a field.
#[tokio::test]
#[should_panic(expected = "audit_sink_conformance")]
async fn audit_conformance_catches_a_lossy_sink() {
    use keyward::audit::BoxFuture;
    use keyward::{AuditEvent, AuditQuery, AuditSink, MemoryAuditSink, StoreError};

    struct DropsAddresses(MemoryAuditSink);
    impl AuditSink for DropsAddresses {
        fn record<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                let stripped: Vec<AuditEvent> = events
                    .iter()
                    .cloned()
                    .map(|e| AuditEvent {
                        client_ip: None,
                        ..e
                    })
                    .collect();
                self.0.record(&stripped).await
            })
        }
        fn query<'a>(
            &'a self,
            query: &'a AuditQuery,
        ) -> BoxFuture<'a, Result<Vec<AuditEvent>, StoreError>> {
            self.0.query(query)
        }
    }
    keyward::store::conformance::audit_sink_conformance(DropsAddresses(MemoryAuditSink::new()))
        .await;
}
