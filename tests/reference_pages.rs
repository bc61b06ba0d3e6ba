//! What the reference pages (issue 11 §5) say, behaviour by behaviour:
//! the package gallery's regenerate after expiry and its fixed settings,
//! the developer portal's "new pair" regenerate, idle expiry in listings
//! and the quota, and management times that read back from every store
//! exactly as returned.

mod common;
#[cfg(all(feature = "postgres", feature = "testing"))]
mod postgres;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use keyward::*;
use keyward::{
    audit::AuditAction, clock::Clock, hash::Argon2Hasher, key::KeyStatus, policy::EditPolicy,
    policy::ExpiryChoice, policy::ExpiryPolicy, policy::PermissionGrant, policy::PolicyError,
    policy::ResourceScope, session::SessionConfig, store::ListQuery, store::MemoryAuditSink,
};

fn admin() -> Actor {
    Actor::administrator("alice", OwnerId::new(OWNER).unwrap())
}

fn manager_with<S: KeyStore + keyward::store::SessionStore>(
    store: S,
    policy: Policy,
    clock: impl Clock,
) -> KeyManager<S> {
    KeyManager::builder(store, format(), policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock)
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap()
}

struct Page {
    manager: KeyManager<Arc<MemoryStore>>,
    store: Arc<MemoryStore>,
    clock: ManualClock,
    audit: Arc<MemoryAuditSink>,
    live: Environment,
}

fn page(policy: Policy) -> Page {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(start());
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock.clone())
        .sessions(SessionConfig::new("mkhs"))
        .audit_shared(audit.clone())
        .build()
        .unwrap();
    Page {
        manager,
        store,
        clock,
        audit,
        live: Environment::new("live").unwrap(),
    }
}

impl Page {
    async fn create(&self, expiry: ExpiryChoice) -> CreatedKey {
        self.manager
            .create(
                &admin(),
                NewKey::new(OWNER, "live", "CI")
                    .permissions(PermissionGrant::only(["package:push"]))
                    .expiry(expiry),
            )
            .await
            .unwrap()
    }
    async fn check(&self, token: &Token) -> Result<VerifiedKey, Denial> {
        let push = registry().get("package:push").unwrap();
        self.manager
            .verify(
                token.expose_secret(),
                &VerifyRequest::new(&self.live, push).resource(OWNER, "Contoso.Tools"),
            )
            .await
    }
    async fn list(&self, status: KeyStatus) -> Vec<KeyId> {
        let q = ListQuery::new(OwnerId::new(OWNER).unwrap()).status(status);
        let keys = self.manager.list(&admin(), q).await.unwrap();
        keys.into_iter().map(|k| k.id).collect()
    }
}

/// The gallery policy: 1/90/180/270/365 days, settings fixed, regenerate
/// after expiry; quota 3 as in the common fixtures.
fn gallery() -> Policy {
    Policy::new(registry())
        .with_quota(3)
        .unwrap()
        .with_expiry(ExpiryPolicy::default().with_regenerate_expired(true))
        .with_edits(EditPolicy::frozen())
}

// ---------------------------------------------------------------------------
// The gallery: "After expiration, the key is unusable. [...] You can
// generate a new key value."
// ---------------------------------------------------------------------------

#[tokio::test]
async fn regenerating_an_expired_key_is_refused_by_default_and_changes_nothing() {
    let p = page(policy());
    let key = p.create(ExpiryChoice::Days(1)).await;
    p.clock.advance(TimeDelta::days(2));
    let before = snapshot(&p.store, OWNER).await;
    let err = p
        .manager
        .regenerate(&admin(), &key.key.id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KeywardError::Expired(ref id) if *id == key.key.id),
        "{err:?}"
    );
    assert_eq!(snapshot(&p.store, OWNER).await, before, "nothing written");
    assert!(!ExpiryPolicy::default().regenerates_expired());
}

