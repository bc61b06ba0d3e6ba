//! Issue 12, managing usage controls through `KeyManager`: rate limits and
//! credits at create and edit (narrowing for owners, widening for the
//! application only), reading, setting and adding a balance (audited), and
//! rotation moving a balance exactly once. The checks are generic over the
//! store; they run on `MemoryStore`, most also on SQLite (the SQL stores
//! are held to the same store contract by the conformance suite).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use keyward::clock::Clock;
use keyward::*;
use keyward::{
    audit::AuditAction, audit::AuditEvent, hash::Argon2Hasher, key::KeyRecord,
    policy::ManagementAction, policy::ManagementDenial, policy::PermissionGrant, store::ListQuery,
    store::MemoryAuditSink, store::QuotaCheck, store::StoreError, usage::CreditChange,
    usage::CreditGrant, usage::Credits, usage::RateLimit, usage::RateLimits, usage::Refill,
    usage::RefillDue, usage::UsageError,
};

struct Ctx<S: KeyStore> {
    manager: KeyManager<S>,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
}

fn usage_policy() -> Policy {
    policy()
        .with_rate_limits(["requests", "publish"])
        .expect("limits")
}

fn ctx_with<S: KeyStore>(store: S) -> Ctx<S> {
    let audit = Arc::new(MemoryAuditSink::new());
    let clock = ManualClock::new(start());
    let manager = KeyManager::builder(store, format(), usage_policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock.clone())
        .audit_shared(audit.clone())
        .build()
        .unwrap();
    Ctx {
        manager,
        audit,
        clock,
    }
}

fn memory() -> Ctx<Arc<MemoryStore>> {
    ctx_with(Arc::new(MemoryStore::new()))
}

async fn sqlite() -> Ctx<Arc<SqliteStore>> {
    let store = SqliteStore::in_memory().await.expect("sqlite");
    store.migrate().await.expect("migrate");
    ctx_with(Arc::new(store))
}

fn admin() -> Actor {
    Actor::administrator("alice", OwnerId::new(OWNER).unwrap())
}

fn limit(name: &str, n: u32, secs: u64) -> RateLimit {
    RateLimit::new(name, n, Duration::from_secs(secs)).unwrap()
}

fn limits(l: impl IntoIterator<Item = RateLimit>) -> RateLimits {
    RateLimits::new(l).unwrap()
}

fn push_key() -> NewKey {
    NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"]))
}

/// A key with `requests: 100 per 1 s`, `publish: 10 per 1 h` and 1,000
/// credits refilled monthly on the 1st.
fn metered_key() -> NewKey {
    push_key()
        .rate_limits(limits([
            limit("requests", 100, 1),
            limit("publish", 10, 3600),
        ]))
        .credits(
            Credits::new(1_000)
                .unwrap()
                .with_refill(Refill::monthly(1, 1_000).unwrap()),
        )
}

impl<S: KeyStore> Ctx<S> {
    async fn create(&self, new: NewKey) -> CreatedKey {
        self.manager.create(&sys(), new).await.expect("create")
    }
    async fn record(&self, id: &KeyId) -> KeyRecord {
        self.manager.store().get(id).await.unwrap().expect("stored")
    }
    async fn credits(&self, id: &KeyId) -> Credits {
        self.record(id).await.usage.credits.expect("metered")
    }
    fn events(&self, action: AuditAction) -> Vec<AuditEvent> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.action == action)
            .collect()
    }
    async fn all_records(&self) -> Vec<KeyRecord> {
        let mut q = ListQuery::new(OwnerId::new(OWNER).unwrap()).limit(1000);
        q.now = self.clock.now();
        self.manager.store().list(&q).await.unwrap()
    }
}

fn not_allowed_usage(result: Result<impl std::fmt::Debug, KeywardError>) {
    match result {
        Err(KeywardError::NotAllowed {
            action: ManagementAction::Usage,
            denial: ManagementDenial::ApplicationOnly,
            ..
        }) => {}
        other => panic!("expected NotAllowed for usage, got {other:?}"),
    }
}

// ---- create and read back -------------------------------------------------

async fn created_controls_read_back<S: KeyStore>(c: Ctx<S>) {
    let key = c.create(metered_key()).await;
    let usage = &key.key.usage;
    assert_eq!(usage.rate_limits.get("requests").unwrap().limit(), 100);
    assert_eq!(
        usage.rate_limits.get("publish").unwrap().window(),
        Duration::from_secs(3600)
    );
    let credits = c
        .manager
        .credits(&admin(), &key.key.id)
        .await
        .unwrap()
        .expect("metered");
    assert_eq!(credits.remaining, 1_000);
    assert_eq!(credits.leased, 0);
    assert_eq!(credits.refill, Some(Refill::monthly(1, 1_000).unwrap()));
    // Created in January's period: not refilled again at once.
    assert_eq!(credits.refilled_for, Some(start()));
    let got = c.manager.get(&admin(), &key.key.id).await.unwrap();
    assert_eq!(got.usage, key.key.usage);
    let listed = c
        .manager
        .list(&admin(), ListQuery::new(OwnerId::new(OWNER).unwrap()))
        .await
        .unwrap();
    assert_eq!(listed[0].usage, key.key.usage);

    // The owner's administrator creates keys with limits, but a starting
    // balance is usage given: the application's.
    let limited = c
        .manager
        .create(
            &admin(),
            push_key().rate_limits(limits([limit("publish", 10, 3600)])),
        )
        .await
        .unwrap();
    assert_eq!(limited.key.usage.rate_limits.len(), 1);
    let before = snapshot(c.manager.store(), OWNER).await;
    not_allowed_usage(c.manager.create(&admin(), metered_key()).await);
    assert_eq!(snapshot(c.manager.store(), OWNER).await, before);
    c.manager.delete(&sys(), &limited.key.id).await.unwrap();

    // An unmetered key reads as None, and has no balance to change.
    let plain = c.create(push_key()).await;
    assert_eq!(c.manager.credits(&admin(), &plain.key.id).await, Ok(None));
    assert_eq!(
        c.manager.add_credits(&sys(), &plain.key.id, 5).await,
        Err(KeywardError::NotMetered(plain.key.id.clone()))
    );
    assert_eq!(
        c.manager.set_credits(&sys(), &plain.key.id, 5).await,
        Err(KeywardError::NotMetered(plain.key.id.clone()))
    );
    assert!(c.record(&plain.key.id).await.usage.credits.is_none());
}

