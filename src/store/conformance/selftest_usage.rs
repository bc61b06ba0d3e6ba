//! Self-tests of [`usage_conformance`](super::usage_conformance): stores
//! broken on purpose, each caught with the rule named.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::key::KeyRecord;
use crate::store::{KeyStore, ListQuery, QuotaCheck, StoreError};
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue,
};
use crate::{KeyId, MemoryStore};

#[derive(Clone, Copy)]
enum Bug {
    /// `lease_credits` reads the balance, then writes it in another step
    /// (right one at a time, wrong under concurrency).
    ReadThenWriteLease,
    /// `update` writes the record's balance over the stored one.
    UpdateOverwritesBalance,
}

struct Broken(MemoryStore, Bug);

impl KeyStore for Broken {
    async fn insert(&self, r: &KeyRecord, q: Option<QuotaCheck>) -> Result<(), StoreError> {
        self.0.insert(r, q).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.0.get(id).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.list(q).await
    }
    async fn count(&self, q: &ListQuery) -> Result<u64, StoreError> {
        self.0.count(q).await
    }
    async fn update(&self, r: &KeyRecord, expected: u64) -> Result<(), StoreError> {
        self.0.update(r, expected).await?;
        if let (Bug::UpdateOverwritesBalance, Some(c)) = (self.1, &r.usage.credits) {
            self.0
                .change_credits(&r.id, CreditChange::Set(c.remaining))
                .await?;
        }
        Ok(())
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        self.0.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        self.0.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.take_expiry_reminders(now, until, limit).await
    }
    async fn lease_credits(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> Result<Option<CreditGrant>, StoreError> {
        if refill.is_some() || !matches!(self.1, Bug::ReadThenWriteLease) {
            return self.0.lease_credits(id, want, refill).await;
        }
        // Read...
        let Some(record) = self.0.get(id).await? else {
            return Err(StoreError::NotFound(id.clone()));
        };
        let Some(read) = record.usage.credits.map(|c| c.remaining) else {
            return Ok(None);
        };
        let granted = want.min(read);
        // ... another lease runs here ...
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        // ... then write what was read, less the grant: another lease's
        // grant in between is lost.
        self.0.change_credits(id, CreditChange::Set(read)).await?;
        self.0.lease_credits(id, granted, None).await
    }
    async fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> Result<(), StoreError> {
        self.0.settle_credits(id, returned, spent).await
    }
    async fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Option<Credits>, StoreError> {
        self.0.change_credits(id, change).await
    }
    async fn lease_rate(&self, id: &KeyId, lease: &RateLease) -> Result<RateGrant, StoreError> {
        self.0.lease_rate(id, lease).await
    }
    async fn return_rate(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> Result<(), StoreError> {
        self.0
            .return_rate(id, name, tokens, interval_us, lease)
            .await
    }
}

/// The memory store passes (the suite's own baseline).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_passes() {
    super::usage_conformance(MemoryStore::new()).await;
}

/// A credit lease that reads, then writes, grants more than the balance
/// to concurrent leasers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(
    expected = "usage_conformance: concurrent credit leases must grant exactly the balance"
)]
async fn usage_conformance_catches_a_non_atomic_credit_lease() {
    super::usage_conformance(Broken(MemoryStore::new(), Bug::ReadThenWriteLease)).await;
}

/// An update that writes the balance it was given undoes a lease.
#[tokio::test]
#[should_panic(expected = "usage_conformance: update must never change an existing balance")]
async fn usage_conformance_catches_an_update_that_overwrites_the_balance() {
    super::usage_conformance(Broken(MemoryStore::new(), Bug::UpdateOverwritesBalance)).await;
}

/// A store without usage controls (the trait's refusing defaults) fails
/// the group at once, and still fails closed.
#[tokio::test]
#[should_panic(expected = "usage_conformance")]
async fn a_store_without_usage_controls_fails_the_group() {
    struct Refusing;
    impl KeyStore for Refusing {
        async fn insert(&self, r: &KeyRecord, _: Option<QuotaCheck>) -> Result<(), StoreError> {
            if r.usage.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Unsupported("usage controls"))
            }
        }
        async fn get(&self, _: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            Ok(None)
        }
        async fn list(&self, _: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn count(&self, _: &ListQuery) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn update(&self, _: &KeyRecord, _: u64) -> Result<(), StoreError> {
            Ok(())
        }
        async fn delete(&self, _: &KeyId) -> Result<(), StoreError> {
            Ok(())
        }
        async fn record_usage(
            &self,
            _: &KeyId,
            _: DateTime<Utc>,
            _: Option<IpAddr>,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn take_expiry_reminders(
            &self,
            _: DateTime<Utc>,
            _: DateTime<Utc>,
            _: usize,
        ) -> Result<Vec<KeyRecord>, StoreError> {
            Ok(Vec::new())
        }
    }
    super::usage_conformance(Refusing).await;
}
