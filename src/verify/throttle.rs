//! Throttling of cold checks: a token bucket per key id, and one per client
//! source (an IPv4 address or an IPv6 /64).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::TimeDelta;
use foldhash::fast::RandomState;
use tokio::sync::Notify;

use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::source::Source;

const SHARDS: usize = 16;
const MAX_BUCKETS_PER_SHARD: usize = 4096;
/// Checks that may wait at once for a token held by another check of the
/// same key ([`Buckets::try_hold`]); more are refused as before.
pub(crate) const MAX_WAITERS_PER_KEY: usize = 256;

#[derive(Debug, Clone)]
struct Bucket<T> {
    tokens: f64,
    /// Microseconds since the epoch: integer arithmetic on every cold
    /// check instead of `chrono`'s date arithmetic.
    updated: i64,
    tag: T,
    /// Tokens taken by [`Buckets::try_hold`] for checks still in flight:
    /// each comes back (a success) or stays spent (a failure) at its
    /// [`Buckets::release`].
    held: u32,
    /// The checks waiting for a held token (made for the first of them).
    waiters: Option<Arc<Waiters>>,
}

impl<T> Bucket<T> {
    /// Wakes the checks waiting on this bucket (it is being dropped, or
    /// a held token came back or was spent).
    fn wake(&self) {
        if let Some(waiters) = &self.waiters {
            waiters.released.notify_waiters();
        }
    }
}

/// The checks waiting on one bucket for a token that checks in flight
/// hold: woken at each release, and counted (at most
/// [`MAX_WAITERS_PER_KEY`]).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// Woken at each release (and when the bucket is dropped).
    pub(crate) released: Notify,
    /// How many wait ([`Counted`]).
    pub(crate) waiting: AtomicUsize,
}

