//! The stored key record and its public view.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Environment, ExternalId, KeyId, OwnerId};
use crate::metadata::Metadata;
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::usage::UsageControls;

/// Longest key name.
pub(crate) const MAX_NAME_LEN: usize = 100;

/// The stored hash of a key's secret (an argon2id PHC string).
///
/// Not a secret, but never shown: `Debug` prints `[REDACTED]` and there is no
/// `Serialize`, so it cannot end up in a listing or a log. (A whole
/// [`KeyRecord`], the store's form, serializes it; see there.)
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    /// Wraps a stored hash string (for stores reading rows).
    pub fn new(phc: String) -> Self {
        Self(phc)
    }
    /// The stored string (for stores writing rows and for the hasher).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash([REDACTED])")
    }
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Suspended by its owner: refused until resumed (reversible; still
    /// counts against the quota).
    Suspended,
    /// Past its expiry (permanent).
    Expired,
    /// Revoked (permanent; stays listed for audit).
    Revoked,
}

/// What kind of key a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// A key with its own permissions, resources and expiry: every key
    /// keyward creates.
    #[default]
    Scoped,
    /// A full-access key from an older system: every grantable permission,
    /// every resource of its owner, never expires. It can only be imported
    /// ([`KeyManager::import`](crate::KeyManager::import)), never created,
    /// and once deleted its id can never be used again.
    Legacy,
}

impl KeyKind {
    /// The stable name stores write (`scoped`, `legacy`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Scoped => "scoped",
            KeyKind::Legacy => "legacy",
        }
    }
    /// Parses [`KeyKind::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scoped" => Some(KeyKind::Scoped),
            "legacy" => Some(KeyKind::Legacy),
            _ => None,
        }
    }
}

/// A key as the store keeps it. Stores read and write every field; the
/// manager decides how they change.
///
/// # Serialization
///
/// `Serialize` and `Deserialize` (serde), so a store over a document
/// database or Redis can write a record whole (as JSON, say) instead of
/// copying its fields by hand. The contract:
///
/// - A record never carries a secret: not the token, not the secret, not a
///   fingerprint of it. What it holds of the secret is
///   [`secret_hash`](KeyRecord::secret_hash), the argon2id PHC string (or,
///   for an imported key, its `sha256$` form). A hash is not a secret, as a
///   database column of it is not, but it must not be shown to users: a
///   serialized record is the store's form, for the store only; what a
///   listing or an API shows is [`KeyView`] (no hash). [`SecretHash`] alone
///   still has no `Serialize`: only the record writes it.
/// - Field names are the Rust names (`id`, `owner`, ..., `secret_hash`);
///   times are RFC 3339 strings (chrono's serde form), ids and names
///   strings, `permissions`, `resources` and `ip_allowlist` their own serde
///   forms (the ones the SQL stores write as JSON), `metadata` the JSON
///   object itself, `external_id` a string or `null`.
/// - `usage` is [`UsageControls`]' serde form (limits as
///   `{name, limit, window_us}`, credits with their refill).
/// - `external_id`, `metadata` and `usage` may be missing (records written before
///   they existed): they read as `None` and the empty object.
/// - Deserializing checks what the types check (an id, owner or
///   environment that is not valid is an error), as reading a row does.
///
/// ```
/// # use keyward::key::KeyRecord;
/// # fn roundtrip(record: &KeyRecord) -> Result<(), serde_json::Error> {
/// let json = serde_json::to_string(record)?;
/// let back: KeyRecord = serde_json::from_str(&json)?;
/// assert_eq!(&back, record);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, the lookup key.
    pub id: KeyId,
    /// Owner of the key (and of the resources it can reach).
    pub owner: OwnerId,
    /// Environment the key belongs to.
    pub environment: Environment,
    /// Human-readable name ("GitHub Actions Production").
    pub name: String,
    /// Scoped (every created key) or legacy full-access (imported only).
    pub kind: KeyKind,
    /// Granted permissions.
    pub permissions: PermissionGrant,
    /// Covered resources.
    pub resources: ResourceScope,
    /// Networks the key may be used from.
    pub ip_allowlist: IpAllowlist,
    /// The application's id for the key (not unique; see [`ExternalId`]).
    /// Absent from records written before it existed: `None`.
    #[serde(default)]
    pub external_id: Option<ExternalId>,
    /// The application's metadata (never a secret). Absent from records
    /// written before it existed: empty.
    #[serde(default)]
    pub metadata: Metadata,
    /// Rate limits and credits. Absent from records written before they
    /// existed: none. [`KeyStore::update`](crate::KeyStore::update) writes
    /// the limits and the credits' refill, and turns credits on or off,
    /// but never changes an existing balance (see [`Credits`](crate::usage::Credits)).
    #[serde(default)]
    pub usage: UsageControls,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When the key expires (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key was suspended (`None`: not suspended).
    pub suspended_at: Option<DateTime<Utc>>,
    /// When the key was last used successfully. Written only by
    /// [`KeyStore::record_usage`](crate::KeyStore::record_usage), never by updates.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The client address of that last use, when known. Written with `last_used_at`.
    pub last_used_ip: Option<IpAddr>,
    /// When the owner was reminded that the key expires soon (set by
    /// [`KeyStore::take_expiry_reminders`](crate::KeyStore::take_expiry_reminders);
    /// cleared when the expiry changes).
    pub reminded_at: Option<DateTime<Utc>>,
    /// Bumped by every change; updates compare-and-swap on it.
    pub generation: u64,
    /// Hash of the secret.
    #[serde(with = "secret_hash_serde")]
    pub secret_hash: SecretHash,
}

