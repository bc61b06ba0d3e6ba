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
use crate::policy::PolicyError;
use crate::policy::{Actor, ManagementAction, ManagementPolicy, Policy};
use crate::store::KeyStore;
use crate::store::StoreError;
use crate::token::{Token, TokenFormat};
use crate::verify::Sessions;
use crate::verify::{Shared, Verifier};

mod builder;
mod create;
mod error;
mod import;
mod inputs;
mod lifecycle;
mod operations;
mod sessions;

pub use builder::KeyManagerBuilder;
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
/// .build();
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

pub(crate) const ID_ATTEMPTS: usize = 3;

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

    fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
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
        match self.management.check(actor, action, owner) {
            Ok(()) => Ok(()),
            Err(denial) => {
                self.audit(vec![AuditEvent {
                    actor: Some(actor.id().to_owned()),
                    owner: Some(owner.clone()),
                    key_id: key.cloned(),
                    client_ip: actor.client_ip(),
                    detail: format!("{action}: {denial}"),
                    ..AuditEvent::new(self.now(), AuditAction::ManagementDenied)
                }])
                .await;
                crate::trace::management(actor.id(), action, key, Err(&denial));
                Err(KeywardError::NotAllowed {
                    actor: actor.id().to_owned(),
                    action,
                    owner: owner.clone(),
                    denial,
                })
            }
        }
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
        self.audit(vec![AuditEvent {
            actor: Some(actor.id().to_owned()),
            owner: None,
            key_id: key.cloned(),
            client_ip: actor.client_ip(),
            detail: format!("{action} across owners: {denial}"),
            ..AuditEvent::new(self.now(), AuditAction::ManagementDenied)
        }])
        .await;
        crate::trace::management(actor.id(), action, key, Err(&denial));
        Err(KeywardError::NotAllowed {
            actor: actor.id().to_owned(),
            action,
            owner: OwnerId::new("*").map_err(PolicyError::from)?,
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
    /// (suspended keys may be edited and regenerated).
    fn changeable(&self, record: &KeyRecord) -> Result<(), KeywardError> {
        match record.status(self.now()) {
            KeyStatus::Active | KeyStatus::Suspended => Ok(()),
            KeyStatus::Revoked => Err(KeywardError::Revoked(record.id.clone())),
            KeyStatus::Expired => Err(KeywardError::Expired(record.id.clone())),
        }
    }

    /// Writes a changed record (compare-and-swap) and forgets the cached key.
    async fn save(&self, mut record: KeyRecord) -> Result<KeyRecord, KeywardError> {
        let expected = record.generation;
        record.generation += 1;
        let mut result = self.shared.store.update(&record, expected).await;
        // Invalidate even on error: the write may have happened before a timeout.
        self.shared.invalidate(&record.id);
        if let Err(StoreError::Backend(_)) = result {
            // A lost reply: if the store holds exactly this record (usage
            // aside, which updates never write), the update happened.
            if let Ok(Some(mut stored)) = self.shared.store.get(&record.id).await {
                stored.last_used_at = record.last_used_at;
                stored.last_used_ip = record.last_used_ip;
                if stored == record {
                    result = Ok(());
                }
            }
        }
        result.map_err(KeywardError::from_store)?;
        Ok(record)
    }

    fn view(&self, record: &KeyRecord, now: DateTime<Utc>) -> KeyView {
        record.view_with_idle(now, self.shared.policy.idle_expiry())
    }
}
