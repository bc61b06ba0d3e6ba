//! The suite's self-tests: stores broken on purpose, each caught by the
//! check that owns the rule it breaks, with the message naming it.

use crate::MemoryStore;

/// The audit conformance check fails a sink that loses a field.
#[tokio::test]
#[should_panic(expected = "audit_sink_conformance")]
async fn audit_conformance_catches_a_lossy_sink() {
    use crate::audit::BoxFuture;
    use crate::{
        audit::AuditEvent, audit::AuditQuery, store::AuditSink, store::MemoryAuditSink,
        store::StoreError,
    };

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
    super::audit_sink_conformance(DropsAddresses(MemoryAuditSink::new())).await;
}

/// A [`MemoryStore`] whose session methods can be broken one at a time.
mod broken {
    use crate::{
        KeyId, MemoryStore, OwnerId, session::SessionCap, session::SessionRecord,
        store::SessionStore, store::StoreError,
    };
    use chrono::{DateTime, Utc};

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
    super::session_store_conformance(store).await;
}

/// The session conformance check fails a store whose
/// `delete_expired_sessions` deletes live sessions too.
#[tokio::test]
#[should_panic(
    expected = "session_store_conformance: delete_expired_sessions must not delete sessions expiring after `now`"
)]
async fn session_conformance_catches_a_store_that_deletes_live_sessions() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::DeleteDeletesAll);
    super::session_store_conformance(store).await;
}

/// The session conformance check fails a store that ignores the cap.
#[tokio::test]
#[should_panic(expected = "session_store_conformance: insert_session must refuse a session")]
async fn session_conformance_catches_a_store_that_ignores_the_cap() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::IgnoresCap);
    super::session_store_conformance(store).await;
}

/// The session conformance check fails a store that cannot tell whose
/// sessions a key has.
#[tokio::test]
#[should_panic(expected = "session_store_conformance: session_owner must return the owner")]
async fn session_conformance_catches_a_store_without_session_owners() {
    let store = broken::BrokenSessions(MemoryStore::new(), broken::Bug::NoOwner);
    super::session_store_conformance(store).await;
}

/// A [`MemoryStore`] that never checks the quota.
struct IgnoresQuota(MemoryStore);

impl crate::KeyStore for IgnoresQuota {
    async fn insert(
        &self,
        record: &crate::key::KeyRecord,
        _quota: Option<crate::store::QuotaCheck>,
    ) -> Result<(), crate::store::StoreError> {
        self.0.insert(record, None).await
    }
    async fn get(
        &self,
        id: &crate::KeyId,
    ) -> Result<Option<crate::key::KeyRecord>, crate::store::StoreError> {
        self.0.get(id).await
    }
    async fn list(
        &self,
        query: &crate::store::ListQuery,
    ) -> Result<Vec<crate::key::KeyRecord>, crate::store::StoreError> {
        self.0.list(query).await
    }
    async fn count(
        &self,
        query: &crate::store::ListQuery,
    ) -> Result<u64, crate::store::StoreError> {
        self.0.count(query).await
    }
    async fn update(
        &self,
        record: &crate::key::KeyRecord,
        expected_generation: u64,
    ) -> Result<(), crate::store::StoreError> {
        self.0.update(record, expected_generation).await
    }
    async fn delete(&self, id: &crate::KeyId) -> Result<(), crate::store::StoreError> {
        self.0.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &crate::KeyId,
        at: chrono::DateTime<chrono::Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), crate::store::StoreError> {
        self.0.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<crate::key::KeyRecord>, crate::store::StoreError> {
        self.0.take_expiry_reminders(now, until, limit).await
    }
}

/// The key conformance suite fails a store that ignores the quota: the
/// concurrency check sees all 64 inserts succeed instead of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "quota_holds_under_concurrency: successes and refusals with quota 3")]
async fn key_conformance_catches_a_store_that_ignores_the_quota() {
    super::quota_holds_under_concurrency(IgnoresQuota(MemoryStore::new())).await;
}

/// The quota check without concurrency catches it too.
#[tokio::test]
#[should_panic(expected = "quota_counts_live_keys")]
async fn key_conformance_catches_a_store_that_ignores_the_quota_sequentially() {
    super::quota_counts_live_keys(IgnoresQuota(MemoryStore::new())).await;
}
