//! [`Shared`]: the state a manager and its verifiers share.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chrono::TimeDelta;

use super::cache::{KeyCache, UnknownIds};
use super::config::VerifierConfig;
use super::flights::Flights;
use super::hash_pool::HashPool;
use super::ledger::Ledgers;
use super::throttle::{MAX_WAITERS_PER_KEY, SourceThrottle, Throttle};
use super::usage::{UsageTracker, UsageWrite};
use crate::audit::{AuditAction, AuditEvent};
use crate::clock::Clock;
use crate::hash::HashError;
use crate::hash::{Fingerprinter, HashScratch, SecretHasher};
use crate::ids::KeyId;
use crate::policy::Policy;
use crate::source::Source;
use crate::store::AuditSink;
use crate::store::KeyStore;
use crate::token::TokenFormat;
use crate::verify::audit_log::AuditLog;

/// Cold checks that may wait at once, over all sources, for a token of
/// their source held by another check in flight.
pub(super) const MAX_SOURCE_WAITERS: usize = 4096;

/// Times a cold check waits at most for a token of its source (until a
/// release, or until a token will have refilled) before it is refused as
/// throttled: as many as may wait with it, each of which a release can
/// let through first.
pub(super) const MAX_SOURCE_WAITS: u32 = MAX_WAITERS_PER_KEY as u32;

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// State shared by a manager and its verifiers.
pub(crate) struct Shared<S> {
    pub(crate) store: S,
    pub(crate) format: TokenFormat,
    pub(crate) policy: Policy,
    pub(crate) hasher: Arc<dyn SecretHasher>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(super) cache: KeyCache,
    /// Ids the store recently did not have.
    pub(super) unknown: UnknownIds,
    /// Session ids the store recently did not have: a memory of their
    /// own, so that a forged session token naming a key's id (ids are not
    /// secret) cannot make the key unknown, nor a forged key token a
    /// session.
    pub(super) session_unknown: UnknownIds,
    pub(super) throttle: Throttle,
    pub(super) sources: Arc<SourceThrottle>,
    /// Cold checks waiting for a token of their source that another check
    /// in flight holds (at most [`MAX_SOURCE_WAITERS`]).
    pub(super) source_waiters: AtomicUsize,
    /// Longest a cold check waits, in all, for tokens of its source held
    /// by other checks ([`VerifierConfig::max_hash_wait`]).
    pub(super) max_source_wait: Duration,
    /// The ids whose first proof is in flight: concurrent first uses of a
    /// key wait for it.
    pub(super) flights: Arc<Flights>,
    /// The argon2 threads and their bounded, fair queue.
    pub(super) hashing: HashPool,
    pub(super) fingerprinter: Fingerprinter,
    /// The manager's session cache, if it has sessions.
    pub(super) session_cache: Option<Arc<KeyCache>>,
    pub(crate) audit: AuditLog,
    pub(crate) usage: UsageTracker,
    /// The local usage ledgers (rate limits and credits).
    pub(crate) ledgers: Ledgers,
}

impl<S: KeyStore> Shared<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: S,
        format: TokenFormat,
        policy: Policy,
        hasher: Arc<dyn SecretHasher>,
        clock: Arc<dyn Clock>,
        config: VerifierConfig,
        audit: Option<Arc<dyn AuditSink>>,
        session_cache: Option<Arc<KeyCache>>,
    ) -> Self {
        let now = clock.now();
        Self {
            audit: AuditLog::new(audit, delta(config.failure_window), now),
            usage: UsageTracker::new(delta(config.usage_interval)),
            ledgers: Ledgers::new(config.max_credit_block, config.usage_idle),
            store,
            format,
            policy,
            hasher: Arc::clone(&hasher),
            clock,
            cache: KeyCache::new(config.cache_capacity, delta(config.cache_ttl)),
            unknown: UnknownIds::new(delta(config.unknown_id_ttl)),
            session_unknown: UnknownIds::new(delta(config.unknown_id_ttl)),
            throttle: Throttle::new(config.failure_burst, delta(config.failure_refill)),
            sources: Arc::new(SourceThrottle::new(
                config.source_failure_burst,
                delta(config.source_failure_refill),
            )),
            source_waiters: AtomicUsize::new(0),
            max_source_wait: config.max_hash_wait,
            flights: Arc::new(Flights::default()),
            hashing: HashPool::new(
                Arc::clone(&hasher),
                config.max_concurrent_hashes,
                config.max_hash_queue,
                config.max_hash_wait,
            ),
            fingerprinter: Fingerprinter::random(),
            session_cache,
        }
    }

    /// Runs a hasher call on a hashing thread (see
    /// [`VerifierConfig::max_concurrent_hashes`](crate::verify::VerifierConfig::max_concurrent_hashes)),
    /// for management calls.
    pub(crate) async fn run_hasher<R, F>(&self, f: F) -> Result<R, HashError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn SecretHasher, &mut HashScratch) -> Result<R, HashError> + Send + 'static,
    {
        Ok(self.hashing.run(Some(Source::MANAGEMENT), f).await?)
    }

    /// Forgets key `id` and this process's cached sessions of it, so their
    /// next check reads the store (where a revoke ended them).
    pub(crate) fn invalidate(&self, id: &KeyId) {
        // The epoch bump (in `invalidate`) comes first: a check that found
        // the id missing before this call cannot remember it afterwards.
        self.cache.invalidate(id.as_str());
        self.unknown.forget(id.as_str());
        if let Some(sessions) = &self.session_cache {
            sessions.invalidate_key(id);
        }
    }

    /// Forgets every cached key and session.
    pub(crate) fn invalidate_all(&self) {
        self.cache.clear();
        self.unknown.clear();
        self.session_unknown.clear();
        if let Some(sessions) = &self.session_cache {
            sessions.clear();
        }
    }

    /// The audit event for a usage write.
    pub(crate) fn usage_event(&self, w: &UsageWrite) -> AuditEvent {
        AuditEvent {
            key_id: Some(w.id.clone()),
            owner: Some(w.owner.clone()),
            client_ip: w.ip,
            detail: format!("used since {}", w.since.to_rfc3339()),
            ..AuditEvent::new(w.at, AuditAction::Used)
        }
    }
}
