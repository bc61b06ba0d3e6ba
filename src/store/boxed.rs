//! Stores chosen at run time: [`BoxedStore`] and [`BoxedSessionStore`],
//! over the object-safe [`DynKeyStore`] and [`DynSessionStore`].
//!
//! [`KeyStore`] and [`SessionStore`] are written with `async fn`s, so
//! `dyn KeyStore` does not exist. Every store is also a [`DynKeyStore`]
//! (and, with sessions, a [`DynSessionStore`]) by a blanket
//! implementation that boxes each call's future; the boxed types hold one
//! behind an `Arc` and are stores again, so a program picks its store from
//! its configuration and builds one `KeyManager<BoxedSessionStore>`. The
//! price is one allocation per store call; the cached hot path makes none.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{KeyStore, ListQuery, QuotaCheck};
use super::{SessionStore, StoreError};
use crate::audit::BoxFuture;
use crate::ids::{KeyId, OwnerId};
use crate::key::KeyRecord;
use crate::session::{SessionCap, SessionRecord};
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue,
};

/// [`KeyStore`] in object-safe form: every method returns a boxed future.
/// Implemented for every [`KeyStore`]; use it through [`BoxedStore`].
pub trait DynKeyStore: Send + Sync + 'static {
    /// [`KeyStore::insert`].
    fn insert<'a>(
        &'a self,
        record: &'a KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`KeyStore::get`].
    fn get<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>>;
    /// [`KeyStore::list`].
    fn list<'a>(
        &'a self,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>>;
    /// [`KeyStore::count`].
    fn count<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// [`KeyStore::update`].
    fn update<'a>(
        &'a self,
        record: &'a KeyRecord,
        expected_generation: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`KeyStore::delete`].
    fn delete<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`KeyStore::record_usage`].
    fn record_usage<'a>(
        &'a self,
        id: &'a KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`KeyStore::take_expiry_reminders`].
    fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>>;
    /// [`KeyStore::lease_credits`].
    fn lease_credits<'a>(
        &'a self,
        id: &'a KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> BoxFuture<'a, Result<Option<CreditGrant>, StoreError>>;
    /// [`KeyStore::settle_credits`].
    fn settle_credits<'a>(
        &'a self,
        id: &'a KeyId,
        returned: u64,
        spent: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`KeyStore::change_credits`].
    fn change_credits<'a>(
        &'a self,
        id: &'a KeyId,
        change: CreditChange,
    ) -> BoxFuture<'a, Result<Option<Credits>, StoreError>>;
    /// [`KeyStore::lease_rate`].
    fn lease_rate<'a>(
        &'a self,
        id: &'a KeyId,
        lease: &'a RateLease,
    ) -> BoxFuture<'a, Result<RateGrant, StoreError>>;
    /// [`KeyStore::return_rate`].
    fn return_rate<'a>(
        &'a self,
        id: &'a KeyId,
        name: &'a LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl<S: KeyStore> DynKeyStore for S {
    fn insert<'a>(
        &'a self,
        record: &'a KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::insert(self, record, quota))
    }
    fn get<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::get(self, id))
    }
    fn list<'a>(
        &'a self,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::list(self, query))
    }
    fn count<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(KeyStore::count(self, query))
    }
    fn update<'a>(
        &'a self,
        record: &'a KeyRecord,
        expected_generation: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::update(self, record, expected_generation))
    }
    fn delete<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::delete(self, id))
    }
    fn record_usage<'a>(
        &'a self,
        id: &'a KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::record_usage(self, id, at, ip))
    }
    fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        Box::pin(KeyStore::take_expiry_reminders(self, now, until, limit))
    }
    fn lease_credits<'a>(
        &'a self,
        id: &'a KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> BoxFuture<'a, Result<Option<CreditGrant>, StoreError>> {
        Box::pin(KeyStore::lease_credits(self, id, want, refill))
    }
    fn settle_credits<'a>(
        &'a self,
        id: &'a KeyId,
        returned: u64,
        spent: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::settle_credits(self, id, returned, spent))
    }
    fn change_credits<'a>(
        &'a self,
        id: &'a KeyId,
        change: CreditChange,
    ) -> BoxFuture<'a, Result<Option<Credits>, StoreError>> {
        Box::pin(KeyStore::change_credits(self, id, change))
    }
    fn lease_rate<'a>(
        &'a self,
        id: &'a KeyId,
        lease: &'a RateLease,
    ) -> BoxFuture<'a, Result<RateGrant, StoreError>> {
        Box::pin(KeyStore::lease_rate(self, id, lease))
    }
    fn return_rate<'a>(
        &'a self,
        id: &'a KeyId,
        name: &'a LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(KeyStore::return_rate(
            self,
            id,
            name,
            tokens,
            interval_us,
            lease,
        ))
    }
}

/// [`KeyStore`] and [`SessionStore`] in object-safe form. Implemented for
/// every store that is both; use it through [`BoxedSessionStore`].
pub trait DynSessionStore: DynKeyStore {
    /// [`SessionStore::insert_session`].
    fn insert_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        cap: Option<SessionCap>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`SessionStore::get_session`].
    fn get_session<'a>(
        &'a self,
        id: &'a KeyId,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;
    /// [`SessionStore::session_owner`].
    fn session_owner<'a>(
        &'a self,
        key_id: &'a KeyId,
    ) -> BoxFuture<'a, Result<Option<OwnerId>, StoreError>>;
    /// [`SessionStore::revoke_sessions`].
    fn revoke_sessions<'a>(&'a self, key_id: &'a KeyId) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// [`SessionStore::delete_expired_sessions`].
    fn delete_expired_sessions(&self, now: DateTime<Utc>)
    -> BoxFuture<'_, Result<u64, StoreError>>;
}