/// One of the checks a counter counts, up to its cap; dropping it counts
/// it out.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    /// Counts one in, unless `cap` are counted already.
    pub(crate) fn enter(counter: &'a AtomicUsize, cap: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter))
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why [`Buckets::try_hold`] took no token.
pub(crate) enum Short {
    /// None is left, and none is held by a check in flight: wait this long
    /// for the refill.
    Empty(TimeDelta),
    /// None is left, but checks in flight hold some, and one may come
    /// back: `waiters` are woken at each release (and `wait` is when a
    /// token will have refilled, what a refusal would say).
    Held {
        wait: TimeDelta,
        waiters: Arc<Waiters>,
    },
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

/// A token a cold check holds in its source's bucket while in flight
/// ([`hold_source`]). Dropping it releases it: given back if
/// [`SourceHold::succeeded`] was called (the secret proved right, or the
/// check could not be made), else spent (a wrong secret, an unknown id,
/// a check refused or dropped midway).
pub(crate) struct SourceHold {
    sources: Arc<SourceThrottle>,
    source: Source,
    now: i64,
    succeeded: AtomicBool,
}

impl SourceHold {
    /// Gives the token back when released.
    pub(crate) fn succeeded(&self) {
        self.succeeded.store(true, Ordering::Relaxed);
    }
}

impl Drop for SourceHold {
    fn drop(&mut self) {
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        self.sources.release(&self.source, self.now, succeeded);
    }
}

/// Takes a token of `source`'s bucket for a cold check that begins at
/// `now` ([`Buckets::try_hold`]).
pub(crate) fn hold_source(
    sources: &Arc<SourceThrottle>,
    source: Source,
    now: i64,
    may_wait: bool,
) -> Result<SourceHold, Short> {
    sources.try_hold(&source, &(), now, may_wait)?;
    Ok(SourceHold {
        sources: Arc::clone(sources),
        source,
        now,
        succeeded: AtomicBool::new(false),
    })
}

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
        self.take(key, tag, now, false, false)
            .map_err(|short| match short {
                Short::Empty(wait) | Short::Held { wait, .. } => wait,
            })
    }

    /// Takes a token for a check in flight on `key`, to be ended by
    /// [`Buckets::release`] (a success gives it back, a failure spends it).
    /// Without a token: [`Short::Held`] when `may_wait` and other checks
    /// hold some (at most [`MAX_WAITERS_PER_KEY`] wait at once), else
    /// [`Short::Empty`].
    pub(crate) fn try_hold(&self, key: &K, tag: &T, now: i64, may_wait: bool) -> Result<(), Short> {
        self.take(key, tag, now, true, may_wait)
    }

    fn take(&self, key: &K, tag: &T, now: i64, hold: bool, may_wait: bool) -> Result<(), Short> {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A known key: its bucket updated in place (no second lookup, and
        // the tag cloned only if it changed).
        if let Some(b) = map.get_mut(key) {
            let tokens = self.refilled(b, now);
            if let Some(wait) = self.wait(tokens) {
                if may_wait && b.held > 0 {
                    let waiters = b.waiters.get_or_insert_with(Default::default);
                    // The waiter counts itself in ([`Counted`]); this is
                    // the first look.
                    if waiters.waiting.load(Ordering::Acquire) < MAX_WAITERS_PER_KEY {
                        let waiters = Arc::clone(waiters);
                        return Err(Short::Held { wait, waiters });
                    }
                }
                return Err(Short::Empty(wait));
            }
            b.tokens = tokens - 1.0;
            // A check takes with the time it began, which a store read may
            // have made older than the bucket's: its clock never moves back.
            b.updated = b.updated.max(now);
            b.held += u32::from(hold);
            if b.tag != *tag {
                b.tag = tag.clone();
            }
            return Ok(());
        }
        if map.len() >= MAX_BUCKETS_PER_SHARD {
            let burst = self.burst;
            let before = map.len();
            // A dropped bucket wakes its waiters, which find a new one.
            map.retain(|_, b| {
                let keep = self.refilled(b, now) < burst;
                if !keep {
                    b.wake();
                }
                keep
            });
            if map.len() >= MAX_BUCKETS_PER_SHARD {
                if let Some(victim) = map.keys().next().cloned() {
                    if let Some(b) = map.remove(&victim) {
                        b.wake();
                    }
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
            held: u32::from(hold),
            waiters: None,
        };
        map.insert(key.clone(), bucket);
        self.buckets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends a check that [`Buckets::try_hold`] let through: `succeeded`
    /// gives its token back, otherwise it stays spent. Either way the
    /// checks waiting for a held token look again.
    pub(crate) fn release(&self, key: &K, now: i64, succeeded: bool) {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(b) = map.get_mut(key) else { return };
        b.held = b.held.saturating_sub(1);
        if succeeded {
            let tokens = self.refilled(b, now) + 1.0;
            if tokens >= self.burst && b.held == 0 {
                if let Some(b) = map.remove(key) {
                    b.wake();
                }
                self.buckets.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            b.tokens = tokens.min(self.burst);
            // A check releases with the time it began: a later take may
            // have moved the bucket on since, and its refill is counted.
            b.updated = b.updated.max(now);
        }
        b.wake();
    }

    /// Gives back the token of an attempt that succeeded.
    pub(crate) fn refund(&self, key: &K, now: i64) {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get_mut(key) {
            let tokens = self.refilled(b, now) + 1.0;
            if tokens >= self.burst && b.held == 0 {
                map.remove(key);
                self.buckets.fetch_sub(1, Ordering::Relaxed);
            } else {
                b.tokens = tokens.min(self.burst);
                b.updated = b.updated.max(now);
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

    /// Holds a token of key 1's bucket.
    fn hold(b: &Buckets<u32, ()>, now: i64, may_wait: bool) -> Result<(), Short> {
        b.try_hold(&1, &(), now, may_wait)
    }

    #[test]
    fn held_tokens_make_checks_wait_and_failures_spend_them() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let t0 = 0i64;
        let b: Buckets<u32, ()> = Buckets::new(2, TimeDelta::seconds(5));
        assert!(hold(&b, t0, true).is_ok());
        assert!(hold(&b, t0, true).is_ok());
        // Both held by checks in flight: a third may wait, unless it may not.
        let Err(Short::Held { wait, waiters }) = hold(&b, t0, true) else {
            panic!("two tokens are held");
        };
        assert_eq!(wait, TimeDelta::seconds(5));
        assert!(matches!(hold(&b, t0, false), Err(Short::Empty(_))));
        // A release (here a failure) wakes it.
        let mut notified = std::pin::pin!(waiters.released.notified());
        notified.as_mut().enable();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(notified.as_mut().poll(&mut cx).is_pending());
        b.release(&1, t0, false);
        assert!(notified.as_mut().poll(&mut cx).is_ready());
        // One spent, one still held: it would wait again.
        assert!(matches!(hold(&b, t0, true), Err(Short::Held { .. })));
        b.release(&1, t0, false);
        // Both spent by failures: refused, as a bucket always was.
        let Err(Short::Empty(wait)) = hold(&b, t0, true) else {
            panic!("spent, and none held");
        };
        assert_eq!(wait, TimeDelta::seconds(5));
        assert!(hold(&b, t0 + 5_000_000, true).is_ok());
    }

    #[test]
    fn a_success_gives_its_held_token_back() {
        let t0 = 0i64;
        let b: Buckets<u32, ()> = Buckets::new(2, TimeDelta::seconds(5));
        assert!(hold(&b, t0, true).is_ok());
        assert!(hold(&b, t0, true).is_ok());
        b.release(&1, t0, true);
        assert!(hold(&b, t0, false).is_ok());
        assert!(matches!(hold(&b, t0, false), Err(Short::Empty(_))));
        b.release(&1, t0, true);
        b.release(&1, t0, true);
        // Full again and none held: the bucket is gone.
        assert_eq!(b.buckets.load(Ordering::Relaxed), 0);
        assert!(b.peek(&1, t0).is_none());
        // A release of a bucket that is gone changes nothing.
        b.release(&1, t0, false);
        assert_eq!(b.buckets.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn at_most_max_waiters_per_key_wait() {
        let t0 = 0i64;
        let b: Buckets<u32, ()> = Buckets::new(1, TimeDelta::seconds(5));
        assert!(hold(&b, t0, true).is_ok());
        let Err(Short::Held { waiters, .. }) = hold(&b, t0, true) else {
            panic!("a token is held");
        };
        let mut counted: Vec<_> = (0..MAX_WAITERS_PER_KEY)
            .map(|_| Counted::enter(&waiters.waiting, MAX_WAITERS_PER_KEY).expect("fits"))
            .collect();
        assert!(Counted::enter(&waiters.waiting, MAX_WAITERS_PER_KEY).is_none());
        // A full bucket's first look already says so.
        assert!(matches!(hold(&b, t0, true), Err(Short::Empty(_))));
        counted.pop();
        assert!(matches!(hold(&b, t0, true), Err(Short::Held { .. })));
        drop(counted);
        assert_eq!(waiters.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_bucket_dropped_to_make_room_wakes_its_waiters() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let s = |secs: i64| secs * 1_000_000;
        let b: Buckets<u32, ()> = Buckets::new(1, TimeDelta::seconds(5));
        assert!(hold(&b, s(0), true).is_ok());
        let Err(Short::Held { waiters, .. }) = hold(&b, s(0), true) else {
            panic!("a token is held");
        };
        let mut notified = std::pin::pin!(waiters.released.notified());
        notified.as_mut().enable();
        let mut cx = Context::from_waker(Waker::noop());
        // Ten seconds on, key 1's bucket has refilled though its holder
        // hangs: it is full, the kind dropped first when its shard is
        // full. Other keys' buckets, each empty, fill the shards.
        let later = s(10);
        let mut key = 2u32;
        while notified.as_mut().poll(&mut cx).is_pending() {
            // Shards fill unevenly (fuller ones drop other buckets, all
            // empty, in the meantime): key 1's fills within a few times
            // the total.
            assert!(
                (key as usize) < 8 * SHARDS * MAX_BUCKETS_PER_SHARD,
                "key 1's bucket was never dropped"
            );
            assert!(b.try_acquire(&key, &(), later).is_ok());
            key += 1;
        }
        assert!(b.buckets.load(Ordering::Relaxed) <= SHARDS * MAX_BUCKETS_PER_SHARD);
        // The woken check finds a new, full bucket: it takes a token.
        assert!(hold(&b, later, true).is_ok());
        assert!(matches!(hold(&b, later, true), Err(Short::Held { .. })));
    }

    #[test]
    fn a_take_or_release_stamped_earlier_never_moves_the_refill_clock_back() {
        let s = |secs: i64| secs * 1_000_000;
        let b: Buckets<u32, ()> = Buckets::new(3, TimeDelta::seconds(5));
        assert!(b.try_acquire(&1, &(), s(0)).is_ok());
        assert!(b.try_acquire(&1, &(), s(4)).is_ok());
        // A check that began at 0 s and took its token after a store read.
        assert!(b.try_acquire(&1, &(), s(0)).is_ok());
        // 3 - 3 + 0.8 tokens at 4 s: none (counting 0 s to 4 s again gave
        // one more).
        assert!(b.try_acquire(&1, &(), s(4)).is_err());
        let b: Buckets<u32, ()> = Buckets::new(3, TimeDelta::seconds(5));
        for at in [0, 4] {
            assert!(b.try_hold(&1, &(), s(at), false).is_ok());
        }
        assert!(b.try_hold(&1, &(), s(4), false).is_ok());
        // The first check, begun at 0 s, proves right: one token back.
        b.release(&1, s(0), true);
        assert!(b.try_hold(&1, &(), s(4), false).is_ok());
        assert!(b.try_hold(&1, &(), s(4), false).is_err());
    }
}
