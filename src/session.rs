//! Session tokens: a key exchanged for a short-lived token that carries the
//! key's permissions, resources and IP allowlist.
//!
//! ```text
//! mkhs_live_<session id 12><secret 43><checksum 6>
//! ```
//!
//! A session token has the same shape as a key ([`TokenFormat`]) under its
//! own prefix, chosen by the application (`mkhs` beside the key prefix
//! `mkh`), so scanners and logs can tell them apart, and a key parser
//! refuses a session token unread ([`TokenError::BadPrefix`](crate::TokenError::BadPrefix),
//! or `TooLong` when the session prefix is the longer) and the other way round.
//!
//! * The secret is 256 bits from the operating system's generator, so the
//!   store keeps its SHA-256 ([`SessionHash`]) and a check compares hashes in
//!   constant time: a slow password hash buys nothing against a secret that
//!   cannot be guessed, and a session is checked on every request.
//! * The session keeps a snapshot of the key taken at exchange time (owner,
//!   environment, permissions, resources, IP allowlist) and expires at
//!   `min(now + ttl, key expiry)`.
//! * Revoking the key ends its sessions at once; regenerating or deleting
//!   it leaves them valid until they expire ([`KeyManager::end_sessions`]
//!   ends them for a deleted key).
//! * A session token can never be exchanged for another session.
//! * A key holds at most [`SessionConfig::max_sessions_per_key`] live
//!   sessions (an exchange at the cap is refused), and
//!   [`KeyManager::purge_expired_sessions`], run on a timer, deletes the
//!   rows of expired ones.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::error::{InvalidValue, KeywardError, StoreError, TokenError};
use crate::key::{KeyView, OwnerId};
use crate::manager::KeyManager;
use crate::policy::{Actor, IpAllowlist, ManagementAction, PermissionGrant, ResourceScope};
use crate::store::KeyStore;
use crate::token::{Environment, KeyId, MAX_PREFIX_LEN, Token, TokenFormat, check_chars};
use crate::verify::{Cached, KeyCache};
use crate::verify::{CompiledKey, Denial, DenialReason, VerifiedKey, VerifyRequest};

/// Default lifetime of a session token: 15 minutes.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Default longest lifetime a caller may ask for: 1 hour.
pub const DEFAULT_MAX_SESSION_TTL: Duration = Duration::from_secs(60 * 60);
/// Default cap of live sessions per key: 100 (see
/// [`SessionConfig::max_sessions_per_key`]).
pub const DEFAULT_MAX_SESSIONS_PER_KEY: u32 = 100;

/// Session settings, given to [`KeyManagerBuilder::sessions`](crate::KeyManagerBuilder::sessions).
///
/// ```
/// use std::time::Duration;
/// use keyward::SessionConfig;
/// let config = SessionConfig {
///     max_ttl: Duration::from_secs(30 * 60),
///     ..SessionConfig::new("mkhs")
/// };
/// assert_eq!(config.default_ttl, Duration::from_secs(15 * 60));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The prefix of session tokens: 1 to 16 lowercase ASCII letters or
    /// digits, different from the key prefix.
    pub prefix: String,
    /// Lifetime when the caller does not ask for one (default 15 minutes).
    pub default_ttl: Duration,
    /// Longest lifetime a caller may ask for (default 1 hour); longer is
    /// refused with [`SessionError::TtlTooLong`].
    pub max_ttl: Duration,
    /// Most live (not revoked, not expired) sessions one key may have at
    /// once (default [`DEFAULT_MAX_SESSIONS_PER_KEY`], at least 1). At the
    /// cap, an exchange is refused with [`SessionError::TooManySessions`]
    /// (the sessions already issued keep working); a slot frees when a
    /// session expires or the key's sessions are ended. Refusing rather than
    /// ending the oldest keeps a client that exchanges too often from
    /// silently cutting off its own running jobs, and bounds both the
    /// session rows and the audit events (refusals write none) a key can
    /// cause. Choose it above the number of sessions a key's integrations
    /// hold at once: with a 15-minute lifetime, 100 allows a new session
    /// every 9 seconds, for ever.
    pub max_sessions_per_key: u32,
}

