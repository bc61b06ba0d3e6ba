//! axum/tower integration (feature `axum`): a layer that authenticates each
//! request with a key or session token, an extractor for handlers, and
//! responses per RFC 6750.
//!
//! ```
//! use std::collections::HashMap;
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{Router, routing::{get, post}, http::HeaderName};
//! use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, SessionConfig, TokenFormat};
//! use keyward::axum::{Caller, KeywardLayer};
//!
//! let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
//! let push = registry.get("package:push").unwrap();
//! let manager = KeyManager::builder(
//!     MemoryStore::new(),
//!     TokenFormat::new("mkh", &["live"]).unwrap(),
//!     Policy::new(registry),
//! )
//! .sessions(SessionConfig::new("mkhs"))
//! .unwrap()
//! .build();
//!
//! // Who owns each package (your database): a guard on a path resource
//! // needs this, or it cannot be built. `None` means no such package yet:
//! // it would be created for the caller, so it is checked as the caller's.
//! let owners: Arc<HashMap<String, String>> =
//!     Arc::new(HashMap::from([("Contoso.Tools".into(), "contoso".into())]));
//! let auth = KeywardLayer::new(manager, Environment::new("live").unwrap())
//!     .api_key_header(HeaderName::from_static("x-api-key"))
//!     .trusted_proxies(["10.0.0.0/8".parse().unwrap()])
//!     .resource_owner(move |name: String| {
//!         let owner = owners.get(&name).cloned();
//!         async move { owner }
//!     });
//!
//! async fn me(caller: Caller) -> String {
//!     format!("hello {}", caller.owner())
//! }
//! async fn push_version(caller: Caller) -> &'static str {
//!     "pushed"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/me", get(me))
//!     .route_layer(auth.clone())                                   // any valid key or session
//!     .merge(
//!         Router::new()
//!             .route("/packages/{name}/versions", post(push_version))
//!             // permission + path resource (and its owner)
//!             .route_layer(auth.require(push).resource_param("name")?),
//!     );
//! // Serve with the peer address so IP allowlists work:
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # let _ = app;
//! # Ok::<(), keyward::axum::LayerError>(())
//! ```
//!
//! **Resources and owners**: a route guarded with
//! [`resource_param`](KeywardLayer::resource_param) checks the key against
//! the resource's name *and its owner*, so a key of one publisher never
//! reaches another's packages, whatever its name scope. The owner comes from
//! the resolver given to [`KeywardLayer::resource_owner`]; building such a
//! guard without one is refused with [`LayerError::NoOwnerResolver`].
//!
//! **Credentials**, in this order: `Authorization: Bearer <token>`,
//! `Authorization: Basic base64(key_id:secret)` (the "application ID +
//! secret" pair, rebuilt with [`TokenFormat::from_pair`]), or the configured
//! API-key header. A token with the session prefix is checked as a session,
//! anything else as a key. Each registry client's way:
//!
//! | client | sends | layer setting |
//! |---|---|---|
//! | cargo (crates.io and alternative registries) | `Authorization: <token>` | [`api_key_header(AUTHORIZATION)`](KeywardLayer::api_key_header) |
//! | `nuget push`, `dotnet nuget push` | `X-NuGet-ApiKey: <token>` | `api_key_header("x-nuget-apikey")`, and [`expiry_warning_header("x-nuget-warning")`](KeywardLayer::expiry_warning_header), the only header NuGet shows |
//! | npm | `Authorization: Bearer <token>` | none |
//! | curl, CI scripts | Bearer, `-u key_id:secret` (Basic) or an API-key header | none, or `api_key_header` |
//!
//! **Client address**: the TCP peer ([`ConnectInfo<SocketAddr>`]). Only
//! when the peer is in the trusted proxy ranges, `X-Forwarded-For` and the
//! standard `Forwarded` header (RFC 7239: `for=` values quoted or not, IPv6
//! in brackets, with ports) are read, from the right, skipping trusted hops,
//! over all headers of that name, at most 32 entries. An entry that is not
//! an address (`unknown`, an obfuscated `_name`, an element without
//! `for=`, anything unparsable) makes the address unknown rather than
//! falling back to a proxy's. When both headers are present they must name
//! the same client, or the address is unknown: a proxy sets one, and a
//! client could have forged the other. Without `ConnectInfo`, the address
//! is unknown. An unknown address refuses keys with an IP allowlist.
//!
//! **Responses**: 401 with `WWW-Authenticate: Bearer error="invalid_token"`
//! for authentication failures (no `error` when no credential was sent),
//! 403 with `error="insufficient_scope"` for authorization failures, 429 with
//! `Retry-After` when throttled, 503 with `Retry-After` when the store fails
//! or too many checks wait for argon2. JSON bodies say what to do; an
//! unknown key id, a wrong secret and a malformed token get the same answer.
//! What a response does show: a client source throttled for its failures
//! gets 429 whether the id it sent exists or not, but the per-id throttle
//! exists only for existing ids, so after
//! [`failure_burst`](crate::VerifierConfig::failure_burst) wrong secrets
//! for one id, a 429 shows that the id exists. Key ids are public by design
//! (in the token, listings, logs, Basic pairs), so this reveals nothing
//! secret; the secret, revoked, expired and suspended states are only told
//! after the secret was proven. A successful response for a
//! key that expires within [`KeywardLayer::expiry_warning_days`] days carries
//! a [`WARNING_HEADER`] header (its name set by
//! [`KeywardLayer::expiry_warning_header`]).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use ::axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use ::axum::http::request::Parts;
use ::axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use ::axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::TimeDelta;
use ipnet::IpNet;
use tower::{Layer, Service};
use zeroize::Zeroizing;

