//! Leak reports from a secret scanner (issue 11 §3): signature checks,
//! proof of the secret, revocation, audit, notification, sessions, bounds,
//! idempotency. No network: the scanner's keys are made here.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use keyward::audit::{AuditAction, AuditEvent, AuditQuery};
use keyward::hash::Argon2Hasher;
use keyward::key::{KeyRecord, KeyStatus};
use keyward::leak::{
    LeakLabel, LeakNotice, LeakReportError, LeakReports, ScannerKeyErrorKind, ScannerKeys,
    TokenLabel,
};
use keyward::policy::{ExpiryChoice, PermissionGrant};
use keyward::session::{SessionCap, SessionConfig, SessionRecord};
use keyward::store::{ListQuery, MemoryAuditSink, QuotaCheck, SessionStore, StoreError};
use keyward::verify::VerifierConfig;
use keyward::*;
use p256::ecdsa::{Signature, SigningKey, signature::Signer};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::json;

use common::{Counters, CountingHasher, OWNER, sha256_hex, sys};

/// A [`MemoryStore`] whose reads, key writes and session writes can be
/// made to fail.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    fail_sessions: AtomicBool,
}

fn check(flag: &AtomicBool) -> Result<(), StoreError> {
    if flag.load(Ordering::SeqCst) {
        Err(StoreError::Backend("injected failure".into()))
    } else {
        Ok(())
    }
}

impl KeyStore for Flaky {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        check(&self.fail_writes)?;
        self.inner.insert(record, quota).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        check(&self.fail_reads)?;
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        check(&self.fail_reads)?;
        self.inner.list(query).await
    }
    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        check(&self.fail_reads)?;
        self.inner.count(query).await
    }
    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        check(&self.fail_writes)?;
        self.inner.update(record, expected_generation).await
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        check(&self.fail_writes)?;
        self.inner.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: chrono::DateTime<chrono::Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), StoreError> {
        self.inner.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.take_expiry_reminders(now, until, limit).await
    }
}

impl SessionStore for Flaky {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        self.inner.insert_session(record, cap).await
    }
    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        check(&self.fail_reads)?;
        self.inner.get_session(id).await
    }
    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        self.inner.session_owner(key_id).await
    }
    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        check(&self.fail_sessions)?;
        self.inner.revoke_sessions(key_id).await
    }
    async fn delete_expired_sessions(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.delete_expired_sessions(now).await
    }
}

const KEY_ID: &str = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";

fn signing_key() -> SigningKey {
    loop {
        if let Ok(k) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

fn pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem")
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der())
}

type Notices = Arc<Mutex<Vec<LeakNotice>>>;

struct Scanner {
    manager: KeyManager<Arc<Flaky>>,
    store: Arc<Flaky>,
    audit: Arc<MemoryAuditSink>,
    counters: Counters,
    github: SigningKey,
    reports: LeakReports,
    notices: Notices,
    live: Environment,
    clock: ManualClock,
}

fn scanner() -> Scanner {
    scanner_with(|r| r)
}

fn scanner_with(settings: impl FnOnce(LeakReports) -> LeakReports) -> Scanner {
    let store = Arc::new(Flaky::default());
    let audit = Arc::new(MemoryAuditSink::new());
    let counters = Counters::default();
    let clock = ManualClock::new(common::start());
    let manager = KeyManager::builder(Arc::clone(&store), common::format(), common::policy())
        .hasher(CountingHasher::new(counters.clone()))
        .clock(clock.clone())
        .audit_shared(audit.clone())
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .expect("manager");
    let github = signing_key();
    let keys = ScannerKeys::new()
        .with_pem(KEY_ID, &pem(&github))
        .expect("key");
    let notices: Notices = Arc::default();
    let seen = Arc::clone(&notices);
    let reports = settings(LeakReports::new(keys).notifier(move |n: LeakNotice| {
        seen.lock().unwrap().push(n);
        async {}
    }));
    Scanner {
        manager,
        store,
        audit,
        counters,
        github,
        reports,
        notices,
        live: Environment::new("live").unwrap(),
        clock,
    }
}

fn entry(token: &str) -> serde_json::Value {
    json!({
        "token": token,
        "type": "mkh_api_key",
        "url": "https://github.com/octocat/hello/blob/abc/ci.yml",
        "source": "commit",
    })
}

impl Scanner {
    async fn key(&self) -> CreatedKey {
        self.manager
            .create(
                &sys(),
                NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
            )
            .await
            .expect("create")
    }

