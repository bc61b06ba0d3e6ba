//! Policy: permissions, resource scope, expiry, IP allowlist, quota, edit rules.

mod default_usage;
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

use crate::usage::{LimitName, RateLimits, UsageControls, UsageError};

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
    rate_limit_names: Vec<LimitName>,
    default_usage: Option<UsageControls>,
}

impl Policy {
    /// A policy with these permissions, the default resource rule, the
    /// default expiry policy (1/90/180/270/365 days, default 365), no quota,
    /// no widening edits, and no default usage controls.
    pub fn new(permissions: PermissionRegistry) -> Self {
        Self {
            permissions,
            resources: ResourceRule::default(),
            expiry: ExpiryPolicy::default(),
            edits: EditPolicy::default(),
            quota: None,
            idle_expiry: None,
            rate_limit_names: Vec::new(),
            default_usage: None,
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

    /// The names of the rate limits the application uses (`requests`,
    /// `publish`): keys may carry only these, and a request may spend only
    /// these. A name outside the list is refused, naming it, where a key is
    /// created or edited ([`UsageError::UnknownLimit`]) and where a request
    /// spends it, so a typo fails closed instead of leaving a key
    /// unlimited. At most 4 × [`RateLimits::MAX`] names.
    ///
    /// ```
    /// use keyward::{PermissionRegistry, Policy};
    /// let registry = PermissionRegistry::builder().permission("p").build().unwrap();
    /// let policy = Policy::new(registry).with_rate_limits(["requests", "publish"]).unwrap();
    /// assert!(policy.rate_limit_name("publish").is_some());
    /// assert!(policy.rate_limit_name("publsh").is_none());
    /// ```
    pub fn with_rate_limits<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, UsageError> {
        let mut v = names
            .into_iter()
            .map(LimitName::new)
            .collect::<Result<Vec<_>, _>>()?;
        v.sort();
        v.dedup();
        if v.len() > RateLimits::MAX * 4 {
            return Err(UsageError::TooManyLimits {
                count: v.len(),
                max: RateLimits::MAX * 4,
            });
        }
        self.rate_limit_names = v;
        Ok(self)
    }

    /// The declared rate limit named `name`, if it is one.
    pub fn rate_limit_name(&self, name: &str) -> Option<&LimitName> {
        self.rate_limit_names
            .binary_search_by(|n| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.rate_limit_names[i])
    }

    /// Refuses `limits` naming a limit not declared with
    /// [`Policy::with_rate_limits`] ([`UsageError::UnknownLimit`]).
    pub fn check_rate_limits(&self, limits: &RateLimits) -> Result<(), UsageError> {
        match limits
            .iter()
            .find(|l| self.rate_limit_name(l.name().as_str()).is_none())
        {
            Some(l) => Err(UsageError::UnknownLimit {
                name: l.name().as_str().into(),
            }),
            None => Ok(()),
        }
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
