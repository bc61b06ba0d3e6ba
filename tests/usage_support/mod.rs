//! A store wrapper for the usage tests: counts the usage round trips and
//! can make them fail.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use keyward::key::KeyRecord;
use keyward::store::{ListQuery, QuotaCheck, StoreError};
use keyward::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue,
};
use keyward::{KeyId, KeyStore};

/// Counts of the usage operations.
#[derive(Default, Debug)]
pub struct Counts {
    pub lease_credits: AtomicU64,
    pub settle_credits: AtomicU64,
    pub lease_rate: AtomicU64,
    pub return_rate: AtomicU64,
    pub gets: AtomicU64,
}

impl Counts {
    /// Usage round trips (leases, settles, returns).
    pub fn usage_trips(&self) -> u64 {
        self.lease_credits.load(Ordering::SeqCst)
            + self.settle_credits.load(Ordering::SeqCst)
            + self.lease_rate.load(Ordering::SeqCst)
            + self.return_rate.load(Ordering::SeqCst)
    }
}

/// Forwards to `inner`, counting; `fail` makes every usage operation fail.
#[derive(Clone)]
pub struct Counted<S> {
    pub inner: S,
    pub counts: Arc<Counts>,
    pub fail: Arc<AtomicBool>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counts: Arc::default(),
            fail: Arc::default(),
        }
    }
    fn usage_op(&self, counter: &AtomicU64) -> Result<(), StoreError> {
        counter.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected failure".into()));
        }
        Ok(())
    }
}

impl<S: KeyStore> KeyStore for Counted<S> {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        self.inner.insert(record, quota).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.counts.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(query).await
    }
    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        self.inner.count(query).await
    }
    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        self.inner.update(record, expected_generation).await
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        self.inner.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), StoreError> {
        self.inner.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.take_expiry_reminders(now, until, limit).await
    }
    async fn lease_credits(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> Result<Option<CreditGrant>, StoreError> {
        self.usage_op(&self.counts.lease_credits)?;
        self.inner.lease_credits(id, want, refill).await
    }
    async fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> Result<(), StoreError> {
        self.usage_op(&self.counts.settle_credits)?;
        self.inner.settle_credits(id, returned, spent).await
    }
    async fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Option<Credits>, StoreError> {
        self.inner.change_credits(id, change).await
    }
    async fn lease_rate(&self, id: &KeyId, lease: &RateLease) -> Result<RateGrant, StoreError> {
        self.usage_op(&self.counts.lease_rate)?;
        self.inner.lease_rate(id, lease).await
    }
    async fn return_rate(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
    ) -> Result<(), StoreError> {
        self.usage_op(&self.counts.return_rate)?;
        self.inner.return_rate(id, name, tokens, interval_us).await
    }
}
