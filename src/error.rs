//! Error types.
//!
//! Every error names what was wrong (which field, which pattern, which CIDR)
//! and never carries a secret, a token or a hash: they are safe to log and to
//! show to the person who made the request.

use thiserror::Error;

use crate::token::KeyId;

/// Why a token (or a piece of one) could not be parsed.
///
/// None of the variants carries any part of the token, so the error can be
/// logged without leaking what the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token was empty.
    #[error("the token is empty")]
    Empty,
    /// The token is longer than any token this format can produce; it was not read.
    #[error("the token is {len} bytes long, more than the maximum of {max}")]
    TooLong {
        /// Length of what was received, in bytes.
        len: usize,
        /// The longest token the format accepts.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_]` (or outside the part's own alphabet).
    #[error("the token has a character that is not allowed at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// The token does not start with the application's prefix.
    #[error("the token does not start with the expected prefix")]
    BadPrefix,
    /// The environment tag is not one the application configured.
    #[error("the token names an unknown environment")]
    UnknownEnvironment,
    /// The part after the environment has the wrong length.
    #[error("the token body is {found} characters long, expected {expected}")]
    BadLength {
        /// The length the format requires.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// The CRC32 checksum does not match: a typo or a made-up string.
    #[error("the token checksum does not match")]
    BadChecksum,
}

/// A configuration value (prefix, environment, key id, owner, name) was invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// The value is empty.
    #[error("{field} is empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// The value is longer than allowed.
    #[error("{field} is {len} characters long, the maximum is {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The value holds a character it may not hold.
    #[error("{field} contains the character {ch:?}, allowed: {allowed}")]
    BadCharacter {
        /// Which field.
        field: &'static str,
        /// The first character that is not allowed.
        ch: char,
        /// A description of the allowed characters.
        allowed: &'static str,
    },
}

