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
//! keyward::store::conformance::audit_sink_conformance(keyward::MemoryAuditSink::new()).await;
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
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use std::collections::HashSet;
use std::net::IpAddr;

use super::{KeyStore, ListQuery, QuotaCheck};
use crate::audit::{AuditAction, AuditEvent, AuditQuery, AuditSink};
use crate::error::StoreError;
use crate::key::{KeyKind, KeyRecord, KeyStatus, OwnerId, SecretHash};
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::session::{SessionCap, SessionHash, SessionRecord, SessionStore};
use crate::token::{Environment, KeyId};

/// The names of all checks, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "insert_then_get_roundtrips",
    "get_unknown_is_none",
    "insert_duplicate_id_is_refused",
    "update_replaces_record",
    "update_conflict_writes_nothing",
    "update_unknown_is_not_found",
    "delete_removes_record",
    "delete_unknown_is_not_found",
    "revoked_stays_listed",
    "list_filters_owner_and_environment",
    "list_filters_status_at_now",
    "list_paginates_by_id",
    "quota_counts_live_keys",
    "quota_frees_slot_on_revoke_and_expiry",
    "quota_refusal_writes_nothing",
    "quota_holds_under_concurrency",
    "new_fields_roundtrip",
    "update_leaves_usage_fields_alone",
    "record_usage_sets_last_use",
    "deleted_ids_are_never_reused",
    "list_filters_suspended_and_active",
    "quota_counts_suspended_keys",
    "take_expiry_reminders_returns_due_keys",
    "take_expiry_reminders_once_under_concurrency",
];

/// Runs every check, each with a store from `factory`, in the order of [`CHECKS`].
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
    insert_then_get_roundtrips(factory().await).await;
    get_unknown_is_none(factory().await).await;
    insert_duplicate_id_is_refused(factory().await).await;
    update_replaces_record(factory().await).await;
    update_conflict_writes_nothing(factory().await).await;
    update_unknown_is_not_found(factory().await).await;
    delete_removes_record(factory().await).await;
    delete_unknown_is_not_found(factory().await).await;
    revoked_stays_listed(factory().await).await;
    list_filters_owner_and_environment(factory().await).await;
    list_filters_status_at_now(factory().await).await;
    list_paginates_by_id(factory().await).await;
    quota_counts_live_keys(factory().await).await;
    quota_frees_slot_on_revoke_and_expiry(factory().await).await;
    quota_refusal_writes_nothing(factory().await).await;
    quota_holds_under_concurrency(factory().await).await;
    new_fields_roundtrip(factory().await).await;
    update_leaves_usage_fields_alone(factory().await).await;
    record_usage_sets_last_use(factory().await).await;
    deleted_ids_are_never_reused(factory().await).await;
    list_filters_suspended_and_active(factory().await).await;
    quota_counts_suspended_keys(factory().await).await;
    take_expiry_reminders_returns_due_keys(factory().await).await;
    take_expiry_reminders_once_under_concurrency(factory().await).await;
}

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

/// Generates one `#[test]` per conformance check, each building its store
/// with the given expression (a future yielding a [`KeyStore`]).
///
/// ```
/// // In tests/conformance.rs of the crate that implements the store:
/// keyward::store_conformance_tests!(async { keyward::MemoryStore::new() });
/// # fn main() {}
/// ```
///
/// The tests run on a multi-threaded tokio runtime built by the macro; the
/// calling crate needs keyward with the `testing` feature and nothing else.
/// See [`keyward::store::conformance`](crate::store::conformance).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::__store_conformance_test!(
            $factory;
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
            take_expiry_reminders_once_under_concurrency
        );
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

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A fixed instant with whole microseconds, far from any real clock, so that
/// a store judging status by its own clock instead of `now` is caught.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 5, 17, 9, 30, 0)
        .single()
        .map(|t| t + TimeDelta::microseconds(123_456))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn owner() -> OwnerId {
    OwnerId::new(&format!("conformance-{}", KeyId::generate())).expect("valid owner id")
}

fn env(tag: &str) -> Environment {
    Environment::new(tag).expect("valid environment")
}

fn phc(id: &KeyId) -> SecretHash {
    // Looks like an argon2id PHC string; stores must never interpret it.
    SecretHash::new(format!(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0{}$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        id.as_str()
    ))
}

/// A minimal active record of `owner` in `environment`.
fn record(owner: &OwnerId, environment: &str) -> KeyRecord {
    let id = KeyId::generate();
    KeyRecord {
        secret_hash: phc(&id),
        id,
        owner: owner.clone(),
        environment: env(environment),
        name: "conformance key".into(),
        kind: KeyKind::Scoped,
        permissions: PermissionGrant::All,
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::any(),
        created_at: t0(),
        expires_at: None,
        revoked_at: None,
        suspended_at: None,
        last_used_at: None,
        last_used_ip: None,
        reminded_at: None,
        generation: 1,
    }
}

/// A record with every optional field set and awkward values in the text ones.
fn full_record(owner: &OwnerId) -> KeyRecord {
    let mut r = record(owner, "live");
    r.name = "Déploiement \"prod\" 🚀 'quotes' \\ back".into();
    r.permissions = PermissionGrant::only(["package:push", "package:push-new", "analytics:read"]);
    r.resources =
        ResourceScope::only(["AzureRM.DataFactory*", "AzureRM.Profile", "Contoso.?.Tools"]);
    r.ip_allowlist =
        IpAllowlist::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).expect("valid CIDRs");
    r.created_at = t0() - secs(86_400);
    r.expires_at = Some(t0() + secs(90 * 86_400) + TimeDelta::microseconds(1));
    r.kind = KeyKind::Legacy;
    r.suspended_at = Some(t0() - secs(3_600) + TimeDelta::microseconds(17));
    r.last_used_at = Some(t0() - TimeDelta::microseconds(999_999));
    r.last_used_ip = Some(ip("2001:db8:85a3::8a2e:370:7334"));
    r.reminded_at = Some(t0() - secs(60) + TimeDelta::microseconds(3));
    r.generation = (1 << 40) + 7;
    r
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid IP address")
}

/// A window start of its own for checks of global queries (reminders, audit
/// time ranges): years after `t0`, at a random minute with odd microseconds,
/// so checks sharing a store (or a database reused across runs) never see
/// each other's records in their window.
fn own_epoch() -> DateTime<Utc> {
    // Spread over about 1,900 years, so that two checks' 30-day windows in
    // one shared store practically never overlap (with a two-year spread
    // they could, about one run in twelve).
    t0() + TimeDelta::days(3_650)
        + TimeDelta::minutes(i64::from(rand::random::<u32>() % 1_000_000_000))
        + TimeDelta::microseconds(i64::from(rand::random::<u32>() % 1_000_000))
}

fn query(owner: &OwnerId) -> ListQuery {
    let mut q = ListQuery::new(owner.clone()).limit(crate::store::MAX_PAGE_SIZE);
    q.now = t0();
    q
}

fn quota(max_live: u32) -> Option<QuotaCheck> {
    Some(QuotaCheck {
        max_live,
        now: t0(),
    })
}

async fn must_get<S: KeyStore>(store: &S, id: &KeyId, check: &str) -> KeyRecord {
    match store.get(id).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{check}: get({id}) returned None for a stored record"),
        Err(e) => panic!("{check}: get({id}) failed: {e}"),
    }
}

async fn must_insert<S: KeyStore>(store: &S, r: &KeyRecord, q: Option<QuotaCheck>, check: &str) {
    if let Err(e) = store.insert(r, q).await {
        panic!("{check}: insert of {} failed: {e}", r.id);
    }
}

async fn must_list<S: KeyStore>(store: &S, q: &ListQuery, check: &str) -> Vec<KeyRecord> {
    match store.list(q).await {
        Ok(v) => v,
        Err(e) => panic!("{check}: list failed: {e}"),
    }
}

