//! [`KeywardLayer`]: its settings and per-route guards.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ::axum::http::HeaderName;
use ipnet::IpNet;

use super::caller::LayerContext;
use super::rejection::DEFAULT_REALM;
use super::sessions::SessionAuth;
use crate::ids::Environment;
use crate::manager::KeyManager;
use crate::policy::Permission;
use crate::store::KeyStore;
use crate::store::SessionStore;
use crate::verify::{Spending, Verifier};

/// The default response header that warns about a key expiring soon (like
/// NuGet's `X-NuGet-Warning`; see [`KeywardLayer::expiry_warning_header`]).
pub const WARNING_HEADER: &str = "x-keyward-warning";
pub(super) type OwnerFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;
/// A lookup of [`KeywardLayer::resource_owner_now`], given the name and a
/// callback for its answer.
pub(super) type OwnerLookup = dyn Fn(&str, &mut dyn FnMut(Option<&str>)) + Send + Sync;

/// How the owner of a path resource is found: set with
/// [`KeywardLayer::resource_owner`] (a future) or
/// [`KeywardLayer::resource_owner_now`] (an answer at once).
#[derive(Clone)]
pub(super) enum OwnerResolver {
    /// Given the name (a copy), a future of the owner.
    Future(Arc<dyn Fn(String) -> OwnerFuture + Send + Sync>),
    /// Given the name (borrowed), passes the owner to the callback, once.
    Now(Arc<OwnerLookup>),
}

pub(super) struct Config<S> {
    pub(super) verifier: Verifier<S>,
    /// Set by [`KeywardLayer::with_sessions`]: session tokens are checked
    /// and issued only then.
    pub(super) sessions: Option<Arc<dyn SessionAuth>>,
    pub(super) ctx: Arc<LayerContext>,
    pub(super) api_key_header: Option<HeaderName>,
    pub(super) trusted_proxies: Vec<IpNet>,
    pub(super) proxy_headers: super::forwarded::ProxyHeaders,
    pub(super) warn_within_days: u32,
    pub(super) warning_header: HeaderName,
    pub(super) resource_owner: Option<OwnerResolver>,
    pub(super) allow_anonymous: bool,
    /// Whether successful responses carry the `RateLimit` header fields.
    pub(super) rate_limit_headers: bool,
    /// Set by [`KeywardLayer::without_client_addresses`]: a request
    /// without `ConnectInfo` is checked with no address instead of refused.
    pub(super) no_client_addresses: bool,
}

#[derive(Clone)]
pub(super) struct Requirement {
    pub(super) permission: Permission,
    pub(super) resource_param: Option<Arc<str>>,
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
    /// [`KeywardLayer::realm`] with a realm that cannot be sent as an
    /// HTTP quoted string (or is empty, or too long).
    #[error(
        "the realm {realm:?} cannot be sent in WWW-Authenticate: use 1 to 64 visible ASCII \
         characters or spaces, without '\"' or '\\'"
    )]
    BadRealm {
        /// The realm given (cut to the maximum length).
        realm: String,
    },
    /// [`KeywardLayer::spend`] of a limit the policy does not declare, a
    /// cost of 0, or more than [`Spending::MAX`] limits on one route.
    #[error("the route cannot spend {name:?}: {reason}")]
    BadSpend {
        /// The limit's name as given.
        name: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// [`KeywardLayer::resource_param`] without [`KeywardLayer::require`]:
    /// the guard would check no permission on the resource.
    #[error("resource_param({param:?}) needs a permission: call KeywardLayer::require first")]
    NoPermission {
        /// The path parameter given.
        param: String,
    },
}

/// A tower [`Layer`](tower::Layer) that authenticates requests with keyward; see the
/// [module documentation](crate::axum). Cheap to clone.
///
/// Settings ([`api_key_header`](Self::api_key_header), [`trusted_proxies`](Self::trusted_proxies),
/// [`expiry_warning_days`](Self::expiry_warning_days), [`resource_owner`](Self::resource_owner))
/// are made once; [`require`](Self::require) and [`resource_param`](Self::resource_param)
/// make per-route copies that share them.
pub struct KeywardLayer<S> {
    pub(super) config: Arc<Config<S>>,
    pub(super) requirement: Option<Requirement>,
    /// What each request through this copy spends (see [`KeywardLayer::spend`]).
    pub(super) spending: Spending<'static>,
}

