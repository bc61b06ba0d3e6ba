//! Policy: permissions, resource scope, expiry, IP allowlist, quota, edit rules.

mod edit;
mod error;
mod expiry;
mod ip;
mod management;
mod permissions;
mod resources;
mod wildcard;

pub use edit::EditPolicy;
pub use error::PolicyError;
pub use expiry::{ExpiryChoice, ExpiryPolicy};
pub use ip::IpAllowlist;
pub use management::{
    Actor, DefaultManagementPolicy, ManagementAction, ManagementDenial, ManagementPolicy, Role,
};
pub use permissions::{
    Permission, PermissionGrant, PermissionRegistry, PermissionRegistryBuilder, PermissionSet,
};
pub use resources::{CompiledScope, ResourceRef, ResourceRule, ResourceScope};

/// Everything the application decides about its keys, built once at startup.
///
/// ```
/// use keyward::{policy::ExpiryChoice, policy::ExpiryPolicy, PermissionRegistry, Policy};
/// let registry = PermissionRegistry::builder()
///     .permission_implying("package:push", &["package:push-new"])
///     .permission("package:push-new")
///     .build()
///     .unwrap();
/// let policy = Policy::new(registry)
///     .with_quota(3)
///     .unwrap()
///     .with_expiry(ExpiryPolicy::choices(&[90, 365], true, ExpiryChoice::Days(90)).unwrap());
/// assert_eq!(policy.quota(), Some(3));
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    permissions: PermissionRegistry,
    resources: ResourceRule,
    expiry: ExpiryPolicy,
    edits: EditPolicy,
    quota: Option<u32>,
    idle_expiry: Option<chrono::TimeDelta>,
}

impl Policy {
    /// A policy with these permissions, the default resource rule, the
    /// default expiry policy (1/90/180/270/365 days, default 365), no quota,
    /// and no widening edits.
    pub fn new(permissions: PermissionRegistry) -> Self {
        Self {
            permissions,
            resources: ResourceRule::default(),
            expiry: ExpiryPolicy::default(),
            edits: EditPolicy::default(),
            quota: None,
            idle_expiry: None,
        }
    }

    /// Sets the resource naming rule.
    pub fn with_resource_rule(mut self, rule: ResourceRule) -> Self {
        self.resources = rule;
        self
    }

    /// Sets the expiry policy.
    pub fn with_expiry(mut self, expiry: ExpiryPolicy) -> Self {
        self.expiry = expiry;
        self
    }

    /// Sets the edit rules.
    pub fn with_edits(mut self, edits: EditPolicy) -> Self {
        self.edits = edits;
        self
    }

    /// At most `max` live (neither revoked nor expired) keys per owner and
    /// environment, enforced atomically by the store.
    pub fn with_quota(mut self, max: u32) -> Result<Self, PolicyError> {
        if max == 0 {
            return Err(PolicyError::ZeroQuota);
        }
        self.quota = Some(max);
        Ok(self)
    }

    /// Keys unused for `days` days (counted from their last recorded use,
    /// or their creation if never used) are treated as expired: refused
    /// with [`DenialReason::Expired`](crate::DenialReason::Expired) and
    /// listed as [`KeyStatus::Expired`](crate::key::KeyStatus::Expired). Uses are
    /// recorded at most once per usage interval
    /// ([`VerifierConfig::usage_interval`](crate::verify::VerifierConfig::usage_interval)),
    /// so choose `days` much longer than it. Listings, their status filter
    /// and the quota apply it too ([`KeyManager`](crate::KeyManager) passes
    /// it to the store as [`ListQuery::idle_expiry`](crate::store::ListQuery)
    /// and [`QuotaCheck::idle_expiry`](crate::store::QuotaCheck)): an idle
    /// key is listed under Expired only and frees its quota slot, as a
    /// check says. An idle key can be brought back only where
    /// [`ExpiryPolicy::with_regenerate_expired`] allows
    /// ([`KeyManager::regenerate`](crate::KeyManager::regenerate)).
    ///
    /// ```
    /// use keyward::{PermissionRegistry, Policy};
    /// let registry = PermissionRegistry::builder().permission("p").build().unwrap();
    /// let policy = Policy::new(registry).with_idle_expiry(90).unwrap();
    /// assert_eq!(policy.idle_expiry().unwrap().num_days(), 90);
    /// ```
    pub fn with_idle_expiry(mut self, days: u32) -> Result<Self, PolicyError> {
        if days == 0 {
            return Err(PolicyError::ZeroIdleExpiry);
        }
        self.idle_expiry = Some(chrono::TimeDelta::days(i64::from(days)));
        Ok(self)
    }

    /// The idle-expiry period, if any.
    pub fn idle_expiry(&self) -> Option<chrono::TimeDelta> {
        self.idle_expiry
    }

    /// The permission registry.
    pub fn permissions(&self) -> &PermissionRegistry {
        &self.permissions
    }
    /// The resource naming rule.
    pub fn resource_rule(&self) -> &ResourceRule {
        &self.resources
    }
    /// The expiry policy.
    pub fn expiry(&self) -> &ExpiryPolicy {
        &self.expiry
    }
    /// The edit rules.
    pub fn edits(&self) -> &EditPolicy {
        &self.edits
    }
    /// The quota of live keys per owner and environment.
    pub fn quota(&self) -> Option<u32> {
        self.quota
    }
}