    fn body(&self, tokens: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&tokens.iter().map(|t| entry(t)).collect::<Vec<_>>()).unwrap()
    }

    async fn send(&self, body: &[u8]) -> Result<Vec<TokenLabel>, LeakReportError> {
        let signature = sign(&self.github, body);
        self.manager
            .handle_leak_report(&self.reports, Some(KEY_ID), Some(&signature), body)
            .await
    }

    async fn report(&self, tokens: &[&str]) -> Vec<TokenLabel> {
        self.send(&self.body(tokens)).await.expect("report")
    }

    async fn report_err(&self, tokens: &[&str]) -> LeakReportError {
        self.send(&self.body(tokens)).await.expect_err("refused")
    }

    async fn status(&self, key: &CreatedKey) -> KeyStatus {
        self.manager.get(&sys(), &key.key.id).await.unwrap().status
    }

    fn leak_events(&self) -> Vec<AuditEvent> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.actor.as_deref() == Some(LeakReports::ACTOR))
            .collect()
    }

    fn verifies(&self) -> usize {
        self.counters.verifies.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_proven_token_revokes_its_key_audits_notifies_and_ends_its_sessions() {
    let s = scanner();
    let key = s.key().await;
    let token = key.token.expose_secret();
    let session = s
        .manager
        .exchange(token, &s.live, None, None)
        .await
        .expect("session");
    // Warm the verifier's cache: the revoke must reach it.
    s.manager
        .verifier()
        .authenticate(token, &s.live, None)
        .await
        .expect("valid before");

    let labels = s.report(&[token]).await;
    assert_eq!(
        labels,
        vec![TokenLabel {
            token_hash: sha256_hex(token),
            token_type: "mkh_api_key".into(),
            label: LeakLabel::TruePositive,
        }]
    );
    let answer = serde_json::to_value(&labels).unwrap();
    assert_eq!(
        answer,
        json!([{"token_hash": sha256_hex(token), "token_type": "mkh_api_key", "label": "true_positive"}])
    );

    assert_eq!(s.status(&key).await, KeyStatus::Revoked);
    let denial = s
        .manager
        .verifier()
        .authenticate(token, &s.live, None)
        .await
        .unwrap_err();
    assert_eq!(denial.reason, DenialReason::Revoked);
    let denial = s
        .manager
        .authenticate_session(session.token.expose_secret(), &s.live, None)
        .await
        .unwrap_err();
    assert_eq!(denial.reason, DenialReason::Revoked);

    let events = s.leak_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.action, AuditAction::Revoked);
    assert_eq!(e.key_id.as_ref(), Some(&key.key.id));
    assert_eq!(e.owner.as_ref().map(OwnerId::as_str), Some(OWNER));
    assert!(e.detail.contains("type=mkh_api_key"), "{}", e.detail);
    assert!(e.detail.contains("source=commit"), "{}", e.detail);
    assert!(
        e.detail
            .contains("url=https://github.com/octocat/hello/blob/abc/ci.yml"),
        "{}",
        e.detail
    );
    for e in s.audit.events() {
        assert!(
            !format!("{e:?}").contains(token),
            "the token reached the audit trail"
        );
    }

    let notices = s.notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1);
    let n = &notices[0];
    assert_eq!(n.owner.as_str(), OWNER);
    assert_eq!(n.key_id, key.key.id);
    assert_eq!(n.key_name, "CI");
    assert_eq!(n.url, "https://github.com/octocat/hello/blob/abc/ci.yml");
    assert_eq!(n.source, "commit");
    assert_eq!(n.token_type, "mkh_api_key");
    assert!(!format!("{n:?}").contains(token));
}

#[tokio::test]
async fn a_second_report_of_the_same_token_changes_nothing_and_answers_the_same() {
    let s = scanner();
    let key = s.key().await;
    let token = key.token.expose_secret();
    let first = s.report(&[token]).await;
    let record = s.store.inner.get(&key.key.id).await.unwrap();
    let events = s.audit.events().len();

    let second = s.report(&[token]).await;
    assert_eq!(first, second);
    assert_eq!(s.store.inner.get(&key.key.id).await.unwrap(), record);
    assert_eq!(s.audit.events().len(), events, "no second audit event");
    assert_eq!(s.notices.lock().unwrap().len(), 1, "no second notification");
}

#[tokio::test]
async fn a_valid_id_and_checksum_with_a_wrong_secret_revokes_nothing() {
    let s = scanner();
    let key = s.key().await;
    // Same id, valid checksum, another secret: what anyone can forge from
    // a public key id.
    let forged = common::format().generate(&s.live, &key.key.id);
    let before = s.store.inner.get(&key.key.id).await.unwrap();

    let labels = s.report(&[forged.expose_secret()]).await;
    assert_eq!(labels[0].label, LeakLabel::FalsePositive);
    assert_eq!(labels[0].token_hash, sha256_hex(forged.expose_secret()));
    assert_eq!(s.status(&key).await, KeyStatus::Active);
    assert_eq!(s.store.inner.get(&key.key.id).await.unwrap(), before);
    assert!(s.leak_events().is_empty());
    assert!(s.notices.lock().unwrap().is_empty());
    assert_eq!(s.verifies(), 1, "the secret was checked with argon2");
    // The key still works.
    s.manager
        .verifier()
        .authenticate(key.token.expose_secret(), &s.live, None)
        .await
        .expect("still valid");
}

