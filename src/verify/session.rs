//! Session checks: the session state a manager keeps (format, settings,
//! session cache), the check of a session token, its answer
//! ([`VerifiedSession`]) and the error of an exchange ([`SessionError`]).
//! The session data itself lives in `crate::session`, the operations in the
//! manager.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use thiserror::Error;

use super::cache::{Cached, KeyCache};
use super::cold::ColdDenial;
use super::{CompiledKey, Denial, DenialReason, Shared, VerifiedKey};
use crate::ids::{Environment, InvalidValue, KeyId, check_chars};
use crate::session::{SessionConfig, SessionHash};
use crate::store::{KeyStore, SessionStore, StoreError};
use crate::token::{MAX_PREFIX_LEN, TokenError, TokenFormat};

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

/// A session token that passed a check. Derefs to the [`CompiledKey`]
/// snapshot, so it has the same accessors as [`VerifiedKey`]; `id()` is the
/// key's id, [`VerifiedSession::session_id`] the session's.
#[derive(Debug, Clone)]
pub struct VerifiedSession {
    pub(crate) key: VerifiedKey,
    pub(crate) session_id: KeyId,
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
    pub(crate) fn ttl(&self, requested: Option<Duration>) -> Result<Duration, SessionError> {
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

    /// Checks a session token: parses it with the session format, looks its
    /// session up (cache, then store), refuses it when it or its key is
    /// revoked, and runs `check` on the key snapshot.
    ///
    /// Before the store is read, a session the cache does not hold passes
    /// what a key's cold check passes ([`Shared::admit_waiting`]): the
    /// memory of unknown ids and the bucket of `client_ip`'s source, whose
    /// token an unknown id or a wrong secret spends. So a flood of forged
    /// session tokens from one source stops reaching the store after its
    /// burst, as a flood of forged keys does.
    pub(crate) async fn check<S: KeyStore + SessionStore>(
        &self,
        shared: &Shared<S>,
        token: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        check: impl FnOnce(&CompiledKey, DateTime<Utc>) -> Result<(), DenialReason>,
    ) -> Result<VerifiedSession, Denial> {
        let parsed = self
            .format
            .parse(token)
            .map_err(|e| Denial::new(DenialReason::Malformed(e), None))?;
        let anonymous = |reason| Denial::new(reason, None);
        if parsed.environment() != environment.as_str() {
            return Err(anonymous(DenialReason::WrongEnvironment));
        }
        let hash = SessionHash::of(parsed.expose_secret());
        let mut now = shared.clock.now();
        let id = parsed.key_id();
        let mut now_us = now.timestamp_micros();
        let key = match self.cache.lookup(id, environment, || hash.0, now_us) {
            Some(Cached::Live(key)) => key,
            Some(Cached::Dead(reason, _)) => return Err(anonymous(reason)),
            None => {
                let session_id = KeyId::new(id).map_err(|_| anonymous(DenialReason::UnknownKey))?;
                // A secret this process proved before (its entry went stale)
                // skips the throttles, as a key's proof does: a neighbour's
                // flood behind the same address does not lock it out.
                let proven = self.cache.proven(id, environment, &hash.0);
                // Spent when dropped (an unknown id, a wrong secret), unless
                // the secret proved right or the store could not be read.
                let (admitted, _) = shared
                    .admit_waiting(
                        &shared.session_unknown,
                        id,
                        environment,
                        now_us,
                        client_ip,
                        proven,
                    )
                    .await
                    .map_err(|ColdDenial(reason, retry_after, _)| Denial {
                        retry_after,
                        ..anonymous(reason)
                    })?;
                let epoch = self.cache.epoch();
                let record = match shared.store.get_session(&session_id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let unknown = &shared.session_unknown;
                        unknown.insert(&session_id, shared.clock.now(), &self.cache, epoch);
                        return Err(anonymous(DenialReason::UnknownKey));
                    }
                    Err(_) => {
                        admitted.succeeded();
                        return Err(anonymous(DenialReason::StoreUnavailable));
                    }
                };
                if record.id != session_id || record.environment != *environment {
                    return Err(anonymous(DenialReason::UnknownKey));
                }
                if !record.secret_hash.matches(&hash) {
                    return Err(anonymous(DenialReason::WrongSecret));
                }
                admitted.succeeded();
                // The key revoked ends its sessions even where they were not
                // ended in the store (a revoke by a manager built without
                // sessions, or whose ending failed). A deleted key's
                // sessions live on, as deleting leaves them.
                let key_record = match shared.store.get(&record.key_id).await {
                    Ok(key) => key,
                    Err(_) => return Err(anonymous(DenialReason::StoreUnavailable)),
                };
                // The time of the insert and of the check: a check that
                // waited for its source, or for the store, is stamped when
                // it ends (an entry stamped with its start could be born
                // stale; see `KeyCache::insert`).
                now = shared.clock.now();
                now_us = now.timestamp_micros();
                let key_revoked = key_record.as_ref().is_some_and(|k| k.revoked_at.is_some());
                if record.revoked || key_revoked {
                    self.cache.insert(
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
                let policy = &shared.policy;
                let mut key = CompiledKey::from_parts(
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
                // A session spends its key's usage controls, from the same
                // ledger as the key (the axum layer charges it).
                key.metering = key_record
                    .filter(|k| k.id == record.key_id)
                    .and_then(|k| shared.ledgers.metering(&k));
                let key = Arc::new(key);
                self.cache.insert(
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
                key: VerifiedKey::from_compiled(key, now_us),
            }),
            Err(reason) => Err(Denial::new(reason, Some(key.id().as_str()))),
        }
    }
}
