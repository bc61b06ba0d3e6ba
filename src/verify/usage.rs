//! Usage tracking: `last_used_at` / `last_used_ip`, coalesced so a busy key
//! costs at most one store write per interval and a check never waits on it.
//!
//! Each key the verifier has proven gets one [`UsageCell`], shared by every
//! compiled copy of the key (it outlives cache entries). A successful check
//! calls [`UsageCell::touch`]: it updates the in-memory last use at most once
//! per second (so the hit path mostly only reads the cell's atomics) and says
//! whether a store write is due (the interval passed since the last one).
//! [`UsageTracker::pending`] hands out the uses not yet written, for flushing
//! on shutdown.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use foldhash::fast::RandomState;

use crate::ids::KeyId;
use crate::ids::OwnerId;

const SHARDS: usize = 16;
const NEVER: i64 = i64::MIN;
/// `first_unwritten` when every use was written (so `fetch_min` starts a window).
const NONE_PENDING: i64 = i64::MAX;

/// A use to write to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageWrite {
    pub(crate) id: KeyId,
    pub(crate) owner: OwnerId,
    /// The last use.
    pub(crate) at: DateTime<Utc>,
    /// Its client address.
    pub(crate) ip: Option<IpAddr>,
    /// The first use not yet written (start of the window this write covers).
    pub(crate) since: DateTime<Utc>,
}

