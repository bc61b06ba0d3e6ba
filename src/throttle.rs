//! Throttling of cold checks per key id (a token bucket each).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use foldhash::fast::RandomState;

use crate::token::KeyId;

const SHARDS: usize = 16;
const MAX_BUCKETS_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: DateTime<Utc>,
}

/// Limits argon2 checks per key id: `burst` at once, then one per `refill`.
/// A token is taken before each cold check and given back when the secret
/// was right, so only wrong secrets use the budget up.
pub(crate) struct Throttle {
    shards: Box<[Mutex<HashMap<KeyId, Bucket, RandomState>>]>,
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
            burst: f64::from(burst.max(1)),
            refill: refill.max(TimeDelta::milliseconds(1)),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<KeyId, Bucket, RandomState>> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    fn refilled(&self, b: Bucket, now: DateTime<Utc>) -> f64 {
        let elapsed = (now - b.updated).max(TimeDelta::zero());
        let gained = elapsed.num_microseconds().unwrap_or(i64::MAX) as f64
            / self.refill.num_microseconds().unwrap_or(i64::MAX) as f64;
        (b.tokens + gained).min(self.burst)
    }

    /// Takes a token for a cold check of `id`, or says how long to wait.
    pub(crate) fn try_acquire(&self, id: &KeyId, now: DateTime<Utc>) -> Result<(), TimeDelta> {
        let mut map = self
            .shard(id.as_str())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tokens = match map.get(id) {
            Some(b) => self.refilled(*b, now),
            None => {
                if map.len() >= MAX_BUCKETS_PER_SHARD {
                    let burst = self.burst;
                    map.retain(|_, b| self.refilled(*b, now) < burst);
                    if map.len() >= MAX_BUCKETS_PER_SHARD {
                        if let Some(victim) = map.keys().next().cloned() {
                            map.remove(&victim);
                        }
                    }
                }
                self.burst
            }
        };
        if tokens < 1.0 {
            let missing = 1.0 - tokens;
            let wait_us =
                (missing * self.refill.num_microseconds().unwrap_or(i64::MAX) as f64).ceil() as i64;
            return Err(TimeDelta::microseconds(wait_us.max(1)));
        }
        map.insert(
            id.clone(),
            Bucket {
                tokens: tokens - 1.0,
                updated: now,
            },
        );
        Ok(())
    }

    /// Gives back the token of a check whose secret was right.
    pub(crate) fn refund(&self, id: &KeyId, now: DateTime<Utc>) {
        let mut map = self
            .shard(id.as_str())
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get_mut(id) {
            let tokens = self.refilled(*b, now) + 1.0;
            if tokens >= self.burst {
                map.remove(id);
            } else {
                *b = Bucket {
                    tokens,
                    updated: now,
                };
            }
        }
    }
}