#[tokio::test]
async fn created_controls_read_back_on_memory() {
    created_controls_read_back(memory()).await;
}

// ---- bad input ----------------------------------------------------------

async fn bad_input_is_typed_and_stores_nothing<S: KeyStore>(c: Ctx<S>) {
    // Every bad value of the issue is refused where it is built, naming
    // the field: nothing can reach a store.
    assert_eq!(
        RateLimit::new("requests", 0, Duration::from_secs(1)),
        Err(UsageError::ZeroLimit {
            name: "requests".into()
        })
    );
    assert_eq!(
        RateLimit::new("requests", 10, Duration::ZERO),
        Err(UsageError::ZeroWindow {
            name: "requests".into()
        })
    );
    assert_eq!(
        CreditChange::add_signed("add", -5),
        Err(UsageError::NegativeCredits {
            field: "add",
            value: -5
        })
    );
    assert!(matches!(
        Credits::new(Credits::MAX + 1),
        Err(UsageError::CreditsTooLarge {
            field: "credits.remaining",
            ..
        })
    ));
    assert_eq!(
        Refill::monthly(31, 100),
        Err(UsageError::RefillDay { day: 31 })
    );
    let e = Refill::monthly(31, 100).unwrap_err().to_string();
    assert!(e.contains("refill.day") && e.contains("31"), "{e}");

    // A limit the policy does not declare: refused at create, naming it.
    let before = snapshot(c.manager.store(), OWNER).await;
    let typo = push_key().rate_limits(limits([limit("publsh", 10, 60)]));
    let err = c.manager.create(&sys(), typo).await.unwrap_err();
    assert_eq!(
        err,
        KeywardError::Usage(UsageError::UnknownLimit {
            name: "publsh".into()
        })
    );
    assert!(err.to_string().contains("publsh"), "{err}");
    assert_eq!(snapshot(c.manager.store(), OWNER).await, before);

    // ... and at edit, even by the application itself.
    let key = c.create(metered_key()).await;
    let before = c.record(&key.key.id).await;
    let edit = KeyEdit {
        name: Some("renamed".into()),
        rate_limits: Some(limits([limit("requests", 1, 1), limit("publsh", 1, 60)])),
        ..KeyEdit::default()
    };
    assert_eq!(
        c.manager.edit(&sys(), &key.key.id, edit).await.unwrap_err(),
        KeywardError::Usage(UsageError::UnknownLimit {
            name: "publsh".into()
        })
    );
    assert_eq!(c.record(&key.key.id).await, before);

    // An add that would pass the maximum: typed, naming `add`, unchanged.
    c.manager
        .set_credits(&sys(), &key.key.id, Credits::MAX - 1)
        .await
        .unwrap();
    let err = c
        .manager
        .add_credits(&sys(), &key.key.id, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KeywardError::Usage(UsageError::CreditsTooLarge { field: "add", .. })
        ),
        "{err:?}"
    );
    assert_eq!(c.credits(&key.key.id).await.remaining, Credits::MAX - 1);
    // So is an amount above the maximum, set or added.
    assert!(matches!(
        c.manager
            .set_credits(&sys(), &key.key.id, Credits::MAX + 1)
            .await,
        Err(KeywardError::Usage(UsageError::CreditsTooLarge {
            field: "credits.remaining",
            ..
        }))
    ));
    assert!(matches!(
        c.manager.add_credits(&sys(), &key.key.id, u64::MAX).await,
        Err(KeywardError::Usage(UsageError::CreditsTooLarge {
            field: "add",
            ..
        }))
    ));
    assert_eq!(c.credits(&key.key.id).await.remaining, Credits::MAX - 1);
    assert!(c.events(AuditAction::CreditsAdded).is_empty());
}

#[tokio::test]
async fn bad_input_is_typed_and_stores_nothing_on_memory() {
    bad_input_is_typed_and_stores_nothing(memory()).await;
}

// ---- edit rules ---------------------------------------------------------