#[tokio::test]
async fn tokens_not_in_the_format_are_false_positives_with_no_store_read() {
    let s = scanner();
    let key = s.key().await;
    let test = Environment::new("test").unwrap();
    // Any store read now fails the report: none may happen.
    s.store.fail_reads.store(true, Ordering::SeqCst);
    let other_prefix = TokenFormat::new("abc", &["live"])
        .unwrap()
        .generate(&s.live, &key.key.id);
    let mut bad_checksum = key.token.expose_secret().to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });
    let session_like = format!("mkhs{}", &key.token.expose_secret()[3..]);
    let tokens = [
        "",
        "not a token",
        "ghp_0123456789abcdef",
        other_prefix.expose_secret(),
        bad_checksum.as_str(),
        session_like.as_str(),
    ];
    let labels = s.report(&tokens).await;
    assert_eq!(labels.len(), tokens.len());
    for (label, token) in labels.iter().zip(tokens) {
        assert_eq!(label.label, LeakLabel::FalsePositive, "{token}");
        assert_eq!(label.token_hash, sha256_hex(token));
    }
    s.store.fail_reads.store(false, Ordering::SeqCst);

    // In the format but of an environment the key is not in: read, refused.
    let other_env = common::format().generate(&test, &key.key.id);
    let unknown = common::format().generate(&s.live, &KeyId::generate());
    let labels = s
        .report(&[other_env.expose_secret(), unknown.expose_secret()])
        .await;
    assert!(labels.iter().all(|l| l.label == LeakLabel::FalsePositive));
    assert_eq!(s.verifies(), 0, "no argon2 for any of them");
    assert_eq!(s.status(&key).await, KeyStatus::Active);
    assert!(s.notices.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_regenerated_keys_old_secret_is_a_false_positive() {
    let s = scanner();
    let key = s.key().await;
    let new = s.manager.regenerate(&sys(), &key.key.id).await.unwrap();
    let labels = s
        .report(&[key.token.expose_secret(), new.token.expose_secret()])
        .await;
    assert_eq!(labels[0].label, LeakLabel::FalsePositive);
    assert_eq!(labels[1].label, LeakLabel::TruePositive);
    assert_eq!(s.status(&key).await, KeyStatus::Revoked);
}

#[tokio::test]
async fn bad_or_missing_signatures_are_refused_before_anything_is_read() {
    let s = scanner();
    let key = s.key().await;
    let body = s.body(&[key.token.expose_secret()]);
    let good = sign(&s.github, &body);
    let other_key = sign(&signing_key(), &body);
    let mut altered = body.clone();
    altered.insert(1, b' ');
    let handle = |id: Option<&'static str>, sig: Option<String>, body: Vec<u8>| {
        let s = &s;
        async move {
            s.manager
                .handle_leak_report(&s.reports, id, sig.as_deref(), &body)
                .await
        }
    };
    // Store reads fail: a refusal must come before any.
    s.store.fail_reads.store(true, Ordering::SeqCst);
    type Case = (
        Option<&'static str>,
        Option<String>,
        Vec<u8>,
        LeakReportError,
    );
    let cases: Vec<Case> = vec![
        (
            Some(KEY_ID),
            None,
            body.clone(),
            LeakReportError::MissingSignature,
        ),
        (
            Some(KEY_ID),
            Some(" ".into()),
            body.clone(),
            LeakReportError::MissingSignature,
        ),
        (
            None,
            Some(good.clone()),
            body.clone(),
            LeakReportError::MissingKeyIdentifier,
        ),
        (
            Some("no-such-key"),
            Some(good.clone()),
            body.clone(),
            LeakReportError::UnknownKeyIdentifier("no-such-key".into()),
        ),
        (
            Some(KEY_ID),
            Some("%%%not base64".into()),
            body.clone(),
            LeakReportError::MalformedSignature,
        ),
        (
            Some(KEY_ID),
            Some("aGVsbG8=".into()),
            body.clone(),
            LeakReportError::MalformedSignature,
        ),
        (
            Some(KEY_ID),
            Some("A".repeat(4000)),
            body.clone(),
            LeakReportError::MalformedSignature,
        ),
        (
            Some(KEY_ID),
            Some(other_key),
            body.clone(),
            LeakReportError::BadSignature,
        ),
        (
            Some(KEY_ID),
            Some(good.clone()),
            altered,
            LeakReportError::BadSignature,
        ),
    ];
    for (id, sig, body, expected) in cases {
        let got = handle(id, sig, body).await.unwrap_err();
        assert_eq!(got, expected);
        assert!(got.is_unauthenticated());
        assert!(!got.is_retryable());
        assert!(!got.to_string().contains(key.token.expose_secret()));
    }
    s.store.fail_reads.store(false, Ordering::SeqCst);
    assert_eq!(s.verifies(), 0);
    assert_eq!(s.status(&key).await, KeyStatus::Active);
    assert!(s.notices.lock().unwrap().is_empty());
    assert!(s.leak_events().is_empty());
    // The same body with its own signature goes through.
    assert_eq!(
        handle(Some(KEY_ID), Some(good), body).await.unwrap()[0].label,
        LeakLabel::TruePositive
    );
}