/// A request to create or edit a key broke the application's policy, or the
/// policy itself was built with invalid settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field such as the key name or owner is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    /// A permission name that the registry does not know.
    #[error("unknown permission {name:?}")]
    UnknownPermission {
        /// The name as given.
        name: String,
    },
    /// A permission that only an interactive session may use was requested for a key.
    #[error("permission {name:?} is session-only and can never be granted to a key")]
    SessionOnlyPermission {
        /// The permission.
        name: String,
    },
    /// The registry was given the same permission twice.
    #[error("permission {name:?} is registered twice")]
    DuplicatePermission {
        /// The permission.
        name: String,
    },
    /// The registry holds more permissions than fit in its bit set.
    #[error("at most {max} permissions can be registered")]
    TooManyPermissions {
        /// The maximum.
        max: usize,
    },
    /// A grantable permission implies a session-only one.
    #[error("permission {name:?} implies the session-only permission {implied:?}")]
    ImpliesSessionOnly {
        /// The implying permission.
        name: String,
        /// The session-only permission it names.
        implied: String,
    },
    /// A key was given an explicit but empty permission list.
    #[error("a key needs at least one permission")]
    NoPermissions,
    /// A resource name or pattern is empty.
    #[error("resource entry #{index} is empty")]
    EmptyPattern {
        /// Position of the entry in the list (0-based).
        index: usize,
    },
    /// A resource name or pattern is longer than the resource rule allows.
    #[error("resource pattern {pattern:?} is {len} characters long, the maximum is {max}")]
    PatternTooLong {
        /// The pattern (cut to the maximum length).
        pattern: String,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A resource name or pattern holds a character the application's naming rule forbids.
    #[error("resource pattern {pattern:?} contains {ch:?}, which resource names may not contain")]
    PatternBadCharacter {
        /// The pattern.
        pattern: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// globset refused the pattern (no longer produced: since keyward
    /// compiles patterns itself, every pattern that passes the character
    /// checks compiles).
    #[error("resource pattern {pattern:?} is not a valid glob: {reason}")]
    InvalidGlob {
        /// The pattern.
        pattern: String,
        /// What globset said.
        reason: String,
    },
    /// A scope of selected resources with nothing selected.
    #[error("a resource selection needs at least one name or pattern")]
    EmptySelection,
    /// More resource entries than allowed.
    #[error("{count} resource entries given, the maximum is {max}")]
    TooManyResources {
        /// How many were given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// The extra characters of a resource rule include a glob metacharacter.
    #[error("resource names may not be allowed to contain the glob character {ch:?}")]
    GlobCharInRule {
        /// The character.
        ch: char,
    },
    /// A CIDR range (or address) that could not be parsed.
    #[error("{input:?} is not a CIDR range or IP address")]
    InvalidCidr {
        /// The input, cut to 64 characters.
        input: String,
    },
    /// More CIDR ranges than allowed.
    #[error("{count} IP ranges given, the maximum is {max}")]
    TooManyCidrs {
        /// How many were given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// An expiry of this many days is not one of the policy's choices.
    #[error("an expiry of {days} days is not allowed; allowed: {allowed}")]
    ExpiryNotAllowed {
        /// The days requested.
        days: u32,
        /// The allowed choices, in words.
        allowed: String,
    },
    /// A key that never expires was requested, and the policy forbids it.
    #[error("keys that never expire are not allowed")]
    NeverNotAllowed,
    /// The expiry policy itself is inconsistent.
    #[error("invalid expiry policy: {reason}")]
    InvalidExpiryPolicy {
        /// What is wrong.
        reason: String,
    },
    /// An edit adds a permission and the edit policy does not allow widening.
    #[error("permission {name:?} cannot be added after creation")]
    PermissionWidening {
        /// The permission that would be added.
        name: String,
    },
    /// An edit makes the key live longer and the edit policy forbids it.
    #[error("the expiry of a key cannot be extended after creation")]
    ExpiryExtension,
    /// An edit adds IP ranges (widening) and the policy forbids it.
    #[error("the IP allowlist cannot be widened after creation")]
    IpWidening,
    /// The quota setting is invalid (zero).
    #[error("a quota must allow at least one key")]
    ZeroQuota,
    /// The idle-expiry setting is invalid (zero days).
    #[error("idle expiry must be at least one day")]
    ZeroIdleExpiry,
    /// A rotation grace period that is negative or too long to represent.
    #[error("the rotation grace period must be between zero and 3650 days")]
    BadGracePeriod,
    /// An expiry-reminder window that is not between 1 and 3650 days.
    #[error("the reminder window must be between 1 and 3650 days")]
    BadReminderWindow,
}

/// What went wrong when hashing or checking a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HashError {
    /// The argon2 parameters were refused.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// The stored PHC string could not be parsed or is not argon2id.
    #[error("stored hash is malformed: {0}")]
    Malformed(String),
    /// The stored hash names a pepper id the hasher was not given.
    #[error("stored hash uses pepper {0:?}, which is not configured")]
    UnknownPepper(String),
    /// A pepper id longer than argon2 allows (8 bytes) or not ASCII alphanumeric.
    #[error("pepper id must be 1 to 8 ASCII letters or digits")]
    BadPepperId,
    /// Hashing failed for another reason.
    #[error("hashing failed: {0}")]
    Failed(String),
}

/// A store could not do what was asked.
///
/// Messages from database drivers are passed on as text; stores must make sure
/// they never contain a secret (keyward never gives a store one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No record has this id.
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// A record with this id already exists.
    #[error("a key with id {0} already exists")]
    DuplicateId(KeyId),
    /// The record changed since it was read (compare-and-swap on the generation failed).
    #[error("key {id} was changed concurrently (expected generation {expected}, found {found})")]
    Conflict {
        /// The key.
        id: KeyId,
        /// The generation the caller read.
        expected: u64,
        /// The generation found in the store.
        found: u64,
    },
    /// The owner already has the maximum number of live keys in this environment.
    #[error("the owner already has {limit} live keys in this environment")]
    QuotaExceeded {
        /// The quota.
        limit: u32,
    },
    /// The key already has the maximum number of live sessions
    /// ([`SessionCap`](crate::SessionCap)); nothing was stored.
    #[error("key {key_id} already has {limit} live sessions")]
    TooManySessions {
        /// The key whose sessions are at the cap.
        key_id: KeyId,
        /// The cap.
        limit: u32,
    },
    /// A stored row could not be turned into a record.
    #[error("stored key {id} is corrupt: field {field}: {reason}")]
    Corrupt {
        /// The key.
        id: String,
        /// The field that did not parse.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The backend failed (connection lost, timeout, query error).
    #[error("store backend error: {0}")]
    Backend(String),
}

/// The error of a [`KeyManager`](crate::KeyManager) call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeywardError {
    /// The request broke the policy; nothing was stored.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A token or key id did not parse.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// No key with this id (for this owner).
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// The key is revoked; revocation is permanent.
    #[error("key {0} is revoked and cannot be changed or re-enabled")]
    Revoked(KeyId),
    /// The key has expired; expiry is permanent.
    #[error("key {0} has expired")]
    Expired(KeyId),
    /// The environment is not one of the token format's environments.
    #[error("unknown environment {0:?}")]
    UnknownEnvironment(String),
    /// The owner already has the maximum number of live keys in this environment.
    #[error("the owner already has {limit} live keys in this environment")]
    QuotaExceeded {
        /// The quota.
        limit: u32,
    },
    /// The management policy refused the call; nothing changed. The refusal
    /// is recorded in the audit trail.
    #[error("{actor} may not {action} keys of owner {owner}: {denial}")]
    NotAllowed {
        /// The actor's id.
        actor: String,
        /// What was attempted.
        action: crate::policy::ManagementAction,
        /// Whose keys.
        owner: crate::key::OwnerId,
        /// Why not.
        denial: crate::policy::ManagementDenial,
    },
    /// The key is suspended (for calls that need an active key).
    #[error("key {0} is suspended")]
    Suspended(KeyId),
    /// The key is not suspended (resume of an active key).
    #[error("key {0} is not suspended")]
    NotSuspended(KeyId),
    /// Legacy full-access keys can be imported, suspended, revoked and
    /// deleted, but not regenerated, rotated or edited: create a scoped key instead.
    #[error("key {0} is a legacy full-access key: it cannot be {1}; create a scoped key instead")]
    Legacy(KeyId, &'static str),
    /// An id that is or was in use: an imported key's id must be new, and
    /// a deleted key's id is never used again.
    #[error("key id {0} is or was already in use")]
    IdTaken(KeyId),
    /// An imported SHA-256 hash is not 64 hexadecimal characters.
    #[error("the imported hash of key {0} is not a SHA-256 hash in hex (64 characters 0-9a-f)")]
    BadImportHash(KeyId),
    /// The key was revoked, but ending its session tokens in the store
    /// failed. They are still refused wherever they are read from the store
    /// (their key is revoked), but the store still marks them live: call
    /// [`KeyManager::revoke_compromised`](crate::KeyManager::revoke_compromised)
    /// or [`KeyManager::end_sessions`](crate::KeyManager::end_sessions) again.
    #[error("key {id} is revoked, but its sessions could not be ended: {source}")]
    SessionsNotEnded {
        /// The key, revoked.
        id: KeyId,
        /// Why its sessions were not ended.
        source: StoreError,
    },
}

impl KeywardError {
    /// A stable snake_case code for the kind of error (for logs, metrics and
    /// API responses), without any detail.
    ///
    /// ```
    /// use keyward::{KeywardError, KeyId};
    /// let id = KeyId::new("abc123").unwrap();
    /// assert_eq!(KeywardError::Revoked(id).code(), "revoked");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            KeywardError::Policy(_) => "policy",
            KeywardError::Token(_) => "token",
            KeywardError::Store(_) => "store",
            KeywardError::Hash(_) => "hash",
            KeywardError::NotFound(_) => "not_found",
            KeywardError::Revoked(_) => "revoked",
            KeywardError::Expired(_) => "expired",
            KeywardError::UnknownEnvironment(_) => "unknown_environment",
            KeywardError::QuotaExceeded { .. } => "quota_exceeded",
            KeywardError::NotAllowed { .. } => "not_allowed",
            KeywardError::Suspended(_) => "suspended",
            KeywardError::NotSuspended(_) => "not_suspended",
            KeywardError::Legacy(..) => "legacy",
            KeywardError::IdTaken(_) => "id_taken",
            KeywardError::BadImportHash(_) => "bad_import_hash",
            KeywardError::SessionsNotEnded { .. } => "sessions_not_ended",
        }
    }

    /// Maps store errors that have a manager-level meaning to their own variants.
    pub(crate) fn from_store(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => KeywardError::NotFound(id),
            StoreError::QuotaExceeded { limit } => KeywardError::QuotaExceeded { limit },
            other => KeywardError::Store(other),
        }
    }
}