async fn owners_narrow_and_only_the_application_widens<S: KeyStore>(c: Ctx<S>) {
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    let edit_limits = |l: RateLimits| KeyEdit {
        rate_limits: Some(l),
        ..KeyEdit::default()
    };

    // Narrowing, by the owner's administrator: a limit added to a key
    // without any, then a lower limit and a longer window.
    let unlimited = c.create(push_key()).await;
    let added = limits([limit("publish", 5, 60)]);
    c.manager
        .edit(&admin(), &unlimited.key.id, edit_limits(added.clone()))
        .await
        .unwrap();
    assert_eq!(c.record(&unlimited.key.id).await.usage.rate_limits, added);
    c.manager.delete(&sys(), &unlimited.key.id).await.unwrap();
    let narrower = limits([limit("requests", 50, 2), limit("publish", 10, 3600)]);
    let view = c
        .manager
        .edit(&admin(), &id, edit_limits(narrower.clone()))
        .await
        .unwrap();
    assert_eq!(view.usage.rate_limits, narrower);
    assert_eq!(c.record(&id).await.usage.rate_limits, narrower);
    let edited = c.events(AuditAction::Edited);
    assert_eq!(edited.last().unwrap().detail, "rate_limits");

    // A smaller refill, and then none, are narrowing too.
    let smaller = Credits::new(0)
        .unwrap()
        .with_refill(Refill::monthly(1, 500).unwrap());
    c.manager
        .edit(
            &admin(),
            &id,
            KeyEdit {
                credits: Some(Some(smaller)),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let credits = c.credits(&id).await;
    assert_eq!(credits.refill, Some(Refill::monthly(1, 500).unwrap()));
    assert_eq!(credits.remaining, 1_000, "an edit never changes a balance");

    // Widening, by the owner's administrator: each refused, audited, and
    // nothing stored.
    let widenings: Vec<KeyEdit> = vec![
        edit_limits(limits([
            limit("requests", 51, 2),
            limit("publish", 10, 3600),
        ])),
        edit_limits(limits([
            limit("requests", 50, 1),
            limit("publish", 10, 3600),
        ])),
        edit_limits(limits([limit("requests", 50, 2)])),
        edit_limits(RateLimits::none()),
        KeyEdit {
            credits: Some(None),
            ..KeyEdit::default()
        },
        KeyEdit {
            credits: Some(Some(
                Credits::new(0)
                    .unwrap()
                    .with_refill(Refill::monthly(1, 501).unwrap()),
            )),
            ..KeyEdit::default()
        },
        KeyEdit {
            credits: Some(Some(
                Credits::new(0)
                    .unwrap()
                    .with_refill(Refill::daily(500).unwrap()),
            )),
            ..KeyEdit::default()
        },
        // Narrowing one thing does not carry a widening through.
        KeyEdit {
            name: Some("renamed".into()),
            rate_limits: Some(limits([limit("requests", 1, 2)])),
            ..KeyEdit::default()
        },
    ];
    let before = c.record(&id).await;
    let denied_before = c.events(AuditAction::ManagementDenied).len();
    for (i, edit) in widenings.iter().enumerate() {
        not_allowed_usage(c.manager.edit(&admin(), &id, edit.clone()).await);
        assert_eq!(c.record(&id).await, before, "widening {i} stored something");
    }
    let denied = c.events(AuditAction::ManagementDenied);
    assert_eq!(denied.len() - denied_before, widenings.len());
    assert!(
        denied
            .last()
            .unwrap()
            .detail
            .contains("only the application")
    );

    // A manager with API access may narrow; may not widen either.
    let manager = Actor::manager("bob", OwnerId::new(OWNER).unwrap(), true);
    not_allowed_usage(c.manager.edit(&manager, &id, widenings[0].clone()).await);

    // Adding metering to an unmetered key gives a balance: also widening.
    let plain = c.create(push_key()).await;
    let meter = KeyEdit {
        credits: Some(Some(Credits::new(300).unwrap())),
        ..KeyEdit::default()
    };
    not_allowed_usage(c.manager.edit(&admin(), &plain.key.id, meter.clone()).await);
    assert!(c.record(&plain.key.id).await.usage.credits.is_none());

    // The application widens.
    for edit in &widenings[..4] {
        c.manager.edit(&sys(), &id, edit.clone()).await.unwrap();
    }
    assert!(c.record(&id).await.usage.rate_limits.is_empty());
    c.manager.edit(&sys(), &plain.key.id, meter).await.unwrap();
    assert_eq!(c.credits(&plain.key.id).await.remaining, 300);
    let view = c
        .manager
        .edit(
            &sys(),
            &id,
            KeyEdit {
                credits: Some(None),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(view.usage.credits.is_none());
    assert!(c.record(&id).await.usage.credits.is_none());
}

#[tokio::test]
async fn owners_narrow_and_only_the_application_widens_on_memory() {
    owners_narrow_and_only_the_application_widens(memory()).await;
}

async fn edits_keep_the_balance_and_leases<S: KeyStore>(c: Ctx<S>) {
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    let store = c.manager.store();
    let grant = store.lease_credits(&id, 120, None).await.unwrap();
    assert_eq!(grant.map(|g| g.granted), Some(120));
    c.manager
        .edit(
            &admin(),
            &id,
            KeyEdit {
                name: Some("renamed".into()),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    // A metered key's `Some(Some(c))` changes the refill only.
    c.manager
        .edit(
            &sys(),
            &id,
            KeyEdit {
                credits: Some(Some(
                    Credits::new(5)
                        .unwrap()
                        .with_refill(Refill::daily(2_000).unwrap()),
                )),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let credits = c.credits(&id).await;
    assert_eq!((credits.remaining, credits.leased), (880, 120));
    assert_eq!(credits.refill, Some(Refill::daily(2_000).unwrap()));
    assert_eq!(credits.refilled_for, Some(start()));
    let regenerated = c.manager.regenerate(&sys(), &id).await.unwrap();
    assert_eq!(regenerated.key.usage.rate_limits, key.key.usage.rate_limits);
    let credits = c.credits(&id).await;
    assert_eq!((credits.remaining, credits.leased), (880, 120));
}

#[tokio::test]
async fn edits_keep_the_balance_and_leases_on_memory() {
    edits_keep_the_balance_and_leases(memory()).await;
}

/// A refill added to a metered key starts with the current period: the
/// balance is refilled at the next period's first lease, not at once.
async fn a_refill_added_later_waits_for_the_next_period<S: KeyStore>(c: Ctx<S>) {
    let key = c.create(push_key().credits(Credits::new(5).unwrap())).await;
    let id = key.key.id.clone();
    let daily = Refill::daily(100).unwrap();
    c.manager
        .edit(
            &sys(),
            &id,
            KeyEdit {
                credits: Some(Some(Credits::new(0).unwrap().with_refill(daily))),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let credits = c.credits(&id).await;
    assert_eq!(credits.remaining, 5);
    assert_eq!(
        credits.refilled_for,
        Some(daily.period_start(c.clock.now()))
    );
    let store = c.manager.store();
    let due = credits.refill_due(c.clock.now());
    let grant = store.lease_credits(&id, 50, due).await.unwrap().unwrap();
    assert_eq!(
        grant.granted, 5,
        "no refill within the period the refill was added in"
    );
    c.clock.advance(chrono::TimeDelta::days(1));
    let due = credits.refill_due(c.clock.now());
    let grant = store.lease_credits(&id, 50, due).await.unwrap().unwrap();
    assert_eq!(
        (grant.granted, grant.remaining),
        (50, 50),
        "refilled once, the next day"
    );
}

#[tokio::test]
async fn a_refill_added_later_waits_for_the_next_period_on_memory() {
    a_refill_added_later_waits_for_the_next_period(memory()).await;
}

#[tokio::test]
async fn a_refill_added_later_waits_for_the_next_period_on_sqlite() {
    a_refill_added_later_waits_for_the_next_period(sqlite().await).await;
}

#[tokio::test]
async fn edits_keep_the_balance_and_leases_on_sqlite() {
    edits_keep_the_balance_and_leases(sqlite().await).await;
}

#[tokio::test]
async fn created_controls_read_back_on_sqlite() {
    created_controls_read_back(sqlite().await).await;
}

#[tokio::test]
async fn bad_input_is_typed_and_stores_nothing_on_sqlite() {
    bad_input_is_typed_and_stores_nothing(sqlite().await).await;
}

#[tokio::test]
async fn balance_changes_are_the_applications_and_audited_on_sqlite() {
    balance_changes_are_the_applications_and_audited(sqlite().await).await;
}

#[tokio::test]
async fn rotation_moves_the_balance_once_on_sqlite() {
    rotation_moves_the_balance_once(sqlite().await).await;
}

// ---- set, add, read -------------------------------------------------------

async fn balance_changes_are_the_applications_and_audited<S: KeyStore>(c: Ctx<S>) {
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();

    let set = c.manager.set_credits(&sys(), &id, 250).await.unwrap();
    assert_eq!(set.remaining, 250);
    let added = c.manager.add_credits(&sys(), &id, 50).await.unwrap();
    assert_eq!(added.remaining, 300);
    assert_eq!(
        c.manager
            .credits(&admin(), &id)
            .await
            .unwrap()
            .unwrap()
            .remaining,
        300
    );
    let set_events = c.events(AuditAction::CreditsSet);
    assert_eq!(set_events.len(), 1);
    assert_eq!(set_events[0].detail, "set to 250");
    assert_eq!(set_events[0].key_id.as_ref(), Some(&id));
    assert_eq!(set_events[0].actor.as_deref(), Some("tests"));
    let add_events = c.events(AuditAction::CreditsAdded);
    assert_eq!(add_events.len(), 1);
    assert_eq!(add_events[0].detail, "added 50, remaining 300");

    // The owner's own administrator and manager read, never raise.
    let manager = Actor::manager("bob", OwnerId::new(OWNER).unwrap(), true);
    assert!(c.manager.credits(&manager, &id).await.unwrap().is_some());
    let denied_before = c.events(AuditAction::ManagementDenied).len();
    not_allowed_usage(c.manager.add_credits(&admin(), &id, 1_000_000).await);
    not_allowed_usage(c.manager.set_credits(&manager, &id, 1_000_000).await);
    assert_eq!(
        c.events(AuditAction::ManagementDenied).len() - denied_before,
        2
    );
    // Nobody reads another owner's balance.
    let mallory = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    assert!(matches!(
        c.manager.credits(&mallory, &id).await,
        Err(KeywardError::NotAllowed {
            denial: ManagementDenial::OtherOwner,
            ..
        })
    ));
    assert_eq!(c.credits(&id).await.remaining, 300);
    assert_eq!(c.events(AuditAction::CreditsAdded).len(), 1);

    // A revoked key's balance no longer changes.
    c.manager.revoke(&sys(), &id).await.unwrap();
    assert_eq!(
        c.manager.add_credits(&sys(), &id, 1).await,
        Err(KeywardError::Revoked(id.clone()))
    );
    assert_eq!(c.credits(&id).await.remaining, 300);
}

#[tokio::test]
async fn balance_changes_are_the_applications_and_audited_on_memory() {
    balance_changes_are_the_applications_and_audited(memory()).await;
}

async fn concurrent_adds_all_count<S: KeyStore + 'static>(c: Ctx<S>) {
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let m = c.manager.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(
            async move { m.add_credits(&sys(), &id, 10).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(c.credits(&id).await.remaining, 1_160);
    assert_eq!(c.events(AuditAction::CreditsAdded).len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_all_count_on_memory() {
    concurrent_adds_all_count(memory()).await;
}

// ---- rotation -------------------------------------------------------------

/// Everything of the credits a key ever got, wherever it is now:
/// `remaining + leased` of every key, plus what was leased and settled
/// as spent (`spent`).
async fn total<S: KeyStore>(c: &Ctx<S>, spent: u64) -> u64 {
    c.all_records()
        .await
        .iter()
        .filter_map(|r| r.usage.credits.as_ref())
        .map(|cr| cr.remaining + cr.leased)
        .sum::<u64>()
        + spent
}

async fn rotation_moves_the_balance_once<S: KeyStore>(c: Ctx<S>) {
    let key = c.create(metered_key()).await;
    let old = key.key.id.clone();
    // A verifier holds a lease of 100 from the old key.
    c.manager
        .store()
        .lease_credits(&old, 100, None)
        .await
        .unwrap();
    assert_eq!(total(&c, 0).await, 1_000);

    let rotated = c
        .manager
        .rotate(&sys(), &old, Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    let new = rotated.successor.key.id.clone();
    let moved = c.credits(&new).await;
    assert_eq!((moved.remaining, moved.leased), (900, 0));
    assert_eq!(moved.refill, Some(Refill::monthly(1, 1_000).unwrap()));
    assert_eq!(moved.refilled_for, Some(start()));
    assert_eq!(
        rotated.successor.key.usage.rate_limits,
        key.key.usage.rate_limits
    );
    assert_eq!(rotated.successor.key.usage.credits, Some(moved.clone()));
    // The old key keeps only the verifier's lease, and no refill.
    let left = c.credits(&old).await;
    assert_eq!((left.remaining, left.leased, left.refill), (0, 100, None));
    assert_eq!(total(&c, 0).await, 1_000);
    // The old key's grace: a lease gets nothing more, even in a new month.
    c.clock.advance(chrono::TimeDelta::days(40));
    let due = left.refill_due(c.clock.now());
    assert_eq!(due, None);
    let grant = c
        .manager
        .store()
        .lease_credits(&old, 10, None)
        .await
        .unwrap();
    assert_eq!(grant.map(|g| g.granted), Some(0));

    // regenerate_pair is a rotation: the balance moves on again.
    let again = c.manager.regenerate_pair(&sys(), &new).await.unwrap();
    let third = c.credits(&again.successor.key.id).await;
    assert_eq!(third.remaining, 1_000, "a refill due moves with it, once");
    assert_eq!(third.refilled_for, Some(period(c.clock.now())));
    assert_eq!(c.credits(&new).await.remaining, 0);
}

fn period(now: DateTime<Utc>) -> DateTime<Utc> {
    Refill::monthly(1, 1_000).unwrap().period_start(now)
}

#[tokio::test]
async fn rotation_moves_the_balance_once_on_memory() {
    rotation_moves_the_balance_once(memory()).await;
}

/// A store whose inserts or updates can be made to fail, forwarding the
/// usage operations (and counting leases).
struct Failing<S> {
    inner: S,
    fail_inserts: AtomicBool,
    fail_updates: AtomicBool,
    /// Inserts never finish (a hung database), so the call can be dropped.
    hang_inserts: AtomicBool,
    /// Inserts commit, then their reply never arrives.
    hang_after_inserts: AtomicBool,
    /// How many inserts hang now.
    hung: AtomicU64,
}

impl<S> Failing<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            fail_inserts: AtomicBool::new(false),
            fail_updates: AtomicBool::new(false),
            hang_inserts: AtomicBool::new(false),
            hang_after_inserts: AtomicBool::new(false),
            hung: AtomicU64::new(0),
        }
    }
}

impl<S: KeyStore> KeyStore for Failing<S> {
    async fn insert(&self, r: &KeyRecord, q: Option<QuotaCheck>) -> Result<(), StoreError> {
        if self.fail_inserts.load(Ordering::SeqCst) {
            return Err(StoreError::DuplicateId(r.id.clone()));
        }
        if self.hang_inserts.load(Ordering::SeqCst) {
            self.hung.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        let result = self.inner.insert(r, q).await;
        if self.hang_after_inserts.load(Ordering::SeqCst) {
            self.hung.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        result
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(q).await
    }
    async fn count(&self, q: &ListQuery) -> Result<u64, StoreError> {
        self.inner.count(q).await
    }
    async fn update(&self, r: &KeyRecord, expected: u64) -> Result<(), StoreError> {
        if self.fail_updates.load(Ordering::SeqCst) {
            return Err(StoreError::Conflict {
                id: r.id.clone(),
                expected,
                found: expected + 1,
            });
        }
        self.inner.update(r, expected).await
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
        self.inner.lease_credits(id, want, refill).await
    }
    async fn settle_credits(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> Result<(), StoreError> {
        self.inner.settle_credits(id, returned, spent).await
    }
    async fn change_credits(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Option<Credits>, StoreError> {
        self.inner.change_credits(id, change).await
    }
}

#[tokio::test]
async fn a_failed_rotation_gives_the_balance_back() {
    let c = ctx_with(Failing::new(MemoryStore::new()));
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    let store = c.manager.store();
    store.lease_credits(&id, 30, None).await.unwrap();
    let before = c.record(&id).await;

    // The successor cannot be inserted.
    store.fail_inserts.store(true, Ordering::SeqCst);
    assert!(c.manager.regenerate_pair(&sys(), &id).await.is_err());
    store.fail_inserts.store(false, Ordering::SeqCst);
    assert_eq!(c.record(&id).await, before);
    assert_eq!(c.all_records().await.len(), 1);

    // The old key cannot be retired: the successor goes, the balance comes back.
    store.fail_updates.store(true, Ordering::SeqCst);
    assert!(c.manager.regenerate_pair(&sys(), &id).await.is_err());
    store.fail_updates.store(false, Ordering::SeqCst);
    assert_eq!(c.record(&id).await, before);
    assert_eq!(c.all_records().await.len(), 1);
    assert_eq!(total(&c, 0).await, 1_000);
}

async fn rotation_racing_leases_creates_nothing<S: KeyStore + 'static>(c: Ctx<S>) {
    let c = Arc::new(c);
    for round in 0..20 {
        let key = c.create(metered_key()).await;
        let old = key.key.id.clone();
        let granted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut leasers = Vec::new();
        for _ in 0..4 {
            let (c, old, granted, stop) = (
                Arc::clone(&c),
                old.clone(),
                Arc::clone(&granted),
                Arc::clone(&stop),
            );
            leasers.push(tokio::spawn(async move {
                // Verifiers lease and spend blocks of 7 while the key rotates.
                while !stop.load(Ordering::SeqCst) {
                    let g = c
                        .manager
                        .store()
                        .lease_credits(&old, 7, None)
                        .await
                        .unwrap()
                        .map_or(0, |g| g.granted);
                    if g > 0 {
                        c.manager.store().settle_credits(&old, 0, g).await.unwrap();
                        granted.fetch_add(g, Ordering::SeqCst);
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        tokio::task::yield_now().await;
        let rotated = c
            .manager
            .rotate(&sys(), &old, Duration::from_secs(7 * 24 * 3600))
            .await
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        for l in leasers {
            l.await.unwrap();
        }
        let spent = granted.load(Ordering::SeqCst);
        let new = c.credits(&rotated.successor.key.id).await;
        let left = c.credits(&old).await;
        assert_eq!(
            spent + new.remaining + left.remaining + left.leased,
            1_000,
            "round {round}: spent {spent}, moved {}, left {left:?}",
            new.remaining
        );
        assert_eq!(left.remaining, 0, "round {round}");
        // Done with this pair (the quota allows three live keys).
        c.manager.delete(&sys(), &old).await.unwrap();
        c.manager
            .delete(&sys(), &rotated.successor.key.id)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_racing_leases_creates_nothing_on_memory() {
    rotation_racing_leases_creates_nothing(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_dropped_mid_way_gives_the_balance_back() {
    a_rotation_dropped_mid_way_gives_the_balance_back_on(MemoryStore::new()).await;
}

/// On SQLite too: the guard's placeholder for the successor's id, then its
/// delete, rely on the store never inserting a deleted id again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_dropped_mid_way_gives_the_balance_back_on_sqlite() {
    let store = SqliteStore::in_memory().await.expect("sqlite");
    store.migrate().await.expect("migrate");
    a_rotation_dropped_mid_way_gives_the_balance_back_on(store).await;
}

async fn a_rotation_dropped_mid_way_gives_the_balance_back_on<S: KeyStore + 'static>(store: S) {
    let c = Arc::new(ctx_with(Failing::new(store)));
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    c.manager.store().hang_inserts.store(true, Ordering::SeqCst);
    let rotation = {
        let (c, id) = (Arc::clone(&c), id.clone());
        tokio::spawn(async move { c.manager.regenerate_pair(&sys(), &id).await })
    };
    // The balance is taken before the successor's insert, which hangs.
    let store = c.manager.store();
    assert!(eventually(|| async { store.hung.load(Ordering::SeqCst) == 1 }).await);
    let taken = c.credits(&id).await;
    assert_eq!((taken.remaining, taken.leased), (0, 1_000));
    // The database answers again (the insert sent stays unanswered), and
    // the caller gives up (a timeout, a client gone): the future is
    // dropped. The guard (on a spawned task) first takes the successor's
    // id, in case the cancelled insert still lands, then gives the balance
    // back.
    store.hang_inserts.store(false, Ordering::SeqCst);
    rotation.abort();
    assert!(rotation.await.unwrap_err().is_cancelled());
    assert!(eventually(|| async { c.credits(&id).await.remaining == 1_000 }).await);
    let back = c.credits(&id).await;
    assert_eq!((back.remaining, back.leased), (1_000, 0));
    assert_eq!(c.all_records().await.len(), 1, "no successor");
}

#[tokio::test]
async fn an_import_with_a_balance_is_the_applications() {
    let c = memory();
    let import = || {
        keyward::manager::ImportKey::scoped(
            "K7x2Lq9",
            OWNER,
            "live",
            "old CI key",
            sha256_hex("old-secret"),
        )
        .permissions(PermissionGrant::only(["package:push"]))
        .credits(Credits::new(70).unwrap())
    };
    not_allowed_usage(c.manager.import(&admin(), import()).await);
    assert!(c.all_records().await.is_empty());
    let view = c.manager.import(&sys(), import()).await.unwrap();
    assert_eq!(view.usage.credits.map(|c| c.remaining), Some(70));
    // An edit's audit detail names what changed.
    c.manager
        .edit(
            &sys(),
            &view.id,
            KeyEdit {
                rate_limits: Some(limits([limit("publish", 1, 60)])),
                credits: Some(None),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let edited = c.events(AuditAction::Edited);
    assert_eq!(edited.last().unwrap().detail, "rate_limits, credits");
}

// ---- review findings (regressions) ----------------------------------------

/// Waits until `done` holds. The bound (a minute) only keeps a broken
/// build from hanging; nothing here measures speed.
async fn eventually<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    for _ in 0..60_000 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// The sum of every key's spendable balance (`remaining`) and of every
/// key's balance and leases.
async fn balances<S: KeyStore>(c: &Ctx<S>) -> (u64, u64) {
    let records = c.all_records().await;
    let credits = records.iter().filter_map(|r| r.usage.credits.as_ref());
    let spendable = credits.clone().map(|c| c.remaining).sum();
    let held = credits.map(|c| c.remaining + c.leased).sum();
    (spendable, held)
}

fn default_usage() -> keyward::usage::UsageControls {
    keyward::usage::UsageControls {
        rate_limits: limits([limit("requests", 100, 1)]),
        credits: Some(Credits::new(0).unwrap()),
    }
}

/// F1: with a default, a publisher's administrator cannot create or import
/// a key that is never charged nor limited; without one nothing changed.
#[tokio::test]
async fn the_policy_default_meters_keys_an_administrator_creates() {
    let policy = usage_policy().with_default_usage(default_usage()).unwrap();
    let manager = KeyManager::builder(Arc::new(MemoryStore::new()), format(), policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    let push = registry().get("package:push").unwrap();
    let req = VerifyRequest::new(&live, push);

    // No usage controls given: the default, without asking for Usage.
    let key = manager.create(&admin(), push_key()).await.unwrap();
    assert_eq!(key.key.usage, default_usage());
    let denial = manager
        .verify(key.token.expose_secret(), &req)
        .await
        .expect_err("metered at 0: nothing to spend");
    assert_eq!(denial.reason, DenialReason::UsageExhausted);

    // Looser than the default: the application's to give.
    let count = |m: &KeyManager<Arc<MemoryStore>>| {
        let mut q = ListQuery::new(OwnerId::new(OWNER).unwrap()).limit(100);
        q.now = Utc::now();
        let store = Arc::clone(m.store());
        async move { store.list(&q).await.unwrap().len() }
    };
    let unmetered = push_key().rate_limits(limits([limit("requests", 100, 1)]));
    not_allowed_usage(manager.create(&admin(), unmetered.clone()).await);
    let unlimited = push_key().credits(Credits::new(0).unwrap());
    not_allowed_usage(manager.create(&admin(), unlimited).await);
    let wider = push_key()
        .rate_limits(limits([limit("requests", 101, 1)]))
        .credits(Credits::new(0).unwrap());
    not_allowed_usage(manager.create(&admin(), wider).await);
    let richer = push_key()
        .rate_limits(limits([limit("requests", 100, 1)]))
        .credits(Credits::new(1).unwrap());
    not_allowed_usage(manager.create(&admin(), richer).await);
    assert_eq!(count(&manager).await, 1, "nothing stored");

    // Tighter than the default: anyone who may create.
    let tighter = push_key()
        .rate_limits(limits([limit("requests", 10, 1), limit("publish", 1, 60)]))
        .credits(Credits::new(0).unwrap());
    manager.create(&admin(), tighter).await.unwrap();
    // The application gives what it likes.
    let given = manager.create(&sys(), unmetered).await.unwrap();
    assert_eq!(given.key.usage.credits, None);
    manager.delete(&sys(), &given.key.id).await.unwrap(); // the quota is 3

    // Imports too.
    let import = keyward::manager::ImportKey::scoped(
        "K7x2Lq9",
        OWNER,
        "live",
        "old CI key",
        sha256_hex("old-secret"),
    )
    .permissions(PermissionGrant::only(["package:push"]));
    let view = manager.import(&admin(), import).await.unwrap();
    assert_eq!(view.usage, default_usage());
}

/// F2: a session check spends its key's credits as a key check does.
#[tokio::test]
async fn session_checks_spend_the_keys_credits() {
    let manager = KeyManager::builder(Arc::new(MemoryStore::new()), format(), usage_policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .sessions(keyward::session::SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    let push = registry().get("package:push").unwrap();
    let key = manager
        .create(&sys(), push_key().credits(Credits::new(7).unwrap()))
        .await
        .unwrap();
    let session = manager
        .exchange(key.token.expose_secret(), &live, None, None)
        .await
        .unwrap();
    let token = session.token.expose_secret();
    let req = VerifyRequest::new(&live, push).credits(5);
    manager.verify_session(token, &req).await.expect("5 of 7");
    let denial = manager
        .verify_session(token, &req)
        .await
        .expect_err("2 left, costs 5");
    assert_eq!(denial.reason, DenialReason::UsageExhausted);
    let cheap = VerifyRequest::new(&live, push).credits(2);
    manager.verify_session(token, &cheap).await.expect("2 of 2");
    let one = VerifyRequest::new(&live, push);
    let denial = manager.verify_session(token, &one).await.unwrap_err();
    assert_eq!(denial.reason, DenialReason::UsageExhausted);
    // An undeclared limit is refused (fails closed), as for a key check.
    let typo = VerifyRequest::new(&live, push).spend("publsh", 1);
    let denial = manager.verify_session(token, &typo).await.unwrap_err();
    assert!(
        matches!(denial.reason, DenialReason::BadSpend(_)),
        "{denial:?}"
    );
    // Everything was charged to the key's balance (leased to this process).
    manager.verifier().release_usage().await;
    let left = manager.store().get(&key.key.id).await.unwrap().unwrap();
    assert_eq!(left.usage.credits.unwrap().remaining, 0);
}

/// F3(a): a rotation dropped after the successor's insert committed but
/// before its reply: the successor is deleted before the balance goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_dropped_after_the_insert_committed_keeps_one_balance() {
    let c = Arc::new(ctx_with(Failing::new(MemoryStore::new())));
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    c.manager
        .store()
        .hang_after_inserts
        .store(true, Ordering::SeqCst);
    let rotation = {
        let (c, id) = (Arc::clone(&c), id.clone());
        tokio::spawn(async move { c.manager.regenerate_pair(&sys(), &id).await })
    };
    // The successor lands, its reply never comes.
    let store = c.manager.store();
    assert!(eventually(|| async { store.hung.load(Ordering::SeqCst) == 1 }).await);
    assert_eq!(c.all_records().await.len(), 2);
    rotation.abort();
    assert!(rotation.await.unwrap_err().is_cancelled());
    c.manager
        .store()
        .hang_after_inserts
        .store(false, Ordering::SeqCst);
    // The guard deletes the successor, then gives the balance back.
    assert!(eventually(|| async { c.credits(&id).await.remaining == 1_000 }).await);
    let records = c.all_records().await;
    assert_eq!(records.len(), 1, "the successor is gone");
    assert_eq!(balances(&c).await, (1_000, 1_000));
}

/// F3(b): the successor's insert committed, its reply was lost and it
/// cannot be read back: the balance stays stranded in the old key rather
/// than given back while the orphan successor holds it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_insert_cannot_be_resolved_never_doubles_the_balance() {
    use keyward::store::{Fault, FaultyStore, Op};
    let c = Arc::new(ctx_with(Arc::new(FaultyStore::new(MemoryStore::new()))));
    let key = c.create(metered_key()).await;
    let id = key.key.id.clone();
    let store = Arc::clone(c.manager.store());
    // The take is held while the faults below are put in place (once it
    // started, the rotation's own read is done).
    store.inject(Op::LeaseCredits, Fault::Delay(Duration::from_secs(2)));
    let leases = store.calls(Op::LeaseCredits);
    let rotation = {
        let (c, id) = (Arc::clone(&c), id.clone());
        tokio::spawn(async move { c.manager.regenerate_pair(&sys(), &id).await })
    };
    while store.calls(Op::LeaseCredits) == leases {
        tokio::task::yield_now().await;
    }
    store.heal_op(Op::LeaseCredits);
    store.inject(Op::Insert, Fault::LostReply);
    store.fail(Op::Get);
    assert!(
        rotation.await.unwrap().is_err(),
        "the rotation reports failure"
    );
    store.heal();
    // The orphan successor (whose token nobody saw) holds the balance; the
    // old key's take stays stranded in its `leased`, never given back.
    let records = c.all_records().await;
    assert_eq!(records.len(), 2, "the insert landed");
    let old = c.credits(&id).await;
    assert_eq!((old.remaining, old.leased), (0, 1_000));
    assert_eq!(balances(&c).await, (1_000, 2_000), "spendable once");
    // Later checks with the old key find nothing to spend.
    let live = Environment::new("live").unwrap();
    let push = registry().get("package:push").unwrap();
    let denial = c
        .manager
        .verify(key.token.expose_secret(), &VerifyRequest::new(&live, push))
        .await
        .unwrap_err();
    assert_eq!(denial.reason, DenialReason::UsageExhausted);
}

/// F7: a balance above `Credits::MAX`, set through the public fields or
/// read from JSON, is refused naming `credits.remaining`, and nothing stored.
#[tokio::test]
async fn balances_above_the_maximum_are_refused() {
    let c = memory();
    let huge = Credits {
        remaining: u64::MAX,
        ..Credits::new(0).unwrap()
    };
    let too_large = |r: Result<_, KeywardError>| match r {
        Err(KeywardError::Usage(UsageError::CreditsTooLarge {
            field: "credits.remaining",
            ..
        })) => {}
        other => panic!("expected CreditsTooLarge for credits.remaining, got {other:?}"),
    };
    too_large(
        c.manager
            .create(&sys(), push_key().credits(huge.clone()))
            .await
            .map(|_| ()),
    );
    let import = keyward::manager::ImportKey::scoped(
        "K7x2Lq9",
        OWNER,
        "live",
        "old CI key",
        sha256_hex("old-secret"),
    )
    .permissions(PermissionGrant::only(["package:push"]))
    .credits(huge.clone());
    too_large(c.manager.import(&sys(), import).await.map(|_| ()));
    assert!(c.all_records().await.is_empty());
    let key = c.create(push_key()).await;
    let edit = KeyEdit {
        credits: Some(Some(huge)),
        ..KeyEdit::default()
    };
    too_large(c.manager.edit(&sys(), &key.key.id, edit).await.map(|_| ()));
    assert_eq!(c.record(&key.key.id).await.usage.credits, None);
    let json = r#"{"remaining":18446744073709551615}"#;
    let e = serde_json::from_str::<Credits>(json).unwrap_err();
    assert!(e.to_string().contains("credits.remaining"), "{e}");
}
