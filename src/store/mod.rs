//! Storage: the [`KeyStore`] trait and the stores that ship with keyward.
//!
//! Everything keyward keeps goes through [`KeyStore`]. [`MemoryStore`] is
//! always available; SQLite and PostgreSQL stores come with their features.
//! Write your own by implementing the trait with `async fn`s.

mod audit_sink;
mod boxed;
mod compact;
mod error;
mod memory;
mod memory_trusted;
mod memory_usage;
mod trusted;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod conformance;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod faulty;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_audit;
#[cfg(feature = "postgres")]
mod postgres_feed;
#[cfg(feature = "postgres")]
mod postgres_schema;
#[cfg(feature = "postgres")]
mod postgres_sessions;
#[cfg(feature = "postgres")]
mod postgres_trusted;
mod sessions;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_sessions;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_usage;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_usage_ops;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_audit;
#[cfg(feature = "sqlite")]
mod sqlite_sessions;
#[cfg(feature = "sqlite")]
mod sqlite_trusted;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

pub use audit_sink::{AuditSink, MemoryAuditSink};
pub use boxed::{BoxedSessionStore, BoxedStore, DynKeyStore, DynSessionStore};
pub use error::StoreError;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub use faulty::{Fault, FaultyStore, Op};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres_feed::{ChangeListener, FeedStatus};
pub use sessions::SessionStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use sql::InvalidName;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;
pub use trusted::TrustStore;

use crate::ids::OwnerId;
use crate::ids::{Environment, ExternalId, KeyId};
use crate::key::{KeyRecord, KeyStatus};
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue,
};

/// The largest page a listing returns.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A quota to hold while inserting: at most `max_live` live keys for the new
/// record's owner and environment, counting the new one.
///
/// Live means neither revoked nor expired at `now`, expired as a check says
/// it: by `expires_at`, or, when `idle_expiry` is given, for being unused
/// that long ([`KeyRecord::status_with_idle`]; [`QuotaCheck::counts`]). A
/// suspended key counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCheck {
    /// The most live keys allowed.
    pub max_live: u32,
    /// The time at which "live" (not revoked, not expired) is judged.
    pub now: DateTime<Utc>,
    /// The policy's idle expiry
    /// ([`Policy::idle_expiry`](crate::Policy::idle_expiry)): a key whose
    /// last use (or creation, if never used) is this long before `now` is
    /// expired and does not count. [`KeyManager`](crate::KeyManager) sets it.
    pub idle_expiry: Option<TimeDelta>,
}

impl QuotaCheck {
    /// At most `max_live` live keys at `now`, with no idle expiry.
    pub fn new(max_live: u32, now: DateTime<Utc>) -> Self {
        Self {
            max_live,
            now,
            idle_expiry: None,
        }
    }

    /// Keys unused for `idle` do not count (sets the `idle_expiry` field).
    pub fn idle_expiry(mut self, idle: Option<TimeDelta>) -> Self {
        self.idle_expiry = idle;
        self
    }

    /// Whether `r` counts against this quota (its owner and environment
    /// aside): live at `now` under `idle_expiry`.
    ///
    /// ```
    /// use chrono::TimeDelta;
    /// use keyward::store::QuotaCheck;
    /// # use keyward::{key::*, policy::*, *};
    /// # let created: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    /// # let r = KeyRecord { id: KeyId::generate(), owner: OwnerId::new("o").unwrap(),
    /// #   environment: Environment::new("live").unwrap(), name: "n".into(), kind: KeyKind::Scoped,
    /// #   permissions: PermissionGrant::All, resources: ResourceScope::All,
    /// #   ip_allowlist: IpAllowlist::default(), created_at: created, expires_at: None,
    /// #   revoked_at: None, suspended_at: None, last_used_at: None, last_used_ip: None,
    /// #   reminded_at: None, external_id: None, metadata: Default::default(),
    /// #   usage: Default::default(), generation: 1,
    /// #   secret_hash: SecretHash::new(String::new()) };
    /// // `r` was created on 2026-01-01 and never used.
    /// let later = created + TimeDelta::days(100);
    /// assert!(QuotaCheck::new(3, later).counts(&r));
    /// assert!(!QuotaCheck::new(3, later).idle_expiry(Some(TimeDelta::days(90))).counts(&r));
    /// ```
    pub fn counts(&self, r: &KeyRecord) -> bool {
        matches!(
            r.status_with_idle(self.now, self.idle_expiry),
            KeyStatus::Active | KeyStatus::Suspended
        )
    }
}

