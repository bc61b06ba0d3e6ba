//! Refusals: [`Denial`], its [`DenialReason`] and the [`DenialKind`] a
//! caller is told.

use std::fmt;
use std::time::Duration;

use crate::ids::KeyId;
use crate::token::TokenError;

/// Whether a denial is about who the caller is, what they may do, a flood,
/// or keyward not being able to decide. Maps to HTTP 401, 403, 429 and 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialKind {
    /// The credential is not valid here (HTTP 401).
    Authentication,
    /// The credential is valid but does not allow this request (HTTP 403).
    Authorization,
    /// Too many failed attempts for this key (HTTP 429).
    Throttled,
    /// The store failed or a record is unusable; denied to be safe (HTTP 503).
    Unavailable,
}

/// Why a request was refused. Kept whole for the audit trail; tell the
/// caller only its [`DenialKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenialReason {
    /// The token did not parse (no store access, no hashing).
    Malformed(TokenError),
    /// The token belongs to another environment (no store access).
    WrongEnvironment,
    /// No key has this id.
    UnknownKey,
    /// The secret is wrong.
    WrongSecret,
    /// The key is revoked (told only after the secret was proven).
    Revoked,
    /// The key has expired, or was unused longer than the idle-expiry
    /// policy allows (told only after the secret was proven).
    Expired,
    /// The key is suspended by its owner (told only after the secret was
    /// proven); reversible, unlike [`DenialReason::Revoked`].
    Suspended,
    /// The client's address is not in the key's allowlist (or unknown).
    IpNotAllowed,
    /// Too many wrong secrets for this key id recently.
    Throttled,
    /// The key lacks the permission.
    PermissionMissing,
    /// The operation is session-only: no key may perform it.
    SessionOnly,
    /// The resource belongs to another owner.
    OtherOwner,
    /// The resource is outside the key's selection.
    ResourceOutOfScope,
    /// The store failed; denied to be safe.
    StoreUnavailable,
    /// Too many checks are waiting for argon2; refused at once rather than
    /// queued (see [`VerifierConfig::max_hash_queue`](crate::verify::VerifierConfig::max_hash_queue)); try
    /// again after
    /// [`Denial::retry_after`].
    Overloaded,
    /// The stored record or hash could not be used; denied to be safe.
    CorruptRecord,
}

impl DenialReason {
    /// The class of the denial.
    pub fn kind(&self) -> DenialKind {
        use DenialReason::*;
        match self {
            Malformed(_) | WrongEnvironment | UnknownKey | WrongSecret | Revoked | Expired
            | Suspended | IpNotAllowed => DenialKind::Authentication,
            PermissionMissing | SessionOnly | OtherOwner | ResourceOutOfScope => {
                DenialKind::Authorization
            }
            Throttled => DenialKind::Throttled,
            StoreUnavailable | CorruptRecord | Overloaded => DenialKind::Unavailable,
        }
    }

    /// A short stable code for logs and metrics (`wrong_secret`, `revoked`, ...).
    pub fn code(&self) -> &'static str {
        use DenialReason::*;
        match self {
            Malformed(_) => "malformed",
            WrongEnvironment => "wrong_environment",
            UnknownKey => "unknown_key",
            WrongSecret => "wrong_secret",
            Revoked => "revoked",
            Expired => "expired",
            Suspended => "suspended",
            IpNotAllowed => "ip_not_allowed",
            Throttled => "throttled",
            PermissionMissing => "permission_missing",
            SessionOnly => "session_only",
            OtherOwner => "other_owner",
            ResourceOutOfScope => "resource_out_of_scope",
            StoreUnavailable => "store_unavailable",
            Overloaded => "overloaded",
            CorruptRecord => "corrupt_record",
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::Malformed(e) => write!(f, "malformed token: {e}"),
            other => f.write_str(other.code()),
        }
    }
}

/// A refused request: the reason, and the key id when the token named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub reason: DenialReason,
    /// The key id the token named (when it parsed).
    pub key_id: Option<KeyId>,
    /// For [`DenialReason::Throttled`] and [`DenialReason::Overloaded`]:
    /// when a new attempt may be made.
    pub retry_after: Option<Duration>,
}

impl Denial {
    pub(crate) fn new(reason: DenialReason, key_id: Option<&str>) -> Self {
        Self {
            reason,
            key_id: key_id.and_then(|id| KeyId::new(id).ok()),
            retry_after: None,
        }
    }

    /// The class of the denial.
    pub fn kind(&self) -> DenialKind {
        self.reason.kind()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key_id {
            Some(id) => write!(f, "key {id} denied: {}", self.reason),
            None => write!(f, "denied: {}", self.reason),
        }
    }
}

impl std::error::Error for Denial {}
