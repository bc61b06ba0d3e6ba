//! [`TrustStore`] for [`MemoryStore`]: policies and used `jti`s in maps
//! behind one lock (they are few, and claims must be atomic).

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;

use chrono::{DateTime, Utc};

use super::MemoryStore;
use super::trusted::TrustStore;
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::store::StoreError;
use crate::trust_policy::TrustPolicy;

/// The trusted-publishing tables of a [`MemoryStore`].
#[derive(Debug, Default)]
pub(super) struct TrustTables {
    policies: BTreeMap<KeyId, TrustPolicy>,
    /// `(issuer, jti)` → expiry.
    jtis: HashMap<(String, String), DateTime<Utc>>,
}

impl TrustStore for MemoryStore {
    async fn insert_trust_policy(
        &self,
        policy: &TrustPolicy,
        max_per_owner: u32,
    ) -> Result<(), StoreError> {
        let mut t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        if t.policies.contains_key(&policy.id) {
            return Err(StoreError::DuplicateId(policy.id.clone()));
        }
        let held = t
            .policies
            .values()
            .filter(|p| p.owner == policy.owner)
            .count();
        if held >= max_per_owner as usize {
            return Err(StoreError::QuotaExceeded {
                limit: max_per_owner,
            });
        }
        t.policies.insert(policy.id.clone(), policy.clone());
        Ok(())
    }

    async fn get_trust_policy(&self, id: &KeyId) -> Result<Option<TrustPolicy>, StoreError> {
        let t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(t.policies.get(id).cloned())
    }

    async fn list_trust_policies(&self, owner: &OwnerId) -> Result<Vec<TrustPolicy>, StoreError> {
        let t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(t.policies
            .values()
            .filter(|p| p.owner == *owner)
            .cloned()
            .collect())
    }

    async fn find_trust_policies(
        &self,
        issuer: &str,
        lookup: &str,
    ) -> Result<Vec<TrustPolicy>, StoreError> {
        let t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(t.policies
            .values()
            .filter(|p| p.issuer == issuer && p.lookup() == lookup)
            .take(TrustPolicy::MAX_CANDIDATES)
            .cloned()
            .collect())
    }

    async fn delete_trust_policy(&self, id: &KeyId) -> Result<(), StoreError> {
        let mut t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        t.policies
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    async fn claim_jti(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (issuer.to_owned(), jti.to_owned());
        match t.jtis.get(&key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                t.jtis.insert(key, expires_at);
                Ok(true)
            }
        }
    }

    async fn delete_expired_jtis(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut t = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        let before = t.jtis.len();
        t.jtis.retain(|_, until| *until > now);
        Ok((before - t.jtis.len()) as u64)
    }
}
