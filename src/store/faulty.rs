//! Fault injection (feature `testing`): [`FaultyStore`] wraps any store and
//! makes chosen operations fail, time out, hang or run late, switched at run
//! time, to show what keyward (or your application) does when storage
//! misbehaves.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keyward::store::{FaultyStore, Op};
//! use keyward::*;
//! use keyward::{hash::Argon2Hasher, policy::PermissionGrant};
//!
//! let store = Arc::new(FaultyStore::new(MemoryStore::new()));
//! let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
//! let push = registry.get("package:push").unwrap();
//! let manager = KeyManager::builder(
//!     Arc::clone(&store),
//!     TokenFormat::new("mkh", &["live"]).unwrap(),
//!     Policy::new(registry),
//! )
//! .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
//! .build().unwrap();
//! let live = Environment::new("live").unwrap();
//! let req = VerifyRequest::new(&live, push);
//! let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
//!
//! // Writes fail: nothing is created.
//! store.fail(Op::Insert);
//! let new = || NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::All);
//! assert!(matches!(manager.create(&admin, new()).await, Err(KeywardError::Store(_))));
//!
//! // Reads time out: a check that needs the store is denied, never granted.
//! store.heal();
//! let key = manager.create(&admin, new()).await.unwrap();
//! manager.verifier().invalidate_all();
//! store.time_out(Op::Get, Duration::from_millis(5));
//! let denial = manager.verify(key.token.expose_secret(), &req).await.unwrap_err();
//! assert_eq!(denial.reason, DenialReason::StoreUnavailable);
//!
//! // Healed, everything works again.
//! store.heal();
//! assert!(manager.verify(key.token.expose_secret(), &req).await.is_ok());
//! assert!(store.calls(Op::Get) >= 2);
//! # });
//! ```
//!
//! # Adding an operation
//!
//! Every store method has one [`Op`]. A new [`KeyStore`] or [`SessionStore`]
//! method gets a new variant, an entry in [`Op::ALL`], and a forwarding
//! method here written like the others: `self.before(Op::New).await?;`,
//! the inner call, then `self.after(Op::New, result)` (for
//! [`Fault::LostReply`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::key::KeyRecord;
use crate::session::{SessionCap, SessionRecord};
use crate::store::SessionStore;
use crate::store::StoreError;
use crate::store::{KeyStore, ListQuery, QuotaCheck};
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue,
};

/// One store operation: one method of [`KeyStore`] or [`SessionStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Op {
    /// [`KeyStore::insert`].
    Insert,
    /// [`KeyStore::get`].
    Get,
    /// [`KeyStore::list`].
    List,
    /// [`KeyStore::count`].
    Count,
    /// [`KeyStore::update`].
    Update,
    /// [`KeyStore::delete`].
    Delete,
    /// [`KeyStore::record_usage`].
    RecordUsage,
    /// [`KeyStore::take_expiry_reminders`].
    TakeExpiryReminders,
    /// [`SessionStore::insert_session`].
    InsertSession,
    /// [`SessionStore::get_session`].
    GetSession,
    /// [`SessionStore::revoke_sessions`].
    RevokeSessions,
    /// [`SessionStore::delete_expired_sessions`].
    DeleteExpiredSessions,
    /// [`SessionStore::session_owner`].
    SessionOwner,
    /// [`KeyStore::lease_credits`].
    LeaseCredits,
    /// [`KeyStore::settle_credits`].
    SettleCredits,
    /// [`KeyStore::change_credits`].
    ChangeCredits,
    /// [`KeyStore::lease_rate`].
    LeaseRate,
    /// [`KeyStore::return_rate`].
    ReturnRate,
}

