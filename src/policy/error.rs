//! The error of a policy, a permission registry, or a request that breaks them.

use thiserror::Error;

use crate::ids::InvalidValue;

/// A request to create or edit a key broke the application's policy, or the
/// policy itself was built with invalid settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field such as the key name or owner is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    /// The metadata is not JSON, not an object, too large or too deep
    /// (the field is always `metadata`).
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
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
    /// An edit changes a setting that the edit policy fixes at creation
    /// ([`EditPolicy::frozen`](crate::policy::EditPolicy::frozen)).
    #[error("the {setting} of a key cannot be changed once the key is created")]
    Frozen {
        /// The setting: `permissions`, `expiry` or `IP allowlist`.
        setting: &'static str,
    },
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
