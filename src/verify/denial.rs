//! Refusals: [`Denial`], its [`DenialReason`] and the [`DenialKind`] a
//! caller is told.

use std::fmt;
use std::time::Duration;

use crate::ids::KeyId;
use crate::token::TokenError;
use crate::usage::{LimitName, UsageError};

/// Whether a denial is about who the caller is, what they may do, a flood,
/// a usage control, an application bug, or keyward not being able to
/// decide. Maps to HTTP 401, 403, 429, 429, 402, 500 and 503.
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
    /// A rate limit of the key is spent (HTTP 429 with `Retry-After` and
    /// the `RateLimit` header fields).
    Limited,
    /// The key's usage credits are spent (HTTP 402 Payment Required: more
    /// credits must be bought or the refill awaited; a 429 would invite
    /// clients to retry in a loop).
    Exhausted,
    /// The application asked for something its policy does not declare
    /// (a spend of an unknown limit): a bug, not the caller's fault (HTTP 500).
    Misuse,
}

/// A rate limit's state as this server sees it: for the `RateLimit`
/// header fields, in [`DenialReason::RateLimited`] and
/// [`VerifiedKey::rate_limit`](crate::VerifiedKey::rate_limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// The limit's name.
    pub name: LimitName,
    /// Requests per window.
    pub limit: u32,
    /// The window.
    pub window: Duration,
    /// Requests left now (0 on a denial). This server's view: its local
    /// tokens plus the room the store's bucket had at its last lease.
    pub remaining: u32,
    /// How long until the bucket is full again (this server's view).
    pub reset: Duration,
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
    /// A rate limit of the key is spent: the limit's state, and
    /// [`Denial::retry_after`] says when the request would pass.
    RateLimited(Box<RateLimitStatus>),
    /// The key's credits cannot cover the request's cost.
    /// [`Denial::retry_after`] is the time until the next refill, when the
    /// key has one.
    UsageExhausted,
    /// The request spends a limit the policy does not declare, a cost of
    /// 0, or too many limits: an application bug, refused whatever the key.
    BadSpend(UsageError),
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
            RateLimited(_) => DenialKind::Limited,
            UsageExhausted => DenialKind::Exhausted,
            BadSpend(_) => DenialKind::Misuse,
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
            RateLimited(_) => "rate_limited",
            UsageExhausted => "usage_exhausted",
            BadSpend(_) => "bad_spend",
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::Malformed(e) => write!(f, "malformed token: {e}"),
            DenialReason::RateLimited(s) => write!(f, "rate limit {} spent", s.name),
            DenialReason::BadSpend(e) => write!(f, "bad spend: {e}"),
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
    /// For [`DenialReason::Throttled`], [`DenialReason::Overloaded`] and
    /// [`DenialReason::RateLimited`] (and [`DenialReason::UsageExhausted`]
    /// of a key with a refill): when a new attempt may be made.
    pub retry_after: Option<Duration>,
}

impl Denial {
    #[inline]
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