/// Which keys a listing returns: one owner's, optionally one environment,
/// one status, a name prefix and an external id, ordered by id, a page at a
/// time. [`KeyStore::count`] counts the keys that pass the same filters.
///
/// The name prefix is compared exactly, character for character:
/// case-sensitive, and `%`, `_`, `*` or `\` in it are plain characters (SQL
/// stores must not hand it to `LIKE` unescaped). The empty prefix matches
/// every name. The external id is compared exactly too.
///
/// ```
/// use keyward::{store::ListQuery, key::KeyStatus, ids::ExternalId, OwnerId};
/// let q = ListQuery::new(OwnerId::new("contoso").unwrap())
///     .status(KeyStatus::Revoked)
///     .name_prefix("GitHub ")
///     .external_id(ExternalId::new("pipeline-17").unwrap())
///     .limit(50);
/// assert_eq!(q.limit, 50);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Whose keys.
    pub owner: OwnerId,
    /// Only this environment.
    pub environment: Option<Environment>,
    /// Only keys with this status at `now`.
    pub status: Option<KeyStatus>,
    /// Only keys whose name starts with this (exactly; see above).
    pub name_prefix: Option<String>,
    /// Only keys with this external id.
    pub external_id: Option<ExternalId>,
    /// Only ids greater than this one (the last id of the previous page).
    pub after: Option<KeyId>,
    /// At most this many (1 to [`MAX_PAGE_SIZE`]).
    pub limit: usize,
    /// The time the status filter is judged at. [`KeyManager`](crate::KeyManager)
    /// sets it from its clock.
    pub now: DateTime<Utc>,
    /// The policy's idle expiry
    /// ([`Policy::idle_expiry`](crate::Policy::idle_expiry)): for the status
    /// filter, a key neither revoked nor past its expiry whose last use (or
    /// creation, if never used) is this long before `now` is
    /// [`KeyStatus::Expired`], not active or suspended
    /// ([`KeyRecord::status_with_idle`]), as a check says.
    /// [`KeyManager`](crate::KeyManager) sets it from its policy.
    pub idle_expiry: Option<TimeDelta>,
}

impl ListQuery {
    /// All keys of `owner`, first page of 100.
    pub fn new(owner: OwnerId) -> Self {
        Self {
            owner,
            environment: None,
            status: None,
            name_prefix: None,
            external_id: None,
            after: None,
            limit: 100,
            now: crate::clock::to_micros(Utc::now()),
            idle_expiry: None,
        }
    }
    /// Judges the status filter under this idle expiry (see
    /// [`ListQuery::idle_expiry`](ListQuery#structfield.idle_expiry)).
    pub fn idle_expiry(mut self, idle: Option<TimeDelta>) -> Self {
        self.idle_expiry = idle;
        self
    }
    /// Only this environment.
    pub fn environment(mut self, env: Environment) -> Self {
        self.environment = Some(env);
        self
    }
    /// Only this status.
    pub fn status(mut self, status: KeyStatus) -> Self {
        self.status = Some(status);
        self
    }
    /// Only names starting with `prefix` (case-sensitive, no wildcards).
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = Some(prefix.into());
        self
    }
    /// Only keys with this external id.
    pub fn external_id(mut self, id: ExternalId) -> Self {
        self.external_id = Some(id);
        self
    }
    /// The page after this id.
    pub fn after(mut self, id: KeyId) -> Self {
        self.after = Some(id);
        self
    }
    /// Page size, clamped to 1..=[`MAX_PAGE_SIZE`].
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// Whether a record passes the filters and comes after
    /// [`after`](ListQuery::after) (not the limit): what [`KeyStore::list`] returns.
    pub fn matches(&self, r: &KeyRecord) -> bool {
        self.matches_filters(r) && self.after.as_ref().is_none_or(|a| r.id > *a)
    }

    /// Whether a record passes the filters, paging aside: what
    /// [`KeyStore::count`] counts.
    pub fn matches_filters(&self, r: &KeyRecord) -> bool {
        r.owner == self.owner
            && self
                .environment
                .as_ref()
                .is_none_or(|e| *e == r.environment)
            && self
                .status
                .is_none_or(|s| r.status_with_idle(self.now, self.idle_expiry) == s)
            && self
                .name_prefix
                .as_deref()
                .is_none_or(|p| r.name.starts_with(p))
            && self
                .external_id
                .as_ref()
                .is_none_or(|x| r.external_id.as_ref() == Some(x))
    }
}

