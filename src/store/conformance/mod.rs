//! The [`KeyStore`] conformance suite (feature `testing`).
//!
//! Every store that ships with keyward passes it, and a store you write for
//! your own database should too. Each check is a public `async fn` that takes
//! a store, exercises one part of the contract written on [`KeyStore`] and
//! panics with a message naming the broken rule if the store does not keep it.
//!
//! Two ways to run it:
//!
//! **One test per check**, with [`store_conformance_tests!`](crate::store_conformance_tests),
//! in the style of tower-sessions' `route_tests!`. Put this in a file under
//! `tests/` of your crate (with keyward's `testing` feature enabled in your
//! `[dev-dependencies]`):
//!
//! ```
//! // tests/conformance.rs
//! # use keyward::MemoryStore as MyStore;
//! # trait Connect { async fn connect(_: &str) -> Result<MyStore, ()> { Ok(MyStore::new()) } }
//! # impl Connect for MyStore {}
//! keyward::store_conformance_tests!(async { MyStore::connect("...").await.unwrap() });
//! # fn main() {}
//! ```
//!
//! The argument is an expression evaluating to a future that yields the
//! store; it is evaluated once per generated test, inside a multi-threaded
//! tokio runtime that the macro builds, so your crate needs no tokio macros.
//!
//! **All checks in one test**, with [`run_all`], when building a store is
//! expensive or needs cleanup afterwards (a fresh database schema, say):
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use keyward::MemoryStore;
//! keyward::store::conformance::run_all(|| async { MemoryStore::new() }).await;
//! # });
//! ```
//!
//! # What a store must get right
//!
//! Each check uses its own random owners and key ids, so checks may share one
//! store (the factory may hand out clones of one pool) and may run at the same
//! time. The checks write records with times in whole microseconds and expect
//! them back exactly, so a store must keep at least microsecond precision.
//! A store never interprets the hash: the suite stores a PHC-looking string
//! and expects the same string back. The expiry-reminder checks (which
//! query every owner's keys) and the audit check each work in a time window
//! of their own, years after the suite's other records and random per run,
//! so they see only what they wrote, even in a database reused across runs.
//!
//! | check | rule |
//! |---|---|
//! | [`insert_then_get_roundtrips`] | every field comes back as written |
//! | [`get_unknown_is_none`] | an unknown id is `Ok(None)` |
//! | [`insert_duplicate_id_is_refused`] | [`StoreError::DuplicateId`], the first record untouched |
//! | [`update_replaces_record`] | compare-and-swap with the right generation writes every field but the usage ones |
//! | [`update_conflict_writes_nothing`] | [`StoreError::Conflict`] with both generations, nothing written |
//! | [`update_unknown_is_not_found`] | [`StoreError::NotFound`] |
//! | [`delete_removes_record`] | gone from `get` and `list`, neighbours untouched, second delete is `NotFound` |
//! | [`deleted_ids_are_never_reused`] | inserting a deleted id again is [`StoreError::DuplicateId`], with or without a quota |
//! | [`delete_unknown_is_not_found`] | [`StoreError::NotFound`] |
//! | [`revoked_stays_listed`] | a revoked record is still returned by `get` and `list` |
//! | [`list_filters_owner_and_environment`] | only the owner's keys, only the environment asked for |
//! | [`list_filters_status_at_now`] | active, expired and revoked judged at `query.now` |
//! | [`list_paginates_by_id`] | ordered by id (byte order), `after` and `limit` page through all |
//! | [`quota_counts_live_keys`] | per owner and environment; `None` means no check |
//! | [`quota_frees_slot_on_revoke_and_expiry`] | revoked and expired keys do not count |
//! | [`quota_refusal_writes_nothing`] | a refused insert stores nothing |
//! | [`quota_holds_under_concurrency`] | 64 concurrent inserts, quota 3: exactly 3 succeed |
//! | [`new_fields_roundtrip`] | kind, `suspended_at`, `last_used_ip` (IPv4 and IPv6), `reminded_at` come back as written |
//! | [`update_leaves_usage_fields_alone`] | `update` never writes `last_used_at` / `last_used_ip` |
//! | [`record_usage_sets_last_use`] | sets both fields, ignores an older use, keeps the generation, `Ok` for unknown ids |
//! | [`list_filters_suspended_and_active`] | suspended is its own status; revoked and expired win over it |
//! | [`quota_counts_suspended_keys`] | a suspended key still counts against the quota |
//! | [`take_expiry_reminders_returns_due_keys`] | exactly the due keys, by expiry, up to `limit`, marked, generation kept |
//! | [`take_expiry_reminders_once_under_concurrency`] | two callers taking in small batches get each of 50 keys once in total |
//! | [`external_id_and_metadata_roundtrip`] | written by `insert`, replaced and removed by `update`; metadata at its size bound fits |
//! | [`list_filters_name_prefix`] | exact, case-sensitive prefix; `%`, `_`, `\` plain; paging and `count` agree |
//! | [`list_filters_external_id`] | exact match, combines with the other filters; paging and `count` agree |
//! | [`count_matches_the_filters`] | the owner's keys passing the filters, status at `query.now`, `after` and `limit` ignored |
//! | [`list_and_quota_apply_idle_expiry`] | with `idle_expiry`, a key unused that long is listed and counted as expired and does not count against the quota |
//!
//! # Trust stores
//!
//! [`trust_store_conformance`] checks a [`TrustStore`](crate::store::TrustStore)
//! (trusted publishing): policies round-trip and are found by id, owner
//! and issuer with lookup value, the per-owner cap holds under 16
//! concurrent inserts, and `claim_jti` lets exactly one of 32 concurrent
//! claims of one token id win (a store that reads then writes fails it).
//! It deletes its policies before it returns; its token ids live in a
//! window of the distant past and are purged.
//!
//! # Usage controls
//!
//! [`usage_conformance`] checks a store's usage controls (rate limits and
//! credits, see [`keyward::usage`](crate::usage)): they round-trip through
//! insert, get and list; `update` changes limits and refill and turns
//! credits on and off but never touches an existing balance; credit leases
//! grant `min(want, remaining)`, refill once per period, and 32 concurrent
//! leasers get exactly the balance (a store that reads then writes fails
//! it); settle and change keep their rules (an `Add` past the maximum is
//! refused, nothing changed); rate leases follow
//! [`gcra_take`](crate::usage::gcra_take) step by step and under 32
//! concurrent leasers; a deleted key's state does not come back. It is
//! separate from [`run_all`]: a store without usage controls (the
//! [`KeyStore`] defaults refuse them, fail closed) still passes the key
//! checks. Run it beside them:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! keyward::store::conformance::usage_conformance(keyward::MemoryStore::new()).await;
//! # });
//! ```
//!
//! # What the suite leaves behind
//!
//! Every owner id the suite writes starts with [`OWNER_PREFIX`]
//! (`conformance-`, then a random key id), so its data is easy to find in a
//! database shared with other data.
//!
//! * **Keys**: each key check, when it passes, deletes the keys it wrote
//!   (it lists its owners' keys and deletes them through
//!   [`KeyStore::delete`]). The store still remembers their ids, as the
//!   contract requires (in keyward's SQL stores, rows of `<table>_ids`):
//!   random ids with no owner, which no real key will ever be given.
//! * **Sessions**: [`session_store_conformance`] deletes every session it
//!   wrote before it returns.
//! * **Audit events**: [`AuditSink`] has no delete, so
//!   [`audit_sink_conformance`] leaves its events. Each has an owner
//!   starting with [`OWNER_PREFIX`], except one, which has no owner and a
//!   `detail` starting with it.
//! * **A failing check** stops at the broken rule and leaves what it wrote
//!   so far: keys and sessions of owners starting with [`OWNER_PREFIX`].
//!
//! For keyward's own SQL stores (table `keyward_keys`; in PostgreSQL, in the
//! store's schema), this drops all of it but the remembered ids:
//!
//! ```sql
//! DELETE FROM keyward_keys WHERE owner LIKE 'conformance-%';
//! DELETE FROM keyward_keys_sessions WHERE owner LIKE 'conformance-%';
//! DELETE FROM keyward_keys_audit
//!  WHERE owner LIKE 'conformance-%' OR (owner IS NULL AND detail LIKE 'conformance-%');
//! ```
//!
//! # Audit sinks
//!
//! [`audit_sink_conformance`] checks an [`AuditSink`]: a batch recorded
//! and read back by key, by owner, by time range (`from` inclusive, `to`
//! exclusive) and with a limit, oldest first, every field intact (IPv6
//! too, every action). Run it against your sink as well:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! keyward::store::conformance::audit_sink_conformance(keyward::store::MemoryAuditSink::new()).await;
//! # });
//! ```
//!
//! # Session stores
//!
//! [`session_store_conformance`] checks a [`SessionStore`]: every field
//! round-trips, an unknown id is `None`, a duplicate id is refused without
//! writing, `revoke_sessions` ends exactly one key's sessions and counts
//! those it ended, `delete_expired_sessions` deletes exactly the sessions
//! expired at or before `now` and counts them, `session_owner` finds the
//! owner stored with a key's sessions, and a capped `insert_session` never
//! lets a key hold more live sessions than the cap, also under concurrency. It works in a time window
//! of its own in the distant past, so it never touches sessions of real
//! times; since `delete_expired_sessions` is global, do not run it twice
//! at the same time on one store. If your type stores keys and sessions,
//! run it beside [`run_all`], in one test:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keyward::MemoryStore as MyStore; // your KeyStore + SessionStore
//! use keyward::store::conformance;
//!
//! let store = Arc::new(MyStore::new());
//! conformance::run_all(|| {
//!     let store = Arc::clone(&store);
//!     async move { store }
//! })
//! .await;
//! conformance::session_store_conformance(Arc::clone(&store)).await;
//! # });
//! ```