mod forwarded;

use crate::clock::Clock;
use crate::manager::KeyManager;
use crate::policy::{Permission, Policy, ResourceRef};
use crate::session::{IssuedSession, SessionError, SessionStore};
use crate::store::KeyStore;
use crate::token::{Environment, KeyId, TokenFormat};
use crate::verify::{CompiledKey, Denial, DenialKind, DenialReason, VerifiedKey, VerifyRequest};

/// The default response header that warns about a key expiring soon (like
/// NuGet's `X-NuGet-Warning`; see [`KeywardLayer::expiry_warning_header`]).
pub const WARNING_HEADER: &str = "x-keyward-warning";
/// Longest credential header value read, in bytes; longer is refused unread.
pub const MAX_CREDENTIAL_HEADER_LEN: usize = 512;

type OwnerFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;
type OwnerResolver = Arc<dyn Fn(String) -> OwnerFuture + Send + Sync>;

/// What the layer and the extractor share.
struct LayerContext {
    environment: Environment,
    policy: Policy,
    clock: Arc<dyn Clock>,
}

struct Config<S> {
    manager: KeyManager<S>,
    ctx: Arc<LayerContext>,
    api_key_header: Option<HeaderName>,
    trusted_proxies: Vec<IpNet>,
    warn_within_days: u32,
    warning_header: HeaderName,
    resource_owner: Option<OwnerResolver>,
}

#[derive(Clone)]
struct Requirement {
    permission: Permission,
    resource_param: Option<Arc<str>>,
}

/// A per-route guard that [`KeywardLayer`] refuses to build, so a
/// misconfigured route fails at startup instead of letting keys through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// [`KeywardLayer::resource_param`] on a layer without
    /// [`KeywardLayer::resource_owner`]: the guard could not tell whose the
    /// resource is, so any key whose name scope matched would reach every
    /// owner's resource of that name.
    #[error(
        "the guard on path parameter {param:?} cannot know who owns the resource: \
         set KeywardLayer::resource_owner before calling resource_param"
    )]
    NoOwnerResolver {
        /// The path parameter given.
        param: String,
    },
    /// [`KeywardLayer::resource_param`] without [`KeywardLayer::require`]:
    /// the guard would check no permission on the resource.
    #[error("resource_param({param:?}) needs a permission: call KeywardLayer::require first")]
    NoPermission {
        /// The path parameter given.
        param: String,
    },
}

/// A tower [`Layer`] that authenticates requests with keyward; see the
/// [module documentation](self). Cheap to clone.
///
/// Settings ([`api_key_header`](Self::api_key_header), [`trusted_proxies`](Self::trusted_proxies),
/// [`expiry_warning_days`](Self::expiry_warning_days), [`resource_owner`](Self::resource_owner))
/// are made once; [`require`](Self::require) and [`resource_param`](Self::resource_param)
/// make per-route copies that share them.
pub struct KeywardLayer<S> {
    config: Arc<Config<S>>,
    requirement: Option<Requirement>,
}

impl<S> Clone for KeywardLayer<S> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            requirement: self.requirement.clone(),
        }
    }
}