/// The usage state of one key.
#[derive(Debug)]
pub(crate) struct UsageCell {
    id: KeyId,
    owner: OwnerId,
    /// Last use seen, in microseconds since the epoch.
    last_used: AtomicI64,
    /// First use since the last write, in microseconds (`NONE_PENDING`: none).
    first_unwritten: AtomicI64,
    /// When the last write was started, in microseconds.
    last_write_started: AtomicI64,
    /// The last use that was written (or handed out to be written).
    written_use: AtomicI64,
    ip: Mutex<Option<IpAddr>>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl UsageCell {
    fn new(id: KeyId, owner: OwnerId) -> Self {
        Self {
            id,
            owner,
            last_used: AtomicI64::new(NEVER),
            first_unwritten: AtomicI64::new(NONE_PENDING),
            last_write_started: AtomicI64::new(NEVER),
            written_use: AtomicI64::new(NEVER),
            ip: Mutex::new(None),
        }
    }

    /// Notes a successful use; returns the write to make when one is due
    /// ([`UsageCell::note`], then [`UsageCell::take`]).
    #[cfg(test)]
    pub(crate) fn touch(
        &self,
        now: DateTime<Utc>,
        ip: Option<IpAddr>,
        interval: TimeDelta,
    ) -> Option<UsageWrite> {
        if self.note(now, ip, interval) {
            self.take()
        } else {
            None
        }
    }

    /// Notes a successful use; `true` when a store write is due and this
    /// caller won the right to make it ([`UsageCell::take`] then gives the
    /// write; a caller that cannot write leaves the use pending for the
    /// next flush).
    #[inline]
    pub(crate) fn note(&self, now: DateTime<Utc>, ip: Option<IpAddr>, interval: TimeDelta) -> bool {
        let now_us = micros(now);
        let last = self.last_used.load(Ordering::Relaxed);
        // At most one update per second: the hit path of a busy key only reads.
        if last == NEVER || last.div_euclid(1_000_000) < now_us.div_euclid(1_000_000) {
            if self.last_used.fetch_max(now_us, Ordering::Relaxed) < now_us {
                *self.ip.lock().unwrap_or_else(PoisonError::into_inner) = ip;
            }
            self.first_unwritten.fetch_min(now_us, Ordering::Relaxed);
        }
        let started = self.last_write_started.load(Ordering::Relaxed);
        let due = started == NEVER
            || now_us.saturating_sub(started) >= interval.num_microseconds().unwrap_or(i64::MAX);
        if !due {
            return false;
        }
        // One caller wins the right to write for this interval.
        self.last_write_started
            .compare_exchange(started, now_us, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Until when (microseconds since the epoch) [`UsageCell::note`]
    /// would change nothing and find no write due: the end of the second of
    /// the last use noted, or the time the next write is due, whichever
    /// comes first; `i64::MIN` when it would change something at once.
    /// Both bounds only move forward, so a key may skip the cell until then
    /// (the hit path then reads nothing of the cell: issue 14, fewer
    /// pointer hops, and no shared line touched).
    pub(crate) fn quiet_until(&self, interval: TimeDelta) -> i64 {
        let last = self.last_used.load(Ordering::Relaxed);
        let started = self.last_write_started.load(Ordering::Relaxed);
        if last == NEVER || started == NEVER {
            return i64::MIN;
        }
        let next_second = last
            .div_euclid(1_000_000)
            .saturating_add(1)
            .saturating_mul(1_000_000);
        let due = started.saturating_add(interval.num_microseconds().unwrap_or(i64::MAX));
        next_second.min(due)
    }

    /// The unwritten use, marked as written; `None` when there is none.
    pub(crate) fn take(&self) -> Option<UsageWrite> {
        let last = self.last_used.load(Ordering::Relaxed);
        let written = self.written_use.fetch_max(last, Ordering::Relaxed);
        if last == NEVER || written >= last {
            return None;
        }
        let since = self.first_unwritten.swap(NONE_PENDING, Ordering::Relaxed);
        let ip = *self.ip.lock().unwrap_or_else(PoisonError::into_inner);
        Some(UsageWrite {
            id: self.id.clone(),
            owner: self.owner.clone(),
            at: from_micros(last),
            ip,
            since: from_micros(since.min(last)),
        })
    }
}

type Shard = Mutex<HashMap<KeyId, Arc<UsageCell>, RandomState>>;

/// The usage cells of every key proven in this process.
pub(crate) struct UsageTracker {
    shards: Box<[Shard]>,
    hasher: RandomState,
    pub(crate) interval: TimeDelta,
}

impl UsageTracker {
    pub(crate) fn new(interval: TimeDelta) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
            interval,
        }
    }

    /// The cell of this key (created on first use). Called on the cold path only.
    pub(crate) fn cell(&self, id: &KeyId, owner: &OwnerId) -> Arc<UsageCell> {
        let shard = &self.shards[(self.hasher.hash_one(id.as_str()) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(id.clone())
                .or_insert_with(|| Arc::new(UsageCell::new(id.clone(), owner.clone()))),
        )
    }

    /// Every use not yet written, marked as written; cells no longer used
    /// by any cached key and fully written are dropped.
    pub(crate) fn pending(&self) -> Vec<UsageWrite> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, cell| {
                if let Some(w) = cell.take() {
                    out.push(w);
                }
                Arc::strong_count(cell) > 1
            });
        }
        out
    }

    /// Puts back a use whose store write failed, so the next flush retries it.
    pub(crate) fn restore(&self, w: &UsageWrite) {
        let cell = self.cell(&w.id, &w.owner);
        let at = micros(w.at);
        cell.last_used.fetch_max(at, Ordering::Relaxed);
        cell.written_use.fetch_min(at - 1, Ordering::Relaxed);
        cell.first_unwritten
            .fetch_min(micros(w.since), Ordering::Relaxed);
        let mut ip = cell.ip.lock().unwrap_or_else(PoisonError::into_inner);
        if ip.is_none() {
            *ip = w.ip;
        }
    }

    /// Forgets a key's usage state (deleted keys).
    pub(crate) fn forget(&self, id: &KeyId) {
        let shard = &self.shards[(self.hasher.hash_one(id.as_str()) as usize) % SHARDS];
        shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn one_write_per_interval_and_the_trailing_use_is_pending() {
        let tracker = UsageTracker::new(TimeDelta::seconds(60));
        let cell = tracker.cell(&KeyId::new("abc").unwrap(), &OwnerId::new("o").unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = cell.touch(t(0), Some(ip), tracker.interval).unwrap();
        assert_eq!((first.at, first.ip), (t(0), Some(ip)));
        for s in 1..60 {
            assert!(cell.touch(t(s), None, tracker.interval).is_none());
        }
        // The uses of seconds 1..59 are not lost: a flush writes the last one.
        let pending = tracker.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].at, pending[0].since), (t(59), t(1)));
        assert!(tracker.pending().is_empty(), "taken once");
        let next = cell.touch(t(60), None, tracker.interval).unwrap();
        assert_eq!(next.at, t(60));
    }

    #[test]
    fn a_cell_is_quiet_until_the_next_second_or_the_next_write() {
        let tracker = UsageTracker::new(TimeDelta::seconds(60));
        let cell = tracker.cell(&KeyId::new("abc").unwrap(), &OwnerId::new("o").unwrap());
        assert_eq!(cell.quiet_until(tracker.interval), i64::MIN, "never used");
        let at = |secs: i64, micros: i64| t(secs) + TimeDelta::microseconds(micros);
        assert!(
            cell.note(at(0, 250_000), None, tracker.interval),
            "first write due"
        );
        let quiet = cell.quiet_until(tracker.interval);
        assert_eq!(quiet, micros(t(1)), "the end of the second of the last use");
        // Nothing changes before then: no update, no write due.
        assert!(!cell.note(at(0, 999_999), None, tracker.interval));
        assert_eq!(cell.quiet_until(tracker.interval), quiet);
        // The next second is noted.
        assert!(!cell.note(t(1), None, tracker.interval));
        assert_eq!(cell.quiet_until(tracker.interval), micros(t(2)));
        // Near the next write, the write bounds the quiet time.
        assert!(!cell.note(at(59, 900_000), None, tracker.interval));
        assert_eq!(cell.quiet_until(tracker.interval), micros(t(60)));
        assert!(!cell.note(at(60, 100_000), None, tracker.interval));
        assert_eq!(
            cell.quiet_until(tracker.interval),
            micros(at(60, 250_000)),
            "the write is due 60 s after the last one started"
        );
        assert!(cell.note(at(60, 250_000), None, tracker.interval));
    }

    #[test]
    fn cells_without_cached_keys_are_dropped_once_written() {
        let tracker = UsageTracker::new(TimeDelta::seconds(60));
        let id = KeyId::new("abc").unwrap();
        let owner = OwnerId::new("o").unwrap();
        let cell = tracker.cell(&id, &owner);
        cell.touch(t(0), None, tracker.interval);
        cell.touch(t(5), None, tracker.interval);
        drop(cell);
        assert_eq!(tracker.pending().len(), 1);
        let fresh = tracker.cell(&id, &owner);
        assert!(
            fresh.touch(t(6), None, tracker.interval).is_some(),
            "a new cell writes at once"
        );
    }
}
