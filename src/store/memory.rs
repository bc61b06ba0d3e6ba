//! An in-memory store: for tests, examples and single-process deployments
//! that can afford to lose their keys on restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use foldhash::fast::RandomState;

use super::compact::CompactRecord;
use super::memory_usage::UsageState;
use super::{KeyStore, ListQuery, QuotaCheck};
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::key::KeyRecord;
use crate::session::{SessionCap, SessionRecord};
use crate::store::SessionStore;
use crate::store::StoreError;
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue,
};

const SHARDS: usize = 32;

/// A [`KeyStore`] in memory.
///
/// Reads take only the read lock of one of 32 shards, so lookups of
/// different keys never wait for each other. Inserts and deletes also take an
/// owner index lock, which makes the quota check and the insert one atomic step.
/// Records are kept packed (their strings and lists in one allocation), so a
/// million keys fit in a few hundred megabytes.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use keyward::{KeyId, KeyStore, MemoryStore};
/// let store = MemoryStore::new();
/// assert!(store.get(&KeyId::new("nosuchkey").unwrap()).await.unwrap().is_none());
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<RwLock<HashMap<KeyId, CompactRecord, RandomState>>>,
    by_owner: Mutex<Index>,
    hasher: RandomState,
    sessions: RwLock<SessionMap>,
    pub(super) trusted: Mutex<super::memory_trusted::TrustTables>,
}

/// Sessions by id, and the ids of each key's sessions (to count, end and
/// find the owner of one key's sessions without a scan).
#[derive(Debug, Default)]
struct SessionMap {
    by_id: HashMap<KeyId, SessionRecord, RandomState>,
    by_key: HashMap<KeyId, HashSet<KeyId, RandomState>, RandomState>,
}

impl SessionMap {
    fn of_key<'a>(&'a self, key_id: &KeyId) -> impl Iterator<Item = &'a SessionRecord> + 'a {
        self.by_key
            .get(key_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }
}

/// The owner index and the ids of deleted keys, behind one lock so that
/// inserts check quota and tombstones atomically.
#[derive(Debug, Default)]
struct Index {
    owners: HashMap<OwnerId, BTreeSet<KeyId>, RandomState>,
    deleted: HashSet<KeyId, RandomState>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            by_owner: Mutex::new(Index::default()),
            hasher: RandomState::default(),
            sessions: RwLock::new(SessionMap::default()),
            trusted: Mutex::new(Default::default()),
        }
    }

    pub(super) fn shard(&self, id: &KeyId) -> &RwLock<HashMap<KeyId, CompactRecord, RandomState>> {
        &self.shards[(self.hasher.hash_one(id.as_str()) as usize) % SHARDS]
    }

    /// Number of stored records (all statuses).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_sync(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|packed| packed.decode(id))
            .transpose()
    }

    /// The records of `ids` that still exist, in that order.
    fn records<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a KeyId>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.get_sync(id)? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

