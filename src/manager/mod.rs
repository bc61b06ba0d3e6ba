//! [`KeyManager`]: create, list, edit, regenerate, revoke, delete and verify keys.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::audit::{AuditAction, AuditEvent};
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::key::{KeyRecord, KeyStatus, KeyView, SecretHash};
use crate::policy::ManagementDenial;
use crate::policy::PolicyError;
use crate::policy::{Actor, ManagementAction, ManagementPolicy, Policy};
use crate::store::KeyStore;
use crate::store::StoreError;
use crate::token::{Token, TokenFormat};
use crate::verify::Sessions;
use crate::verify::{Shared, Verifier};

mod builder;
mod create;
mod credits;
mod error;
mod import;
mod inputs;
#[cfg(feature = "leak-reports")]
mod leaks;
mod lifecycle;
mod operations;
mod sessions;
mod successor;

pub use builder::{BuildError, KeyManagerBuilder};
pub use error::KeywardError;
pub use inputs::{CreatedKey, ImportKey, KeyEdit, NewKey, RotatedKey};

/// Ends every session of a key in the store: set when sessions are
/// configured (the store is then a [`SessionStore`](crate::store::SessionStore)), so that
/// [`KeyManager::revoke`], which needs only a [`KeyStore`], ends them too.
pub(crate) type EndSessions<S> =
    for<'a> fn(
        &'a S,
        &'a KeyId,
    ) -> Pin<Box<dyn Future<Output = Result<u64, StoreError>> + Send + 'a>>;

/// Creates, lists, edits, regenerates, rotates, suspends, revokes, deletes,
/// imports and verifies keys. Cheap to clone; every clone shares one store,
/// policy, audit trail and verifier cache.
///
/// Every management call takes the [`Actor`] making it; the
/// [`ManagementPolicy`] decides, and a refusal is
/// [`KeywardError::NotAllowed`] (and an audit event).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use keyward::*;
/// use keyward::{hash::Argon2Hasher, policy::ManagementDenial, policy::PermissionGrant};
/// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
/// let push = registry.get("package:push").unwrap();
/// let manager = KeyManager::builder(
///     MemoryStore::new(),
///     TokenFormat::new("mkh", &["live", "test"]).unwrap(),
///     Policy::new(registry),
/// )
/// .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
/// .build().unwrap();
///
/// let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
/// let created = manager
///     .create(&admin, NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::All))
///     .await
///     .unwrap();
/// let live = Environment::new("live").unwrap();
/// let key = manager
///     .verify(created.token.expose_secret(), &VerifyRequest::new(&live, push))
///     .await
///     .unwrap();
/// assert_eq!(key.owner().as_str(), "contoso");
///
/// // Nobody manages another owner's keys.
/// let mallory = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
/// assert!(matches!(
///     manager.revoke(&mallory, &created.key.id).await,
///     Err(KeywardError::NotAllowed { denial: ManagementDenial::OtherOwner, .. })
/// ));
/// # });
/// ```
pub struct KeyManager<S> {
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) sessions: Option<Arc<Sessions>>,
    management: Arc<dyn ManagementPolicy>,
    end_sessions: Option<EndSessions<S>>,
}

impl<S> Clone for KeyManager<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            sessions: self.sessions.clone(),
            management: Arc::clone(&self.management),
            end_sessions: self.end_sessions,
        }
    }
}

impl<S> fmt::Debug for KeyManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager").finish_non_exhaustive()
    }
}

/// How many ids an insert tries (see [`insert_with_fresh_ids`]).
pub(crate) const ID_ATTEMPTS: usize = 3;

/// A store write whose reply may have been lost: on a backend error (a
/// timeout, a dropped connection: the write may have committed before it),
/// reads the record back with `read` and counts the write as done when
/// `landed` says the stored state is the one written. Any other outcome,
/// and a failing read-back, is `result` unchanged.
async fn read_back<T, Fut>(
    result: Result<(), StoreError>,
    read: impl FnOnce() -> Fut,
    landed: impl FnOnce(T) -> bool,
) -> Result<(), StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    if let Err(StoreError::Backend(_)) = &result {
        if let Ok(stored) = read().await {
            if landed(stored) {
                return Ok(());
            }
        }
    }
    result
}

