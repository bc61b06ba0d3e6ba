//! Throttling of cold checks per key id (a token bucket each).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use foldhash::fast::RandomState;

use crate::key::OwnerId;
use crate::token::{Environment, KeyId};

const SHARDS: usize = 16;
const MAX_BUCKETS_PER_SHARD: usize = 4096;

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    updated: DateTime<Utc>,
    /// Whose key, and of which environment: a throttled id is refused
    /// before the store is read ([`Throttle::peek`]), with the same answer
    /// and audit owner as after reading it.
    owner: OwnerId,
    environment: Environment,
}

/// Limits argon2 checks per key id: `burst` at once, then one per `refill`.
/// A token is taken before each cold check and given back when the secret
/// was right, so only wrong secrets use the budget up.
pub(crate) struct Throttle {
    shards: Box<[Mutex<HashMap<KeyId, Bucket, RandomState>>]>,
    /// Buckets in all shards, kept under their shard's lock: when none
    /// exists (no recent wrong secret anywhere), `peek` takes no lock.
    buckets: AtomicUsize,
    burst: f64,
    refill: TimeDelta,
    hasher: RandomState,
}

impl Throttle {
    pub(crate) fn new(burst: u32, refill: TimeDelta) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            buckets: AtomicUsize::new(0),
            burst: f64::from(burst.max(1)),
            refill: refill.max(TimeDelta::milliseconds(1)),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<KeyId, Bucket, RandomState>> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    fn refilled(&self, b: &Bucket, now: DateTime<Utc>) -> f64 {
        let elapsed = (now - b.updated).max(TimeDelta::zero());
        let gained = elapsed.num_microseconds().unwrap_or(i64::MAX) as f64
            / self.refill.num_microseconds().unwrap_or(i64::MAX) as f64;
        (b.tokens + gained).min(self.burst)
    }

    /// How long to wait, if `id` (of `environment`) is throttled now, and
    /// whose key it is; takes no token and reads no store. A cold check asks
    /// this first, so a flood of wrong secrets for one id costs neither
    /// argon2 nor store reads once throttled.
    pub(crate) fn peek(
        &self,
        id: &str,
        environment: &Environment,
        now: DateTime<Utc>,
    ) -> Option<(TimeDelta, OwnerId)> {
        if self.buckets.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self
            .shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bucket = map.get(id).filter(|b| b.environment == *environment)?;
        let wait = self.wait(self.refilled(bucket, now))?;
        Some((wait, bucket.owner.clone()))
    }

    /// How long until a bucket holding `tokens` has one, if it has none.
    fn wait(&self, tokens: f64) -> Option<TimeDelta> {
        if tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - tokens;
        let wait_us =
            (missing * self.refill.num_microseconds().unwrap_or(i64::MAX) as f64).ceil() as i64;
        Some(TimeDelta::microseconds(wait_us.max(1)))
    }

    /// Takes a token for a cold check of `id` (a key of `owner` in
    /// `environment`), or says how long to wait.
    pub(crate) fn try_acquire(
        &self,
        id: &KeyId,
        owner: &OwnerId,
        environment: &Environment,
        now: DateTime<Utc>,
    ) -> Result<(), TimeDelta> {
        let mut map = self
            .shard(id.as_str())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tokens = match map.get(id) {
            Some(b) => self.refilled(b, now),
            None => {
                if map.len() >= MAX_BUCKETS_PER_SHARD {
                    let burst = self.burst;
                    let before = map.len();
                    map.retain(|_, b| self.refilled(b, now) < burst);
                    if map.len() >= MAX_BUCKETS_PER_SHARD {
                        if let Some(victim) = map.keys().next().cloned() {
                            map.remove(&victim);
                        }
                    }
                    self.buckets
                        .fetch_sub(before - map.len(), Ordering::Relaxed);
                }
                self.burst
            }
        };
        if let Some(wait) = self.wait(tokens) {
            return Err(wait);
        }
        let bucket = Bucket {
            tokens: tokens - 1.0,
            updated: now,
            owner: owner.clone(),
            environment: environment.clone(),
        };
        if map.insert(id.clone(), bucket).is_none() {
            self.buckets.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives back the token of a check whose secret was right.
    pub(crate) fn refund(&self, id: &KeyId, now: DateTime<Utc>) {
        let mut map = self
            .shard(id.as_str())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get_mut(id) {
            let tokens = self.refilled(b, now) + 1.0;
            if tokens >= self.burst {
                map.remove(id);
                self.buckets.fetch_sub(1, Ordering::Relaxed);
            } else {
                b.tokens = tokens;
                b.updated = now;
            }
        }
    }
}
