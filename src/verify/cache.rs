//! The verifier's cache: proven keys by id, with a keyed fingerprint of the secret.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, TimeDelta, Utc};
use crossbeam_utils::sync::ShardedLock;
use foldhash::fast::RandomState;

use super::compiled::CompiledKey;
use super::denial::DenialReason;
use crate::hash::{FINGERPRINT_LEN, same_fingerprint};
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};

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

/// What a fingerprint was proven against: a digest of the stored hash
/// (argon2id PHC string) that argon2 accepted the secret for. While the
/// store still holds that hash, the same secret needs no argon2 again.
pub(crate) type HashDigest = [u8; 32];

/// What [`KeyCache::lookup_proof`] found.
pub(crate) enum Lookup {
    /// A fresh entry for this secret: use it.
    Hit(Cached),
    /// An entry for this secret that aged out or was invalidated: the
    /// secret was proven against the stored hash with this digest; read the
    /// store again, and skip argon2 if the hash is unchanged.
    Stale(Proof),
    /// Nothing for this secret (no entry, another environment, or another
    /// secret's fingerprint).
    Miss,
}

/// The proof kept by a stale entry.
pub(crate) struct Proof {
    pub(crate) hash: HashDigest,
    /// The compiled key, to reuse when the record did not change.
    pub(crate) key: Option<Arc<CompiledKey>>,
}

/// An entry's state and environment, in 16 bytes: a live key of its own
/// environment (nearly every entry) is only its `Arc`; anything else is
/// boxed. A cached key is a hot, repeated thing: every byte of the map's
/// slot counts (issue 14).
enum Stored {
    /// A live key, cached under its own environment.
    Live(Arc<CompiledKey>),
    /// A refusal, or a key cached under another environment.
    Other(Box<(Cached, Environment)>),
}

impl Stored {
    fn new(state: Cached, environment: &Environment) -> Self {
        match state {
            Cached::Live(key) if key.environment() == environment => Self::Live(key),
            state => Self::Other(Box::new((state, environment.clone()))),
        }
    }

    /// Whether the key (or session) is of `environment`: a hit for another
    /// environment is a miss, so the store decides, exactly as when cold.
    #[inline]
    fn is_for(&self, environment: &Environment) -> bool {
        match self {
            Self::Live(key) => key.is_environment(environment),
            Self::Other(other) => other.1 == *environment,
        }
    }

    fn state(&self) -> Cached {
        match self {
            Self::Live(key) => Cached::Live(Arc::clone(key)),
            Self::Other(other) => other.0.clone(),
        }
    }

    /// The live key, if the state is one.
    fn key(&self) -> Option<&Arc<CompiledKey>> {
        match self {
            Self::Live(key) => Some(key),
            Self::Other(other) => match &other.0 {
                Cached::Live(key) => Some(key),
                Cached::Dead(..) => None,
            },
        }
    }
}

struct Entry {
    fingerprint: [u8; FINGERPRINT_LEN],
    /// The state, with the environment it was cached for.
    state: Stored,
    /// When the entry was inserted (not when the check that made it began),
    /// in microseconds since the epoch: an integer compare on every hit
    /// instead of `chrono` date arithmetic, and 8 bytes instead of 12.
    cached_at: i64,
    /// The stored hash the fingerprint was proven against (`None` for
    /// sessions, whose secrets are checked by SHA-256 on every miss).
    proof: Option<HashDigest>,
    /// Invalidated: kept only for its proof, never a hit.
    stale: bool,
}

/// Longest `KeyId` that `smol_str` keeps inline, with no shared
/// allocation behind it.
const INLINE_KEY_ID: usize = 23;

/// Longest id kept inline in a map slot (generated ids are 12 bytes).
const INLINE_ID: usize = 22;

/// A key id as the map's key: the bytes inline in the slot for ids of up to
/// [`INLINE_ID`] bytes (every generated id), so a lookup by `&str` compares
/// bytes in the slot it already loaded, with no pointer to a heap string to
/// follow and no `KeyId` to allocate; longer (imported) ids are boxed.
/// 24 bytes, as a `KeyId` is with its heap string.
#[derive(Clone)]
enum SlotId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Boxed(Box<[u8]>),
}

