//! [`KeyManagerBuilder`]: the settings a [`KeyManager`] is built from.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{EndSessions, KeyManager};
use crate::clock::{Clock, SystemClock};
use crate::hash::{Argon2Hasher, SecretHasher};
use crate::ids::KeyId;
use crate::policy::{DefaultManagementPolicy, ManagementPolicy, Policy};
use crate::session::SessionConfig;
use crate::store::AuditSink;
use crate::store::KeyStore;
use crate::store::SessionStore;
use crate::store::StoreError;
use crate::token::TokenFormat;
use crate::verify::{SessionError, Sessions};
use crate::verify::{Shared, VerifierConfig};

/// Builds a [`KeyManager`].
pub struct KeyManagerBuilder<S> {
    store: S,
    format: TokenFormat,
    policy: Policy,
    hasher: Arc<dyn SecretHasher>,
    clock: Arc<dyn Clock>,
    config: VerifierConfig,
    sessions: Option<SessionConfig>,
    end_sessions: Option<EndSessions<S>>,
    audit: Option<Arc<dyn AuditSink>>,
    management: Arc<dyn ManagementPolicy>,
}

fn end_sessions_in<'a, S: SessionStore>(
    store: &'a S,
    id: &'a KeyId,
) -> Pin<Box<dyn Future<Output = Result<u64, StoreError>> + Send + 'a>> {
    Box::pin(store.revoke_sessions(id))
}

impl<S: KeyStore + SessionStore> KeyManagerBuilder<S> {
    /// Enables session tokens ([`KeyManager::exchange`]) with this prefix,
    /// these lifetimes and this cap of live sessions per key. Checked by
    /// [`KeyManagerBuilder::build`], which names the setting that cannot
    /// work ([`BuildError`]): an invalid prefix, the key prefix itself, a
    /// zero lifetime, a default above the maximum, a zero cap.
    ///
    /// ```
    /// use keyward::*;
    /// use keyward::{session::SessionConfig, verify::SessionError};
    /// let builder = || KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(PermissionRegistry::builder().permission("p").build().unwrap()),
    /// );
    /// assert!(builder().sessions(SessionConfig::new("mkhs")).build().is_ok());
    /// let clash = builder().sessions(SessionConfig::new("mkh")).build().unwrap_err();
    /// assert_eq!(clash.field(), "sessions.prefix");
    /// assert_eq!(clash.kind(), &SessionError::PrefixClash);
    /// ```
    pub fn sessions(mut self, config: SessionConfig) -> Self {
        self.sessions = Some(config);
        self.end_sessions = Some(end_sessions_in::<S>);
        self
    }
}

/// A [`KeyManagerBuilder`] setting that cannot work, from
/// [`KeyManagerBuilder::build`]: which setting, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    field: &'static str,
    kind: SessionError,
}

impl BuildError {
    /// The setting, named as the builder and its config spell it:
    /// `sessions.prefix`, `sessions.default_ttl`, `sessions.max_ttl` or
    /// `sessions.max_sessions_per_key`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it: [`SessionError::Prefix`],
    /// [`SessionError::PrefixClash`] (`sessions.prefix`),
    /// [`SessionError::ZeroTtl`] (`sessions.default_ttl` or
    /// `sessions.max_ttl`), [`SessionError::DefaultAboveMax`]
    /// (`sessions.default_ttl`), [`SessionError::ZeroSessionCap`]
    /// (`sessions.max_sessions_per_key`).
    pub fn kind(&self) -> &SessionError {
        &self.kind
    }

    fn sessions(config: &SessionConfig, kind: SessionError) -> Self {
        let field = match &kind {
            SessionError::ZeroTtl if !config.default_ttl.is_zero() => "sessions.max_ttl",
            SessionError::ZeroTtl | SessionError::DefaultAboveMax => "sessions.default_ttl",
            SessionError::ZeroSessionCap => "sessions.max_sessions_per_key",
            _ => "sessions.prefix",
        };
        Self { field, kind }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.kind)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

impl<S: KeyStore> KeyManagerBuilder<S> {
    /// Uses another hasher (default: [`Argon2Hasher`] with default parameters).
    pub fn hasher(mut self, hasher: impl SecretHasher) -> Self {
        self.hasher = Arc::new(hasher);
        self
    }
    /// Uses another clock (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Sets the verifier's cache, throttle, hashing and usage settings.
    pub fn verifier_config(mut self, config: VerifierConfig) -> Self {
        self.config = config;
        self
    }
    /// Records the audit trail in `sink` (default: none). Every management
    /// action, refusal, session issued, aggregated authentication failure
    /// and recorded use becomes an [`AuditEvent`](crate::audit::AuditEvent).
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Some(Arc::new(sink));
        self
    }
    /// Same as [`KeyManagerBuilder::audit`] with a shared sink.
    pub fn audit_shared(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }
    /// Decides who may manage keys (default: [`DefaultManagementPolicy`]).
    pub fn management_policy(mut self, policy: impl ManagementPolicy) -> Self {
        self.management = Arc::new(policy);
        self
    }
    /// Builds the manager.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming the setting that cannot work (see
    /// [`KeyManagerBuilder::sessions`]); nothing else fails.
    pub fn build(self) -> Result<KeyManager<S>, BuildError> {
        if let Some(config) = &self.sessions {
            Sessions::check_config(config, &self.format)
                .map_err(|kind| BuildError::sessions(config, kind))?;
        }
        let sessions = self.sessions.map(|config| {
            Arc::new(Sessions::new(
                config,
                &self.format,
                self.config.cache_capacity,
                self.config.cache_ttl,
            ))
        });
        Ok(KeyManager {
            management: self.management,
            end_sessions: self.end_sessions,
            shared: Arc::new(Shared::new(
                self.store,
                self.format,
                self.policy,
                self.hasher,
                self.clock,
                self.config,
                self.audit,
                sessions.as_ref().map(|s| Arc::clone(&s.cache)),
            )),
            sessions,
        })
    }
}

impl<S: KeyStore> KeyManager<S> {
    /// Starts building a manager over `store` with this token format and policy.
    pub fn builder(store: S, format: TokenFormat, policy: Policy) -> KeyManagerBuilder<S> {
        KeyManagerBuilder {
            store,
            format,
            policy,
            hasher: Arc::new(Argon2Hasher::default()),
            clock: Arc::new(SystemClock),
            config: VerifierConfig::default(),
            sessions: None,
            end_sessions: None,
            audit: None,
            management: Arc::new(DefaultManagementPolicy),
        }
    }
}