impl<S> fmt::Debug for KeywardLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywardLayer")
            .field("environment", &self.config.ctx.environment)
            .field("api_key_header", &self.config.api_key_header)
            .field("trusted_proxies", &self.config.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl<S> KeywardLayer<S> {
    /// A layer checking credentials with `manager` for the `environment`
    /// this server serves. Without [`require`](Self::require) it only
    /// authenticates (any valid key or session).
    pub fn new(manager: KeyManager<S>, environment: Environment) -> Self {
        let ctx = Arc::new(LayerContext {
            environment,
            policy: manager.shared.policy.clone(),
            clock: Arc::clone(&manager.shared.clock),
        });
        Self {
            config: Arc::new(Config {
                manager,
                ctx,
                api_key_header: None,
                trusted_proxies: Vec::new(),
                warn_within_days: 10,
                warning_header: HeaderName::from_static(WARNING_HEADER),
                resource_owner: None,
            }),
            requirement: None,
        }
    }

    fn config_mut(&mut self) -> &mut Config<S> {
        // Settings are made before any per-route copy exists; if one does,
        // this copy gets its own settings.
        if Arc::get_mut(&mut self.config).is_none() {
            let c = &self.config;
            self.config = Arc::new(Config {
                manager: c.manager.clone(),
                ctx: Arc::clone(&c.ctx),
                api_key_header: c.api_key_header.clone(),
                trusted_proxies: c.trusted_proxies.clone(),
                warn_within_days: c.warn_within_days,
                warning_header: c.warning_header.clone(),
                resource_owner: c.resource_owner.clone(),
            });
        }
        match Arc::get_mut(&mut self.config) {
            Some(c) => c,
            None => unreachable!("a fresh Arc is unique"),
        }
    }

    /// Also reads a bare token from this header (for example `x-api-key`,
    /// or NuGet's `x-nuget-apikey`).
    ///
    /// With [`AUTHORIZATION`](::axum::http::header::AUTHORIZATION) itself,
    /// `Authorization: <token>` without a scheme is accepted too, as cargo
    /// sends it to crates.io and every alternative registry (Bearer and
    /// Basic still work). Without this setting a scheme-less Authorization
    /// value is refused (401 `invalid_token`).
    ///
    /// ```
    /// use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
    /// use keyward::axum::{CredentialSource, read_credential};
    /// use keyward::{Environment, TokenFormat};
    ///
    /// let format = TokenFormat::new("mkh", &["live"]).unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let mut cargo = HeaderMap::new();
    /// cargo.insert(AUTHORIZATION, HeaderValue::from_static("mkh_live_abc"));
    /// // The layer reads credentials as read_credential does:
    /// // KeywardLayer::new(manager, live).api_key_header(AUTHORIZATION)
    /// let credential = read_credential(&cargo, Some(&AUTHORIZATION), &format, &live).unwrap();
    /// assert_eq!(credential.source(), CredentialSource::RawAuthorization);
    /// // Not asked for: refused.
    /// assert!(read_credential(&cargo, None, &format, &live).is_err());
    /// ```
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        self.config_mut().api_key_header = Some(name);
        self
    }

    /// Proxies whose `X-Forwarded-For` and `Forwarded` headers are believed
    /// (default: none); see the [module documentation](self) for how they
    /// are read.
    pub fn trusted_proxies(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        self.config_mut().trusted_proxies = ranges.into_iter().map(|n| n.trunc()).collect();
        self
    }

    /// Warn in the [expiry warning header](Self::expiry_warning_header)
    /// when the key expires within this many days (default 10; 0 turns the
    /// warning off).
    pub fn expiry_warning_days(mut self, days: u32) -> Self {
        self.config_mut().warn_within_days = days;
        self
    }

    /// The response header that carries the expiry warning (default
    /// [`WARNING_HEADER`], `x-keyward-warning`). NuGet clients show only
    /// `X-NuGet-Warning` to the user:
    ///
    /// ```
    /// # use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    /// # let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// # let manager = KeyManager::builder(
    /// #     MemoryStore::new(), TokenFormat::new("mkh", &["live"]).unwrap(), Policy::new(registry),
    /// # ).build();
    /// use axum::http::HeaderName;
    /// use keyward::axum::KeywardLayer;
    ///
    /// let nuget = KeywardLayer::new(manager, Environment::new("live").unwrap())
    ///     .api_key_header(HeaderName::from_static("x-nuget-apikey"))
    ///     .expiry_warning_header(HeaderName::from_static("x-nuget-warning"));
    /// # let _ = nuget;
    /// ```
    pub fn expiry_warning_header(mut self, name: HeaderName) -> Self {
        self.config_mut().warning_header = name;
        self
    }

    /// How to find the owner of a resource named in the path, for
    /// [`resource_param`](Self::resource_param), which refuses to build a
    /// guard without it. `None` means the resource does not exist yet and
    /// would be created for the caller, so it is checked as the caller's
    /// own: return `None` only for a name nobody holds.
    pub fn resource_owner<F, Fut>(mut self, resolve: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.config_mut().resource_owner = Some(Arc::new(move |name| Box::pin(resolve(name))));
        self
    }

    /// A copy of this layer that also requires `permission` (for one route,
    /// with `Router::route_layer`).
    pub fn require(&self, permission: Permission) -> Self {
        Self {
            config: Arc::clone(&self.config),
            requirement: Some(Requirement {
                permission,
                resource_param: None,
            }),
        }
    }

    /// Checks the permission against the resource named by the path
    /// parameter `param` (`/packages/{name}` → `"name"`) and its owner, as
    /// the [`resource_owner`](Self::resource_owner) resolver tells it. Add it
    /// with `Router::route_layer` so the path parameters are known; a
    /// missing parameter is a 500.
    ///
    /// # Errors
    ///
    /// - [`LayerError::NoPermission`] without [`require`](Self::require)
    ///   first (the guard would check nothing but the key).
    /// - [`LayerError::NoOwnerResolver`] when no resolver was set: without
    ///   one, a key with a wide name scope would reach other owners'
    ///   resources.
    ///
    /// ```
    /// use keyward::axum::{KeywardLayer, LayerError};
    /// use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    ///
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let push = registry.get("package:push").unwrap();
    /// let manager = KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(registry),
    /// )
    /// .build();
    /// let auth = KeywardLayer::new(manager, Environment::new("live").unwrap());
    ///
    /// // Who owns a package is unknown: refused when built.
    /// let refused = auth.require(push).resource_param("name").unwrap_err();
    /// assert!(matches!(refused, LayerError::NoOwnerResolver { .. }));
    ///
    /// let auth = auth.resource_owner(|name: String| async move {
    ///     (name == "Contoso.Tools").then(|| "contoso".to_owned())
    /// });
    /// let guard = auth.require(push).resource_param("name").unwrap();
    /// # let _ = guard;
    /// ```
    pub fn resource_param(mut self, param: &str) -> Result<Self, LayerError> {
        let has_resolver = self.config.resource_owner.is_some();
        let Some(requirement) = &mut self.requirement else {
            return Err(LayerError::NoPermission {
                param: param.to_owned(),
            });
        };
        if !has_resolver {
            return Err(LayerError::NoOwnerResolver {
                param: param.to_owned(),
            });
        }
        requirement.resource_param = Some(param.into());
        Ok(self)
    }

    /// The manager.
    pub fn manager(&self) -> &KeyManager<S> {
        &self.config.manager
    }

    /// The environment served.
    pub fn environment(&self) -> &Environment {
        &self.config.ctx.environment
    }
}