impl<S> Clone for KeywardLayer<S> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            requirement: self.requirement.clone(),
            spending: self.spending,
        }
    }
}

impl<S> fmt::Debug for KeywardLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywardLayer")
            .field("environment", &self.config.ctx.environment)
            .field("api_key_header", &self.config.api_key_header)
            .field("trusted_proxies", &self.config.trusted_proxies)
            .field("sessions", &self.config.sessions.is_some())
            .field("allow_anonymous", &self.config.allow_anonymous)
            .finish_non_exhaustive()
    }
}

impl<S> KeywardLayer<S> {
    /// The longest [`realm`](Self::realm), in bytes.
    pub const MAX_REALM_LEN: usize = 64;

    /// A layer checking keys with `verifier` for the `environment` this
    /// server serves. Without [`require`](Self::require) it only
    /// authenticates (any valid key).
    ///
    /// It needs only a [`KeyStore`]: session tokens are not recognised
    /// (they are refused like any token that is no key, 401
    /// `invalid_token`) and [`exchange`](Self::exchange) answers 500. For
    /// sessions, build the layer with [`with_sessions`](Self::with_sessions).
    ///
    /// ```
    /// use keyward::axum::KeywardLayer;
    /// use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    ///
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let manager = KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(registry),
    /// )
    /// .build().unwrap();
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap());
    /// # let _ = auth;
    /// ```
    pub fn new(verifier: Verifier<S>, environment: Environment) -> Self {
        Self::build(verifier, None, environment)
    }

    /// A layer that checks keys *and session tokens* with `manager` (built
    /// with [`KeyManagerBuilder::sessions`](crate::manager::KeyManagerBuilder::sessions)),
    /// and whose [`exchange`](Self::exchange) issues sessions. Its store must
    /// also be a [`SessionStore`]. A token with the session prefix is
    /// checked as a session, anything else as a key. A manager built
    /// without sessions gives a layer that behaves as [`new`](Self::new).
    pub fn with_sessions(manager: KeyManager<S>, environment: Environment) -> Self
    where
        S: KeyStore + SessionStore,
    {
        let verifier = manager.verifier();
        // A manager built without sessions has none to give.
        let sessions = manager
            .session_format()
            .is_some()
            .then(|| Arc::new(manager) as Arc<dyn SessionAuth>);
        Self::build(verifier, sessions, environment)
    }

    fn build(
        verifier: Verifier<S>,
        sessions: Option<Arc<dyn SessionAuth>>,
        environment: Environment,
    ) -> Self {
        let ctx = Arc::new(LayerContext {
            environment,
            policy: verifier.shared.policy.clone(),
            clock: Arc::clone(&verifier.shared.clock),
            realm: Arc::from(DEFAULT_REALM),
        });
        Self {
            config: Arc::new(Config {
                verifier,
                sessions,
                ctx,
                api_key_header: None,
                trusted_proxies: Vec::new(),
                proxy_headers: Default::default(),
                warn_within_days: 10,
                warning_header: HeaderName::from_static(WARNING_HEADER),
                resource_owner: None,
                allow_anonymous: false,
                rate_limit_headers: false,
                no_client_addresses: false,
            }),
            requirement: None,
            spending: Spending::default(),
        }
    }

    fn config_mut(&mut self) -> &mut Config<S> {
        // Settings are made before any per-route copy exists; if one does,
        // this copy gets its own settings.
        if Arc::get_mut(&mut self.config).is_none() {
            let c = &self.config;
            self.config = Arc::new(Config {
                verifier: c.verifier.clone(),
                sessions: c.sessions.clone(),
                ctx: Arc::clone(&c.ctx),
                api_key_header: c.api_key_header.clone(),
                trusted_proxies: c.trusted_proxies.clone(),
                proxy_headers: c.proxy_headers,
                warn_within_days: c.warn_within_days,
                warning_header: c.warning_header.clone(),
                resource_owner: c.resource_owner.clone(),
                allow_anonymous: c.allow_anonymous,
                rate_limit_headers: c.rate_limit_headers,
                no_client_addresses: c.no_client_addresses,
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
    /// // KeywardLayer::new(manager.verifier(), live).api_key_header(AUTHORIZATION)
    /// let credential = read_credential(&cargo, Some(&AUTHORIZATION), &format, &live).unwrap();
    /// assert_eq!(credential.source(), CredentialSource::RawAuthorization);
    /// // Not asked for: refused.
    /// assert!(read_credential(&cargo, None, &format, &live).is_err());
    /// ```
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        self.config_mut().api_key_header = Some(name);
        self
    }

    /// Proxies whose forwarding headers are believed (default: none); see
    /// the [module documentation](crate::axum) for how they are read, and
    /// [`proxy_headers`](Self::proxy_headers) for which.
    pub fn trusted_proxies(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        self.config_mut().trusted_proxies = ranges.into_iter().map(|n| n.trunc()).collect();
        self
    }

    /// Which headers of a trusted proxy name the client (default:
    /// `X-Forwarded-For` only). Choose the one your proxy writes: see
    /// [`ProxyHeaders`](super::ProxyHeaders).
    pub fn proxy_headers(mut self, read: super::ProxyHeaders) -> Self {
        self.config_mut().proxy_headers = read;
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
    /// # ).build().unwrap();
    /// use axum::http::HeaderName;
    /// use keyward::axum::KeywardLayer;
    ///
    /// let nuget = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
    ///     .api_key_header(HeaderName::from_static("x-nuget-apikey"))
    ///     .expiry_warning_header(HeaderName::from_static("x-nuget-warning"));
    /// # let _ = nuget;
    /// ```
    pub fn expiry_warning_header(mut self, name: HeaderName) -> Self {
        self.config_mut().warning_header = name;
        self
    }

    /// The `realm` named in `WWW-Authenticate` challenges (default
    /// [`DEFAULT_REALM`](super::DEFAULT_REALM), `keyward`), for 401 and 403
    /// answers of this layer, of its [`exchange`](Self::exchange) and of
    /// [`Caller::authorize`](super::Caller::authorize).
    ///
    /// # Errors
    ///
    /// [`LayerError::BadRealm`] when `realm` is empty, longer than 64
    /// bytes, or holds a character other than visible ASCII and space, or
    /// a `"` or `\` (it is sent as a quoted string).
    ///
    /// ```
    /// # use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    /// # let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// # let manager = KeyManager::builder(
    /// #     MemoryStore::new(), TokenFormat::new("mkh", &["live"]).unwrap(), Policy::new(registry),
    /// # ).build().unwrap();
    /// use keyward::axum::{KeywardLayer, LayerError};
    ///
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap());
    /// assert!(matches!(auth.clone().realm("say \"hi\""), Err(LayerError::BadRealm { .. })));
    /// let auth = auth.realm("Contoso packages")?;
    /// # let _ = auth;
    /// # Ok::<(), LayerError>(())
    /// ```
    pub fn realm(mut self, realm: &str) -> Result<Self, LayerError> {
        let ok = !realm.is_empty()
            && realm.len() <= Self::MAX_REALM_LEN
            && realm
                .bytes()
                .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'"' && b != b'\\');
        if !ok {
            return Err(LayerError::BadRealm {
                realm: realm.chars().take(Self::MAX_REALM_LEN).collect(),
            });
        }
        Arc::make_mut(&mut self.config_mut().ctx).realm = Arc::from(realm);
        Ok(self)
    }

    /// Lets a request that sends no credential at all through, with no
    /// [`Caller`](super::Caller), for routes that serve anonymous callers
    /// too; handlers take `Option<Caller>`. A credential that is sent is
    /// checked as usual, and a bad one is refused (401), so a mistyped key
    /// never silently browses as anonymous. Default: off (401).
    ///
    /// A guard made with [`require`](Self::require) still refuses an
    /// anonymous request: a route that needs a permission needs a caller.
    ///
    /// ```
    /// # use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    /// # let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// # let manager = KeyManager::builder(
    /// #     MemoryStore::new(), TokenFormat::new("mkh", &["live"]).unwrap(), Policy::new(registry),
    /// # ).build().unwrap();
    /// use axum::{Router, routing::get};
    /// use keyward::axum::{Caller, KeywardLayer};
    ///
    /// async fn packages(caller: Option<Caller>) -> &'static str {
    ///     if caller.is_some() { "all of yours" } else { "the listed ones" }
    /// }
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap());
    /// let app: Router = Router::new()
    ///     .route("/packages", get(packages))
    ///     .route_layer(auth.allow_anonymous());
    /// # let _ = app;
    /// ```
    pub fn allow_anonymous(mut self) -> Self {
        self.config_mut().allow_anonymous = true;
        self
    }

    /// Checks requests that carry no client address
    /// ([`ConnectInfo<SocketAddr>`](::axum::extract::ConnectInfo)) with no
    /// address, instead of refusing them. **This drops the per-source
    /// failure limit**
    /// ([`VerifierConfig::source_failure_burst`](crate::verify::VerifierConfig::source_failure_burst))
    /// for those requests, and keys with an IP allowlist are refused.
    ///
    /// By default the layer fails closed: a request without `ConnectInfo`
    /// (the server was not started with
    /// `into_make_service_with_connect_info::<SocketAddr>()`) that sends a
    /// credential is answered 500 `server_error` (reason
    /// `no_client_address`), and so is [`exchange`](Self::exchange). Opt
    /// out only where no address can be had (in-process calls, tests), or
    /// where another layer limits failures per source.
    ///
    /// ```
    /// # use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    /// # let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// # let manager = KeyManager::builder(
    /// #     MemoryStore::new(), TokenFormat::new("mkh", &["live"]).unwrap(), Policy::new(registry),
    /// # ).build().unwrap();
    /// use axum::{Router, routing::get};
    /// use keyward::axum::KeywardLayer;
    ///
    /// // Served in-process (tower::ServiceExt::oneshot): no peer address.
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
    ///     .without_client_addresses();
    /// let app: Router = Router::new().route("/", get(|| async { "ok" })).route_layer(auth);
    /// # let _ = app;
    /// ```
    pub fn without_client_addresses(mut self) -> Self {
        self.config_mut().no_client_addresses = true;
        self
    }

    /// How to find the owner of a resource named in the path, for
    /// [`resource_param`](Self::resource_param), which refuses to build a
    /// guard without it. `None` means the resource does not exist yet and
    /// would be created for the caller, so it is checked as the caller's
    /// own: return `None` only for a name nobody holds.
    ///
    /// Each request gives the resolver a copy of the name and boxes its
    /// future; an owner known without waiting is cheaper through
    /// [`resource_owner_now`](Self::resource_owner_now).
    pub fn resource_owner<F, Fut>(mut self, resolve: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.config_mut().resource_owner = Some(OwnerResolver::Future(Arc::new(move |name| {
            Box::pin(resolve(name))
        })));
        self
    }

    /// [`resource_owner`](Self::resource_owner) for owners known without
    /// waiting (a map in memory, a cache kept by the application): `lookup`
    /// borrows the name from the path and answers at once, so a request
    /// spends no copy of the name and no boxed future on it. The owner may
    /// be any string type (`String`, `Arc<str>`, `&'static str`). `None`
    /// means what it means for [`resource_owner`](Self::resource_owner):
    /// nobody holds the name, so it is checked as the caller's own. The
    /// last of the two settings made is the one used.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::Arc;
    /// use keyward::axum::KeywardLayer;
    /// use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    ///
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let push = registry.get("package:push").unwrap();
    /// let manager = KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(registry),
    /// )
    /// .build().unwrap();
    /// let owners: HashMap<String, Arc<str>> =
    ///     HashMap::from([("Contoso.Tools".into(), Arc::from("contoso"))]);
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
    ///     .resource_owner_now(move |name: &str| owners.get(name).cloned());
    /// let guard = auth.require(push).resource_param("name").unwrap();
    /// # let _ = guard;
    /// ```
    pub fn resource_owner_now<F, O>(mut self, lookup: F) -> Self
    where
        F: Fn(&str) -> Option<O> + Send + Sync + 'static,
        O: AsRef<str>,
    {
        self.config_mut().resource_owner = Some(OwnerResolver::Now(Arc::new(
            move |name: &str, answer: &mut dyn FnMut(Option<&str>)| {
                let owner = lookup(name);
                answer(owner.as_ref().map(AsRef::as_ref));
            },
        )));
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
            spending: self.spending,
        }
    }

    /// This layer spending `cost` of the rate limit `name` on each request
    /// that passes (for one route, with `Router::route_layer`); see
    /// [`VerifyRequest::spend`](crate::VerifyRequest::spend). A metered
    /// key is charged 1 credit per request unless [`credits`](Self::credits)
    /// says otherwise. A spent limit answers 429 with `Retry-After` and the
    /// `RateLimit-Policy` / `RateLimit` fields; spent credits answer 402.
    /// A request with a session token spends its key's limits and credits.
    ///
    /// # Errors
    ///
    /// [`LayerError::BadSpend`] when the policy does not declare `name`
    /// ([`Policy::with_rate_limits`](crate::Policy::with_rate_limits)), for
    /// a cost of 0, or a fifth limit on one route: the route fails at
    /// startup instead of answering 500 on every request.
    ///
    /// ```
    /// use keyward::axum::KeywardLayer;
    /// use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
    ///
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let push = registry.get("package:push").unwrap();
    /// let policy = Policy::new(registry).with_rate_limits(["publish"]).unwrap();
    /// let manager = KeyManager::builder(MemoryStore::new(), TokenFormat::new("mkh", &["live"]).unwrap(), policy)
    ///     .build()
    ///     .unwrap();
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
    ///     .rate_limit_headers(true);
    /// let publish_route = auth.require(push).spend("publish", 1).unwrap();
    /// assert!(auth.require(push).spend("publsh", 1).is_err()); // not declared
    /// # let _ = publish_route;
    /// ```
    pub fn spend(mut self, name: &'static str, cost: u32) -> Result<Self, LayerError> {
        let bad = |reason| LayerError::BadSpend {
            name: name.to_owned(),
            reason,
        };
        if self.config.ctx.policy.rate_limit_name(name).is_none() {
            return Err(bad("the policy does not declare this rate limit"));
        }
        if cost == 0 {
            return Err(bad("a cost of 0"));
        }
        if self.spending.limits().count() >= Spending::MAX {
            return Err(bad("more than 4 limits spent by one route"));
        }
        self.spending.push(name, cost);
        Ok(self)
    }

    /// This layer charging `cost` credits to a metered key per request
    /// (default 1; 0: free); see [`VerifyRequest::credits`](crate::VerifyRequest::credits).
    pub fn credits(mut self, cost: u64) -> Self {
        self.spending.set_credits(cost);
        self
    }

    /// Whether successful responses carry the `RateLimit-Policy` and
    /// `RateLimit` header fields of the limit the request spent (the one
    /// with the fewest requests left; default off). Denials by a rate
    /// limit always carry them.
    pub fn rate_limit_headers(mut self, on: bool) -> Self {
        self.config_mut().rate_limit_headers = on;
        self
    }

    /// Checks the permission against the resource named by the path
    /// parameter `param` (`/packages/{name}` → `"name"`) and its owner, as
    /// the [`resource_owner`](Self::resource_owner) or
    /// [`resource_owner_now`](Self::resource_owner_now) resolver tells it. Add it
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
    /// .build().unwrap();
    /// let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap());
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

    /// The verifier that checks keys.
    pub fn verifier(&self) -> &Verifier<S> {
        &self.config.verifier
    }

    /// Whether session tokens are checked and issued: built with
    /// [`with_sessions`](Self::with_sessions) from a manager that has them.
    pub fn has_sessions(&self) -> bool {
        self.config.sessions.is_some()
    }

    /// The environment served.
    pub fn environment(&self) -> &Environment {
        &self.config.ctx.environment
    }
}
