//! The error of a store.

use thiserror::Error;

use crate::ids::KeyId;
use crate::usage::UsageError;

/// A store could not do what was asked.
///
/// Messages from database drivers are passed on as text; stores must make sure
/// they never contain a secret (keyward never gives a store one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No record has this id.
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// A record with this id already exists.
    #[error("a key with id {0} already exists")]
    DuplicateId(KeyId),
    /// The record changed since it was read (compare-and-swap on the generation failed).
    #[error("key {id} was changed concurrently (expected generation {expected}, found {found})")]
    Conflict {
        /// The key.
        id: KeyId,
        /// The generation the caller read.
        expected: u64,
        /// The generation found in the store.
        found: u64,
    },
    /// The owner already has the maximum number of live keys in this environment.
    #[error("the owner already has {limit} live keys in this environment")]
    QuotaExceeded {
        /// The quota.
        limit: u32,
    },
    /// The key already has the maximum number of live sessions
    /// ([`SessionCap`](crate::session::SessionCap)); nothing was stored.
    #[error("key {key_id} already has {limit} live sessions")]
    TooManySessions {
        /// The key whose sessions are at the cap.
        key_id: KeyId,
        /// The cap.
        limit: u32,
    },
    /// A stored row could not be turned into a record.
    #[error("stored key {id} is corrupt: field {field}: {reason}")]
    Corrupt {
        /// The key.
        id: String,
        /// The field that did not parse.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The store does not implement this operation (a custom store written
    /// before usage controls existed): denied, never passed.
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
    /// A usage change would break a bound (a credit sum over the maximum);
    /// nothing changed.
    #[error("key {id}: {error}")]
    Usage {
        /// The key.
        id: KeyId,
        /// What was wrong.
        error: UsageError,
    },
    /// The backend failed (connection lost, timeout, query error).
    #[error("store backend error: {0}")]
    Backend(String),
}
