//! [`LeakReportError`]: why a leak report was refused or not finished.

use crate::hash::HashError;

use crate::ids::KeyId;
use crate::store::StoreError;

/// Why a leak report was refused, or could not be finished.
///
/// The refusals (everything up to [`TooManyEntries`](Self::TooManyEntries))
/// happen before any store read or change. The others
/// ([`Store`](Self::Store), [`Hashing`](Self::Hashing),
/// [`SessionsNotEnded`](Self::SessionsNotEnded)) may come after some
/// tokens of the report were handled: the report is idempotent, so the
/// scanner (or the application) sends it again and the same answer comes
/// back, finishing what was left. No error ever holds a reported token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeakReportError {
    /// The body is longer than the configured maximum
    /// ([`LeakReports::max_body_len`](super::LeakReports::max_body_len)).
    #[error("the report is {len} bytes long, more than the maximum of {max}")]
    BodyTooLarge {
        /// The body's length (at least `max + 1` when read with a bound).
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// No `Github-Public-Key-Identifier` header (or an empty one).
    #[error("the report names no signing key (Github-Public-Key-Identifier)")]
    MissingKeyIdentifier,
    /// No `Github-Public-Key-Signature` header (or an empty one).
    #[error("the report is not signed (Github-Public-Key-Signature)")]
    MissingSignature,
    /// The report names a signing key that is not configured: fetch the
    /// scanner's public keys again (it may have rotated them).
    #[error("the report names an unknown signing key {0:?}")]
    UnknownKeyIdentifier(String),
    /// The signature is not base64 of an ASN.1 DER ECDSA signature.
    #[error("the report's signature is not base64 of a DER ECDSA signature")]
    MalformedSignature,
    /// The signature does not match the body under the named key.
    #[error("the report's signature does not match its body")]
    BadSignature,
    /// The body is not a JSON array of `{"token", "type", "url", "source"}`
    /// objects. Only the position is kept: a parser's message could quote
    /// a token.
    #[error("the report is not a JSON array of token objects (line {line}, column {column})")]
    MalformedReport {
        /// Where the parser stopped (1-based).
        line: usize,
        /// Where the parser stopped (1-based).
        column: usize,
    },
    /// The report holds more entries than the configured maximum
    /// ([`LeakReports::max_entries`](super::LeakReports::max_entries));
    /// nothing was read or revoked.
    #[error("the report holds more than {max} tokens")]
    TooManyEntries {
        /// The maximum.
        max: usize,
    },
    /// The store failed: retry the report.
    #[error("the key store failed: {0}")]
    Store(StoreError),
    /// A secret could not be checked (the argon2 queue is full, or hashing
    /// failed): retry the report.
    #[error("a reported token could not be checked: {0}")]
    Hashing(HashError),
    /// Key `id` is revoked, but its sessions could not be ended: retry the
    /// report (a key already revoked has its sessions ended again).
    #[error("key {id} is revoked as leaked, but its sessions could not be ended: {source}")]
    SessionsNotEnded {
        /// The key.
        id: KeyId,
        /// The store's error.
        source: StoreError,
    },
}

impl LeakReportError {
    /// A stable code for logs and response bodies (`bad_signature`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::MissingKeyIdentifier => "missing_key_identifier",
            Self::MissingSignature => "missing_signature",
            Self::UnknownKeyIdentifier(_) => "unknown_key_identifier",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::MalformedReport { .. } => "malformed_report",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::Store(_) => "store_unavailable",
            Self::Hashing(_) => "overloaded",
            Self::SessionsNotEnded { .. } => "sessions_not_ended",
        }
    }

    /// Whether the report was refused as not coming from the scanner (a
    /// missing, unknown or wrong signature): nothing in it was read.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::MissingKeyIdentifier
                | Self::MissingSignature
                | Self::UnknownKeyIdentifier(_)
                | Self::MalformedSignature
                | Self::BadSignature
        )
    }

    /// Whether sending the same report again later may succeed (the store
    /// or the hashing threads were unavailable, sessions not ended).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Hashing(_) | Self::SessionsNotEnded { .. }
        )
    }
}
