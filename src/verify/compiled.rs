//! [`CompiledKey`], a key as the verifier caches it, and [`VerifiedKey`],
//! one that passed a check.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::denial::DenialReason;
use super::request::VerifyRequest;
use super::usage::UsageCell;
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::key::{KeyKind, KeyRecord};
use crate::policy::PolicyError;
use crate::policy::{
    CompiledScope, IpAllowlist, PermissionSet, Policy, ResourceRule, ResourceScope,
};

/// A key with its policy decoded and compiled, as the verifier caches it.
#[derive(Debug)]
pub struct CompiledKey {
    pub(super) id: KeyId,
    pub(super) owner: OwnerId,
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
    kind: KeyKind,
    generation: u64,
    pub(super) usage: Option<Arc<UsageCell>>,
    /// Until when (microseconds) a use of this key changes nothing in its
    /// usage cell ([`UsageCell::quiet_until`]): read with the key's other
    /// fields, so most hits never load the cell. Written only when it
    /// changes (at most about once a second per key).
    pub(super) usage_quiet_until: AtomicI64,
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
            environment: record.environment.clone(),
            name: record.name.as_str().into(),
            permissions: policy.permissions().resolve_stored(&record.permissions),
            scope: policy.resource_rule().compile(&record.resources)?,
            ip_allowlist: record.ip_allowlist.clone(),
            expires_at: record.expires_at,
            deadline,
            kind: record.kind,
            generation: record.generation,
            usage: None,
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
            id,
            owner,
            environment,
            name: name.into_boxed_str(),
            permissions,
            scope: policy.resource_rule().compile(&resources)?,
            ip_allowlist,
            expires_at,
            deadline: expires_at,
            kind: KeyKind::Scoped,
            generation: 0,
            usage: None,
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
        if self.deadline.is_some_and(|e| e <= now) {
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
        self.check_access(req.client_ip, now)?;
        if req.permission.is_session_only() {
            return Err(DenialReason::SessionOnly);
        }
        if !self.permissions.contains(req.permission) {
            return Err(DenialReason::PermissionMissing);
        }
        if let Some(res) = req.resource {
            if res.owner != self.owner.as_str() {
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
    /// Scoped or legacy full-access.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    /// The record generation this was compiled from.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// A key that passed a check, with its remaining lifetime at the time of
/// the check. Cheap to clone; derefs to [`CompiledKey`].
#[derive(Debug, Clone)]
pub struct VerifiedKey(Arc<CompiledKey>, Option<TimeDelta>);

impl VerifiedKey {
    pub(crate) fn from_compiled(key: Arc<CompiledKey>, now: DateTime<Utc>) -> Self {
        let remaining = key.deadline.map(|d| d - now);
        Self(key, remaining)
    }

    /// How long the key had left when it was checked (`None`: it never
    /// expires), so a response can warn its caller (as NuGet's
    /// `X-NuGet-Warning` does). Zero or more.
    pub fn remaining_lifetime(&self) -> Option<Duration> {
        self.1.map(|d| d.to_std().unwrap_or(Duration::ZERO))
    }
}

impl std::ops::Deref for VerifiedKey {
    type Target = CompiledKey;
    fn deref(&self) -> &CompiledKey {
        &self.0
    }
}
