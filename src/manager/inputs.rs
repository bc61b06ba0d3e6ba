//! The inputs and outputs of management calls: [`NewKey`], [`KeyEdit`],
//! [`ImportKey`], [`CreatedKey`], [`RotatedKey`].

use std::fmt;

use chrono::{DateTime, Utc};

use crate::ids::ExternalId;
use crate::key::{KeyKind, KeyView};
use crate::metadata::Metadata;
use crate::policy::{ExpiryChoice, PermissionGrant, PolicyError, ResourceScope};
use crate::token::Token;
use crate::usage::{Credits, RateLimits, UsageControls};

/// The setters [`NewKey`] and [`ImportKey`] share: their `permissions`,
/// `resources`, `ip_allowlist`, `external_id` and `metadata` fields are the
/// same (`$which` says which keys a setting applies to, in its doc).
macro_rules! policy_setters {
    ($which:literal) => {
        #[doc = concat!("Sets the permissions", $which, ".")]
        pub fn permissions(mut self, grant: PermissionGrant) -> Self {
            self.permissions = grant;
            self
        }
        #[doc = concat!("Sets the resource scope", $which, ".")]
        pub fn resources(mut self, scope: ResourceScope) -> Self {
            self.resources = scope;
            self
        }
        /// Sets the IP allowlist (CIDR ranges; empty: anywhere).
        pub fn ip_allowlist<I, S>(mut self, ranges: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.ip_allowlist = ranges.into_iter().map(Into::into).collect();
            self
        }
        /// Sets the application's id for the key (checked as
        /// [`ExternalId::new`](crate::ids::ExternalId::new) when the call runs).
        pub fn external_id(mut self, id: impl Into<String>) -> Self {
            self.external_id = Some(id.into());
            self
        }
        /// Sets the metadata: a JSON object (checked as
        /// [`Metadata::from_value`](crate::metadata::Metadata::from_value)
        /// when the call runs). For JSON text, parse it with
        /// [`Metadata::parse`](crate::metadata::Metadata::parse) and pass
        /// [`Metadata::to_value`](crate::metadata::Metadata::to_value).
        pub fn metadata(mut self, object: serde_json::Value) -> Self {
            self.metadata = Some(object);
            self
        }
        /// Sets the rate limits (see [`RateLimits`](crate::usage::RateLimits)).
        pub fn rate_limits(mut self, limits: RateLimits) -> Self {
            self.usage.rate_limits = limits;
            self
        }
        /// Meters the key with `credits` (see [`Credits`](crate::usage::Credits)):
        /// its starting balance and refill. A refill's first period is the one
        /// the key is created in (no refill at once). Giving a balance needs
        /// [`ManagementAction::Usage`](crate::policy::ManagementAction::Usage)
        /// (the application itself only, by default), unless it is no looser
        /// than the policy's default
        /// ([`Policy::with_default_usage`](crate::Policy::with_default_usage)).
        pub fn credits(mut self, credits: Credits) -> Self {
            self.usage.credits = Some(Credits {
                leased: 0,
                refilled_for: None,
                ..credits
            });
            self
        }
    };
}

/// What to create: owner, environment, name, and the key's policy.
///
/// ```
/// use keyward::{policy::ExpiryChoice, NewKey, policy::PermissionGrant, policy::ResourceScope};
/// let new = NewKey::new("contoso", "live", "GitHub Actions Production")
///     .permissions(PermissionGrant::only(["package:push"]))
///     .resources(ResourceScope::only(["AzureRM.DataFactory*"]))
///     .expiry(ExpiryChoice::Days(90))
///     .ip_allowlist(["203.0.113.0/24"]);
/// assert_eq!(new.name, "GitHub Actions Production");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The owner (publisher, organization).
    pub owner: String,
    /// The environment tag (`live`, `test`, ...).
    pub environment: String,
    /// A name for people ("Jenkins Pipeline").
    pub name: String,
    /// What the key may do. Must be set: the default grants nothing and is refused.
    pub permissions: PermissionGrant,
    /// Which resources it covers (default: all of the owner's).
    pub resources: ResourceScope,
    /// Its lifetime (`None`: the policy's default).
    pub expiry: Option<ExpiryChoice>,
    /// CIDR ranges it may be used from (empty: anywhere).
    pub ip_allowlist: Vec<String>,
    /// The application's id for the key (see [`ExternalId`](crate::ids::ExternalId);
    /// checked when the call runs, [`PolicyError::Invalid`](crate::policy::PolicyError::Invalid)
    /// naming `external_id`).
    pub external_id: Option<String>,
    /// The application's metadata, a JSON object within
    /// [`Metadata`](crate::metadata::Metadata)'s bounds (checked when the
    /// call runs: [`PolicyError::Metadata`](crate::policy::PolicyError::Metadata)).
    /// Never a secret: listings show it.
    pub metadata: Option<serde_json::Value>,
    /// Rate limits and credits (default: none).
    pub usage: UsageControls,
}

