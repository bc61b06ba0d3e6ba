//! [`KeyManagerBuilder`]: the settings a [`KeyManager`] is built from.

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
    /// these lifetimes and this cap of live sessions per key. Errors: an
    /// invalid prefix, the key prefix itself, a zero lifetime, a default
    /// above the maximum.
    ///
    /// ```
    /// use keyward::*;
    /// use keyward::{session::SessionConfig, verify::SessionError};
    /// let builder = || KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(PermissionRegistry::builder().permission("p").build().unwrap()),
    /// );
    /// assert!(builder().sessions(SessionConfig::new("mkhs")).is_ok());
    /// assert_eq!(builder().sessions(SessionConfig::new("mkh")).err(), Some(SessionError::PrefixClash));
    /// ```
    pub fn sessions(mut self, config: SessionConfig) -> Result<Self, SessionError> {
        Sessions::check_config(&config, &self.format)?;
        self.sessions = Some(config);
        self.end_sessions = Some(end_sessions_in::<S>);
        Ok(self)
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
    pub fn build(self) -> KeyManager<S> {
        let sessions = self.sessions.map(|config| {
            Arc::new(Sessions::new(
                config,
                &self.format,
                self.config.cache_capacity,
                self.config.cache_ttl,
            ))
        });
        KeyManager {
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
        }
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
