//! [`CompiledKey`], a key as the verifier caches it, and [`VerifiedKey`],
//! one that passed a check.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::denial::{DenialReason, RateLimitStatus};
use super::ledger::{Metering, UsageSeen};
use super::request::VerifyRequest;
use super::usage::UsageCell;
use crate::ids::ExternalId;
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId, same_as_tag, tag16};
use crate::key::{KeyKind, KeyRecord};
use crate::metadata::Metadata;
use crate::policy::PolicyError;
use crate::policy::{
    CompiledScope, IpAllowlist, PermissionSet, Policy, ResourceRule, ResourceScope,
};

/// `at` in microseconds since the epoch, rounded down; `i64::MAX` for none.
/// A time inside a leap second (chrono keeps it as the second before with
/// more than a second of nanoseconds) counts as the last microsecond
/// before it ends: `timestamp_micros` would put it into the next second,
/// and a deadline there would be reached late.
fn micros_or_max(at: Option<DateTime<Utc>>) -> i64 {
    at.map_or(i64::MAX, |at| {
        let micros = i64::from(at.timestamp_subsec_micros().min(999_999));
        at.timestamp()
            .saturating_mul(1_000_000)
            .saturating_add(micros)
    })
}

/// A key with its policy decoded and compiled, as the verifier caches it.
#[derive(Debug)]
pub struct CompiledKey {
    pub(super) id: KeyId,
    pub(super) owner: OwnerId,
    /// [`tag16`] of the owner and of the environment, read on every check
    /// with the key's other fields (0: longer than 16 bytes, compare the
    /// strings).
    owner_tag: u128,
    environment_tag: u128,
    environment: Environment,
    name: Box<str>,
    permissions: PermissionSet,
    /// The compiled resource scope, which also keeps the patterns as granted.
    scope: CompiledScope,
    ip_allowlist: IpAllowlist,
    expires_at: Option<DateTime<Utc>>,
    /// The earlier of the expiry and the idle-expiry deadline: the one
    /// time compared on every check.
    deadline: Option<DateTime<Utc>>,
    /// The deadline in microseconds since the epoch, rounded down (`i64::MAX`:
    /// none): the number a check compares with the clock's.
    deadline_us: i64,
    kind: KeyKind,
    generation: u64,
    pub(super) usage: Option<Arc<UsageCell>>,
    /// Until when (microseconds) a use of this key changes nothing in its
    /// usage cell ([`UsageCell::quiet_until`]): read with the key's other
    /// fields, so most hits never load the cell. Written only when it
    /// changes (at most about once a second per key).
    pub(super) usage_quiet_until: AtomicI64,
    /// The key's rate limits and credits and its local ledger, when it has
    /// usage controls (one pointer; `None` for most keys).
    pub(super) metering: Option<Arc<Metering>>,
    /// The external id and metadata, when the key has either: one pointer
    /// in the cached entry, nothing allocated for keys without them.
    labels: Option<Arc<Labels>>,
}

/// What the application attached to a key (see [`CompiledKey::external_id`]).
#[derive(Debug)]
struct Labels {
    external_id: Option<ExternalId>,
    metadata: Metadata,
}

impl Labels {
    fn of(record: &KeyRecord) -> Option<Arc<Self>> {
        if record.external_id.is_none() && record.metadata.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            external_id: record.external_id.clone(),
            metadata: record.metadata.clone(),
        }))
    }
}

impl CompiledKey {
    /// Decodes and compiles a stored record under `policy` (its idle-expiry
    /// rule included).
    ///
    /// Not part of the API (hidden): public only so that `benches/verify.rs`
    /// can build its SHA-256 baseline map; keyward compiles keys itself.
    #[doc(hidden)]
    pub fn compile(record: &KeyRecord, policy: &Policy) -> Result<Self, PolicyError> {
        let deadline = Self::deadline_of(record, policy);
        Ok(Self {
            id: record.id.clone(),
            owner: record.owner.clone(),
            owner_tag: tag16(record.owner.as_str()),
            environment_tag: tag16(record.environment.as_str()),
            environment: record.environment.clone(),
            name: record.name.as_str().into(),
            permissions: policy.permissions().resolve_stored(&record.permissions),
            scope: policy.resource_rule().compile(&record.resources)?,
            ip_allowlist: record.ip_allowlist.clone(),
            expires_at: record.expires_at,
            deadline,
            deadline_us: micros_or_max(deadline),
            kind: record.kind,
            generation: record.generation,
            usage: None,
            metering: None,
            labels: Labels::of(record),
            usage_quiet_until: AtomicI64::new(i64::MIN),
        })
    }