impl Op {
    /// Every operation, in declaration order.
    pub const ALL: &'static [Op] = &[
        Op::Insert,
        Op::Get,
        Op::List,
        Op::Count,
        Op::Update,
        Op::Delete,
        Op::RecordUsage,
        Op::TakeExpiryReminders,
        Op::InsertSession,
        Op::GetSession,
        Op::RevokeSessions,
        Op::DeleteExpiredSessions,
        Op::SessionOwner,
        Op::LeaseCredits,
        Op::SettleCredits,
        Op::ChangeCredits,
        Op::LeaseRate,
        Op::ReturnRate,
    ];

    /// The operations that read and change nothing.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Op::Get | Op::List | Op::Count | Op::GetSession | Op::SessionOwner
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What goes wrong with an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fails at once with [`StoreError::Backend`]; the inner store is not called.
    Fail,
    /// Waits this long, then fails with [`StoreError::Backend`] saying it
    /// timed out; the inner store is not called.
    Timeout(Duration),
    /// Never completes: the caller's own timeout (for example
    /// `tokio::time::timeout`) has to end it. The inner store is not called.
    Hang,
    /// Waits this long, then runs the operation normally.
    Delay(Duration),
    /// Runs the operation on the inner store, then fails with
    /// [`StoreError::Backend`] anyway: a connection lost after the commit,
    /// before the reply. The change happened; the caller cannot know.
    LostReply,
}

