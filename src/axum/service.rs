//! [`RequireKey`], the service the layer makes: it checks each request and
//! exchanges keys for sessions.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::axum::extract::rejection::RawPathParamsRejection;
use ::axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use ::axum::http::request::Parts;
use ::axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use ::axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::caller::Caller;
use super::credential::{CredentialSource, HeaderCredential, read_header_credential};
use super::forwarded;
use super::future::{Extra, ResponseFuture, poll_now};
use super::layer::{KeywardLayer, OwnerFuture, OwnerResolver};
use super::rejection::KeywardRejection;
use crate::policy::{Permission, ResourceRef};
use crate::session::IssuedSession;
use crate::store::KeyStore;
use crate::store::SessionStore;
use crate::verify::{Denial, SessionError};

impl<S, I> Layer<I> for KeywardLayer<S> {
    type Service = RequireKey<S, I>;
    fn layer(&self, inner: I) -> Self::Service {
        RequireKey {
            layer: Arc::new(self.clone()),
            inner,
        }
    }
}

/// The service made by [`KeywardLayer`].
pub struct RequireKey<S, I> {
    /// Behind one `Arc`: axum clones the service for every request, and a
    /// clone is then one count (the layer itself is about 170 bytes, with
    /// its own `Arc`s to count).
    pub(super) layer: Arc<KeywardLayer<S>>,
    pub(super) inner: I,
}

impl<S, I: Clone> Clone for RequireKey<S, I> {
    fn clone(&self) -> Self {
        Self {
            layer: Arc::clone(&self.layer),
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
    S: KeyStore,
    I: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    I::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = I::Error;
    type Future = ResponseFuture<I::Future, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // One clock read per request, for the key's check, the route's
        // and the expiry warning (a check that waits reads its own).
        // Microseconds: no `DateTime` is built unless a warning is due.
        let now = self.layer.config.ctx.clock.now_micros();
        // The usual case (a cached key, a resolver that answers at once,
        // nothing to lease) ends here, without a boxed future.
        let pending = match self.layer.check_now(&mut parts, now) {
            Ok(Ok(caller)) => {
                let extra = self.layer.extra_headers(&caller, now);
                parts.extensions.insert(caller);
                let fut = self.inner.call(Request::from_parts(parts, body));
                return ResponseFuture::inner(fut, extra);
            }
            Err(rejection) => {
                if rejection.is_missing_credentials() && self.layer.anonymous_ok() {
                    // No credential sent, and the route serves anonymous
                    // callers: no Caller for the handler.
                    let fut = self.inner.call(Request::from_parts(parts, body));
                    return ResponseFuture::inner(fut, Extra::default());
                }
                let realm = &self.layer.config.ctx.realm;
                return ResponseFuture::ready(rejection.in_realm(realm).into_response());
            }
            Ok(Err(pending)) => pending,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = Arc::clone(&self.layer);
        ResponseFuture::slow(Box::pin(async move {
            let caller = match layer.finish(&mut parts, pending).await {
                Ok(caller) => caller,
                Err(rejection) => {
                    let realm = &layer.config.ctx.realm;
                    return Ok(rejection.in_realm(realm).into_response());
                }
            };
            let mut extra = layer.extra_headers(&caller, now);
            parts.extensions.insert(caller);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            extra.apply(&mut response);
            Ok(response)
        }))
    }
}

/// What is left of a check that could not end without waiting.
enum Pending {
    /// Nothing was decided (a session token, or a key the cache cannot
    /// prove): the whole check, awaited.
    Check,
    /// The key is proven; the owner of the resource is being resolved.
    Owner {
        caller: Caller,
        permission: Permission,
        name: String,
        owner: OwnerFuture,
    },
    /// Proven and authorized: its usage controls are to be spent.
    Charge { caller: Caller },
}

impl<S: KeyStore> KeywardLayer<S> {
    /// Whether a request without any credential goes through: set with
    /// `allow_anonymous`, and only where no permission is required.
    fn anonymous_ok(&self) -> bool {
        self.config.allow_anonymous && self.requirement.is_none()
    }

    /// Reads the credential: Authorization (Bearer or Basic), then the
    /// API-key header; a token sent as is stays borrowed from the header.
    fn credential<'h>(
        &self,
        headers: &'h HeaderMap,
    ) -> Result<HeaderCredential<'h>, KeywardRejection> {
        read_header_credential(
            headers,
            self.config.api_key_header.as_ref(),
            &self.config.verifier.shared.format,
            &self.config.ctx.environment,
        )
    }