    /// The earlier of a record's expiry and its idle deadline under `policy`.
    fn deadline_of(record: &KeyRecord, policy: &Policy) -> Option<DateTime<Utc>> {
        let idle = policy.idle_expiry().map(|idle| record.idle_deadline(idle));
        match (record.expires_at, idle) {
            (Some(e), Some(i)) => Some(e.min(i)),
            (e, i) => e.or(i),
        }
    }

    /// Whether this compiled key still says exactly what `record` says
    /// under `policy`: same record generation (every management write bumps
    /// it) and same deadline (usage writes move the idle deadline without
    /// one).
    pub(super) fn still_matches(&self, record: &KeyRecord, policy: &Policy) -> bool {
        self.id == record.id
            && self.generation == record.generation
            && self.deadline == Self::deadline_of(record, policy)
    }

    /// A compiled key from its parts (for session snapshots).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        id: KeyId,
        owner: OwnerId,
        environment: Environment,
        name: String,
        permissions: PermissionSet,
        resources: ResourceScope,
        policy: &Policy,
        ip_allowlist: IpAllowlist,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            owner_tag: tag16(owner.as_str()),
            environment_tag: tag16(environment.as_str()),
            id,
            owner,
            environment,
            name: name.into_boxed_str(),
            permissions,
            scope: policy.resource_rule().compile(&resources)?,
            ip_allowlist,
            expires_at,
            deadline: expires_at,
            deadline_us: micros_or_max(expires_at),
            kind: KeyKind::Scoped,
            generation: 0,
            usage: None,
            metering: None,
            labels: None,
            usage_quiet_until: AtomicI64::new(i64::MIN),
        })
    }

    /// Checks only that the key may be used at all at time `now` from
    /// `client_ip`: expiry and IP allowlist, no permission or resource.
    #[inline]
    pub fn check_access(
        &self,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(), DenialReason> {
        self.check_access_at(client_ip, now.timestamp_micros())
    }

    /// [`CompiledKey::check_access`] at `now_us` microseconds since the
    /// epoch (a [`Clock::now_micros`](crate::clock::Clock::now_micros) read).
    #[inline]
    pub(crate) fn check_access_at(
        &self,
        client_ip: Option<IpAddr>,
        now_us: i64,
    ) -> Result<(), DenialReason> {
        if self.deadline_us <= now_us {
            return Err(DenialReason::Expired);
        }
        if !self.ip_allowlist.is_empty() {
            match client_ip {
                Some(ip) if self.ip_allowlist.allows(ip) => {}
                _ => return Err(DenialReason::IpNotAllowed),
            }
        }
        Ok(())
    }

    /// Checks a request against the key at time `now`: expiry, IP allowlist,
    /// permission, owner and resource scope, in that order.
    #[inline]
    pub fn check(
        &self,
        req: &VerifyRequest<'_>,
        rule: &ResourceRule,
        now: DateTime<Utc>,
    ) -> Result<(), DenialReason> {
        self.check_at(req, rule, now.timestamp_micros())
    }

    /// [`CompiledKey::check`] at `now_us` microseconds since the epoch.
    #[inline]
    pub(crate) fn check_at(
        &self,
        req: &VerifyRequest<'_>,
        rule: &ResourceRule,
        now_us: i64,
    ) -> Result<(), DenialReason> {
        self.check_access_at(req.client_ip, now_us)?;
        self.check_grant(req, rule)
    }

    /// The part of [`CompiledKey::check`] that depends on neither the time
    /// nor the address: permission, owner and resource scope. For the axum
    /// layer, which authorizes a request right after authenticating it
    /// (whose [`CompiledKey::check_access`] covered this key, this
    /// address and the time).
    #[inline]
    pub(crate) fn check_grant(
        &self,
        req: &VerifyRequest<'_>,
        rule: &ResourceRule,
    ) -> Result<(), DenialReason> {
        if req.permission.is_session_only() {
            return Err(DenialReason::SessionOnly);
        }
        if !self.permissions.contains(req.permission) {
            return Err(DenialReason::PermissionMissing);
        }
        if let Some(res) = req.resource {
            if !self.is_owner(res.owner) {
                return Err(DenialReason::OtherOwner);
            }
            if !self.scope.is_all()
                && (rule.check_name(res.name).is_err() || !self.scope.matches(res.name))
            {
                return Err(DenialReason::ResourceOutOfScope);
            }
        }
        Ok(())
    }

    /// Whether the key belongs to `owner` (the packed copy when it fits).
    #[inline]
    fn is_owner(&self, owner: &str) -> bool {
        if self.owner_tag != 0 {
            same_as_tag(owner, self.owner_tag)
        } else {
            owner == self.owner.as_str()
        }
    }

    /// Whether the key is of `environment` (the packed copy when it fits,
    /// which every environment does: at most 16 characters).
    #[inline]
    pub(super) fn is_environment(&self, environment: &Environment) -> bool {
        if self.environment_tag != 0 {
            same_as_tag(environment.as_str(), self.environment_tag)
        } else {
            self.environment == *environment
        }
    }

    /// The key id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
    /// The owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
    /// The environment.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The effective permissions (implications included).
    pub fn permissions(&self) -> PermissionSet {
        self.permissions
    }
    /// The compiled resource scope.
    pub fn scope(&self) -> &CompiledScope {
        &self.scope
    }
    /// The resource scope as granted (names and patterns), rebuilt from the
    /// compiled scope, which keeps them (a cached key holds them once).
    pub fn resources(&self) -> ResourceScope {
        self.scope.to_scope()
    }
    /// The IP allowlist (empty: anywhere).
    pub fn ip_allowlist(&self) -> &IpAllowlist {
        &self.ip_allowlist
    }
    /// The expiry.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// When the key stops working: the earlier of its expiry and, under an
    /// idle-expiry policy, its idle deadline as of when it was loaded.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }
    /// [`deadline`](Self::deadline) in microseconds since the epoch,
    /// rounded down (`i64::MAX`: none): read by every check, so on a line
    /// a check has just loaded (the axum layer's expiry warning).
    #[cfg(feature = "axum")]
    pub(crate) fn deadline_micros(&self) -> i64 {
        self.deadline_us
    }
    /// Scoped or legacy full-access.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    /// The record generation this was compiled from.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// The application's id for the key, if it gave one. `None` for a key
    /// checked through a session token (sessions keep a snapshot of the
    /// key's policy only: read the key with
    /// [`KeyManager::get`](crate::KeyManager::get) for it).
    pub fn external_id(&self) -> Option<&ExternalId> {
        self.labels.as_ref().and_then(|l| l.external_id.as_ref())
    }
    /// The application's metadata (empty when none). Shared with the
    /// cache, not copied. Empty for a key checked through a session token
    /// (see [`external_id`](Self::external_id)).
    pub fn metadata(&self) -> &Metadata {
        match &self.labels {
            Some(l) => &l.metadata,
            None => &Metadata::EMPTY,
        }
    }
}