impl KeyStore for MemoryStore {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        let mut index = self.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
        if index.deleted.contains(&record.id) {
            return Err(StoreError::DuplicateId(record.id.clone()));
        }
        if let Some(q) = quota {
            let live = match index.owners.get(&record.owner) {
                Some(ids) => self
                    .records(ids)?
                    .iter()
                    .filter(|r| r.environment == record.environment && q.counts(r))
                    .count(),
                None => 0,
            };
            if live >= q.max_live as usize {
                return Err(StoreError::QuotaExceeded { limit: q.max_live });
            }
        }
        let packed = CompactRecord::encode(record)?;
        {
            let mut shard = self
                .shard(&record.id)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if shard.contains_key(&record.id) {
                return Err(StoreError::DuplicateId(record.id.clone()));
            }
            shard.insert(record.id.clone(), packed);
        }
        index
            .owners
            .entry(record.owner.clone())
            .or_default()
            .insert(record.id.clone());
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.get_sync(id)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let ids: Vec<KeyId> = {
            let index = self.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
            match index.owners.get(&query.owner) {
                None => return Ok(Vec::new()),
                Some(ids) => match &query.after {
                    Some(after) => ids
                        .range::<KeyId, _>((
                            std::ops::Bound::Excluded(after),
                            std::ops::Bound::Unbounded,
                        ))
                        .cloned()
                        .collect(),
                    None => ids.iter().cloned().collect(),
                },
            }
        };
        let mut out = Vec::new();
        for id in &ids {
            if out.len() >= query.limit {
                break;
            }
            if let Some(r) = self.get_sync(id)? {
                if query.matches(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        let ids: Vec<KeyId> = {
            let index = self.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
            match index.owners.get(&query.owner) {
                None => return Ok(0),
                Some(ids) => ids.iter().cloned().collect(),
            }
        };
        let mut n = 0u64;
        for id in &ids {
            if let Some(r) = self.get_sync(id)? {
                if query.matches_filters(&r) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        let mut packed = CompactRecord::encode(record)?;
        let mut shard = self
            .shard(&record.id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let stored = shard
            .get_mut(&record.id)
            .ok_or_else(|| StoreError::NotFound(record.id.clone()))?;
        if stored.generation != expected_generation {
            return Err(StoreError::Conflict {
                id: record.id.clone(),
                expected: expected_generation,
                found: stored.generation,
            });
        }
        packed.last_used_at = stored.last_used_at;
        packed.last_used_ip = stored.last_used_ip;
        packed.usage = UsageState::merged(stored.usage.as_deref(), &record.usage);
        *stored = packed;
        Ok(())
    }

    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        let mut index = self.by_owner.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        // The index is keyed by owner; find the id under its owner (or, for
        // a record whose owner does not decode, under any owner).
        let owner = removed.owner().and_then(|o| OwnerId::new(o).ok());
        let emptied = match owner.as_ref().and_then(|o| index.owners.get_mut(o)) {
            Some(ids) => {
                ids.remove(id);
                ids.is_empty().then(|| owner.clone()).flatten()
            }
            None => {
                index.owners.values_mut().for_each(|ids| {
                    ids.remove(id);
                });
                None
            }
        };
        if let Some(owner) = emptied {
            index.owners.remove(&owner);
        }
        index.deleted.insert(id.clone());
        Ok(())
    }

    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stored) = shard.get_mut(id) {
            if stored.last_used_at.is_none_or(|t| t <= at) {
                stored.last_used_at = Some(at);
                stored.last_used_ip = ip;
            }
        }
        Ok(())
    }

    async fn lease_credits(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> Result<Option<CreditGrant>, StoreError> {
        self.lease_credits_sync(id, want, refill)
    }

    async fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> Result<(), StoreError> {
        self.settle_credits_sync(id, returned, spent)
    }

    async fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Option<Credits>, StoreError> {
        self.change_credits_sync(id, change)
    }

    async fn lease_rate(&self, id: &KeyId, lease: &RateLease) -> Result<RateGrant, StoreError> {
        self.lease_rate_sync(id, lease)
    }

    async fn return_rate(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> Result<(), StoreError> {
        self.return_rate_sync(id, name, tokens, interval_us, lease)
    }

    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut due: Vec<(DateTime<Utc>, KeyId)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (id, packed) in shard.iter() {
                // A cheap necessary condition first; the rule itself on the
                // rebuilt record.
                let Some(expires) = packed.expires_at else {
                    continue;
                };
                if expires <= now || expires > until || packed.reminded_at.is_some() {
                    continue;
                }
                if super::due_for_reminder(&packed.decode(id)?, now, until) {
                    due.push((expires, id.clone()));
                }
            }
        }
        due.sort();
        let mut taken = Vec::new();
        for (_, id) in due {
            if taken.len() >= limit {
                break;
            }
            // Re-checked under the write lock: a concurrent caller may have
            // taken it since the scan.
            let mut shard = self
                .shard(&id)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(packed) = shard.get_mut(&id) {
                let mut r = packed.decode(&id)?;
                if super::due_for_reminder(&r, now, until) {
                    r.reminded_at = Some(now);
                    packed.reminded_at = Some(now);
                    taken.push(r);
                }
            }
        }
        Ok(taken)
    }
}

/// Sessions in one map behind one lock: they are few and short-lived.
impl SessionStore for MemoryStore {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if sessions.by_id.contains_key(&record.id) {
            return Err(StoreError::DuplicateId(record.id.clone()));
        }
        if let Some(cap) = cap {
            let live = sessions
                .of_key(&record.key_id)
                .filter(|s| !s.revoked && s.expires_at > cap.now)
                .count();
            if live >= cap.max_live as usize {
                return Err(StoreError::TooManySessions {
                    key_id: record.key_id.clone(),
                    limit: cap.max_live,
                });
            }
        }
        sessions
            .by_key
            .entry(record.key_id.clone())
            .or_default()
            .insert(record.id.clone());
        sessions.by_id.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(id)
            .cloned())
    }

    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        Ok(self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .of_key(key_id)
            .next()
            .map(|s| s.owner.clone()))
    }

    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        let mut guard = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let sessions = &mut *guard;
        let mut ended = 0;
        for id in sessions.by_key.get(key_id).into_iter().flatten() {
            if let Some(s) = sessions.by_id.get_mut(id) {
                if !s.revoked {
                    s.revoked = true;
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut guard = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let sessions = &mut *guard;
        let before = sessions.by_id.len();
        let by_key = &mut sessions.by_key;
        sessions.by_id.retain(|id, s| {
            let keep = s.expires_at > now;
            if !keep {
                if let Some(ids) = by_key.get_mut(&s.key_id) {
                    ids.remove(id);
                    if ids.is_empty() {
                        by_key.remove(&s.key_id);
                    }
                }
            }
            keep
        });
        Ok((before - sessions.by_id.len()) as u64)
    }
}