#[tokio::test]
async fn the_gallery_regenerates_an_expired_key_with_a_fresh_lifetime() {
    let p = page(gallery());
    let key = p.create(ExpiryChoice::Days(90)).await;
    p.clock.advance(TimeDelta::days(100));
    assert_eq!(
        p.check(&key.token).await.unwrap_err().reason,
        DenialReason::Expired,
        "unusable after expiry"
    );
    let now = p.clock.now();
    let again = p.manager.regenerate(&admin(), &key.key.id).await.unwrap();
    assert_eq!(again.key.id, key.key.id, "a new value of the same key");
    assert_eq!(again.key.status, KeyStatus::Active);
    assert_eq!(again.key.created_at, now, "its new lifetime starts now");
    assert_eq!(
        again.key.expires_at,
        Some(now + TimeDelta::days(90)),
        "the same 90-day lifetime, from now"
    );
    assert_eq!(again.key.permissions, key.key.permissions);
    let stored = p.manager.get(&admin(), &key.key.id).await.unwrap();
    assert_eq!(stored, again.key);
    assert!(p.check(&again.token).await.is_ok(), "the new value works");
    assert!(
        p.check(&key.token).await.is_err(),
        "the old value stays dead"
    );
    let regenerated: Vec<String> = p
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == AuditAction::Regenerated)
        .map(|e| e.detail)
        .collect();
    assert_eq!(
        regenerated,
        vec![format!(
            "renewed after expiry, expires {}",
            (now + TimeDelta::days(90)).to_rfc3339()
        )],
        "the audit trail says the key was renewed, and until when"
    );
}

#[tokio::test]
async fn renewal_keeps_within_the_expiry_policy_and_never_revives_a_revoked_key() {
    // A key imported or created under an older policy with a lifetime above
    // today's maximum is renewed for the maximum.
    let p = page(
        policy().with_expiry(
            ExpiryPolicy::choices(&[1, 30], false, ExpiryChoice::Days(30))
                .unwrap()
                .with_regenerate_expired(true),
        ),
    );
    let key = p.create(ExpiryChoice::Days(30)).await;
    let revoked = p.create(ExpiryChoice::Days(1)).await;
    p.manager.revoke(&admin(), &revoked.key.id).await.unwrap();
    p.clock.advance(TimeDelta::days(31));
    let again = p.manager.regenerate(&admin(), &key.key.id).await.unwrap();
    assert_eq!(
        again.key.expires_at,
        Some(p.clock.now() + TimeDelta::days(30))
    );
    assert!(matches!(
        p.manager.regenerate(&admin(), &revoked.key.id).await,
        Err(KeywardError::Revoked(_))
    ));
}

#[tokio::test]
async fn a_renewed_key_counts_against_the_quota_again() {
    let p = page(gallery());
    let old = p.create(ExpiryChoice::Days(1)).await;
    p.clock.advance(TimeDelta::days(2));
    // The expired key freed its slot: three live keys fill the quota.
    for _ in 0..3 {
        p.create(ExpiryChoice::Days(90)).await;
    }
    let before = snapshot(&p.store, OWNER).await;
    assert!(matches!(
        p.manager.regenerate(&admin(), &old.key.id).await,
        Err(KeywardError::QuotaExceeded { limit: 3 })
    ));
    assert_eq!(snapshot(&p.store, OWNER).await, before, "nothing written");
}

// ---------------------------------------------------------------------------
// The gallery: "These settings cannot be changed once the key is created";
// "To change the packages controlled by a key, you can choose individual
// packages from the list or change the glob pattern."
// ---------------------------------------------------------------------------