fn ids(records: &[KeyRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Every field of an inserted record comes back from `get` exactly: grants,
/// scopes, IPv4 and IPv6 ranges, optional times to the microsecond, a
/// generation above 2³², non-ASCII names and the hash string.
pub async fn insert_then_get_roundtrips<S: KeyStore>(store: S) {
    const C: &str = "insert_then_get_roundtrips";
    let o = owner();
    let full = full_record(&o);
    let minimal = record(&o, "test");
    must_insert(&store, &full, None, C).await;
    must_insert(&store, &minimal, None, C).await;
    assert_eq!(
        must_get(&store, &full.id, C).await,
        full,
        "{C}: full record changed on the way"
    );
    assert_eq!(
        must_get(&store, &minimal.id, C).await,
        minimal,
        "{C}: minimal record changed on the way"
    );
    let listed = must_list(&store, &query(&o), C).await;
    let mut expected = vec![full, minimal];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        listed, expected,
        "{C}: list must return the same records, ordered by id"
    );
}

/// `get` of an id that was never stored is `Ok(None)`, not an error.
pub async fn get_unknown_is_none<S: KeyStore>(store: S) {
    const C: &str = "get_unknown_is_none";
    let id = KeyId::generate();
    match store.get(&id).await {
        Ok(None) => {}
        Ok(Some(r)) => panic!("{C}: get of an unknown id returned record {}", r.id),
        Err(e) => panic!("{C}: get of an unknown id failed: {e}"),
    }
}

/// A second insert with an existing id is [`StoreError::DuplicateId`] (even
/// for another owner, even with a quota check that would pass), and the
/// first record is untouched.
pub async fn insert_duplicate_id_is_refused<S: KeyStore>(store: S) {
    const C: &str = "insert_duplicate_id_is_refused";
    let first = record(&owner(), "live");
    must_insert(&store, &first, None, C).await;
    let mut second = record(&owner(), "test");
    second.id = first.id.clone();
    second.name = "impostor".into();
    for q in [None, quota(10)] {
        assert_eq!(
            store.insert(&second, q).await,
            Err(StoreError::DuplicateId(first.id.clone())),
            "{C}: a duplicate id must be refused with DuplicateId (quota {q:?})"
        );
    }
    assert_eq!(
        must_get(&store, &first.id, C).await,
        first,
        "{C}: the first record was changed"
    );
    assert!(
        must_list(&store, &query(&second.owner), C).await.is_empty(),
        "{C}: the refused record shows up in its owner's listing"
    );
}

/// `update` with the stored generation replaces every field but the usage
/// fields (`last_used_at`, `last_used_ip`, which stay as stored), and the
/// next update must name the new generation.
pub async fn update_replaces_record<S: KeyStore>(store: S) {
    const C: &str = "update_replaces_record";
    let o = owner();
    let old = record(&o, "live");
    must_insert(&store, &old, None, C).await;
    let mut new = full_record(&o);
    new.id = old.id.clone();
    new.generation = old.generation + 1;
    if let Err(e) = store.update(&new, old.generation).await {
        panic!("{C}: update with the right generation failed: {e}");
    }
    // Every field is written except the usage ones, which only
    // `record_usage` writes: they stay as inserted (none).
    let mut expected = new.clone();
    expected.last_used_at = old.last_used_at;
    expected.last_used_ip = old.last_used_ip;
    assert_eq!(
        must_get(&store, &old.id, C).await,
        expected,
        "{C}: update did not write every field (or wrote the usage fields)"
    );
    let new = expected;
    let mut newer = new.clone();
    newer.name = "renamed".into();
    newer.generation = new.generation + 1;
    assert!(
        matches!(
            store.update(&newer, old.generation).await,
            Err(StoreError::Conflict { .. })
        ),
        "{C}: an update naming a superseded generation must conflict"
    );
    if let Err(e) = store.update(&newer, new.generation).await {
        panic!("{C}: second update with the right generation failed: {e}");
    }
    assert_eq!(
        must_get(&store, &old.id, C).await,
        newer,
        "{C}: second update not written"
    );
}

/// `update` with a stale generation is [`StoreError::Conflict`] carrying
/// the expected and the stored generation, and writes nothing.
pub async fn update_conflict_writes_nothing<S: KeyStore>(store: S) {
    const C: &str = "update_conflict_writes_nothing";
    let mut stored = record(&owner(), "live");
    stored.generation = 5;
    must_insert(&store, &stored, None, C).await;
    let mut changed = stored.clone();
    changed.name = "lost update".into();
    changed.revoked_at = Some(t0());
    changed.generation = 5;
    for expected in [4, 6, 0] {
        assert_eq!(
            store.update(&changed, expected).await,
            Err(StoreError::Conflict {
                id: stored.id.clone(),
                expected,
                found: 5
            }),
            "{C}: wrong expected generation {expected} must be a Conflict"
        );
    }
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        stored,
        "{C}: a conflicting update wrote"
    );
}

/// `update` of an unknown id is [`StoreError::NotFound`] and creates nothing.
pub async fn update_unknown_is_not_found<S: KeyStore>(store: S) {
    const C: &str = "update_unknown_is_not_found";
    let r = record(&owner(), "live");
    assert_eq!(
        store.update(&r, 1).await,
        Err(StoreError::NotFound(r.id.clone())),
        "{C}: update of an unknown id must be NotFound"
    );
    assert_eq!(
        store.get(&r.id).await,
        Ok(None),
        "{C}: update of an unknown id created it"
    );
}

/// `delete` removes the record from `get` and `list`, leaves its neighbours,
/// and a second delete is [`StoreError::NotFound`].
pub async fn delete_removes_record<S: KeyStore>(store: S) {
    const C: &str = "delete_removes_record";
    let o = owner();
    let gone = record(&o, "live");
    let kept = record(&o, "live");
    must_insert(&store, &gone, None, C).await;
    must_insert(&store, &kept, None, C).await;
    if let Err(e) = store.delete(&gone.id).await {
        panic!("{C}: delete failed: {e}");
    }
    assert_eq!(
        store.get(&gone.id).await,
        Ok(None),
        "{C}: deleted record still returned by get"
    );
    let listed = must_list(&store, &query(&o), C).await;
    assert_eq!(
        ids(&listed),
        vec![kept.id.as_str()],
        "{C}: listing after delete is wrong"
    );
    assert_eq!(
        store.delete(&gone.id).await,
        Err(StoreError::NotFound(gone.id.clone())),
        "{C}: deleting twice must be NotFound"
    );
    assert_eq!(
        must_get(&store, &kept.id, C).await,
        kept,
        "{C}: delete touched another record"
    );
}

/// `delete` of an unknown id is [`StoreError::NotFound`].
pub async fn delete_unknown_is_not_found<S: KeyStore>(store: S) {
    const C: &str = "delete_unknown_is_not_found";
    let id = KeyId::generate();
    assert_eq!(
        store.delete(&id).await,
        Err(StoreError::NotFound(id.clone())),
        "{C}: delete of an unknown id must be NotFound"
    );
}

/// A revoked record stays: `get` returns it with `revoked_at`, the
/// unfiltered listing and the `Revoked` filter include it, the `Active`
/// filter does not.
pub async fn revoked_stays_listed<S: KeyStore>(store: S) {
    const C: &str = "revoked_stays_listed";
    let o = owner();
    let active = record(&o, "live");
    let mut revoked = record(&o, "live");
    must_insert(&store, &active, None, C).await;
    must_insert(&store, &revoked, None, C).await;
    revoked.revoked_at = Some(t0() - secs(5));
    revoked.generation = 2;
    if let Err(e) = store.update(&revoked, 1).await {
        panic!("{C}: revoking update failed: {e}");
    }
    assert_eq!(
        must_get(&store, &revoked.id, C).await,
        revoked,
        "{C}: revoked record not returned"
    );
    let all = must_list(&store, &query(&o), C).await;
    assert_eq!(
        all.len(),
        2,
        "{C}: unfiltered listing must include the revoked key"
    );
    assert!(
        all.contains(&revoked),
        "{C}: revoked key missing from the listing"
    );
    let only_revoked = must_list(&store, &query(&o).status(KeyStatus::Revoked), C).await;
    assert_eq!(
        ids(&only_revoked),
        vec![revoked.id.as_str()],
        "{C}: Revoked filter"
    );
    let only_active = must_list(&store, &query(&o).status(KeyStatus::Active), C).await;
    assert_eq!(
        ids(&only_active),
        vec![active.id.as_str()],
        "{C}: Active filter"
    );
}

