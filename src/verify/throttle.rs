//! Throttling of cold checks: a token bucket per key id, and one per client
//! source (an IPv4 address or an IPv6 /64).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::TimeDelta;
use foldhash::fast::RandomState;

use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::source::Source;

const SHARDS: usize = 16;
const MAX_BUCKETS_PER_SHARD: usize = 4096;

#[derive(Debug, Clone)]
struct Bucket<T> {
    tokens: f64,
    /// Microseconds since the epoch: integer arithmetic on every cold
    /// check instead of `chrono`'s date arithmetic.
    updated: i64,
    tag: T,
}

/// Token buckets by key: `burst` at once, then one more per `refill`. A
/// token is taken before each attempt and given back when it succeeded, so
/// only failures use the budget up. Bounded: at most
/// `16 × 4096` buckets; full buckets are dropped first.
type Shard<K, T> = Mutex<HashMap<K, Bucket<T>, RandomState>>;

pub(crate) struct Buckets<K, T> {
    shards: Box<[Shard<K, T>]>,
    /// Buckets in all shards, kept under their shard's lock: when none
    /// exists (no recent failure anywhere), `peek` takes no lock.
    buckets: AtomicUsize,
    burst: f64,
    /// Microseconds per token (at least 1,000).
    refill_us: f64,
    hasher: RandomState,
}

/// Per key id, tagged with whose key it is and of which environment: a
/// throttled id is refused before the store is read, with the same answer
/// and audit owner as after reading it.
pub(crate) type Throttle = Buckets<KeyId, (OwnerId, Environment)>;

/// Per client source, over all key ids: one source cannot spend a whole
/// id's, or the whole server's, argon2 budget.
pub(crate) type SourceThrottle = Buckets<Source, ()>;

impl<K: Hash + Eq + Clone, T: Clone + PartialEq> Buckets<K, T> {
    pub(crate) fn new(burst: u32, refill: TimeDelta) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            buckets: AtomicUsize::new(0),
            burst: f64::from(burst.max(1)),
            refill_us: refill
                .max(TimeDelta::milliseconds(1))
                .num_microseconds()
                .unwrap_or(i64::MAX) as f64,
            hasher: RandomState::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, T> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn refilled(&self, b: &Bucket<T>, now_us: i64) -> f64 {
        let elapsed = now_us.saturating_sub(b.updated).max(0);
        let gained = elapsed as f64 / self.refill_us;
        (b.tokens + gained).min(self.burst)
    }

    /// How long to wait, if `key` is throttled now, and its tag; takes no
    /// token. Asked first, so a throttled flood costs neither argon2 nor
    /// store reads.
    pub(crate) fn peek<Q>(&self, key: &Q, now: i64) -> Option<(TimeDelta, T)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.buckets.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bucket = map.get(key)?;
        let wait = self.wait(self.refilled(bucket, now))?;
        Some((wait, bucket.tag.clone()))
    }

    /// How long until a bucket holding `tokens` has one, if it has none.
    fn wait(&self, tokens: f64) -> Option<TimeDelta> {
        if tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - tokens;
        let wait_us = (missing * self.refill_us).ceil() as i64;
        Some(TimeDelta::microseconds(wait_us.max(1)))
    }

    /// Takes a token for an attempt on `key` (tagged `tag`), or says how
    /// long to wait.
    pub(crate) fn try_acquire(&self, key: &K, tag: &T, now: i64) -> Result<(), TimeDelta> {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A known key: its bucket updated in place (no second lookup, and
        // the tag cloned only if it changed).
        if let Some(b) = map.get_mut(key) {
            let tokens = self.refilled(b, now);
            if let Some(wait) = self.wait(tokens) {
                return Err(wait);
            }
            b.tokens = tokens - 1.0;
            b.updated = now;
            if b.tag != *tag {
                b.tag = tag.clone();
            }
            return Ok(());
        }
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
        // A new bucket is full (`burst` is at least 1): this token is free.
        let bucket = Bucket {
            tokens: self.burst - 1.0,
            updated: now,
            tag: tag.clone(),
        };
        map.insert(key.clone(), bucket);
        self.buckets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back the token of an attempt that succeeded.
    pub(crate) fn refund(&self, key: &K, now: i64) {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get_mut(key) {
            let tokens = self.refilled(b, now) + 1.0;
            if tokens >= self.burst {
                map.remove(key);
                self.buckets.fetch_sub(1, Ordering::Relaxed);
            } else {
                b.tokens = tokens;
                b.updated = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let ip = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(ip("10.0.0.1"), ip("::ffff:10.0.0.1"));
        assert_ne!(ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_ne!(
            ip("::a00:1"),
            ip("10.0.0.1"),
            "IPv4-compatible is not mapped"
        );
    }

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_refill_and_refunds_successes() {
        let t0 = 0i64;
        let b: Buckets<u32, ()> = Buckets::new(2, TimeDelta::seconds(5));
        assert!(b.try_acquire(&1, &(), t0).is_ok());
        assert!(b.try_acquire(&1, &(), t0).is_ok());
        let wait = b.try_acquire(&1, &(), t0).unwrap_err();
        assert_eq!(wait, TimeDelta::seconds(5));
        assert_eq!(b.peek(&1, t0).map(|(w, _)| w), Some(TimeDelta::seconds(5)));
        assert!(b.peek(&2, t0).is_none(), "other keys are not affected");
        b.refund(&1, t0);
        assert!(b.peek(&1, t0).is_none());
        assert!(b.try_acquire(&1, &(), t0).is_ok());
        assert!(b.try_acquire(&1, &(), t0 + 5_000_000).is_ok());
    }
}
