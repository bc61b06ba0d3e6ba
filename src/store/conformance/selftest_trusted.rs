//! Self-tests of [`trust_store_conformance`](super::trust_store_conformance):
//! trust stores broken on purpose, each caught with the rule named.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::store::StoreError;
use crate::store::TrustStore;
use crate::trust_policy::TrustPolicy;
use crate::{KeyId, MemoryStore, OwnerId};

#[derive(Clone, Copy)]
enum Bug {
    /// `claim_jti` reads, then writes in another step.
    RacyClaim,
    /// `insert_trust_policy` ignores the cap.
    IgnoresCap,
}

struct Broken(
    MemoryStore,
    Bug,
    Mutex<HashMap<(String, String), DateTime<Utc>>>,
);

impl TrustStore for Broken {
    async fn insert_trust_policy(&self, p: &TrustPolicy, max: u32) -> Result<(), StoreError> {
        match self.1 {
            Bug::IgnoresCap => self.0.insert_trust_policy(p, u32::MAX).await,
            Bug::RacyClaim => self.0.insert_trust_policy(p, max).await,
        }
    }
    async fn get_trust_policy(&self, id: &KeyId) -> Result<Option<TrustPolicy>, StoreError> {
        self.0.get_trust_policy(id).await
    }
    async fn list_trust_policies(&self, o: &OwnerId) -> Result<Vec<TrustPolicy>, StoreError> {
        self.0.list_trust_policies(o).await
    }
    async fn find_trust_policies(
        &self,
        issuer: &str,
        lookup: &str,
    ) -> Result<Vec<TrustPolicy>, StoreError> {
        self.0.find_trust_policies(issuer, lookup).await
    }
    async fn delete_trust_policy(&self, id: &KeyId) -> Result<(), StoreError> {
        self.0.delete_trust_policy(id).await
    }
    async fn claim_jti(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match self.1 {
            Bug::IgnoresCap => self.0.claim_jti(issuer, jti, expires_at, now).await,
            Bug::RacyClaim => {
                let key = (issuer.to_owned(), jti.to_owned());
                let live = self
                    .2
                    .lock()
                    .unwrap()
                    .get(&key)
                    .is_some_and(|until| *until > now);
                if live {
                    return Ok(false);
                }
                // Another claim runs between the read and the write.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                self.2.lock().unwrap().insert(key, expires_at);
                Ok(true)
            }
        }
    }
    async fn delete_expired_jtis(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let own = {
            let mut map = self.2.lock().unwrap();
            let before = map.len();
            map.retain(|_, until| *until > now);
            (before - map.len()) as u64
        };
        Ok(own + self.0.delete_expired_jtis(now).await?)
    }
}

/// A claim that reads and then writes lets several concurrent claims win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(
    expected = "trust_store_conformance: of concurrent claims of one jti exactly one must win"
)]
async fn trust_conformance_catches_a_racy_jti_claim() {
    let store = Broken(MemoryStore::new(), Bug::RacyClaim, Mutex::default());
    super::trust_store_conformance(store).await;
}

/// A store that ignores the per-owner cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "trust_store_conformance: an owner at the cap must be refused")]
async fn trust_conformance_catches_an_ignored_cap() {
    let store = Broken(MemoryStore::new(), Bug::IgnoresCap, Mutex::default());
    super::trust_store_conformance(store).await;
}