use std::future::Future;

use super::KeyStore;
#[cfg(doc)]
use crate::{store::AuditSink, store::SessionStore, store::StoreError};

mod audit;
mod fixtures;
mod key_idle;
mod key_labels;
mod key_lists;
mod key_quota;
mod key_reminders;
mod keys;
#[cfg(test)]
mod selftest;
#[cfg(test)]
mod selftest_trusted;
#[cfg(test)]
mod selftest_usage;
mod sessions;
mod trusted;
mod usage;
mod usage_credits;
mod usage_rates;

pub use audit::audit_sink_conformance;
pub use key_idle::*;
pub use key_labels::*;
pub use key_lists::*;
pub use key_quota::*;
pub use key_reminders::*;
pub use keys::*;
pub use sessions::session_store_conformance;
pub use trusted::trust_store_conformance;
pub use usage::usage_conformance;

/// The prefix of every owner id the suite writes: `conformance-` and a
/// random key id. See "What the suite leaves behind" above.
pub const OWNER_PREFIX: &str = "conformance-";

/// The list of key checks, written once: calls `$($callback)+ ! { $($pre)* ; check, ... }`,
/// in the order [`run_all`] runs them. [`CHECKS`], [`run_all`] and
/// [`store_conformance_tests!`](crate::store_conformance_tests) are generated from it.
/// A new check is a public `async fn` in one of this module's files and a
/// line here.
#[doc(hidden)]
#[macro_export]
macro_rules! __keyward_key_checks {
    ({ $($pre:tt)* } $($callback:tt)+) => {
        $($callback)+ ! {
            $($pre)* ;
            insert_then_get_roundtrips,
            get_unknown_is_none,
            insert_duplicate_id_is_refused,
            update_replaces_record,
            update_conflict_writes_nothing,
            update_unknown_is_not_found,
            delete_removes_record,
            delete_unknown_is_not_found,
            revoked_stays_listed,
            list_filters_owner_and_environment,
            list_filters_status_at_now,
            list_paginates_by_id,
            quota_counts_live_keys,
            quota_frees_slot_on_revoke_and_expiry,
            quota_refusal_writes_nothing,
            quota_holds_under_concurrency,
            new_fields_roundtrip,
            update_leaves_usage_fields_alone,
            record_usage_sets_last_use,
            deleted_ids_are_never_reused,
            list_filters_suspended_and_active,
            quota_counts_suspended_keys,
            take_expiry_reminders_returns_due_keys,
            take_expiry_reminders_once_under_concurrency,
            external_id_and_metadata_roundtrip,
            list_filters_name_prefix,
            list_filters_external_id,
            count_matches_the_filters,
            list_and_quota_apply_idle_expiry
        }
    };
}