    /// The client's address: the peer, or, behind trusted proxies, what
    /// the headers of [`ProxyHeaders`](forwarded::ProxyHeaders) say (see
    /// [`forwarded::client_ip`]). Without `ConnectInfo` the request is
    /// refused (fail closed: no per-source failure limit could apply),
    /// unless the layer was built
    /// [`without_client_addresses`](KeywardLayer::without_client_addresses).
    fn client_ip(&self, parts: &Parts) -> Result<Option<IpAddr>, KeywardRejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return if self.config.no_client_addresses {
                Ok(None)
            } else {
                Err(KeywardRejection::no_client_address())
            };
        };
        let trusted = &self.config.trusted_proxies;
        Ok(forwarded::client_ip(
            peer.ip(),
            &parts.headers,
            self.config.proxy_headers,
            |ip| trusted.iter().any(|n| n.contains(&ip)),
        ))
    }

    /// Authenticates and authorizes a request as far as it can without
    /// waiting: `Ok(Err(pending))` says what is left for
    /// [`finish`](Self::finish).
    fn check_now(
        &self,
        parts: &mut Parts,
        now: i64,
    ) -> Result<Result<Caller, Pending>, KeywardRejection> {
        let config = &*self.config;
        let (key, client_ip) = {
            let credential = self.credential(&parts.headers)?;
            let client_ip = self.client_ip(parts)?;
            let t = credential.expose_secret();
            // A Basic pair is always a key; a bare token may be a session token.
            let basic = credential.source() == CredentialSource::Basic;
            if let Some(sessions) = config.sessions.as_deref() {
                if !basic && sessions.is_session_token(t) {
                    return Ok(Err(Pending::Check));
                }
            }
            let env = &config.ctx.environment;
            let pair = credential.pair_key_id();
            match config
                .verifier
                .authenticate_cached(pair, t, env, client_ip, now)
            {
                // Not in the cache: the cold path, awaited.
                None => return Ok(Err(Pending::Check)),
                Some(checked) => (checked.map_err(|d| self.denied(&d))?, client_ip),
            }
        };
        let caller = Caller {
            key,
            session: None,
            client_ip,
            ctx: Arc::clone(&config.ctx),
        };
        self.authorize_now(caller, parts)
    }

    /// Authorizes a proven caller for this route (its permission, and the
    /// resource in the path), as far as it can without waiting.
    fn authorize_now(
        &self,
        caller: Caller,
        parts: &mut Parts,
    ) -> Result<Result<Caller, Pending>, KeywardRejection> {
        let config = &*self.config;
        if let Some(req) = &self.requirement {
            match &req.resource_param {
                None => caller.authorize_granted(req.permission, None)?,
                Some(param) => {
                    let params = path_params(parts)?;
                    let name = params
                        .iter()
                        .find(|(k, _)| *k == &**param)
                        .map(|(_, v)| v)
                        .ok_or_else(KeywardRejection::misconfigured)?;
                    // `resource_param` refuses to build a guard without a
                    // resolver; should one ever run without, it denies.
                    let Some(resolve) = &config.resource_owner else {
                        return Err(KeywardRejection::owner_unknown(
                            req.permission,
                            &config.ctx.policy,
                        ));
                    };
                    let resolve = match resolve {
                        OwnerResolver::Future(resolve) => resolve,
                        OwnerResolver::Now(lookup) => {
                            let mut checked = None;
                            lookup(name, &mut |owner| {
                                checked =
                                    Some(authorize_resource(&caller, req.permission, name, owner));
                            });
                            // Refused unless the lookup answered (it always
                            // does, once: `resource_owner_now`).
                            checked.unwrap_or_else(|| {
                                Err(KeywardRejection::owner_unknown(
                                    req.permission,
                                    &config.ctx.policy,
                                ))
                            })?;
                            return self.charge_now(caller);
                        }
                    };
                    let mut owner = resolve(name.to_owned());
                    match poll_now(owner.as_mut()) {
                        Poll::Ready(owner) => {
                            authorize_resource(&caller, req.permission, name, owner.as_deref())?
                        }
                        Poll::Pending => {
                            return Ok(Err(Pending::Owner {
                                caller,
                                permission: req.permission,
                                name: name.to_owned(),
                                owner,
                            }));
                        }
                    }
                }
            }
        }
        self.charge_now(caller)
    }

    /// An authorized caller, or what is left to spend its usage controls.
    fn charge_now(&self, caller: Caller) -> Result<Result<Caller, Pending>, KeywardRejection> {
        // Usage controls are spent last, once the key may do this: a
        // refused request spends nothing. A session spends its key's.
        if self.config.verifier.charges(&caller.key, &self.spending) {
            return Ok(Err(Pending::Charge { caller }));
        }
        Ok(Ok(caller))
    }

    /// The rest of a check that had to wait.
    async fn finish(
        &self,
        parts: &mut Parts,
        mut pending: Pending,
    ) -> Result<Caller, KeywardRejection> {
        loop {
            pending = match pending {
                Pending::Check => {
                    let caller = self.authenticate(parts).await?;
                    match self.authorize_now(caller, parts)? {
                        Ok(caller) => return Ok(caller),
                        Err(Pending::Check) => return Err(KeywardRejection::unavailable()),
                        Err(rest) => rest,
                    }
                }
                Pending::Owner {
                    caller,
                    permission,
                    name,
                    owner,
                } => {
                    let owner = owner.await;
                    authorize_resource(&caller, permission, &name, owner.as_deref())?;
                    if !self.config.verifier.charges(&caller.key, &self.spending) {
                        return Ok(caller);
                    }
                    Pending::Charge { caller }
                }
                Pending::Charge { caller } => return self.charge(caller).await,
            };
        }
    }

    /// Authenticates a request, waiting as needed (a session token, a key
    /// the cache cannot prove).
    async fn authenticate(&self, parts: &Parts) -> Result<Caller, KeywardRejection> {
        let credential = self.credential(&parts.headers)?;
        let client_ip = self.client_ip(parts)?;
        let config = &*self.config;
        let env = &config.ctx.environment;
        let t = credential.expose_secret();
        let basic = credential.source() == CredentialSource::Basic;
        let sessions = config.sessions.as_deref();
        let session_auth = sessions.filter(|s| !basic && s.is_session_token(t));
        let (key, session) = if let Some(sessions) = session_auth {
            let s = sessions
                .authenticate(t, env, client_ip)
                .await
                .map_err(|d| self.denied(&d))?;
            let id = s.session_id().clone();
            (s.into_key(), Some(id))
        } else {
            let verifier = &config.verifier;
            let key = match credential.pair_key_id() {
                Some(id) => verifier.authenticate_pair(id, t, env, client_ip).await,
                None => verifier.authenticate(t, env, client_ip).await,
            }
            .map_err(|d| self.denied(&d))?;
            (key, None)
        };
        Ok(Caller {
            key,
            session,
            client_ip,
            ctx: Arc::clone(&config.ctx),
        })
    }

    /// Spends this route's usage controls for an authorized caller.
    async fn charge(&self, caller: Caller) -> Result<Caller, KeywardRejection> {
        let Caller {
            key,
            session,
            client_ip,
            ctx,
        } = caller;
        let key = self
            .config
            .verifier
            .charge(key, &self.spending, client_ip)
            .await
            .map_err(|d| self.denied(&d))?;
        Ok(Caller {
            key,
            session,
            client_ip,
            ctx,
        })
    }

    /// A denial of the verifier as the layer's refusal.
    fn denied(&self, denial: &Denial) -> KeywardRejection {
        KeywardRejection::denied(denial, &self.config.ctx.policy, None)
    }

    /// The headers a successful response gets: the expiry warning and, when
    /// asked for, the `RateLimit` fields.
    fn extra_headers(&self, caller: &Caller, now: i64) -> Extra {
        let config = &*self.config;
        Extra {
            warning: self
                .expiry_warning(caller, now)
                .map(|value| (config.warning_header.clone(), value)),
            rate: if config.rate_limit_headers {
                caller.key.rate_limit()
            } else {
                None
            },
        }
    }

    /// The warning for a key that expires within `warn_within_days` of
    /// `now` (microseconds since the epoch).
    fn expiry_warning(&self, caller: &Caller, now: i64) -> Option<HeaderValue> {
        const DAY_US: i64 = 86_400_000_000;
        let days = self.config.warn_within_days;
        if days == 0 || caller.session.is_some() {
            return None;
        }
        let window = i64::from(days).saturating_mul(DAY_US);
        // The deadline is never later than the expiry (it is the earlier of
        // the expiry and the idle deadline) and sits on the line the check
        // has just read: a key whose deadline is beyond the window needs no
        // warning, and its expiry's line (a cache miss under load, a third
        // of this function's time under `perf`, 2026-12-03) stays unread.
        if caller.key.deadline_micros().saturating_sub(now) > window {
            return None;
        }
        let expires = caller.expires_at()?;
        let left_us = expires.timestamp_micros().saturating_sub(now);
        if left_us > window {
            return None;
        }
        // Whole days, rounded toward zero (as `TimeDelta::num_days`).
        let left = left_us / DAY_US;
        let text = format!(
            "The API key {} expires in {} day{}, on {}. Regenerate it or create a new key before then.",
            caller.id(),
            left,
            if left == 1 { "" } else { "s" },
            expires.format("%Y-%m-%d %H:%M UTC"),
        );
        HeaderValue::from_str(&text).ok()
    }
}

