//! The secret-leak suite: a full life cycle (create, verify, failures,
//! regenerate, rotate, import, session, suspend, revoke, errors) with every
//! `Debug`/`Display` string, serde output, error message, audit event and
//! tracing event captured, and no token, secret or hash anywhere in them.
//!
//! Also the `tracing` feature's own test: spans and events name key ids,
//! owners, outcomes and reasons.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyward::*;
use keyward::{
    hash::Argon2Hasher, manager::ImportKey, policy::PermissionGrant, session::SessionConfig,
    store::ListQuery, store::MemoryAuditSink, store::SessionStore,
};

/// Everything that must never be printed, and everything that was.
#[derive(Default)]
struct Ledger {
    secrets: Vec<String>,
    printed: Vec<String>,
}

/// The shortest run of a secret's characters that must never be printed.
const WINDOW: usize = 12;

impl Ledger {
    /// A secret: whole, and every `WINDOW`-character window of it.
    fn secret(&mut self, secret: &str) {
        assert!(
            secret.is_ascii() && secret.len() >= WINDOW,
            "not a probe-able secret: {secret}"
        );
        for window in secret.as_bytes().windows(WINDOW) {
            self.secrets
                .push(std::str::from_utf8(window).unwrap().to_owned());
        }
        self.secrets.push(secret.to_owned());
    }
    /// A token `<prefix>_<env>_<id><secret><checksum>`: whole, and every
    /// window of its secret part (not the public id, not the checksum).
    /// Returns the secret part.
    fn token_with_prefix(&mut self, token: &Token, prefix: &str) -> String {
        let full = token.expose_secret();
        let body = full
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .and_then(|rest| rest.split_once('_'))
            .map(|(_env, body)| body)
            .unwrap_or_else(|| panic!("not a {prefix} token: {full}"));
        assert_eq!(body.len(), keyward::TokenFormat::BODY_LEN, "{full}");
        let secret = &body[keyward::TokenFormat::KEY_ID_LEN
            ..keyward::TokenFormat::KEY_ID_LEN + keyward::TokenFormat::SECRET_LEN];
        self.secret(secret);
        self.secrets.push(full.to_owned());
        secret.to_owned()
    }
    /// A key token.
    fn token(&mut self, token: &Token) {
        let secret = self.token_with_prefix(token, "mkh");
        let parsed = format().parse(token.expose_secret()).unwrap();
        assert_eq!(parsed.expose_secret(), secret, "the secret part is probed");
    }
    /// A session token: its secret's windows and the SHA-256 hex the store
    /// keeps of it. Returns that hex.
    fn session_token(&mut self, token: &Token) -> String {
        let secret = self.token_with_prefix(token, "mkhs");
        let hex = sha256_hex(&secret);
        self.secrets.push(hex.clone());
        hex
    }
    fn hash(&mut self, stored: &str) {
        // Every long part of a PHC string (salt, hash) or of a SHA-256 hex.
        let before = self.secrets.len();
        for part in stored.split('$').filter(|p| p.len() >= 16) {
            self.secrets.push(part.to_owned());
        }
        assert!(self.secrets.len() > before, "no hash part in {stored}");
    }
    fn print(&mut self, s: impl Into<String>) {
        self.printed.push(s.into());
    }
    fn debug(&mut self, v: &impl std::fmt::Debug) {
        self.printed.push(format!("{v:?}"));
        self.printed.push(format!("{v:#?}"));
    }
    fn error<E: std::fmt::Debug + std::fmt::Display>(&mut self, e: &E) {
        self.printed.push(format!("{e}"));
        self.debug(e);
    }
}

