//! [`VerifyRequest`]: what a request asks of a key.

use std::net::IpAddr;

use crate::ids::Environment;
use crate::policy::{Permission, ResourceRef};

/// What a request needs: the environment it is served in, a permission, and
/// optionally the resource it acts on, the client's address, and what it
/// spends of the key's usage controls ([`VerifyRequest::spend`],
/// [`VerifyRequest::credits`]).
///
/// ```
/// use keyward::{Environment, PermissionRegistry, VerifyRequest};
/// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
/// let live = Environment::new("live").unwrap();
/// let push = registry.get("package:push").unwrap();
/// let req = VerifyRequest::new(&live, push)
///     .resource("contoso", "AzureRM.DataFactoryV2")
///     .client_ip("10.1.2.3".parse().unwrap());
/// assert_eq!(req.resource.unwrap().name, "AzureRM.DataFactoryV2");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The environment this server serves; a key of another environment is refused.
    pub environment: &'a Environment,
    /// The permission the operation needs.
    pub permission: Permission,
    /// The resource the operation acts on, if any.
    pub resource: Option<ResourceRef<'a>>,
    /// The client's address. A key with an IP allowlist is refused when it is unknown.
    pub client_ip: Option<IpAddr>,
    /// What the request spends of the key's rate limits and credits (set
    /// with [`VerifyRequest::spend`] and [`VerifyRequest::credits`]).
    pub spending: Spending<'a>,
}

impl<'a> VerifyRequest<'a> {
    /// A request needing `permission` in `environment`.
    pub fn new(environment: &'a Environment, permission: Permission) -> Self {
        Self {
            environment,
            permission,
            resource: None,
            client_ip: None,
            spending: Spending::default(),
        }
    }
    /// The resource `name` of `owner` that the request acts on.
    pub fn resource(mut self, owner: &'a str, name: &'a str) -> Self {
        self.resource = Some(ResourceRef::new(owner, name));
        self
    }
    /// The client's address.
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Spends `cost` tokens of the rate limit `name` (one the policy
    /// declares with [`Policy::with_rate_limits`](crate::Policy::with_rate_limits))
    /// when the key passes every other check. A key that does not carry
    /// the limit spends nothing for it. At most [`Spending::MAX`] limits
    /// per request, no allocation.
    ///
    /// Refused as [`DenialReason::BadSpend`](crate::DenialReason::BadSpend)
    /// (an application bug, HTTP 500), naming the limit: a name the policy
    /// does not declare, a cost of 0, more than [`Spending::MAX`] spends.
    /// A request that one limit or the credits would deny spends nothing
    /// anywhere.
    ///
    /// ```
    /// use keyward::{Environment, PermissionRegistry, VerifyRequest};
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let req = VerifyRequest::new(&live, registry.get("package:push").unwrap())
    ///     .spend("requests", 1)
    ///     .spend("publish", 1);
    /// assert_eq!(req.spending.limits().count(), 2);
    /// ```
    pub fn spend(mut self, name: &'a str, cost: u32) -> Self {
        self.spending.push(name, cost);
        self
    }

    /// Spends `cost` credits of a metered key (one with
    /// [`Credits`](crate::usage::Credits)) instead of the default 1: a
    /// metered key is charged on every successful check, 1 unless the
    /// request says otherwise (0: this request is free). A key without
    /// credits is not charged. When the balance cannot cover the cost the
    /// check is denied with
    /// [`DenialReason::UsageExhausted`](crate::DenialReason::UsageExhausted)
    /// and nothing is spent.
    ///
    /// ```
    /// use keyward::{Environment, PermissionRegistry, VerifyRequest};
    /// let registry = PermissionRegistry::builder().permission("search").build().unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let req = VerifyRequest::new(&live, registry.get("search").unwrap()).credits(5);
    /// assert_eq!(req.spending.credit_cost(), 5);
    /// ```
    pub fn credits(mut self, cost: u64) -> Self {
        self.spending.set_credits(cost);
        self
    }
}

/// What a request spends: up to [`Spending::MAX`] rate limits with a cost
/// each, and a credit cost (default 1). Inline, no allocation; build it
/// with [`VerifyRequest::spend`] and [`VerifyRequest::credits`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Spending<'a> {
    limits: [(&'a str, u32); Spending::MAX],
    len: u8,
    /// Set when a spend could not be recorded (more than `MAX`): the check
    /// is refused naming it.
    overflow: Option<&'a str>,
    credits: Option<u64>,
}

impl<'a> Spending<'a> {
    /// The most rate limits one request spends.
    pub const MAX: usize = 4;

    pub(crate) fn push(&mut self, name: &'a str, cost: u32) {
        match self.limits.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = (name, cost);
                self.len += 1;
            }
            None => self.overflow = Some(name),
        }
    }

    pub(crate) fn set_credits(&mut self, cost: u64) {
        self.credits = Some(cost);
    }

    /// The limits spent, with their costs.
    pub fn limits(&self) -> impl Iterator<Item = (&'a str, u32)> + '_ {
        self.limits[..usize::from(self.len)].iter().copied()
    }

    /// The credits a metered key is charged (1 unless set).
    pub fn credit_cost(&self) -> u64 {
        self.credits.unwrap_or(1)
    }

    /// Whether the request names no limit (the credit cost still applies
    /// to a metered key).
    pub(crate) fn has_limits(&self) -> bool {
        self.len > 0 || self.overflow.is_some()
    }

    /// A spend refused before any key state is read: more than
    /// [`Spending::MAX`], or a cost of 0.
    pub(crate) fn malformed(&self) -> Option<crate::usage::UsageError> {
        if let Some(name) = self.overflow {
            return Some(crate::usage::UsageError::BadSpend {
                name: name.into(),
                reason: "more than 4 limits spent by one request",
            });
        }
        self.limits().find(|(_, cost)| *cost == 0).map(|(name, _)| {
            crate::usage::UsageError::BadSpend {
                name: name.into(),
                reason: "a cost of 0",
            }
        })
    }
}