impl<S, I> Layer<I> for KeywardLayer<S> {
    type Service = RequireKey<S, I>;
    fn layer(&self, inner: I) -> Self::Service {
        RequireKey {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service made by [`KeywardLayer`].
pub struct RequireKey<S, I> {
    layer: KeywardLayer<S>,
    inner: I,
}

impl<S, I: Clone> Clone for RequireKey<S, I> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, I> fmt::Debug for RequireKey<S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireKey")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S, I, B> Service<Request<B>> for RequireKey<S, I>
where
    S: KeyStore + SessionStore,
    I: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    I::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let caller = match layer.check(&mut parts).await {
                Ok(caller) => caller,
                Err(rejection) => return Ok(rejection.into_response()),
            };
            let warning = layer.expiry_warning(&caller);
            parts.extensions.insert(caller);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if let Some(value) = warning {
                let name = layer.config.warning_header.clone();
                response.headers_mut().insert(name, value);
            }
            Ok(response)
        })
    }
}

/// Where a request's credential came from; see [`read_credential`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic base64(key_id:secret)`, rebuilt into a token.
    Basic,
    /// The API-key header set with [`KeywardLayer::api_key_header`].
    ApiKeyHeader,
    /// `Authorization: <token>` without a scheme, as cargo sends it; read
    /// only when the API-key header is `Authorization` itself.
    RawAuthorization,
}

/// A credential read from request headers by [`read_credential`]: the token
/// to check (for Basic, the token rebuilt from the key id and secret), or,
/// for a Basic pair whose secret does not follow the token format (a key
/// imported from another system, see [`ImportKey`](crate::ImportKey)), the
/// key id and that secret. Zeroized on drop; `Debug` shows only its source.
pub struct RequestCredential {
    token: Zeroizing<String>,
    pair_id: Option<String>,
    source: CredentialSource,
}