/// A key that passed a check, with its remaining lifetime at the time of
/// the check and what the check spent. Cheap to clone; derefs to
/// [`CompiledKey`].
#[derive(Debug, Clone)]
pub struct VerifiedKey(Arc<CompiledKey>, i64, UsageSeen);

impl VerifiedKey {
    /// A key checked at `now_us` (microseconds since the epoch).
    pub(crate) fn from_compiled(key: Arc<CompiledKey>, now_us: i64) -> Self {
        // The check's time, not the remaining lifetime: that is arithmetic
        // only a caller that asks for it pays for.
        Self(key, now_us, UsageSeen::default())
    }

    pub(crate) fn with_usage(mut self, seen: UsageSeen) -> Self {
        self.2 = seen;
        self
    }

    /// The rate limit this check spent that has the fewest requests left
    /// (`None` when it spent none), for the `RateLimit` response header
    /// fields. This server's view: its local tokens plus the room the
    /// store's bucket had at its last lease.
    ///
    /// ```
    /// # use keyward::prelude::*;
    /// # use keyward::usage::RateLimit;
    /// # use std::time::Duration;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let policy = Policy::new(registry.clone()).with_rate_limits(["publish"]).unwrap();
    /// let manager = KeyManager::builder(MemoryStore::new(), TokenFormat::new("mkh", &["live"]).unwrap(), policy)
    ///     .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    ///     .build()
    ///     .unwrap();
    /// let publish = RateLimit::new("publish", 10, Duration::from_secs(3600)).unwrap();
    /// let created = manager
    ///     .create(
    ///         &Actor::system("docs"),
    ///         NewKey::new("contoso", "live", "CI")
    ///             .permissions(PermissionGrant::only(["package:push"]))
    ///             .rate_limits(keyward::usage::RateLimits::new([publish]).unwrap()),
    ///     )
    ///     .await
    ///     .unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let req = VerifyRequest::new(&live, registry.get("package:push").unwrap()).spend("publish", 1);
    /// let key = manager.verifier().verify(created.token.expose_secret(), &req).await.unwrap();
    /// let status = key.rate_limit().unwrap();
    /// assert_eq!((status.name.as_str(), status.limit, status.remaining), ("publish", 10, 9));
    /// # });
    /// ```
    pub fn rate_limit(&self) -> Option<RateLimitStatus> {
        let m = self.0.metering.as_ref()?;
        self.2.rate_status(&m.limits)
    }