impl<S: KeyStore + SessionStore> KeywardLayer<S> {
    /// Exchanges the key this request carries (Bearer, Basic pair or the
    /// API-key header) for a session token, for a `POST /session` handler
    /// (not behind the layer). A session token is refused with 403.
    ///
    /// Session routes need a store that is also a [`SessionStore`], and a
    /// layer built with [`KeywardLayer::with_sessions`]; a layer built with
    /// [`KeywardLayer::new`] answers 500 `server_error` ("Sessions are not
    /// available on this server"), as a manager without sessions does.
    pub async fn exchange(
        &self,
        parts: &Parts,
        ttl: Option<Duration>,
    ) -> Result<IssuedSession, KeywardRejection> {
        let realm = &self.config.ctx.realm;
        let credential = self
            .credential(&parts.headers)
            .map_err(|r| r.in_realm(realm))?;
        let client_ip = self.client_ip(parts).map_err(|r| r.in_realm(realm))?;
        let token = credential.expose_secret();
        let policy = &self.config.ctx.policy;
        let environment = &self.config.ctx.environment;
        let issued = match &self.config.sessions {
            // An imported key's id and secret (not in the token format)
            // is exchanged as a pair.
            Some(sessions) => {
                sessions
                    .exchange(token, credential.pair_key_id(), environment, ttl, client_ip)
                    .await
            }
            None => Err(SessionError::NotConfigured),
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
        .map_err(|r| r.in_realm(realm))
    }
}

/// The route's path parameters (missing ones are a 500: the layer was not
/// added with `Router::route_layer`; one that is not UTF-8 once
/// percent-decoded, a 400).
///
/// `RawPathParams` clones axum's list (a `Vec`, two `Arc` counts a
/// parameter). Reading it through `Path<T>` instead, with a `T` that copies
/// the values into `SmolStr`s, cost 60 instructions more a request under
/// callgrind (the `serde` visitor and the copies outweighed the `Vec`;
/// issue 14, 2026-12-03), so this stays.
fn path_params(parts: &mut Parts) -> Result<RawPathParams, KeywardRejection> {
    // Ready at once: axum put the parameters in the extensions.
    let params = std::pin::pin!(RawPathParams::from_request_parts(parts, &()));
    match poll_now(params) {
        Poll::Ready(Ok(params)) => Ok(params),
        Poll::Ready(Err(RawPathParamsRejection::InvalidUtf8InPathParam(e))) => {
            Err(KeywardRejection::path_not_utf8(&e))
        }
        _ => Err(KeywardRejection::misconfigured()),
    }
}

/// Checks `permission` on the resource `name`, owned by `owner` (`None`:
/// nobody holds it yet, so it would be the caller's own).
fn authorize_resource(
    caller: &Caller,
    permission: Permission,
    name: &str,
    owner: Option<&str>,
) -> Result<(), KeywardRejection> {
    let owner = owner.unwrap_or(caller.owner().as_str());
    let resource = Some(ResourceRef::new(owner, name));
    caller.authorize_granted(permission, resource)
}