#[tokio::test]
async fn frozen_settings_refuse_every_change_even_a_narrowing() {
    let p = page(gallery());
    let key = p
        .manager
        .create(
            &admin(),
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::only(["package:push", "package:unlist"]))
                .ip_allowlist(["10.0.0.0/8"]),
        )
        .await
        .unwrap();
    let id = &key.key.id;
    let before = snapshot(&p.store, OWNER).await;
    let refused = [
        (
            KeyEdit {
                permissions: Some(PermissionGrant::only(["package:push"])),
                ..KeyEdit::default()
            },
            "permissions",
        ),
        (
            KeyEdit {
                expiry: Some(ExpiryChoice::Days(1)),
                ..KeyEdit::default()
            },
            "expiry",
        ),
        (
            KeyEdit {
                ip_allowlist: Some(vec!["10.1.0.0/16".into()]),
                ..KeyEdit::default()
            },
            "IP allowlist",
        ),
    ];
    for (edit, setting) in refused {
        let err = p.manager.edit(&admin(), id, edit).await.unwrap_err();
        assert!(
            matches!(err, KeywardError::Policy(PolicyError::Frozen { setting: s }) if s == setting),
            "{setting}: {err:?}"
        );
        assert!(
            err.to_string()
                .contains("cannot be changed once the key is created")
        );
        assert_eq!(
            snapshot(&p.store, OWNER).await,
            before,
            "{setting}: nothing written"
        );
    }
    // The packages and the name may change; the same grant again is no change.
    let edited = p
        .manager
        .edit(
            &admin(),
            id,
            KeyEdit {
                name: Some("release".into()),
                resources: Some(ResourceScope::only(["Contoso.*", "AzureRM.Profile"])),
                permissions: Some(PermissionGrant::only(["package:push", "package:unlist"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(edited.name, "release");
    assert_eq!(
        edited.resources,
        ResourceScope::only(["Contoso.*", "AzureRM.Profile"])
    );
}

#[tokio::test]
async fn without_freezing_narrowing_is_still_allowed() {
    let p = page(policy());
    let key = p.create(ExpiryChoice::Days(90)).await;
    let edit = KeyEdit {
        permissions: Some(PermissionGrant::only(["package:push-new"])),
        expiry: Some(ExpiryChoice::Days(1)),
        ..KeyEdit::default()
    };
    let edited = p.manager.edit(&admin(), &key.key.id, edit).await.unwrap();
    assert_eq!(edited.expires_at, Some(start() + TimeDelta::days(1)));
}

// ---------------------------------------------------------------------------
// The developer portal: "Regenerating the key will result in a new pair of
// the application ID and application secret"; "the previous pair can no
// longer be used to obtain a session token"; "any session tokens obtained
// from the previous key will remain valid, until those session tokens expire".
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_portals_regenerate_gives_a_new_pair_and_keeps_sessions() {
    let p = page(policy());
    let key = p.create(ExpiryChoice::Days(90)).await;
    let session = p
        .manager
        .exchange(key.token.expose_secret(), &p.live, None, None)
        .await
        .unwrap();
    let pair = p
        .manager
        .regenerate_pair(&admin(), &key.key.id)
        .await
        .unwrap();
    assert_ne!(pair.successor.key.id, key.key.id, "a new application id");
    assert_eq!(pair.previous.id, key.key.id);
    assert_eq!(pair.previous.status, KeyStatus::Expired);
    assert_eq!(pair.successor.key.permissions, key.key.permissions);
    assert!(p.check(&pair.successor.token).await.is_ok());
    assert_eq!(
        p.check(&key.token).await.unwrap_err().reason,
        DenialReason::Expired
    );
    assert!(
        p.manager
            .exchange(key.token.expose_secret(), &p.live, None, None)
            .await
            .is_err(),
        "the previous pair obtains no session"
    );
    assert!(
        p.manager
            .authenticate_session(session.token.expose_secret(), &p.live, None)
            .await
            .is_ok(),
        "a session of the previous pair stays valid"
    );
    // Not for managers: it ends the old pair's access, as a revoke would.
    let manager = Actor::manager("bob", OwnerId::new(OWNER).unwrap(), true);
    let other = p.create(ExpiryChoice::Days(90)).await;
    assert!(matches!(
        p.manager.regenerate_pair(&manager, &other.key.id).await,
        Err(KeywardError::NotAllowed { .. })
    ));
}

// ---------------------------------------------------------------------------
// Idle expiry: listings, filters and the quota agree with a check.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_idle_key_is_listed_expired_and_frees_its_quota_slot() {
    let p = page(policy().with_idle_expiry(30).unwrap());
    let idle = p.create(ExpiryChoice::Days(365)).await;
    p.clock.advance(TimeDelta::days(20));
    let a = p.create(ExpiryChoice::Days(365)).await;
    let b = p.create(ExpiryChoice::Days(365)).await;
    p.clock.advance(TimeDelta::days(11));
    assert_eq!(
        p.check(&idle.token).await.unwrap_err().reason,
        DenialReason::Expired,
        "the check says expired"
    );
    assert_eq!(p.list(KeyStatus::Expired).await, vec![idle.key.id.clone()]);
    let mut active = vec![a.key.id.clone(), b.key.id.clone()];
    active.sort();
    assert_eq!(p.list(KeyStatus::Active).await, active);
    let view = p.manager.get(&admin(), &idle.key.id).await.unwrap();
    assert_eq!(view.status, KeyStatus::Expired);
    // Quota 3: the idle key does not count.
    p.create(ExpiryChoice::Days(365)).await;
    // And it cannot be changed, as an expired key.
    assert!(matches!(
        p.manager
            .edit(
                &admin(),
                &idle.key.id,
                KeyEdit {
                    name: Some("x".into()),
                    ..KeyEdit::default()
                }
            )
            .await,
        Err(KeywardError::Expired(_))
    ));
}

#[tokio::test]
async fn the_gallery_renews_an_idle_key_and_its_idle_clock_restarts() {
    let p = page(gallery().with_idle_expiry(30).unwrap());
    let key = p.create(ExpiryChoice::Days(365)).await;
    p.clock.advance(TimeDelta::days(31));
    assert_eq!(p.list(KeyStatus::Expired).await, vec![key.key.id.clone()]);
    let again = p.manager.regenerate(&admin(), &key.key.id).await.unwrap();
    assert_eq!(again.key.status, KeyStatus::Active);
    assert!(p.check(&again.token).await.is_ok());
    assert_eq!(p.list(KeyStatus::Active).await, vec![key.key.id.clone()]);
}

// ---------------------------------------------------------------------------
// Times: a view returned by a management call equals a later `get`.
// ---------------------------------------------------------------------------

/// A clock with nanoseconds, as `Utc::now()` gives on Linux.
struct NanoClock(ManualClock);

impl Clock for NanoClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.now() + TimeDelta::nanoseconds(123_456_789)
    }
}

async fn views_equal_later_gets<S: KeyStore + keyward::store::SessionStore>(
    store: S,
    clock: impl Clock,
) {
    let m = manager_with(store, policy(), clock);
    let created = m
        .create(
            &admin(),
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(90)),
        )
        .await
        .unwrap();
    assert_eq!(created.key.created_at.timestamp_subsec_nanos() % 1_000, 0);
    assert_eq!(m.get(&admin(), &created.key.id).await.unwrap(), created.key);
    let suspended = m.suspend(&admin(), &created.key.id).await.unwrap();
    assert_eq!(m.get(&admin(), &created.key.id).await.unwrap(), suspended);
    let revoked = m.revoke(&admin(), &created.key.id).await.unwrap();
    assert_eq!(m.get(&admin(), &created.key.id).await.unwrap(), revoked);
    let listed = m
        .list(&admin(), ListQuery::new(OwnerId::new(OWNER).unwrap()))
        .await
        .unwrap();
    assert_eq!(listed, vec![revoked]);
}

