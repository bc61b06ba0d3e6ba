//! [`LeakReports`]: the settings of the leak-report handler, the report's
//! entries as parsed, the answer ([`TokenLabel`]) and the owner
//! notification hook ([`LeakNotifier`]).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::error::LeakReportError;
use super::keys::ScannerKeys;
use crate::audit::BoxFuture;
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};

/// What a reported token turned out to be, in the words the scanner
/// expects (`"true_positive"`, `"false_positive"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakLabel {
    /// The token is the current secret of a stored key: the key is (now)
    /// revoked.
    TruePositive,
    /// Not a key of this application: another format or environment, no
    /// such key, or not its current secret. Nothing was changed.
    FalsePositive,
}

/// The answer for one reported token, as GitHub's partner program reads
/// it: `{"token_hash": "<hex SHA-256 of the token>", "token_type": "..",
/// "label": "true_positive"}`. The token itself is never sent back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLabel {
    /// The lowercase hex SHA-256 of the token as reported.
    pub token_hash: String,
    /// The `type` the scanner gave the token, echoed.
    pub token_type: String,
    /// What it was.
    pub label: LeakLabel,
}

/// What a [`LeakNotifier`] is told about a key just revoked as leaked.
/// Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakNotice {
    /// The key's owner: whom to tell.
    pub owner: OwnerId,
    /// The key.
    pub key_id: KeyId,
    /// The key's name, as its owner gave it.
    pub key_name: String,
    /// The key's environment.
    pub environment: Environment,
    /// When it was revoked.
    pub revoked_at: DateTime<Utc>,
    /// Where the scanner found it (may be empty), at most
    /// [`LeakNotice::MAX_URL_LEN`] bytes.
    pub url: String,
    /// Where on the scanner's side (`commit`, `content`, `issue_comment`, `npm`, ...),
    /// at most [`LeakNotice::MAX_FIELD_LEN`] bytes.
    pub source: String,
    /// The scanner's name for the token's pattern, at most
    /// [`LeakNotice::MAX_FIELD_LEN`] bytes.
    pub token_type: String,
}

/// Tells a key's owner that it leaked and was revoked: called once per key
/// newly revoked by a leak report, after the revocation is stored and
/// audited, before the report is answered. Keep it short (queue an e-mail
/// rather than send it): the scanner waits for the answer (GitHub: 30
/// seconds for the whole report). Its failures are its own: the key stays
/// revoked.
///
/// Any `Fn(LeakNotice) -> impl Future<Output = ()>` is a notifier:
///
/// ```
/// use keyward::leak::{LeakNotice, LeakReports, ScannerKeys};
/// let reports = LeakReports::new(ScannerKeys::new()).notifier(|notice: LeakNotice| async move {
///     println!("tell {}: key {} leaked at {}", notice.owner, notice.key_id, notice.url);
/// });
/// # let _ = reports;
/// ```
pub trait LeakNotifier: Send + Sync {
    /// The key in `notice` was revoked as leaked.
    fn key_leaked(&self, notice: LeakNotice) -> BoxFuture<'_, ()>;
}

impl<F, Fut> LeakNotifier for F
where
    F: Fn(LeakNotice) -> Fut + Send + Sync,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn key_leaked(&self, notice: LeakNotice) -> BoxFuture<'_, ()> {
        Box::pin(self(notice))
    }
}

/// The settings of leak reports from a secret scanner (GitHub's partner
/// program): the scanner's public keys, the owner-notification hook and
/// the bounds. Hand it to
/// [`KeyManager::handle_leak_report`](crate::KeyManager::handle_leak_report),
/// or to `keyward::axum::leak_report_route` (features `axum` and
/// `leak-reports`).
pub struct LeakReports {
    keys: RwLock<Arc<ScannerKeys>>,
    notifier: Option<Arc<dyn LeakNotifier>>,
    max_body_len: usize,
    max_entries: usize,
}

