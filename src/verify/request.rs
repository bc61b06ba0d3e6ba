//! [`VerifyRequest`]: what a request asks of a key.

use std::net::IpAddr;

use crate::ids::Environment;
use crate::policy::{Permission, ResourceRef};

/// What a request needs: the environment it is served in, a permission, and
/// optionally the resource it acts on and the client's address.
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
}

impl<'a> VerifyRequest<'a> {
    /// A request needing `permission` in `environment`.
    pub fn new(environment: &'a Environment, permission: Permission) -> Self {
        Self {
            environment,
            permission,
            resource: None,
            client_ip: None,
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
}
