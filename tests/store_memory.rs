//! The conformance suite against [`keyward::MemoryStore`].
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

/// A [`MemoryStore`] whose session methods can be broken one at a time.
mod broken {
    use chrono::{DateTime, Utc};
    use keyward::{
        KeyId, MemoryStore, OwnerId, SessionCap, SessionRecord, SessionStore, StoreError,
    };

    pub enum Bug {
        /// `revoke_sessions` revokes nothing and returns 0.
        RevokeDoesNothing,
        /// `delete_expired_sessions` deletes every session, expired or not.
        DeleteDeletesAll,
        /// `insert_session` ignores the cap.
        IgnoresCap,
        /// `session_owner` never finds one.
        NoOwner,
    }

    pub struct BrokenSessions(pub MemoryStore, pub Bug);

    impl SessionStore for BrokenSessions {
        async fn insert_session(
            &self,
            record: &SessionRecord,
            cap: Option<SessionCap>,
        ) -> Result<(), StoreError> {
            match self.1 {
                Bug::IgnoresCap => self.0.insert_session(record, None).await,
                _ => self.0.insert_session(record, cap).await,
            }
        }
        async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
            match self.1 {
                Bug::NoOwner => Ok(None),
                _ => self.0.session_owner(key_id).await,
            }
        }
        async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
            self.0.get_session(id).await
        }
        async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
            match self.1 {
                Bug::RevokeDoesNothing => Ok(0),
                _ => self.0.revoke_sessions(key_id).await,
            }
        }
        async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
            match self.1 {
                Bug::DeleteDeletesAll => {
                    self.0
                        .delete_expired_sessions(DateTime::<Utc>::MAX_UTC)
                        .await
                }
                _ => self.0.delete_expired_sessions(now).await,
            }
        }
    }
}

/// The session conformance check fails a store whose `revoke_sessions`
/// does nothing.
#[tokio::test]
#[should_panic(expected = "session_store_conformance: revoke_sessions must return how many")]
async fn session_conformance_catches_a_store_that_does_not_revoke() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::RevokeDoesNothing);
    keyward::store::conformance::session_store_conformance(store).await;
}

/// The session conformance check fails a store whose
/// `delete_expired_sessions` deletes live sessions too.
#[tokio::test]
#[should_panic(
    expected = "session_store_conformance: delete_expired_sessions must not delete sessions expiring after `now`"
)]
async fn session_conformance_catches_a_store_that_deletes_live_sessions() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::DeleteDeletesAll);
    keyward::store::conformance::session_store_conformance(store).await;
}

/// The session conformance check fails a store that ignores the cap.
#[tokio::test]
#[should_panic(expected = "session_store_conformance: insert_session must refuse a session")]
async fn session_conformance_catches_a_store_that_ignores_the_cap() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::IgnoresCap);
    keyward::store::conformance::session_store_conformance(store).await;
}

/// The session conformance check fails a store that cannot tell whose
/// sessions a key has.
#[tokio::test]
#[should_panic(expected = "session_store_conformance: session_owner must return the owner")]
async fn session_conformance_catches_a_store_without_session_owners() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::NoOwner);
    keyward::store::conformance::session_store_conformance(store).await;
}

/// A [`MemoryStore`] that never checks the quota.
struct IgnoresQuota(MemoryStore);

impl keyward::KeyStore for IgnoresQuota {
    async fn insert(
        &self,
        record: &keyward::KeyRecord,
        _quota: Option<keyward::QuotaCheck>,
    ) -> Result<(), keyward::StoreError> {
        self.0.insert(record, None).await
    }
    async fn get(
        &self,
        id: &keyward::KeyId,
    ) -> Result<Option<keyward::KeyRecord>, keyward::StoreError> {
        self.0.get(id).await
    }
    async fn list(
        &self,
        query: &keyward::ListQuery,
    ) -> Result<Vec<keyward::KeyRecord>, keyward::StoreError> {
        self.0.list(query).await
    }
    async fn update(
        &self,
        record: &keyward::KeyRecord,
        expected_generation: u64,
    ) -> Result<(), keyward::StoreError> {
        self.0.update(record, expected_generation).await
    }
    async fn delete(&self, id: &keyward::KeyId) -> Result<(), keyward::StoreError> {
        self.0.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &keyward::KeyId,
        at: chrono::DateTime<chrono::Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), keyward::StoreError> {
        self.0.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<keyward::KeyRecord>, keyward::StoreError> {
        self.0.take_expiry_reminders(now, until, limit).await
    }
}

/// The key conformance suite fails a store that ignores the quota: the
/// concurrency check sees all 64 inserts succeed instead of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "quota_holds_under_concurrency: successes and refusals with quota 3")]
async fn key_conformance_catches_a_store_that_ignores_the_quota() {
    keyward::store::conformance::quota_holds_under_concurrency(IgnoresQuota(MemoryStore::new()))
        .await;
}

/// The quota check without concurrency catches it too.
#[tokio::test]
#[should_panic(expected = "quota_counts_live_keys")]
async fn key_conformance_catches_a_store_that_ignores_the_quota_sequentially() {
    keyward::store::conformance::quota_counts_live_keys(IgnoresQuota(MemoryStore::new())).await;
}
