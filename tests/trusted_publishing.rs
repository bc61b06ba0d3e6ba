//! Trusted publishing end to end: tokens signed in the test with RS256 and
//! ES256 keys generated here (no network), exchanged for sessions, and
//! every kind of bad input refused with its own error and nothing issued.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{TimeDelta, TimeZone, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyward::audit::AuditAction;
use keyward::hash::Argon2Hasher;
use keyward::policy::{ManagementDenial, PermissionGrant, ResourceScope};
use keyward::session::SessionConfig;
use keyward::store::MemoryAuditSink;
use keyward::trusted::{
    ClaimName, GITHUB_ACTIONS_ISSUER, GitHubClaims, NewTrustPolicy, TrustConfig, TrustError,
    TrustPolicy, TrustedPublishing,
};
use keyward::*;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

const AUD: &str = "registry.example";

struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn rsa_signer(kid: &'static str) -> Signer {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let der = key.to_pkcs1_der().expect("pkcs1");
    Signer {
        kid,
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        }),
    }
}

fn ec_signer(kid: &'static str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        kid,
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

/// One RSA key per test binary: generating one costs a moment.
fn rsa_key() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| rsa_signer("rsa-1"))
}

impl Signer {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn jwks(keys: &[&Signer]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// The claims of a GitHub Actions token of `octo-org/widgets`'
/// `release.yml`, issued now, living 5 minutes.
fn claims(jti: &str) -> Value {
    let now = start().timestamp();
    json!({
        "iss": GITHUB_ACTIONS_ISSUER,
        "aud": AUD,
        "sub": "repo:octo-org/widgets:environment:release",
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "repository": "octo-org/widgets",
        "repository_owner": "octo-org",
        "repository_owner_id": "1234",
        "repository_id": "98765",
        "job_workflow_ref": "octo-org/widgets/.github/workflows/release.yml@refs/tags/v1.0.0",
        "workflow_ref": "octo-org/widgets/.github/workflows/release.yml@refs/tags/v1.0.0",
        "environment": "release",
        "ref": "refs/tags/v1.0.0",
        "event_name": "push",
    })
}

struct World {
    manager: KeyManager<MemoryStore>,
    trusted: TrustedPublishing,
    clock: ManualClock,
    audit: Arc<MemoryAuditSink>,
    admin: Actor,
    push: Permission,
}

fn registry() -> PermissionRegistry {
    PermissionRegistry::builder()
        .permission("package:push-new")
        .permission_implying("package:push", &["package:push-new"])
        .permission("package:unlist")
        .session_only("package:delete")
        .build()
        .unwrap()
}

async fn world_with(session: SessionConfig) -> World {
    let registry = registry();
    let push = registry.get("package:push").unwrap();
    let clock = ManualClock::new(start());
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::builder(
        MemoryStore::new(),
        TokenFormat::new("mkh", &["live", "test"]).unwrap(),
        Policy::new(registry),
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .clock(clock.clone())
    .audit_shared(audit.clone())
    .sessions(session)
    .build()
    .unwrap();
    let trusted = TrustedPublishing::new(TrustConfig::default()).unwrap();
    let ec = ec_signer("ec-1");
    trusted
        .set_issuer_keys(GITHUB_ACTIONS_ISSUER, &jwks(&[rsa_key(), &ec]))
        .unwrap();
    let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
    let w = World {
        manager,
        trusted,
        clock,
        audit,
        admin,
        push,
    };
    w.manager
        .create_trust_policy(&w.admin, new_policy())
        .await
        .unwrap();
    w
}

async fn world() -> World {
    world_with(SessionConfig::new("mkhs")).await
}

fn new_policy() -> NewTrustPolicy {
    NewTrustPolicy::github(
        "contoso",
        "live",
        "release from GitHub",
        AUD,
        GitHubClaims::new("Octo-Org", "1234", "Widgets", "release.yml").environment("Release"),
    )
    .permissions(PermissionGrant::only(["package:push"]))
    .resources(ResourceScope::only(["widgets*"]))
}

impl World {
    async fn exchange(&self, token: &str) -> Result<trusted::TrustedSession, TrustError> {
        self.trusted.exchange(&self.manager, token, None).await
    }
    fn issued(&self) -> usize {
        self.audit
            .events()
            .iter()
            .filter(|e| e.action == AuditAction::SessionIssued)
            .count()
    }
    /// Refused with `expected`, and nothing issued.
    async fn refused(&self, token: &str, expected: TrustError) {
        let before = self.issued();
        let got = self.exchange(token).await.map(|s| s.policy_id);
        assert_eq!(got, Err(expected));
        assert_eq!(self.issued(), before, "a session was issued");
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_get_a_session_with_the_policy_grant() {
    let w = world().await;
    let ec = ec_signer("ec-2");
    w.trusted
        .set_issuer_keys(GITHUB_ACTIONS_ISSUER, &jwks(&[rsa_key(), &ec]))
        .unwrap();
    for (signer, jti) in [(rsa_key(), "a"), (&ec, "b")] {
        let issued = w.exchange(&signer.sign(&claims(jti))).await.unwrap();
        let view = &issued.session.session;
        assert_eq!(view.owner.as_str(), "contoso");
        assert_eq!(view.key_id, issued.policy_id);
        // Default lifetime: 30 minutes.
        assert_eq!(view.expires_at - view.created_at, TimeDelta::minutes(30));
        assert_eq!(issued.claims.jti, jti);

        let live = Environment::new("live").unwrap();
        let token = issued.session.token.expose_secret();
        // The session token's secret is in no Debug output.
        let secret = &token[token.len() - 49..token.len() - 6];
        assert!(!format!("{issued:?}").contains(secret));
        let ok = VerifyRequest::new(&live, w.push).resource("contoso", "widgets-core");
        let session = w.manager.verify_session(token, &ok).await.unwrap();
        assert_eq!(session.owner().as_str(), "contoso");
        // Never more than the policy: another resource, another permission,
        // a session-only permission, another owner.
        let other = VerifyRequest::new(&live, w.push).resource("contoso", "gadgets");
        assert!(w.manager.verify_session(token, &other).await.is_err());
        let unlist = w
            .manager
            .policy()
            .permissions()
            .get("package:unlist")
            .unwrap();
        let req = VerifyRequest::new(&live, unlist).resource("contoso", "widgets");
        assert!(w.manager.verify_session(token, &req).await.is_err());
        let delete = w
            .manager
            .policy()
            .permissions()
            .get("package:delete")
            .unwrap();
        let req = VerifyRequest::new(&live, delete).resource("contoso", "widgets");
        assert!(w.manager.verify_session(token, &req).await.is_err());
        let req = VerifyRequest::new(&live, w.push).resource("fabrikam", "widgets");
        assert!(w.manager.verify_session(token, &req).await.is_err());
    }
    // Audited with the claims that matched.
    let events: Vec<_> = w
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == AuditAction::SessionIssued)
        .collect();
    assert_eq!(events.len(), 2);
    assert!(events[0].detail.contains("repository=octo-org/widgets"));
    assert!(events[0].detail.contains("environment=release"));
    assert!(events[0].detail.contains("jti=a"));
}

#[tokio::test]
async fn session_lifetime_is_bounded_by_the_session_configuration() {
    let w = world_with(SessionConfig {
        max_ttl: Duration::from_secs(600),
        default_ttl: Duration::from_secs(300),
        ..SessionConfig::new("mkhs")
    })
    .await;
    let issued = w.exchange(&rsa_key().sign(&claims("t"))).await.unwrap();
    let view = &issued.session.session;
    assert_eq!(view.expires_at - view.created_at, TimeDelta::minutes(10));
}

#[tokio::test]
async fn a_wrong_signature_or_an_unknown_kid_is_refused() {
    let w = world().await;
    // Same kid, another key: the signature does not verify.
    let impostor = ec_signer("ec-1");
    w.refused(&impostor.sign(&claims("x")), TrustError::BadSignature)
        .await;
    // A payload changed after signing.
    let good = rsa_key().sign(&claims("y"));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = claims("y");
    forged["repository_owner_id"] = json!("1234");
    forged["environment"] = json!("release");
    forged["ref"] = json!("refs/heads/evil");
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    w.refused(&parts.join("."), TrustError::BadSignature).await;
    let stranger = ec_signer("nobody");
    w.refused(
        &stranger.sign(&claims("z")),
        TrustError::UnknownKeyId("nobody".into()),
    )
    .await;
    // The RSA key's kid with an ES256 header: not that key's algorithm.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(&header, &claims("w"), &impostor.key).unwrap();
    w.refused(&token, TrustError::UnknownKeyId("rsa-1".into()))
        .await;
    // No kid at all.
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims("v"), &impostor.key).unwrap();
    w.refused(&token, TrustError::MissingKeyId).await;
    // An issuer with no keys configured.
    let mut c = claims("u");
    c["iss"] = json!("https://gitlab.example");
    w.refused(&rsa_key().sign(&c), TrustError::UnknownIssuer)
        .await;
}

#[tokio::test]
async fn times_are_checked_with_a_bounded_leeway() {
    let w = world().await;
    let token = rsa_key().sign(&claims("t1"));
    // Expired 10 s ago: within the 30 s leeway.
    w.clock.advance(TimeDelta::seconds(310));
    assert!(w.exchange(&token).await.is_ok());
    let token = rsa_key().sign(&claims("t2"));
    w.clock.advance(TimeDelta::seconds(30));
    w.refused(&token, TrustError::Expired).await;

    let w = world().await;
    let mut c = claims("t3");
    c["nbf"] = json!(start().timestamp() + 120);
    w.refused(&rsa_key().sign(&c), TrustError::NotYetValid)
        .await;
    let mut c = claims("t4");
    c["iat"] = json!(start().timestamp() + 120);
    w.refused(&rsa_key().sign(&c), TrustError::IssuedInFuture)
        .await;
    let mut c = claims("t5");
    c["exp"] = json!(start().timestamp() + 2 * 3600);
    w.refused(
        &rsa_key().sign(&c),
        TrustError::LifetimeTooLong {
            max: TrustedPublishing::MAX_TOKEN_LIFETIME,
        },
    )
    .await;
    for missing in ["exp", "iat", "jti", "aud"] {
        let mut c = claims("t6");
        c.as_object_mut().unwrap().remove(missing);
        w.refused(&rsa_key().sign(&c), TrustError::MissingClaim(missing))
            .await;
    }
    let mut c = claims("t6");
    c["jti"] = json!(" ");
    w.refused(&rsa_key().sign(&c), TrustError::MissingClaim("jti"))
        .await;
    let mut c = claims("t7");
    c["exp"] = json!("tomorrow");
    w.refused(
        &rsa_key().sign(&c),
        TrustError::Malformed("a claim has the wrong type"),
    )
    .await;
    assert!(matches!(
        TrustedPublishing::new(TrustConfig {
            leeway: Duration::from_secs(61),
            ..TrustConfig::default()
        }),
        Err(TrustError::LeewayTooLong(_))
    ));
}

#[tokio::test]
async fn audience_and_claims_must_match() {
    let w = world().await;
    let mut c = claims("a1");
    c["aud"] = json!("other.example");
    w.refused(&rsa_key().sign(&c), TrustError::WrongAudience)
        .await;
    // An audience list naming ours is accepted.
    let mut c = claims("a2");
    c["aud"] = json!(["other.example", AUD]);
    assert!(w.exchange(&rsa_key().sign(&c)).await.is_ok());

    let cases: [(&str, Value, ClaimName); 6] = [
        (
            "repository",
            json!("octo-org/gadgets"),
            ClaimName::Repository,
        ),
        (
            "repository_owner",
            json!("evil-org"),
            ClaimName::RepositoryOwner,
        ),
        (
            "workflow_ref",
            json!("octo-org/widgets/.github/workflows/ci.yml@refs/heads/main"),
            ClaimName::WorkflowRef,
        ),
        (
            "workflow_ref",
            json!("evil-org/shared/.github/workflows/release.yml@refs/heads/main"),
            ClaimName::WorkflowRef,
        ),
        ("environment", json!("staging"), ClaimName::Environment),
        ("environment", Value::Null, ClaimName::Environment),
    ];
    for (i, (name, value, claim)) in cases.into_iter().enumerate() {
        let mut c = claims(&format!("m{i}"));
        c[name] = value;
        w.refused(&rsa_key().sign(&c), TrustError::ClaimMismatch { claim })
            .await;
    }
    // Names without case, as GitHub compares them.
    let mut c = claims("a3");
    c["repository"] = json!("OCTO-ORG/WIDGETS");
    c["environment"] = json!("RELEASE");
    assert!(w.exchange(&rsa_key().sign(&c)).await.is_ok());
    // Another owner id (a re-registered account name): no policy at all.
    let mut c = claims("a4");
    c["repository_owner_id"] = json!("99999");
    w.refused(&rsa_key().sign(&c), TrustError::NoPolicy).await;
    let mut c = claims("a5");
    c.as_object_mut().unwrap().remove("repository_owner_id");
    w.refused(
        &rsa_key().sign(&c),
        TrustError::MissingClaim("repository_owner_id"),
    )
    .await;
}

#[tokio::test]
async fn a_token_is_used_once() {
    let w = world().await;
    let token = rsa_key().sign(&claims("once"));
    assert!(w.exchange(&token).await.is_ok());
    w.refused(&token, TrustError::Replayed).await;
    // Another token with the same jti: also a replay.
    let ec = ec_signer("ec-1");
    w.trusted
        .set_issuer_keys(GITHUB_ACTIONS_ISSUER, &jwks(&[rsa_key(), &ec]))
        .unwrap();
    w.refused(&ec.sign(&claims("once")), TrustError::Replayed)
        .await;
    // Purging keeps the jti until it expires.
    assert_eq!(w.trusted.purge_expired_jtis(&w.manager).await.unwrap(), 0);
    w.clock.advance(TimeDelta::seconds(400));
    assert_eq!(w.trusted.purge_expired_jtis(&w.manager).await.unwrap(), 1);
}

#[tokio::test]
async fn hostile_tokens_get_typed_errors() {
    let w = world().await;
    let huge = "a".repeat(1024 * 1024);
    w.refused(
        &huge,
        TrustError::TokenTooLarge {
            len: 1024 * 1024,
            max: TrustedPublishing::MAX_TOKEN_BYTES,
        },
    )
    .await;
    // alg none, unsigned.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("n").to_string());
    w.refused(
        &format!("{header}.{body}."),
        TrustError::DisallowedAlgorithm("none".into()),
    )
    .await;
    // HS256 with the RSA public key (its modulus) as the HMAC secret.
    let n = rsa_key().jwk["n"].as_str().unwrap().to_owned();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let token =
        jsonwebtoken::encode(&h, &claims("h"), &EncodingKey::from_secret(n.as_bytes())).unwrap();
    w.refused(&token, TrustError::DisallowedAlgorithm("HS256".into()))
        .await;
    // A header's control characters never reach the error.
    let header = URL_SAFE_NO_PAD.encode("{\"alg\":\"x\\u001b[31m\",\"kid\":\"k\"}");
    let got = w
        .exchange(&format!("{header}.{body}."))
        .await
        .map(|s| s.policy_id);
    assert_eq!(got, Err(TrustError::DisallowedAlgorithm("x?[31m".into())));
    for junk in ["", "a.b", "a.b.c.d", "!!!.???.###", "e30.e30.e30"] {
        let got = w.exchange(junk).await.map(|s| s.policy_id);
        assert!(
            matches!(
                got,
                Err(TrustError::Malformed(_) | TrustError::MissingClaim(_))
            ),
            "{junk:?}: {got:?}"
        );
    }
    assert_eq!(w.issued(), 0);
}

#[tokio::test]
async fn policies_are_managed_like_keys() {
    let w = world().await;
    let contoso = OwnerId::new("contoso").unwrap();
    let listed = w
        .manager
        .list_trust_policies(&w.admin, &contoso)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    // Administrator-only by default.
    let bob = Actor::manager("bob", contoso.clone(), true);
    assert!(matches!(
        w.manager.create_trust_policy(&bob, new_policy()).await,
        Err(KeywardError::NotAllowed {
            denial: ManagementDenial::AdministratorOnly,
            ..
        })
    ));
    assert!(matches!(
        w.manager.delete_trust_policy(&bob, &listed[0].id).await,
        Err(KeywardError::NotAllowed { .. })
    ));
    let mallory = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    assert!(matches!(
        w.manager.create_trust_policy(&mallory, new_policy()).await,
        Err(KeywardError::NotAllowed {
            denial: ManagementDenial::OtherOwner,
            ..
        })
    ));
    // Never session-only, never unknown, never empty.
    for grant in [
        PermissionGrant::only(["package:delete"]),
        PermissionGrant::only(["package:nope"]),
        PermissionGrant::only(Vec::<String>::new()),
    ] {
        let got = w
            .manager
            .create_trust_policy(&w.admin, new_policy().permissions(grant))
            .await;
        assert!(matches!(got, Err(KeywardError::Policy(_))), "{got:?}");
    }
    // Invalid claims, issuer, audience.
    let bad = [
        GitHubClaims::new("octo org", "1234", "widgets", "release.yml"),
        GitHubClaims::new("octo-org", "12a4", "widgets", "release.yml"),
        GitHubClaims::new("octo-org", "1234", "wid/gets", "release.yml"),
        GitHubClaims::new("octo-org", "1234", "widgets", "release.sh"),
        GitHubClaims::new("octo-org", "1234", "widgets", "../release.yml"),
        GitHubClaims::new("octo-org", "1234", "widgets", "release.yml").git_ref("main"),
    ];
    for claims in bad {
        let mut new = new_policy();
        new.claims = trusted::TrustClaims::GitHub(claims);
        let got = w.manager.create_trust_policy(&w.admin, new).await;
        assert!(matches!(got, Err(KeywardError::Policy(_))), "{got:?}");
    }
    let got = w
        .manager
        .create_trust_policy(&w.admin, new_policy().issuer("http://insecure.example"))
        .await;
    assert!(matches!(got, Err(KeywardError::Policy(_))));
    let mut new = new_policy();
    new.audience = String::new();
    assert!(matches!(
        w.manager.create_trust_policy(&w.admin, new).await,
        Err(KeywardError::Policy(_))
    ));
    let mut new = new_policy();
    new.environment = "prod".into();
    assert!(matches!(
        w.manager.create_trust_policy(&w.admin, new).await,
        Err(KeywardError::UnknownEnvironment(_))
    ));
    // Nothing was stored by the refusals.
    assert_eq!(
        w.manager
            .list_trust_policies(&w.admin, &contoso)
            .await
            .unwrap()
            .len(),
        1
    );
    // Bounded per owner.
    for _ in 1..TrustPolicy::MAX_PER_OWNER {
        w.manager
            .create_trust_policy(&w.admin, new_policy())
            .await
            .unwrap();
    }
    assert_eq!(
        w.manager.create_trust_policy(&w.admin, new_policy()).await,
        Err(KeywardError::QuotaExceeded {
            limit: TrustPolicy::MAX_PER_OWNER
        })
    );
    let audit = w.audit.events();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == AuditAction::TrustPolicyCreated)
            .count(),
        TrustPolicy::MAX_PER_OWNER as usize
    );
}

#[tokio::test]
async fn deleting_a_policy_ends_its_sessions() {
    let w = world().await;
    let contoso = OwnerId::new("contoso").unwrap();
    let issued = w.exchange(&rsa_key().sign(&claims("d1"))).await.unwrap();
    let live = Environment::new("live").unwrap();
    let token = issued.session.token.expose_secret();
    let req = VerifyRequest::new(&live, w.push).resource("contoso", "widgets");
    assert!(w.manager.verify_session(token, &req).await.is_ok());
    w.manager
        .delete_trust_policy(&w.admin, &issued.policy_id)
        .await
        .unwrap();
    assert_eq!(
        w.manager
            .verify_session(token, &req)
            .await
            .unwrap_err()
            .reason,
        DenialReason::Revoked
    );
    assert!(
        w.manager
            .list_trust_policies(&w.admin, &contoso)
            .await
            .unwrap()
            .is_empty()
    );
    w.refused(&rsa_key().sign(&claims("d2")), TrustError::NoPolicy)
        .await;
    assert_eq!(
        w.manager
            .delete_trust_policy(&w.admin, &issued.policy_id)
            .await,
        Err(KeywardError::NotFound(issued.policy_id.clone()))
    );
}

#[test]
fn key_sets_are_checked() {
    let trusted = TrustedPublishing::new(TrustConfig::default()).unwrap();
    for bad in [
        "not json",
        r#"{"keys":[]}"#,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    ] {
        assert!(matches!(
            trusted.set_issuer_keys(GITHUB_ACTIONS_ISSUER, bad),
            Err(TrustError::BadKeySet(_))
        ));
    }
    // A key without a kid is not usable.
    let mut jwk = ec_signer("x").jwk;
    jwk.as_object_mut().unwrap().remove("kid");
    assert!(matches!(
        trusted.set_issuer_keys(GITHUB_ACTIONS_ISSUER, &json!({ "keys": [jwk] }).to_string()),
        Err(TrustError::BadKeySet(_))
    ));
    let ok = jwks(&[&ec_signer("y")]);
    assert!(
        trusted
            .set_issuer_keys("http://plain.example", &ok)
            .is_err()
    );
    assert!(trusted.set_issuer_keys(GITHUB_ACTIONS_ISSUER, &ok).is_ok());
}

/// Two servers (managers) sharing one SQLite database: the policy one
/// registers is used by the other, and a token exchanged on one is a
/// replay on the other.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_replay_is_refused_across_servers_sharing_a_store() {
    let store = SqliteStore::in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let server = |store: SqliteStore| {
        KeyManager::builder(
            store,
            TokenFormat::new("mkh", &["live"]).unwrap(),
            Policy::new(registry()),
        )
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(ManualClock::new(start()))
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap()
    };
    let (one, two) = (server(store.clone()), server(store));
    let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
    let policy = one.create_trust_policy(&admin, new_policy()).await.unwrap();
    let trusted = TrustedPublishing::new(TrustConfig::default()).unwrap();
    trusted
        .set_issuer_keys(GITHUB_ACTIONS_ISSUER, &jwks(&[rsa_key()]))
        .unwrap();
    let token = rsa_key().sign(&claims("shared"));
    let issued = trusted.exchange(&two, &token, None).await.unwrap();
    assert_eq!(issued.policy_id, policy.id);
    let again = trusted
        .exchange(&one, &token, None)
        .await
        .map(|s| s.policy_id);
    assert_eq!(again, Err(TrustError::Replayed));
    // The session issued by one server is checked by the other.
    let live = Environment::new("live").unwrap();
    let push = one.policy().permissions().get("package:push").unwrap();
    let req = VerifyRequest::new(&live, push).resource("contoso", "widgets");
    assert!(
        one.verify_session(issued.session.token.expose_secret(), &req)
            .await
            .is_ok()
    );
}

