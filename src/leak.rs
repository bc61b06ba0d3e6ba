//! Leaked keys (feature `leak-reports`): reports from a secret scanner
//! (GitHub's secret scanning partner program) checked, proven, revoked and
//! answered.
//!
//! When GitHub finds a string matching the application's
//! [`scanner_regex`](crate::TokenFormat::scanner_regex) in public code, it
//! POSTs a JSON array of `{"token", "type", "url", "source"}` objects,
//! signed with ECDSA P-256 (headers `Github-Public-Key-Identifier` and
//! `Github-Public-Key-Signature`). [`KeyManager::handle_leak_report`](crate::KeyManager::handle_leak_report):
//!
//! 1. refuses a body over [`LeakReports::max_body_len`], then a missing,
//!    malformed, unknown-key or wrong signature ([`ScannerKeys::verify`])
//!    before reading a single entry;
//! 2. parses the array, refusing more than [`LeakReports::max_entries`]
//!    tokens before any store read;
//! 3. for each distinct token: a token not in the application's
//!    [`TokenFormat`](crate::TokenFormat) is a `false_positive` with no
//!    store read; otherwise the key is read and the token proven to be its
//!    *current* secret (argon2, on keyward's hashing threads, one at a
//!    time). A key that does not exist, of another environment, or whose
//!    secret differs (regenerated, or a forged token with a valid id and
//!    checksum) is a `false_positive`, and nothing changes: **a report
//!    never revokes a key without its secret**;
//! 4. a proven key is revoked (bypassing the
//!    [`ManagementPolicy`](crate::ManagementPolicy): the secret is the
//!    proof), audited as [`AuditAction::Revoked`](crate::AuditAction::Revoked)
//!    by the actor [`LeakReports::ACTOR`] with the scanner's type, source and
//!    URL in the detail (never the token), dropped from the verifier cache,
//!    its owner told through the [`LeakNotifier`], and its sessions ended;
//! 5. answers one [`TokenLabel`] per entry, in the report's order, with the
//!    token's SHA-256 in hex: serialize the `Vec` as the response body.
//!
//! A key already revoked whose secret matches is a `true_positive` with no
//! change, no audit event and no second notification (its sessions are
//! ended again, which changes nothing once they are): a report sent twice
//! gets the same answer and changes nothing the second time. A token
//! repeated within one report is proven once and answered at each of its
//! entries.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use base64::Engine;
//! use keyward::leak::{LeakLabel, LeakNotice, LeakReports, ScannerKeys};
//! use keyward::*;
//! use p256::ecdsa::{Signature, SigningKey, signature::Signer};
//! use p256::pkcs8::{EncodePublicKey, LineEnding};
//!
//! let registry = PermissionRegistry::builder().permission("package:push").build()?;
//! let manager = KeyManager::builder(
//!     MemoryStore::new(),
//!     TokenFormat::new("mkh", &["live"])?,
//!     Policy::new(registry),
//! )
//! # .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
//! .build()?;
//! let admin = Actor::administrator("alice", OwnerId::new("contoso")?);
//! let created = manager
//!     .create(&admin, NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::All))
//!     .await?;
//!
//! // At startup: the scanner's public keys, as the application fetched them.
//! // (Here a key made up for the example stands in for GitHub's.)
//! let github = SigningKey::from_slice(&[7; 32])?;
//! let pem = github.verifying_key().to_public_key_pem(LineEnding::LF)?;
//! let document = serde_json::json!({"public_keys": [
//!     {"key_identifier": "k1", "key": pem, "is_current": true}
//! ]});
//! let keys = ScannerKeys::from_github_json(document.to_string().as_bytes())?;
//! let reports = LeakReports::new(keys).notifier(|notice: LeakNotice| async move {
//!     // Queue an e-mail to the owner.
//!     assert_eq!(notice.owner.as_str(), "contoso");
//! });
//!
//! // A report arrives: the raw body and the two headers.
//! let body = serde_json::json!([{
//!     "token": created.token.expose_secret(),
//!     "type": "mkh_api_key",
//!     "url": "https://github.com/octocat/hello/blob/main/ci.yml",
//!     "source": "content",
//! }])
//! .to_string();
//! let signature: Signature = github.sign(body.as_bytes());
//! let signature = base64::engine::general_purpose::STANDARD.encode(signature.to_der());
//!
//! let labels = manager
//!     .handle_leak_report(&reports, Some("k1"), Some(&signature), body.as_bytes())
//!     .await?;
//! assert_eq!(labels[0].label, LeakLabel::TruePositive);
//! assert_eq!(labels[0].token_hash.len(), 64);
//! let view = manager.get(&admin, &created.key.id).await?;
//! assert_eq!(view.status, KeyStatus::Revoked);
//! // The response body: [{"token_hash": "..", "token_type": "mkh_api_key", "label": "true_positive"}]
//! let answer = serde_json::to_string(&labels)?;
//! assert!(answer.contains(r#""label":"true_positive""#));
//!
//! // A forged body, or the right body with no signature, is refused unread.
//! let forged = manager
//!     .handle_leak_report(&reports, Some("k1"), None, body.as_bytes())
//!     .await;
//! assert_eq!(forged.unwrap_err(), keyward::leak::LeakReportError::MissingSignature);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! **Time**: each token of the application's format whose key exists costs
//! one argon2 check (tens of milliseconds with production parameters), one
//! after the other, so a report of [`LeakReports::max_entries`] such tokens
//! may take that many times longer. GitHub waits 30 seconds; lower the
//! bound if argon2 is slow. A report that fails on the way (the store, a
//! full argon2 queue: [`LeakReportError::is_retryable`]) may have revoked
//! some of its keys; sent again, it finishes the rest and answers the same.
//!
//! **Session tokens** are not in the key format, so they are answered
//! `false_positive`; they expire within minutes, and revoking a leaked
//! key ends them.

mod error;
mod keys;
mod report;

pub use error::LeakReportError;
pub use keys::{ScannerKeyError, ScannerKeyErrorKind, ScannerKeys};
pub use report::{LeakLabel, LeakNotice, LeakNotifier, LeakReports, TokenLabel};

pub(crate) use report::{ReportedToken, parse_report};
