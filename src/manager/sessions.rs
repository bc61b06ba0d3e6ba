//! The manager's session operations: exchanging a key for a session,
//! checking session tokens, ending sessions and purging expired ones. The
//! session data lives in `crate::session`, the [`SessionStore`] trait in
//! `crate::store`, and the check of a session token in `crate::verify`.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::ids::{Environment, KeyId};
use crate::key::KeyView;
use crate::manager::KeywardError;
use crate::policy::{Actor, ManagementAction, PermissionGrant};
use crate::session::{IssuedSession, SessionCap, SessionHash, SessionRecord};
use crate::store::KeyStore;
use crate::store::SessionStore;
use crate::store::StoreError;
use crate::token::TokenError;
use crate::token::TokenFormat;
use crate::verify::{CompiledKey, Denial, DenialReason, VerifiedKey, VerifyRequest};
use crate::verify::{SessionError, Sessions, VerifiedSession};

use super::{KeyManager, insert_with_fresh_ids, read_back};

/// How many times an exchange proves the key: once, and once more when the
/// key changed between the proof and the session's insert.
const PROOF_ATTEMPTS: usize = 2;

/// The refusal of an exchange whose key changed under it at every attempt:
/// retryable, like a store that did not answer.
fn changed_during_exchange() -> SessionError {
    SessionError::Denied(Denial::new(DenialReason::StoreUnavailable, None))
}

/// The tracing event of a session check (ids and owner, never the token).
fn session_traced(result: &Result<VerifiedSession, Denial>) {
    match result {
        Ok(s) => crate::trace::verified(s.key.id(), s.key.owner().as_str()),
        Err(d) => crate::trace::denied(d.key_id.as_ref().map(KeyId::as_str), None, d.reason.code()),
    }
}

impl<S: KeyStore + SessionStore> KeyManager<S> {
    fn session_state(&self) -> Result<&Sessions, SessionError> {
        self.sessions.as_deref().ok_or(SessionError::NotConfigured)
    }

    /// The session token format (`None` without [`SessionConfig`](crate::session::SessionConfig)).
    pub fn session_format(&self) -> Option<&TokenFormat> {
        self.sessions.as_deref().map(|s| &s.format)
    }

    /// Whether `token` starts with the session prefix (`<prefix>_`): which
    /// of [`KeyManager::verify`] and [`KeyManager::verify_session`] to call.
    pub fn is_session_token(&self, token: &str) -> bool {
        self.sessions
            .as_deref()
            .is_some_and(|s| s.format.has_prefix(token))
    }