/// The record's `secret_hash` as its string; [`SecretHash`] has no serde
/// of its own, so a hash alone cannot be serialized into a response.
mod secret_hash_serde {
    use super::SecretHash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(hash: &SecretHash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hash.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretHash, D::Error> {
        String::deserialize(d).map(SecretHash::new)
    }
}

impl KeyRecord {
    /// Longest key name, in characters.
    pub const MAX_NAME_LEN: usize = MAX_NAME_LEN;

    /// The status at time `now`: revoked, then expired, then suspended.
    pub fn status(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else if self.suspended_at.is_some() {
            KeyStatus::Suspended
        } else {
            KeyStatus::Active
        }
    }

    /// Whether the key counts against the quota at `now`: neither revoked
    /// nor expired (a suspended key still counts).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        matches!(self.status(now), KeyStatus::Active | KeyStatus::Suspended)
    }

    /// When the key stops working for being unused `idle` long: its last
    /// use (or creation, if never used) plus `idle`.
    pub fn idle_deadline(&self, idle: chrono::TimeDelta) -> DateTime<Utc> {
        let since = self
            .last_used_at
            .unwrap_or(self.created_at)
            .max(self.created_at);
        since
            .checked_add_signed(idle)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The status at `now` under an idle-expiry policy: an active or
    /// suspended key unused for `idle` is [`KeyStatus::Expired`].
    pub fn status_with_idle(
        &self,
        now: DateTime<Utc>,
        idle: Option<chrono::TimeDelta>,
    ) -> KeyStatus {
        match (self.status(now), idle) {
            (KeyStatus::Active | KeyStatus::Suspended, Some(idle))
                if self.idle_deadline(idle) <= now =>
            {
                KeyStatus::Expired
            }
            (status, _) => status,
        }
    }

    /// The public view at time `now` (no hash).
    pub fn view(&self, now: DateTime<Utc>) -> KeyView {
        self.view_with_idle(now, None)
    }

    /// The public view at time `now` under an idle-expiry policy.
    pub fn view_with_idle(&self, now: DateTime<Utc>, idle: Option<chrono::TimeDelta>) -> KeyView {
        KeyView {
            id: self.id.clone(),
            owner: self.owner.clone(),
            environment: self.environment.clone(),
            name: self.name.clone(),
            kind: self.kind,
            permissions: self.permissions.clone(),
            resources: self.resources.clone(),
            ip_allowlist: self.ip_allowlist.clone(),
            external_id: self.external_id.clone(),
            metadata: self.metadata.clone(),
            usage: self.usage.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            suspended_at: self.suspended_at,
            last_used_at: self.last_used_at,
            last_used_ip: self.last_used_ip,
            status: self.status_with_idle(now, idle),
        }
    }
}

/// What listings and APIs show of a key: everything but the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Public id.
    pub id: KeyId,
    /// Owner.
    pub owner: OwnerId,
    /// Environment.
    pub environment: Environment,
    /// Name.
    pub name: String,
    /// Scoped or legacy full-access.
    pub kind: KeyKind,
    /// Granted permissions.
    pub permissions: PermissionGrant,
    /// Covered resources.
    pub resources: ResourceScope,
    /// Networks the key may be used from (empty: anywhere).
    pub ip_allowlist: IpAllowlist,
    /// The application's id for the key, if it gave one.
    #[serde(default)]
    pub external_id: Option<ExternalId>,
    /// The application's metadata (a JSON object; `{}` when none).
    #[serde(default)]
    pub metadata: Metadata,
    /// Rate limits and credits (the balance as the store last had it).
    pub usage: UsageControls,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Suspension time (`None`: not suspended).
    pub suspended_at: Option<DateTime<Utc>>,
    /// Last successful use (recorded at most once per usage interval).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client address of the last recorded use, when known.
    pub last_used_ip: Option<IpAddr>,
    /// Status when the view was made.
    pub status: KeyStatus,
}