impl SessionConfig {
    /// Sessions with this prefix and the default lifetimes.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            default_ttl: DEFAULT_SESSION_TTL,
            max_ttl: DEFAULT_MAX_SESSION_TTL,
            max_sessions_per_key: DEFAULT_MAX_SESSIONS_PER_KEY,
        }
    }
}

/// Why a session could not be created, or sessions could not be configured.
///
/// Never carries a token or secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The key was refused (see the denial's kind for 401/403/429/503).
    #[error("the key was refused: {0}")]
    Denied(Denial),
    /// A session token was given where a key is required: a session can
    /// never mint another session.
    #[error("a session token cannot be exchanged for another session; use an API key")]
    SessionTokenGiven,
    /// The requested lifetime is longer than the configured maximum.
    #[error("a session lifetime of {requested:?} was requested, the maximum is {max:?}")]
    TtlTooLong {
        /// What was asked for.
        requested: Duration,
        /// The maximum.
        max: Duration,
    },
    /// A lifetime of zero was requested or configured.
    #[error("a session lifetime must be longer than zero")]
    ZeroTtl,
    /// The configured default lifetime is longer than the maximum.
    #[error("the default session lifetime is longer than the maximum")]
    DefaultAboveMax,
    /// The key already has [`SessionConfig::max_sessions_per_key`] live
    /// sessions; nothing was stored. Reuse a session until it expires (or
    /// end the key's sessions).
    #[error("key {key_id} already has {limit} live sessions, the most one key may have")]
    TooManySessions {
        /// The key.
        key_id: KeyId,
        /// The cap.
        limit: u32,
    },
    /// [`SessionConfig::max_sessions_per_key`] is zero: no session could
    /// ever be issued.
    #[error("the cap of live sessions per key must be at least 1")]
    ZeroSessionCap,
    /// The session prefix is invalid.
    #[error("invalid session prefix: {0}")]
    Prefix(InvalidValue),
    /// The session prefix equals the key prefix, so the two could not be told apart.
    #[error("the session prefix must differ from the key prefix")]
    PrefixClash,
    /// The manager was built without [`SessionConfig`].
    #[error("sessions are not configured")]
    NotConfigured,
    /// A generated token did not parse (a bug; nothing was stored).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store failed; no session was created.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// SHA-256 of a session secret: what a [`SessionStore`] keeps.
///
/// `Debug` prints `[REDACTED]`; there is no `Serialize`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionHash([u8; 32]);

impl SessionHash {
    /// The hash of a session secret.
    pub(crate) fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }
    /// Wraps stored bytes (for stores reading rows).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The bytes (for stores writing rows).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    fn matches(&self, other: &SessionHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SessionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionHash([REDACTED])")
    }
}

/// A session as the store keeps it: the key snapshot taken at exchange time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id (public, the lookup key; same alphabet as key ids).
    pub id: KeyId,
    /// The key it was exchanged for.
    pub key_id: KeyId,
    /// The key's owner.
    pub owner: OwnerId,
    /// The environment the session is bound to (the key's).
    pub environment: Environment,
    /// The key's name at exchange time.
    pub key_name: String,
    /// The key's effective permissions at exchange time, by name.
    pub permissions: PermissionGrant,
    /// The key's resources at exchange time.
    pub resources: ResourceScope,
    /// The key's IP allowlist at exchange time.
    pub ip_allowlist: IpAllowlist,
    /// When the session was created.
    pub created_at: DateTime<Utc>,
    /// When it expires: `min(created_at + ttl, key expiry)`.
    pub expires_at: DateTime<Utc>,
    /// Ended early (the key was revoked, or its sessions ended).
    pub revoked: bool,
    /// SHA-256 of the secret.
    pub secret_hash: SessionHash,
}