impl NewKey {
    /// A key for `owner` in `environment` named `name`.
    pub fn new(
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            owner: owner.into(),
            environment: environment.into(),
            name: name.into(),
            permissions: PermissionGrant::Only(Default::default()),
            resources: ResourceScope::All,
            expiry: None,
            ip_allowlist: Vec::new(),
            external_id: None,
            metadata: None,
            usage: UsageControls::default(),
        }
    }
    policy_setters!("");
    /// Sets the lifetime.
    pub fn expiry(mut self, choice: ExpiryChoice) -> Self {
        self.expiry = Some(choice);
        self
    }
}

/// Changes to a key. Fields left `None` stay as they are.
///
/// The name, resources, external id and metadata may always change;
/// permissions, expiry and IP allowlist may narrow unless the policy's
/// [`EditPolicy`](crate::policy::EditPolicy) freezes them, and widen only
/// where it allows.
///
/// Usage controls: `rate_limits` replaces the key's limits (every name
/// declared with [`Policy::with_rate_limits`](crate::Policy::with_rate_limits)).
/// `credits: Some(None)` stops metering the key; `Some(Some(c))` on a key
/// without credits meters it, starting with `c`'s balance and refill; on a
/// metered key it changes only the refill (`c.remaining` is ignored: a
/// balance changes only through [`KeyManager::set_credits`] and
/// [`KeyManager::add_credits`], atomically against verifiers' leases).
/// Narrowing them is always allowed; widening them needs
/// [`ManagementAction::Usage`](crate::policy::ManagementAction::Usage)
/// (see [`EditPolicy`](crate::policy::EditPolicy)).
///
/// [`KeyManager::set_credits`]: crate::KeyManager::set_credits
/// [`KeyManager::add_credits`]: crate::KeyManager::add_credits
///
/// ```
/// use keyward::KeyEdit;
/// let edit = KeyEdit {
///     metadata: Some(serde_json::json!({"ticket": 4212})), // replaces the whole object
///     external_id: Some(None),                             // removes the external id
///     ..KeyEdit::default()
/// };
/// # let _ = edit;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyEdit {
    /// New name.
    pub name: Option<String>,
    /// New permissions.
    pub permissions: Option<PermissionGrant>,
    /// New resource scope.
    pub resources: Option<ResourceScope>,
    /// New lifetime, counted from the time of the edit.
    pub expiry: Option<ExpiryChoice>,
    /// New IP allowlist.
    pub ip_allowlist: Option<Vec<String>>,
    /// New external id: `Some(Some(id))` sets it, `Some(None)` removes it.
    pub external_id: Option<Option<String>>,
    /// New metadata, replacing the old object whole (`{}` empties it).
    pub metadata: Option<serde_json::Value>,
    /// New rate limits, replacing the old ones whole (empty: none).
    pub rate_limits: Option<RateLimits>,
    /// Metering: `Some(None)` stops it; `Some(Some(c))` starts it with
    /// `c`, or on a metered key changes only its refill (see above).
    pub credits: Option<Option<Credits>>,
}

/// A key just created or regenerated: the full token, shown once, and the view.
#[derive(Debug)]
pub struct CreatedKey {
    /// The full key. It is not stored anywhere: show it to its owner once.
    pub token: Token,
    /// The key as listings show it.
    pub key: KeyView,
}

/// The result of [`KeyManager::rotate`](crate::KeyManager::rotate): the successor (its token shown
/// once) and the old key, now expiring at the end of the grace period.
#[derive(Debug)]
pub struct RotatedKey {
    /// The new key, with the old one's settings.
    pub successor: CreatedKey,
    /// The old key, with its new (earlier or unchanged) expiry.
    pub previous: KeyView,
}