#[tokio::test]
async fn malformed_json_is_refused_after_the_signature_and_changes_nothing() {
    let s = scanner();
    let key = s.key().await;
    let token = key.token.expose_secret();
    for body in [
        b"not json".to_vec(),
        b"{\"token\":1}".to_vec(),
        format!("[{{\"token\":\"{token}\"}}").into_bytes(),
        format!("[\"{token}\"]").into_bytes(),
        format!("[{{\"type\":\"t\",\"secret\":\"{token}\"}}]").into_bytes(),
        Vec::new(),
    ] {
        let e = s.send(&body).await.unwrap_err();
        assert!(
            matches!(e, LeakReportError::MalformedReport { .. }),
            "{e:?}"
        );
        assert!(!e.to_string().contains(token));
        assert!(!format!("{e:?}").contains(token));
    }
    assert_eq!(s.status(&key).await, KeyStatus::Active);
    assert_eq!(s.verifies(), 0);
}

#[tokio::test]
async fn ten_thousand_entries_are_refused_whole() {
    // With the default body limit, the body alone is too large.
    let s = scanner();
    let key = s.key().await;
    let token = key.token.expose_secret().to_owned();
    let mut tokens = vec![token.as_str()];
    tokens.extend(std::iter::repeat_n("x", 9_999));
    let body = s.body(&tokens);
    assert!(matches!(
        s.send(&body).await.unwrap_err(),
        LeakReportError::BodyTooLarge { max, .. } if max == LeakReports::DEFAULT_MAX_BODY_LEN
    ));
    // With room for the body, the entry bound refuses it, the real token
    // first in line included.
    let s2 = scanner_with(|r| r.max_body_len(4 * 1024 * 1024));
    let key2 = s2.key().await;
    let token2 = key2.token.expose_secret().to_owned();
    let mut tokens = vec![token2.as_str()];
    tokens.extend(std::iter::repeat_n("x", 9_999));
    let body = s2.body(&tokens);
    assert_eq!(
        s2.send(&body).await.unwrap_err(),
        LeakReportError::TooManyEntries {
            max: LeakReports::DEFAULT_MAX_ENTRIES
        }
    );
    assert_eq!(s2.status(&key2).await, KeyStatus::Active);
    assert_eq!(s2.verifies(), 0);
    assert!(s2.notices.lock().unwrap().is_empty());
    assert_eq!(s.status(&key).await, KeyStatus::Active);

    // Exactly at the bound is fine.
    let s3 = scanner_with(|r| r.max_entries(3));
    let k3 = s3.key().await;
    let labels = s3.report(&[k3.token.expose_secret(), "a", "b"]).await;
    assert_eq!(labels.len(), 3);
    assert_eq!(
        s3.send(&s3.body(&["a", "b", "c", "d"])).await.unwrap_err(),
        LeakReportError::TooManyEntries { max: 3 }
    );
}

#[tokio::test]
async fn duplicate_tokens_are_proven_once_and_answered_per_entry() {
    let s = scanner();
    let key = s.key().await;
    let other = s.key().await;
    let t = key.token.expose_secret();
    let forged = common::format().generate(&s.live, &other.key.id);
    let f = forged.expose_secret();
    let labels = s.report(&[t, "junk", t, f, t, f]).await;
    let got: Vec<_> = labels.iter().map(|l| l.label).collect();
    use LeakLabel::{FalsePositive as F, TruePositive as T};
    assert_eq!(got, vec![T, F, T, F, T, F]);
    assert_eq!(labels[0], labels[2]);
    assert_eq!(labels[0], labels[4]);
    assert_eq!(s.verifies(), 2, "one argon2 check per distinct token");
    assert_eq!(s.notices.lock().unwrap().len(), 1);
    assert_eq!(s.leak_events().len(), 1);
    assert_eq!(s.status(&other).await, KeyStatus::Active);
}

#[tokio::test]
async fn a_key_revoked_before_is_a_true_positive_with_no_change_or_notice() {
    let s = scanner();
    let key = s.key().await;
    s.manager.revoke(&sys(), &key.key.id).await.unwrap();
    let record = s.store.inner.get(&key.key.id).await.unwrap();
    let events = s.audit.events().len();
    let labels = s.report(&[key.token.expose_secret()]).await;
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
    assert_eq!(s.store.inner.get(&key.key.id).await.unwrap(), record);
    assert_eq!(s.audit.events().len(), events);
    assert!(s.notices.lock().unwrap().is_empty());
    // A forged token for the revoked key tells nothing about it.
    let forged = common::format().generate(&s.live, &key.key.id);
    assert_eq!(
        s.report(&[forged.expose_secret()]).await[0].label,
        LeakLabel::FalsePositive
    );
}

