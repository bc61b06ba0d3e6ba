//! Session tokens: exchange, snapshot, lifetime, environment, revocation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use keyward::*;
use keyward::{
    hash::Argon2Hasher, key::KeyStatus, manager::ImportKey, policy::ExpiryChoice,
    policy::IpAllowlist, policy::ManagementDenial, policy::PermissionGrant, policy::ResourceScope,
    session::IssuedSession, session::SessionConfig, session::SessionHash, session::SessionRecord,
    store::SessionStore, store::StoreError, token::TokenError, verify::DenialKind,
    verify::SessionError,
};

struct S {
    f: Fixture,
}

fn sessions_fixture() -> S {
    sessions_fixture_with(SessionConfig::new("mkhs"))
}

fn sessions_fixture_with(config: SessionConfig) -> S {
    let clock = ManualClock::new(start());
    let counters = Counters::default();
    let manager = KeyManager::builder(Arc::new(MemoryStore::new()), format(), policy())
        .hasher(CountingHasher::new(counters.clone()))
        .clock(clock.clone())
        .sessions(config)
        .build()
        .unwrap();
    S {
        f: Fixture {
            manager,
            clock,
            counters,
            registry: registry(),
            live: Environment::new("live").expect("env"),
            test: Environment::new("test").expect("env"),
        },
    }
}

impl S {
    async fn exchange(&self, key: &CreatedKey) -> IssuedSession {
        self.f
            .manager
            .exchange(key.token.expose_secret(), &self.f.live, None, None)
            .await
            .expect("exchange")
    }
}

#[tokio::test]
async fn exchange_gives_a_recognisable_token_that_key_parsers_refuse() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let session = s.exchange(&key).await;
    let token = session.token.expose_secret();
    assert!(token.starts_with("mkhs_live_"), "own prefix");
    // Refused unread: a longer session prefix makes it too long for a key.
    assert!(matches!(
        f.manager.format().parse(token).unwrap_err(),
        TokenError::BadPrefix | TokenError::TooLong { .. }
    ));
    let sf = f.manager.session_format().unwrap();
    assert_eq!(
        sf.parse(key.token.expose_secret()).unwrap_err(),
        TokenError::BadPrefix
    );
    assert!(f.manager.is_session_token(token));
    assert!(!f.manager.is_session_token(key.token.expose_secret()));

    // The key verifier refuses it before any lookup; the session verifier refuses a key.
    let d = f.manager.verify(token, &f.req()).await.unwrap_err();
    assert!(matches!(d.reason, DenialReason::Malformed(_)));
    assert_eq!(f.hash_verifies(), 1, "only the exchange reached argon2");
    let d = f
        .manager
        .verify_session(key.token.expose_secret(), &f.req())
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::Malformed(TokenError::BadPrefix));

    let ok = f.manager.verify_session(token, &f.req()).await.unwrap();
    assert_eq!(ok.id(), &key.key.id);
    assert_eq!(ok.session_id(), &session.session.id);
    assert_eq!(ok.owner().as_str(), OWNER);
    assert_eq!(ok.name(), "CI");
    assert_eq!(session.session.key_id, key.key.id);
    assert_eq!(session.session.expires_at, start() + TimeDelta::minutes(15));
    assert_eq!(format!("{:?}", session.token), "Token([REDACTED])");
}

#[tokio::test]
async fn sessions_are_stored_as_sha256_and_never_shown() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let session = s.exchange(&key).await;
    let sf = f.manager.session_format().unwrap();
    let parsed = sf.parse(session.token.expose_secret()).unwrap();
    let secret = parsed.expose_secret().to_owned();
    let record = f
        .manager
        .store()
        .get_session(&session.session.id)
        .await
        .unwrap()
        .unwrap();
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    assert_eq!(record.secret_hash.as_bytes(), &expected);
    let debug = format!("{record:?}");
    assert!(debug.contains("SessionHash([REDACTED])"));
    assert!(!debug.contains(&secret));
    let json = serde_json::to_string(&session.session).unwrap();
    assert!(!json.contains(&secret));
    assert_eq!(record.owner.as_str(), OWNER);
    assert!(!record.revoked);
}