/// A key to bring over from another system, by its id and the SHA-256 (hex)
/// of its secret, as crates.io-style and Unkey-style stores keep them.
///
/// The holder keeps using the secret they have: they present it with the
/// key id ([`Verifier::verify_pair`](crate::Verifier::verify_pair), or
/// HTTP Basic `key_id:secret` through the axum layer). On the first
/// successful check the SHA-256 hash is replaced by an argon2id hash.
///
/// ```
/// use keyward::{manager::ImportKey, policy::PermissionGrant};
/// let scoped = ImportKey::scoped("K7x2Lq9", "contoso", "live", "old CI key",
///         "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
///     .permissions(PermissionGrant::only(["package:push"]));
/// let legacy = ImportKey::legacy("Zr81", "contoso", "live", "2015 key",
///         "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
/// // The hash is not a secret, but it is never printed.
/// assert!(!format!("{legacy:?}").contains("9f86d0"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ImportKey {
    /// The key's id in the other system (ASCII letters and digits).
    pub id: String,
    /// The owner.
    pub owner: String,
    /// The environment tag.
    pub environment: String,
    /// A name for people.
    pub name: String,
    /// Scoped (permissions, resources and expiry below) or legacy full-access.
    pub kind: KeyKind,
    /// Scoped keys: what the key may do.
    pub permissions: PermissionGrant,
    /// Scoped keys: which resources it covers.
    pub resources: ResourceScope,
    /// Scoped keys: when it expires (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// CIDR ranges it may be used from (empty: anywhere).
    pub ip_allowlist: Vec<String>,
    /// When it was created in the other system (default: now).
    pub created_at: Option<DateTime<Utc>>,
    /// The application's id for the key (as [`NewKey::external_id`]).
    pub external_id: Option<String>,
    /// The application's metadata (as [`NewKey::metadata`]).
    pub metadata: Option<serde_json::Value>,
    /// Rate limits and credits (as [`NewKey::usage`]).
    pub usage: UsageControls,
    /// SHA-256 of the secret, 64 hexadecimal characters.
    pub sha256_hex: String,
}

impl fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportKey")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("environment", &self.environment)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("permissions", &self.permissions)
            .field("resources", &self.resources)
            .field("expires_at", &self.expires_at)
            .field("ip_allowlist", &self.ip_allowlist)
            .field("created_at", &self.created_at)
            .field("external_id", &self.external_id)
            .field("metadata", &self.metadata)
            .field("usage", &self.usage)
            .field("sha256_hex", &"[REDACTED]")
            .finish()
    }
}

impl ImportKey {
    fn base(
        kind: KeyKind,
        id: impl Into<String>,
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            owner: owner.into(),
            environment: environment.into(),
            name: name.into(),
            kind,
            permissions: PermissionGrant::Only(Default::default()),
            resources: ResourceScope::All,
            expires_at: None,
            ip_allowlist: Vec::new(),
            created_at: None,
            external_id: None,
            metadata: None,
            usage: UsageControls::default(),
            sha256_hex: sha256_hex.into(),
        }
    }
    /// A scoped key; set its permissions (required), resources and expiry.
    pub fn scoped(
        id: impl Into<String>,
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
    ) -> Self {
        Self::base(KeyKind::Scoped, id, owner, environment, name, sha256_hex)
    }
    /// A legacy full-access key: every grantable permission, every resource
    /// of the owner, never expires.
    pub fn legacy(
        id: impl Into<String>,
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
    ) -> Self {
        let mut key = Self::base(KeyKind::Legacy, id, owner, environment, name, sha256_hex);
        key.permissions = PermissionGrant::All;
        key
    }
    policy_setters!(" (scoped keys)");
    /// Sets the expiry (scoped keys).
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Sets the creation time from the other system.
    pub fn created_at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = Some(at);
        self
    }
}

/// Checks an input's external id (the error names `external_id`).
pub(super) fn checked_external_id(id: Option<&str>) -> Result<Option<ExternalId>, PolicyError> {
    Ok(id.map(ExternalId::new).transpose()?)
}

/// Checks an input's metadata (the error names `metadata`); `None` is empty.
pub(super) fn checked_metadata(object: Option<serde_json::Value>) -> Result<Metadata, PolicyError> {
    Ok(object
        .map(Metadata::from_value)
        .transpose()?
        .unwrap_or_default())
}

/// A new key's usage controls as stored: no leases yet, and a refill's
/// first period the one the key starts in.
pub(super) fn started_usage(mut usage: UsageControls, now: DateTime<Utc>) -> UsageControls {
    if let Some(c) = usage.credits.as_mut() {
        c.leased = 0;
        c.refilled_for = c.refill.map(|r| r.period_start(now));
    }
    usage
}