impl fmt::Debug for LeakReports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakReports")
            .field("keys", &self.keys())
            .field("notifier", &self.notifier.is_some())
            .field("max_body_len", &self.max_body_len)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl LeakReports {
    /// The default largest body read: 256 KiB.
    pub const DEFAULT_MAX_BODY_LEN: usize = 256 * 1024;
    /// The default most tokens in one report: 1,000.
    pub const DEFAULT_MAX_ENTRIES: usize = 1000;
    /// The actor id leak revocations are audited under.
    pub const ACTOR: &'static str = "secret-scanning";

    /// Reports signed by one of `keys`, with the default bounds and no
    /// notifier.
    pub fn new(keys: ScannerKeys) -> Self {
        Self {
            keys: RwLock::new(Arc::new(keys)),
            notifier: None,
            max_body_len: Self::DEFAULT_MAX_BODY_LEN,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
        }
    }

    /// Calls `notifier` once for each key a report newly revokes.
    pub fn notifier(mut self, notifier: impl LeakNotifier + 'static) -> Self {
        self.notifier = Some(Arc::new(notifier));
        self
    }

    /// Refuses bodies longer than `max` bytes
    /// ([`LeakReportError::BodyTooLarge`]; at least 2).
    pub fn max_body_len(mut self, max: usize) -> Self {
        self.max_body_len = max.max(2);
        self
    }

    /// Refuses reports of more than `max` tokens
    /// ([`LeakReportError::TooManyEntries`]; at least 1). Each token of
    /// this application's format whose key exists costs one argon2 check,
    /// one after the other, so `max` times the argon2 time should fit in
    /// the scanner's timeout (GitHub: 30 seconds).
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }

    /// The largest body read.
    pub fn body_limit(&self) -> usize {
        self.max_body_len
    }

    /// The most tokens in one report.
    pub fn entry_limit(&self) -> usize {
        self.max_entries
    }

    /// The scanner keys in use.
    pub fn keys(&self) -> Arc<ScannerKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the scanner keys (after fetching the scanner's document
    /// again: a report naming an unknown key identifier is the sign);
    /// reports being handled keep the keys they started with.
    pub fn set_keys(&self, keys: ScannerKeys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    pub(crate) fn notifier_hook(&self) -> Option<&dyn LeakNotifier> {
        self.notifier.as_deref()
    }
}

/// One token of a report, as parsed. `Debug` never shows the token.
pub(crate) struct ReportedToken {
    pub(crate) token: Zeroizing<String>,
    pub(crate) token_type: String,
    pub(crate) url: String,
    pub(crate) source: String,
}

impl fmt::Debug for ReportedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportedToken")
            .field("token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

impl LeakNotice {
    /// The longest `url` kept for the audit trail and the notifier (longer
    /// ones are cut at a character boundary).
    pub const MAX_URL_LEN: usize = 2048;
    /// The longest `type` and `source` kept for the audit trail and the
    /// notifier.
    pub const MAX_FIELD_LEN: usize = 128;
}

impl ReportedToken {
    /// The lowercase hex SHA-256 of the token, as the scanner expects.
    pub(crate) fn hash_hex(&self) -> String {
        hex_lower(&Sha256::digest(self.token.as_bytes()))
    }

    pub(crate) fn url_cut(&self) -> String {
        cut(&self.url, LeakNotice::MAX_URL_LEN)
    }

    pub(crate) fn source_cut(&self) -> String {
        cut(&self.source, LeakNotice::MAX_FIELD_LEN)
    }

    pub(crate) fn type_cut(&self) -> String {
        cut(&self.token_type, LeakNotice::MAX_FIELD_LEN)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary, with control
/// characters dropped (it goes to audit rows and e-mails).
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[derive(Deserialize)]
struct RawEntry {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// Reads the array, refusing it at entry `max + 1` (so a huge report
/// costs no more than `max` entries of memory).
struct Bounded<'a> {
    max: usize,
    exceeded: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Vec<ReportedToken>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Vec<ReportedToken>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of token objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = seq.next_element::<RawEntry>()? {
            if out.len() == self.max {
                self.exceeded.set(true);
                return Err(A::Error::custom("too many entries"));
            }
            out.push(ReportedToken {
                token: Zeroizing::new(e.token),
                token_type: e.token_type,
                url: e.url,
                source: e.source,
            });
        }
        Ok(out)
    }
}

/// Parses a report body (already size-checked and signature-checked).
pub(crate) fn parse_report(
    body: &[u8],
    max_entries: usize,
) -> Result<Vec<ReportedToken>, LeakReportError> {
    let exceeded = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = Bounded {
        max: max_entries,
        exceeded: &exceeded,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| {
        if exceeded.get() {
            LeakReportError::TooManyEntries { max: max_entries }
        } else {
            LeakReportError::MalformedReport {
                line: e.line(),
                column: e.column(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_optional_fields_and_a_bound() {
        let body =
            br#"[{"token":"a","type":"t","url":"u","source":"commit"},{"token":"b","extra":1}]"#;
        let parsed = parse_report(body, 2).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(&*parsed[0].token, "a");
        assert_eq!(parsed[1].url, "");
        assert_eq!(
            parse_report(body, 1).unwrap_err(),
            LeakReportError::TooManyEntries { max: 1 }
        );
        assert_eq!(parse_report(b"[]", 1).unwrap().len(), 0);
        for bad in [
            &b"{}"[..],
            b"[",
            b"[{\"type\":\"t\"}]",
            b"[\"mkh_live_secret\"]",
            b"[{\"token\":5}]",
            b"[] []",
            b"",
        ] {
            let e = parse_report(bad, 10).unwrap_err();
            assert!(
                matches!(e, LeakReportError::MalformedReport { .. }),
                "{e:?}"
            );
            assert!(!e.to_string().contains("secret"));
        }
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256_and_fields_are_cut_safely() {
        let t = ReportedToken {
            token: Zeroizing::new("abc".into()),
            token_type: "é".repeat(100),
            url: String::new(),
            source: "a\nb".into(),
        };
        assert_eq!(
            t.hash_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(t.type_cut().len(), 128);
        assert_eq!(t.source_cut(), "ab");
        assert!(!format!("{t:?}").contains("abc"));
    }
}