impl SessionRecord {
    /// What APIs show of the session.
    pub fn view(&self) -> SessionView {
        SessionView {
            id: self.id.clone(),
            key_id: self.key_id.clone(),
            owner: self.owner.clone(),
            environment: self.environment.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// What APIs show of a session: no hash, no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// The session id.
    pub id: KeyId,
    /// The key it was exchanged for.
    pub key_id: KeyId,
    /// The owner.
    pub owner: OwnerId,
    /// The environment.
    pub environment: Environment,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// A session just created: the token, shown once, and its view.
#[derive(Debug)]
pub struct IssuedSession {
    /// The session token. Not stored anywhere: hand it to the caller once.
    pub token: Token,
    /// The session as APIs show it.
    pub session: SessionView,
}

/// A session token that passed a check. Derefs to the [`CompiledKey`]
/// snapshot, so it has the same accessors as [`VerifiedKey`]; `id()` is the
/// key's id, [`VerifiedSession::session_id`] the session's.
#[derive(Debug, Clone)]
pub struct VerifiedSession {
    key: VerifiedKey,
    session_id: KeyId,
}

impl VerifiedSession {
    /// The session id.
    pub fn session_id(&self) -> &KeyId {
        &self.session_id
    }
    /// The key snapshot as a [`VerifiedKey`].
    pub fn key(&self) -> &VerifiedKey {
        &self.key
    }
    /// The key snapshot, owned.
    pub fn into_key(self) -> VerifiedKey {
        self.key
    }
}

impl std::ops::Deref for VerifiedSession {
    type Target = CompiledKey;
    fn deref(&self) -> &CompiledKey {
        &self.key
    }
}

/// At most `max_live` live sessions of one key: what [`SessionStore::insert_session`]
/// holds while inserting (see [`SessionConfig::max_sessions_per_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCap {
    /// The most live sessions the key may have, counting the new one.
    pub max_live: u32,
    /// The time at which "live" (not revoked, `expires_at` after it) is judged.
    pub now: DateTime<Utc>,
}

/// Where sessions live. Same style as [`KeyStore`]: implementations write
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

/// The manager's session state: format, settings and the session cache.
pub(crate) struct Sessions {
    pub(crate) format: TokenFormat,
    pub(crate) config: SessionConfig,
    /// Shared with the verifier, whose key invalidations (local changes and
    /// the change feed) also drop the cached sessions of that key.
    pub(crate) cache: Arc<KeyCache>,
}

impl Sessions {
    /// The lifetime of a new session: `requested` or the default, checked
    /// against zero and the maximum.
    fn ttl(&self, requested: Option<Duration>) -> Result<Duration, SessionError> {
        let ttl = requested.unwrap_or(self.config.default_ttl);
        if ttl.is_zero() {
            return Err(SessionError::ZeroTtl);
        }
        if ttl > self.config.max_ttl {
            return Err(SessionError::TtlTooLong {
                requested: ttl,
                max: self.config.max_ttl,
            });
        }
        Ok(ttl)
    }

    /// Validates `config` against the key format.
    pub(crate) fn check_config(
        config: &SessionConfig,
        keys: &TokenFormat,
    ) -> Result<(), SessionError> {
        check_chars(
            "session prefix",
            &config.prefix,
            MAX_PREFIX_LEN,
            "lowercase ASCII letters and digits",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        )
        .map_err(SessionError::Prefix)?;
        if config.prefix == keys.prefix() {
            return Err(SessionError::PrefixClash);
        }
        if config.default_ttl.is_zero() || config.max_ttl.is_zero() {
            return Err(SessionError::ZeroTtl);
        }
        if config.default_ttl > config.max_ttl {
            return Err(SessionError::DefaultAboveMax);
        }
        if config.max_sessions_per_key == 0 {
            return Err(SessionError::ZeroSessionCap);
        }
        Ok(())
    }

    /// State for a checked config.
    pub(crate) fn new(
        config: SessionConfig,
        keys: &TokenFormat,
        capacity: usize,
        cache_ttl: Duration,
    ) -> Self {
        Self {
            format: keys.with_prefix(&config.prefix),
            config,
            cache: Arc::new(KeyCache::new(
                capacity,
                TimeDelta::from_std(cache_ttl).unwrap_or(TimeDelta::MAX),
            )),
        }
    }
}

const ID_ATTEMPTS: usize = 3;

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
        Err(d) => crate::trace::denied(d.key_id.as_ref().map(KeyId::as_str), None, &d.reason),
    }
}

