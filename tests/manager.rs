//! KeyManager: the life of a key, and denials for every reason.

mod common;

use chrono::TimeDelta;
use common::*;
use keyward::*;
use keyward::{
    key::KeyStatus, policy::EditPolicy, policy::ExpiryChoice, policy::ExpiryPolicy,
    policy::PermissionGrant, policy::PolicyError, policy::ResourceScope, store::ListQuery,
    token::TokenError, verify::DenialKind, verify::VerifierConfig,
};

#[tokio::test]
async fn create_returns_the_token_once_and_stores_only_a_hash() {
    let f = fixture();
    let created = f.push_key().await;
    let token = created.token.expose_secret();
    let record = f
        .manager
        .store()
        .get(&created.key.id)
        .await
        .unwrap()
        .unwrap();
    let secret = f
        .manager
        .format()
        .parse(token)
        .unwrap()
        .expose_secret()
        .to_owned();
    assert!(record.secret_hash.as_str().starts_with("$argon2id$"));
    assert!(!record.secret_hash.as_str().contains(&secret));
    assert_eq!(created.key.status, KeyStatus::Active);
    assert_eq!(
        created.key.expires_at,
        Some(start() + TimeDelta::days(90)),
        "policy default"
    );
    // The view serializes without any secret or hash.
    let json = serde_json::to_string(&created.key).unwrap();
    assert!(!json.contains(&secret) && !json.contains("argon2"));
    assert!(!format!("{created:?}").contains(&secret));
    assert!(f.manager.verify(token, &f.req()).await.is_ok());
}

#[tokio::test]
async fn quickstart_scenario_denials_have_the_right_reason_and_kind() {
    let f = fixture();
    let created = f
        .create(
            NewKey::new(OWNER, "live", "GitHub Actions")
                .permissions(PermissionGrant::only(["package:push"]))
                .resources(ResourceScope::only(["AzureRM.DataFactory*"]))
                .expiry(ExpiryChoice::Days(90))
                .ip_allowlist(["203.0.113.0/24", "2001:db8::/32"]),
        )
        .await;
    let t = created.token.expose_secret();
    let ip = "203.0.113.10".parse().unwrap();
    let push = f.push();
    let ok = VerifyRequest::new(&f.live, push)
        .resource(OWNER, "AzureRm.DataFactoryV2.Netcore")
        .client_ip(ip);
    let key = f.manager.verify(t, &ok).await.unwrap();
    assert_eq!(key.id(), &created.key.id);
    assert_eq!(key.owner().as_str(), OWNER);
    // Implied permission.
    let push_new = VerifyRequest {
        permission: f.perm("package:push-new"),
        ..ok
    };
    assert!(f.manager.verify(t, &push_new).await.is_ok());

    let cases: Vec<(VerifyRequest<'_>, DenialReason, DenialKind)> = vec![
        (
            VerifyRequest::new(&f.live, push)
                .resource(OWNER, "AzureRM.Profile")
                .client_ip(ip),
            DenialReason::ResourceOutOfScope,
            DenialKind::Authorization,
        ),
        (
            VerifyRequest::new(&f.live, push)
                .resource("fabrikam", "AzureRM.DataFactory")
                .client_ip(ip),
            DenialReason::OtherOwner,
            DenialKind::Authorization,
        ),
        (
            VerifyRequest::new(&f.live, f.perm("package:unlist")).client_ip(ip),
            DenialReason::PermissionMissing,
            DenialKind::Authorization,
        ),
        (
            VerifyRequest::new(&f.live, f.perm("package:delete")).client_ip(ip),
            DenialReason::SessionOnly,
            DenialKind::Authorization,
        ),
        (
            VerifyRequest::new(&f.live, push).client_ip("198.51.100.1".parse().unwrap()),
            DenialReason::IpNotAllowed,
            DenialKind::Authentication,
        ),
        (
            VerifyRequest::new(&f.live, push),
            DenialReason::IpNotAllowed,
            DenialKind::Authentication,
        ),
        (
            VerifyRequest::new(&f.test, push).client_ip(ip),
            DenialReason::WrongEnvironment,
            DenialKind::Authentication,
        ),
        (
            VerifyRequest::new(&f.live, push)
                .resource(OWNER, "AzureRM.DataFactory/../x")
                .client_ip(ip),
            DenialReason::ResourceOutOfScope,
            DenialKind::Authorization,
        ),
    ];
    for (req, reason, kind) in cases {
        let denial = f.manager.verify(t, &req).await.unwrap_err();
        assert_eq!(denial.reason, reason, "{req:?}");
        assert_eq!(denial.kind(), kind);
        assert_eq!(denial.key_id.as_ref(), Some(&created.key.id));
    }
}