/// A listing returns only the owner's keys, and with an environment only
/// that environment's.
pub async fn list_filters_owner_and_environment<S: KeyStore>(store: S) {
    const C: &str = "list_filters_owner_and_environment";
    let o = owner();
    let other = owner();
    let mut live = vec![record(&o, "live"), record(&o, "live"), record(&o, "live")];
    let mut test = vec![record(&o, "test"), record(&o, "test")];
    let foreign = [record(&other, "live"), record(&other, "test")];
    for r in live.iter().chain(&test).chain(&foreign) {
        must_insert(&store, r, None, C).await;
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    test.sort_by(|a, b| a.id.cmp(&b.id));
    let got = must_list(&store, &query(&o).environment(env("live")), C).await;
    assert_eq!(got, live, "{C}: environment filter 'live'");
    let got = must_list(&store, &query(&o).environment(env("test")), C).await;
    assert_eq!(got, test, "{C}: environment filter 'test'");
    let got = must_list(&store, &query(&o).environment(env("staging")), C).await;
    assert!(
        got.is_empty(),
        "{C}: an environment with no keys must list nothing"
    );
    let got = must_list(&store, &query(&o), C).await;
    assert_eq!(got.len(), 5, "{C}: unfiltered listing of the owner");
    assert!(
        got.iter().all(|r| r.owner == o),
        "{C}: listing returned another owner's key"
    );
    let got = must_list(&store, &query(&owner()), C).await;
    assert!(
        got.is_empty(),
        "{C}: an owner with no keys must list nothing"
    );
}

/// The status filter judges every key at `query.now`, not at the store's
/// clock: a key expiring between two `now`s moves from Active to Expired;
/// revoked wins over expired.
pub async fn list_filters_status_at_now<S: KeyStore>(store: S) {
    const C: &str = "list_filters_status_at_now";
    let o = owner();
    let never = record(&o, "live");
    let mut later = record(&o, "live");
    later.expires_at = Some(t0() + secs(60));
    let mut past = record(&o, "live");
    past.expires_at = Some(t0() - secs(60));
    let mut at_now = record(&o, "live");
    at_now.expires_at = Some(t0()); // expires_at <= now is expired
    let mut revoked_expired = record(&o, "live");
    revoked_expired.expires_at = Some(t0() - secs(60));
    revoked_expired.revoked_at = Some(t0() - secs(120));
    for r in [&never, &later, &past, &at_now, &revoked_expired] {
        must_insert(&store, r, None, C).await;
    }
    let sorted = |mut v: Vec<&KeyRecord>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let listed = |v: Vec<KeyRecord>| {
        v.into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect::<Vec<_>>()
    };

    let active = must_list(&store, &query(&o).status(KeyStatus::Active), C).await;
    assert_eq!(
        listed(active),
        sorted(vec![&never, &later]),
        "{C}: Active at t0"
    );
    let expired = must_list(&store, &query(&o).status(KeyStatus::Expired), C).await;
    assert_eq!(
        listed(expired),
        sorted(vec![&past, &at_now]),
        "{C}: Expired at t0"
    );
    let revoked = must_list(&store, &query(&o).status(KeyStatus::Revoked), C).await;
    assert_eq!(
        listed(revoked),
        sorted(vec![&revoked_expired]),
        "{C}: Revoked at t0"
    );

    let mut q = query(&o).status(KeyStatus::Expired);
    q.now = t0() + secs(3600);
    let expired = must_list(&store, &q, C).await;
    assert_eq!(
        listed(expired),
        sorted(vec![&later, &past, &at_now]),
        "{C}: Expired an hour after t0"
    );
    let mut q = query(&o).status(KeyStatus::Active);
    q.now = t0() - secs(3600);
    let active = must_list(&store, &q, C).await;
    assert_eq!(
        listed(active),
        sorted(vec![&never, &later, &past, &at_now]),
        "{C}: Active an hour before t0"
    );
    let q = query(&o).environment(env("test")).status(KeyStatus::Active);
    assert!(
        must_list(&store, &q, C).await.is_empty(),
        "{C}: status and environment combine"
    );
}

/// Listings are ordered by id in byte order (uppercase before lowercase), and
/// `after` + `limit` page through all keys with no gap and no repeat.
pub async fn list_paginates_by_id<S: KeyStore>(store: S) {
    const C: &str = "list_paginates_by_id";
    let o = owner();
    let mut all = Vec::new();
    // Mixed-case ids whose byte order differs from a case-insensitive order.
    for fixed in [
        "AAAAzzzz", "aaaaAAAA", "ZZZZaaaa", "zzzzZZZZ", "0000aaaa", "BBBBbbbb",
    ] {
        let mut r = record(&o, "live");
        r.id =
            KeyId::new(&format!("{fixed}{}", &KeyId::generate().as_str()[..6])).expect("valid id");
        r.secret_hash = phc(&r.id);
        all.push(r);
    }
    for _ in 0..19 {
        all.push(record(&o, "live"));
    }
    for r in &all {
        must_insert(&store, r, None, C).await;
    }
    all.sort_by(|a, b| a.id.as_str().as_bytes().cmp(b.id.as_str().as_bytes()));

    let one_page = must_list(&store, &query(&o), C).await;
    assert_eq!(
        ids(&one_page),
        ids(&all),
        "{C}: listing not ordered by id in byte order"
    );

    let mut pages = Vec::new();
    let mut after: Option<KeyId> = None;
    for _ in 0..10 {
        let mut q = query(&o).limit(10);
        if let Some(a) = after.clone() {
            q = q.after(a);
        }
        let page = must_list(&store, &q, C).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10, "{C}: page larger than the limit");
        after = page.last().map(|r| r.id.clone());
        pages.push(page);
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![10, 10, 5],
        "{C}: page sizes with limit 10 over 25 keys"
    );
    let joined: Vec<KeyRecord> = pages.into_iter().flatten().collect();
    assert_eq!(
        joined, all,
        "{C}: pages joined must equal the full ordered listing"
    );

    let q = query(&o).after(all[0].id.clone()).limit(1);
    assert_eq!(
        ids(&must_list(&store, &q, C).await),
        vec![all[1].id.as_str()],
        "{C}: `after` is exclusive"
    );
    let q = query(&o).environment(env("live")).after(all[23].id.clone());
    assert_eq!(
        ids(&must_list(&store, &q, C).await),
        vec![all[24].id.as_str()],
        "{C}: `after` combined with a filter"
    );
}

