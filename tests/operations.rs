//! Issue 6 operations on MemoryStore: audit trail, usage, expiry reminders,
//! idle expiry, rotation, suspension, management roles, legacy keys and
//! SHA-256 imports. (The SQL stores are held to the same store contract by
//! the conformance suite.)

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use keyward::*;
use keyward::{
    audit::AuditAction, audit::AuditEvent, audit::AuditQuery, hash::Argon2Hasher,
    ids::InvalidValue, key::KeyKind, key::KeyRecord, key::KeyStatus, manager::ImportKey,
    manager::MIN_ROTATION_GRACE, policy::EditPolicy, policy::ExpiryChoice, policy::ExpiryPolicy,
    policy::ManagementAction, policy::ManagementDenial, policy::PermissionGrant,
    policy::PolicyError, policy::ResourceScope, session::SessionConfig, store::AuditSink,
    store::ListQuery, store::MemoryAuditSink, store::StoreError, token::TokenError,
    verify::DenialKind, verify::MAX_PAIR_SECRET_LEN, verify::VerifierConfig,
};

type Store = Arc<FlakyStore<MemoryStore>>;

struct Ops {
    manager: KeyManager<Store>,
    store: Store,
    clock: ManualClock,
    audit: Arc<MemoryAuditSink>,
    live: Environment,
    push: Permission,
}

fn ops_with(policy: Policy, config: VerifierConfig) -> Ops {
    let store = Arc::new(FlakyStore::new(MemoryStore::new()));
    let clock = ManualClock::new(start());
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock.clone())
        .verifier_config(config)
        .audit_shared(audit.clone())
        .build()
        .unwrap();
    Ops {
        manager,
        store,
        clock,
        audit,
        live: Environment::new("live").unwrap(),
        push: registry().get("package:push").unwrap(),
    }
}

fn ops() -> Ops {
    ops_with(policy(), VerifierConfig::default())
}

fn admin() -> Actor {
    Actor::administrator("alice", OwnerId::new(OWNER).unwrap())
}

fn push_key() -> NewKey {
    NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"]))
}

impl Ops {
    fn req(&self) -> VerifyRequest<'_> {
        VerifyRequest::new(&self.live, self.push).resource(OWNER, "Contoso.Tools")
    }
    async fn check(&self, token: &Token) -> Result<VerifiedKey, Denial> {
        self.manager
            .verify(token.expose_secret(), &self.req())
            .await
    }
    async fn record(&self, id: &KeyId) -> KeyRecord {
        self.store.get(id).await.unwrap().expect("stored")
    }
    fn events(&self, action: AuditAction) -> Vec<AuditEvent> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.action == action)
            .collect()
    }
}

/// Polls `cond` until it holds (background writes are never awaited by checks).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn usage_writes(o: &Ops) -> usize {
    o.store
        .usage_writes
        .load(std::sync::atomic::Ordering::SeqCst)
}

// --- Expiry reminders -------------------------------------------------------

