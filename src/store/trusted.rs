//! [`TrustStore`]: where trust policies and the ids of used OIDC tokens live.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::store::StoreError;
use crate::trust_policy::TrustPolicy;

/// Trust policies (trusted publishing) and the `jti`s of exchanged tokens.
/// Same style as [`KeyStore`](crate::KeyStore): `async fn`s, and every
/// method does all it says or nothing.
pub trait TrustStore: Send + Sync + 'static {
    /// Adds a policy. Errors: [`StoreError::DuplicateId`] if the id exists;
    /// [`StoreError::QuotaExceeded`] if the owner already holds
    /// `max_per_owner` policies (the count and the insert are one atomic
    /// step).
    fn insert_trust_policy(
        &self,
        policy: &TrustPolicy,
        max_per_owner: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The policy with this id, or `None`.
    fn get_trust_policy(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<TrustPolicy>, StoreError>> + Send;

    /// The owner's policies, ordered by id.
    fn list_trust_policies(
        &self,
        owner: &OwnerId,
    ) -> impl Future<Output = Result<Vec<TrustPolicy>, StoreError>> + Send;

    /// The policies of `issuer` whose [`TrustPolicy::lookup`] is `lookup`,
    /// ordered by id, at most [`TrustPolicy::MAX_CANDIDATES`].
    fn find_trust_policies(
        &self,
        issuer: &str,
        lookup: &str,
    ) -> impl Future<Output = Result<Vec<TrustPolicy>, StoreError>> + Send;

    /// Removes a policy. Errors: [`StoreError::NotFound`].
    fn delete_trust_policy(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records that the token `jti` of `issuer` was used, until
    /// `expires_at`. Returns `true` if this call recorded it, `false` if it
    /// was already recorded and has not expired at `now` (a replay). A
    /// record expired at `now` is replaced. Atomic: of any number of
    /// concurrent calls with one `issuer` and `jti`, exactly one returns
    /// `true`.
    fn claim_jti(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the `jti` records expired at or before `now`; returns how many.
    fn delete_expired_jtis(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

impl<S: TrustStore> TrustStore for Arc<S> {
    fn insert_trust_policy(
        &self,
        policy: &TrustPolicy,
        max_per_owner: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert_trust_policy(policy, max_per_owner)
    }
    fn get_trust_policy(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<TrustPolicy>, StoreError>> + Send {
        (**self).get_trust_policy(id)
    }
    fn list_trust_policies(
        &self,
        owner: &OwnerId,
    ) -> impl Future<Output = Result<Vec<TrustPolicy>, StoreError>> + Send {
        (**self).list_trust_policies(owner)
    }
    fn find_trust_policies(
        &self,
        issuer: &str,
        lookup: &str,
    ) -> impl Future<Output = Result<Vec<TrustPolicy>, StoreError>> + Send {
        (**self).find_trust_policies(issuer, lookup)
    }
    fn delete_trust_policy(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).delete_trust_policy(id)
    }
    fn claim_jti(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).claim_jti(issuer, jti, expires_at, now)
    }
    fn delete_expired_jtis(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).delete_expired_jtis(now)
    }
}