/// The quota counts live keys per owner **and** environment: with quota 2,
/// a third key in the same environment is [`StoreError::QuotaExceeded`],
/// while another environment, another owner, or no quota check still insert.
pub async fn quota_counts_live_keys<S: KeyStore>(store: S) {
    const C: &str = "quota_counts_live_keys";
    let o = owner();
    must_insert(&store, &record(&o, "live"), quota(2), C).await;
    must_insert(&store, &record(&o, "live"), quota(2), C).await;
    let third = record(&o, "live");
    assert_eq!(
        store.insert(&third, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: third live key with quota 2"
    );
    must_insert(&store, &record(&o, "test"), quota(2), C).await;
    must_insert(&store, &record(&owner(), "live"), quota(2), C).await;
    must_insert(&store, &third, quota(3), C).await;
    let fourth = record(&o, "live");
    assert_eq!(
        store.insert(&fourth, quota(3)).await,
        Err(StoreError::QuotaExceeded { limit: 3 }),
        "{C}: fourth live key with quota 3"
    );
    must_insert(&store, &fourth, None, C).await;
    let live = must_list(&store, &query(&o).environment(env("live")), C).await;
    assert_eq!(
        live.len(),
        4,
        "{C}: an insert without a quota check is not limited"
    );
}

/// Revoked keys and keys expired at `quota.now` do not count against the quota.
pub async fn quota_frees_slot_on_revoke_and_expiry<S: KeyStore>(store: S) {
    const C: &str = "quota_frees_slot_on_revoke_and_expiry";
    let o = owner();
    let mut a = record(&o, "live");
    let mut b = record(&o, "live");
    b.expires_at = Some(t0() + secs(60));
    must_insert(&store, &a, quota(2), C).await;
    must_insert(&store, &b, quota(2), C).await;
    let c = record(&o, "live");
    assert_eq!(
        store.insert(&c, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: quota full"
    );
    a.revoked_at = Some(t0());
    a.generation = 2;
    if let Err(e) = store.update(&a, 1).await {
        panic!("{C}: revoking update failed: {e}");
    }
    must_insert(&store, &c, quota(2), C).await;
    let d = record(&o, "live");
    assert_eq!(
        store.insert(&d, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: quota full again after the freed slot was used"
    );
    let later = Some(QuotaCheck {
        max_live: 2,
        now: t0() + secs(60),
    });
    must_insert(&store, &d, later, C).await;
    let mut already_expired = record(&o, "live");
    already_expired.expires_at = Some(t0() - secs(1));
    must_insert(&store, &already_expired, None, C).await;
    let e = record(&o, "live");
    assert_eq!(
        store.insert(&e, later).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: an expired key must not free more than its own slot"
    );
}

/// A refused insert (quota) writes nothing: the id is unknown afterwards.
pub async fn quota_refusal_writes_nothing<S: KeyStore>(store: S) {
    const C: &str = "quota_refusal_writes_nothing";
    let o = owner();
    must_insert(&store, &record(&o, "live"), quota(1), C).await;
    let refused = record(&o, "live");
    assert_eq!(
        store.insert(&refused, quota(1)).await,
        Err(StoreError::QuotaExceeded { limit: 1 }),
        "{C}: second key with quota 1"
    );
    assert_eq!(
        store.get(&refused.id).await,
        Ok(None),
        "{C}: a refused insert was stored"
    );
    assert_eq!(
        must_list(&store, &query(&o), C).await.len(),
        1,
        "{C}: listing after refusal"
    );
}

/// 64 inserts for one owner and environment start at the same moment with
/// quota 3: exactly 3 succeed, the other 61 are
/// [`StoreError::QuotaExceeded`], and exactly 3 keys are stored.
///
/// Run it on a multi-threaded runtime for real parallelism (the macro does).
pub async fn quota_holds_under_concurrency<S: KeyStore>(store: S) {
    const C: &str = "quota_holds_under_concurrency";
    const TASKS: usize = 64;
    let store = Arc::new(store);
    let o = owner();
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut set = JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let r = record(&o, "live");
        set.spawn(async move {
            barrier.wait().await;
            store.insert(&r, quota(3)).await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => ok += 1,
            Ok(Err(StoreError::QuotaExceeded { limit: 3 })) => refused += 1,
            Ok(Err(e)) => panic!(
                "{C}: a concurrent insert failed with {e}, expected success or QuotaExceeded"
            ),
            Err(e) => panic!("{C}: an insert task panicked: {e}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (3, TASKS - 3),
        "{C}: successes and refusals with quota 3"
    );
    let stored = must_list(&store, &query(&o), C).await;
    assert_eq!(stored.len(), 3, "{C}: stored keys after the race");
}

/// The fields added with key kinds, suspension, usage addresses and expiry
/// reminders come back exactly: a legacy key with `suspended_at`, an IPv4
/// `last_used_ip` and `reminded_at`, and a scoped one with an IPv6 address.
pub async fn new_fields_roundtrip<S: KeyStore>(store: S) {
    const C: &str = "new_fields_roundtrip";
    let o = owner();
    let mut legacy = record(&o, "live");
    legacy.kind = KeyKind::Legacy;
    legacy.suspended_at = Some(t0() - secs(30) + TimeDelta::microseconds(1));
    legacy.last_used_at = Some(t0() - secs(40));
    legacy.last_used_ip = Some(ip("203.0.113.9"));
    legacy.reminded_at = Some(t0() - secs(50) + TimeDelta::microseconds(999_999));
    let mut v6 = record(&o, "live");
    v6.last_used_at = Some(t0() - secs(1));
    v6.last_used_ip = Some(ip("2001:db8::ff00:42:8329"));
    let full = full_record(&o);
    for r in [&legacy, &v6, &full] {
        must_insert(&store, r, None, C).await;
    }
    for r in [&legacy, &v6, &full] {
        assert_eq!(
            must_get(&store, &r.id, C).await,
            *r,
            "{C}: kind, suspended_at, last_used_ip or reminded_at changed on the way"
        );
    }
    let mut expected = vec![legacy, v6, full];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        must_list(&store, &query(&o), C).await,
        expected,
        "{C}: list must return the new fields too"
    );
}

/// `update` never writes the usage fields: a use recorded before the
/// update survives it, whatever the updating record says, while the other
/// new fields (kind, `suspended_at`, `reminded_at`) are written.
pub async fn update_leaves_usage_fields_alone<S: KeyStore>(store: S) {
    const C: &str = "update_leaves_usage_fields_alone";
    let stored = record(&owner(), "live");
    must_insert(&store, &stored, None, C).await;
    let used_at = t0() + secs(10);
    if let Err(e) = store
        .record_usage(&stored.id, used_at, Some(ip("198.51.100.20")))
        .await
    {
        panic!("{C}: record_usage failed: {e}");
    }
    // A manager read the record before the use and writes it back after.
    let mut changed = stored.clone();
    changed.name = "suspended for review".into();
    changed.kind = KeyKind::Legacy;
    changed.suspended_at = Some(t0() + secs(20));
    changed.reminded_at = Some(t0() + secs(21));
    changed.generation = 2;
    if let Err(e) = store.update(&changed, 1).await {
        panic!("{C}: update failed: {e}");
    }
    let mut expected = changed.clone();
    expected.last_used_at = Some(used_at);
    expected.last_used_ip = Some(ip("198.51.100.20"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: update erased a recorded use (or did not write kind / suspended_at / reminded_at)"
    );
    // Usage fields in the updating record are ignored, later or not.
    let mut newer = expected.clone();
    newer.last_used_at = Some(used_at + secs(3_600));
    newer.last_used_ip = Some(ip("2001:db8::1"));
    newer.suspended_at = None;
    newer.generation = 3;
    if let Err(e) = store.update(&newer, 2).await {
        panic!("{C}: second update failed: {e}");
    }
    let mut expected = newer.clone();
    expected.last_used_at = Some(used_at);
    expected.last_used_ip = Some(ip("198.51.100.20"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: update wrote last_used_at / last_used_ip"
    );
}

/// `record_usage` sets `last_used_at` and `last_used_ip` together, ignores
/// a use older than the stored one (an equal time still writes), never
/// changes the generation or any other field, and is `Ok` (doing nothing)
/// for an unknown id.
pub async fn record_usage_sets_last_use<S: KeyStore>(store: S) {
    const C: &str = "record_usage_sets_last_use";
    let stored = record(&owner(), "live");
    must_insert(&store, &stored, None, C).await;
    let use_once = |at: DateTime<Utc>, addr: Option<IpAddr>| {
        let store = &store;
        let id = stored.id.clone();
        async move {
            if let Err(e) = store.record_usage(&id, at, addr).await {
                panic!("{C}: record_usage({id}, {at}) failed: {e}");
            }
        }
    };
    let t1 = t0() + secs(100) + TimeDelta::microseconds(7);
    use_once(t1, Some(ip("2001:db8::7"))).await;
    let mut expected = stored.clone();
    expected.last_used_at = Some(t1);
    expected.last_used_ip = Some(ip("2001:db8::7"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: first use not recorded exactly (or the generation / another field changed)"
    );
    use_once(t1 - secs(5), Some(ip("192.0.2.1"))).await;
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: an older use overwrote a newer one"
    );
    use_once(t1, Some(ip("192.0.2.2"))).await;
    expected.last_used_ip = Some(ip("192.0.2.2"));
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: a use at the stored time must be written"
    );
    let t2 = t1 + secs(60);
    use_once(t2, None).await;
    expected.last_used_at = Some(t2);
    expected.last_used_ip = None;
    assert_eq!(
        must_get(&store, &stored.id, C).await,
        expected,
        "{C}: a later use without an address must set the time and clear the address"
    );
    assert_eq!(
        expected.generation, stored.generation,
        "{C}: record_usage must not bump the generation"
    );
    // The generation is unchanged, so an update naming it still succeeds.
    let mut renamed = expected.clone();
    renamed.name = "after use".into();
    renamed.generation = stored.generation + 1;
    if let Err(e) = store.update(&renamed, stored.generation).await {
        panic!("{C}: update after record_usage failed (generation bumped?): {e}");
    }
    let unknown = KeyId::generate();
    assert_eq!(
        store
            .record_usage(&unknown, t1, Some(ip("192.0.2.3")))
            .await,
        Ok(()),
        "{C}: record_usage of an unknown id must be Ok"
    );
    assert_eq!(
        store.get(&unknown).await,
        Ok(None),
        "{C}: record_usage of an unknown id created it"
    );
}

/// A deleted id is never reused: inserting a record with it again is
/// [`StoreError::DuplicateId`], with or without a quota, for scoped and
/// legacy keys, and nothing is stored.
pub async fn deleted_ids_are_never_reused<S: KeyStore>(store: S) {
    const C: &str = "deleted_ids_are_never_reused";
    let o = owner();
    let scoped = record(&o, "live");
    let mut legacy = record(&o, "live");
    legacy.kind = KeyKind::Legacy;
    for r in [&scoped, &legacy] {
        must_insert(&store, r, None, C).await;
        if let Err(e) = store.delete(&r.id).await {
            panic!("{C}: delete failed: {e}");
        }
        let mut again = record(&owner(), "test");
        again.id = r.id.clone();
        again.secret_hash = phc(&again.id);
        again.kind = r.kind;
        for q in [None, quota(10)] {
            assert_eq!(
                store.insert(&again, q).await,
                Err(StoreError::DuplicateId(r.id.clone())),
                "{C}: re-inserting a deleted {:?} id must be DuplicateId (quota {q:?})",
                r.kind
            );
        }
        assert_eq!(
            store.get(&r.id).await,
            Ok(None),
            "{C}: a refused re-insert was stored"
        );
        assert!(
            must_list(&store, &query(&again.owner), C).await.is_empty(),
            "{C}: a refused re-insert shows up in a listing"
        );
    }
    // Other ids still insert.
    must_insert(&store, &record(&o, "live"), quota(1), C).await;
}

/// Suspended is a status of its own: `Suspended` lists suspended keys that
/// are neither revoked nor expired at `now`, `Active` excludes them, and
/// revoked and expired win over suspended.
pub async fn list_filters_suspended_and_active<S: KeyStore>(store: S) {
    const C: &str = "list_filters_suspended_and_active";
    let o = owner();
    let active = record(&o, "live");
    let mut suspended = record(&o, "live");
    suspended.suspended_at = Some(t0() - secs(10));
    let mut suspended_expiring = record(&o, "live");
    suspended_expiring.suspended_at = Some(t0() - secs(10));
    suspended_expiring.expires_at = Some(t0() + secs(60));
    let mut suspended_expired = record(&o, "live");
    suspended_expired.suspended_at = Some(t0() - secs(10));
    suspended_expired.expires_at = Some(t0() - secs(60));
    let mut suspended_revoked = record(&o, "live");
    suspended_revoked.suspended_at = Some(t0() - secs(10));
    suspended_revoked.revoked_at = Some(t0() - secs(5));
    let all = [
        &active,
        &suspended,
        &suspended_expiring,
        &suspended_expired,
        &suspended_revoked,
    ];
    for r in all {
        must_insert(&store, r, None, C).await;
    }
    let at = |now: DateTime<Utc>, status: KeyStatus| {
        let mut q = query(&o).status(status);
        q.now = now;
        q
    };
    let expect = |now: DateTime<Utc>, status: KeyStatus| {
        let mut v: Vec<String> = all
            .iter()
            .filter(|r| r.status(now) == status)
            .map(|r| r.id.as_str().to_owned())
            .collect();
        v.sort();
        v
    };
    for now in [t0(), t0() + secs(3_600), t0() - secs(3_600)] {
        for status in [
            KeyStatus::Active,
            KeyStatus::Suspended,
            KeyStatus::Expired,
            KeyStatus::Revoked,
        ] {
            let got: Vec<String> = must_list(&store, &at(now, status), C)
                .await
                .into_iter()
                .map(|r| r.id.as_str().to_owned())
                .collect();
            assert_eq!(got, expect(now, status), "{C}: {status:?} at {now}");
        }
    }
    // Spelled out at t0, so a wrong KeyRecord::status cannot hide a wrong store.
    let got = must_list(&store, &at(t0(), KeyStatus::Suspended), C).await;
    let mut want = vec![suspended.id.as_str(), suspended_expiring.id.as_str()];
    want.sort();
    assert_eq!(ids(&got), want, "{C}: Suspended at t0");
    let got = must_list(&store, &at(t0(), KeyStatus::Active), C).await;
    assert_eq!(ids(&got), vec![active.id.as_str()], "{C}: Active at t0");
}

/// A suspended key still counts against the quota (it can be resumed).
pub async fn quota_counts_suspended_keys<S: KeyStore>(store: S) {
    const C: &str = "quota_counts_suspended_keys";
    let o = owner();
    let mut a = record(&o, "live");
    must_insert(&store, &a, quota(2), C).await;
    let mut b = record(&o, "live");
    b.suspended_at = Some(t0() - secs(1));
    must_insert(&store, &b, quota(2), C).await;
    a.suspended_at = Some(t0());
    a.generation = 2;
    if let Err(e) = store.update(&a, 1).await {
        panic!("{C}: suspending update failed: {e}");
    }
    let c = record(&o, "live");
    assert_eq!(
        store.insert(&c, quota(2)).await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: two suspended keys fill a quota of 2"
    );
    must_insert(&store, &c, quota(3), C).await;
}

/// `take_expiry_reminders(now, until, limit)` returns exactly the keys that
/// expire in `(now, until]`, are not revoked and not yet reminded (suspended
/// ones included), ordered by expiry, at most `limit`, with `reminded_at`
/// set to `now` in the result and in the store, other fields and the
/// generation unchanged. A second call returns the rest, a third none.
pub async fn take_expiry_reminders_returns_due_keys<S: KeyStore>(store: S) {
    const C: &str = "take_expiry_reminders_returns_due_keys";
    let now = own_epoch();
    let until = now + TimeDelta::days(7);
    let o = owner();
    let expiring = |at: DateTime<Utc>| {
        let mut r = record(&o, "live");
        r.expires_at = Some(at);
        r
    };
    let at_until = expiring(until);
    let in_two_days = expiring(now + TimeDelta::days(2));
    let mut suspended = expiring(now + TimeDelta::days(3));
    suspended.suspended_at = Some(now - secs(1));
    suspended.generation = 9;
    let just_after = expiring(now + TimeDelta::microseconds(1));
    let mut used = expiring(now + TimeDelta::days(5));
    used.last_used_at = Some(now - secs(5));
    used.last_used_ip = Some(ip("2001:db8::5"));
    // In expiry order: the order the calls must return them in.
    let due = [&just_after, &in_two_days, &suspended, &used, &at_until];

    let expired_at_now = expiring(now);
    let expired_before = expiring(now - TimeDelta::days(1));
    let too_late = expiring(until + TimeDelta::microseconds(1));
    let mut revoked = expiring(now + TimeDelta::days(1));
    revoked.revoked_at = Some(now - secs(10));
    let mut reminded = expiring(now + TimeDelta::days(1));
    reminded.reminded_at = Some(now - TimeDelta::days(1));
    let never = record(&o, "live");
    let not_due = [
        &expired_at_now,
        &expired_before,
        &too_late,
        &revoked,
        &reminded,
        &never,
    ];
    // Inserted out of expiry order.
    for r in [&at_until, &revoked, &used, &expired_at_now, &just_after]
        .into_iter()
        .chain([&never, &suspended, &too_late, &in_two_days, &reminded])
        .chain([&expired_before])
    {
        must_insert(&store, r, None, C).await;
    }
    let reminded_copy = |r: &KeyRecord| {
        let mut r = r.clone();
        r.reminded_at = Some(now);
        r
    };
    let take = |limit: usize| {
        let store = &store;
        async move {
            match store.take_expiry_reminders(now, until, limit).await {
                Ok(v) => v,
                Err(e) => panic!("{C}: take_expiry_reminders failed: {e}"),
            }
        }
    };

    let first = take(2).await;
    let want: Vec<KeyRecord> = due[..2].iter().map(|r| reminded_copy(r)).collect();
    assert_eq!(
        first, want,
        "{C}: first call with limit 2 must return the two keys expiring first, marked"
    );
    let rest = take(100).await;
    let want: Vec<KeyRecord> = due[2..].iter().map(|r| reminded_copy(r)).collect();
    assert_eq!(
        rest, want,
        "{C}: second call must return the remaining due keys, ordered by expiry"
    );
    assert!(
        take(100).await.is_empty(),
        "{C}: a third call must return nothing: every due key was reminded"
    );
    assert!(
        store
            .take_expiry_reminders(now, until, 0)
            .await
            .is_ok_and(|v| v.is_empty()),
        "{C}: limit 0 must return nothing"
    );
    for r in due {
        assert_eq!(
            must_get(&store, &r.id, C).await,
            reminded_copy(r),
            "{C}: a taken key must be stored with reminded_at = now and nothing else changed"
        );
    }
    for r in not_due {
        assert_eq!(
            must_get(&store, &r.id, C).await,
            *r,
            "{C}: a key that was not due was changed"
        );
    }
}

/// Two callers taking reminders at the same time, in batches of 3, over 50
/// due keys: every key is returned exactly once in total, and afterwards
/// none is left.
///
/// Run it on a multi-threaded runtime for real parallelism (the macro does).
pub async fn take_expiry_reminders_once_under_concurrency<S: KeyStore>(store: S) {
    const C: &str = "take_expiry_reminders_once_under_concurrency";
    const KEYS: usize = 50;
    const WORKERS: usize = 2;
    let now = own_epoch();
    let until = now + TimeDelta::days(30);
    let o = owner();
    let mut want = Vec::new();
    for i in 0..KEYS {
        let mut r = record(&o, "live");
        // Some keys share an expiry instant.
        r.expires_at = Some(now + TimeDelta::hours(1 + (i as i64 % 17)));
        must_insert(&store, &r, None, C).await;
        want.push(r.id.as_str().to_owned());
    }
    want.sort();
    let store = Arc::new(store);
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut set = JoinSet::new();
    for _ in 0..WORKERS {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = store.take_expiry_reminders(now, until, 3).await?;
                if batch.is_empty() {
                    return Ok::<_, StoreError>(got);
                }
                if batch.len() > 3 {
                    panic!("{C}: a call with limit 3 returned {} keys", batch.len());
                }
                got.extend(batch.into_iter().map(|r| r.id.as_str().to_owned()));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(got)) => all.extend(got),
            Ok(Err(e)) => panic!("{C}: a concurrent take_expiry_reminders failed: {e}"),
            Err(e) => panic!("{C}: a worker panicked: {e}"),
        }
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "{C}: a key was returned to more than one call"
    );
    all.sort();
    assert_eq!(
        all, want,
        "{C}: every due key must be returned exactly once"
    );
    match store.take_expiry_reminders(now, until, KEYS).await {
        Ok(left) => assert!(left.is_empty(), "{C}: keys left after the workers finished"),
        Err(e) => panic!("{C}: final take_expiry_reminders failed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Audit sinks
// ---------------------------------------------------------------------------

/// Checks an [`AuditSink`]: one batch recorded, then read back by key, by
/// owner, by owner and time range (`from` inclusive, `to` exclusive), by time
/// range alone, and with a limit; oldest first (events at the same time in
/// the order recorded); every field intact, IPv4 and IPv6 addresses and all
/// [`AuditAction`]s. Uses its own owners, keys and a time window of its own,
/// so the sink may be shared with other checks.
///
/// # Panics
///
/// When the sink breaks a rule: the message says which.
pub async fn audit_sink_conformance<A: AuditSink>(sink: A) {
    const C: &str = "audit_sink_conformance";
    let ta = own_epoch();
    let at = |s: i64| ta + secs(s);
    let (o1, o2) = (owner(), owner());
    let (k1, k2, k3) = (KeyId::generate(), KeyId::generate(), KeyId::generate());
    let event = |s: i64, action: AuditAction, o: Option<&OwnerId>, k: Option<&KeyId>| AuditEvent {
        owner: o.cloned(),
        key_id: k.cloned(),
        ..AuditEvent::new(at(s), action)
    };
    let created = AuditEvent {
        actor: Some("alice@contoso".into()),
        client_ip: Some(ip("192.0.2.44")),
        detail: "name, permissions".into(),
        ..event(0, AuditAction::Created, Some(&o1), Some(&k1))
    };
    let failed = AuditEvent {
        client_ip: Some(ip("2001:db8:0:1::beef")),
        detail: "wrong_secret".into(),
        count: 4_000_000_000_123,
        ..event(10, AuditAction::AuthenticationFailed, Some(&o1), Some(&k1))
    };
    let edited_same_time = AuditEvent {
        actor: Some("Ünïcødé \"actor\" 🚀".into()),
        detail: "resources".into(),
        ..event(10, AuditAction::Edited, Some(&o1), Some(&k1))
    };
    let revoked = event(20, AuditAction::Revoked, Some(&o1), Some(&k2));
    let other_owner = AuditEvent {
        actor: Some("mallory".into()),
        ..event(5, AuditAction::ManagementDenied, Some(&o2), None)
    };
    let anonymous = AuditEvent {
        detail: "overflow".into(),
        count: 17,
        ..event(15, AuditAction::AuthenticationFailed, None, None)
    };
    let every_action: Vec<AuditEvent> = AuditAction::ALL
        .iter()
        .enumerate()
        .map(|(i, a)| event(30 + i as i64, *a, Some(&o2), Some(&k3)))
        .collect();
    // Recorded out of time order, in one batch.
    let mut batch = vec![
        revoked.clone(),
        created.clone(),
        other_owner.clone(),
        failed.clone(),
        anonymous.clone(),
        edited_same_time.clone(),
    ];
    batch.extend(every_action.iter().rev().cloned());
    if let Err(e) = sink.record(&batch).await {
        panic!("{C}: record of a batch failed: {e}");
    }
    if let Err(e) = sink.record(&[]).await {
        panic!("{C}: record of an empty batch failed: {e}");
    }
    let read = |q: AuditQuery| {
        let sink = &sink;
        async move {
            match sink.query(&q).await {
                Ok(v) => v,
                Err(e) => panic!("{C}: query {q:?} failed: {e}"),
            }
        }
    };

    assert_eq!(
        read(AuditQuery::key(k1.clone())).await,
        vec![created.clone(), failed.clone(), edited_same_time.clone()],
        "{C}: by key: oldest first, same-time events in recorded order, every field intact"
    );
    assert_eq!(
        read(AuditQuery::owner(o1.clone())).await,
        vec![
            created.clone(),
            failed.clone(),
            edited_same_time.clone(),
            revoked.clone()
        ],
        "{C}: by owner"
    );
    assert_eq!(
        read(AuditQuery::owner(o1.clone()).between(at(10), at(20))).await,
        vec![failed.clone(), edited_same_time.clone()],
        "{C}: by owner in [from, to): from is inclusive, to exclusive"
    );
    let mut limited = AuditQuery::owner(o1.clone());
    limited.limit = 2;
    assert_eq!(
        read(limited).await,
        vec![created.clone(), failed.clone()],
        "{C}: limit keeps the oldest"
    );
    let mut both = AuditQuery::key(k1.clone());
    both.owner = Some(o2.clone());
    assert!(
        read(both).await.is_empty(),
        "{C}: owner and key filters combine"
    );
    assert_eq!(
        read(AuditQuery::all().between(at(0), at(16))).await,
        vec![
            created.clone(),
            other_owner.clone(),
            failed.clone(),
            edited_same_time.clone(),
            anonymous.clone()
        ],
        "{C}: by time range alone, events without owner or key included"
    );
    assert_eq!(
        read(AuditQuery::key(k3.clone())).await,
        every_action,
        "{C}: every action must round-trip"
    );
    assert!(
        read(AuditQuery::key(KeyId::generate())).await.is_empty(),
        "{C}: a key without events has none"
    );
}

// ---------------------------------------------------------------------------
// Session stores
// ---------------------------------------------------------------------------

/// A window start of its own for [`session_store_conformance`]: in the
/// distant past (between the years 1200 and 1700, at a random minute with
/// odd microseconds), so that its global `delete_expired_sessions` calls
/// never reach a session of a real time or of the other checks, and two
/// runs on a database reused across runs practically never share a window.
fn session_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1200, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        + TimeDelta::minutes(i64::from(rand::random::<u32>() % 260_000_000))
        + TimeDelta::microseconds(i64::from(rand::random::<u32>() % 1_000_000))
}

/// A session of `key_id` from `created_at` to `expires_at`, with a snapshot
/// like the one an exchange takes, a random hash and awkward text.
fn session(
    key_id: &KeyId,
    owner: &OwnerId,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> SessionRecord {
    SessionRecord {
        id: KeyId::generate(),
        key_id: key_id.clone(),
        owner: owner.clone(),
        environment: env("live"),
        key_name: "CI 🚀 \"nightly\" 'push' \\ Ünïcødé".into(),
        permissions: PermissionGrant::only(["package:push", "package:unlist"]),
        resources: ResourceScope::only(["Contoso.*", "Fabrikam.Core", "Fabrikam.?.Tools"]),
        ip_allowlist: IpAllowlist::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
            .expect("valid CIDRs"),
        created_at,
        expires_at,
        revoked: false,
        secret_hash: SessionHash::from_bytes(rand::random()),
    }
}

async fn must_get_session<S: SessionStore>(
    store: &S,
    id: &KeyId,
    what: &str,
) -> Option<SessionRecord> {
    const C: &str = "session_store_conformance";
    match store.get_session(id).await {
        Ok(found) => found,
        Err(e) => panic!("{C}: get_session({id}) {what} failed: {e}"),
    }
}

async fn must_revoke_sessions<S: SessionStore>(store: &S, key_id: &KeyId, what: &str) -> u64 {
    const C: &str = "session_store_conformance";
    match store.revoke_sessions(key_id).await {
        Ok(n) => n,
        Err(e) => panic!("{C}: revoke_sessions({key_id}) {what} failed: {e}"),
    }
}

async fn must_delete_expired<S: SessionStore>(store: &S, now: DateTime<Utc>, what: &str) -> u64 {
    const C: &str = "session_store_conformance";
    match store.delete_expired_sessions(now).await {
        Ok(n) => n,
        Err(e) => panic!("{C}: delete_expired_sessions({now}) {what} failed: {e}"),
    }
}

/// Checks a [`SessionStore`] against the contract written on the trait:
///
/// * `insert_session` then `get_session` gives back every field exactly:
///   the key snapshot (non-ASCII name, permission and resource lists, IPv4
///   and IPv6 ranges; also `All`, empty and "any" values), times to the
///   microsecond, the `revoked` flag and all 32 hash bytes;
/// * `get_session` of an unknown id is `Ok(None)`, and revoked and expired
///   sessions are returned until deleted (every session of the check is
///   expired by the wall clock, so a store that filters by its own clock is
///   caught);
/// * inserting an id that exists is [`StoreError::DuplicateId`] carrying
///   that id, even for an identical record, and writes nothing;
/// * `revoke_sessions(key_id)` marks every session of that key (and
///   nothing else of it) revoked, leaves other keys' sessions alone,
///   matches on the key id and not the session id, and returns how many
///   were not revoked before: sessions already revoked, unknown keys, a
///   second call and deleted sessions count 0;
/// * `delete_expired_sessions(now)` deletes exactly the sessions that
///   expired at or before `now` (`expires_at == now` included), revoked or
///   not, returns how many, and leaves the others untouched;
/// * `session_owner(key_id)` is the owner stored with the key's sessions
///   (revoked ones too), `None` for a session id, an unknown key or a key
///   whose sessions were all deleted;
/// * `insert_session` with a [`SessionCap`] refuses, with
///   [`StoreError::TooManySessions`] and without storing it, a session of a
///   key that already has `max_live` live sessions (not revoked, expiring
///   after `cap.now`); sessions of other keys, revoked ones and ones
///   expired at `cap.now` do not count, no cap means no count, and 32
///   concurrent inserts under a cap of 3 store exactly 3.
///
/// It works in a time window of its own in the distant past (between the
/// years 1200 and 1700, random per run), with its own key and session ids,
/// so it may share a store with other checks and with sessions of real
/// times, which it never touches. `delete_expired_sessions` is global,
/// though: the check first deletes every session that expired before its
/// window (left behind by an earlier failed run), and at the end deletes
/// its own. So two runs must not use one store at the same time.
///
/// # Panics
///
/// When the store breaks a rule: the message says which.
pub async fn session_store_conformance<S: SessionStore>(store: S) {
    const C: &str = "session_store_conformance";
    let ts = session_epoch();
    let at = |minutes: i64| ts + TimeDelta::minutes(minutes);
    let (oa, ob) = (owner(), owner());
    let (ka, kb, kc) = (KeyId::generate(), KeyId::generate(), KeyId::generate());

    // Sessions an earlier, failed run left in a window before this one
    // would be counted below.
    must_delete_expired(&store, ts - TimeDelta::microseconds(1), "before the window").await;

    // Key a: two live sessions and one already revoked.
    let mut a15 = session(&ka, &oa, at(-5) + TimeDelta::microseconds(17), at(15));
    a15.secret_hash = SessionHash::from_bytes(std::array::from_fn(|i| match i {
        0 => 0x00,
        31 => 0xff,
        _ => (i as u8).wrapping_mul(41).wrapping_add(0x80),
    }));
    let a30 = session(&ka, &oa, at(0), at(30) + TimeDelta::microseconds(999_999));
    let a45_revoked = SessionRecord {
        revoked: true,
        ..session(&ka, &oa, at(0), at(45))
    };
    // Key b (another owner, another environment): a session expiring with
    // a15, and one later.
    let b15 = SessionRecord {
        environment: env("test"),
        ..session(&kb, &ob, at(-1), at(15))
    };
    let b60 = session(&kb, &ob, at(0), at(60));
    // Key c: the smallest snapshots a key can give.
    let c90 = SessionRecord {
        key_name: String::new(),
        permissions: PermissionGrant::All,
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::any(),
        ..session(&kc, &oa, at(0), at(90))
    };
    let c120 = SessionRecord {
        permissions: PermissionGrant::only(Vec::<String>::new()),
        resources: ResourceScope::only(Vec::<String>::new()),
        ..session(&kc, &oa, at(0), at(120))
    };
    let all = [&a15, &a30, &a45_revoked, &b15, &b60, &c90, &c120];
    for r in all {
        if let Err(e) = store.insert_session(r, None).await {
            panic!("{C}: insert_session of {} failed: {e}", r.id);
        }
    }
    for r in all {
        assert_eq!(
            must_get_session(&store, &r.id, "after insert")
                .await
                .as_ref(),
            Some(r),
            "{C}: a session must come back from get_session exactly as inserted \
             (expired by the wall clock, but not deleted)"
        );
    }
    let unknown = KeyId::generate();
    assert_eq!(
        must_get_session(&store, &unknown, "of an unknown id").await,
        None,
        "{C}: get_session of an unknown id must be Ok(None)"
    );

    // Duplicate ids: refused, nothing written.
    let clash = SessionRecord {
        id: a15.id.clone(),
        ..session(&KeyId::generate(), &ob, at(-30), at(1))
    };
    assert_eq!(
        store.insert_session(&clash, None).await,
        Err(StoreError::DuplicateId(a15.id.clone())),
        "{C}: inserting an id that exists must be refused with DuplicateId"
    );
    assert_eq!(
        store.insert_session(&a30, None).await,
        Err(StoreError::DuplicateId(a30.id.clone())),
        "{C}: inserting an identical record again must be refused with DuplicateId"
    );
    assert_eq!(
        must_get_session(&store, &a15.id, "after a refused duplicate").await,
        Some(a15.clone()),
        "{C}: a refused duplicate insert changed the stored session"
    );
    assert_eq!(
        must_revoke_sessions(&store, &clash.key_id, "of the refused duplicate's key").await,
        0,
        "{C}: a refused duplicate insert stored a session of its key"
    );

    // Revoking: by key id, counting only sessions not revoked before.
    assert_eq!(
        must_revoke_sessions(&store, &unknown, "of a key without sessions").await,
        0,
        "{C}: revoke_sessions of a key without sessions must return 0"
    );
    assert_eq!(
        must_revoke_sessions(&store, &b15.id, "of a session id").await,
        0,
        "{C}: revoke_sessions must match the key id, not the session id"
    );
    assert_eq!(
        must_revoke_sessions(&store, &ka, "of key a").await,
        2,
        "{C}: revoke_sessions must return how many sessions of the key were not revoked \
         before (2 of 3: one was inserted revoked)"
    );
    let revoked = |r: &SessionRecord| SessionRecord {
        revoked: true,
        ..r.clone()
    };
    let (a15, a30) = (revoked(&a15), revoked(&a30));
    let all = [&a15, &a30, &a45_revoked, &b15, &b60, &c90, &c120];
    for r in all {
        assert_eq!(
            must_get_session(&store, &r.id, "after revoking key a")
                .await
                .as_ref(),
            Some(r),
            "{C}: revoke_sessions must set `revoked` on every session of the key, change \
             nothing else, and leave other keys' sessions alone"
        );
    }
    assert_eq!(
        must_revoke_sessions(&store, &ka, "of key a again").await,
        0,
        "{C}: a second revoke_sessions of a key must return 0 (all already revoked)"
    );

    // Deleting expired sessions: at or before `now`, revoked or not, counted.
    assert_eq!(
        must_delete_expired(
            &store,
            at(15) - TimeDelta::microseconds(1),
            "before any expiry"
        )
        .await,
        0,
        "{C}: delete_expired_sessions must not delete sessions expiring after `now`"
    );
    for r in all {
        assert_eq!(
            must_get_session(&store, &r.id, "after deleting none")
                .await
                .as_ref(),
            Some(r),
            "{C}: delete_expired_sessions deleted or changed a session expiring after `now`"
        );
    }
    assert_eq!(
        must_delete_expired(&store, at(15), "at the first expiry").await,
        2,
        "{C}: delete_expired_sessions must delete the sessions expiring at `now` (one \
         revoked, one not) and return how many"
    );
    assert_eq!(
        must_delete_expired(&store, at(15), "at the first expiry again").await,
        0,
        "{C}: a second delete_expired_sessions at the same `now` must return 0"
    );
    for r in [&a15, &b15] {
        assert_eq!(
            must_get_session(&store, &r.id, "of a deleted session").await,
            None,
            "{C}: a session expired at `now` must be gone after delete_expired_sessions"
        );
    }
    let left = [&a30, &a45_revoked, &b60, &c90, &c120];
    for r in left {
        assert_eq!(
            must_get_session(&store, &r.id, "after the first delete")
                .await
                .as_ref(),
            Some(r),
            "{C}: delete_expired_sessions deleted or changed a session expiring after `now`"
        );
    }
    assert_eq!(
        must_revoke_sessions(&store, &kb, "of key b after one was deleted").await,
        1,
        "{C}: revoke_sessions must count only the key's stored sessions (one of two was deleted)"
    );
    let b60 = revoked(&b60);
    assert_eq!(
        must_get_session(&store, &b60.id, "after revoking key b").await,
        Some(b60.clone()),
        "{C}: revoke_sessions did not revoke the remaining session of the key"
    );
    assert_eq!(
        must_delete_expired(&store, at(45), "at a revoked session's expiry").await,
        2,
        "{C}: delete_expired_sessions must delete every session expired by `now`, not only \
         those expiring at `now`, revoked or not"
    );
    for r in [&a30, &a45_revoked] {
        assert_eq!(
            must_get_session(&store, &r.id, "of a deleted session").await,
            None,
            "{C}: a session expired before `now` must be gone after delete_expired_sessions"
        );
    }
    for r in [&b60, &c90, &c120] {
        assert_eq!(
            must_get_session(&store, &r.id, "after the second delete")
                .await
                .as_ref(),
            Some(r),
            "{C}: delete_expired_sessions deleted or changed a session expiring after `now`"
        );
    }
    assert_eq!(
        must_delete_expired(&store, at(24 * 60), "after the window").await,
        3,
        "{C}: delete_expired_sessions must delete the remaining three sessions"
    );
    for r in [&b60, &c90, &c120] {
        assert_eq!(
            must_get_session(&store, &r.id, "after the last delete").await,
            None,
            "{C}: a session expired before `now` must be gone after delete_expired_sessions"
        );
    }
    assert_eq!(
        must_revoke_sessions(&store, &kc, "of key c after its sessions were deleted").await,
        0,
        "{C}: revoke_sessions must not count deleted sessions"
    );
    assert_eq!(
        must_session_owner(&store, &kc, "after its sessions were deleted").await,
        None,
        "{C}: session_owner must return None once the key's sessions are deleted"
    );

    session_cap(store, ts).await;
}

async fn must_session_owner<S: SessionStore>(
    store: &S,
    key_id: &KeyId,
    what: &str,
) -> Option<OwnerId> {
    const C: &str = "session_store_conformance";
    match store.session_owner(key_id).await {
        Ok(owner) => owner,
        Err(e) => panic!("{C}: session_owner({key_id}) {what} failed: {e}"),
    }
}

/// The cap part of [`session_store_conformance`], in the same window,
/// after the other sessions were deleted.
async fn session_cap<S: SessionStore>(store: S, ts: DateTime<Utc>) {
    const C: &str = "session_store_conformance";
    let at = move |minutes: i64| ts + TimeDelta::days(10) + TimeDelta::minutes(minutes);
    let cap = move |max_live: u32| {
        Some(SessionCap {
            max_live,
            now: at(0),
        })
    };
    let (od, oe) = (owner(), owner());
    let (kd, ke) = (KeyId::generate(), KeyId::generate());
    let insert = |r: SessionRecord, c: Option<SessionCap>| {
        let store = &store;
        async move { (store.insert_session(&r, c).await, r) }
    };
    // Expired at `now` (not live), then one live: the cap of 1 is not reached.
    let (res, d_old) = insert(session(&kd, &od, at(-20), at(0)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must allow a session under the cap (no live session)"
    );
    let (res, d1) = insert(session(&kd, &od, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must not count a session expired at `cap.now` as live"
    );
    let (res, d2) = insert(session(&kd, &od, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Err(StoreError::TooManySessions {
            key_id: kd.clone(),
            limit: 1
        }),
        "{C}: insert_session must refuse a session of a key at its cap with TooManySessions"
    );
    assert_eq!(
        must_get_session(&store, &d2.id, "of a session refused by the cap").await,
        None,
        "{C}: insert_session must refuse a session over the cap without storing it"
    );
    // Another key's sessions do not count; a higher cap, or none, lets it in.
    let (res, e1) = insert(session(&ke, &oe, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must count only the sessions of the record's key"
    );
    assert_eq!(
        insert(d2.clone(), cap(2)).await.0,
        Ok(()),
        "{C}: insert_session must allow a session under a cap of 2 with one live session"
    );
    let (res, d3) = insert(session(&kd, &od, at(-1), at(10)), None).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session without a cap must not count"
    );
    assert_eq!(
        must_session_owner(&store, &kd, "of a key with sessions").await,
        Some(od.clone()),
        "{C}: session_owner must return the owner stored with the key's sessions"
    );
    assert_eq!(
        must_session_owner(&store, &ke, "of another key").await,
        Some(oe.clone()),
        "{C}: session_owner must return the owner stored with the key's sessions"
    );
    assert_eq!(
        must_session_owner(&store, &d1.id, "of a session id").await,
        None,
        "{C}: session_owner must match the key id, not the session id"
    );
    // Revoked sessions do not count.
    assert_eq!(
        must_revoke_sessions(&store, &kd, "of the capped key").await,
        4,
        "{C}: revoke_sessions must end the capped key's four sessions"
    );
    assert_eq!(
        must_session_owner(&store, &kd, "of a key with revoked sessions").await,
        Some(od.clone()),
        "{C}: session_owner must return the owner stored with the key's sessions, revoked too"
    );
    let (res, d4) = insert(session(&kd, &od, at(-1), at(10)), cap(1)).await;
    assert_eq!(
        res,
        Ok(()),
        "{C}: insert_session must not count revoked sessions against the cap"
    );

    // Under concurrency: 32 inserts with a cap of 3 for a new key.
    let kf = KeyId::generate();
    let store = Arc::new(store);
    let barrier = Arc::new(Barrier::new(32));
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let r = session(&kf, &od, at(-1), at(10));
        tasks.spawn(async move {
            barrier.wait().await;
            store.insert_session(&r, cap(3)).await
        });
    }
    let (mut stored, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => stored += 1,
            Ok(Err(StoreError::TooManySessions { .. })) => refused += 1,
            Ok(Err(e)) => panic!("{C}: a concurrent capped insert_session failed: {e}"),
            Err(e) => panic!("{C}: a concurrent capped insert_session panicked: {e}"),
        }
    }
    assert_eq!(
        (stored, refused),
        (3, 29),
        "{C}: insert_session must refuse a session over the cap under concurrency \
         (32 inserts, cap 3)"
    );
    let _ = (d_old, d1, d3, d4, e1);
    assert_eq!(
        must_delete_expired(&*store, at(24 * 60), "after the cap checks").await,
        9,
        "{C}: delete_expired_sessions must delete the cap checks' nine sessions"
    );
}
