//! The error of a [`KeyManager`](crate::KeyManager) call.
//!
//! Every error names what was wrong (which field, which pattern, which CIDR)
//! and never carries a secret, a token or a hash: they are safe to log and to
//! show to the person who made the request.

use crate::usage::UsageError;
use thiserror::Error;

use crate::hash::HashError;
use crate::ids::KeyId;
use crate::policy::PolicyError;
use crate::store::StoreError;
use crate::token::TokenError;

/// The error of a [`KeyManager`](crate::KeyManager) call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeywardError {
    /// The request broke the policy; nothing was stored.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A token or key id did not parse.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store failed or refused. A store's `NotFound` and
    /// `QuotaExceeded` are never here: they become [`KeywardError::NotFound`]
    /// and [`KeywardError::QuotaExceeded`] (see `From<StoreError>`).
    #[error(transparent)]
    Store(StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// A rate limit, credit amount or refill was invalid (the error names
    /// the field), or a credit change would pass the maximum; nothing
    /// changed.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// No key with this id (for this owner).
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// The key carries no credits, so it has no balance to set or add to:
    /// meter it first ([`KeyEdit::credits`](crate::KeyEdit::credits)).
    #[error("key {0} is not metered (it carries no credits)")]
    NotMetered(KeyId),
    /// The key is revoked; revocation is permanent.
    #[error("key {0} is revoked and cannot be changed or re-enabled")]
    Revoked(KeyId),
    /// The key has expired; expiry is permanent.
    #[error("key {0} has expired")]
    Expired(KeyId),
    /// The environment is not one of the token format's environments.
    #[error("unknown environment {0:?}")]
    UnknownEnvironment(String),
    /// The owner already has the maximum number of live keys in this environment.
    #[error("the owner already has {limit} live keys in this environment")]
    QuotaExceeded {
        /// The quota.
        limit: u32,
    },
    /// The management policy refused the call; nothing changed. The refusal
    /// is recorded in the audit trail.
    #[error("{actor} may not {action} keys of owner {owner}: {denial}")]
    NotAllowed {
        /// The actor's id.
        actor: String,
        /// What was attempted.
        action: crate::policy::ManagementAction,
        /// Whose keys.
        owner: crate::ids::OwnerId,
        /// Why not.
        denial: crate::policy::ManagementDenial,
    },
    /// The key is suspended (for calls that need an active key).
    #[error("key {0} is suspended")]
    Suspended(KeyId),
    /// The key is not suspended (resume of an active key).
    #[error("key {0} is not suspended")]
    NotSuspended(KeyId),
    /// Legacy full-access keys can be imported, suspended, revoked and
    /// deleted, but not regenerated, rotated or edited: create a scoped key instead.
    #[error("key {0} is a legacy full-access key: it cannot be {1}; create a scoped key instead")]
    Legacy(KeyId, &'static str),
    /// An id that is or was in use: an imported key's id must be new, and
    /// a deleted key's id is never used again.
    #[error("key id {0} is or was already in use")]
    IdTaken(KeyId),
    /// An imported SHA-256 hash is not 64 hexadecimal characters.
    #[error("the imported hash of key {0} is not a SHA-256 hash in hex (64 characters 0-9a-f)")]
    BadImportHash(KeyId),
    /// The key was revoked, but ending its session tokens in the store
    /// failed. They are still refused wherever they are read from the store
    /// (their key is revoked), but the store still marks them live: call
    /// [`KeyManager::revoke_compromised`](crate::KeyManager::revoke_compromised)
    /// or [`KeyManager::end_sessions`](crate::KeyManager::end_sessions) again.
    #[error("key {id} is revoked, but its sessions could not be ended: {source}")]
    SessionsNotEnded {
        /// The key, revoked.
        id: KeyId,
        /// Why its sessions were not ended.
        source: StoreError,
    },
}

impl KeywardError {
    /// A stable snake_case code for the kind of error (for logs, metrics and
    /// API responses), without any detail.
    ///
    /// ```
    /// use keyward::{KeywardError, KeyId};
    /// let id = KeyId::new("abc123").unwrap();
    /// assert_eq!(KeywardError::Revoked(id).code(), "revoked");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            KeywardError::Policy(_) => "policy",
            KeywardError::Token(_) => "token",
            KeywardError::Store(_) => "store",
            KeywardError::Hash(_) => "hash",
            KeywardError::Usage(_) => "usage",
            KeywardError::NotFound(_) => "not_found",
            KeywardError::NotMetered(_) => "not_metered",
            KeywardError::Revoked(_) => "revoked",
            KeywardError::Expired(_) => "expired",
            KeywardError::UnknownEnvironment(_) => "unknown_environment",
            KeywardError::QuotaExceeded { .. } => "quota_exceeded",
            KeywardError::NotAllowed { .. } => "not_allowed",
            KeywardError::Suspended(_) => "suspended",
            KeywardError::NotSuspended(_) => "not_suspended",
            KeywardError::Legacy(..) => "legacy",
            KeywardError::IdTaken(_) => "id_taken",
            KeywardError::BadImportHash(_) => "bad_import_hash",
            KeywardError::SessionsNotEnded { .. } => "sessions_not_ended",
        }
    }

    /// The one conversion from a store error, by name: the same as
    /// `KeywardError::from` (and a bare `?`).
    pub(crate) fn from_store(err: StoreError) -> Self {
        Self::from(err)
    }
}