impl RequestCredential {
    /// The token, or the secret of a foreign pair (see
    /// [`RequestCredential::pair_key_id`]). Treat it as a secret: never log
    /// or store it.
    pub fn expose_secret(&self) -> &str {
        &self.token
    }
    /// For a Basic pair whose secret is not in the token format: the key id
    /// (check it with [`Verifier::verify_pair`](crate::Verifier::verify_pair)).
    pub fn pair_key_id(&self) -> Option<&str> {
        self.pair_id.as_deref()
    }
    /// Which header and scheme it came from.
    pub fn source(&self) -> CredentialSource {
        self.source
    }
}

impl fmt::Debug for RequestCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestCredential")
            .field("source", &self.source)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Reads the credential from request headers exactly as [`KeywardLayer`]
/// does, without checking it against any store: `Authorization` (Bearer, or
/// Basic `key_id:secret` rebuilt into a token of `format` in `environment`),
/// else the `api_key_header` if given. When `api_key_header` is
/// `Authorization` itself, a scheme-less `Authorization: <token>` (cargo's
/// form) is the token ([`CredentialSource::RawAuthorization`]); otherwise
/// it is refused. Exposed for callers that read credentials outside the
/// layer, and for fuzzing.
///
/// Errors are the layer's 401 rejections: `invalid_token` for a malformed
/// credential (two Authorization headers, an unknown scheme, an empty or
/// over-long value, a Basic value that is not base64 of a valid
/// `key_id:secret`), and a plain challenge when there is no credential.
///
/// ```
/// use axum::http::{HeaderMap, HeaderValue, StatusCode};
/// use keyward::axum::{CredentialSource, read_credential};
/// use keyward::{Environment, TokenFormat};
///
/// let format = TokenFormat::new("mkh", &["live"]).unwrap();
/// let live = Environment::new("live").unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("authorization", HeaderValue::from_static("Bearer mkh_live_abc"));
/// let credential = read_credential(&headers, None, &format, &live).unwrap();
/// assert_eq!(credential.source(), CredentialSource::Bearer);
/// assert_eq!(credential.expose_secret(), "mkh_live_abc");
///
/// headers.insert("authorization", HeaderValue::from_static("Digest x"));
/// let refused = read_credential(&headers, None, &format, &live).unwrap_err();
/// assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(refused.error(), "invalid_token");
/// ```
pub fn read_credential(
    headers: &HeaderMap,
    api_key_header: Option<&HeaderName>,
    format: &TokenFormat,
    environment: &Environment,
) -> Result<RequestCredential, KeywardRejection> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(KeywardRejection::malformed("send one Authorization header"));
        }
        let raw = api_key_header == Some(&AUTHORIZATION);
        return parse_authorization(value, raw, format, environment);
    }
    if let Some(name) = api_key_header {
        let mut values = headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(KeywardRejection::malformed("send one API key header"));
            }
            let token = header_text(value)?.trim();
            if token.is_empty() {
                return Err(KeywardRejection::malformed("the API key header is empty"));
            }
            return Ok(RequestCredential {
                token: Zeroizing::new(token.to_owned()),
                pair_id: None,
                source: CredentialSource::ApiKeyHeader,
            });
        }
    }
    Err(KeywardRejection::missing(api_key_header))
}

/// Reads an Authorization value: Bearer, Basic, or, when `raw` (the
/// application named Authorization as its API-key header), a bare token.
fn parse_authorization(
    value: &HeaderValue,
    raw: bool,
    format: &TokenFormat,
    environment: &Environment,
) -> Result<RequestCredential, KeywardRejection> {
    let text = header_text(value)?.trim();
    if text.is_empty() {
        return Err(KeywardRejection::malformed(
            "the Authorization header is empty",
        ));
    }
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(KeywardRejection::malformed(
                "the Bearer credential is empty",
            ));
        }
        return Ok(RequestCredential {
            token: Zeroizing::new(rest.to_owned()),
            pair_id: None,
            source: CredentialSource::Bearer,
        });
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| KeywardRejection::malformed("the Basic credential is not base64"))?,
        );
        let pair = std::str::from_utf8(&decoded).map_err(|_| {
            KeywardRejection::malformed("the Basic credential is not key_id:secret")
        })?;
        let (id, secret) = pair.split_once(':').ok_or_else(|| {
            KeywardRejection::malformed("the Basic credential is not key_id:secret")
        })?;
        if let Ok(token) = format.from_pair(environment, id, secret) {
            return Ok(RequestCredential {
                token: Zeroizing::new(token.expose_secret().to_owned()),
                pair_id: None,
                source: CredentialSource::Basic,
            });
        }
        // Not this format's shape: an imported key's id and secret, checked
        // as a pair (the same limits as `Verifier::verify_pair`).
        let id_ok = !id.is_empty()
            && id.len() <= crate::token::MAX_KEY_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric());
        let secret_ok = !secret.is_empty()
            && secret.len() <= crate::verify::MAX_PAIR_SECRET_LEN
            && secret.bytes().all(|b| b.is_ascii_graphic());
        if !(id_ok && secret_ok) {
            return Err(KeywardRejection::malformed(
                "the Basic credential is not a valid key_id:secret pair",
            ));
        }
        return Ok(RequestCredential {
            token: Zeroizing::new(secret.to_owned()),
            pair_id: Some(id.to_owned()),
            source: CredentialSource::Basic,
        });
    }
    if raw && rest.is_empty() {
        // One word that is no scheme: the token itself (cargo's form).
        return Ok(RequestCredential {
            token: Zeroizing::new(text.to_owned()),
            pair_id: None,
            source: CredentialSource::RawAuthorization,
        });
    }
    Err(KeywardRejection::malformed(if raw {
        "send the key alone, or use the Bearer or Basic authorization scheme"
    } else {
        "use the Bearer or Basic authorization scheme"
    }))
}