/// A fetcher handing out whatever key set the test put in, counting calls.
struct Fetcher {
    jwks: Arc<std::sync::Mutex<Result<String, String>>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl trusted::JwksFetcher for Fetcher {
    fn fetch<'a>(
        &'a self,
        issuer: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
    {
        assert_eq!(
            issuer, GITHUB_ACTIONS_ISSUER,
            "only named issuers are fetched"
        );
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let jwks = self.jwks.lock().unwrap().clone();
        Box::pin(async move { jwks })
    }
}

#[tokio::test]
async fn key_sets_are_fetched_once_and_again_on_rotation() {
    let mut w = world().await;
    let first = ec_signer("first");
    let jwks = Arc::new(std::sync::Mutex::new(Ok(jwks(&[&first]))));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fetcher = |min_refresh| {
        TrustedPublishing::new(TrustConfig::default())
            .unwrap()
            .with_fetcher(
                Fetcher {
                    jwks: Arc::clone(&jwks),
                    calls: Arc::clone(&calls),
                },
                &[GITHUB_ACTIONS_ISSUER],
                min_refresh,
            )
            .unwrap()
    };
    let count = || calls.load(std::sync::atomic::Ordering::SeqCst);
    w.trusted = fetcher(Duration::ZERO);
    assert!(w.exchange(&first.sign(&claims("f1"))).await.is_ok());
    assert!(w.exchange(&first.sign(&claims("f2"))).await.is_ok());
    assert_eq!(count(), 1, "a cached key set is not fetched again");
    // Another issuer is never fetched.
    let mut c = claims("f3");
    c["iss"] = json!("https://gitlab.example");
    w.refused(&first.sign(&c), TrustError::UnknownIssuer).await;
    assert_eq!(count(), 1);
    // The issuer rotates: a new kid makes it fetch again.
    let second = ec_signer("second");
    *jwks.lock().unwrap() = Ok(self::jwks(&[&first, &second]));
    assert!(w.exchange(&second.sign(&claims("f4"))).await.is_ok());
    assert_eq!(count(), 2);
    // A failing fetch keeps the cached keys.
    *jwks.lock().unwrap() = Err("503".into());
    w.refused(
        &ec_signer("nope").sign(&claims("f5")),
        TrustError::UnknownKeyId("nope".into()),
    )
    .await;
    assert!(w.exchange(&first.sign(&claims("f6"))).await.is_ok());

    // With a refresh interval, made-up kids cost one fetch per interval.
    w.trusted = fetcher(Duration::from_secs(3600));
    *jwks.lock().unwrap() = Ok(self::jwks(&[&first]));
    let before = count();
    for i in 0..5 {
        w.refused(
            &ec_signer("made-up").sign(&claims(&format!("r{i}"))),
            TrustError::UnknownKeyId("made-up".into()),
        )
        .await;
    }
    assert_eq!(count(), before + 1);
    // And a failing first fetch is a typed error.
    *jwks.lock().unwrap() = Err("connection refused".into());
    w.trusted = fetcher(Duration::ZERO);
    let got = w
        .exchange(&first.sign(&claims("r9")))
        .await
        .map(|s| s.policy_id);
    assert!(matches!(got, Err(TrustError::BadKeySet(_))), "{got:?}");
}

/// Anyone may register a policy naming any repository: another owner's
/// policy for the same workflow makes a plain exchange ambiguous (nothing
/// issued), and naming the owner picks its policy only.
#[tokio::test]
async fn the_most_specific_policy_of_an_owner_wins_and_sub_is_checked() {
    let w = world().await;
    // A second, general policy of the same owner with a wider grant: the
    // policy pinned to the environment is used for a token from it.
    let mut general = new_policy().permissions(PermissionGrant::only(["package:unlist"]));
    general.claims = trusted::TrustClaims::GitHub(GitHubClaims::new(
        "Octo-Org",
        "1234",
        "Widgets",
        "release.yml",
    ));
    let general = w
        .manager
        .create_trust_policy(&w.admin, general)
        .await
        .unwrap();
    let issued = w.exchange(&rsa_key().sign(&claims("s1"))).await.unwrap();
    assert_ne!(issued.policy_id, general.id);
    // Outside the environment, only the general policy matches.
    let mut c = claims("s2");
    c.as_object_mut().unwrap().remove("environment");
    let issued = w.exchange(&rsa_key().sign(&c)).await.unwrap();
    assert_eq!(issued.policy_id, general.id);
    // A subject naming another repository is refused.
    let mut c = claims("s3");
    c["sub"] = json!("repo:octo-org/other:environment:release");
    w.refused(
        &rsa_key().sign(&c),
        TrustError::ClaimMismatch {
            claim: ClaimName::Subject,
        },
    )
    .await;
}

#[tokio::test]
async fn policies_of_two_owners_for_one_repository() {
    let w = world().await;
    let mallory = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    let mut theirs = new_policy();
    theirs.owner = "fabrikam".into();
    w.manager
        .create_trust_policy(&mallory, theirs)
        .await
        .unwrap();
    w.refused(&rsa_key().sign(&claims("o1")), TrustError::AmbiguousOwner)
        .await;
    let contoso = OwnerId::new("contoso").unwrap();
    let issued = w
        .trusted
        .exchange_for(&w.manager, &rsa_key().sign(&claims("o2")), &contoso, None)
        .await
        .unwrap();
    assert_eq!(issued.session.session.owner, contoso);
    let nobody = OwnerId::new("northwind").unwrap();
    let got = w
        .trusted
        .exchange_for(&w.manager, &rsa_key().sign(&claims("o3")), &nobody, None)
        .await
        .map(|s| s.policy_id);
    assert_eq!(got, Err(TrustError::NoPolicy));
}

/// `count` policies of each of `owners` new owners for the repository
/// owner id of `claims` (their administrators are `mallory`).
async fn squatters(w: &World, owners: usize, count: usize, claims: GitHubClaims) {
    for n in 0..owners {
        let owner = format!("squatter{n}");
        let mallory = Actor::administrator("mallory", OwnerId::new(&owner).unwrap());
        for _ in 0..count {
            let mut theirs = NewTrustPolicy::github(&owner, "live", "squat", AUD, claims.clone())
                .permissions(PermissionGrant::only(["package:push"]));
            theirs.owner = owner.clone();
            w.manager
                .create_trust_policy(&mallory, theirs)
                .await
                .unwrap();
        }
    }
}

/// Other owners' policies naming the same repository owner id, with ids
/// that sort before the owner's own, fill the page of candidates
/// (`MAX_CANDIDATES`, by id): `exchange_for` still finds the owner's
/// policy. (Until 2026-12-03 it filtered that page: `NoPolicy`.)
#[tokio::test]
async fn squatters_cannot_push_an_owners_policy_out_of_exchange_for() {
    use keyward::store::TrustStore;
    let w = world().await;
    let contoso = OwnerId::new("contoso").unwrap();
    // The owner's policy, with an id in the upper part of the order, so
    // that squatters find ids below it in a few hundred tries.
    let victim = loop {
        let ours = w
            .manager
            .store()
            .list_trust_policies(&contoso)
            .await
            .unwrap();
        let policy = ours.into_iter().next().unwrap();
        if policy
            .id
            .as_str()
            .starts_with(|c: char| c.is_ascii_lowercase())
        {
            break policy;
        }
        w.manager
            .delete_trust_policy(&w.admin, &policy.id)
            .await
            .unwrap();
        w.manager
            .create_trust_policy(&w.admin, new_policy())
            .await
            .unwrap();
    };
    let matching = GitHubClaims::new("Octo-Org", "1234", "Widgets", "release.yml");
    let mut kept = 0;
    'owners: for n in 0..13 {
        let owner = format!("squatter{n}");
        let mallory = Actor::administrator("mallory", OwnerId::new(&owner).unwrap());
        let mut mine = 0;
        for _ in 0..10_000 {
            let mut theirs = NewTrustPolicy::github(&owner, "live", "squat", AUD, matching.clone())
                .permissions(PermissionGrant::only(["package:push"]));
            theirs.owner = owner.clone();
            let p = w
                .manager
                .create_trust_policy(&mallory, theirs)
                .await
                .unwrap();
            if p.id < victim.id {
                (mine, kept) = (mine + 1, kept + 1);
                if kept == TrustPolicy::MAX_CANDIDATES {
                    break 'owners;
                }
                if mine == 20 {
                    continue 'owners;
                }
            } else {
                w.manager
                    .delete_trust_policy(&mallory, &p.id)
                    .await
                    .unwrap();
            }
        }
        panic!("no squatter id sorted before {}", victim.id.as_str());
    }
    let page = w
        .manager
        .store()
        .find_trust_policies(GITHUB_ACTIONS_ISSUER, "1234")
        .await
        .unwrap();
    assert!(
        page.iter().all(|p| p.owner != contoso),
        "the owner's policy is out of the page"
    );
    let issued = w
        .trusted
        .exchange_for(&w.manager, &rsa_key().sign(&claims("s1")), &contoso, None)
        .await
        .expect("the owner's own policy is found");
    assert_eq!(issued.policy_id, victim.id);
    // Without naming the owner: matching policies of many owners.
    w.refused(&rsa_key().sign(&claims("s2")), TrustError::AmbiguousOwner)
        .await;
}

/// More owners name a repository owner id than a page of candidates
/// holds, with policies that do not match the token: `exchange` cannot
/// tell whether a policy beyond the page matches too, and refuses.
#[tokio::test]
async fn a_full_page_of_candidates_is_ambiguous_without_an_owner() {
    let w = world().await;
    let other_repository = GitHubClaims::new("Octo-Org", "1234", "Gadgets", "release.yml");
    squatters(&w, 13, 20, other_repository).await;
    w.refused(&rsa_key().sign(&claims("p1")), TrustError::AmbiguousOwner)
        .await;
    let contoso = OwnerId::new("contoso").unwrap();
    let issued = w
        .trusted
        .exchange_for(&w.manager, &rsa_key().sign(&claims("p2")), &contoso, None)
        .await;
    assert!(issued.is_ok(), "{:?}", issued.err());
}