impl SlotId {
    fn new(id: &str) -> Self {
        let b = id.as_bytes();
        if b.len() <= INLINE_ID {
            let mut bytes = [0u8; INLINE_ID];
            bytes[..b.len()].copy_from_slice(b);
            // `b.len() <= 22`, so the cast is exact.
            Self::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            Self::Boxed(b.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Self::Boxed(b) => b,
        }
    }
}

// Hash and equality are those of the bytes, so the map can be asked with
// a borrowed `&[u8]` (the `Borrow` contract).
impl Hash for SlotId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for SlotId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SlotId {}

impl Borrow<[u8]> for SlotId {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// One shard, alone on its cache lines (its table's header is written by
/// an insert, and would otherwise share a line with a neighbour's).
///
/// Its lock is a [`ShardedLock`]: a read lock writes one of eight lock
/// words, picked by the thread's index in crossbeam's process-wide
/// registry (threads whose indices are equal modulo 8 share one), so two
/// threads checking different keys of one shard no longer write the same
/// lock word; with one `RwLock` per shard, they moved it between cores on
/// most hits (issue 14, the 2-thread speed-up). Two threads checking the
/// same key still share its `Arc` count. A write (an insert after argon2,
/// an invalidation) takes all eight; the eight 128-byte lock words make a
/// cache's 64 shards about 64 KiB instead of 8 KiB.
#[repr(align(128))]
struct Shard(ShardedLock<HashMap<SlotId, Entry, RandomState>>);

impl std::ops::Deref for Shard {
    type Target = ShardedLock<HashMap<SlotId, Entry, RandomState>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A bounded, sharded map from key id to proven state.
///
/// Hits take one shard's read lock. An invalidation bumps an epoch under the
/// shard's write lock; an insert made by a check that read the store before
/// that bump is dropped, so a check that started after an invalidation
/// returned can never see the old state.
pub(crate) struct KeyCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    /// The TTL in microseconds (`i64::MAX` for one too long to count).
    ttl_us: i64,
    epoch: AtomicU64,
    hasher: RandomState,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize, ttl: TimeDelta) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard(ShardedLock::new(HashMap::default())))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            ttl_us: ttl.num_microseconds().unwrap_or(i64::MAX),
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
        now_us: i64,
    ) -> Option<Cached> {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(id.as_bytes())?;
        if !self.is_fresh(entry, now_us) || !entry.state.is_for(environment) {
            return None;
        }
        if same_fingerprint(&entry.fingerprint, &fingerprint()) {
            Some(entry.state.state())
        } else {
            None
        }
    }

    /// Whether the entry of `id`, fresh or not, was cached for `environment`
    /// with `fingerprint`: the secret was proven in this process before
    /// (for sessions, which keep no proof of a stored hash, the entry is
    /// that proof). Such a check skips the throttles, as a key's proof does.
    pub(crate) fn proven(
        &self,
        id: &str,
        environment: &Environment,
        fingerprint: &[u8; FINGERPRINT_LEN],
    ) -> bool {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(id.as_bytes()).is_some_and(|entry| {
            entry.state.is_for(environment) && same_fingerprint(&entry.fingerprint, fingerprint)
        })
    }

    /// Whether `entry` is fresh at `now` (microseconds since the epoch).
    fn is_fresh(&self, entry: &Entry, now: i64) -> bool {
        // A clock that went back is not fresh.
        !entry.stale && now >= entry.cached_at && now.saturating_sub(entry.cached_at) < self.ttl_us
    }

    /// Like [`KeyCache::lookup`], and on an entry that is no longer fresh
    /// but whose fingerprint matches, the proof it keeps: the caller then
    /// re-reads the store but needs no argon2 while the stored hash is
    /// unchanged (issue 10: argon2 once per secret, not once per TTL).
    #[inline]
    pub(crate) fn lookup_proof(
        &self,
        id: &str,
        environment: &Environment,
        fingerprint: impl FnOnce() -> [u8; FINGERPRINT_LEN],
        now_us: i64,
    ) -> Lookup {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = shard.get(id.as_bytes()) else {
            return Lookup::Miss;
        };
        if !entry.state.is_for(environment) || !same_fingerprint(&entry.fingerprint, &fingerprint())
        {
            return Lookup::Miss;
        }
        if self.is_fresh(entry, now_us) {
            return Lookup::Hit(entry.state.state());
        }
        match entry.proof {
            Some(hash) => Lookup::Stale(Proof {
                hash,
                key: entry.state.key().cloned(),
            }),
            None => Lookup::Miss,
        }
    }

    /// Forgets the entry of `id` if it still holds `fingerprint` (a proof
    /// that no longer holds: the stored hash changed and the secret failed).
    pub(crate) fn forget_proof(&self, id: &str, fingerprint: &[u8; FINGERPRINT_LEN]) -> bool {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard
            .get(id.as_bytes())
            .is_some_and(|e| same_fingerprint(&e.fingerprint, fingerprint))
        {
            shard.remove(id.as_bytes());
            return true;
        }
        false
    }

    /// The epoch to pass to [`KeyCache::insert`]; read it before reading the store.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a proven state, unless an invalidation happened since
    /// `seen_epoch`. `now` must be read when inserting, not when the check
    /// began: an entry stamped with the start of a check that waited longer
    /// than the TTL (for the store, for an argon2 slot) would be born
    /// expired, and under a backlog every check would run argon2 again.
    pub(crate) fn insert(
        &self,
        id: &KeyId,
        environment: &Environment,
        fingerprint: [u8; FINGERPRINT_LEN],
        state: Cached,
        now: DateTime<Utc>,
        seen_epoch: u64,
    ) {
        self.insert_proven(id, environment, fingerprint, state, None, now, seen_epoch);
    }

    /// [`KeyCache::insert`], remembering the stored hash the secret was
    /// proven against.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_proven(
        &self,
        id: &KeyId,
        environment: &Environment,
        fingerprint: [u8; FINGERPRINT_LEN],
        state: Cached,
        proof: Option<HashDigest>,
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
        if shard.len() >= self.per_shard && !shard.contains_key(id.as_str().as_bytes()) {
            // Entries past their TTL go first (their proofs with them).
            let now = now.timestamp_micros();
            shard.retain(|_, e| self.is_fresh(e, now));
            if shard.len() >= self.per_shard {
                // Still full: evict an arbitrary entry (hash order is random per process).
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            SlotId::new(id.as_str()),
            Entry {
                fingerprint,
                state: Stored::new(state, environment),
                cached_at: now.timestamp_micros(),
                proof,
                stale: false,
            },
        );
    }

    /// Stops trusting a key at once: its next check reads the store. The
    /// entry stays only as a proof (see [`KeyCache::lookup_proof`]), so a
    /// change that kept the stored hash (edit, revoke, suspend, usage)
    /// costs a store read, not argon2.
    pub(crate) fn invalidate(&self, id: &str) {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entry) = shard.get_mut(id.as_bytes()) {
            entry.stale = true;
        }
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
            shard.retain(|_, e| e.state.key().is_none_or(|k| k.id() != key_id));
        }
    }

    /// Forgets a key at once, its proof included.
    pub(crate) fn remove(&self, id: &str) {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        shard.remove(id.as_bytes());
    }

    /// Stops trusting every entry at once (proofs are kept, as by
    /// [`KeyCache::invalidate`]).
    pub(crate) fn clear(&self) {
        let mut guards: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.write().unwrap_or_else(PoisonError::into_inner))
            .collect();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for g in &mut guards {
            g.values_mut().for_each(|e| e.stale = true);
        }
    }

    /// Number of entries that would be hits (fresh, not invalidated).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .filter(|e| !e.stale)
                    .count()
            })
            .sum()
    }
}