impl<S: KeyStore + SessionStore> KeyManager<S> {
    fn session_state(&self) -> Result<&Sessions, SessionError> {
        self.sessions.as_deref().ok_or(SessionError::NotConfigured)
    }

    /// The session token format (`None` without [`SessionConfig`]).
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
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let push = registry.get("package:push").unwrap();
    /// let manager = KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(registry),
    /// )
    /// .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    /// .sessions(SessionConfig::new("mkhs"))
    /// .unwrap()
    /// .build();
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
        let now = self.shared.clock.now();
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
        let mut record = SessionRecord {
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
        for _ in 0..ID_ATTEMPTS {
            let token = sessions.format.generate(&record.environment, &record.id);
            record.secret_hash = SessionHash::of(
                sessions
                    .format
                    .parse(token.expose_secret())?
                    .expose_secret(),
            );
            let cap = SessionCap {
                max_live: sessions.config.max_sessions_per_key,
                now,
            };
            let mut inserted = self.shared.store.insert_session(&record, Some(cap)).await;
            if let Err(StoreError::Backend(_)) = inserted {
                // A lost reply: the session is there with this hash, or not.
                if let Ok(Some(stored)) = self.shared.store.get_session(&record.id).await {
                    if stored.secret_hash.matches(&record.secret_hash) {
                        inserted = Ok(());
                    }
                }
            }
            match inserted {
                Ok(()) => {
                    // Read the key again now that the session exists: a
                    // revoke (or suspend, or regenerate) made elsewhere
                    // between the check above and this insert ended the
                    // key's sessions without seeing this one. Refused or
                    // changed now: the stored session's token is never
                    // returned, so nobody can ever use it (its row stays
                    // until it expires).
                    if !self.still_current(key).await? {
                        return Ok(None);
                    }
                    self.audit_session(key, &record.id, client_ip).await;
                    return Ok(Some(IssuedSession {
                        token,
                        session: record.view(),
                    }));
                }
                Err(StoreError::DuplicateId(_)) => record.id = KeyId::generate(),
                Err(StoreError::TooManySessions { key_id, limit }) => {
                    return Err(SessionError::TooManySessions { key_id, limit });
                }
                Err(e) => return Err(SessionError::Store(e)),
            }
        }
        Err(SessionError::Store(StoreError::DuplicateId(record.id)))
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
    pub async fn verify_session(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedSession, Denial> {
        crate::trace::verify_span("session", self.verify_session_impl(token, req)).await
    }

    async fn verify_session_impl(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedSession, Denial> {
        let rule = self.shared.policy.resource_rule();
        let result = self
            .check_session(token, req.environment, |key, now| key.check(req, rule, now))
            .await;
        session_traced(&result);
        result
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
        crate::trace::verify_span(
            "session",
            self.authenticate_session_impl(token, environment, client_ip),
        )
        .await
    }

    async fn authenticate_session_impl(
        &self,
        token: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedSession, Denial> {
        let result = self
            .check_session(token, environment, |key, now| {
                key.check_access(client_ip, now)
            })
            .await;
        session_traced(&result);
        result
    }

    async fn check_session(
        &self,
        token: &str,
        environment: &Environment,
        check: impl FnOnce(&CompiledKey, DateTime<Utc>) -> Result<(), DenialReason>,
    ) -> Result<VerifiedSession, Denial> {
        let Some(sessions) = self.sessions.as_deref() else {
            return Err(Denial::new(
                DenialReason::Malformed(TokenError::BadPrefix),
                None,
            ));
        };
        let parsed = sessions
            .format
            .parse(token)
            .map_err(|e| Denial::new(DenialReason::Malformed(e), None))?;
        let anonymous = |reason| Denial::new(reason, None);
        if parsed.environment() != environment.as_str() {
            return Err(anonymous(DenialReason::WrongEnvironment));
        }
        let hash = SessionHash::of(parsed.expose_secret());
        let now = self.shared.clock.now();
        let id = parsed.key_id();
        let key = match sessions.cache.lookup(id, environment, || hash.0, now) {
            Some(Cached::Live(key)) => key,
            Some(Cached::Dead(reason, _)) => return Err(anonymous(reason)),
            None => {
                let session_id = KeyId::new(id).map_err(|_| anonymous(DenialReason::UnknownKey))?;
                let epoch = sessions.cache.epoch();
                let record = match self.shared.store.get_session(&session_id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(anonymous(DenialReason::UnknownKey)),
                    Err(_) => return Err(anonymous(DenialReason::StoreUnavailable)),
                };
                if record.id != session_id || record.environment != *environment {
                    return Err(anonymous(DenialReason::UnknownKey));
                }
                if !record.secret_hash.matches(&hash) {
                    return Err(anonymous(DenialReason::WrongSecret));
                }
                // The key revoked ends its sessions even where they were not
                // ended in the store (a revoke by a manager built without
                // sessions, or whose ending failed). A deleted key's
                // sessions live on, as deleting leaves them.
                let key_revoked = match self.shared.store.get(&record.key_id).await {
                    Ok(key) => key.is_some_and(|k| k.revoked_at.is_some()),
                    Err(_) => return Err(anonymous(DenialReason::StoreUnavailable)),
                };
                if record.revoked || key_revoked {
                    sessions.cache.insert(
                        &session_id,
                        &record.environment,
                        hash.0,
                        Cached::Dead(DenialReason::Revoked, None),
                        now,
                        epoch,
                    );
                    return Err(Denial::new(
                        DenialReason::Revoked,
                        Some(record.key_id.as_str()),
                    ));
                }
                let policy = &self.shared.policy;
                let key = CompiledKey::from_parts(
                    record.key_id.clone(),
                    record.owner,
                    record.environment,
                    record.key_name,
                    policy.permissions().resolve_stored(&record.permissions),
                    record.resources,
                    policy,
                    record.ip_allowlist,
                    Some(record.expires_at),
                )
                .map_err(|_| {
                    Denial::new(DenialReason::CorruptRecord, Some(record.key_id.as_str()))
                })?;
                let key = Arc::new(key);
                sessions.cache.insert(
                    &session_id,
                    key.environment(),
                    hash.0,
                    Cached::Live(Arc::clone(&key)),
                    now,
                    epoch,
                );
                key
            }
        };
        match check(&key, now) {
            Ok(()) => Ok(VerifiedSession {
                session_id: KeyId::new(id).map_err(|_| anonymous(DenialReason::UnknownKey))?,
                key: VerifiedKey::from_compiled(key, now),
            }),
            Err(reason) => Err(Denial::new(reason, Some(key.id().as_str()))),
        }
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
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Revoke,
            Some(id),
            self.end_sessions_impl(actor, id),
        )
        .await
    }

    async fn end_sessions_impl(&self, actor: &Actor, id: &KeyId) -> Result<u64, KeywardError> {
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
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Revoke,
            Some(id),
            self.revoke_compromised_impl(actor, id),
        )
        .await
    }

    async fn revoke_compromised_impl(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<KeyView, KeywardError> {
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
        let now = self.shared.clock.now();
        self.shared
            .store
            .delete_expired_sessions(now)
            .await
            .map_err(KeywardError::from_store)
    }
}
