//! Session tokens: a key exchanged for a short-lived token that carries the
//! key's permissions, resources and IP allowlist.
//!
//! ```text
//! mkhs_live_<session id 12><secret 43><checksum 6>
//! ```
//!
//! A session token has the same shape as a key ([`TokenFormat`](crate::TokenFormat)) under its
//! own prefix, chosen by the application (`mkhs` beside the key prefix
//! `mkh`), so scanners and logs can tell them apart, and a key parser
//! refuses a session token unread ([`TokenError::BadPrefix`](crate::token::TokenError::BadPrefix),
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
//!   it leaves them valid until they expire
//!   ([`KeyManager::end_sessions`](crate::KeyManager::end_sessions) ends them
//!   for a deleted key).
//! * A session token can never be exchanged for another session.
//! * A key holds at most [`SessionConfig::max_sessions_per_key`] live
//!   sessions (an exchange at the cap is refused), and
//!   [`KeyManager::purge_expired_sessions`](crate::KeyManager::purge_expired_sessions),
//!   run on a timer, deletes the rows of expired ones.
//!
//! This module holds the session data only. The check of a session token,
//! its answer [`VerifiedSession`](crate::verify::VerifiedSession) and
//! [`SessionError`](crate::verify::SessionError) are in [`verify`](crate::verify);
//! the storage trait [`SessionStore`](crate::store::SessionStore) is in
//! [`store`](crate::store); the operations (`exchange`, `verify_session`,
//! `end_sessions`, ...) are methods of [`KeyManager`](crate::KeyManager).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::token::Token;

/// Default lifetime of a session token: 15 minutes.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Default longest lifetime a caller may ask for: 1 hour.
pub const DEFAULT_MAX_SESSION_TTL: Duration = Duration::from_secs(60 * 60);
/// Default cap of live sessions per key: 100 (see
/// [`SessionConfig::max_sessions_per_key`]).
pub const DEFAULT_MAX_SESSIONS_PER_KEY: u32 = 100;

/// Session settings, given to [`KeyManagerBuilder::sessions`](crate::manager::KeyManagerBuilder::sessions).
///
/// ```
/// use std::time::Duration;
/// use keyward::session::SessionConfig;
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
    /// refused with [`SessionError::TtlTooLong`](crate::verify::SessionError::TtlTooLong).
    pub max_ttl: Duration,
    /// Most live (not revoked, not expired) sessions one key may have at
    /// once (default [`DEFAULT_MAX_SESSIONS_PER_KEY`], at least 1). At the
    /// cap, an exchange is refused with [`SessionError::TooManySessions`](crate::verify::SessionError::TooManySessions)
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

/// SHA-256 of a session secret: what a [`SessionStore`](crate::store::SessionStore) keeps.
///
/// `Debug` prints `[REDACTED]`; there is no `Serialize`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionHash(pub(crate) [u8; 32]);

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
    pub(crate) fn matches(&self, other: &SessionHash) -> bool {
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

/// At most `max_live` live sessions of one key: what [`SessionStore::insert_session`](crate::store::SessionStore::insert_session)
/// holds while inserting (see [`SessionConfig::max_sessions_per_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCap {
    /// The most live sessions the key may have, counting the new one.
    pub max_live: u32,
    /// The time at which "live" (not revoked, `expires_at` after it) is judged.
    pub now: DateTime<Utc>,
}