/// Where keys live. Implement it for your database and prove it with the
/// conformance suite (feature `testing`).
///
/// `examples/redis_store.rs` in keyward's repository is a whole
/// implementation written from the outside, with only the public API: a
/// store over Redis whose atomic steps (the quota count and the insert, the
/// compare-and-swap update, taking expiry reminders) are Lua scripts, and a
/// `main` that runs `keyward::store::conformance::run_all` against it
/// (`cargo run --all-features --example redis_store`). Start there to put
/// keyward on your own database.
///
/// Methods return `impl Future + Send`, so implementations write `async fn`.
/// Every method either does all it says or nothing; an error leaves the
/// stored data as it was. Stores never see a secret, only its hash.
///
/// A whole implementation, small because it wraps another store (a
/// decorator that counts reads is itself a store); a store of your own
/// writes the same eight `async fn`s against its database:
///
/// ```
/// use std::net::IpAddr;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use keyward::chrono::{DateTime, Utc};
/// use keyward::key::KeyRecord;
/// use keyward::store::{ListQuery, QuotaCheck, StoreError};
/// use keyward::{KeyId, KeyStore, MemoryStore};
///
/// #[derive(Default)]
/// struct CountingStore {
///     inner: MemoryStore,
///     reads: AtomicU64,
/// }
///
/// impl KeyStore for CountingStore {
///     async fn insert(&self, record: &KeyRecord, quota: Option<QuotaCheck>) -> Result<(), StoreError> {
///         self.inner.insert(record, quota).await
///     }
///     async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
///         self.reads.fetch_add(1, Ordering::Relaxed);
///         self.inner.get(id).await
///     }
///     async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
///         self.inner.list(query).await
///     }
///     async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
///         self.inner.count(query).await
///     }
///     async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
///         self.inner.update(record, expected_generation).await
///     }
///     async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
///         self.inner.delete(id).await
///     }
///     async fn record_usage(&self, id: &KeyId, at: DateTime<Utc>, ip: Option<IpAddr>) -> Result<(), StoreError> {
///         self.inner.record_usage(id, at, ip).await
///     }
///     async fn take_expiry_reminders(
///         &self,
///         now: DateTime<Utc>,
///         until: DateTime<Utc>,
///         limit: usize,
///     ) -> Result<Vec<KeyRecord>, StoreError> {
///         self.inner.take_expiry_reminders(now, until, limit).await
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = CountingStore::default();
/// let missing = KeyId::new("AbCdEf123456").unwrap();
/// assert_eq!(store.get(&missing).await.unwrap(), None);
/// assert_eq!(store.reads.load(Ordering::Relaxed), 1);
/// # });
/// ```
pub trait KeyStore: Send + Sync + 'static {
    /// Adds a new record.
    ///
    /// Errors: [`StoreError::DuplicateId`] if the id exists or ever existed
    /// (a deleted id is remembered and never reused);
    /// [`StoreError::QuotaExceeded`] if `quota` is given and the owner already
    /// has `max_live` live keys in the record's environment, live as
    /// [`QuotaCheck::counts`] says (idle expiry included). The count and
    /// the insert are one atomic step: under any number of concurrent
    /// inserts, the quota is never exceeded.
    fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record with this id, or `None`. Revoked records are returned
    /// (flagged by `revoked_at`); deleted ones are not.
    fn get(&self, id: &KeyId)
    -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// The records matching `query`, ordered by id ascending, at most
    /// `query.limit`: exactly those [`ListQuery::matches`] accepts (the
    /// status filter judged at `query.now` under `query.idle_expiry`).
    fn list(
        &self,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// How many records pass `query`'s filters (owner, environment, status,
    /// name prefix, external id), ignoring its `after` and `limit`: the
    /// total a paged listing shows.
    fn count(&self, query: &ListQuery) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Replaces the record with `record.id` if its stored generation is still
    /// `expected_generation` (compare-and-swap); `record.generation` is the
    /// new generation. The usage fields (`last_used_at`, `last_used_ip`) are
    /// left as stored: only [`KeyStore::record_usage`] writes them, so a
    /// management change never erases a use recorded meanwhile.
    ///
    /// Errors: [`StoreError::NotFound`]; [`StoreError::Conflict`] when the
    /// stored generation differs (nothing is written).
    fn update(
        &self,
        record: &KeyRecord,
        expected_generation: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the record, and remembers its id so that no record with it
    /// can ever be inserted again. Errors: [`StoreError::NotFound`].
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a successful use at `at` from `ip`: sets `last_used_at` and
    /// `last_used_ip`, unless the stored use is later than `at` (then
    /// nothing changes). Does not bump the generation. A missing id is not
    /// an error (the key may have been deleted meanwhile): nothing happens.
    fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes up to `limit` keys that expire in `(now, until]`, are not
    /// revoked and have not been reminded yet (`reminded_at` is `None`), sets
    /// their `reminded_at` to `now` and returns them (with `reminded_at`
    /// set), ordered by expiry. Atomic: with any number of concurrent
    /// callers, each key is returned once. Keys already expired at `now` are
    /// never returned. Does not bump the generation.
    fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
    /// Leases up to `want` credits of key `id` in one atomic step: first,
    /// if `refill` is given and the balance was last refilled for a period
    /// before `refill.period_start` (or never), the balance becomes
    /// `refill.amount` and `refilled_for` that start; then
    /// `granted = min(want, remaining)` moves from `remaining` to `leased`.
    /// With any number of concurrent callers the grants never sum to more
    /// than the balance. `Ok(None)`: the key carries no credits.
    /// Errors: [`StoreError::NotFound`]. The default refuses
    /// ([`StoreError::Unsupported`]): a store without usage controls denies
    /// metered keys instead of letting them spend without bound.
    fn lease_credits(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> impl Future<Output = Result<Option<CreditGrant>, StoreError>> + Send {
        let _ = (id, want, refill);
        async { Err(StoreError::Unsupported("usage credits")) }
    }

    /// Settles leased credits of key `id`: `returned` unspent credits go
    /// back to `remaining`, and `leased` falls by `returned + spent`
    /// (never below zero). A key without credits, or a missing one, is
    /// not an error (nothing happens). Returned credits never push
    /// `remaining` past [`Credits::MAX`](crate::usage::Credits::MAX).
    fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (id, returned, spent);
        async { Err(StoreError::Unsupported("usage credits")) }
    }

    /// Changes key `id`'s balance (management), atomically, and returns
    /// the credits after the change; `Ok(None)`: the key carries no
    /// credits (nothing changed). Does not bump the generation.
    /// Errors: [`StoreError::NotFound`]; [`StoreError::Usage`] when an
    /// [`CreditChange::Add`] would pass [`Credits::MAX`](crate::usage::Credits::MAX)
    /// (nothing changed).
    fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> impl Future<Output = Result<Option<Credits>, StoreError>> + Send {
        let _ = (id, change);
        async { Err(StoreError::Unsupported("usage credits")) }
    }

    /// Takes up to `lease.want` tokens of key `id`'s limit `lease.name` in
    /// one atomic step, by [`gcra_take`](crate::usage::gcra_take) over the
    /// limit's stored theoretical arrival time (none yet: a full bucket).
    /// With any number of concurrent callers the tokens granted are
    /// exactly those one caller taking them in turn would get.
    /// Errors: [`StoreError::NotFound`]. The default refuses
    /// ([`StoreError::Unsupported`]).
    fn lease_rate(
        &self,
        id: &KeyId,
        lease: &RateLease,
    ) -> impl Future<Output = Result<RateGrant, StoreError>> + Send {
        let _ = (id, lease);
        async { Err(StoreError::Unsupported("rate limits")) }
    }

    /// Gives back `tokens` unspent tokens of key `id`'s limit `name`, taken
    /// by lease number `lease` ([`RateGrant::lease`]): the limit's
    /// theoretical arrival time moves back by up to `tokens × interval_us`.
    /// Never so far that a charge counts twice, or that a lease since would
    /// have found the bucket behind the clock without these tokens:
    /// - the latest lease's tokens go back whole (at most what it added);
    /// - an earlier lease's, at most by the *slack*: the least any lease
    ///   since the bucket last restarted found its arrival time ahead of
    ///   the clock, less what such give-backs moved before (what it cannot
    ///   credit stays charged until the bucket drains);
    /// - a lease's from before the last restart (a lease that found the
    ///   arrival time behind the clock and started again from it,
    ///   forgetting every charge before), or a number the bucket never
    ///   gave, moves nothing.
    ///
    /// A missing key or limit state is not an error (nothing happens).
    fn return_rate(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (id, name, tokens, interval_us, lease);
        async { Err(StoreError::Unsupported("rate limits")) }
    }
}

impl<S: KeyStore> KeyStore for Arc<S> {
    fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert(record, quota)
    }
    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        (**self).get(id)
    }
    fn list(
        &self,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        (**self).list(query)
    }
    fn count(&self, query: &ListQuery) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).count(query)
    }
    fn update(
        &self,
        record: &KeyRecord,
        expected_generation: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).update(record, expected_generation)
    }
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).delete(id)
    }
    fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).record_usage(id, at, ip)
    }
    fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        (**self).take_expiry_reminders(now, until, limit)
    }
    fn lease_credits(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> impl Future<Output = Result<Option<CreditGrant>, StoreError>> + Send {
        (**self).lease_credits(id, want, refill)
    }
    fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).settle_credits(id, returned, spent)
    }
    fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> impl Future<Output = Result<Option<Credits>, StoreError>> + Send {
        (**self).change_credits(id, change)
    }
    fn lease_rate(
        &self,
        id: &KeyId,
        lease: &RateLease,
    ) -> impl Future<Output = Result<RateGrant, StoreError>> + Send {
        (**self).lease_rate(id, lease)
    }
    fn return_rate(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).return_rate(id, name, tokens, interval_us, lease)
    }
}

/// Whether a record is due an expiry reminder (see [`KeyStore::take_expiry_reminders`]).
pub fn due_for_reminder(r: &KeyRecord, now: DateTime<Utc>, until: DateTime<Utc>) -> bool {
    r.revoked_at.is_none()
        && r.reminded_at.is_none()
        && r.expires_at.is_some_and(|e| e > now && e <= until)
}

/// What a change feed calls when another process changed keys, so this
/// process stops trusting what it cached. [`Verifier`](crate::Verifier)
/// implements it; a store's feed (such as
/// [`PostgresStore::listen`](crate::PostgresStore::listen)) takes any
/// implementation, so `store` does not depend on the verifier.
pub trait Invalidate: Send + Sync + 'static {
    /// Key `id` changed: its next check reads the store.
    fn invalidate(&self, id: &KeyId);
    /// Anything may have changed (notices were lost): every key's next
    /// check reads the store.
    fn invalidate_all(&self);
}