/// Inserts under a fresh id: `insert(id)` stores its item under `id` (its
/// own errors, a hash failing, in the outer result; the store's reply in
/// the inner one). The store saying the id exists
/// ([`StoreError::DuplicateId`], astronomically unlikely for generated
/// ids) gets another try with a new id, [`ID_ATTEMPTS`] tries in all.
pub(crate) async fn insert_with_fresh_ids<T, E, Fut>(
    first: KeyId,
    mut insert: impl FnMut(KeyId) -> Fut,
) -> Result<Result<T, StoreError>, E>
where
    Fut: Future<Output = Result<Result<T, StoreError>, E>>,
{
    let mut id = first;
    for _ in 0..ID_ATTEMPTS {
        match insert(id.clone()).await? {
            Err(StoreError::DuplicateId(_)) => id = KeyId::generate(),
            other => return Ok(other),
        }
    }
    Ok(Err(StoreError::DuplicateId(id)))
}

/// The shortest rotation grace period that is not an end of the old key's
/// access: 24 hours, time for its integrations to switch. A rotation with a
/// shorter grace ends the old key almost at once, as a revoke would, so it
/// also needs the [`ManagementPolicy`]'s permission to
/// [`Revoke`](ManagementAction::Revoke) (administrators only, by default).
pub const MIN_ROTATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest rotation grace period and reminder window.
const MAX_WINDOW_DAYS: i64 = 3650;