#[tokio::test]
async fn ipv6_and_mapped_clients_are_checked() {
    let f = fixture();
    let created = f
        .create(
            NewKey::new(OWNER, "live", "v6")
                .permissions(PermissionGrant::All)
                .ip_allowlist(["10.0.0.0/8", "2001:db8::/32"]),
        )
        .await;
    let t = created.token.expose_secret();
    for (ip, allowed) in [
        ("10.9.8.7", true),
        ("::ffff:10.9.8.7", true),
        ("2001:db8::42", true),
        ("11.0.0.1", false),
        ("::ffff:11.0.0.1", false),
        ("2001:db9::1", false),
    ] {
        let req = VerifyRequest::new(&f.live, f.push()).client_ip(ip.parse().unwrap());
        assert_eq!(f.manager.verify(t, &req).await.is_ok(), allowed, "{ip}");
    }
}

#[tokio::test]
async fn wrong_environment_is_refused_before_any_lookup() {
    let f = fixture();
    let created = f
        .create(NewKey::new(OWNER, "test", "sandbox").permissions(PermissionGrant::All))
        .await;
    let req = VerifyRequest::new(&f.live, f.push());
    let denial = f
        .manager
        .verify(created.token.expose_secret(), &req)
        .await
        .unwrap_err();
    assert_eq!(denial.reason, DenialReason::WrongEnvironment);
    assert_eq!(
        f.hash_verifies(),
        0,
        "no argon2 for a key of another environment"
    );
    let sandbox = VerifyRequest::new(&f.test, f.push());
    assert!(
        f.manager
            .verify(created.token.expose_secret(), &sandbox)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn malformed_and_unknown_tokens_never_reach_argon2() {
    let f = fixture();
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    let mut typo = t.to_string();
    let c = typo.remove(20);
    typo.insert(20, if c == 'x' { 'y' } else { 'x' });
    let other = f.manager.format().generate(&f.live, &KeyId::generate());
    for (token, reason) in [
        ("", DenialReason::Malformed(TokenError::Empty)),
        (
            typo.as_str(),
            DenialReason::Malformed(TokenError::BadChecksum),
        ),
        (other.expose_secret(), DenialReason::UnknownKey),
    ] {
        let d = f.manager.verify(token, &f.req()).await.unwrap_err();
        assert_eq!(d.reason, reason);
        assert_eq!(d.kind(), DenialKind::Authentication);
    }
    assert_eq!(f.hash_verifies(), 0);
}

#[tokio::test]
async fn wrong_secret_is_an_authentication_failure() {
    let f = fixture();
    let created = f.push_key().await;
    // Same id, another secret, valid checksum.
    let forged = f.manager.format().generate(&f.live, &created.key.id);
    let d = f
        .manager
        .verify(forged.expose_secret(), &f.req())
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::WrongSecret);
    assert_eq!(d.kind(), DenialKind::Authentication);
}

#[tokio::test]
async fn quota_of_three_refuses_the_fourth_and_revoke_frees_a_slot() {
    let f = fixture();
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(f.push_key().await);
    }
    let before = snapshot(f.manager.store(), OWNER).await;
    let err = f
        .manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "fourth").permissions(PermissionGrant::All),
        )
        .await
        .unwrap_err();
    assert_eq!(err, KeywardError::QuotaExceeded { limit: 3 });
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
    // Another environment has its own quota, another owner too.
    f.create(NewKey::new(OWNER, "test", "sandbox").permissions(PermissionGrant::All))
        .await;
    f.create(NewKey::new("fabrikam", "live", "other").permissions(PermissionGrant::All))
        .await;
    f.manager
        .revoke(&keyward::Actor::system("tests"), &keys[0].key.id)
        .await
        .unwrap();
    f.push_key().await;
    assert!(
        f.manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "x").permissions(PermissionGrant::All)
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn expired_keys_free_their_quota_slot() {
    let f = fixture();
    for _ in 0..3 {
        f.create(
            NewKey::new(OWNER, "live", "short")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await;
    }
    assert!(
        f.manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "x").permissions(PermissionGrant::All)
            )
            .await
            .is_err()
    );
    f.clock.advance(TimeDelta::days(1));
    f.push_key().await;
}