/// Most ids one shard of [`UnknownIds`] remembers.
const UNKNOWN_PER_SHARD: usize = 1024;

/// Key ids the store did not have, remembered briefly, so a flood that
/// repeats unknown ids does not reach the store each time. Bounded: at most
/// `64 × 1024` ids; a full shard drops its expired entries, then an
/// arbitrary one.
/// When each id was found missing, in microseconds since the epoch.
type UnknownShard = RwLock<HashMap<KeyId, i64, RandomState>>;

pub(crate) struct UnknownIds {
    shards: Box<[UnknownShard]>,
    /// The TTL in microseconds (`i64::MAX` for one too long to count).
    ttl_us: i64,
    hasher: RandomState,
}

impl UnknownIds {
    pub(crate) fn new(ttl: TimeDelta) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            ttl_us: ttl.num_microseconds().unwrap_or(i64::MAX),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, id: &str) -> &UnknownShard {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// Whether `id` was found missing less than the TTL ago (`Some`), with
    /// the id as remembered when it is kept inline: the refusal names it
    /// with this copy rather than making a [`KeyId`] of `id` again (issue
    /// 14: that was a tenth of an unknown id's refusal). A longer
    /// (imported) id is not handed out (`Some(None)`): its copy would
    /// share the remembered one's reference count, a line every thread
    /// flooding that id would write; the refusal makes its own.
    #[inline]
    pub(crate) fn remembered(&self, id: &str, now: i64) -> Option<Option<KeyId>> {
        if self.ttl_us <= 0 {
            return None;
        }
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get_key_value(id) {
            Some((key_id, at)) if self.holds(*at, now) => {
                Some((key_id.as_str().len() <= INLINE_KEY_ID).then(|| key_id.clone()))
            }
            _ => None,
        }
    }

    /// Remembers that the store had no key `id` at `now`, unless an id was
    /// forgotten (a key created or imported) since `seen_epoch`.
    pub(crate) fn insert(&self, id: &KeyId, now: DateTime<Utc>, cache: &KeyCache, seen_epoch: u64) {
        if self.ttl_us <= 0 {
            return;
        }
        let now = now.timestamp_micros();
        let mut shard = self
            .shard(id.as_str())
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.epoch() != seen_epoch {
            return;
        }
        if shard.len() >= UNKNOWN_PER_SHARD && !shard.contains_key(id) {
            shard.retain(|_, at| self.holds(*at, now));
            if shard.len() >= UNKNOWN_PER_SHARD {
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(id.clone(), now);
    }

    /// Whether an id found missing at `at` is still remembered at `now`
    /// (a clock that went back forgets it).
    fn holds(&self, at: i64, now: i64) -> bool {
        now >= at && now.saturating_sub(at) < self.ttl_us
    }

    /// Forgets `id` (a key with this id now exists).
    pub(crate) fn forget(&self, id: &str) {
        self.shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Forgets every id.
    pub(crate) fn clear(&self) {
        for shard in &*self.shards {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    /// The unknown-id memory gives back the id it holds (the refusal's
    /// `key_id`; only an inline one) within the TTL, and nothing for another id, past the TTL,
    /// before it was found missing, after `forget`, or with a TTL of 0.
    #[test]
    fn the_unknown_id_memory_gives_back_its_id_within_the_ttl() {
        let cache = KeyCache::new(100, TimeDelta::seconds(30));
        let unknown = UnknownIds::new(TimeDelta::seconds(60));
        let us = |secs: i64| t(secs).timestamp_micros();
        for id in ["Q2x8bV0aP1rT", &"y".repeat(INLINE_KEY_ID), &"z".repeat(64)] {
            let key_id = KeyId::new(id).unwrap();
            // An inline id is handed out; a longer one is only remembered.
            let handed = (id.len() <= INLINE_KEY_ID).then(|| key_id.clone());
            assert_eq!(unknown.remembered(id, us(0)), None);
            unknown.insert(&key_id, t(0), &cache, cache.epoch());
            assert_eq!(unknown.remembered(id, us(0)), Some(handed.clone()));
            assert_eq!(unknown.remembered(id, us(59)), Some(handed.clone()));
            assert_eq!(unknown.remembered(id, us(60)), None, "past the TTL");
            assert_eq!(unknown.remembered(id, us(-1)), None, "a clock gone back");
            assert_eq!(unknown.remembered("Q2x8bV0aP1rU", us(1)), None);
            unknown.forget(id);
            assert_eq!(unknown.remembered(id, us(1)), None, "forgotten");
        }
        let off = UnknownIds::new(TimeDelta::zero());
        let key_id = KeyId::new("Q2x8bV0aP1rT").unwrap();
        off.insert(&key_id, t(0), &cache, cache.epoch());
        assert_eq!(off.remembered("Q2x8bV0aP1rT", us(0)), None);
    }

    #[test]
    fn inline_and_boxed_ids_are_found_by_str_and_only_by_their_own() {
        let cache = KeyCache::new(100, TimeDelta::seconds(30));
        let env = Environment::new("live").unwrap();
        let short = "Q2x8bV0aP1rT";
        let edge = "a".repeat(INLINE_ID);
        let long = "b".repeat(INLINE_ID + 1);
        for (i, id) in [short, edge.as_str(), long.as_str()]
            .into_iter()
            .enumerate()
        {
            let reason = if i == 0 {
                DenialReason::Revoked
            } else {
                DenialReason::Suspended
            };
            cache.insert(
                &KeyId::new(id).unwrap(),
                &env,
                [i as u8; FINGERPRINT_LEN],
                Cached::Dead(reason, None),
                t(0),
                cache.epoch(),
            );
        }
        assert_eq!(cache.len(), 3);
        for (i, id) in [short, edge.as_str(), long.as_str()]
            .into_iter()
            .enumerate()
        {
            let hit = cache.lookup(
                id,
                &env,
                || [i as u8; FINGERPRINT_LEN],
                t(1).timestamp_micros(),
            );
            assert!(matches!(hit, Some(Cached::Dead(..))), "{id}");
            // Another secret's fingerprint is a miss.
            let other = cache.lookup(id, &env, || [9; FINGERPRINT_LEN], t(1).timestamp_micros());
            assert!(other.is_none(), "{id}");
        }
        // A prefix or an extension of a cached id is another id.
        for id in [
            &short[..11],
            "Q2x8bV0aP1rTx",
            &edge[..INLINE_ID - 1],
            &long[1..],
        ] {
            assert!(
                cache
                    .lookup(id, &env, || [0; FINGERPRINT_LEN], t(1).timestamp_micros())
                    .is_none()
            );
        }
        cache.remove(&long);
        cache.remove(short);
        assert_eq!(cache.len(), 1);
    }

    /// An invalidation made on one thread is seen by the very next lookup
    /// of every other thread: a write takes all of the shard's per-thread
    /// read lock words (`ShardedLock`), so no reader goes on reading the
    /// entry through its own word once `invalidate` has returned.
    #[test]
    fn an_invalidation_is_seen_by_every_threads_next_lookup() {
        use std::sync::Barrier;
        use std::sync::atomic::AtomicBool;

        const READERS: usize = 4;
        let cache = KeyCache::new(100, TimeDelta::seconds(30));
        let env = Environment::new("live").unwrap();
        let id = "Q2x8bV0aP1rT";
        let now = t(1).timestamp_micros();
        let fingerprint = || [7; FINGERPRINT_LEN];
        cache.insert(
            &KeyId::new(id).unwrap(),
            &env,
            fingerprint(),
            Cached::Dead(DenialReason::Revoked, None),
            t(0),
            cache.epoch(),
        );
        let invalidated = AtomicBool::new(false);
        let reading = Barrier::new(READERS + 1);
        std::thread::scope(|s| {
            for _ in 0..READERS {
                s.spawn(|| {
                    assert!(cache.lookup(id, &env, fingerprint, now).is_some());
                    reading.wait();
                    loop {
                        let after = invalidated.load(Ordering::Acquire);
                        let hit = cache.lookup(id, &env, fingerprint, now).is_some();
                        if after {
                            assert!(!hit, "a hit after invalidate returned");
                            break;
                        }
                    }
                });
            }
            reading.wait();
            cache.invalidate(id);
            invalidated.store(true, Ordering::Release);
        });
    }

    #[test]
    fn each_shard_has_its_own_cache_lines() {
        assert_eq!(std::mem::align_of::<Shard>(), 128);
        assert!(std::mem::size_of::<Shard>() % 128 == 0);
        assert_eq!(std::mem::size_of::<SlotId>(), 24);
    }
}