    /// Exchanges a key for a session token of `ttl` (default: the
    /// configured default), checked like any key use in `environment` from
    /// `client_ip`: valid secret, not revoked, not expired, IP allowed.
    ///
    /// A session token is refused ([`SessionError::SessionTokenGiven`]); a
    /// `ttl` above the maximum is [`SessionError::TtlTooLong`]. The session
    /// expires at the earlier of `now + ttl` and the key's expiry.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use keyward::*;
    /// use keyward::{hash::Argon2Hasher, policy::PermissionGrant, session::SessionConfig, verify::SessionError};
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let push = registry.get("package:push").unwrap();
    /// let manager = KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(registry),
    /// )
    /// .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    /// .sessions(SessionConfig::new("mkhs"))
    /// .build().unwrap();
    /// let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
    /// let key = manager
    ///     .create(&admin, NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::All))
    ///     .await
    ///     .unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let session = manager.exchange(key.token.expose_secret(), &live, None, None).await.unwrap();
    /// assert!(session.token.expose_secret().starts_with("mkhs_live_"));
    ///
    /// let req = VerifyRequest::new(&live, push).resource("contoso", "Contoso.Tools");
    /// let checked = manager.verify_session(session.token.expose_secret(), &req).await.unwrap();
    /// assert_eq!(checked.id(), &key.key.id);
    ///
    /// // A session never mints another session.
    /// let again = manager.exchange(session.token.expose_secret(), &live, None, None).await;
    /// assert_eq!(again.unwrap_err(), SessionError::SessionTokenGiven);
    /// # });
    /// ```
    pub async fn exchange(
        &self,
        token: &str,
        environment: &Environment,
        ttl: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> Result<IssuedSession, SessionError> {
        let sessions = self.session_state()?;
        if sessions.format.has_prefix(token) {
            return Err(SessionError::SessionTokenGiven);
        }
        let ttl = sessions.ttl(ttl)?;
        for _ in 0..PROOF_ATTEMPTS {
            let key = self
                .verifier()
                .authenticate(token, environment, client_ip)
                .await
                .map_err(SessionError::Denied)?;
            if let Some(issued) = self.issue(sessions, &key, ttl, client_ip).await? {
                return Ok(issued);
            }
        }
        Err(changed_during_exchange())
    }

    /// Exchanges a key given as its id and secret separately (HTTP Basic
    /// `key_id:secret`; an imported key's secret, which is not in keyward's
    /// token format) for a session token, like [`KeyManager::exchange`].
    /// The pair is checked as [`Verifier::authenticate_pair`](crate::Verifier::authenticate_pair)
    /// checks it; a session's id and secret are never a key's, so they are
    /// refused as an unknown key.
    pub async fn exchange_pair(
        &self,
        key_id: &str,
        secret: &str,
        environment: &Environment,
        ttl: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> Result<IssuedSession, SessionError> {
        let sessions = self.session_state()?;
        let ttl = sessions.ttl(ttl)?;
        for _ in 0..PROOF_ATTEMPTS {
            let key = self
                .verifier()
                .authenticate_pair(key_id, secret, environment, client_ip)
                .await
                .map_err(SessionError::Denied)?;
            if let Some(issued) = self.issue(sessions, &key, ttl, client_ip).await? {
                return Ok(issued);
            }
        }
        Err(changed_during_exchange())
    }

    /// Whether the key as stored now is still the key proven: not revoked,
    /// not suspended, not deleted (each a refusal), and of the generation
    /// the proof saw (`false` when it changed since: the proof may have come
    /// from a cache a moment behind a change made elsewhere, a regenerated
    /// secret among them, so it is dropped and the key proven again).
    async fn still_current(&self, key: &VerifiedKey) -> Result<bool, SessionError> {
        let refuse = |reason| {
            Err(SessionError::Denied(Denial::new(
                reason,
                Some(key.id().as_str()),
            )))
        };
        match self.shared.store.get(key.id()).await {
            Ok(Some(r)) if r.revoked_at.is_some() => refuse(DenialReason::Revoked),
            Ok(Some(r)) if r.suspended_at.is_some() => refuse(DenialReason::Suspended),
            Ok(Some(r)) => {
                let current = r.generation == key.generation();
                if !current {
                    self.shared.invalidate(key.id());
                }
                Ok(current)
            }
            Ok(None) => refuse(DenialReason::UnknownKey),
            Err(e) => Err(SessionError::Store(e)),
        }
    }

    /// Stores a new session for a key just proven, and returns its token;
    /// `None` when the key changed since the proof (see `still_current`),
    /// so the caller proves it again.
    async fn issue(
        &self,
        sessions: &Sessions,
        key: &VerifiedKey,
        ttl: Duration,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<IssuedSession>, SessionError> {
        // Before anything is stored: a stale proof costs no session row.
        if !self.still_current(key).await? {
            return Ok(None);
        }
        let now = self.now();
        // Checked: the TTL comes from the client (within the configured
        // maximum, which may be huge); saturate instead of panicking.
        let mut expires_at = TimeDelta::from_std(ttl)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if let Some(key_expiry) = key.expires_at() {
            expires_at = expires_at.min(key_expiry);
        }
        let names = self.shared.policy.permissions().names(key.permissions());
        let template = SessionRecord {
            id: KeyId::generate(),
            key_id: key.id().clone(),
            owner: key.owner().clone(),
            environment: key.environment().clone(),
            key_name: key.name().to_owned(),
            permissions: PermissionGrant::only(names),
            resources: key.resources().clone(),
            ip_allowlist: key.ip_allowlist().clone(),
            created_at: now,
            expires_at,
            revoked: false,
            secret_hash: SessionHash::from_bytes([0; 32]),
        };
        let cap = SessionCap {
            max_live: sessions.config.max_sessions_per_key,
            now,
        };
        let template = &template;
        let inserted = insert_with_fresh_ids(template.id.clone(), |id| async move {
            let mut record = SessionRecord {
                id,
                ..template.clone()
            };
            let token = sessions.format.generate(&record.environment, &record.id);
            record.secret_hash = SessionHash::of(
                sessions
                    .format
                    .parse(token.expose_secret())?
                    .expose_secret(),
            );
            let result = self.shared.store.insert_session(&record, Some(cap)).await;
            // A lost reply: the session is there with this hash, or not.
            let landed = |stored: Option<SessionRecord>| {
                stored.is_some_and(|s| s.secret_hash.matches(&record.secret_hash))
            };
            let result =
                read_back(result, || self.shared.store.get_session(&record.id), landed).await;
            Ok::<_, SessionError>(result.map(|()| (token, record)))
        })
        .await?;
        let (token, record) = match inserted {
            Ok(inserted) => inserted,
            Err(StoreError::TooManySessions { key_id, limit }) => {
                return Err(SessionError::TooManySessions { key_id, limit });
            }
            Err(e) => return Err(SessionError::Store(e)),
        };
        // Read the key again now that the session exists: a revoke (or
        // suspend, or regenerate) made elsewhere between the check above
        // and this insert ended the key's sessions without seeing this one.
        // Refused or changed now: the stored session's token is never
        // returned, so nobody can ever use it (its row stays until it
        // expires).
        if !self.still_current(key).await? {
            return Ok(None);
        }
        self.audit_session(key, &record.id, client_ip).await;
        Ok(Some(IssuedSession {
            token,
            session: record.view(),
        }))
    }

    /// Checks a session token for `req`, like [`KeyManager::verify`] checks a
    /// key: environment, expiry, IP allowlist, permission, resource — against
    /// the snapshot taken at exchange time. Session-only permissions are
    /// refused, since the snapshot holds only what the key was granted. A
    /// session of a revoked key is refused ([`DenialReason::Revoked`]),
    /// also when its sessions were not ended in the store.
    ///
    /// Denials before the session is found carry no key id; later ones
    /// carry the key's id.
    ///
    /// A session spends its key's usage controls: what `req` spends
    /// ([`VerifyRequest::spend`], [`VerifyRequest::credits`]; 1 credit on a
    /// metered key by default) is charged to the key as
    /// [`Verifier::verify`](crate::Verifier::verify) charges it, once the
    /// check passed (a refused check spends nothing), with the same
    /// denials ([`DenialReason::RateLimited`],
    /// [`DenialReason::UsageExhausted`]). The exchange itself
    /// ([`KeyManager::exchange`]) spends nothing; checking a session with
    /// [`KeyManager::authenticate_session`] spends nothing either (as
    /// [`Verifier::authenticate`](crate::Verifier::authenticate)).
    pub async fn verify_session(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedSession, Denial> {
        crate::trace::verify_span("session", async move {
            let rule = self.shared.policy.resource_rule();
            let result = self
                .check_session(token, req.environment, req.client_ip, |key, now| {
                    key.check(req, rule, now)
                })
                .await;
            let result = match result {
                Ok(session) => {
                    let VerifiedSession { key, session_id } = session;
                    self.verifier()
                        .charge(key, &req.spending, req.client_ip)
                        .await
                        .map(|key| VerifiedSession { key, session_id })
                }
                Err(denial) => Err(denial),
            };
            session_traced(&result);
            result
        })
        .await
    }

    /// Checks that a session token is valid in `environment` from
    /// `client_ip`, without asking for a permission (see
    /// [`Verifier::authenticate`](crate::Verifier::authenticate)).
    pub async fn authenticate_session(
        &self,
        token: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedSession, Denial> {
        crate::trace::verify_span("session", async move {
            let result = self
                .check_session(token, environment, client_ip, |key, now| {
                    key.check_access(client_ip, now)
                })
                .await;
            session_traced(&result);
            result
        })
        .await
    }

    async fn check_session(
        &self,
        token: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        check: impl FnOnce(&CompiledKey, DateTime<Utc>) -> Result<(), DenialReason>,
    ) -> Result<VerifiedSession, Denial> {
        let Some(sessions) = self.sessions.as_deref() else {
            return Err(Denial::new(
                DenialReason::Malformed(TokenError::BadPrefix),
                None,
            ));
        };
        sessions
            .check(&self.shared, token, environment, client_ip, check)
            .await
    }

    /// Ends every session of the key `id` at once (in the store, and in this
    /// process's session cache); returns how many were ended. Other
    /// processes see it when they drop their cached sessions of the key:
    /// at their next [`Verifier::invalidate`](crate::Verifier::invalidate)
    /// of it (the PostgreSQL store announces the key on its change feed in
    /// the same transaction, so servers listening to it drop them at once),
    /// else when the entry expires (the verifier's `cache_ttl`).
    ///
    /// Needs an actor allowed to revoke the key: for a key already deleted,
    /// of the owner stored with its sessions (its administrator, by
    /// default). A key that is neither stored nor has sessions is
    /// [`KeywardError::NotFound`].
    pub async fn end_sessions(&self, actor: &Actor, id: &KeyId) -> Result<u64, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Revoke, Some(id), async move {
            // Authorized by the key's owner; for a key already deleted, by the
            // owner stored with its sessions (so its administrator can end them).
            let owner = match self.shared.store.get(id).await {
                Ok(Some(record)) => record.owner,
                Ok(None) => self
                    .shared
                    .store
                    .session_owner(id)
                    .await
                    .map_err(KeywardError::from_store)?
                    .ok_or_else(|| KeywardError::NotFound(id.clone()))?,
                Err(e) => return Err(KeywardError::from_store(e)),
            };
            self.allow(actor, ManagementAction::Revoke, &owner, Some(id))
                .await?;
            self.end_key_sessions(id)
                .await
                .map_err(KeywardError::from_store)
        })
        .await
    }

    /// Revokes a key that was compromised: [`KeyManager::revoke`] (which
    /// ends the key's sessions too), except that a key already revoked is
    /// not an error: its sessions are ended (again) and its view returned.
    /// The retry after [`KeywardError::SessionsNotEnded`].
    pub async fn revoke_compromised(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Revoke, Some(id), async move {
            match self.revoke(actor, id).await {
                Err(KeywardError::Revoked(_)) => {
                    let view = self.get(actor, id).await?;
                    self.end_sessions(actor, id).await.map_err(|e| match e {
                        KeywardError::Store(source) => KeywardError::SessionsNotEnded {
                            id: id.clone(),
                            source,
                        },
                        other => other,
                    })?;
                    Ok(view)
                }
                other => other,
            }
        })
        .await
    }

    /// Deletes sessions that have expired (revoked ones included); returns
    /// how many. Expired sessions are refused either way, but their rows
    /// stay until purged: run it on a timer, on one server or on all (it is
    /// one idempotent statement). Every few minutes suits the default
    /// 15-minute lifetime:
    ///
    /// ```
    /// # use keyward::*;
    /// # fn schedule(manager: KeyManager<MemoryStore>) {
    /// // At startup, in a tokio runtime (with tokio's "time" feature):
    /// tokio::spawn(async move {
    ///     let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
    ///     loop {
    ///         every.tick().await;
    ///         if let Err(e) = manager.purge_expired_sessions().await {
    ///             eprintln!("session purge failed, retried next time: {e}");
    ///         }
    ///     }
    /// });
    /// # }
    /// ```
    ///
    /// `examples/publisher_api.rs` does this every 5 minutes.
    pub async fn purge_expired_sessions(&self) -> Result<u64, KeywardError> {
        let now = self.now();
        self.shared
            .store
            .delete_expired_sessions(now)
            .await
            .map_err(KeywardError::from_store)
    }
}