impl<S: KeyStore> KeyManager<S> {
    /// The verifier sharing this manager's cache; hand it to request handlers.
    pub fn verifier(&self) -> Verifier<S> {
        Verifier {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The token format.
    pub fn format(&self) -> &TokenFormat {
        &self.shared.format
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The time of a management call, taken once per call and truncated
    /// to whole microseconds (whatever the clock gives), the precision the
    /// SQL stores keep: a view returned by a call equals a later `get`.
    fn now(&self) -> DateTime<Utc> {
        crate::clock::to_micros(self.shared.clock.now())
    }

    fn environment(&self, tag: &str) -> Result<Environment, KeywardError> {
        self.shared
            .format
            .environment(tag)
            .cloned()
            .ok_or_else(|| KeywardError::UnknownEnvironment(tag.chars().take(32).collect()))
    }

    async fn hash_token(&self, token: &Token) -> Result<SecretHash, KeywardError> {
        let parsed = self.shared.format.parse(token.expose_secret())?;
        let secret = zeroize::Zeroizing::new(parsed.expose_secret().as_bytes().to_vec());
        let phc = self
            .shared
            .run_hasher(move |h, scratch| h.hash_with(&secret, scratch))
            .await?;
        Ok(SecretHash::new(phc))
    }

    /// Writes audit events. A failing sink does not undo or fail the action
    /// that happened: the events are kept and retried (see [`KeyManager::flush`]).
    async fn audit(&self, events: Vec<AuditEvent>) {
        if let Err(_e) = self.shared.audit.send(events).await {
            crate::trace::audit_failed(&_e);
        }
    }

    /// The tail of a management operation that happened: its audit events
    /// (a failing sink does not undo it), then its `done` trace event.
    async fn done(
        &self,
        actor: &Actor,
        action: ManagementAction,
        key: &KeyId,
        events: Vec<AuditEvent>,
    ) {
        self.audit(events).await;
        crate::trace::management(actor.id(), action, Some(key), Ok(()));
    }

    /// [`done`](Self::done) with the one audit event `audited` about `record`.
    async fn done_with(
        &self,
        actor: &Actor,
        action: ManagementAction,
        audited: AuditAction,
        record: &KeyRecord,
        detail: String,
    ) {
        let event = self.event(actor, audited, record, detail);
        self.done(actor, action, &record.id, vec![event]).await;
    }

    fn event(
        &self,
        actor: &Actor,
        action: AuditAction,
        record: &KeyRecord,
        detail: String,
    ) -> AuditEvent {
        AuditEvent {
            actor: Some(actor.id().to_owned()),
            owner: Some(record.owner.clone()),
            key_id: Some(record.id.clone()),
            client_ip: actor.client_ip(),
            detail,
            ..AuditEvent::new(self.now(), action)
        }
    }

    /// Asks the management policy; a refusal is audited and returned.
    pub(crate) async fn allow(
        &self,
        actor: &Actor,
        action: ManagementAction,
        owner: &OwnerId,
        key: Option<&KeyId>,
    ) -> Result<(), KeywardError> {
        let Err(denial) = self.management.check(actor, action, owner) else {
            return Ok(());
        };
        let detail = format!("{action}: {denial}");
        self.refused(actor, action, Some(owner), key, detail, denial)
            .await
    }

    /// Asks the management policy about a call across owners
    /// ([`ManagementPolicy::check_global`]); a refusal is audited (with no
    /// owner: it concerns all of them) and returned.
    async fn allow_global(
        &self,
        actor: &Actor,
        action: ManagementAction,
        key: Option<&KeyId>,
    ) -> Result<(), KeywardError> {
        let Err(denial) = self.management.check_global(actor, action) else {
            return Ok(());
        };
        let detail = format!("{action} across owners: {denial}");
        self.refused(actor, action, None, key, detail, denial).await
    }

    /// The tail of a refusal: its audit event and trace event, and the
    /// [`KeywardError::NotAllowed`] (owner `*` for a call across owners).
    async fn refused(
        &self,
        actor: &Actor,
        action: ManagementAction,
        owner: Option<&OwnerId>,
        key: Option<&KeyId>,
        detail: String,
        denial: ManagementDenial,
    ) -> Result<(), KeywardError> {
        self.audit(vec![AuditEvent {
            actor: Some(actor.id().to_owned()),
            owner: owner.cloned(),
            key_id: key.cloned(),
            client_ip: actor.client_ip(),
            detail,
            ..AuditEvent::new(self.now(), AuditAction::ManagementDenied)
        }])
        .await;
        crate::trace::management(actor.id(), action, key, Err(&denial));
        let owner = match owner {
            Some(owner) => owner.clone(),
            None => OwnerId::new("*").map_err(PolicyError::from)?,
        };
        Err(KeywardError::NotAllowed {
            actor: actor.id().to_owned(),
            action,
            owner,
            denial,
        })
    }

    /// Ends every session of the key `id` in the store (when sessions are
    /// configured), then drops this process's cached sessions of it (after
    /// the store, so a check that read a session before cannot cache it).
    pub(crate) async fn end_key_sessions(&self, id: &KeyId) -> Result<u64, StoreError> {
        let Some(end) = self.end_sessions else {
            return Ok(0);
        };
        let result = end(&self.shared.store, id).await;
        self.shared.invalidate(id);
        result
    }

    /// Loads a key and asks the policy whether `actor` may do `action` to it.
    async fn load_for(
        &self,
        actor: &Actor,
        action: ManagementAction,
        id: &KeyId,
    ) -> Result<KeyRecord, KeywardError> {
        let record = self.load(id).await?;
        self.allow(actor, action, &record.owner, Some(id)).await?;
        Ok(record)
    }

    async fn load(&self, id: &KeyId) -> Result<KeyRecord, KeywardError> {
        self.shared
            .store
            .get(id)
            .await
            .map_err(KeywardError::from_store)?
            .ok_or_else(|| KeywardError::NotFound(id.clone()))
    }

    /// Checks that a key may still change: not revoked, not expired
    /// (suspended keys may be edited and regenerated). Expired as a check
    /// says it: by its expiry or for being unused (idle expiry).
    fn changeable(&self, record: &KeyRecord) -> Result<(), KeywardError> {
        match self.status(record, self.now()) {
            KeyStatus::Active | KeyStatus::Suspended => Ok(()),
            KeyStatus::Revoked => Err(KeywardError::Revoked(record.id.clone())),
            KeyStatus::Expired => Err(KeywardError::Expired(record.id.clone())),
        }
    }

    /// Writes a changed record (compare-and-swap) and forgets the cached key.
    async fn save(&self, mut record: KeyRecord) -> Result<KeyRecord, KeywardError> {
        let expected = record.generation;
        record.generation += 1;
        let result = self.shared.store.update(&record, expected).await;
        // Invalidate even on error: the write may have happened before a timeout.
        self.shared.invalidate(&record.id);
        // A lost reply: if the store holds exactly this record (usage aside,
        // which updates never write), the update happened.
        let landed = |stored: Option<KeyRecord>| {
            stored.is_some_and(|mut stored| {
                stored.last_used_at = record.last_used_at;
                stored.last_used_ip = record.last_used_ip;
                // Leases move a balance meanwhile; an update never writes it.
                if let (Some(s), Some(r)) = (stored.usage.credits.as_mut(), &record.usage.credits) {
                    s.remaining = r.remaining;
                    s.leased = r.leased;
                    s.refilled_for = r.refilled_for;
                }
                stored == record
            })
        };
        read_back(result, || self.shared.store.get(&record.id), landed)
            .await
            .map_err(KeywardError::from_store)?;
        Ok(record)
    }

    /// A key's status at `now` under the policy's idle expiry: what a check,
    /// a view and the store's filters say.
    fn status(&self, record: &KeyRecord, now: DateTime<Utc>) -> KeyStatus {
        record.status_with_idle(now, self.shared.policy.idle_expiry())
    }

    fn view(&self, record: &KeyRecord, now: DateTime<Utc>) -> KeyView {
        record.view_with_idle(now, self.shared.policy.idle_expiry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: Future>(fut: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(fut)
    }

    #[test]
    fn a_clash_gets_a_fresh_id_and_the_last_clash_is_the_error() {
        let first = KeyId::generate();
        let mut tried = Vec::new();
        let result: Result<Result<KeyId, StoreError>, ()> =
            run(insert_with_fresh_ids(first.clone(), |id| {
                tried.push(id.clone());
                let clash = tried.len() < 3;
                async move {
                    Ok(if clash {
                        Err(StoreError::DuplicateId(id))
                    } else {
                        Ok(id)
                    })
                }
            }));
        assert_eq!(tried.len(), 3);
        assert_eq!(tried[0], first);
        assert_ne!(tried[1], tried[0]);
        assert_eq!(result, Ok(Ok(tried[2].clone())));

        let mut tries = 0;
        let result: Result<Result<(), StoreError>, ()> =
            run(insert_with_fresh_ids(KeyId::generate(), |id| {
                tries += 1;
                async move { Ok(Err(StoreError::DuplicateId(id))) }
            }));
        assert_eq!(tries, ID_ATTEMPTS);
        assert!(matches!(result, Ok(Err(StoreError::DuplicateId(_)))));

        // Other store errors and the caller's own errors end the loop at once.
        let mut tries = 0;
        let result: Result<Result<(), StoreError>, &str> =
            run(insert_with_fresh_ids(KeyId::generate(), |_| {
                tries += 1;
                async { Err("hash failed") }
            }));
        assert_eq!((tries, result), (1, Err("hash failed")));
    }

    #[test]
    fn only_a_lost_reply_is_read_back_and_only_a_landed_write_counts() {
        let backend = || Err(StoreError::Backend("timeout".into()));
        let landed = run(read_back(backend(), || async { Ok(7) }, |n| n == 7));
        assert_eq!(landed, Ok(()));
        let other = run(read_back(backend(), || async { Ok(8) }, |n| n == 7));
        assert_eq!(other, backend());
        let unreadable = run(read_back(
            backend(),
            || async { Err::<i32, _>(StoreError::Backend("down".into())) },
            |_| true,
        ));
        assert_eq!(unreadable, backend());
        let mut read = false;
        let refused = run(read_back(
            Err(StoreError::DuplicateId(KeyId::generate())),
            || {
                read = true;
                async { Ok(()) }
            },
            |()| true,
        ));
        assert!(matches!(refused, Err(StoreError::DuplicateId(_))));
        assert!(!read, "only a backend error is read back");
        assert_eq!(
            run(read_back(Ok(()), || async { Ok(()) }, |()| false)),
            Ok(())
        );
    }
}