/// Generates [`CHECKS`] and [`run_all`] from the list.
macro_rules! runner {
    (; $($check:ident),+ $(,)?) => {
        /// The names of all key checks, in the order [`run_all`] runs them.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),+];

        /// Runs every key check, each with a store from `factory`, in the
        /// order of [`CHECKS`].
        ///
        /// # Panics
        ///
        /// When the store breaks a rule: the message names the check and the rule.
        pub async fn run_all<S, F, Fut>(factory: F)
        where
            S: KeyStore,
            F: Fn() -> Fut,
            Fut: Future<Output = S>,
        {
            $($check(factory().await).await;)+
        }
    };
}

crate::__keyward_key_checks!({} runner);

/// Runs `fut` to completion on a fresh multi-threaded tokio runtime. Used by
/// [`store_conformance_tests!`](crate::store_conformance_tests).
///
/// # Panics
///
/// If the runtime cannot be built.
#[doc(hidden)]
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("keyward conformance: cannot build a tokio runtime")
        .block_on(fut)
}

/// Generates one `#[test]` per key conformance check (the names of
/// [`CHECKS`](crate::store::conformance::CHECKS)), each building its store
/// with the given expression (a future yielding a [`KeyStore`](crate::KeyStore)).
///
/// ```
/// // In tests/conformance.rs of the crate that implements the store:
/// keyward::store_conformance_tests!(async { keyward::MemoryStore::new() });
/// # fn main() {}
/// ```
///
/// The tests run on a multi-threaded tokio runtime built by the macro; the
/// calling crate needs keyward with the `testing` feature and nothing else.
/// Each check deletes the keys it wrote when it passes (see
/// [`keyward::store::conformance`](crate::store::conformance), "What the
/// suite leaves behind").
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::__keyward_key_checks!({ $factory } $crate::__store_conformance_test);
    };
}

/// Implementation detail of [`store_conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_test {
    ($factory:expr; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::store::conformance::block_on(async {
                    let store = ($factory).await;
                    $crate::store::conformance::$check(store).await;
                });
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    /// The table of checks in the module documentation names every check
    /// of [`super::CHECKS`], and nothing else.
    #[test]
    fn the_documented_table_names_every_check() {
        let docs = include_str!("mod.rs");
        let mut documented: Vec<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("//! | [`"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let mut checks = super::CHECKS.to_vec();
        documented.sort_unstable();
        checks.sort_unstable();
        assert_eq!(documented, checks);
    }
}
