//! The verifier's cache: proven keys by id, with a keyed fingerprint of the secret.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, TimeDelta, Utc};
use foldhash::fast::RandomState;
use subtle::ConstantTimeEq;

use crate::hash::FINGERPRINT_LEN;
use crate::key::OwnerId;
use crate::token::{Environment, KeyId};
use crate::verify::{CompiledKey, DenialReason};

const SHARDS: usize = 64;

/// What a cache entry says about a key whose secret was proven.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// The key and its compiled policy.
    Live(Arc<CompiledKey>),
    /// A refusal after the secret was proven (revoked, suspended), so
    /// retries cost no argon2; with the key's owner, for the audit trail.
    Dead(DenialReason, Option<OwnerId>),
}

struct Entry {
    fingerprint: [u8; FINGERPRINT_LEN],
    /// The environment of the key (or session): a hit for another
    /// environment is a miss, so the store decides, exactly as when cold.
    environment: Environment,
    state: Cached,
    cached_at: DateTime<Utc>,
}

type Shard = RwLock<HashMap<KeyId, Entry, RandomState>>;

/// A bounded, sharded map from key id to proven state.
///
/// Hits take one shard's read lock. An invalidation bumps an epoch under the
/// shard's write lock; an insert made by a check that read the store before
/// that bump is dropped, so a check that started after an invalidation
/// returned can never see the old state.
pub(crate) struct KeyCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    ttl: TimeDelta,
    epoch: AtomicU64,
    hasher: RandomState,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize, ttl: TimeDelta) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            ttl,
            epoch: AtomicU64::new(0),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, id: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// The cached state if the entry is fresh, of `environment`, and the
    /// fingerprint matches. `fingerprint` is computed only when there is
    /// such an entry, so an unknown id costs no MAC.
    #[inline]
    pub(crate) fn lookup(
        &self,
        id: &str,
        environment: &Environment,
        fingerprint: impl FnOnce() -> [u8; FINGERPRINT_LEN],
        now: DateTime<Utc>,
    ) -> Option<Cached> {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(id)?;
        if now - entry.cached_at >= self.ttl
            || now < entry.cached_at
            || entry.environment != *environment
        {
            return None;
        }
        if bool::from(entry.fingerprint.ct_eq(&fingerprint())) {
            Some(entry.state.clone())
        } else {
            None
        }
    }

    /// The epoch to pass to [`KeyCache::insert`]; read it before reading the store.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a proven state, unless an invalidation happened since `seen_epoch`.
    pub(crate) fn insert(
        &self,
        id: &KeyId,
        environment: &Environment,
        fingerprint: [u8; FINGERPRINT_LEN],
        state: Cached,
        now: DateTime<Utc>,
        seen_epoch: u64,
    ) {
        let mut shard = self
            .shard(id.as_str())
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) != seen_epoch {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(id) {
            let ttl = self.ttl;
            shard.retain(|_, e| now - e.cached_at < ttl);
            if shard.len() >= self.per_shard {
                // Still full: evict an arbitrary entry (hash order is random per process).
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            id.clone(),
            Entry {
                fingerprint,
                environment: environment.clone(),
                state,
                cached_at: now,
            },
        );
    }

    /// Forgets a key at once.
    pub(crate) fn invalidate(&self, id: &str) {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        shard.remove(id);
    }

    /// Forgets every live entry whose compiled key is `key_id` (the
    /// sessions of one key, in the session cache).
    pub(crate) fn invalidate_key(&self, key_id: &KeyId) {
        // First, and always: a check that read the store before this call
        // (and may have seen the session still valid) must not cache what
        // it read, even if nothing of the key is cached yet.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in &*self.shards {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, e| !matches!(&e.state, Cached::Live(k) if k.id() == key_id));
        }
    }

    /// Forgets every key.
    pub(crate) fn clear(&self) {
        let mut guards: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.write().unwrap_or_else(PoisonError::into_inner))
            .collect();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for g in &mut guards {
            g.clear();
        }
    }

    /// Number of cached entries.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