impl<S: KeyStore + SessionStore> DynSessionStore for S {
    fn insert_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        cap: Option<SessionCap>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::insert_session(self, record, cap))
    }
    fn get_session<'a>(
        &'a self,
        id: &'a KeyId,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(SessionStore::get_session(self, id))
    }
    fn session_owner<'a>(
        &'a self,
        key_id: &'a KeyId,
    ) -> BoxFuture<'a, Result<Option<OwnerId>, StoreError>> {
        Box::pin(SessionStore::session_owner(self, key_id))
    }
    fn revoke_sessions<'a>(&'a self, key_id: &'a KeyId) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(SessionStore::revoke_sessions(self, key_id))
    }
    fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(SessionStore::delete_expired_sessions(self, now))
    }
}

/// Forwards every [`KeyStore`] call of a boxed store to its inner one.
macro_rules! forward_key_store {
    ($ty:ty) => {
        impl KeyStore for $ty {
            async fn insert(
                &self,
                record: &KeyRecord,
                quota: Option<QuotaCheck>,
            ) -> Result<(), StoreError> {
                self.0.insert(record, quota).await
            }
            async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
                self.0.get(id).await
            }
            async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
                self.0.list(query).await
            }
            async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
                self.0.count(query).await
            }
            async fn update(
                &self,
                record: &KeyRecord,
                expected_generation: u64,
            ) -> Result<(), StoreError> {
                self.0.update(record, expected_generation).await
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
                self.0.lease_credits(id, want, refill).await
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
            async fn lease_rate(
                &self,
                id: &KeyId,
                lease: &RateLease,
            ) -> Result<RateGrant, StoreError> {
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
    };
}

/// Any [`KeyStore`], chosen at run time: a [`KeyStore`] itself, forwarding
/// each call to the store it holds. Cheap to clone (the clones share the
/// store). For a store with sessions, see [`BoxedSessionStore`].
///
/// ```
/// use keyward::store::{BoxedStore, MemoryStore};
/// use keyward::*;
/// fn open(kind: &str) -> BoxedStore {
///     match kind {
///         // "sqlite" => BoxedStore::new(SqliteStore::connect(path).await?), ...
///         _ => BoxedStore::new(MemoryStore::new()),
///     }
/// }
/// let manager = KeyManager::builder(
///     open("memory"),
///     TokenFormat::new("mkh", &["live"]).unwrap(),
///     Policy::new(PermissionRegistry::builder().permission("p").build().unwrap()),
/// )
/// .build()
/// .unwrap();
/// # let _ = manager;
/// ```
#[derive(Clone)]
pub struct BoxedStore(Arc<dyn DynKeyStore>);

impl BoxedStore {
    /// Boxes `store`.
    pub fn new(store: impl KeyStore) -> Self {
        Self(Arc::new(store))
    }
    /// Shares a store already behind an `Arc`.
    pub fn from_arc(store: Arc<dyn DynKeyStore>) -> Self {
        Self(store)
    }
}

impl fmt::Debug for BoxedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxedStore").finish_non_exhaustive()
    }
}

forward_key_store!(BoxedStore);

/// Any store with sessions ([`KeyStore`] + [`SessionStore`]), chosen at run
/// time: both traits, forwarding each call to the store it holds, so a
/// `KeyManager<BoxedSessionStore>` can be built with
/// [`sessions`](crate::manager::KeyManagerBuilder::sessions). Cheap to clone.
///
/// ```
/// use keyward::session::SessionConfig;
/// use keyward::store::{BoxedSessionStore, MemoryStore};
/// use keyward::*;
/// let store = BoxedSessionStore::new(MemoryStore::new()); // or SQLite, PostgreSQL
/// let manager = KeyManager::builder(
///     store,
///     TokenFormat::new("mkh", &["live"]).unwrap(),
///     Policy::new(PermissionRegistry::builder().permission("p").build().unwrap()),
/// )
/// .sessions(SessionConfig::new("mkhs"))
/// .build()
/// .unwrap();
/// assert!(manager.session_format().is_some());
/// ```
#[derive(Clone)]
pub struct BoxedSessionStore(Arc<dyn DynSessionStore>);

impl BoxedSessionStore {
    /// Boxes `store`.
    pub fn new(store: impl KeyStore + SessionStore) -> Self {
        Self(Arc::new(store))
    }
    /// Shares a store already behind an `Arc`.
    pub fn from_arc(store: Arc<dyn DynSessionStore>) -> Self {
        Self(store)
    }
}

impl fmt::Debug for BoxedSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxedSessionStore").finish_non_exhaustive()
    }
}

forward_key_store!(BoxedSessionStore);

impl SessionStore for BoxedSessionStore {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        self.0.insert_session(record, cap).await
    }
    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        self.0.get_session(id).await
    }
    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        self.0.session_owner(key_id).await
    }
    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        self.0.revoke_sessions(key_id).await
    }
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.0.delete_expired_sessions(now).await
    }
}