/// A store wrapper that injects faults into chosen operations (feature
/// `testing`); see the [module documentation](self) for an example.
///
/// Without faults it forwards every call unchanged. Faults are set and
/// cleared at run time through `&self`, so a test can share the store with a
/// [`KeyManager`](crate::KeyManager) (wrap it in an `Arc`) and change them
/// between calls. Each operation counts its calls ([`calls`](Self::calls)),
/// faulty or not.
///
/// A failing or timed-out operation never reaches the inner store, so it
/// changes nothing there: any half-written state after a fault is the
/// caller's doing. [`Fault::LostReply`] is the exception by design: the
/// operation runs, and only its answer is lost.
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<HashMap<Op, Fault>>,
    calls: [AtomicU64; Op::ALL.len()],
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`, with no faults.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Mutex::new(HashMap::new()),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The wrapped store (to read it back without faults).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Sets the fault of `op`, replacing any earlier one.
    pub fn inject(&self, op: Op, fault: Fault) -> &Self {
        self.lock().insert(op, fault);
        self
    }

    /// Makes `op` fail at once.
    pub fn fail(&self, op: Op) -> &Self {
        self.inject(op, Fault::Fail)
    }

    /// Makes every operation fail at once.
    pub fn fail_all(&self) -> &Self {
        for op in Op::ALL {
            self.fail(*op);
        }
        self
    }

    /// Makes `op` wait `after`, then fail as timed out.
    pub fn time_out(&self, op: Op, after: Duration) -> &Self {
        self.inject(op, Fault::Timeout(after))
    }

    /// Makes `op` never complete.
    pub fn hang(&self, op: Op) -> &Self {
        self.inject(op, Fault::Hang)
    }

    /// Makes `op` wait `by`, then run normally.
    pub fn delay(&self, op: Op, by: Duration) -> &Self {
        self.inject(op, Fault::Delay(by))
    }

    /// Removes the fault of `op`.
    pub fn heal_op(&self, op: Op) -> &Self {
        self.lock().remove(&op);
        self
    }

    /// Removes every fault.
    pub fn heal(&self) -> &Self {
        self.lock().clear();
        self
    }

    /// The fault set for `op`, if any.
    pub fn fault(&self, op: Op) -> Option<Fault> {
        self.lock().get(&op).copied()
    }

    /// How many times `op` was called (faulty calls included).
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[Self::index(op)].load(Ordering::SeqCst)
    }

    fn index(op: Op) -> usize {
        Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every Op is in Op::ALL")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Op, Fault>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the call and applies the fault of `op`: `Err` to return it,
    /// `Ok` to go on to the inner store. The fault is read before the call
    /// is counted, so a test that sees the count knows the call's fault is
    /// decided (and may change the fault for later calls).
    async fn before(&self, op: Op) -> Result<(), StoreError> {
        let fault = self.fault(op);
        self.calls[Self::index(op)].fetch_add(1, Ordering::SeqCst);
        match fault {
            None => Ok(()),
            Some(Fault::Fail) => Err(StoreError::Backend(format!("injected failure of {op}"))),
            Some(Fault::Timeout(after)) => {
                tokio::time::sleep(after).await;
                Err(StoreError::Backend(format!(
                    "injected timeout of {op} after {after:?}"
                )))
            }
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Delay(by)) => {
                tokio::time::sleep(by).await;
                Ok(())
            }
            Some(Fault::LostReply) => Ok(()),
        }
    }

    /// The inner store's answer, unless `op` loses its reply.
    fn after<T>(&self, op: Op, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match self.fault(op) {
            Some(Fault::LostReply) => Err(StoreError::Backend(format!(
                "injected lost reply of {op} (the operation ran)"
            ))),
            _ => result,
        }
    }
}

impl<S> fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("faults", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> KeyStore for FaultyStore<S> {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        self.before(Op::Insert).await?;
        let result = self.inner.insert(record, quota).await;
        self.after(Op::Insert, result)
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.before(Op::Get).await?;
        let result = self.inner.get(id).await;
        self.after(Op::Get, result)
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.before(Op::List).await?;
        let result = self.inner.list(query).await;
        self.after(Op::List, result)
    }
    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        self.before(Op::Count).await?;
        let result = self.inner.count(query).await;
        self.after(Op::Count, result)
    }
    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        self.before(Op::Update).await?;
        let result = self.inner.update(record, expected_generation).await;
        self.after(Op::Update, result)
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        self.before(Op::Delete).await?;
        let result = self.inner.delete(id).await;
        self.after(Op::Delete, result)
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), StoreError> {
        self.before(Op::RecordUsage).await?;
        let result = self.inner.record_usage(id, at, ip).await;
        self.after(Op::RecordUsage, result)
    }
    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.before(Op::TakeExpiryReminders).await?;
        let result = self.inner.take_expiry_reminders(now, until, limit).await;
        self.after(Op::TakeExpiryReminders, result)
    }
    async fn lease_credits(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> Result<Option<CreditGrant>, StoreError> {
        self.before(Op::LeaseCredits).await?;
        let result = self.inner.lease_credits(id, want, refill).await;
        self.after(Op::LeaseCredits, result)
    }
    async fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> Result<(), StoreError> {
        self.before(Op::SettleCredits).await?;
        let result = self.inner.settle_credits(id, returned, spent).await;
        self.after(Op::SettleCredits, result)
    }
    async fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Option<Credits>, StoreError> {
        self.before(Op::ChangeCredits).await?;
        let result = self.inner.change_credits(id, change).await;
        self.after(Op::ChangeCredits, result)
    }
    async fn lease_rate(&self, id: &KeyId, lease: &RateLease) -> Result<RateGrant, StoreError> {
        self.before(Op::LeaseRate).await?;
        let result = self.inner.lease_rate(id, lease).await;
        self.after(Op::LeaseRate, result)
    }
    async fn return_rate(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> Result<(), StoreError> {
        self.before(Op::ReturnRate).await?;
        let result = self
            .inner
            .return_rate(id, name, tokens, interval_us, lease)
            .await;
        self.after(Op::ReturnRate, result)
    }
}

impl<S: SessionStore> SessionStore for FaultyStore<S> {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        self.before(Op::InsertSession).await?;
        let result = self.inner.insert_session(record, cap).await;
        self.after(Op::InsertSession, result)
    }
    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        self.before(Op::SessionOwner).await?;
        let result = self.inner.session_owner(key_id).await;
        self.after(Op::SessionOwner, result)
    }
    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        self.before(Op::GetSession).await?;
        let result = self.inner.get_session(id).await;
        self.after(Op::GetSession, result)
    }
    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        self.before(Op::RevokeSessions).await?;
        let result = self.inner.revoke_sessions(key_id).await;
        self.after(Op::RevokeSessions, result)
    }
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.before(Op::DeleteExpiredSessions).await?;
        let result = self.inner.delete_expired_sessions(now).await;
        self.after(Op::DeleteExpiredSessions, result)
    }
}