#[tokio::test]
async fn reminders_return_each_due_key_once_and_never_expired_or_revoked_ones() {
    let o = ops_with(
        Policy::new(registry())
            .with_expiry(ExpiryPolicy::choices(&[1, 5, 90], true, ExpiryChoice::Days(90)).unwrap()),
        VerifierConfig::default(),
    );
    let sys = sys();
    let soon = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(5)))
        .await
        .unwrap();
    let sooner = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(1)))
        .await
        .unwrap();
    let later = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(90)))
        .await
        .unwrap();
    let revoked = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(5)))
        .await
        .unwrap();
    o.manager.revoke(&admin(), &revoked.key.id).await.unwrap();
    let _never = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Never))
        .await
        .unwrap();

    let due = o
        .manager
        .take_expiry_reminders(&sys, 10, 100)
        .await
        .unwrap();
    let ids: Vec<&KeyId> = due.iter().map(|k| &k.id).collect();
    assert_eq!(
        ids,
        vec![&sooner.key.id, &soon.key.id],
        "due keys, soonest first"
    );
    assert!(
        o.manager
            .take_expiry_reminders(&sys, 10, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(o.record(&soon.key.id).await.reminded_at.is_some());

    // An already expired key is not "about to expire".
    let o2 = ops_with(
        Policy::new(registry())
            .with_expiry(ExpiryPolicy::choices(&[1], false, ExpiryChoice::Days(1)).unwrap()),
        VerifierConfig::default(),
    );
    o2.manager.create(&admin(), push_key()).await.unwrap();
    o2.clock.advance(TimeDelta::days(2));
    assert!(
        o2.manager
            .take_expiry_reminders(&sys, 10, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let _ = later;

    // Nor is a key that idle expiry (30 days unused) has already expired,
    // though its own expiry date is close.
    let o3 = ops_with(
        Policy::new(registry())
            .with_expiry(ExpiryPolicy::choices(&[35], false, ExpiryChoice::Days(35)).unwrap())
            .with_idle_expiry(30)
            .unwrap(),
        VerifierConfig::default(),
    );
    let idle = o3.manager.create(&admin(), push_key()).await.unwrap();
    let used = o3.manager.create(&admin(), push_key()).await.unwrap();
    o3.clock.advance(TimeDelta::days(29));
    o3.check(&used.token).await.unwrap();
    // The usage write runs as a task of its own.
    eventually("the use recorded", || usage_writes(&o3) >= 1).await;
    assert!(o3.record(&used.key.id).await.last_used_at.is_some());
    o3.clock.advance(TimeDelta::days(2));
    let due = o3
        .manager
        .take_expiry_reminders(&sys, 10, 100)
        .await
        .unwrap();
    let ids: Vec<&KeyId> = due.iter().map(|k| &k.id).collect();
    assert_eq!(ids, vec![&used.key.id], "not {}", idle.key.id);
}

#[tokio::test]
async fn an_expiry_edit_earns_a_new_reminder() {
    let o = ops_with(
        Policy::new(registry()).with_edits(EditPolicy {
            extend_expiry: true,
            ..EditPolicy::default()
        }),
        VerifierConfig::default(),
    );
    let key = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(1)))
        .await
        .unwrap();
    assert_eq!(
        o.manager
            .take_expiry_reminders(&sys(), 10, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    o.manager
        .edit(
            &admin(),
            &key.key.id,
            KeyEdit {
                expiry: Some(ExpiryChoice::Days(90)),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(o.record(&key.key.id).await.reminded_at.is_none());
    o.clock.advance(TimeDelta::days(85));
    assert_eq!(
        o.manager
            .take_expiry_reminders(&sys(), 10, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_taking_reminders_get_each_key_exactly_once() {
    let o = ops_with(Policy::new(registry()), VerifierConfig::default());
    let mut created = HashSet::new();
    for i in 0..40 {
        let owner = format!("publisher{i}");
        let admin = Actor::administrator("a", OwnerId::new(&owner).unwrap());
        let key = o
            .manager
            .create(
                &admin,
                NewKey::new(&owner, "live", "CI")
                    .permissions(PermissionGrant::All)
                    .expiry(ExpiryChoice::Days(1)),
            )
            .await
            .unwrap();
        created.insert(key.key.id);
    }
    let worker = |m: KeyManager<Store>| async move {
        let mut got = Vec::new();
        loop {
            let batch = m.take_expiry_reminders(&sys(), 3, 3).await.unwrap();
            if batch.is_empty() {
                return got;
            }
            got.extend(batch.into_iter().map(|k| k.id));
            tokio::task::yield_now().await;
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(worker(o.manager.clone())),
        tokio::spawn(worker(o.manager.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let all: Vec<KeyId> = a.iter().chain(&b).cloned().collect();
    assert_eq!(all.len(), 40, "no key twice");
    assert_eq!(
        all.into_iter().collect::<HashSet<_>>(),
        created,
        "every key once"
    );
}

#[tokio::test]
async fn reminders_need_an_actor_allowed_across_owners() {
    let o = ops();
    let err = o
        .manager
        .take_expiry_reminders(&admin(), 10, 10)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        KeywardError::NotAllowed {
            denial: ManagementDenial::SystemOnly,
            ..
        }
    ));
    assert_eq!(
        o.manager
            .take_expiry_reminders(&sys(), 0, 10)
            .await
            .unwrap_err(),
        KeywardError::Policy(PolicyError::BadReminderWindow)
    );
}

// --- Rotation ---------------------------------------------------------------

#[tokio::test]
async fn rotation_overlaps_for_the_grace_period_then_only_the_successor_works() {
    let o = ops();
    let old = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(90)))
        .await
        .unwrap();
    o.clock.advance(TimeDelta::days(10));
    assert!(o.check(&old.token).await.is_ok(), "warm the cache");
    let rotated = o
        .manager
        .rotate(&admin(), &old.key.id, Duration::from_secs(86_400))
        .await
        .unwrap();
    let new = &rotated.successor;
    assert_ne!(new.key.id, old.key.id);
    assert_eq!(new.key.permissions, old.key.permissions);
    assert_eq!(new.key.resources, old.key.resources);
    assert_eq!(new.key.name, old.key.name);
    assert_eq!(
        new.key.expires_at,
        Some(start() + TimeDelta::days(100)),
        "same lifetime, from now"
    );
    assert_eq!(
        rotated.previous.expires_at,
        Some(start() + TimeDelta::days(11))
    );

    // Overlap: both work.
    assert!(o.check(&old.token).await.is_ok());
    assert!(o.check(&new.token).await.is_ok());
    // After the grace period only the successor.
    o.clock.advance(TimeDelta::days(1));
    assert_eq!(
        o.check(&old.token).await.unwrap_err().reason,
        DenialReason::Expired
    );
    assert!(o.check(&new.token).await.is_ok());
    let audited = o.events(AuditAction::Rotated);
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].detail, format!("successor {}", new.key.id));
}

#[tokio::test]
async fn rotation_never_extends_the_old_key_and_refuses_suspended_and_legacy_keys() {
    // No quota: the legacy import below needs room beside the other keys.
    let o = ops_with(
        Policy::new(registry()).with_expiry(
            ExpiryPolicy::choices(&[1, 90, 365], true, ExpiryChoice::Days(90)).unwrap(),
        ),
        VerifierConfig::default(),
    );
    let old = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(1)))
        .await
        .unwrap();
    let rotated = o
        .manager
        .rotate(&admin(), &old.key.id, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert_eq!(
        rotated.previous.expires_at, old.key.expires_at,
        "never later than its own expiry"
    );

    let suspended = o.manager.create(&admin(), push_key()).await.unwrap();
    o.manager
        .suspend(&admin(), &suspended.key.id)
        .await
        .unwrap();
    assert_eq!(
        o.manager
            .rotate(&admin(), &suspended.key.id, Duration::ZERO)
            .await
            .unwrap_err(),
        KeywardError::Suspended(suspended.key.id.clone())
    );
    let legacy = o
        .manager
        .import(
            &sys(),
            ImportKey::legacy("Legacy01", OWNER, "live", "2015", sha256_hex("s3cret")),
        )
        .await
        .unwrap();
    assert_eq!(
        o.manager
            .rotate(&sys(), &legacy.id, Duration::ZERO)
            .await
            .unwrap_err(),
        KeywardError::Legacy(legacy.id.clone(), "rotated")
    );
}

#[tokio::test]
async fn a_failed_rotation_leaves_no_successor_behind() {
    let o = ops();
    let old = o.manager.create(&admin(), push_key()).await.unwrap();
    let before = snapshot(&o.store, OWNER).await;
    // The store refuses writes: no successor, the old key untouched. (The
    // case where the successor is inserted and retiring the old key fails,
    // or the call is dropped in between, is in tests/faults.rs.)
    o.store
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        o.manager
            .rotate(&admin(), &old.key.id, Duration::ZERO)
            .await
            .is_err()
    );
    o.store
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(snapshot(&o.store, OWNER).await, before);
}

/// Rotation lets an owner at the quota (3) overlap one key at a time:
/// rotating again while an overlap runs is refused, so repeated rotations
/// cannot pile up live keys; once the old key expired it works again.
#[tokio::test]
async fn rotations_at_the_quota_overlap_one_key_at_a_time() {
    let o = ops();
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(o.manager.create(&admin(), push_key()).await.unwrap());
    }
    let grace = Duration::from_secs(3600);
    let first = o
        .manager
        .rotate(&admin(), &keys[0].key.id, grace)
        .await
        .unwrap();
    let before = snapshot(&o.store, OWNER).await;
    assert_eq!(before.len(), 4);
    for id in [&first.successor.key.id, &keys[1].key.id] {
        assert!(matches!(
            o.manager.rotate(&admin(), id, grace).await,
            Err(KeywardError::QuotaExceeded { limit: 4 })
        ));
    }
    assert_eq!(snapshot(&o.store, OWNER).await, before, "nothing inserted");
    // The overlap ends: the old key expired, a rotation fits again.
    o.clock.advance(TimeDelta::hours(2));
    o.manager
        .rotate(&admin(), &first.successor.key.id, grace)
        .await
        .unwrap();
}

/// A key that expires near the end of representable time (an import, or
/// an unrestricted expiry policy) rotates without overflowing.
#[tokio::test]
async fn rotating_a_key_that_expires_at_the_end_of_time_does_not_panic() {
    // Unrestricted: an import may then expire at the end of time.
    let o = ops_with(
        policy().with_expiry(ExpiryPolicy::unrestricted()),
        VerifierConfig::default(),
    );
    let far = chrono::DateTime::<chrono::Utc>::MAX_UTC - TimeDelta::days(1);
    let imported = o
        .manager
        .import(
            &Actor::system("migration"),
            ImportKey {
                id: "farfuture1".into(),
                owner: OWNER.into(),
                environment: "live".into(),
                name: "old".into(),
                kind: KeyKind::Scoped,
                permissions: PermissionGrant::All,
                resources: ResourceScope::All,
                expires_at: Some(far),
                ip_allowlist: Vec::new(),
                created_at: Some(start() - TimeDelta::days(400)),
                usage: Default::default(),
                external_id: None,
                metadata: None,
                sha256_hex: sha256_hex("legacy-secret"),
            },
        )
        .await
        .unwrap();
    let rotated = o
        .manager
        .rotate(&admin(), &imported.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        rotated.successor.key.expires_at,
        Some(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    );
    assert_eq!(
        rotated.previous.expires_at,
        Some(start() + TimeDelta::seconds(60))
    );
}

// --- Suspend / resume -------------------------------------------------------

#[tokio::test]
async fn suspension_is_refused_with_its_own_reason_and_is_reversible() {
    let o = ops();
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    assert!(o.check(&key.token).await.is_ok(), "warm cache");
    let view = o.manager.suspend(&admin(), &key.key.id).await.unwrap();
    assert_eq!(view.status, KeyStatus::Suspended);
    let denial = o.check(&key.token).await.unwrap_err();
    assert_eq!(denial.reason, DenialReason::Suspended);
    assert_eq!(denial.kind(), DenialKind::Authentication);
    assert_eq!(
        o.manager.suspend(&admin(), &key.key.id).await.unwrap_err(),
        KeywardError::Suspended(key.key.id.clone())
    );
    let listed = o
        .manager
        .list(
            &admin(),
            ListQuery::new(OwnerId::new(OWNER).unwrap()).status(KeyStatus::Suspended),
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    o.manager.resume(&admin(), &key.key.id).await.unwrap();
    assert!(o.check(&key.token).await.is_ok(), "works again at once");
    assert_eq!(
        o.manager.resume(&admin(), &key.key.id).await.unwrap_err(),
        KeywardError::NotSuspended(key.key.id.clone())
    );
    // Suspended keys still count against the quota (3).
    o.manager.suspend(&admin(), &key.key.id).await.unwrap();
    o.manager.create(&admin(), push_key()).await.unwrap();
    o.manager.create(&admin(), push_key()).await.unwrap();
    assert_eq!(
        o.manager.create(&admin(), push_key()).await.unwrap_err(),
        KeywardError::QuotaExceeded { limit: 3 }
    );
    // And revoke still works on a suspended key, permanently.
    o.manager.revoke(&admin(), &key.key.id).await.unwrap();
    assert_eq!(
        o.manager.resume(&admin(), &key.key.id).await.unwrap_err(),
        KeywardError::Revoked(key.key.id.clone())
    );
    // Management events in order (usage events are written in the background).
    let actions: Vec<AuditAction> = o
        .audit
        .events()
        .iter()
        .filter(|e| e.key_id.as_ref() == Some(&key.key.id) && e.action != AuditAction::Used)
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::Created,
            AuditAction::Suspended,
            AuditAction::Resumed,
            AuditAction::Suspended,
            AuditAction::Revoked
        ]
    );
}

// --- Management roles -------------------------------------------------------

#[tokio::test]
async fn the_default_policy_per_role_and_every_refusal_is_typed_audited_and_changes_nothing() {
    let o = ops();
    let contoso = OwnerId::new(OWNER).unwrap();
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    let id = key.key.id.clone();
    let before = snapshot(&o.store, OWNER).await;

    let outsider = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    let no_access = Actor::manager("bob", contoso.clone(), false);
    let manager = Actor::manager("carol", contoso.clone(), true);
    let denial = |r: Result<_, KeywardError>| match r {
        Err(KeywardError::NotAllowed { denial, .. }) => Some(denial),
        _ => None,
    };
    use ManagementDenial::*;
    for (who, expected) in [(&outsider, OtherOwner), (&no_access, NoApiAccess)] {
        assert_eq!(
            denial(o.manager.create(who, push_key()).await.map(|_| ())),
            Some(expected)
        );
        assert_eq!(
            denial(o.manager.get(who, &id).await.map(|_| ())),
            Some(expected)
        );
        assert_eq!(
            denial(
                o.manager
                    .list(who, ListQuery::new(contoso.clone()))
                    .await
                    .map(|_| ())
            ),
            Some(expected)
        );
        assert_eq!(
            denial(
                o.manager
                    .edit(
                        who,
                        &id,
                        KeyEdit {
                            name: Some("x".into()),
                            ..KeyEdit::default()
                        }
                    )
                    .await
                    .map(|_| ())
            ),
            Some(expected)
        );
        assert_eq!(
            denial(o.manager.regenerate(who, &id).await.map(|_| ())),
            Some(expected)
        );
        assert_eq!(
            denial(o.manager.rotate(who, &id, Duration::ZERO).await.map(|_| ())),
            Some(expected)
        );
        assert_eq!(
            denial(o.manager.suspend(who, &id).await.map(|_| ())),
            Some(expected)
        );
        assert_eq!(
            denial(o.manager.revoke(who, &id).await.map(|_| ())),
            Some(expected)
        );
        assert_eq!(
            denial(o.manager.delete(who, &id).await.map(|_| ())),
            Some(expected)
        );
    }
    // A manager with API access may manage, but only administrators revoke
    // or delete (deleting ends a key as surely as revoking it).
    assert_eq!(
        denial(o.manager.revoke(&manager, &id).await.map(|_| ())),
        Some(AdministratorOnly)
    );
    assert_eq!(
        denial(o.manager.delete(&manager, &id).await.map(|_| ())),
        Some(AdministratorOnly)
    );
    assert_eq!(
        snapshot(&o.store, OWNER).await,
        before,
        "no refusal changed anything"
    );
    assert!(o.check(&key.token).await.is_ok(), "the key still works");
    let refusals = o.events(AuditAction::ManagementDenied);
    assert_eq!(refusals.len(), 2 * 9 + 2);
    assert!(
        refusals
            .iter()
            .any(|e| e.actor.as_deref() == Some("mallory") && e.detail.starts_with("revoke"))
    );

    o.manager
        .edit(
            &manager,
            &id,
            KeyEdit {
                name: Some("renamed by carol".into()),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    o.manager.revoke(&admin(), &id).await.unwrap();
    let edited = o.events(AuditAction::Edited);
    assert_eq!(edited[0].actor.as_deref(), Some("carol"));
    assert_eq!(edited[0].detail, "name");
}

// --- Legacy keys and SHA-256 imports ----------------------------------------

#[tokio::test]
async fn legacy_keys_cover_everything_never_expire_and_their_ids_never_come_back() {
    let o = ops();
    let secret = "oldsecret_9Qz";
    let view = o
        .manager
        .import(
            &sys(),
            ImportKey::legacy("Legacy42", OWNER, "live", "from 2015", sha256_hex(secret)),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            view.kind,
            view.expires_at,
            &view.permissions,
            &view.resources
        ),
        (
            KeyKind::Legacy,
            None,
            &PermissionGrant::All,
            &ResourceScope::All
        )
    );
    o.clock.advance(TimeDelta::days(3650));
    let reg = registry();
    for perm in ["package:push", "package:unlist", "analytics:read"] {
        let req =
            VerifyRequest::new(&o.live, reg.get(perm).unwrap()).resource(OWNER, "Any.Package.Name");
        assert!(
            o.manager
                .verify_pair("Legacy42", secret, &req)
                .await
                .is_ok(),
            "{perm}"
        );
    }
    let session_only = VerifyRequest::new(&o.live, reg.get("package:delete").unwrap());
    assert_eq!(
        o.manager
            .verify_pair("Legacy42", secret, &session_only)
            .await
            .unwrap_err()
            .reason,
        DenialReason::SessionOnly
    );
    let id = view.id.clone();
    assert_eq!(
        o.manager.regenerate(&sys(), &id).await.unwrap_err(),
        KeywardError::Legacy(id.clone(), "regenerated")
    );
    assert_eq!(
        o.manager
            .edit(
                &sys(),
                &id,
                KeyEdit {
                    name: Some("x".into()),
                    ..KeyEdit::default()
                }
            )
            .await
            .unwrap_err(),
        KeywardError::Legacy(id.clone(), "edited")
    );

    o.manager.delete(&sys(), &id).await.unwrap();
    assert_eq!(
        o.manager
            .import(
                &sys(),
                ImportKey::legacy("Legacy42", OWNER, "live", "again", sha256_hex(secret))
            )
            .await
            .unwrap_err(),
        KeywardError::IdTaken(id.clone())
    );
    assert_eq!(
        o.manager
            .verify_pair("Legacy42", secret, &o.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::UnknownKey
    );
}

#[tokio::test]
async fn a_sha256_import_is_upgraded_to_argon2id_on_first_use() {
    let o = ops();
    let secret = "cioAbCdEf0123456789abcdefABCDEF01";
    let hex = sha256_hex(secret);
    o.manager
        .import(
            &admin(),
            ImportKey::scoped(
                "Imp0rt3d",
                OWNER,
                "live",
                "crates.io token",
                hex.to_uppercase(),
            )
            .permissions(PermissionGrant::only(["package:push"])),
        )
        .await
        .unwrap();
    let id = KeyId::new("Imp0rt3d").unwrap();
    assert_eq!(
        o.record(&id).await.secret_hash.as_str(),
        format!("$sha256${hex}")
    );

    assert_eq!(
        o.manager
            .verify_pair("Imp0rt3d", "wrong", &o.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::WrongSecret
    );
    assert_eq!(
        o.record(&id).await.secret_hash.as_str(),
        format!("$sha256${hex}"),
        "a wrong secret changes nothing"
    );
    assert!(
        o.manager
            .verify_pair("Imp0rt3d", secret, &o.req())
            .await
            .is_ok()
    );
    let upgraded = o.record(&id).await.secret_hash.as_str().to_owned();
    assert!(upgraded.starts_with("$argon2id$"), "rehashed");
    assert!(!upgraded.contains(&hex), "the SHA-256 hash is gone");

    // A cold check (another process) now proves it with argon2id.
    o.manager.verifier().invalidate_all();
    assert!(
        o.manager
            .verify_pair("Imp0rt3d", secret, &o.req())
            .await
            .is_ok()
    );
    assert_eq!(
        o.manager
            .verify_pair("Imp0rt3d", "wrong", &o.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::WrongSecret
    );
    let imported = o.events(AuditAction::Imported);
    assert_eq!((imported.len(), imported[0].detail.as_str()), (1, "scoped"));
}

#[tokio::test]
async fn bad_imports_get_typed_errors_and_store_nothing() {
    let o = ops();
    let cases: Vec<(ImportKey, KeywardError)> = vec![
        (
            ImportKey::scoped("Imp1", OWNER, "live", "n", "abc").permissions(PermissionGrant::All),
            KeywardError::BadImportHash(KeyId::new("Imp1").unwrap()),
        ),
        (
            ImportKey::scoped("Imp1", OWNER, "live", "n", "g".repeat(64))
                .permissions(PermissionGrant::All),
            KeywardError::BadImportHash(KeyId::new("Imp1").unwrap()),
        ),
        (
            ImportKey::scoped("Imp1", OWNER, "staging", "n", sha256_hex("x"))
                .permissions(PermissionGrant::All),
            KeywardError::UnknownEnvironment("staging".into()),
        ),
        (
            ImportKey::scoped("Imp1", OWNER, "live", "n", sha256_hex("x"))
                .permissions(PermissionGrant::only(["package:delete"])),
            KeywardError::Policy(PolicyError::SessionOnlyPermission {
                name: "package:delete".into(),
            }),
        ),
    ];
    for (import, expected) in cases {
        assert_eq!(
            o.manager.import(&admin(), import).await.unwrap_err(),
            expected
        );
    }
    assert!(matches!(
        o.manager
            .import(
                &admin(),
                ImportKey::scoped("bad-id", OWNER, "live", "n", sha256_hex("x"))
            )
            .await
            .unwrap_err(),
        KeywardError::Policy(PolicyError::Invalid(InvalidValue::BadCharacter {
            field: "key id",
            ..
        }))
    ));
    assert!(snapshot(&o.store, OWNER).await.is_empty());
}

/// Imports obey the policy: a scoped import's expiry must fit the expiry
/// policy (never-expiring only where "never" is allowed, no longer than the
/// maximum from now); legacy full-access keys stay the documented
/// exception; imports count against the quota. Refusals store nothing.
#[tokio::test]
async fn imports_obey_the_expiry_policy_and_the_quota() {
    // Quota 3, expiry 1 to 365 days, never not allowed.
    let policy = Policy::new(registry())
        .with_quota(3)
        .unwrap()
        .with_expiry(ExpiryPolicy::up_to(365, ExpiryChoice::Days(90)).unwrap());
    let o = ops_with(policy, VerifierConfig::default());
    let now = start();
    let scoped = |id: &str| {
        ImportKey::scoped(id, OWNER, "live", "old CI key", sha256_hex(id))
            .permissions(PermissionGrant::only(["package:push"]))
    };
    assert_eq!(
        o.manager.import(&sys(), scoped("Imp1")).await.unwrap_err(),
        KeywardError::Policy(PolicyError::NeverNotAllowed),
        "a scoped import that never expires, where never is not allowed"
    );
    assert!(matches!(
        o.manager
            .import(
                &sys(),
                scoped("Imp1").expires_at(now + TimeDelta::days(366))
            )
            .await
            .unwrap_err(),
        KeywardError::Policy(PolicyError::ExpiryNotAllowed { days: 366, .. })
    ));
    assert!(snapshot(&o.store, OWNER).await.is_empty(), "nothing stored");

    o.manager
        .import(
            &sys(),
            scoped("Imp1").expires_at(now + TimeDelta::days(365)),
        )
        .await
        .expect("within the maximum");
    // The legacy exception: full access, never expires, by an explicit legacy import.
    o.manager
        .import(
            &sys(),
            ImportKey::legacy("Leg1", OWNER, "live", "2015 key", sha256_hex("Leg1")),
        )
        .await
        .expect("a legacy import");
    o.manager.create(&admin(), push_key()).await.unwrap();
    // Three live keys: the quota is full, for imports too.
    let before = snapshot(&o.store, OWNER).await;
    assert_eq!(
        o.manager
            .import(&sys(), scoped("Imp2").expires_at(now + TimeDelta::days(30)))
            .await
            .unwrap_err(),
        KeywardError::QuotaExceeded { limit: 3 }
    );
    assert_eq!(
        o.manager
            .import(
                &sys(),
                ImportKey::legacy("Leg2", OWNER, "live", "2016 key", sha256_hex("Leg2"))
            )
            .await
            .unwrap_err(),
        KeywardError::QuotaExceeded { limit: 3 }
    );
    assert_eq!(snapshot(&o.store, OWNER).await, before, "nothing stored");
}

/// An import dated 50 years back, rotated: the successor lives as long as
/// the policy allows at most (365 days), not 18,251 days.
#[tokio::test]
async fn a_rotated_import_lives_no_longer_than_the_policy_allows() {
    let o = ops();
    let now = start();
    o.manager
        .import(
            &sys(),
            ImportKey::scoped("Old50", OWNER, "live", "old CI key", sha256_hex("Old50"))
                .permissions(PermissionGrant::only(["package:push"]))
                .created_at(now - TimeDelta::days(50 * 365))
                .expires_at(now + TimeDelta::days(1)),
        )
        .await
        .unwrap();
    let rotated = o
        .manager
        .rotate(
            &admin(),
            &KeyId::new("Old50").unwrap(),
            Duration::from_secs(86_400),
        )
        .await
        .unwrap();
    assert_eq!(
        rotated.successor.key.expires_at,
        Some(now + TimeDelta::days(365)),
        "the policy's maximum (365 days), not the import's 18,251-day span"
    );
}

/// Ending a key's access is for administrators under the default policy:
/// a manager with API access may not import, regenerate, or rotate with a
/// grace shorter than `MIN_ROTATION_GRACE` (which ends the old key as a
/// revoke would). Refusals change nothing.
#[tokio::test]
async fn a_manager_may_not_import_regenerate_or_end_a_key_by_rotation() {
    let o = ops();
    let contoso = OwnerId::new(OWNER).unwrap();
    let carol = Actor::manager("carol", contoso.clone(), true);
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    let id = key.key.id.clone();
    let before = snapshot(&o.store, OWNER).await;
    let denial = |r: Result<(), KeywardError>| match r {
        Err(KeywardError::NotAllowed { denial, .. }) => Some(denial),
        _ => None,
    };
    let import = ImportKey::scoped("Imp9", OWNER, "live", "n", sha256_hex("Imp9"))
        .permissions(PermissionGrant::only(["package:push"]))
        .expires_at(start() + TimeDelta::days(90));
    assert_eq!(
        denial(o.manager.import(&carol, import.clone()).await.map(drop)),
        Some(ManagementDenial::AdministratorOnly)
    );
    assert_eq!(
        denial(o.manager.regenerate(&carol, &id).await.map(drop)),
        Some(ManagementDenial::AdministratorOnly)
    );
    let short = MIN_ROTATION_GRACE - Duration::from_secs(1);
    for grace in [Duration::ZERO, short] {
        assert_eq!(
            denial(o.manager.rotate(&carol, &id, grace).await.map(drop)),
            Some(ManagementDenial::AdministratorOnly),
            "grace {grace:?}"
        );
    }
    assert_eq!(snapshot(&o.store, OWNER).await, before, "nothing changed");
    assert!(o.check(&key.token).await.is_ok(), "the key still works");

    // A rotation with at least the minimum grace is still the manager's.
    let rotated = o
        .manager
        .rotate(&carol, &id, MIN_ROTATION_GRACE)
        .await
        .unwrap();
    // Administrators may do all of it.
    o.manager
        .rotate(&admin(), &rotated.successor.key.id, Duration::ZERO)
        .await
        .unwrap();
    o.manager.import(&admin(), import).await.unwrap();
}

// --- Usage ------------------------------------------------------------------

#[tokio::test]
async fn a_busy_key_writes_its_last_use_once_per_interval_and_the_rest_on_flush() {
    let o = ops();
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    let ip: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    for _ in 0..50 {
        o.manager
            .verify(key.token.expose_secret(), &o.req().client_ip(ip))
            .await
            .unwrap();
    }
    eventually("the first usage write", || usage_writes(&o) == 1).await;
    let stored = o.record(&key.key.id).await;
    assert_eq!(
        (stored.last_used_at, stored.last_used_ip),
        (Some(start()), Some(ip))
    );
    assert_eq!(stored.generation, 1, "usage does not bump the generation");

    o.clock.advance(TimeDelta::seconds(30));
    for _ in 0..50 {
        o.check(&key.token).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(usage_writes(&o), 1, "still inside the 60 s interval");

    o.clock.advance(TimeDelta::seconds(31));
    o.check(&key.token).await.unwrap();
    eventually("the second usage write", || usage_writes(&o) == 2).await;

    o.clock.advance(TimeDelta::seconds(5));
    o.check(&key.token).await.unwrap();
    o.manager.flush().await.unwrap();
    assert_eq!(usage_writes(&o), 3, "the trailing use is flushed");
    let listed = o
        .manager
        .list(&admin(), ListQuery::new(OwnerId::new(OWNER).unwrap()))
        .await
        .unwrap();
    assert_eq!(
        listed[0].last_used_at,
        Some(start() + TimeDelta::seconds(66))
    );
    assert_eq!(
        listed[0].last_used_ip, None,
        "the last use came without an address"
    );
    o.manager.flush().await.unwrap();
    assert_eq!(usage_writes(&o), 3, "nothing left to write");
    let used = o.events(AuditAction::Used);
    assert_eq!(used.len(), 3);
    assert_eq!(used[0].client_ip, Some(ip));
}

#[tokio::test]
async fn a_management_edit_never_erases_a_recorded_use() {
    let o = ops();
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    o.check(&key.token).await.unwrap();
    eventually("usage write", || usage_writes(&o) == 1).await;
    o.manager
        .edit(
            &admin(),
            &key.key.id,
            KeyEdit {
                name: Some("renamed".into()),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(o.record(&key.key.id).await.last_used_at, Some(start()));
}

#[tokio::test]
async fn idle_keys_are_treated_as_expired() {
    let o = ops_with(
        policy().with_idle_expiry(30).unwrap(),
        VerifierConfig::default(),
    );
    let used = o.manager.create(&admin(), push_key()).await.unwrap();
    let idle = o.manager.create(&admin(), push_key()).await.unwrap();
    o.clock.advance(TimeDelta::days(20));
    o.check(&used.token).await.unwrap();
    eventually("usage write", || usage_writes(&o) == 1).await;
    o.clock.advance(TimeDelta::days(11)); // day 31
    assert_eq!(
        o.check(&idle.token).await.unwrap_err().reason,
        DenialReason::Expired
    );
    assert!(
        o.check(&used.token).await.is_ok(),
        "used on day 20: good until day 50"
    );
    let listed = o
        .manager
        .list(&admin(), ListQuery::new(OwnerId::new(OWNER).unwrap()))
        .await
        .unwrap();
    let status = |id: &KeyId| listed.iter().find(|k| &k.id == id).unwrap().status;
    assert_eq!(
        (status(&used.key.id), status(&idle.key.id)),
        (KeyStatus::Active, KeyStatus::Expired)
    );
    assert_eq!(
        policy().with_idle_expiry(0).unwrap_err(),
        PolicyError::ZeroIdleExpiry
    );
}

#[tokio::test]
async fn verification_carries_the_remaining_lifetime() {
    let o = ops();
    let key = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Days(90)))
        .await
        .unwrap();
    o.clock.advance(TimeDelta::days(80));
    let verified = o.check(&key.token).await.unwrap();
    assert_eq!(
        verified.remaining_lifetime(),
        Some(Duration::from_secs(10 * 86_400))
    );
    let forever = o
        .manager
        .create(&admin(), push_key().expiry(ExpiryChoice::Never))
        .await
        .unwrap();
    assert_eq!(
        o.check(&forever.token).await.unwrap().remaining_lifetime(),
        None
    );
}

// --- Audit trail ------------------------------------------------------------

#[tokio::test]
async fn what_did_this_key_do_between_t1_and_t2_is_one_call() {
    let o = ops();
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    let t1 = start() + TimeDelta::hours(1);
    o.clock.set(t1);
    o.check(&key.token).await.unwrap();
    o.clock.advance(TimeDelta::minutes(1));
    o.manager
        .edit(
            &admin(),
            &key.key.id,
            KeyEdit {
                name: Some("n2".into()),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let t2 = start() + TimeDelta::hours(2);
    o.clock.set(t2);
    o.manager.revoke(&admin(), &key.key.id).await.unwrap();
    eventually("usage event", || !o.events(AuditAction::Used).is_empty()).await;

    let window = o
        .manager
        .audit_trail(
            &admin(),
            AuditQuery::key(key.key.id.clone()).between(t1, t2),
        )
        .await
        .unwrap();
    let actions: Vec<AuditAction> = window.iter().map(|e| e.action).collect();
    assert_eq!(actions, [AuditAction::Used, AuditAction::Edited]);
    assert!(
        window
            .iter()
            .all(|e| e.key_id.as_ref() == Some(&key.key.id))
    );
    let all = o
        .manager
        .audit_trail(&admin(), AuditQuery::key(key.key.id.clone()))
        .await
        .unwrap();
    assert_eq!(all.first().unwrap().action, AuditAction::Created);
    assert_eq!(all.last().unwrap().action, AuditAction::Revoked);

    // Another owner's administrator sees none of it.
    let outsider = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    assert!(
        o.manager
            .audit_trail(&outsider, AuditQuery::key(key.key.id.clone()))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_flood_of_failures_is_aggregated_not_logged_one_by_one() {
    let o = ops();
    let key = o.manager.create(&admin(), push_key()).await.unwrap();
    let parsed = format().parse(key.token.expose_secret()).unwrap();
    let wrong = format()
        .from_pair(
            &o.live,
            parsed.key_id(),
            &"A".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    for _ in 0..100 {
        assert!(o.check(&wrong).await.is_err());
    }
    o.manager.flush().await.unwrap();
    let failures = o.events(AuditAction::AuthenticationFailed);
    let count = |code: &str| {
        failures
            .iter()
            .filter(|e| e.detail == code)
            .map(|e| e.count)
            .sum::<u64>()
    };
    assert_eq!(count("wrong_secret") + count("throttled"), 100);
    assert_eq!(count("wrong_secret"), 10, "the burst before throttling");
    assert!(
        failures.len() <= 2,
        "one event per key and reason, not 100: {failures:?}"
    );
    assert!(
        failures
            .iter()
            .all(|e| e.key_id.as_ref() == Some(&key.key.id))
    );
    // They carry the key's owner, so the owner's administrator sees the
    // failed attempts on the key in its audit trail (after a leak, that is
    // what matters), and another owner's does not.
    assert!(
        failures
            .iter()
            .all(|e| e.owner.as_ref().map(|o| o.as_str()) == Some(OWNER))
    );
    let trail = o
        .manager
        .audit_trail(&admin(), AuditQuery::key(key.key.id.clone()))
        .await
        .unwrap();
    let seen: u64 = trail
        .iter()
        .filter(|e| e.action == AuditAction::AuthenticationFailed)
        .map(|e| e.count)
        .sum();
    assert_eq!(seen, 100);
    let outsider = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    assert!(
        o.manager
            .audit_trail(&outsider, AuditQuery::key(key.key.id.clone()))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_failing_audit_sink_keeps_events_for_later_and_never_fails_the_action() {
    struct Broken(std::sync::atomic::AtomicBool, MemoryAuditSink);
    impl AuditSink for Broken {
        fn record<'a>(
            &'a self,
            events: &'a [AuditEvent],
        ) -> keyward::audit::BoxFuture<'a, Result<(), StoreError>> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                Box::pin(async { Err(StoreError::Backend("sink down".into())) })
            } else {
                self.1.record(events)
            }
        }
        fn query<'a>(
            &'a self,
            q: &'a AuditQuery,
        ) -> keyward::audit::BoxFuture<'a, Result<Vec<AuditEvent>, StoreError>> {
            self.1.query(q)
        }
    }
    let sink = Arc::new(Broken(
        std::sync::atomic::AtomicBool::new(true),
        MemoryAuditSink::new(),
    ));
    let manager = KeyManager::builder(MemoryStore::new(), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .audit_shared(sink.clone())
        .build()
        .unwrap();
    let key = manager.create(&admin(), push_key()).await.unwrap();
    manager.revoke(&admin(), &key.key.id).await.unwrap();
    assert_eq!(manager.unsent_audit_events(), 2);
    assert!(manager.flush().await.is_err());
    sink.0.store(false, std::sync::atomic::Ordering::SeqCst);
    manager.flush().await.unwrap();
    let actions: Vec<AuditAction> = sink.1.events().iter().map(|e| e.action).collect();
    assert_eq!(actions, [AuditAction::Created, AuditAction::Revoked]);
    assert_eq!(manager.unsent_audit_events(), 0);
}

#[tokio::test]
async fn malformed_pairs_are_refused_before_any_store_access() {
    let o = ops();
    o.store
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let long = "s".repeat(MAX_PAIR_SECRET_LEN + 1);
    let cases: [(&str, &str, TokenError); 5] = [
        ("", "secret", TokenError::Empty),
        ("Imp0rt3d", "", TokenError::Empty),
        ("bad-id", "secret", TokenError::BadCharacter { position: 3 }),
        (
            "Imp0rt3d",
            "two words",
            TokenError::BadCharacter { position: 3 },
        ),
        (
            "Imp0rt3d",
            &long,
            TokenError::TooLong {
                len: MAX_PAIR_SECRET_LEN + 1,
                max: MAX_PAIR_SECRET_LEN,
            },
        ),
    ];
    for (id, secret, expected) in cases {
        let denial = o
            .manager
            .verify_pair(id, secret, &o.req())
            .await
            .unwrap_err();
        assert_eq!(
            denial.reason,
            DenialReason::Malformed(expected.clone()),
            "{id:?}"
        );
        let denial = o
            .manager
            .verifier()
            .authenticate_pair(id, secret, &o.live, None)
            .await
            .unwrap_err();
        assert_eq!(denial.reason, DenialReason::Malformed(expected), "{id:?}");
    }
    // A well-formed pair does reach the (failing) store, and is denied.
    let denial = o
        .manager
        .verify_pair("Imp0rt3d", "secret", &o.req())
        .await
        .unwrap_err();
    assert_eq!(denial.reason, DenialReason::StoreUnavailable);
}

/// Management events carry the actor's address when the application gives
/// it; refusals of calls across owners are audited; a session issued names
/// the key that asked for it.
#[tokio::test]
async fn audit_events_carry_the_callers_address_and_every_refusal() {
    let store = Arc::new(MemoryStore::new());
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(ManualClock::new(start()))
        .sessions(SessionConfig::new("mkhs"))
        .audit_shared(audit.clone())
        .build()
        .unwrap();
    let ip: std::net::IpAddr = "198.51.100.23".parse().unwrap();
    let admin = admin().with_client_ip(ip);
    let key = manager.create(&admin, push_key()).await.unwrap();
    manager
        .edit(
            &admin,
            &key.key.id,
            KeyEdit {
                name: Some("renamed".into()),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let live = Environment::new("live").unwrap();
    let session_ip: std::net::IpAddr = "203.0.113.4".parse().unwrap();
    manager
        .exchange(key.token.expose_secret(), &live, None, Some(session_ip))
        .await
        .unwrap();
    // An owner's administrator may not take every owner's reminders.
    assert!(matches!(
        manager.take_expiry_reminders(&admin, 10, 10).await,
        Err(KeywardError::NotAllowed {
            action: ManagementAction::Remind,
            ..
        })
    ));
    manager.flush().await.unwrap();
    let events = audit.events();
    let of = |action| {
        events
            .iter()
            .filter(move |e: &&AuditEvent| e.action == action)
    };
    for action in [AuditAction::Created, AuditAction::Edited] {
        let e = of(action).next().unwrap();
        assert_eq!(e.client_ip, Some(ip), "{action:?}");
        assert_eq!(e.actor.as_deref(), Some("alice"), "{action:?}");
    }
    let issued = of(AuditAction::SessionIssued).next().unwrap();
    assert_eq!(issued.actor, Some(format!("key:{}", key.key.id)));
    assert_eq!(issued.client_ip, Some(session_ip));
    let denied = of(AuditAction::ManagementDenied).next().unwrap();
    assert_eq!(denied.actor.as_deref(), Some("alice"));
    assert_eq!(denied.client_ip, Some(ip));
    assert!(denied.detail.contains("remind"), "{}", denied.detail);
}