#[tokio::test]
async fn concurrent_creates_hold_the_quota_exactly() {
    let f = fixture();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let m = f.manager.clone();
        tasks.push(tokio::spawn(async move {
            m.create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", format!("k{i}")).permissions(PermissionGrant::All),
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e, KeywardError::QuotaExceeded { limit: 3 }),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(snapshot(f.manager.store(), OWNER).await.len(), 3);
}

#[tokio::test]
async fn regenerate_kills_the_old_secret_at_once_and_keeps_settings() {
    let f = fixture();
    let created = f.push_key().await;
    let old = created.token.expose_secret();
    assert!(f.manager.verify(old, &f.req()).await.is_ok()); // cached now
    let regenerated = f
        .manager
        .regenerate(&keyward::Actor::system("tests"), &created.key.id)
        .await
        .unwrap();
    assert_eq!(regenerated.key.id, created.key.id);
    assert_eq!(regenerated.key.permissions, created.key.permissions);
    assert_eq!(regenerated.key.expires_at, created.key.expires_at);
    assert_ne!(regenerated.token.expose_secret(), old);
    assert_eq!(
        f.manager.verify(old, &f.req()).await.unwrap_err().reason,
        DenialReason::WrongSecret
    );
    assert!(
        f.manager
            .verify(regenerated.token.expose_secret(), &f.req())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn revoke_is_permanent_listed_and_reported_only_with_the_right_secret() {
    let f = fixture();
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    assert!(f.manager.verify(t, &f.req()).await.is_ok());
    let view = f
        .manager
        .revoke(&keyward::Actor::system("tests"), &created.key.id)
        .await
        .unwrap();
    assert_eq!(view.status, KeyStatus::Revoked);
    assert_eq!(view.revoked_at, Some(start()));
    let d = f.manager.verify(t, &f.req()).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::Revoked);
    assert_eq!(d.kind(), DenialKind::Authentication);
    // A wrong secret for a revoked key does not learn that it is revoked.
    let forged = f.manager.format().generate(&f.live, &created.key.id);
    assert_eq!(
        f.manager
            .verify(forged.expose_secret(), &f.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::WrongSecret
    );
    // Permanent: revoke again, regenerate and edit are typed errors.
    let id = &created.key.id;
    assert_eq!(
        f.manager
            .revoke(&keyward::Actor::system("tests"), id)
            .await
            .unwrap_err(),
        KeywardError::Revoked(id.clone())
    );
    assert_eq!(
        f.manager
            .regenerate(&keyward::Actor::system("tests"), id)
            .await
            .unwrap_err(),
        KeywardError::Revoked(id.clone())
    );
    let edit = KeyEdit {
        name: Some("again".into()),
        ..KeyEdit::default()
    };
    assert_eq!(
        f.manager
            .edit(&keyward::Actor::system("tests"), id, edit)
            .await
            .unwrap_err(),
        KeywardError::Revoked(id.clone())
    );
    // Still listed, as Revoked.
    let listed = f
        .manager
        .list(
            &keyward::Actor::system("tests"),
            ListQuery::new(OwnerId::new(OWNER).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, KeyStatus::Revoked);
    let revoked_only = f
        .manager
        .list(
            &keyward::Actor::system("tests"),
            ListQuery::new(OwnerId::new(OWNER).unwrap()).status(KeyStatus::Active),
        )
        .await
        .unwrap();
    assert!(revoked_only.is_empty());
}

#[tokio::test]
async fn expiry_is_enforced_with_a_manual_clock() {
    let f = fixture();
    let created = f
        .create(
            NewKey::new(OWNER, "live", "one day")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await;
    let t = created.token.expose_secret();
    assert!(f.manager.verify(t, &f.req()).await.is_ok());
    f.clock.advance(TimeDelta::days(1) - TimeDelta::seconds(1));
    assert!(f.manager.verify(t, &f.req()).await.is_ok());
    f.clock.advance(TimeDelta::seconds(1));
    let d = f.manager.verify(t, &f.req()).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::Expired);
    assert_eq!(
        f.manager
            .get(&keyward::Actor::system("tests"), &created.key.id)
            .await
            .unwrap()
            .status,
        KeyStatus::Expired
    );
    assert_eq!(
        f.manager
            .regenerate(&keyward::Actor::system("tests"), &created.key.id)
            .await
            .unwrap_err(),
        KeywardError::Expired(created.key.id.clone())
    );
    let never = f
        .create(
            NewKey::new(OWNER, "live", "forever")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Never),
        )
        .await;
    assert_eq!(never.key.expires_at, None);
    f.clock.advance(TimeDelta::days(3650));
    assert!(
        f.manager
            .verify(never.token.expose_secret(), &f.req())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn delete_removes_the_key_from_listings_and_checks() {
    let f = fixture();
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    assert!(f.manager.verify(t, &f.req()).await.is_ok());
    f.manager
        .delete(&keyward::Actor::system("tests"), &created.key.id)
        .await
        .unwrap();
    assert_eq!(
        f.manager.verify(t, &f.req()).await.unwrap_err().reason,
        DenialReason::UnknownKey
    );
    assert_eq!(
        f.manager
            .get(&keyward::Actor::system("tests"), &created.key.id)
            .await
            .unwrap_err(),
        KeywardError::NotFound(created.key.id.clone())
    );
    assert_eq!(
        f.manager
            .delete(&keyward::Actor::system("tests"), &created.key.id)
            .await
            .unwrap_err(),
        KeywardError::NotFound(created.key.id.clone())
    );
    assert!(snapshot(f.manager.store(), OWNER).await.is_empty());
}

#[tokio::test]
async fn listing_filters_by_environment_and_status_and_pages() {
    let f = fixture_with(
        std::sync::Arc::new(MemoryStore::new()),
        Policy::new(registry()).with_expiry(ExpiryPolicy::unrestricted()),
        VerifierConfig::default(),
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let env = if i % 2 == 0 { "live" } else { "test" };
        ids.push(
            f.create(NewKey::new(OWNER, env, format!("k{i}")).permissions(PermissionGrant::All))
                .await
                .key
                .id,
        );
    }
    f.manager
        .revoke(&keyward::Actor::system("tests"), &ids[0])
        .await
        .unwrap();
    let owner = OwnerId::new(OWNER).unwrap();
    let live = f
        .manager
        .list(
            &keyward::Actor::system("tests"),
            ListQuery::new(owner.clone()).environment(f.live.clone()),
        )
        .await
        .unwrap();
    assert_eq!(live.len(), 3);
    let active_live = f
        .manager
        .list(
            &keyward::Actor::system("tests"),
            ListQuery::new(owner.clone())
                .environment(f.live.clone())
                .status(KeyStatus::Active),
        )
        .await
        .unwrap();
    assert_eq!(active_live.len(), 2);
    // Pages of two, ordered by id, covering everything once.
    let mut seen = Vec::new();
    let mut q = ListQuery::new(owner.clone()).limit(2);
    loop {
        let page = f
            .manager
            .list(&keyward::Actor::system("tests"), q.clone())
            .await
            .unwrap();
        assert!(page.len() <= 2);
        match page.last() {
            None => break,
            Some(last) => q = q.after(last.id.clone()),
        }
        seen.extend(page.into_iter().map(|v| v.id));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert!(
        f.manager
            .list(
                &keyward::Actor::system("tests"),
                ListQuery::new(OwnerId::new("nobody").unwrap())
            )
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn edits_allow_names_resources_and_narrowing_but_not_widening() {
    let f = fixture();
    let created = f
        .create(
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::only(["package:push", "package:unlist"]))
                .resources(ResourceScope::only(["Contoso.*"]))
                .expiry(ExpiryChoice::Days(90))
                .ip_allowlist(["10.0.0.0/8"]),
        )
        .await;
    let id = &created.key.id;
    let t = created.token.expose_secret();
    let ip = "10.1.1.1".parse().unwrap();
    let unlist = VerifyRequest::new(&f.live, f.perm("package:unlist")).client_ip(ip);
    assert!(f.manager.verify(t, &unlist).await.is_ok());

    // Narrowing permissions: allowed, and effective on the next check.
    let narrowed = f
        .manager
        .edit(
            &keyward::Actor::system("tests"),
            id,
            KeyEdit {
                name: Some("CI (push only)".into()),
                permissions: Some(PermissionGrant::only(["package:push"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(narrowed.name, "CI (push only)");
    assert_eq!(
        f.manager.verify(t, &unlist).await.unwrap_err().reason,
        DenialReason::PermissionMissing
    );
    // Implied permission only (push-new is within push): narrowing too.
    f.manager
        .edit(
            &keyward::Actor::system("tests"),
            id,
            KeyEdit {
                permissions: Some(PermissionGrant::only(["package:push-new"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();

    let before = snapshot(f.manager.store(), OWNER).await;
    let widen = [
        (
            KeyEdit {
                permissions: Some(PermissionGrant::only(["package:unlist"])),
                ..KeyEdit::default()
            },
            KeywardError::Policy(PolicyError::PermissionWidening {
                name: "package:unlist".into(),
            }),
        ),
        (
            KeyEdit {
                permissions: Some(PermissionGrant::All),
                ..KeyEdit::default()
            },
            KeywardError::Policy(PolicyError::PermissionWidening {
                name: "package:push".into(),
            }),
        ),
        (
            KeyEdit {
                expiry: Some(ExpiryChoice::Days(365)),
                ..KeyEdit::default()
            },
            KeywardError::Policy(PolicyError::ExpiryExtension),
        ),
        (
            KeyEdit {
                expiry: Some(ExpiryChoice::Never),
                ..KeyEdit::default()
            },
            KeywardError::Policy(PolicyError::ExpiryExtension),
        ),
        (
            KeyEdit {
                ip_allowlist: Some(vec![]),
                ..KeyEdit::default()
            },
            KeywardError::Policy(PolicyError::IpWidening),
        ),
        (
            KeyEdit {
                ip_allowlist: Some(vec!["10.0.0.0/8".into(), "192.0.2.0/24".into()]),
                ..KeyEdit::default()
            },
            KeywardError::Policy(PolicyError::IpWidening),
        ),
    ];
    for (edit, expected) in widen {
        assert_eq!(
            f.manager
                .edit(&keyward::Actor::system("tests"), id, edit)
                .await
                .unwrap_err(),
            expected
        );
    }
    assert_eq!(
        snapshot(f.manager.store(), OWNER).await,
        before,
        "refused edits change nothing"
    );

    // Resources may always change, widening included; expiry and IPs may narrow.
    let edited = f
        .manager
        .edit(
            &keyward::Actor::system("tests"),
            id,
            KeyEdit {
                resources: Some(ResourceScope::All),
                expiry: Some(ExpiryChoice::Days(1)),
                ip_allowlist: Some(vec!["10.1.0.0/16".into()]),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(edited.resources, ResourceScope::All);
    assert_eq!(edited.expires_at, Some(start() + TimeDelta::days(1)));
    let elsewhere = VerifyRequest::new(&f.live, f.perm("package:push-new"))
        .client_ip("10.2.0.1".parse().unwrap())
        .resource(OWNER, "Other.Package");
    assert_eq!(
        f.manager.verify(t, &elsewhere).await.unwrap_err().reason,
        DenialReason::IpNotAllowed
    );
}

#[tokio::test]
async fn a_permissive_edit_policy_allows_widening() {
    let f = fixture_with(
        std::sync::Arc::new(MemoryStore::new()),
        policy().with_edits(EditPolicy::permissive()),
        VerifierConfig::default(),
    );
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    let unlist = VerifyRequest::new(&f.live, f.perm("package:unlist"));
    assert!(f.manager.verify(t, &unlist).await.is_err());
    f.manager
        .edit(
            &keyward::Actor::system("tests"),
            &created.key.id,
            KeyEdit {
                permissions: Some(PermissionGrant::All),
                expiry: Some(ExpiryChoice::Never),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(
        f.manager.verify(t, &unlist).await.is_ok(),
        "widened on the next check"
    );
    // Session-only stays impossible even here.
    let err = f
        .manager
        .edit(
            &keyward::Actor::system("tests"),
            &created.key.id,
            KeyEdit {
                permissions: Some(PermissionGrant::only(["package:delete"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        KeywardError::Policy(PolicyError::SessionOnlyPermission {
            name: "package:delete".into()
        })
    );
}