#[tokio::test]
async fn views_equal_later_gets_on_memory() {
    views_equal_later_gets(MemoryStore::new(), NanoClock(ManualClock::new(start()))).await;
    views_equal_later_gets(MemoryStore::new(), keyward::clock::SystemClock).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn views_equal_later_gets_on_sqlite() {
    for system in [false, true] {
        let store = SqliteStore::in_memory().await.unwrap();
        store.migrate().await.unwrap();
        if system {
            views_equal_later_gets(store, keyward::clock::SystemClock).await;
        } else {
            views_equal_later_gets(store, NanoClock(ManualClock::new(start()))).await;
        }
    }
}

#[cfg(all(feature = "postgres", feature = "testing"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_later_gets_on_postgres() {
    postgres::with_schema(|url, schema| async move {
        let store = PostgresStore::connect(&url)
            .await
            .unwrap()
            .with_schema(&schema)
            .unwrap();
        store.migrate().await.unwrap();
        views_equal_later_gets(store.clone(), NanoClock(ManualClock::new(start()))).await;
        // Again under the system clock, after the first key is gone.
        let q = ListQuery::new(OwnerId::new(OWNER).unwrap());
        for r in store.list(&q).await.unwrap() {
            store.delete(&r.id).await.unwrap();
        }
        views_equal_later_gets(store.clone(), keyward::clock::SystemClock).await;
        store.pool().close().await;
    })
    .await;
}
