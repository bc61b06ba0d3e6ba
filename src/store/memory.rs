//! An in-memory store: for tests, examples and single-process deployments
//! that can afford to lose their keys on restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use foldhash::fast::RandomState;

use super::{KeyStore, ListQuery, QuotaCheck};
use crate::error::StoreError;
use crate::key::{KeyRecord, OwnerId};
use crate::session::{SessionRecord, SessionStore};
use crate::token::KeyId;

const SHARDS: usize = 32;

/// A [`KeyStore`] in memory.
///
/// Reads take only the read lock of one of 32 shards, so lookups of
/// different keys never wait for each other. Inserts and deletes also take an
/// owner index lock, which makes the quota check and the insert one atomic step.
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
    shards: Vec<RwLock<HashMap<KeyId, KeyRecord, RandomState>>>,
    by_owner: Mutex<Index>,
    hasher: RandomState,
    sessions: RwLock<HashMap<KeyId, SessionRecord, RandomState>>,
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
            sessions: RwLock::new(HashMap::default()),
        }
    }

    fn shard(&self, id: &KeyId) -> &RwLock<HashMap<KeyId, KeyRecord, RandomState>> {
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

    fn get_sync(&self, id: &KeyId) -> Option<KeyRecord> {
        self.shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
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
            let live = index
                .owners
                .get(&record.owner)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| self.get_sync(id))
                        .filter(|r| r.environment == record.environment && r.is_live(q.now))
                        .count()
                })
                .unwrap_or(0);
            if live >= q.max_live as usize {
                return Err(StoreError::QuotaExceeded { limit: q.max_live });
            }
        }
        {
            let mut shard = self
                .shard(&record.id)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if shard.contains_key(&record.id) {
                return Err(StoreError::DuplicateId(record.id.clone()));
            }
            shard.insert(record.id.clone(), record.clone());
        }
        index
            .owners
            .entry(record.owner.clone())
            .or_default()
            .insert(record.id.clone());
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.get_sync(id))
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
        Ok(ids
            .iter()
            .filter_map(|id| self.get_sync(id))
            .filter(|r| query.matches(r))
            .take(query.limit)
            .collect())
    }

    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
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
        let (last_used_at, last_used_ip) = (stored.last_used_at, stored.last_used_ip);
        *stored = record.clone();
        stored.last_used_at = last_used_at;
        stored.last_used_ip = last_used_ip;
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
        if let Some(ids) = index.owners.get_mut(&removed.owner) {
            ids.remove(id);
            if ids.is_empty() {
                index.owners.remove(&removed.owner);
            }
        }
        index.deleted.insert(removed.id);
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

    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut due: Vec<(DateTime<Utc>, KeyId)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            due.extend(
                shard
                    .values()
                    .filter(|r| super::due_for_reminder(r, now, until))
                    .filter_map(|r| Some((r.expires_at?, r.id.clone()))),
            );
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
            if let Some(r) = shard.get_mut(&id) {
                if super::due_for_reminder(r, now, until) {
                    r.reminded_at = Some(now);
                    taken.push(r.clone());
                }
            }
        }
        Ok(taken)
    }
}

/// Sessions in one map behind one lock: they are few and short-lived.
impl SessionStore for MemoryStore {
    async fn insert_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if sessions.contains_key(&record.id) {
            return Err(StoreError::DuplicateId(record.id.clone()));
        }
        sessions.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned())
    }

    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut ended = 0;
        for s in sessions
            .values_mut()
            .filter(|s| s.key_id == *key_id && !s.revoked)
        {
            s.revoked = true;
            ended += 1;
        }
        Ok(ended)
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = sessions.len();
        sessions.retain(|_, s| s.expires_at > now);
        Ok((before - sessions.len()) as u64)
    }
}
