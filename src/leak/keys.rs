//! [`ScannerKeys`]: the public keys a secret scanner signs its reports
//! with, and the signature check.

use std::fmt;

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use super::error::LeakReportError;

/// What was wrong with a scanner public key or the document listing them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScannerKeyErrorKind {
    /// The document is longer than [`ScannerKeys::MAX_DOCUMENT_LEN`].
    #[error("the key document is {len} bytes long, more than the maximum of {max}")]
    DocumentTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The document is not `{"public_keys": [{"key_identifier", "key", ...}]}`.
    #[error("the key document is not JSON of the expected shape (line {line}, column {column})")]
    BadDocument {
        /// Where the parser stopped (1-based).
        line: usize,
        /// Where the parser stopped (1-based).
        column: usize,
    },
    /// The document lists no key.
    #[error("the key document lists no public key")]
    NoKeys,
    /// More keys than [`ScannerKeys::MAX_KEYS`].
    #[error("more than {max} public keys")]
    TooManyKeys {
        /// The maximum.
        max: usize,
    },
    /// An identifier that is empty, longer than
    /// [`ScannerKeys::MAX_KEY_IDENTIFIER_LEN`] or not printable ASCII.
    #[error("the key identifier is empty, too long or not printable ASCII")]
    BadIdentifier,
    /// Two keys with one identifier.
    #[error("the key identifier is listed twice")]
    DuplicateIdentifier,
    /// The key is not a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of a NIST
    /// P-256 key.
    #[error("the key is not a PEM SubjectPublicKeyInfo of a P-256 (ECDSA) public key")]
    NotP256,
}

/// A scanner public key, or the document listing them, was refused: which
/// key (when one was named) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scanner public key{}: {kind}", .key_identifier.as_deref().map(|k| format!(" {k:?}")).unwrap_or_default())]
pub struct ScannerKeyError {
    /// The key identifier concerned (cut to
    /// [`ScannerKeys::MAX_KEY_IDENTIFIER_LEN`] characters), when there is one.
    pub key_identifier: Option<String>,
    /// What was wrong.
    pub kind: ScannerKeyErrorKind,
}

impl ScannerKeyError {
    fn new(key_identifier: Option<&str>, kind: ScannerKeyErrorKind) -> Self {
        Self {
            key_identifier: key_identifier.map(|k| {
                k.chars()
                    .take(ScannerKeys::MAX_KEY_IDENTIFIER_LEN)
                    .collect()
            }),
            kind,
        }
    }
}

struct ScannerKey {
    identifier: String,
    key: VerifyingKey,
    current: bool,
}

/// The public keys a secret scanner (GitHub's partner program) signs its
/// leak reports with, by key identifier: built from the JSON document the
/// scanner publishes ([`ScannerKeys::from_github_json`]) or key by key
/// ([`ScannerKeys::with_pem`]). keyward fetches nothing: the application
/// downloads the document (GitHub's `meta/public_keys/secret_scanning`),
/// at startup and again when a report names an identifier it does not
/// know, and hands it over.
///
/// A report is accepted when it is signed by any listed key, current or
/// not: the scanner lists a key it is retiring until its signatures stop.
///
/// ```
/// use keyward::leak::ScannerKeys;
/// let document = r#"{"public_keys": [{
///     "key_identifier": "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
///     "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHV65haS2QIkDXT+DjJzKxluoT9Cg\nD9MfHhRWpW4rvqjj5fRlQ4dIbQITCtIecZDrJ7V11FLhiVAqaHmufuHXiA==\n-----END PUBLIC KEY-----\n",
///     "is_current": true
/// }]}"#;
/// let keys = ScannerKeys::from_github_json(document.as_bytes()).unwrap();
/// assert_eq!(keys.len(), 1);
/// assert!(keys.contains("90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"));
/// ```
#[derive(Default)]
pub struct ScannerKeys {
    keys: Vec<ScannerKey>,
}

impl fmt::Debug for ScannerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.identifier))
            .finish()
    }
}

#[derive(Deserialize)]
struct Document {
    public_keys: Vec<DocumentKey>,
}

#[derive(Deserialize)]
struct DocumentKey {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

impl ScannerKeys {
    /// The longest key document [`ScannerKeys::from_github_json`] reads.
    pub const MAX_DOCUMENT_LEN: usize = 64 * 1024;
    /// The most keys held.
    pub const MAX_KEYS: usize = 32;
    /// The longest key identifier (GitHub's are 64 hex digits).
    pub const MAX_KEY_IDENTIFIER_LEN: usize = 128;
    /// The longest `Github-Public-Key-Signature` value read: base64 of a
    /// DER signature, at most 72 bytes for P-256, is 96 characters.
    pub const MAX_SIGNATURE_LEN: usize = 128;