#[test]
fn a_whole_life_cycle_prints_no_secret_and_no_hash() {
    let (logs, _guard) = capture_tracing();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut l = Ledger::default();
    rt.block_on(life_cycle(&mut l));
    let traced = logs.text();

    // The tracing feature records who, what and why...
    assert!(traced.contains("outcome=\"granted\""), "{traced}");
    assert!(traced.contains("reason=\"wrong_secret\""), "{traced}");
    assert!(traced.contains("owner=\"contoso\""), "{traced}");
    assert!(
        traced.contains("action=revoke") && traced.contains("actor=\"alice\""),
        "{traced}"
    );
    assert!(traced.contains("outcome=\"not_allowed\""), "{traced}");
    // ...inside spans: one per check (with its kind) and per management call.
    assert!(traced.contains("keyward.verify{kind=\"key\"}"), "{traced}");
    assert!(
        traced.contains("keyward.verify{kind=\"session\"}"),
        "{traced}"
    );
    assert!(
        traced.contains("keyward.manage{actor=\"alice\" action=create"),
        "{traced}"
    );
    l.print(traced);

    // ...and nothing that could be used to authenticate.
    // Five tokens (created, wrong, regenerated, successor, session) with
    // every window of their secrets, besides imported secrets and hashes.
    let windows = keyward::TokenFormat::SECRET_LEN - WINDOW + 1;
    assert!(
        l.secrets.len() > 5 * windows,
        "the ledger collected the secrets"
    );
    for secret in &l.secrets {
        assert!(
            secret.len() >= WINDOW,
            "too short to be a meaningful probe: {secret}"
        );
        for (i, printed) in l.printed.iter().enumerate() {
            assert!(
                !printed.contains(secret.as_str()),
                "output #{i} contains a secret or hash: {printed}"
            );
        }
    }
}