impl<S: KeyStore + SessionStore> KeywardLayer<S> {
    /// Reads the credential: Authorization (Bearer or Basic), then the API-key header.
    fn credential(&self, headers: &HeaderMap) -> Result<RequestCredential, KeywardRejection> {
        read_credential(
            headers,
            self.config.api_key_header.as_ref(),
            self.config.manager.format(),
            &self.config.ctx.environment,
        )
    }

    /// The client's address: the peer, or, behind trusted proxies, what
    /// `X-Forwarded-For` and `Forwarded` say (see [`forwarded::client_ip`]).
    fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        let trusted = &self.config.trusted_proxies;
        forwarded::client_ip(peer, &parts.headers, |ip| {
            trusted.iter().any(|n| n.contains(&ip))
        })
    }

    /// Authenticates (and authorizes, when the route requires it) a request.
    async fn check(&self, parts: &mut Parts) -> Result<Caller, KeywardRejection> {
        let credential = self.credential(&parts.headers)?;
        let client_ip = self.client_ip(parts);
        let config = &*self.config;
        let env = &config.ctx.environment;
        let t = credential.expose_secret();
        // A Basic pair is always a key; a bare token may be a session token.
        let basic = credential.source() == CredentialSource::Basic;
        let (key, session) = if !basic && config.manager.is_session_token(t) {
            let s = config
                .manager
                .authenticate_session(t, env, client_ip)
                .await
                .map_err(|d| KeywardRejection::denied(&d, &config.ctx.policy, None))?;
            let id = s.session_id().clone();
            (s.into_key(), Some(id))
        } else {
            let verifier = config.manager.verifier();
            let key = match credential.pair_key_id() {
                Some(id) => verifier.authenticate_pair(id, t, env, client_ip).await,
                None => verifier.authenticate(t, env, client_ip).await,
            }
            .map_err(|d| KeywardRejection::denied(&d, &config.ctx.policy, None))?;
            (key, None)
        };
        let caller = Caller {
            key,
            session,
            client_ip,
            ctx: Arc::clone(&config.ctx),
        };
        if let Some(req) = &self.requirement {
            match &req.resource_param {
                None => caller.authorize(req.permission, None)?,
                Some(param) => {
                    let params = RawPathParams::from_request_parts(parts, &())
                        .await
                        .map_err(|_| KeywardRejection::misconfigured())?;
                    let name = params
                        .iter()
                        .find(|(k, _)| *k == &**param)
                        .map(|(_, v)| v.to_owned())
                        .ok_or_else(KeywardRejection::misconfigured)?;
                    // `resource_param` refuses to build a guard without a
                    // resolver; should one ever run without, it denies.
                    let Some(resolve) = &config.resource_owner else {
                        return Err(KeywardRejection::owner_unknown(
                            req.permission,
                            &config.ctx.policy,
                        ));
                    };
                    let owner = resolve(name.clone())
                        .await
                        .unwrap_or_else(|| caller.owner().as_str().to_owned());
                    caller.authorize(req.permission, Some(ResourceRef::new(&owner, &name)))?;
                }
            }
        }
        Ok(caller)
    }

    fn expiry_warning(&self, caller: &Caller) -> Option<HeaderValue> {
        let days = self.config.warn_within_days;
        if days == 0 || caller.session.is_some() {
            return None;
        }
        let expires = caller.expires_at()?;
        let now = self.config.ctx.clock.now();
        if expires - now > TimeDelta::days(i64::from(days)) {
            return None;
        }
        let left = (expires - now).num_days();
        let text = format!(
            "The API key {} expires in {} day{}, on {}. Regenerate it or create a new key before then.",
            caller.id(),
            left,
            if left == 1 { "" } else { "s" },
            expires.format("%Y-%m-%d %H:%M UTC"),
        );
        HeaderValue::from_str(&text).ok()
    }

    /// Exchanges the key this request carries (Bearer, Basic pair or the
    /// API-key header) for a session token, for a `POST /session` handler
    /// (not behind the layer). A session token is refused with 403.
    pub async fn exchange(
        &self,
        parts: &Parts,
        ttl: Option<Duration>,
    ) -> Result<IssuedSession, KeywardRejection> {
        let credential = self.credential(&parts.headers)?;
        let client_ip = self.client_ip(parts);
        let token = credential.expose_secret();
        let policy = &self.config.ctx.policy;
        let manager = &self.config.manager;
        let environment = &self.config.ctx.environment;
        let issued = match credential.pair_key_id() {
            // An imported key's id and secret (not in the token format).
            Some(id) => {
                manager
                    .exchange_pair(id, token, environment, ttl, client_ip)
                    .await
            }
            None => manager.exchange(token, environment, ttl, client_ip).await,
        };
        issued.map_err(|e| match e {
            SessionError::Denied(d) => KeywardRejection::denied(&d, policy, None),
            SessionError::SessionTokenGiven => KeywardRejection::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "A session token cannot create another session. Exchange an API key instead."
                    .into(),
            ),
            SessionError::TtlTooLong { max, .. } => KeywardRejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "The requested session lifetime is too long; the maximum is {} seconds.",
                    max.as_secs()
                ),
            ),
            SessionError::ZeroTtl => KeywardRejection::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The session lifetime must be longer than zero.".into(),
            ),
            SessionError::TooManySessions { limit, .. } => KeywardRejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!(
                    "This key already has {limit} live session tokens. Reuse one until it expires."
                ),
            ),
            SessionError::Store(_) => KeywardRejection::unavailable(),
            _ => KeywardRejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Sessions are not available on this server.".into(),
            ),
        })
    }
}