    /// No keys: every report is refused until one is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the document a scanner publishes,
    /// `{"public_keys": [{"key_identifier": "..", "key": "-----BEGIN PUBLIC KEY-----..", "is_current": true}]}`
    /// (other fields are ignored).
    ///
    /// # Errors
    ///
    /// [`ScannerKeyErrorKind::DocumentTooLarge`] beyond
    /// [`MAX_DOCUMENT_LEN`](Self::MAX_DOCUMENT_LEN);
    /// [`BadDocument`](ScannerKeyErrorKind::BadDocument) when it is not
    /// JSON of that shape; [`NoKeys`](ScannerKeyErrorKind::NoKeys) for an
    /// empty list; and each error of [`ScannerKeys::with_pem`], naming the
    /// key.
    pub fn from_github_json(document: &[u8]) -> Result<Self, ScannerKeyError> {
        if document.len() > Self::MAX_DOCUMENT_LEN {
            return Err(ScannerKeyError::new(
                None,
                ScannerKeyErrorKind::DocumentTooLarge {
                    len: document.len(),
                    max: Self::MAX_DOCUMENT_LEN,
                },
            ));
        }
        let parsed: Document = serde_json::from_slice(document).map_err(|e| {
            ScannerKeyError::new(
                None,
                ScannerKeyErrorKind::BadDocument {
                    line: e.line(),
                    column: e.column(),
                },
            )
        })?;
        if parsed.public_keys.is_empty() {
            return Err(ScannerKeyError::new(None, ScannerKeyErrorKind::NoKeys));
        }
        let mut keys = Self::new();
        for k in parsed.public_keys {
            keys = keys.add(&k.key_identifier, &k.key, k.is_current)?;
        }
        Ok(keys)
    }

    /// Adds one key: its identifier and its PEM `PUBLIC KEY`
    /// (SubjectPublicKeyInfo) of a NIST P-256 key.
    ///
    /// # Errors
    ///
    /// [`ScannerKeyErrorKind::BadIdentifier`] for an identifier that is
    /// empty, longer than [`MAX_KEY_IDENTIFIER_LEN`](Self::MAX_KEY_IDENTIFIER_LEN)
    /// or not printable ASCII; [`DuplicateIdentifier`](ScannerKeyErrorKind::DuplicateIdentifier)
    /// for one already held; [`NotP256`](ScannerKeyErrorKind::NotP256) for
    /// a key that is not a P-256 public key in PEM;
    /// [`TooManyKeys`](ScannerKeyErrorKind::TooManyKeys) beyond
    /// [`MAX_KEYS`](Self::MAX_KEYS).
    pub fn with_pem(self, key_identifier: &str, pem: &str) -> Result<Self, ScannerKeyError> {
        self.add(key_identifier, pem, true)
    }

    fn add(mut self, identifier: &str, pem: &str, current: bool) -> Result<Self, ScannerKeyError> {
        let refuse = |kind| Err(ScannerKeyError::new(Some(identifier), kind));
        if identifier.is_empty()
            || identifier.len() > Self::MAX_KEY_IDENTIFIER_LEN
            || !identifier.bytes().all(|b| b.is_ascii_graphic())
        {
            return refuse(ScannerKeyErrorKind::BadIdentifier);
        }
        if self.contains(identifier) {
            return refuse(ScannerKeyErrorKind::DuplicateIdentifier);
        }
        if self.keys.len() >= Self::MAX_KEYS {
            return refuse(ScannerKeyErrorKind::TooManyKeys {
                max: Self::MAX_KEYS,
            });
        }
        let Ok(key) = VerifyingKey::from_public_key_pem(pem.trim()) else {
            return refuse(ScannerKeyErrorKind::NotP256);
        };
        self.keys.push(ScannerKey {
            identifier: identifier.to_owned(),
            key,
            current,
        });
        Ok(self)
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held (every report is then refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this identifier is held.
    pub fn contains(&self, key_identifier: &str) -> bool {
        self.keys.iter().any(|k| k.identifier == key_identifier)
    }

    /// The identifiers held, with whether the document marked each
    /// current (`true` for keys added with [`ScannerKeys::with_pem`]).
    pub fn identifiers(&self) -> impl Iterator<Item = (&str, bool)> {
        self.keys.iter().map(|k| (k.identifier.as_str(), k.current))
    }

    /// Checks a report's signature: `signature` (the
    /// `Github-Public-Key-Signature` header: base64 of an ASN.1 DER ECDSA
    /// signature) over the raw `body` with SHA-256, by the key named
    /// `key_identifier` (the `Github-Public-Key-Identifier` header).
    ///
    /// # Errors
    ///
    /// [`LeakReportError::MissingKeyIdentifier`] and
    /// [`MissingSignature`](LeakReportError::MissingSignature) for an
    /// absent or empty header;
    /// [`UnknownKeyIdentifier`](LeakReportError::UnknownKeyIdentifier) for
    /// an identifier not held (fetch the document again);
    /// [`MalformedSignature`](LeakReportError::MalformedSignature) when the
    /// signature is not base64 of a DER signature;
    /// [`BadSignature`](LeakReportError::BadSignature) when it does not
    /// match the body.
    pub fn verify(
        &self,
        key_identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), LeakReportError> {
        let key_identifier = key_identifier
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(LeakReportError::MissingKeyIdentifier)?;
        let signature = signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(LeakReportError::MissingSignature)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.identifier == key_identifier)
            .ok_or_else(|| {
                LeakReportError::UnknownKeyIdentifier(
                    key_identifier
                        .chars()
                        .take(Self::MAX_KEY_IDENTIFIER_LEN)
                        .collect(),
                )
            })?;
        if signature.len() > Self::MAX_SIGNATURE_LEN {
            return Err(LeakReportError::MalformedSignature);
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| LeakReportError::MalformedSignature)?;
        let signature =
            Signature::from_der(&der).map_err(|_| LeakReportError::MalformedSignature)?;
        key.key
            .verify(body, &signature)
            .map_err(|_| LeakReportError::BadSignature)
    }
}