#[tokio::test]
async fn suspended_and_expired_keys_are_revoked_too_and_notified() {
    let s = scanner();
    let suspended = s.key().await;
    s.manager.suspend(&sys(), &suspended.key.id).await.unwrap();
    let labels = s.report(&[suspended.token.expose_secret()]).await;
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
    assert_eq!(s.status(&suspended).await, KeyStatus::Revoked);
    // Never to be resumed.
    assert!(matches!(
        s.manager.resume(&sys(), &suspended.key.id).await,
        Err(KeywardError::Revoked(_))
    ));

    let expiring = s
        .manager
        .create(
            &sys(),
            NewKey::new(OWNER, "live", "short")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await
        .unwrap();
    s.clock.advance(chrono::TimeDelta::days(2));
    assert_eq!(s.status(&expiring).await, KeyStatus::Expired);
    let labels = s.report(&[expiring.token.expose_secret()]).await;
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
    let record = s.store.inner.get(&expiring.key.id).await.unwrap().unwrap();
    assert!(record.revoked_at.is_some());
    assert_eq!(s.notices.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn sessions_not_ended_is_retryable_and_the_retry_ends_them_without_a_second_notice() {
    let s = scanner();
    let key = s.key().await;
    let token = key.token.expose_secret();
    let session = s
        .manager
        .exchange(token, &s.live, None, None)
        .await
        .unwrap();
    s.store.fail_sessions.store(true, Ordering::SeqCst);
    let e = s.report_err(&[token]).await;
    assert!(
        matches!(&e, LeakReportError::SessionsNotEnded { id, .. } if *id == key.key.id),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(s.status(&key).await, KeyStatus::Revoked, "the revoke stays");
    assert_eq!(s.notices.lock().unwrap().len(), 1);
    let stored = s
        .store
        .inner
        .get_session(&session.session.id)
        .await
        .unwrap();
    assert!(!stored.unwrap().revoked, "not ended yet");

    s.store.fail_sessions.store(false, Ordering::SeqCst);
    let labels = s.report(&[token]).await;
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
    let stored = s
        .store
        .inner
        .get_session(&session.session.id)
        .await
        .unwrap();
    assert!(stored.unwrap().revoked, "ended by the retry");
    assert_eq!(s.notices.lock().unwrap().len(), 1, "no second notice");
    assert_eq!(s.leak_events().len(), 1);
}

#[tokio::test]
async fn a_failing_store_is_a_retryable_error_and_the_retry_finishes() {
    let s = scanner();
    let a = s.key().await;
    let b = s.key().await;
    let body = s.body(&[a.token.expose_secret(), b.token.expose_secret()]);
    s.store.fail_writes.store(true, Ordering::SeqCst);
    let e = s.send(&body).await.unwrap_err();
    assert!(matches!(e, LeakReportError::Store(_)), "{e:?}");
    assert!(e.is_retryable());
    s.store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(s.status(&a).await, KeyStatus::Active);

    let labels = s.send(&body).await.unwrap();
    assert!(labels.iter().all(|l| l.label == LeakLabel::TruePositive));
    assert_eq!(s.status(&a).await, KeyStatus::Revoked);
    assert_eq!(s.status(&b).await, KeyStatus::Revoked);
    assert_eq!(s.notices.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn concurrent_reports_of_one_token_notify_once() {
    let s = scanner();
    let key = s.key().await;
    let body = s.body(&[key.token.expose_secret()]);
    let (x, y) = tokio::join!(s.send(&body), s.send(&body));
    assert_eq!(x.unwrap(), y.unwrap());
    assert_eq!(s.status(&key).await, KeyStatus::Revoked);
    assert_eq!(s.notices.lock().unwrap().len(), 1);
    assert_eq!(s.leak_events().len(), 1);
}

#[tokio::test]
async fn without_a_notifier_the_key_is_still_revoked() {
    let s = scanner();
    let key = s.key().await;
    let keys = ScannerKeys::new()
        .with_pem(KEY_ID, &pem(&s.github))
        .unwrap();
    let quiet = LeakReports::new(keys);
    let body = s.body(&[key.token.expose_secret()]);
    let labels = s
        .manager
        .handle_leak_report(&quiet, Some(KEY_ID), Some(&sign(&s.github, &body)), &body)
        .await
        .unwrap();
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
    assert_eq!(s.status(&key).await, KeyStatus::Revoked);
}

#[test]
fn the_scanners_key_document_is_parsed_and_checked() {
    let a = signing_key();
    let b = signing_key();
    let doc = json!({"public_keys": [
        {"key_identifier": "old", "key": pem(&a), "is_current": false},
        {"key_identifier": "new", "key": pem(&b), "is_current": true, "extra": 1},
    ]});
    let keys = ScannerKeys::from_github_json(doc.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys.identifiers().collect::<Vec<_>>(),
        vec![("old", false), ("new", true)]
    );
    // A key no longer current still verifies (the scanner is rotating).
    let body = b"[]";
    keys.verify(Some("old"), Some(&sign(&a, body)), body)
        .unwrap();
    keys.verify(Some("new"), Some(&sign(&b, body)), body)
        .unwrap();
    assert_eq!(
        keys.verify(Some("new"), Some(&sign(&a, body)), body),
        Err(LeakReportError::BadSignature)
    );

    let kind = |doc: &[u8]| ScannerKeys::from_github_json(doc).unwrap_err().kind;
    assert!(matches!(
        kind(b"nope"),
        ScannerKeyErrorKind::BadDocument { .. }
    ));
    assert!(matches!(
        kind(b"{\"keys\":[]}"),
        ScannerKeyErrorKind::BadDocument { .. }
    ));
    assert_eq!(kind(b"{\"public_keys\":[]}"), ScannerKeyErrorKind::NoKeys);
    let not_pem = json!({"public_keys": [{"key_identifier": "k", "key": "hello"}]});
    let e = ScannerKeys::from_github_json(not_pem.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.kind, ScannerKeyErrorKind::NotP256);
    assert_eq!(e.key_identifier.as_deref(), Some("k"));
    let twice = json!({"public_keys": [
        {"key_identifier": "k", "key": pem(&a)},
        {"key_identifier": "k", "key": pem(&b)},
    ]});
    assert_eq!(
        kind(twice.to_string().as_bytes()),
        ScannerKeyErrorKind::DuplicateIdentifier
    );
    let bad_id = json!({"public_keys": [{"key_identifier": "a b", "key": pem(&a)}]});
    assert_eq!(
        kind(bad_id.to_string().as_bytes()),
        ScannerKeyErrorKind::BadIdentifier
    );
    let huge = vec![b' '; ScannerKeys::MAX_DOCUMENT_LEN + 1];
    assert!(matches!(
        kind(&huge),
        ScannerKeyErrorKind::DocumentTooLarge { .. }
    ));
    let mut many = ScannerKeys::new();
    for i in 0..ScannerKeys::MAX_KEYS {
        many = many.with_pem(&format!("k{i}"), &pem(&a)).unwrap();
    }
    assert!(matches!(
        many.with_pem("one-more", &pem(&a)).unwrap_err().kind,
        ScannerKeyErrorKind::TooManyKeys { .. }
    ));
    // No keys at all: every report is refused as unknown.
    assert!(matches!(
        ScannerKeys::new().verify(Some("k"), Some("sig"), b"[]"),
        Err(LeakReportError::UnknownKeyIdentifier(_))
    ));
}

#[tokio::test]
async fn rotated_scanner_keys_are_swapped_in_place() {
    let s = scanner();
    let key = s.key().await;
    let next = signing_key();
    let body = s.body(&[key.token.expose_secret()]);
    let signature = sign(&next, &body);
    let refused = s
        .manager
        .handle_leak_report(&s.reports, Some("next"), Some(&signature), &body)
        .await;
    assert_eq!(
        refused.unwrap_err(),
        LeakReportError::UnknownKeyIdentifier("next".into())
    );
    s.reports
        .set_keys(ScannerKeys::new().with_pem("next", &pem(&next)).unwrap());
    let labels = s
        .manager
        .handle_leak_report(&s.reports, Some("next"), Some(&signature), &body)
        .await
        .unwrap();
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
}

/// The signed sample request of GitHub's partner-program page, checked
/// against the public key GitHub published under that identifier: the
/// real wire format (a Go-made DER signature over the raw body) verifies,
/// and answers `false_positive` for its made-up token.
#[tokio::test]
async fn githubs_documented_sample_request_verifies() {
    let document = json!({"public_keys": [{
        "key_identifier": "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
        "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n",
        "is_current": true,
    }]});
    let keys = ScannerKeys::from_github_json(document.to_string().as_bytes()).unwrap();
    let body = br#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;
    let signature = "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==";
    keys.verify(Some(KEY_ID), Some(signature), body).unwrap();
    // One byte more (a trailing newline, as a re-serializer might add): refused.
    let mut changed = body.to_vec();
    changed.push(b'\n');
    assert_eq!(
        keys.verify(Some(KEY_ID), Some(signature), &changed),
        Err(LeakReportError::BadSignature)
    );

    let s = scanner();
    let reports = LeakReports::new(keys);
    let labels = s
        .manager
        .handle_leak_report(&reports, Some(KEY_ID), Some(signature), body)
        .await
        .unwrap();
    assert_eq!(
        labels,
        vec![TokenLabel {
            token_hash: sha256_hex("some_token"),
            token_type: "some_type".into(),
            label: LeakLabel::FalsePositive,
        }]
    );
}

#[cfg(feature = "axum")]
mod route {
    use super::*;
    use ::axum::body::Body;
    use ::axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn post(
        s: &Scanner,
        reports: Arc<LeakReports>,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let app = ::axum::Router::new().route(
            "/leaks",
            keyward::axum::leak_report_route(s.manager.clone(), reports),
        );
        let mut req = Request::post("/leaks").header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let response = app
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = ::axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    fn shared(s: &Scanner) -> Arc<LeakReports> {
        let keys = ScannerKeys::new()
            .with_pem(KEY_ID, &pem(&s.github))
            .unwrap();
        let notices = Arc::clone(&s.notices);
        Arc::new(
            LeakReports::new(keys)
                .max_body_len(64 * 1024)
                .notifier(move |n: LeakNotice| {
                    notices.lock().unwrap().push(n);
                    async {}
                }),
        )
    }

    #[tokio::test]
    async fn the_route_answers_labels_and_refuses_bad_input() {
        let s = scanner();
        let key = s.key().await;
        let reports = shared(&s);
        let token = key.token.expose_secret();
        let body = s.body(&[token, "junk"]);
        let signed = |body: &[u8]| {
            vec![
                ("Github-Public-Key-Identifier", KEY_ID.to_owned()),
                ("Github-Public-Key-Signature", sign(&s.github, body)),
            ]
        };

        // Unsigned: 401, nothing changed.
        let (status, _, json) = post(&s, reports.clone(), &[], body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json["error"], "missing_key_identifier");
        let wrong = vec![
            ("Github-Public-Key-Identifier", KEY_ID.to_owned()),
            ("Github-Public-Key-Signature", sign(&signing_key(), &body)),
        ];
        let (status, _, json) = post(&s, reports.clone(), &wrong, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json["error"], "bad_signature");
        assert_eq!(s.status(&key).await, KeyStatus::Active);

        // Malformed: 400. Too large: 413.
        let junk = b"[{]".to_vec();
        let (status, _, json) = post(&s, reports.clone(), &signed(&junk), junk).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"], "malformed_report");
        let big = vec![b' '; 64 * 1024 + 1];
        let (status, _, json) = post(&s, reports.clone(), &signed(&big), big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["error"], "body_too_large");
        // A declared length over the bound: refused before reading.
        let mut declared = signed(b"[]");
        declared.push(("content-length", "10000000".into()));
        let (status, _, json) = post(&s, reports.clone(), &declared, b"[]".to_vec()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            json["message"].as_str().unwrap().contains("10000000"),
            "{json}"
        );

        // The store down: 503 with Retry-After, the store's text not shown.
        s.store.fail_reads.store(true, Ordering::SeqCst);
        let (status, retry, json) = post(&s, reports.clone(), &signed(&body), body.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("5"));
        assert!(!json["message"].as_str().unwrap().contains("injected"));
        s.store.fail_reads.store(false, Ordering::SeqCst);

        // Signed: 200 and the labels.
        let (status, _, json) = post(&s, reports.clone(), &signed(&body), body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            json!([
                {"token_hash": sha256_hex(token), "token_type": "mkh_api_key", "label": "true_positive"},
                {"token_hash": sha256_hex("junk"), "token_type": "mkh_api_key", "label": "false_positive"},
            ])
        );
        assert_eq!(s.status(&key).await, KeyStatus::Revoked);
        assert_eq!(s.notices.lock().unwrap().len(), 1);
    }
}

/// A notifier can be any `Fn(LeakNotice) -> Future`; one that only flags.
#[tokio::test]
async fn a_flagging_notifier_runs_once_per_revoked_key() {
    let s = scanner();
    let key = s.key().await;
    let flagged = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&flagged);
    let keys = ScannerKeys::new()
        .with_pem(KEY_ID, &pem(&s.github))
        .unwrap();
    let reports = LeakReports::new(keys).notifier(move |_n: LeakNotice| {
        let flag = Arc::clone(&flag);
        async move {
            assert!(!flag.swap(true, Ordering::SeqCst), "called twice");
        }
    });
    for _ in 0..2 {
        let body = s.body(&[key.token.expose_secret()]);
        s.manager
            .handle_leak_report(&reports, Some(KEY_ID), Some(&sign(&s.github, &body)), &body)
            .await
            .unwrap();
    }
    assert!(flagged.load(Ordering::SeqCst));
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any signed body, any header values: an answer or a typed error,
        /// never a panic, and never a key revoked without its token.
        #[test]
        fn any_signed_bytes_get_an_answer_or_a_typed_error(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            json_ish in "\\[(\\{\"token\":\"[a-z_0-9]{0,80}\"(,\"type\":\"[a-z]{0,8}\")?\\},?){0,6}\\]",
            id in proptest::option::of("[ -~]{0,80}"),
            sig in proptest::option::of("[A-Za-z0-9+/=]{0,200}"),
        ) {
            runtime().block_on(async {
                let s = scanner_with(|r| r.max_entries(4));
                let key = s.key().await;
                for body in [body.clone(), json_ish.clone().into_bytes()] {
                    let signature = sign(&s.github, &body);
                    match s.send(&body).await {
                        Ok(labels) => {
                            for l in &labels {
                                prop_assert_eq!(l.label, LeakLabel::FalsePositive);
                            }
                        }
                        Err(e) => prop_assert!(
                            matches!(
                                e,
                                LeakReportError::MalformedReport { .. }
                                    | LeakReportError::TooManyEntries { .. }
                            ),
                            "{:?}",
                            e
                        ),
                    }
                    let unsigned = s
                        .manager
                        .handle_leak_report(&s.reports, id.as_deref(), sig.as_deref(), &body)
                        .await;
                    if sig.as_deref() != Some(signature.as_str()) {
                        prop_assert!(unsigned.unwrap_err().is_unauthenticated());
                    }
                }
                prop_assert_eq!(s.status(&key).await, KeyStatus::Active);
                prop_assert!(s.notices.lock().unwrap().is_empty());
                Ok(())
            })?;
        }
    }
}

/// The same flow on the SQLite store, which is also the audit sink and the
/// session store: the revoke, its audit row and the ended sessions land in
/// the database.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn on_sqlite_the_revoke_audit_row_and_ended_sessions_are_stored() {
    let store = SqliteStore::in_memory().await.expect("open");
    store.migrate().await.expect("migrate");
    let manager = KeyManager::builder(store.clone(), common::format(), common::policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .audit(store.clone())
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let key = manager
        .create(
            &sys(),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    let live = Environment::new("live").unwrap();
    let token = key.token.expose_secret();
    let session = manager.exchange(token, &live, None, None).await.unwrap();
    let github = signing_key();
    let reports = LeakReports::new(ScannerKeys::new().with_pem(KEY_ID, &pem(&github)).unwrap());
    let body = serde_json::to_vec(&[entry(token)]).unwrap();
    let answer = |body: Vec<u8>| {
        let (manager, reports, github) = (&manager, &reports, &github);
        async move {
            manager
                .handle_leak_report(reports, Some(KEY_ID), Some(&sign(github, &body)), &body)
                .await
                .unwrap()
        }
    };
    let first = answer(body.clone()).await;
    assert_eq!(first[0].label, LeakLabel::TruePositive);
    assert_eq!(answer(body).await, first);

    let record = store.get(&key.key.id).await.unwrap().unwrap();
    assert!(record.revoked_at.is_some());
    let stored = store
        .get_session(&session.session.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.revoked);
    manager.flush().await.unwrap();
    let trail = manager
        .audit_trail(&sys(), AuditQuery::key(key.key.id.clone()))
        .await
        .unwrap();
    let leaks: Vec<_> = trail
        .iter()
        .filter(|e| e.actor.as_deref() == Some(LeakReports::ACTOR))
        .collect();
    assert_eq!(leaks.len(), 1, "{trail:?}");
    assert_eq!(leaks[0].action, AuditAction::Revoked);
    assert!(leaks[0].detail.contains("source=commit"));
}

/// Argon2 busy past the queue's wait bound: the report is refused as
/// retryable (never answered `false_positive`), nothing is revoked, and
/// the same report succeeds once argon2 is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_argon2_queue_is_a_retryable_error_that_revokes_nothing() {
    let counters = Counters::default();
    let config = VerifierConfig {
        max_concurrent_hashes: 1,
        max_hash_wait: std::time::Duration::from_millis(200),
        ..VerifierConfig::default()
    };
    let manager = KeyManager::builder(MemoryStore::new(), common::format(), common::policy())
        .hasher(CountingHasher::with_delay(
            counters.clone(),
            std::time::Duration::from_millis(1000),
        ))
        .verifier_config(config)
        .build()
        .unwrap();
    let create = |name: &'static str| {
        let manager = manager.clone();
        async move {
            manager
                .create(
                    &sys(),
                    NewKey::new(OWNER, "live", name).permissions(PermissionGrant::All),
                )
                .await
                .unwrap()
        }
    };
    let (busy, leaked) = (create("busy").await, create("leaked").await);
    let github = signing_key();
    let reports = LeakReports::new(ScannerKeys::new().with_pem(KEY_ID, &pem(&github)).unwrap());
    let body = serde_json::to_vec(&[entry(leaked.token.expose_secret())]).unwrap();
    let signature = sign(&github, &body);

    // Keep the one hashing thread busy for a second.
    let verifier = manager.verifier();
    let token = busy.token.expose_secret().to_owned();
    let live = Environment::new("live").unwrap();
    let running = tokio::spawn(async move { verifier.authenticate(&token, &live, None).await });
    while counters.running.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let e = manager
        .handle_leak_report(&reports, Some(KEY_ID), Some(&signature), &body)
        .await
        .unwrap_err();
    assert!(matches!(e, LeakReportError::Hashing(_)), "{e:?}");
    assert!(e.is_retryable());
    assert_eq!(e.code(), "overloaded");
    let status = |id: KeyId| {
        let manager = manager.clone();
        async move { manager.get(&sys(), &id).await.unwrap().status }
    };
    assert_eq!(status(leaked.key.id.clone()).await, KeyStatus::Active);

    running.await.unwrap().expect("the busy key was checked");
    let labels = manager
        .handle_leak_report(&reports, Some(KEY_ID), Some(&signature), &body)
        .await
        .unwrap();
    assert_eq!(labels[0].label, LeakLabel::TruePositive);
    assert_eq!(status(leaked.key.id.clone()).await, KeyStatus::Revoked);
}