fn header_text(value: &HeaderValue) -> Result<&str, KeywardRejection> {
    if value.len() > MAX_CREDENTIAL_HEADER_LEN {
        return Err(KeywardRejection::malformed("the credential is too long"));
    }
    value.to_str().map_err(|_| {
        KeywardRejection::malformed("the credential has characters that are not visible ASCII")
    })
}

/// The authenticated caller, put in the request extensions by
/// [`KeywardLayer`] and taken by handlers as an extractor. Derefs to the
/// key's [`CompiledKey`] (for a session: the key snapshot), so `id()`,
/// `owner()`, `permissions()`, `expires_at()` work on both.
///
/// Used without the layer, the extractor answers 500 with a message saying
/// to add it.
#[derive(Clone)]
pub struct Caller {
    key: VerifiedKey,
    session: Option<KeyId>,
    client_ip: Option<IpAddr>,
    ctx: Arc<LayerContext>,
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
        let req = VerifyRequest {
            environment: &self.ctx.environment,
            permission,
            resource,
            client_ip: self.client_ip,
        };
        let now = self.ctx.clock.now();
        self.key
            .check(&req, self.ctx.policy.resource_rule(), now)
            .map_err(|reason| {
                let denial = Denial::new(reason, Some(self.key.id().as_str()));
                KeywardRejection::denied(&denial, &self.ctx.policy, Some(permission))
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

/// A refusal as an HTTP response: status, RFC 6750 `WWW-Authenticate`,
/// `Retry-After` when throttled, and a JSON body `{"error", "message"}` that
/// says what to do. Never contains a credential, and says the same for an
/// unknown key id as for a wrong secret.
#[derive(Debug, Clone)]
pub struct KeywardRejection {
    status: StatusCode,
    error: &'static str,
    message: String,
    www_authenticate: Option<String>,
    retry_after: Option<u64>,
    reason: Option<&'static str>,
}

impl KeywardRejection {
    fn new(status: StatusCode, error: &'static str, message: String) -> Self {
        Self {
            status,
            error,
            message,
            www_authenticate: None,
            retry_after: None,
            reason: None,
        }
    }

    fn challenge(mut self, error: Option<&str>, scope: Option<&str>) -> Self {
        let mut value = String::from("Bearer realm=\"keyward\"");
        if let Some(e) = error {
            value.push_str(&format!(", error=\"{e}\""));
        }
        if let Some(s) = scope {
            value.push_str(&format!(", scope=\"{s}\""));
        }
        self.www_authenticate = Some(value);
        self
    }

    fn missing(header: Option<&HeaderName>) -> Self {
        let extra = match header {
            Some(h) if h == AUTHORIZATION => ", as `Authorization: <key>`".to_owned(),
            Some(h) => format!(", in the {h} header"),
            None => String::new(),
        };
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
            format!(
                "This endpoint needs an API key: send it as `Authorization: Bearer <key>`{extra}, or as HTTP Basic key_id:secret."
            ),
        )
        .challenge(None, None)
    }

    fn malformed(what: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            format!("The credentials are malformed: {what}. Send the API key exactly as it was shown when it was created."),
        )
        .challenge(Some("invalid_token"), None)
    }

    fn unavailable() -> Self {
        let mut r = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The key could not be checked right now. Try again in a few seconds.".into(),
        );
        r.retry_after = Some(5);
        r
    }