    /// The credits left after this check, for a metered key (`None`
    /// otherwise). This server's view: its local block plus what the store
    /// had left at its last lease (other servers may have spent since).
    pub fn credits_remaining(&self) -> Option<u64> {
        self.2.credits
    }

    /// How long the key had left when it was checked (`None`: it never
    /// expires), so a response can warn its caller (as NuGet's
    /// `X-NuGet-Warning` does). Zero or more.
    pub fn remaining_lifetime(&self) -> Option<Duration> {
        self.0.deadline.map(|d| {
            let left = d.timestamp_micros().saturating_sub(self.1);
            Duration::from_micros(u64::try_from(left).unwrap_or(0))
        })
    }
}

impl std::ops::Deref for VerifiedKey {
    type Target = CompiledKey;
    fn deref(&self) -> &CompiledKey {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    /// A deadline inside a leap second is reached before the next second
    /// begins, as the `DateTime` comparison had it.
    #[test]
    fn a_leap_second_deadline_is_reached_before_the_next_second() {
        use chrono::NaiveDate;
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        let next = NaiveDate::from_ymd_opt(2017, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        assert!(leap < next);
        assert!(micros_or_max(Some(leap)) < next.timestamp_micros());
        assert_eq!(micros_or_max(None), i64::MAX);
        let plain = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(micros_or_max(Some(plain)), plain.timestamp_micros());
    }

    use super::*;

    /// A cached key pays one pointer for its external id and metadata, and
    /// handing the metadata out copies a pointer.
    #[test]
    fn labels_cost_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<Arc<Labels>>>(),
            std::mem::size_of::<usize>()
        );
        assert_eq!(
            std::mem::size_of::<Metadata>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn packed_strings_compare_exactly() {
        for key in ["a", "live", "publisher-000042", "publisher-0000420"] {
            let tag = tag16(key);
            let same = |s: &str| {
                if tag != 0 {
                    same_as_tag(s, tag)
                } else {
                    s == key
                }
            };
            assert!(same(key), "{key}");
            for other in [
                String::new(),
                format!("{key}\0"),
                format!("{key}\0\0"),
                format!("\0{key}"),
                format!("{key}x"),
                key[..key.len() - 1].to_owned(),
                key.to_uppercase(),
                "publisher-000043".to_owned(),
                "x".repeat(17),
            ] {
                assert!(!same(&other) || other == key, "{key:?} vs {other:?}");
            }
        }
        assert_eq!(tag16(&"x".repeat(17)), 0, "too long: not packed");
    }
}
