//! The [`Caller`] extractor: who the layer let in.

use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ::axum::extract::{FromRequestParts, OptionalFromRequestParts};
use ::axum::http::request::Parts;

use super::rejection::KeywardRejection;
use crate::clock::Clock;
use crate::ids::{Environment, KeyId};
use crate::policy::{Permission, Policy, ResourceRef};
use crate::verify::{CompiledKey, Denial, DenialReason, VerifiedKey, VerifyRequest};
use chrono::{DateTime, Utc};

/// What the layer and the extractor share.
#[derive(Clone)]
pub(super) struct LayerContext {
    pub(super) environment: Environment,
    pub(super) policy: Policy,
    pub(super) clock: Arc<dyn Clock>,
    /// The realm of `WWW-Authenticate` challenges.
    pub(super) realm: Arc<str>,
}

/// The authenticated caller, put in the request extensions by
/// [`KeywardLayer`](super::KeywardLayer) and taken by handlers as an extractor. Derefs to the
/// key's [`CompiledKey`] (for a session: the key snapshot), so `id()`,
/// `owner()`, `permissions()`, `expires_at()` work on both.
///
/// Used without the layer, the extractor answers 500 with a message saying
/// to add it.
///
/// `Option<Caller>` is the optional-auth extractor: `None` when the layer
/// let the request through without a caller (a layer with
/// [`allow_anonymous`](super::KeywardLayer::allow_anonymous) and a request
/// that sent no credential) or when no layer ran; it never rejects.
///
/// ```
/// use keyward::axum::Caller;
///
/// async fn packages(caller: Option<Caller>) -> String {
///     match caller {
///         Some(caller) => format!("{}'s packages, listed and unlisted", caller.owner()),
///         None => "listed packages".to_owned(),
///     }
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(packages);
/// ```
#[derive(Clone)]
pub struct Caller {
    pub(super) key: VerifiedKey,
    pub(super) session: Option<KeyId>,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) ctx: Arc<LayerContext>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("key_id", self.key.id())
            .field("owner", self.key.owner())
            .field("session", &self.session)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

impl std::ops::Deref for Caller {
    type Target = CompiledKey;
    fn deref(&self) -> &CompiledKey {
        &self.key
    }
}

impl Caller {
    /// The key (or session snapshot) that was verified.
    pub fn key(&self) -> &VerifiedKey {
        &self.key
    }
    /// The session id, when the caller used a session token.
    pub fn session_id(&self) -> Option<&KeyId> {
        self.session.as_ref()
    }
    /// Whether the caller used a session token.
    pub fn is_session(&self) -> bool {
        self.session.is_some()
    }
    /// The client's address as the layer determined it.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }
    /// The names of the caller's effective permissions.
    pub fn permission_names(&self) -> Vec<&str> {
        self.ctx.policy.permissions().names(self.key.permissions())
    }

    /// Checks, inside a handler, that the caller may use `permission` on
    /// `resource` (for decisions the route cannot make up front, such as
    /// push-new versus push). The error is the 403 (or 401) response.
    pub fn authorize(
        &self,
        permission: Permission,
        resource: Option<ResourceRef<'_>>,
    ) -> Result<(), KeywardRejection> {
        self.authorize_at(permission, resource, self.ctx.clock.now())
    }

    /// [`Caller::authorize`] at a time already read.
    fn authorize_at(
        &self,
        permission: Permission,
        resource: Option<ResourceRef<'_>>,
        now: DateTime<Utc>,
    ) -> Result<(), KeywardRejection> {
        let rule = self.ctx.policy.resource_rule();
        self.authorize_with(permission, resource, |key, req| key.check(req, rule, now))
    }

    /// The layer's authorization of a caller it has just authenticated:
    /// the permission and the resource only, as the authentication
    /// checked this key's expiry and IP allowlist for this request's
    /// address (and a session's check its key's).
    pub(super) fn authorize_granted(
        &self,
        permission: Permission,
        resource: Option<ResourceRef<'_>>,
    ) -> Result<(), KeywardRejection> {
        let rule = self.ctx.policy.resource_rule();
        self.authorize_with(permission, resource, |key, req| key.check_grant(req, rule))
    }

    fn authorize_with(
        &self,
        permission: Permission,
        resource: Option<ResourceRef<'_>>,
        check: impl FnOnce(&CompiledKey, &VerifyRequest<'_>) -> Result<(), DenialReason>,
    ) -> Result<(), KeywardRejection> {
        let req = VerifyRequest {
            environment: &self.ctx.environment,
            permission,
            resource,
            client_ip: self.client_ip,
            spending: Default::default(),
        };
        check(&self.key, &req).map_err(|reason| {
            let denial = Denial::new(reason, Some(self.key.id().as_str()));
            KeywardRejection::denied(&denial, &self.ctx.policy, Some(permission))
                .in_realm(&self.ctx.realm)
        })
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Caller {
    type Rejection = KeywardRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(KeywardRejection::missing_layer)
    }
}

/// `Option<Caller>`: the caller when the layer put one in the request,
/// `None` otherwise; never a rejection.
impl<St: Send + Sync> OptionalFromRequestParts<St> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}