    fn misconfigured() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "keyward is misconfigured on this route: a resource path parameter was required but not found \
             (add the layer with Router::route_layer and check the parameter name)."
                .into(),
        )
    }

    fn owner_unknown(permission: Permission, policy: &Policy) -> Self {
        let scope = policy.permissions().name(permission);
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The owner of this resource could not be determined, so no key may use it here.".into(),
        )
        .challenge(Some("insufficient_scope"), Some(scope))
    }

    fn missing_layer() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "keyward::axum::Caller was used on a route without KeywardLayer: add the layer to this route \
             (Router::route_layer(KeywardLayer::new(...)))."
                .into(),
        )
    }

    fn denied(denial: &Denial, policy: &Policy, permission: Option<Permission>) -> Self {
        use DenialReason::*;
        let mut r = match denial.kind() {
            DenialKind::Authentication => {
                let message = match &denial.reason {
                    Malformed(_) => {
                        "The API key is malformed. Send it exactly as it was shown when it was created."
                    }
                    WrongEnvironment => {
                        "This API key belongs to another environment. Use a key made for this one."
                    }
                    Revoked => "This API key was revoked. Create a new key.",
                    Expired => {
                        "This API key or session has expired. Create a new key, or exchange your key for a new session."
                    }
                    IpNotAllowed => {
                        "This API key cannot be used from this address. Use it from an allowed network, or edit its IP allowlist."
                    }
                    _ => {
                        "The API key is not valid. Check that it was copied whole, or create a new key."
                    }
                };
                Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message.into())
                    .challenge(Some("invalid_token"), None)
            }
            DenialKind::Authorization => {
                let scope = permission.map(|p| policy.permissions().name(p).to_owned());
                let message = match (&denial.reason, &scope) {
                    (SessionOnly, _) => {
                        "This operation cannot be done with an API key or a session made from one; sign in as the owner's administrator.".to_owned()
                    }
                    (PermissionMissing, Some(s)) => {
                        format!("This API key lacks the permission {s:?}. Create or edit a key with it.")
                    }
                    (PermissionMissing, None) => "This API key lacks the permission this operation needs.".to_owned(),
                    _ => "This API key does not cover this resource. Use a key whose scope includes it.".to_owned(),
                };
                Self::new(StatusCode::FORBIDDEN, "insufficient_scope", message)
                    .challenge(Some("insufficient_scope"), scope.as_deref())
            }
            DenialKind::Throttled => {
                let mut r = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    "Too many failed attempts with this key id. Wait before trying again.".into(),
                );
                r.retry_after = Some(denial.retry_after.map_or(1, |d| d.as_secs().max(1)));
                r
            }
            DenialKind::Unavailable => {
                let mut r = Self::unavailable();
                if let Some(wait) = denial.retry_after {
                    r.retry_after = Some(wait.as_secs().max(1));
                }
                r
            }
        };
        r.reason = Some(denial.reason.code());
        r
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The RFC 6750 / OAuth error code of the body (`invalid_token`, `insufficient_scope`, ...).
    pub fn error(&self) -> &'static str {
        self.error
    }

    /// The message for the caller.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The exact denial reason code for logs and metrics (not sent to the
    /// caller), when the refusal came from a check.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }
}

impl fmt::Display for KeywardRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error,
            self.message
        )
    }
}

impl std::error::Error for KeywardRejection {}

impl IntoResponse for KeywardRejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "message": self.message });
        let mut response = (self.status, ::axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(v) = self
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(WWW_AUTHENTICATE, v);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