#[tokio::test]
async fn the_session_carries_the_key_snapshot() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f
        .create(
            NewKey::new(OWNER, "live", "GitHub Actions")
                .permissions(PermissionGrant::only(["package:push"]))
                .resources(ResourceScope::only(["AzureRM.DataFactory*"]))
                .ip_allowlist(["203.0.113.0/24"]),
        )
        .await;
    let ip = "203.0.113.9".parse().unwrap();
    let denied = f
        .manager
        .exchange(key.token.expose_secret(), &f.live, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(denied, SessionError::Denied(ref d) if d.reason == DenialReason::IpNotAllowed),
        "{denied:?}"
    );
    let session = f
        .manager
        .exchange(key.token.expose_secret(), &f.live, None, Some(ip))
        .await
        .unwrap();
    let t = session.token.expose_secret();
    let push = f.push();
    let ok = VerifyRequest::new(&f.live, push)
        .resource(OWNER, "AzureRM.DataFactoryV2")
        .client_ip(ip);
    let checked = f.manager.verify_session(t, &ok).await.unwrap();
    assert_eq!(
        checked.resources(),
        ResourceScope::only(["AzureRM.DataFactory*"])
    );
    // Implied permission carried over.
    let implied = VerifyRequest {
        permission: f.perm("package:push-new"),
        ..ok
    };
    assert!(f.manager.verify_session(t, &implied).await.is_ok());
    for (req, reason) in [
        (
            VerifyRequest::new(&f.live, push)
                .resource(OWNER, "AzureRM.Profile")
                .client_ip(ip),
            DenialReason::ResourceOutOfScope,
        ),
        (
            VerifyRequest::new(&f.live, push)
                .resource("fabrikam", "AzureRM.DataFactory")
                .client_ip(ip),
            DenialReason::OtherOwner,
        ),
        (
            VerifyRequest::new(&f.live, f.perm("package:unlist")).client_ip(ip),
            DenialReason::PermissionMissing,
        ),
        (
            VerifyRequest::new(&f.live, f.perm("package:delete")).client_ip(ip),
            DenialReason::SessionOnly,
        ),
        (
            VerifyRequest::new(&f.live, push).client_ip("198.51.100.1".parse().unwrap()),
            DenialReason::IpNotAllowed,
        ),
        (
            VerifyRequest::new(&f.test, push).client_ip(ip),
            DenialReason::WrongEnvironment,
        ),
    ] {
        let d = f.manager.verify_session(t, &req).await.unwrap_err();
        assert_eq!(d.reason, reason, "{req:?}");
    }

    // Editing the key later does not change the session's snapshot.
    f.manager
        .edit(
            &keyward::Actor::system("tests"),
            &key.key.id,
            KeyEdit {
                resources: Some(ResourceScope::only(["Other.*"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(f.manager.verify_session(t, &ok).await.is_ok());
}

#[tokio::test]
async fn lifetime_default_maximum_and_key_expiry() {
    let config = SessionConfig {
        max_ttl: Duration::from_secs(30 * 60),
        ..SessionConfig::new("mkhs")
    };
    let s = sessions_fixture_with(config);
    let f = &s.f;
    let key = f.push_key().await;
    let t = key.token.expose_secret();
    let err = f
        .manager
        .exchange(t, &f.live, Some(Duration::from_secs(31 * 60)), None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SessionError::TtlTooLong {
            requested: Duration::from_secs(31 * 60),
            max: Duration::from_secs(30 * 60)
        }
    );
    assert_eq!(
        f.manager
            .exchange(t, &f.live, Some(Duration::ZERO), None)
            .await
            .unwrap_err(),
        SessionError::ZeroTtl
    );
    let long = f
        .manager
        .exchange(t, &f.live, Some(Duration::from_secs(30 * 60)), None)
        .await
        .unwrap();
    assert_eq!(long.session.expires_at, start() + TimeDelta::minutes(30));

    let session = s.exchange(&key).await;
    let st = session.token.expose_secret();
    assert!(f.manager.verify_session(st, &f.req()).await.is_ok());
    f.clock.advance(TimeDelta::minutes(15));
    let d = f.manager.verify_session(st, &f.req()).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::Expired);
    assert_eq!(d.key_id.as_ref(), Some(&key.key.id));
    assert!(
        f.manager
            .verify_session(long.token.expose_secret(), &f.req())
            .await
            .is_ok()
    );

    // A session never outlives its key.
    let short = f
        .create(
            NewKey::new(OWNER, "live", "short")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await;
    f.clock
        .advance(TimeDelta::hours(24) - TimeDelta::minutes(5));
    let session = f
        .manager
        .exchange(short.token.expose_secret(), &f.live, None, None)
        .await
        .unwrap();
    assert_eq!(session.session.expires_at, short.key.expires_at.unwrap());

    // Expired sessions can be purged.
    f.clock.advance(TimeDelta::hours(1));
    assert_eq!(f.manager.purge_expired_sessions().await.unwrap(), 3);
    assert_eq!(f.manager.purge_expired_sessions().await.unwrap(), 0);
}

#[tokio::test]
async fn a_session_token_cannot_mint_another_session() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let session = s.exchange(&key).await;
    let err = f
        .manager
        .exchange(session.token.expose_secret(), &f.live, None, None)
        .await
        .unwrap_err();
    assert_eq!(err, SessionError::SessionTokenGiven);
    assert_eq!(
        f.hash_verifies(),
        1,
        "refused before any key check (one check for the first exchange)"
    );
}

/// Regenerate and delete leave sessions valid until they expire (as the
/// developer portal's page says); revoke ends them at once (the key "is
/// disabled immediately and any integration using it will stop working").
#[tokio::test]
async fn sessions_survive_regenerate_and_delete_but_not_revoke() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let a = s.exchange(&key).await;
    let at = a.token.expose_secret();
    assert!(f.manager.verify_session(at, &f.req()).await.is_ok());

    let new = f
        .manager
        .regenerate(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert!(
        f.manager
            .verify(key.token.expose_secret(), &f.req())
            .await
            .is_err()
    );
    assert!(
        f.manager.verify_session(at, &f.req()).await.is_ok(),
        "survives regenerate"
    );
    let b = s.exchange(&new).await;

    // A plain revoke: every session ends at once, cached or not.
    let view = f
        .manager
        .revoke(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert_eq!(view.status, KeyStatus::Revoked);
    for t in [at, b.token.expose_secret()] {
        let d = f.manager.verify_session(t, &f.req()).await.unwrap_err();
        assert_eq!(
            d.reason,
            DenialReason::Revoked,
            "a revoke ends the sessions"
        );
        assert_eq!(d.kind(), DenialKind::Authentication);
    }
    let d = f
        .manager
        .exchange(new.token.expose_secret(), &f.live, None, None)
        .await
        .unwrap_err();
    assert!(matches!(d, SessionError::Denied(ref d) if d.reason == DenialReason::Revoked));
    // revoke_compromised of a key already revoked: its view, sessions ended (again).
    let view = f
        .manager
        .revoke_compromised(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert_eq!(view.status, KeyStatus::Revoked);

    // Delete leaves sessions; end_sessions ends them for a deleted key.
    let other = f.push_key().await;
    let c = s.exchange(&other).await;
    f.manager
        .delete(&keyward::Actor::system("tests"), &other.key.id)
        .await
        .unwrap();
    let ct = c.token.expose_secret();
    assert!(
        f.manager.verify_session(ct, &f.req()).await.is_ok(),
        "survives delete"
    );
    assert_eq!(
        f.manager
            .end_sessions(&keyward::Actor::system("tests"), &other.key.id)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        f.manager
            .verify_session(ct, &f.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::Revoked
    );
    assert!(matches!(
        f.manager
            .revoke_compromised(&keyward::Actor::system("tests"), &other.key.id)
            .await,
        Err(KeywardError::NotFound(_))
    ));
}

/// The owner's administrator ends the sessions of a key it deleted: the
/// owner stored with the sessions authorizes it. Another owner's
/// administrator may not, and a key without sessions is not found.
#[tokio::test]
async fn an_owners_administrator_ends_the_sessions_of_a_deleted_key() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let session = s.exchange(&key).await;
    let admin = Actor::administrator("alice", OwnerId::new(OWNER).unwrap());
    f.manager.delete(&admin, &key.key.id).await.unwrap();
    let mallory = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    assert!(matches!(
        f.manager.end_sessions(&mallory, &key.key.id).await,
        Err(KeywardError::NotAllowed {
            denial: ManagementDenial::OtherOwner,
            ..
        })
    ));
    assert!(
        f.manager
            .verify_session(session.token.expose_secret(), &f.req())
            .await
            .is_ok(),
        "a refused end_sessions ends nothing"
    );
    assert_eq!(
        f.manager.end_sessions(&admin, &key.key.id).await.unwrap(),
        1
    );
    assert_eq!(
        f.manager
            .verify_session(session.token.expose_secret(), &f.req())
            .await
            .unwrap_err()
            .reason,
        DenialReason::Revoked
    );
    let never = KeyId::generate();
    assert!(matches!(
        f.manager.end_sessions(&admin, &never).await,
        Err(KeywardError::NotFound(_))
    ));
}

/// A revoke whose session ending fails says so, with the key revoked; the
/// sessions end on the retry (`revoke_compromised` or `end_sessions`).
#[cfg(feature = "testing")]
#[tokio::test]
async fn a_revoke_whose_sessions_could_not_be_ended_says_so() {
    use keyward::store::{FaultyStore, Op};
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    let key = manager
        .create(
            &Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    let session = manager
        .exchange(key.token.expose_secret(), &live, None, None)
        .await
        .unwrap();
    store.fail(Op::RevokeSessions);
    let err = manager
        .revoke(&Actor::system("tests"), &key.key.id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KeywardError::SessionsNotEnded { ref id, .. } if *id == key.key.id),
        "{err:?}"
    );
    assert_eq!(err.code(), "sessions_not_ended");
    let stored = store.inner().get(&key.key.id).await.unwrap().unwrap();
    assert!(stored.revoked_at.is_some(), "the key itself is revoked");
    store.heal();
    manager
        .revoke_compromised(&Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
    assert_eq!(
        manager
            .verify_session(session.token.expose_secret(), &req)
            .await
            .unwrap_err()
            .reason,
        DenialReason::Revoked
    );
}

/// A key holds at most `max_sessions_per_key` live sessions: at the cap
/// the exchange is refused (nothing stored, no audit event, the sessions
/// issued keep working); an expired or ended session frees its slot, and
/// the purge deletes the expired rows.
#[tokio::test]
async fn live_sessions_per_key_are_capped() {
    let s = sessions_fixture_with(SessionConfig {
        max_sessions_per_key: 3,
        ..SessionConfig::new("mkhs")
    });
    let f = &s.f;
    let key = f.push_key().await;
    let other = f.push_key().await;
    let exchange = |ttl: u64| {
        f.manager.exchange(
            key.token.expose_secret(),
            &f.live,
            Some(Duration::from_secs(ttl)),
            None,
        )
    };
    let short = exchange(60).await.unwrap();
    let kept = exchange(600).await.unwrap();
    exchange(600).await.unwrap();
    let err = exchange(600).await.unwrap_err();
    assert_eq!(
        err,
        SessionError::TooManySessions {
            key_id: key.key.id.clone(),
            limit: 3
        }
    );
    assert!(
        f.manager
            .verify_session(kept.token.expose_secret(), &f.req())
            .await
            .is_ok(),
        "the sessions issued keep working"
    );
    // The cap is per key.
    s.exchange(&other).await;
    // An expired session frees its slot; the purge deletes its row.
    f.clock.advance(TimeDelta::seconds(61));
    exchange(600).await.expect("a slot freed by expiry");
    assert!(matches!(
        exchange(600).await,
        Err(SessionError::TooManySessions { .. })
    ));
    assert_eq!(f.manager.purge_expired_sessions().await.unwrap(), 1);
    assert!(
        f.manager
            .store()
            .get_session(&short.session.id)
            .await
            .unwrap()
            .is_none()
    );
    // Ended sessions free every slot.
    f.manager
        .end_sessions(&Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    exchange(600)
        .await
        .expect("slots freed by ending the sessions");
}

#[tokio::test]
async fn wrong_unknown_and_malformed_session_tokens() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let session = s.exchange(&key).await;
    let sf = f.manager.session_format().unwrap();
    let wrong = sf
        .from_pair(
            &f.live,
            session.session.id.as_str(),
            &"A".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    let d = f
        .manager
        .verify_session(wrong.expose_secret(), &f.req())
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::WrongSecret);
    assert_eq!(d.key_id, None, "nothing revealed about the session");
    let unknown = sf.generate(&f.live, &KeyId::generate());
    let d = f
        .manager
        .verify_session(unknown.expose_secret(), &f.req())
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::UnknownKey);
    for bad in [
        "",
        "mkhs_live_x",
        "mkhs_prod_",
        "\u{e9}\u{e9}",
        &"a".repeat(10_000),
    ] {
        let d = f.manager.verify_session(bad, &f.req()).await.unwrap_err();
        assert!(matches!(d.reason, DenialReason::Malformed(_)), "{bad:?}");
    }
    // A test-environment session is refused in live.
    let sandbox = f
        .create(NewKey::new(OWNER, "test", "sandbox").permissions(PermissionGrant::All))
        .await;
    let ts = f
        .manager
        .exchange(sandbox.token.expose_secret(), &f.test, None, None)
        .await
        .unwrap();
    let d = f
        .manager
        .verify_session(ts.token.expose_secret(), &f.req())
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::WrongEnvironment);
    // And a test key cannot be exchanged in live.
    let d = f
        .manager
        .exchange(sandbox.token.expose_secret(), &f.live, None, None)
        .await
        .unwrap_err();
    assert!(matches!(d, SessionError::Denied(ref d) if d.reason == DenialReason::WrongEnvironment));
}

#[tokio::test]
async fn an_id_and_secret_pair_is_exchanged_like_its_token() {
    let s = sessions_fixture();
    let f = &s.f;
    let key = f.push_key().await;
    let parsed = f.manager.format().parse(key.token.expose_secret()).unwrap();
    let rebuilt = f
        .manager
        .format()
        .from_pair(&f.live, parsed.key_id(), parsed.expose_secret())
        .unwrap();
    let session = f
        .manager
        .exchange(rebuilt.expose_secret(), &f.live, None, None)
        .await
        .unwrap();
    assert_eq!(session.session.key_id, key.key.id);
    let wrong = f
        .manager
        .format()
        .from_pair(
            &f.live,
            parsed.key_id(),
            &"b".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    let err = f
        .manager
        .exchange(wrong.expose_secret(), &f.live, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Denied(ref d) if d.reason == DenialReason::WrongSecret));
    for (id, secret) in [("", "x"), ("short", "x"), ("ABCDEFGHIJK!", "x")] {
        assert!(f.manager.format().from_pair(&f.live, id, secret).is_err());
    }
    let prod = Environment::new("prod").unwrap();
    assert_eq!(
        f.manager
            .format()
            .from_pair(&prod, parsed.key_id(), parsed.expose_secret())
            .unwrap_err(),
        TokenError::UnknownEnvironment
    );
}

/// An imported key's id and secret (not in keyward's token format) are
/// exchanged as a pair; a wrong secret is refused, and a session's own id
/// and secret are never taken for a key's.
#[tokio::test]
async fn an_imported_keys_pair_is_exchanged_with_exchange_pair() {
    let s = sessions_fixture();
    let f = &s.f;
    let secret = "legacy-Secret.1";
    let hex = sha256_hex(secret);
    let imported = f
        .manager
        .import(
            &keyward::Actor::system("migration"),
            ImportKey::scoped("K7x2Lq9", OWNER, "live", "old CI key", hex)
                .permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    // As a token it is malformed: only the pair form works.
    assert!(matches!(
        f.manager.exchange(secret, &f.live, None, None).await,
        Err(SessionError::Denied(ref d)) if matches!(d.reason, DenialReason::Malformed(_))
    ));
    let session = f
        .manager
        .exchange_pair("K7x2Lq9", secret, &f.live, None, None)
        .await
        .unwrap();
    assert_eq!(session.session.key_id, imported.id);
    f.manager
        .verify_session(session.token.expose_secret(), &f.req())
        .await
        .unwrap();
    assert!(matches!(
        f.manager.exchange_pair("K7x2Lq9", "legacy-Secret.2", &f.live, None, None).await,
        Err(SessionError::Denied(ref d)) if d.reason == DenialReason::WrongSecret
    ));
    let parsed = f
        .manager
        .session_format()
        .unwrap()
        .parse(session.token.expose_secret())
        .unwrap();
    assert!(matches!(
        f.manager
            .exchange_pair(parsed.key_id(), parsed.expose_secret(), &f.live, None, None)
            .await,
        Err(SessionError::Denied(ref d)) if d.reason == DenialReason::UnknownKey
    ));
    // The TTL rules are the same as for tokens.
    assert_eq!(
        f.manager
            .exchange_pair("K7x2Lq9", secret, &f.live, Some(Duration::ZERO), None)
            .await
            .unwrap_err(),
        SessionError::ZeroTtl
    );
}

/// `sessions(..)` is a plain builder step (settings may follow it); `build`
/// names the setting that cannot work.
#[test]
fn build_names_the_session_setting_that_cannot_work() {
    let build = |config: SessionConfig| {
        KeyManager::builder(MemoryStore::new(), format(), policy())
            .sessions(config)
            .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
            .build()
            .map(drop)
            // Boxed: the error names its setting and holds its value.
            .map_err(Box::new)
    };
    let mkhs = || SessionConfig::new("mkhs");
    let cases = [
        (
            SessionConfig::new("mkh"),
            "sessions.prefix",
            SessionError::PrefixClash,
        ),
        (
            SessionConfig {
                default_ttl: Duration::ZERO,
                ..mkhs()
            },
            "sessions.default_ttl",
            SessionError::ZeroTtl,
        ),
        (
            SessionConfig {
                max_ttl: Duration::ZERO,
                ..mkhs()
            },
            "sessions.max_ttl",
            SessionError::ZeroTtl,
        ),
        (
            SessionConfig {
                default_ttl: Duration::from_secs(7200),
                ..mkhs()
            },
            "sessions.default_ttl",
            SessionError::DefaultAboveMax,
        ),
        (
            SessionConfig {
                max_sessions_per_key: 0,
                ..mkhs()
            },
            "sessions.max_sessions_per_key",
            SessionError::ZeroSessionCap,
        ),
    ];
    for (config, field, kind) in cases {
        let error = build(config).unwrap_err();
        assert_eq!((error.field(), error.kind()), (field, &kind));
        let message = error.to_string();
        assert!(message.contains(field), "{message}");
    }
    let error = build(SessionConfig::new("MKHS")).unwrap_err();
    assert_eq!(error.field(), "sessions.prefix");
    assert!(matches!(error.kind(), SessionError::Prefix(_)));
    assert!(build(mkhs()).is_ok());
}

#[tokio::test]
async fn configuration_is_checked() {
    let build = |config: SessionConfig| {
        KeyManager::builder(MemoryStore::new(), format(), policy())
            .sessions(config)
            .build()
            .map(|_| ())
            .map_err(|e| e.kind().clone())
    };
    assert_eq!(
        build(SessionConfig::new("mkh")),
        Err(SessionError::PrefixClash)
    );
    assert!(matches!(
        build(SessionConfig::new("MKHS")),
        Err(SessionError::Prefix(_))
    ));
    assert!(matches!(
        build(SessionConfig::new("")),
        Err(SessionError::Prefix(_))
    ));
    assert_eq!(
        build(SessionConfig {
            default_ttl: Duration::from_secs(7200),
            ..SessionConfig::new("mkhs")
        }),
        Err(SessionError::DefaultAboveMax)
    );
    assert_eq!(
        build(SessionConfig {
            max_ttl: Duration::ZERO,
            ..SessionConfig::new("mkhs")
        }),
        Err(SessionError::ZeroTtl)
    );
    assert_eq!(
        build(SessionConfig {
            max_sessions_per_key: 0,
            ..SessionConfig::new("mkhs")
        }),
        Err(SessionError::ZeroSessionCap)
    );
    // Without sessions configured, exchange says so and session tokens are refused.
    let f = fixture();
    let key = f.push_key().await;
    assert_eq!(
        f.manager
            .exchange(key.token.expose_secret(), &f.live, None, None)
            .await
            .unwrap_err(),
        SessionError::NotConfigured
    );
    assert!(f.manager.session_format().is_none());
}

/// A session through a manager on a real store: exchange, snapshot, hash
/// at rest, survives regenerate, ends on compromise, purged after expiry.
/// Run on every store that ships with keyward.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn session_life<S: KeyStore + SessionStore>(store: S) {
    let clock = ManualClock::new(start());
    let manager = KeyManager::builder(store, format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock.clone())
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    let push = registry().get("package:push").unwrap();
    let key = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::only(["package:push"]))
                .resources(ResourceScope::only(["Contoso.*"]))
                .ip_allowlist(["10.0.0.0/8"]),
        )
        .await
        .unwrap();
    let ip = "10.1.2.3".parse().unwrap();
    let session = manager
        .exchange(key.token.expose_secret(), &live, None, Some(ip))
        .await
        .unwrap();
    let stored = manager
        .store()
        .get_session(&session.session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.view(), session.session);
    assert_eq!(stored.resources, ResourceScope::only(["Contoso.*"]));
    assert_eq!(
        stored.ip_allowlist,
        IpAllowlist::parse(&["10.0.0.0/8"]).unwrap()
    );
    assert_eq!(stored.key_name, "CI");
    assert!(!stored.revoked);
    // Stored as the SHA-256 of the secret.
    let secret = manager
        .session_format()
        .unwrap()
        .parse(session.token.expose_secret())
        .unwrap()
        .expose_secret()
        .to_owned();
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    assert_eq!(stored.secret_hash.as_bytes(), &expected);

    let t = session.token.expose_secret();
    let ok = VerifyRequest::new(&live, push)
        .resource(OWNER, "Contoso.Tools")
        .client_ip(ip);
    assert!(manager.verify_session(t, &ok).await.is_ok());
    let out = VerifyRequest::new(&live, push)
        .resource(OWNER, "Other")
        .client_ip(ip);
    assert_eq!(
        manager.verify_session(t, &out).await.unwrap_err().reason,
        DenialReason::ResourceOutOfScope
    );
    manager
        .regenerate(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert!(manager.verify_session(t, &ok).await.is_ok());
    manager
        .revoke_compromised(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert_eq!(
        manager.verify_session(t, &ok).await.unwrap_err().reason,
        DenialReason::Revoked
    );
    assert!(
        manager
            .store()
            .get_session(&session.session.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    clock.advance(TimeDelta::hours(1));
    assert_eq!(manager.purge_expired_sessions().await.unwrap(), 1);
    assert!(
        manager
            .store()
            .get_session(&session.session.id)
            .await
            .unwrap()
            .is_none()
    );
}

/// The [`SessionStore`] contract, checked by the public conformance suite.
#[cfg(feature = "testing")]
#[tokio::test]
async fn session_store_conformance_on_memory() {
    keyward::store::conformance::session_store_conformance(MemoryStore::new()).await;
}

/// The same life on the SQLite store.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sessions_on_sqlite() {
    // `migrate` creates the sessions table too; running either again is a no-op.
    let store = SqliteStore::in_memory().await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.migrate_sessions().await.unwrap();
    session_life(store).await;
}

/// The session conformance suite on an in-memory SQLite store, twice on
/// the same store, which also holds a session of today that it must not
/// touch (its window is in the distant past).
#[cfg(all(feature = "sqlite", feature = "testing"))]
#[tokio::test]
async fn session_store_conformance_on_sqlite() {
    let store = SqliteStore::in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let today = SessionRecord {
        id: KeyId::generate(),
        key_id: KeyId::generate(),
        owner: OwnerId::new(OWNER).unwrap(),
        environment: Environment::new("live").unwrap(),
        key_name: "CI".into(),
        permissions: PermissionGrant::only(["package:push"]),
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::any(),
        created_at: start(),
        expires_at: start() + TimeDelta::minutes(15),
        revoked: false,
        secret_hash: SessionHash::from_bytes([7; 32]),
    };
    store.insert_session(&today, None).await.unwrap();
    keyward::store::conformance::session_store_conformance(store.clone()).await;
    keyward::store::conformance::session_store_conformance(store.clone()).await;
    assert_eq!(store.get_session(&today.id).await.unwrap(), Some(today));
}

#[cfg(feature = "postgres")]
mod postgres;

/// The same life on the PostgreSQL store, where `migrate` creates the
/// sessions table.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_postgres() {
    postgres::with_schema(|url, schema| async move {
        let store = PostgresStore::connect(&url)
            .await
            .unwrap()
            .with_schema(&schema)
            .unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap(); // idempotent
        session_life(store).await;
    })
    .await;
}

/// The session conformance suite on PostgreSQL: on the default table, and
/// on a 63-character table name (derived, hashed sessions names).
#[cfg(all(feature = "postgres", feature = "testing"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_conformance_on_postgres() {
    postgres::with_schema(|url, schema| async move {
        let store = PostgresStore::connect(&url)
            .await
            .unwrap()
            .with_schema(&schema)
            .unwrap();
        store.migrate().await.unwrap();
        keyward::store::conformance::session_store_conformance(store.clone()).await;

        let long = store.clone().with_table(&"t".repeat(63)).unwrap();
        long.migrate().await.unwrap();
        keyward::store::conformance::session_store_conformance(long).await;
        store.pool().close().await;
    })
    .await;
}

/// PostgreSQL sessions: migrations racing from two pools, the row holds only
/// the hash, and corrupt rows are typed errors (and denials), not panics.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_migrate_race_hash_at_rest_and_corrupt_rows() {
    postgres::with_schema(|url, schema| async move {
        let connect = || async {
            PostgresStore::connect(&url)
                .await
                .unwrap()
                .with_schema(&schema)
                .unwrap()
        };
        let (a, b) = (connect().await, connect().await);
        let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
        ra.unwrap();
        rb.unwrap();
        let clock = ManualClock::new(start());
        let manager = KeyManager::builder(a.clone(), format(), policy())
            .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
            .clock(clock.clone())
            .sessions(SessionConfig::new("mkhs"))
            .build()
            .unwrap();
        let live = Environment::new("live").unwrap();
        let key = manager
            .create(
                &keyward::Actor::system("tests"),
                NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
            )
            .await
            .unwrap();
        let session = manager
            .exchange(key.token.expose_secret(), &live, None, None)
            .await
            .unwrap();
        // Written through one pool, read through the other.
        assert_eq!(
            b.get_session(&session.session.id)
                .await
                .unwrap()
                .unwrap()
                .view(),
            session.session
        );
        // The row holds 32 hash bytes and never the secret or the token.
        let table = format!("\"{schema}\".keyward_keys_sessions");
        let (row, hash_len): (String, i32) = sqlx::query_as(&format!(
            "SELECT t::text, octet_length(t.secret_hash) FROM {table} t WHERE id = $1"
        ))
        .bind(session.session.id.as_str())
        .fetch_one(a.pool())
        .await
        .unwrap();
        assert_eq!(hash_len, 32);
        let token = session.token.expose_secret();
        let secret = manager
            .session_format()
            .unwrap()
            .parse(token)
            .unwrap()
            .expose_secret()
            .to_owned();
        assert!(!row.contains(&secret) && !row.contains(token));

        for (column, value, field) in [
            ("secret_hash", "'\\x0102'::bytea", "secret_hash"),
            ("permissions", "'{oops'", "permissions"),
            ("resources", "'[1, 2'", "resources"),
            ("ip_allowlist", "'[\"300.1.1.1/8\"]'", "ip_allowlist"),
            ("owner", "''", "owner"),
            ("environment", "'no spaces allowed'", "environment"),
            ("key_id", "'bad key!'", "key_id"),
            ("expires_at", "9223372036854775807", "expires_at"),
        ] {
            let victim = manager
                .exchange(key.token.expose_secret(), &live, None, None)
                .await
                .unwrap();
            sqlx::query(&format!(
                "UPDATE {table} SET {column} = {value} WHERE id = $1"
            ))
            .bind(victim.session.id.as_str())
            .execute(a.pool())
            .await
            .unwrap();
            match b.get_session(&victim.session.id).await {
                Err(StoreError::Corrupt {
                    field: f, ref id, ..
                }) => {
                    assert_eq!(f, field, "{column}");
                    assert_eq!(id, victim.session.id.as_str());
                }
                other => panic!("{column}: expected Corrupt, got {other:?}"),
            }
            // The manager denies it (not cached: never verified before).
            let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
            let denial = manager
                .verify_session(victim.token.expose_secret(), &req)
                .await
                .unwrap_err();
            assert_eq!(denial.reason, DenialReason::StoreUnavailable, "{column}");
        }
        // The good session is untouched by its neighbours' corruption.
        let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
        assert!(manager.verify_session(token, &req).await.is_ok());
    })
    .await;
}

/// Two "servers" (managers) on one `MemoryStore`, with no change feed
/// between them, and a key created on the first.
async fn two_servers() -> (
    KeyManager<Arc<MemoryStore>>,
    KeyManager<Arc<MemoryStore>>,
    CreatedKey,
) {
    let store = Arc::new(MemoryStore::new());
    let server = || {
        KeyManager::builder(Arc::clone(&store), format(), policy())
            .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
            .sessions(SessionConfig::new("mkhs"))
            .build()
            .unwrap()
    };
    let (a, b) = (server(), server());
    let key = a
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    (a, b, key)
}

/// Two servers on one store, without a change feed: server B still holds
/// the key in its cache after server A revoked it as compromised. An
/// exchange on B re-reads the key once its session is stored, finds it
/// revoked and refuses, never returning the new session's token: no usable
/// session outlives a compromise.
#[tokio::test]
async fn an_exchange_racing_a_compromise_revoke_leaves_no_session() {
    let (a, b, key) = two_servers().await;
    let live = Environment::new("live").unwrap();
    let token = key.token.expose_secret();
    // B proves the key once: its cache now answers for it.
    let before = b.exchange(token, &live, None, None).await.unwrap();
    a.revoke_compromised(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    // B's cache still says the key is fine...
    assert!(
        b.verifier().authenticate(token, &live, None).await.is_ok(),
        "B's cache is stale (no feed): the case this guards"
    );
    // ...but the exchange does not trust it with a new session: no token.
    let err = b.exchange(token, &live, None, None).await.unwrap_err();
    assert!(matches!(err, SessionError::Denied(ref d) if d.reason == DenialReason::Revoked));
    // The session made before the compromise is ended (in the store; B's
    // own cache forgets it once B invalidates the key, as a feed would).
    let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
    b.verifier().invalidate(&key.key.id);
    let d = b
        .verify_session(before.token.expose_secret(), &req)
        .await
        .unwrap_err();
    assert_eq!(d.reason, DenialReason::Revoked);
}

/// A plain revoke racing an exchange the same way: the exchange is refused,
/// and the key's earlier sessions are ended, as a revoke ends them.
#[tokio::test]
async fn an_exchange_racing_a_plain_revoke_is_refused_and_ends_everything() {
    let (a, b, key) = two_servers().await;
    let live = Environment::new("live").unwrap();
    let token = key.token.expose_secret();
    let before = b.exchange(token, &live, None, None).await.unwrap();
    a.revoke(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    let err = b.exchange(token, &live, None, None).await.unwrap_err();
    assert!(matches!(err, SessionError::Denied(ref d) if d.reason == DenialReason::Revoked));
    let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
    b.verifier().invalidate(&key.key.id);
    assert_eq!(
        b.verify_session(before.token.expose_secret(), &req)
            .await
            .unwrap_err()
            .reason,
        DenialReason::Revoked,
        "a revoke ends the key's sessions on every server"
    );
}

/// Server B's cache still holds the key after server A suspended it: the
/// exchange's re-read refuses the suspended key.
#[tokio::test]
async fn an_exchange_racing_a_suspend_is_refused() {
    let (a, b, key) = two_servers().await;
    let live = Environment::new("live").unwrap();
    let token = key.token.expose_secret();
    b.exchange(token, &live, None, None).await.unwrap();
    a.suspend(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert!(
        b.verifier().authenticate(token, &live, None).await.is_ok(),
        "B's cache is stale (no feed): the case this guards"
    );
    let err = b.exchange(token, &live, None, None).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Denied(ref d) if d.reason == DenialReason::Suspended),
        "{err:?}"
    );
}

/// Server B proved the old secret before server A regenerated the key: the
/// key's generation changed since the proof, so B proves the secret again
/// against the store and refuses the old one. A key merely edited
/// elsewhere is proven again and exchanged, with the new snapshot.
#[tokio::test]
async fn an_exchange_proven_before_a_change_elsewhere_is_proven_again() {
    let (a, b, key) = two_servers().await;
    let live = Environment::new("live").unwrap();
    let old = key.token.expose_secret();
    b.exchange(old, &live, None, None).await.unwrap();
    let new = a
        .regenerate(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert!(
        b.verifier().authenticate(old, &live, None).await.is_ok(),
        "B's cache is stale (no feed): the case this guards"
    );
    let err = b.exchange(old, &live, None, None).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Denied(ref d) if d.reason == DenialReason::WrongSecret),
        "{err:?}"
    );

    let token = new.token.expose_secret();
    b.exchange(token, &live, None, None).await.unwrap();
    a.edit(
        &keyward::Actor::system("tests"),
        &key.key.id,
        KeyEdit {
            name: Some("renamed".into()),
            ..KeyEdit::default()
        },
    )
    .await
    .unwrap();
    let issued = b.exchange(token, &live, None, None).await.unwrap();
    let stored = b
        .store()
        .get_session(&issued.session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.key_name, "renamed",
        "the snapshot of the current key"
    );
}

/// A revoke made by a manager built without sessions (an administration
/// server of a store whose other servers issue sessions) cannot end the
/// sessions in the store, yet they stop working: a session is checked
/// against its key's revocation when it is read from the store.
#[tokio::test]
async fn a_revoke_by_a_manager_without_sessions_still_stops_them() {
    let store = Arc::new(MemoryStore::new());
    let admin_server = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let api_server = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let key = admin_server
        .create(
            &Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    let live = Environment::new("live").unwrap();
    let session = api_server
        .exchange(key.token.expose_secret(), &live, None, None)
        .await
        .unwrap();
    let req = VerifyRequest::new(&live, registry().get("package:push").unwrap());
    let token = session.token.expose_secret();
    assert!(api_server.verify_session(token, &req).await.is_ok());
    admin_server
        .revoke(&Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert!(
        !store
            .get_session(&session.session.id)
            .await
            .unwrap()
            .unwrap()
            .revoked,
        "not ended in the store: the case this guards"
    );
    // The change feed (or the cache TTL) drops the cached session.
    api_server.verifier().invalidate(&key.key.id);
    let d = api_server.verify_session(token, &req).await.unwrap_err();
    assert_eq!(d.reason, DenialReason::Revoked);
    assert_eq!(d.key_id.as_ref(), Some(&key.key.id));
}