/// The one mapping from store errors: the ones with a manager-level meaning
/// get their own variants, the rest are [`KeywardError::Store`]. A bare `?`
/// and `KeywardError::from_store` both come here, so they always agree.
impl From<StoreError> for KeywardError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => KeywardError::NotFound(id),
            StoreError::QuotaExceeded { limit } => KeywardError::QuotaExceeded { limit },
            StoreError::Usage { error, .. } => KeywardError::Usage(error),
            other => KeywardError::Store(other),
        }
    }
}

impl crate::trace::TracedError for KeywardError {
    fn trace_code(&self) -> Option<&'static str> {
        match self {
            // `NotAllowed` has its own event (with the policy's reason).
            KeywardError::NotAllowed { .. } => None,
            other => Some(other.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_store_error() -> Vec<StoreError> {
        let id = || KeyId::new("abc123").unwrap();
        vec![
            StoreError::NotFound(id()),
            StoreError::DuplicateId(id()),
            StoreError::Conflict {
                id: id(),
                expected: 1,
                found: 2,
            },
            StoreError::QuotaExceeded { limit: 3 },
            StoreError::TooManySessions {
                key_id: id(),
                limit: 4,
            },
            StoreError::Corrupt {
                id: "abc123".into(),
                field: "owner",
                reason: "empty".into(),
            },
            StoreError::Backend("down".into()),
        ]
    }

    fn with_question_mark(err: StoreError) -> Result<(), KeywardError> {
        Err(err)?;
        Ok(())
    }

    #[test]
    fn a_bare_question_mark_and_from_store_give_the_same_variant() {
        for err in every_store_error() {
            let by_name = KeywardError::from_store(err.clone());
            assert_eq!(
                with_question_mark(err.clone()),
                Err(by_name.clone()),
                "{err:?}"
            );
            assert_eq!(KeywardError::from(err.clone()), by_name, "{err:?}");
        }
    }

    #[test]
    fn store_errors_with_a_manager_meaning_get_their_own_variant() {
        let id = KeyId::new("abc123").unwrap();
        assert_eq!(
            KeywardError::from(StoreError::NotFound(id.clone())),
            KeywardError::NotFound(id)
        );
        assert_eq!(
            KeywardError::from(StoreError::QuotaExceeded { limit: 3 }),
            KeywardError::QuotaExceeded { limit: 3 }
        );
        let backend = StoreError::Backend("down".into());
        assert_eq!(
            KeywardError::from(backend.clone()),
            KeywardError::Store(backend)
        );
    }
}