async fn life_cycle(l: &mut Ledger) {
    let store = Arc::new(MemoryStore::new());
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .audit_shared(audit.clone())
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let admin = Actor::administrator("alice", OwnerId::new(OWNER).unwrap());
    let live = Environment::new("live").unwrap();
    let registry = registry();
    let push = registry.get("package:push").unwrap();
    let req = VerifyRequest::new(&live, push).resource(OWNER, "Contoso.Tools");

    // Create.
    let created = manager
        .create(
            &admin,
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::only(["package:push"]))
                .ip_allowlist(["10.0.0.0/8"]),
        )
        .await
        .unwrap();
    l.token(&created.token);
    l.debug(&created);
    l.print(format!("{}", created.token));
    l.print(serde_json::to_string(&created.key).unwrap());
    let id = created.key.id.clone();
    let record = store.get(&id).await.unwrap().unwrap();
    l.hash(record.secret_hash.as_str());
    l.debug(&record);
    l.debug(&record.secret_hash);

    // Parse and verify, good and bad.
    let parsed = format().parse(created.token.expose_secret()).unwrap();
    l.debug(&parsed);
    let ok = manager
        .verify(
            created.token.expose_secret(),
            &req.client_ip("10.1.2.3".parse().unwrap()),
        )
        .await
        .unwrap();
    l.debug(&ok);
    let wrong = format()
        .from_pair(
            &live,
            parsed.key_id(),
            &"B".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    l.token(&wrong);
    for _ in 0..12 {
        let denial = manager
            .verify(wrong.expose_secret(), &req)
            .await
            .unwrap_err();
        l.error(&denial);
        l.debug(&denial.reason);
    }
    let mut typo = created.token.expose_secret().to_owned();
    // A different last character (the checksum's), whatever it was.
    let last = typo.pop();
    typo.push(if last == Some('x') { 'y' } else { 'x' });
    l.secrets.push(typo.clone());
    l.error(&manager.verify(&typo, &req).await.unwrap_err());
    l.error(&format().parse(&typo).unwrap_err());
    l.error(
        &manager
            .verify(created.token.expose_secret(), &req)
            .await
            .unwrap_err(),
    ); // no client IP

    // Sessions.
    let session = manager
        .exchange(
            created.token.expose_secret(),
            &live,
            None,
            Some("10.1.2.3".parse().unwrap()),
        )
        .await
        .unwrap();
    let session_hex = l.session_token(&session.token);
    let session_record = store
        .get_session(&session.session.id)
        .await
        .unwrap()
        .unwrap();
    let stored_hex: String = session_record
        .secret_hash
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored_hex, session_hex, "the stored session hash is probed");
    l.debug(&session_record);
    l.debug(&session_record.secret_hash);
    l.debug(&session);
    l.print(serde_json::to_string(&session.session).unwrap());
    let refused = manager
        .exchange(session.token.expose_secret(), &live, None, None)
        .await
        .unwrap_err();
    l.error(&refused);

    // Regenerate, rotate, import, suspend, revoke, and refusals.
    let regenerated = manager.regenerate(&admin, &id).await.unwrap();
    l.token(&regenerated.token);
    l.debug(&regenerated);
    l.hash(store.get(&id).await.unwrap().unwrap().secret_hash.as_str());
    let rotated = manager
        .rotate(&admin, &id, Duration::from_secs(3600))
        .await
        .unwrap();
    l.token(&rotated.successor.token);
    l.debug(&rotated);
    let successor = store.get(&rotated.successor.key.id).await.unwrap().unwrap();
    l.hash(successor.secret_hash.as_str());

    let imported_secret = "cioImportedSecretValue0123456789";
    let hex = sha256_hex(imported_secret);
    l.secret(imported_secret);
    l.secrets.push(hex.clone());
    let import = ImportKey::scoped("Imported1", OWNER, "live", "old", hex.clone())
        .permissions(PermissionGrant::only(["package:push"]));
    l.debug(&import);
    l.debug(&manager.import(&admin, import).await.unwrap());
    l.error(
        &manager
            .import(
                &admin,
                ImportKey::legacy("Imported1", OWNER, "live", "dup", hex.clone()),
            )
            .await
            .unwrap_err(),
    );
    l.debug(
        &manager
            .verify_pair("Imported1", imported_secret, &req)
            .await
            .unwrap(),
    );
    let wrong_pair_secret = "not-the-secret-at-all";
    l.secret(wrong_pair_secret);
    l.error(
        &manager
            .verify_pair("Imported1", wrong_pair_secret, &req)
            .await
            .unwrap_err(),
    );
    let upgraded = store
        .get(&KeyId::new("Imported1").unwrap())
        .await
        .unwrap()
        .unwrap();
    l.hash(upgraded.secret_hash.as_str());

    l.debug(&manager.suspend(&admin, &id).await.unwrap());
    l.error(
        &manager
            .verify(regenerated.token.expose_secret(), &req)
            .await
            .unwrap_err(),
    );
    let outsider = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
    l.error(&manager.revoke(&outsider, &id).await.unwrap_err());
    l.debug(&manager.revoke_compromised(&admin, &id).await.unwrap());
    l.error(&manager.revoke(&admin, &id).await.unwrap_err());
    l.error(
        &manager
            .verify(regenerated.token.expose_secret(), &req)
            .await
            .unwrap_err(),
    );
    l.error(
        &manager
            .verify_session(session.token.expose_secret(), &req)
            .await
            .unwrap_err(),
    );
    l.error(
        &manager
            .create(
                &admin,
                NewKey::new(OWNER, "live", "x").permissions(PermissionGrant::only(["nope"])),
            )
            .await
            .unwrap_err(),
    );

    // The audit trail and listings.
    manager.flush().await.unwrap();
    for event in audit.events() {
        l.debug(&event);
        l.print(serde_json::to_string(&event).unwrap());
    }
    for key in manager
        .list(&admin, ListQuery::new(OwnerId::new(OWNER).unwrap()))
        .await
        .unwrap()
    {
        l.print(serde_json::to_string(&key).unwrap());
        l.debug(&key);
    }
    l.debug(&manager);
    l.debug(&manager.verifier());
}
