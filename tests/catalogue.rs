//! Bad input to the manager: each case gets its exact typed error and leaves the store unchanged.

mod common;

use common::*;
use std::time::Duration;

use keyward::*;
use keyward::{
    hash::Argon2Hasher, ids::InvalidValue, policy::EditPolicy, policy::ExpiryChoice,
    policy::ExpiryPolicy, policy::IpAllowlist, policy::PermissionGrant, policy::PolicyError,
    policy::ResourceRule, policy::ResourceScope, session::IssuedSession, session::SessionConfig,
    token::TokenError, verify::DenialKind, verify::SessionError, verify::VerifierConfig,
};

fn base() -> NewKey {
    NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"]))
}

#[tokio::test]
async fn create_catalogue() {
    let f = fixture();
    f.push_key().await; // something to keep unchanged
    let before = snapshot(f.manager.store(), OWNER).await;
    let long_name = "n".repeat(keyward::key::KeyRecord::MAX_NAME_LEN + 1);
    let cases: Vec<(&str, NewKey, KeywardError)> = vec![
        (
            "empty owner",
            NewKey {
                owner: String::new(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::Empty { field: "owner" }).into(),
        ),
        (
            "owner with control character",
            NewKey {
                owner: "con\ntoso".into(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::BadCharacter {
                field: "owner",
                ch: '\n',
                allowed: "printable characters",
            })
            .into(),
        ),
        (
            "unknown environment",
            NewKey {
                environment: "prod".into(),
                ..base()
            },
            KeywardError::UnknownEnvironment("prod".into()),
        ),
        (
            "blank name",
            NewKey {
                name: "   ".into(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::Empty { field: "name" }).into(),
        ),
        (
            "name too long",
            NewKey {
                name: long_name,
                ..base()
            },
            PolicyError::Invalid(InvalidValue::TooLong {
                field: "name",
                len: keyward::key::KeyRecord::MAX_NAME_LEN + 1,
                max: keyward::key::KeyRecord::MAX_NAME_LEN,
            })
            .into(),
        ),
        (
            "no permissions",
            base().permissions(PermissionGrant::Only(Default::default())),
            PolicyError::NoPermissions.into(),
        ),
        (
            "unknown permission",
            base().permissions(PermissionGrant::only(["package:push", "admin"])),
            PolicyError::UnknownPermission {
                name: "admin".into(),
            }
            .into(),
        ),
        (
            "session-only permission",
            base().permissions(PermissionGrant::only(["package:delete"])),
            PolicyError::SessionOnlyPermission {
                name: "package:delete".into(),
            }
            .into(),
        ),
        (
            "empty pattern",
            base().resources(ResourceScope::only(["Contoso.*", ""])),
            PolicyError::EmptyPattern { index: 1 }.into(),
        ),
        (
            "pattern with a slash",
            base().resources(ResourceScope::only(["../*"])),
            PolicyError::PatternBadCharacter {
                pattern: "../*".into(),
                ch: '/',
            }
            .into(),
        ),
        (
            "empty selection",
            base().resources(ResourceScope::Only(vec![])),
            PolicyError::EmptySelection.into(),
        ),
        (
            "bad CIDR",
            base().ip_allowlist(["10.0.0.0/8", "10.0.0.0/40"]),
            PolicyError::InvalidCidr {
                input: "10.0.0.0/40".into(),
            }
            .into(),
        ),
        (
            "not an address",
            base().ip_allowlist(["localhost"]),
            PolicyError::InvalidCidr {
                input: "localhost".into(),
            }
            .into(),
        ),
        (
            "expiry not offered",
            base().expiry(ExpiryChoice::Days(30)),
            PolicyError::ExpiryNotAllowed {
                days: 30,
                allowed: "1 day, 90 days, 365 days, never".into(),
            }
            .into(),
        ),
        (
            "zero days",
            base().expiry(ExpiryChoice::Days(0)),
            PolicyError::ExpiryNotAllowed {
                days: 0,
                allowed: "1 day, 90 days, 365 days, never".into(),
            }
            .into(),
        ),
    ];
    for (name, new, expected) in cases {
        let err = f
            .manager
            .create(&keyward::Actor::system("tests"), new)
            .await
            .unwrap_err();
        assert_eq!(err, expected, "case {name}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
    assert_eq!(
        f.counters.hashes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no hashing for refused input"
    );
}

#[tokio::test]
async fn never_is_refused_where_the_policy_forbids_it() {
    let f = fixture_with(
        std::sync::Arc::new(MemoryStore::new()),
        Policy::new(registry()),
        VerifierConfig::default(),
    );
    let err = f
        .manager
        .create(
            &keyward::Actor::system("tests"),
            base().expiry(ExpiryChoice::Never),
        )
        .await
        .unwrap_err();
    assert_eq!(err, KeywardError::Policy(PolicyError::NeverNotAllowed));
    assert!(snapshot(f.manager.store(), OWNER).await.is_empty());
}

#[tokio::test]
async fn edit_catalogue() {
    let f = fixture_with(
        std::sync::Arc::new(MemoryStore::new()),
        policy().with_edits(EditPolicy::permissive()),
        VerifierConfig::default(),
    );
    let created = f.push_key().await;
    let id = created.key.id.clone();
    let before = snapshot(f.manager.store(), OWNER).await;
    let cases: Vec<(&str, KeyEdit, KeywardError)> = vec![
        (
            "blank name",
            KeyEdit {
                name: Some(String::new()),
                ..KeyEdit::default()
            },
            PolicyError::Invalid(InvalidValue::Empty { field: "name" }).into(),
        ),
        (
            "unknown permission",
            KeyEdit {
                permissions: Some(PermissionGrant::only(["nope"])),
                ..KeyEdit::default()
            },
            PolicyError::UnknownPermission {
                name: "nope".into(),
            }
            .into(),
        ),
        (
            "invalid pattern",
            KeyEdit {
                resources: Some(ResourceScope::only(["a b"])),
                ..KeyEdit::default()
            },
            PolicyError::PatternBadCharacter {
                pattern: "a b".into(),
                ch: ' ',
            }
            .into(),
        ),
        (
            "bad CIDR",
            KeyEdit {
                ip_allowlist: Some(vec!["::1/200".into()]),
                ..KeyEdit::default()
            },
            PolicyError::InvalidCidr {
                input: "::1/200".into(),
            }
            .into(),
        ),
        (
            "expiry not offered",
            KeyEdit {
                expiry: Some(ExpiryChoice::Days(2)),
                ..KeyEdit::default()
            },
            PolicyError::ExpiryNotAllowed {
                days: 2,
                allowed: "1 day, 90 days, 365 days, never".into(),
            }
            .into(),
        ),
        (
            // A valid name with an invalid pattern: nothing of the edit is applied.
            "half-valid edit",
            KeyEdit {
                name: Some("renamed".into()),
                resources: Some(ResourceScope::only([""])),
                ..KeyEdit::default()
            },
            PolicyError::EmptyPattern { index: 0 }.into(),
        ),
    ];
    for (name, edit, expected) in cases {
        assert_eq!(
            f.manager
                .edit(&keyward::Actor::system("tests"), &id, edit)
                .await
                .unwrap_err(),
            expected,
            "case {name}"
        );
    }
    let missing = KeyId::generate();
    assert_eq!(
        f.manager
            .edit(
                &keyward::Actor::system("tests"),
                &missing,
                KeyEdit::default()
            )
            .await
            .unwrap_err(),
        KeywardError::NotFound(missing.clone())
    );
    assert_eq!(
        f.manager
            .revoke(&keyward::Actor::system("tests"), &missing)
            .await
            .unwrap_err(),
        KeywardError::NotFound(missing.clone())
    );
    assert_eq!(
        f.manager
            .regenerate(&keyward::Actor::system("tests"), &missing)
            .await
            .unwrap_err(),
        KeywardError::NotFound(missing)
    );
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
}

/// Compares each case's result with its expected error, naming the case.
#[track_caller]
fn expect_err<T: std::fmt::Debug, E: PartialEq + std::fmt::Debug>(
    case: &str,
    got: Result<T, E>,
    expected: E,
) {
    match got {
        Ok(v) => panic!("case {case:?}: expected {expected:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(e, expected, "case {case:?}"),
    }
}

/// A token with one character replaced.
fn with_char(token: &str, index: usize, c: char) -> String {
    let mut s: Vec<char> = token.chars().collect();
    s[index] = c;
    s.into_iter().collect()
}

/// Bad tokens, each refused with its exact denial reason before anything is
/// granted; the store is unchanged and no argon2 runs for malformed ones.
#[tokio::test]
async fn token_catalogue() {
    let f = fixture();
    let key = f.push_key().await;
    let t = key.token.expose_secret().to_owned();
    let before = snapshot(f.manager.store(), OWNER).await;
    let max = f.manager.format().max_len();
    let last = t.len() - 1;
    let flipped_last = with_char(&t, last, if t.ends_with('A') { 'B' } else { 'A' });
    let other_id = format().generate(&f.live, &KeyId::generate());
    let wrong_secret = format()
        .from_pair(
            &f.live,
            key.key.id.as_str(),
            &"s".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    let test_key = format().generate(&f.test, &key.key.id);
    let malformed = |e| DenialReason::Malformed(e);
    let cases: Vec<(&str, String, DenialReason)> = vec![
        ("empty token", String::new(), malformed(TokenError::Empty)),
        (
            "one byte over the maximum",
            "a".repeat(max + 1),
            malformed(TokenError::TooLong { len: max + 1, max }),
        ),
        (
            "10 KB token",
            "a".repeat(10_000),
            malformed(TokenError::TooLong { len: 10_000, max }),
        ),
        (
            "space inside",
            with_char(&t, 20, ' '),
            malformed(TokenError::BadCharacter { position: 20 }),
        ),
        (
            "non-ASCII character",
            format!("é{}", &t[2..]),
            malformed(TokenError::BadCharacter { position: 0 }),
        ),
        (
            "hyphen instead of underscore",
            t.replacen('_', "-", 1),
            malformed(TokenError::BadCharacter { position: 3 }),
        ),
        (
            "other prefix",
            t.replacen("mkh_", "gho_", 1),
            malformed(TokenError::BadPrefix),
        ),
        (
            "upper-case prefix",
            t.replacen("mkh_", "MKH_", 1),
            malformed(TokenError::BadPrefix),
        ),
        (
            "unknown environment",
            t.replacen("_live_", "_prod_", 1),
            malformed(TokenError::UnknownEnvironment),
        ),
        (
            "body one character short",
            t[..last].to_owned(),
            malformed(TokenError::BadLength {
                expected: keyward::TokenFormat::BODY_LEN,
                found: keyward::TokenFormat::BODY_LEN - 1,
            }),
        ),
        (
            "last checksum character changed",
            flipped_last,
            malformed(TokenError::BadChecksum),
        ),
        (
            "valid token for the test environment",
            test_key.expose_secret().to_owned(),
            DenialReason::WrongEnvironment,
        ),
        (
            "well-formed token of an unknown key",
            other_id.expose_secret().to_owned(),
            DenialReason::UnknownKey,
        ),
        (
            "right id, wrong secret",
            wrong_secret.expose_secret().to_owned(),
            DenialReason::WrongSecret,
        ),
    ];
    for (name, token, expected) in cases {
        let denial = f.manager.verify(&token, &f.req()).await.unwrap_err();
        assert_eq!(denial.reason, expected, "case {name:?}");
        assert_eq!(denial.kind(), DenialKind::Authentication, "case {name:?}");
    }
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
    assert_eq!(f.hash_verifies(), 1, "only the wrong secret reached argon2");
}

/// The parts of a Basic `key_id:secret` pair, checked by `from_pair`.
#[test]
fn key_pair_catalogue() {
    let format = format();
    let live = Environment::new("live").unwrap();
    let id = "a".repeat(keyward::TokenFormat::KEY_ID_LEN);
    let secret = "b".repeat(keyward::TokenFormat::SECRET_LEN);
    let cases: Vec<(&str, &str, String, String, TokenError)> = vec![
        (
            "empty id",
            "live",
            String::new(),
            secret.clone(),
            TokenError::Empty,
        ),
        (
            "empty secret",
            "live",
            id.clone(),
            String::new(),
            TokenError::Empty,
        ),
        (
            "short id",
            "live",
            "abc".into(),
            secret.clone(),
            TokenError::BadLength {
                expected: keyward::TokenFormat::KEY_ID_LEN,
                found: 3,
            },
        ),
        (
            "long secret",
            "live",
            id.clone(),
            format!("{secret}b"),
            TokenError::BadLength {
                expected: keyward::TokenFormat::SECRET_LEN,
                found: keyward::TokenFormat::SECRET_LEN + 1,
            },
        ),
        (
            "underscore in the secret",
            "live",
            id.clone(),
            format!("_{}", &secret[1..]),
            TokenError::BadCharacter {
                position: keyward::TokenFormat::KEY_ID_LEN,
            },
        ),
    ];
    for (name, env, id, secret, expected) in cases {
        let env = Environment::new(env).unwrap();
        expect_err(name, format.from_pair(&env, &id, &secret), expected);
    }
    let staging = Environment::new("staging").unwrap();
    expect_err(
        "environment the format does not know",
        format.from_pair(&staging, &id, &secret),
        TokenError::UnknownEnvironment,
    );
    assert!(format.from_pair(&live, &id, &secret).is_ok());
}

/// Resource names and patterns, checked by the default rule.
#[test]
fn pattern_catalogue() {
    let rule = ResourceRule::default();
    let long = "p".repeat(129);
    let compile = |entries: &[&str]| {
        rule.compile(&ResourceScope::Only(
            entries.iter().map(|s| s.to_string()).collect(),
        ))
        .map(|_| ())
    };
    let many: Vec<String> = (0..101).map(|i| format!("P{i}")).collect();
    let cases: Vec<(&str, Result<(), PolicyError>, PolicyError)> = vec![
        ("empty selection", compile(&[]), PolicyError::EmptySelection),
        (
            "empty second entry",
            compile(&["Contoso.*", ""]),
            PolicyError::EmptyPattern { index: 1 },
        ),
        (
            "129 characters",
            compile(&[&long]),
            PolicyError::PatternTooLong {
                pattern: "p".repeat(128),
                len: 129,
                max: 128,
            },
        ),
        (
            "path traversal",
            compile(&["../*"]),
            PolicyError::PatternBadCharacter {
                pattern: "../*".into(),
                ch: '/',
            },
        ),
        (
            "space",
            compile(&["Contoso Tools"]),
            PolicyError::PatternBadCharacter {
                pattern: "Contoso Tools".into(),
                ch: ' ',
            },
        ),
        (
            "glob class brackets",
            compile(&["[ab]*"]),
            PolicyError::PatternBadCharacter {
                pattern: "[ab]*".into(),
                ch: '[',
            },
        ),
        (
            "glob alternation braces",
            compile(&["{a,b}"]),
            PolicyError::PatternBadCharacter {
                pattern: "{a,b}".into(),
                ch: '{',
            },
        ),
        (
            "non-ASCII letter",
            compile(&["Contosö"]),
            PolicyError::PatternBadCharacter {
                pattern: "Contosö".into(),
                ch: 'ö',
            },
        ),
        (
            "SQL in a pattern",
            compile(&["x';DROP TABLE keys;--"]),
            PolicyError::PatternBadCharacter {
                pattern: "x';DROP TABLE keys;--".into(),
                ch: '\'',
            },
        ),
        (
            "101 entries",
            rule.compile(&ResourceScope::Only(many)).map(|_| ()),
            PolicyError::TooManyResources {
                count: 101,
                max: 100,
            },
        ),
        (
            "empty resource name",
            rule.check_name(""),
            PolicyError::EmptyPattern { index: 0 },
        ),
        (
            "resource name with a wildcard",
            rule.check_name("Contoso.*"),
            PolicyError::PatternBadCharacter {
                pattern: "Contoso.*".into(),
                ch: '*',
            },
        ),
        (
            "rule allowing a glob character",
            ResourceRule::default().extra_chars("-*").map(|_| ()),
            PolicyError::GlobCharInRule { ch: '*' },
        ),
    ];
    for (name, got, expected) in cases {
        expect_err(name, got, expected);
    }
}

/// IP allowlists.
#[test]
fn cidr_catalogue() {
    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let cases: Vec<(&str, Vec<String>, PolicyError)> = vec![
        (
            "IPv4 prefix over 32",
            vec!["10.0.0.0/33".into()],
            cidr("10.0.0.0/33"),
        ),
        (
            "IPv6 prefix over 128",
            vec!["fe80::/129".into()],
            cidr("fe80::/129"),
        ),
        (
            "octet over 255",
            vec!["300.1.1.1".into()],
            cidr("300.1.1.1"),
        ),
        ("host name", vec!["localhost".into()], cidr("localhost")),
        ("empty entry", vec![String::new()], cidr("")),
        (
            "two prefixes",
            vec!["10.0.0.0/8/8".into()],
            cidr("10.0.0.0/8/8"),
        ),
        (
            "second entry bad",
            vec!["10.0.0.0/8".into(), "10.0.0.0/-1".into()],
            cidr("10.0.0.0/-1"),
        ),
        (
            "65 ranges",
            too_many,
            PolicyError::TooManyCidrs { count: 65, max: 64 },
        ),
    ];
    for (name, ranges, expected) in cases {
        expect_err(name, IpAllowlist::parse(&ranges), expected);
    }
}

fn cidr(input: &str) -> PolicyError {
    PolicyError::InvalidCidr {
        input: input.into(),
    }
}

/// Owners and names through `create`, and what `OwnerId` refuses; the store
/// is unchanged.
#[tokio::test]
async fn owner_and_name_catalogue() {
    let f = fixture();
    f.push_key().await;
    let before = snapshot(f.manager.store(), OWNER).await;
    let cases: Vec<(&str, NewKey, KeywardError)> = vec![
        (
            "blank owner",
            NewKey {
                owner: "  \t ".into(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::Empty { field: "owner" }).into(),
        ),
        (
            "owner too long",
            NewKey {
                owner: "o".repeat(keyward::OwnerId::MAX_LEN + 1),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::TooLong {
                field: "owner",
                len: keyward::OwnerId::MAX_LEN + 1,
                max: keyward::OwnerId::MAX_LEN,
            })
            .into(),
        ),
        (
            "owner with a NUL byte",
            NewKey {
                owner: "contoso\0".into(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::BadCharacter {
                field: "owner",
                ch: '\0',
                allowed: "printable characters",
            })
            .into(),
        ),
        (
            "name with an escape sequence",
            NewKey {
                name: "CI\u{1b}[31m".into(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::BadCharacter {
                field: "name",
                ch: '\u{1b}',
                allowed: "printable characters",
            })
            .into(),
        ),
        (
            "empty name",
            NewKey {
                name: String::new(),
                ..base()
            },
            PolicyError::Invalid(InvalidValue::Empty { field: "name" }).into(),
        ),
        (
            "upper-case environment",
            NewKey {
                environment: "LIVE".into(),
                ..base()
            },
            KeywardError::UnknownEnvironment("LIVE".into()),
        ),
    ];
    for (name, new, expected) in cases {
        expect_err(
            name,
            f.manager
                .create(&keyward::Actor::system("tests"), new)
                .await,
            expected,
        );
    }
    // A name that looks like SQL is just a name: stored and read back as given.
    let sql = "x'); DROP TABLE keyward_keys; --";
    let created = f
        .manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey {
                name: sql.into(),
                ..base()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        f.manager
            .get(&keyward::Actor::system("tests"), &created.key.id)
            .await
            .unwrap()
            .name,
        sql
    );
    f.manager
        .delete(&keyward::Actor::system("tests"), &created.key.id)
        .await
        .unwrap();
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
}

/// Expiry policies that cannot be built.
#[test]
fn expiry_policy_catalogue() {
    let invalid = |reason: &str| PolicyError::InvalidExpiryPolicy {
        reason: reason.into(),
    };
    let cases: Vec<(&str, Result<ExpiryPolicy, PolicyError>, PolicyError)> = vec![
        (
            "nothing allowed",
            ExpiryPolicy::choices(&[], false, ExpiryChoice::Days(1)),
            invalid("no expiry choice is allowed"),
        ),
        (
            "zero-day choice",
            ExpiryPolicy::choices(&[0, 90], false, ExpiryChoice::Days(90)),
            invalid("0 days is not a lifetime"),
        ),
        (
            "zero maximum",
            ExpiryPolicy::up_to(0, ExpiryChoice::Days(1)),
            invalid("the maximum must be at least 1 day"),
        ),
        (
            "default never where never is not allowed",
            ExpiryPolicy::choices(&[90], false, ExpiryChoice::Never),
            invalid("the default is not allowed: keys that never expire are not allowed"),
        ),
    ];
    for (name, got, expected) in cases {
        expect_err(name, got, expected);
    }
}

/// Quotas: the fourth live key is refused with the limit, in each
/// environment separately; a zero quota cannot be configured.
#[tokio::test]
async fn quota_catalogue() {
    expect_err(
        "zero quota",
        Policy::new(registry()).with_quota(0).map(drop),
        PolicyError::ZeroQuota,
    );
    let f = fixture();
    for _ in 0..3 {
        f.push_key().await;
    }
    let before = snapshot(f.manager.store(), OWNER).await;
    expect_err(
        "fourth live key",
        f.manager
            .create(&keyward::Actor::system("tests"), base())
            .await,
        KeywardError::QuotaExceeded { limit: 3 },
    );
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
    // Another environment has its own quota; a revoked key frees a place.
    f.create(NewKey {
        environment: "test".into(),
        ..base()
    })
    .await;
    f.manager
        .revoke(&keyward::Actor::system("tests"), &before[0].id)
        .await
        .unwrap();
    f.create(base()).await;
    expect_err(
        "fourth live key after a revoke and a re-create",
        f.manager
            .create(&keyward::Actor::system("tests"), base())
            .await,
        KeywardError::QuotaExceeded { limit: 3 },
    );
}

/// Edits under the default (strict) edit policy, and changes to keys that
/// can no longer change; the store is unchanged after each.
#[tokio::test]
async fn edit_rules_catalogue() {
    let f = fixture();
    let key = f
        .create(
            base()
                .permissions(PermissionGrant::only(["package:push-new"]))
                .ip_allowlist(["10.0.0.0/8"])
                .expiry(ExpiryChoice::Days(90)),
        )
        .await;
    let id = key.key.id.clone();
    let revoked = f.push_key().await;
    f.manager
        .revoke(&keyward::Actor::system("tests"), &revoked.key.id)
        .await
        .unwrap();
    let before = snapshot(f.manager.store(), OWNER).await;
    let edit = KeyEdit::default;
    let cases: Vec<(&str, &KeyId, KeyEdit, KeywardError)> = vec![
        (
            "adding a permission",
            &id,
            KeyEdit {
                permissions: Some(PermissionGrant::only([
                    "package:push-new",
                    "package:unlist",
                ])),
                ..edit()
            },
            PolicyError::PermissionWidening {
                name: "package:unlist".into(),
            }
            .into(),
        ),
        (
            "all permissions",
            &id,
            KeyEdit {
                permissions: Some(PermissionGrant::All),
                ..edit()
            },
            PolicyError::PermissionWidening {
                name: "package:push".into(),
            }
            .into(),
        ),
        (
            "session-only permission",
            &id,
            KeyEdit {
                permissions: Some(PermissionGrant::only(["package:delete"])),
                ..edit()
            },
            PolicyError::SessionOnlyPermission {
                name: "package:delete".into(),
            }
            .into(),
        ),
        (
            "no permissions",
            &id,
            KeyEdit {
                permissions: Some(PermissionGrant::Only(Default::default())),
                ..edit()
            },
            PolicyError::NoPermissions.into(),
        ),
        (
            "later expiry",
            &id,
            KeyEdit {
                expiry: Some(ExpiryChoice::Days(365)),
                ..edit()
            },
            PolicyError::ExpiryExtension.into(),
        ),
        (
            "never expire",
            &id,
            KeyEdit {
                expiry: Some(ExpiryChoice::Never),
                ..edit()
            },
            PolicyError::ExpiryExtension.into(),
        ),
        (
            "wider IP range",
            &id,
            KeyEdit {
                ip_allowlist: Some(vec!["0.0.0.0/0".into()]),
                ..edit()
            },
            PolicyError::IpWidening.into(),
        ),
        (
            "emptied IP allowlist (anywhere)",
            &id,
            KeyEdit {
                ip_allowlist: Some(vec![]),
                ..edit()
            },
            PolicyError::IpWidening.into(),
        ),
        (
            "an added range",
            &id,
            KeyEdit {
                ip_allowlist: Some(vec!["10.0.0.0/8".into(), "192.0.2.1".into()]),
                ..edit()
            },
            PolicyError::IpWidening.into(),
        ),
        (
            "renaming a revoked key",
            &revoked.key.id,
            KeyEdit {
                name: Some("again".into()),
                ..edit()
            },
            KeywardError::Revoked(revoked.key.id.clone()),
        ),
    ];
    for (name, id, e, expected) in cases {
        expect_err(
            name,
            f.manager
                .edit(&keyward::Actor::system("tests"), id, e)
                .await,
            expected,
        );
    }
    expect_err(
        "regenerating a revoked key",
        f.manager
            .regenerate(&keyward::Actor::system("tests"), &revoked.key.id)
            .await,
        KeywardError::Revoked(revoked.key.id.clone()),
    );
    expect_err(
        "revoking twice",
        f.manager
            .revoke(&keyward::Actor::system("tests"), &revoked.key.id)
            .await,
        KeywardError::Revoked(revoked.key.id.clone()),
    );
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);

    f.clock.advance(chrono::TimeDelta::days(91));
    expect_err(
        "editing an expired key",
        f.manager
            .edit(
                &keyward::Actor::system("tests"),
                &id,
                KeyEdit {
                    name: Some("late".into()),
                    ..edit()
                },
            )
            .await,
        KeywardError::Expired(id.clone()),
    );
    expect_err(
        "regenerating an expired key",
        f.manager
            .regenerate(&keyward::Actor::system("tests"), &id)
            .await,
        KeywardError::Expired(id.clone()),
    );
    assert_eq!(snapshot(f.manager.store(), OWNER).await, before);
}

/// Permission registries that cannot be built.
#[test]
fn registry_catalogue() {
    let cases: Vec<(
        &str,
        keyward::policy::PermissionRegistryBuilder,
        PolicyError,
    )> = vec![
        (
            "duplicate",
            PermissionRegistry::builder()
                .permission("package:push")
                .permission("package:push"),
            PolicyError::DuplicatePermission {
                name: "package:push".into(),
            },
        ),
        (
            "implies an unknown permission",
            PermissionRegistry::builder().permission_implying("package:push", &["package:ghost"]),
            PolicyError::UnknownPermission {
                name: "package:ghost".into(),
            },
        ),
        (
            "implies a session-only permission",
            PermissionRegistry::builder()
                .session_only("package:delete")
                .permission_implying("package:admin", &["package:delete"]),
            PolicyError::ImpliesSessionOnly {
                name: "package:admin".into(),
                implied: "package:delete".into(),
            },
        ),
        (
            "empty name",
            PermissionRegistry::builder().permission(""),
            PolicyError::Invalid(InvalidValue::Empty {
                field: "permission name",
            }),
        ),
    ];
    for (name, builder, expected) in cases {
        expect_err(name, builder.build().map(drop), expected);
    }
}

/// Sessions: configurations and exchanges that are refused; no session is
/// created and the keys are unchanged.
#[tokio::test]
async fn session_catalogue() {
    let build = |config: SessionConfig| {
        KeyManager::builder(MemoryStore::new(), format(), policy())
            .sessions(config)
            .build()
            .map(drop)
            .map_err(|e| e.kind().clone())
    };
    let cases: Vec<(&str, Result<(), SessionError>, SessionError)> = vec![
        (
            "prefix equal to the key prefix",
            build(SessionConfig::new("mkh")),
            SessionError::PrefixClash,
        ),
        (
            "upper-case prefix",
            build(SessionConfig::new("MKHS")),
            SessionError::Prefix(InvalidValue::BadCharacter {
                field: "session prefix",
                ch: 'M',
                allowed: "lowercase ASCII letters and digits",
            }),
        ),
        (
            "zero lifetime",
            build(SessionConfig {
                default_ttl: Duration::ZERO,
                ..SessionConfig::new("mkhs")
            }),
            SessionError::ZeroTtl,
        ),
        (
            "default above the maximum",
            build(SessionConfig {
                default_ttl: Duration::from_secs(7200),
                ..SessionConfig::new("mkhs")
            }),
            SessionError::DefaultAboveMax,
        ),
    ];
    for (name, got, expected) in cases {
        expect_err(name, got, expected);
    }

    let store = std::sync::Arc::new(MemoryStore::new());
    let manager = KeyManager::builder(std::sync::Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let key = manager
        .create(&keyward::Actor::system("tests"), base())
        .await
        .unwrap();
    let t = key.token.expose_secret();
    let live = Environment::new("live").unwrap();
    let session = manager.exchange(t, &live, None, None).await.unwrap();
    let before = snapshot(&store, OWNER).await;
    let hour = Duration::from_secs(3600);
    let cases: Vec<(&str, Result<IssuedSession, SessionError>, SessionError)> = vec![
        (
            "lifetime above the maximum",
            manager
                .exchange(t, &live, Some(hour + Duration::from_secs(1)), None)
                .await,
            SessionError::TtlTooLong {
                requested: hour + Duration::from_secs(1),
                max: hour,
            },
        ),
        (
            "zero lifetime requested",
            manager.exchange(t, &live, Some(Duration::ZERO), None).await,
            SessionError::ZeroTtl,
        ),
        (
            "a session token exchanged",
            manager
                .exchange(session.token.expose_secret(), &live, None, None)
                .await,
            SessionError::SessionTokenGiven,
        ),
    ];
    for (name, got, expected) in cases {
        match got {
            Ok(_) => panic!("case {name:?}: a session was issued"),
            Err(e) => assert_eq!(e, expected, "case {name:?}"),
        }
    }
    assert!(matches!(
        manager.exchange("mkh_live_short", &live, None, None).await,
        Err(SessionError::Denied(d)) if d.reason == DenialReason::Malformed(TokenError::BadLength { expected: keyward::TokenFormat::BODY_LEN, found: 5 })
    ));
    assert_eq!(snapshot(&store, OWNER).await, before);
}

/// Credential headers, read as the axum layer reads them: each refused with
/// a 401 and its OAuth error code (`invalid_token` for malformed,
/// `missing_credentials` when there is none); nothing reaches a store.
#[cfg(feature = "axum")]
#[test]
fn header_catalogue() {
    use ::axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
    use base64::Engine;
    use keyward::axum::{CredentialSource, read_credential};

    let format = format();
    let live = Environment::new("live").unwrap();
    let api_key = HeaderName::from_static("x-api-key");
    let token = format.generate(&live, &KeyId::generate());
    let t = token.expose_secret();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let headers = |pairs: &[(&str, &[u8])]| {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        h
    };
    let long = format!("Bearer {}", "a".repeat(600));
    // A short alphanumeric id is a valid imported key's id (checked as a
    // pair), so these are the pairs no key can have.
    let pair_bad_id = format!(
        "Basic {}",
        b64(&format!(
            "ab-c:{}",
            "s".repeat(keyward::TokenFormat::SECRET_LEN)
        ))
    );
    let pair_long_id = format!(
        "Basic {}",
        b64(&format!(
            "{}:{}",
            "a".repeat(65),
            "s".repeat(keyward::TokenFormat::SECRET_LEN)
        ))
    );
    let pair_empty_secret = format!("Basic {}", b64("abc:"));
    let pair_blank_secret = format!("Basic {}", b64("abc:se cret"));
    let bearer = format!("Bearer {t}");
    let cases: Vec<(&str, HeaderMap, bool, &str)> = vec![
        ("no header", HeaderMap::new(), true, "missing_credentials"),
        (
            "only an API key header that is not configured",
            headers(&[("x-api-key", t.as_bytes())]),
            false,
            "missing_credentials",
        ),
        (
            "empty Authorization",
            headers(&[("authorization", b"")]),
            true,
            "invalid_token",
        ),
        (
            "Bearer without token",
            headers(&[("authorization", b"Bearer")]),
            true,
            "invalid_token",
        ),
        (
            "Bearer with blanks",
            headers(&[("authorization", b"Bearer    ")]),
            true,
            "invalid_token",
        ),
        (
            "unknown scheme",
            headers(&[("authorization", b"Token abc")]),
            true,
            "invalid_token",
        ),
        (
            "Digest scheme",
            headers(&[("authorization", b"Digest username=x")]),
            true,
            "invalid_token",
        ),
        (
            "non-ASCII bytes",
            headers(&[("authorization", b"Bearer \xe9\xe8\xff")]),
            true,
            "invalid_token",
        ),
        (
            "over 512 bytes",
            headers(&[("authorization", long.as_bytes())]),
            true,
            "invalid_token",
        ),
        (
            "two Authorization headers",
            headers(&[
                ("authorization", bearer.as_bytes()),
                ("authorization", bearer.as_bytes()),
            ]),
            true,
            "invalid_token",
        ),
        (
            "Basic not base64",
            headers(&[("authorization", b"Basic !!!not-base64")]),
            true,
            "invalid_token",
        ),
        (
            "Basic without a colon",
            headers(&[(
                "authorization",
                format!("Basic {}", b64("nocolon")).as_bytes(),
            )]),
            true,
            "invalid_token",
        ),
        (
            "Basic not UTF-8",
            headers(&[("authorization", b"Basic //79")]),
            true,
            "invalid_token",
        ),
        (
            "Basic with a key id that is not alphanumeric",
            headers(&[("authorization", pair_bad_id.as_bytes())]),
            true,
            "invalid_token",
        ),
        (
            "Basic with a key id over 64 characters",
            headers(&[("authorization", pair_long_id.as_bytes())]),
            true,
            "invalid_token",
        ),
        (
            "Basic with an empty secret",
            headers(&[("authorization", pair_empty_secret.as_bytes())]),
            true,
            "invalid_token",
        ),
        (
            "Basic with a blank in the secret",
            headers(&[("authorization", pair_blank_secret.as_bytes())]),
            true,
            "invalid_token",
        ),
        (
            "empty API key header",
            headers(&[("x-api-key", b"")]),
            true,
            "invalid_token",
        ),
        (
            "two API key headers",
            headers(&[("x-api-key", b"a"), ("x-api-key", b"b")]),
            true,
            "invalid_token",
        ),
    ];
    for (name, h, configured, code) in cases {
        let got = read_credential(&h, configured.then_some(&api_key), &format, &live);
        match got {
            Ok(c) => panic!("case {name:?}: accepted as {:?}", c.source()),
            Err(r) => {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "case {name:?}");
                assert_eq!(r.error(), code, "case {name:?}");
            }
        }
    }
    // And the well-formed ones, for contrast.
    let ok = read_credential(
        &headers(&[("authorization", format!("bearer  {t} ").as_bytes())]),
        None,
        &format,
        &live,
    )
    .unwrap();
    assert_eq!(
        (ok.source(), ok.expose_secret()),
        (CredentialSource::Bearer, t)
    );
    let parsed = format.parse(t).unwrap();
    let basic = format!(
        "Basic {}",
        b64(&format!("{}:{}", parsed.key_id(), parsed.expose_secret()))
    );
    let ok = read_credential(
        &headers(&[("authorization", basic.as_bytes())]),
        None,
        &format,
        &live,
    )
    .unwrap();
    assert_eq!(
        (ok.source(), ok.expose_secret()),
        (CredentialSource::Basic, t)
    );
    assert_eq!(ok.pair_key_id(), None);
    // cargo's scheme-less `Authorization: <token>`: refused unless the
    // application names Authorization as its API-key header; then only a
    // single word that is no scheme is the token.
    let raw = headers(&[("authorization", t.as_bytes())]);
    for api in [None, Some(&api_key)] {
        let refused = read_credential(&raw, api, &format, &live).unwrap_err();
        assert_eq!(refused.error(), "invalid_token", "{api:?}");
    }
    let auth = ::axum::http::header::AUTHORIZATION;
    let ok = read_credential(&raw, Some(&auth), &format, &live).unwrap();
    assert_eq!(
        (ok.source(), ok.expose_secret()),
        (CredentialSource::RawAuthorization, t)
    );
    let two_words = format!("{t} {t}");
    let token_scheme = format!("Token {t}");
    for value in [
        two_words.as_bytes(),
        token_scheme.as_bytes(),
        b"",
        b"   ",
        b"Bearer",
        b"Basic",
        long.as_bytes(),
    ] {
        let h = headers(&[("authorization", value)]);
        let refused = read_credential(&h, Some(&auth), &format, &live).unwrap_err();
        assert_eq!(
            (refused.status(), refused.error()),
            (StatusCode::UNAUTHORIZED, "invalid_token"),
            "{:?}",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
    }
    // Bearer and Basic still work there.
    let ok = read_credential(
        &headers(&[("authorization", bearer.as_bytes())]),
        Some(&auth),
        &format,
        &live,
    )
    .unwrap();
    assert_eq!(ok.source(), CredentialSource::Bearer);
    // An imported key's pair: any alphanumeric id, checked as a pair.
    let imported = format!("Basic {}", b64("abc:legacy-Secret.1"));
    let ok = read_credential(
        &headers(&[("authorization", imported.as_bytes())]),
        None,
        &format,
        &live,
    )
    .unwrap();
    assert_eq!(
        (ok.source(), ok.pair_key_id(), ok.expose_secret()),
        (CredentialSource::Basic, Some("abc"), "legacy-Secret.1")
    );
}
