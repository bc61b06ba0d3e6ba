//! Where sessions live: the [`SessionStore`] trait.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::ids::{KeyId, OwnerId};
use crate::session::{SessionCap, SessionRecord};
use crate::store::StoreError;

/// Where sessions live. Same style as [`KeyStore`](crate::KeyStore): implementations write
/// `async fn`s, and every method does all it says or nothing.
pub trait SessionStore: Send + Sync + 'static {
    /// Adds a session.
    ///
    /// Errors: [`StoreError::DuplicateId`] if the id exists;
    /// [`StoreError::TooManySessions`] if `cap` is given and the key
    /// `record.key_id` already has `cap.max_live` live sessions (not
    /// revoked, expiring after `cap.now`). The count and the insert are one
    /// atomic step: under any number of concurrent inserts, the cap is never
    /// exceeded. A refused insert writes nothing.
    fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The session with this id, or `None` (revoked and expired ones are
    /// returned until deleted).
    fn get_session(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// The owner stored with the sessions of the key `key_id` (all of a
    /// key's sessions carry its owner), or `None` when the store holds no
    /// session of it (revoked and expired ones count until deleted). Lets
    /// the owner's administrator end the sessions of a key already deleted.
    fn session_owner(
        &self,
        key_id: &KeyId,
    ) -> impl Future<Output = Result<Option<OwnerId>, StoreError>> + Send;

    /// Marks every session of the key `key_id` revoked; returns how many
    /// were not revoked before.
    fn revoke_sessions(
        &self,
        key_id: &KeyId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes sessions that expired at or before `now`; returns how many.
    fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

impl<S: SessionStore> SessionStore for Arc<S> {
    fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert_session(record, cap)
    }
    fn get_session(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send {
        (**self).get_session(id)
    }
    fn session_owner(
        &self,
        key_id: &KeyId,
    ) -> impl Future<Output = Result<Option<OwnerId>, StoreError>> + Send {
        (**self).session_owner(key_id)
    }
    fn revoke_sessions(
        &self,
        key_id: &KeyId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).revoke_sessions(key_id)
    }
    fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).delete_expired_sessions(now)
    }
}
