//! [`RequireKey`], the service the layer makes: it checks each request and
//! exchanges keys for sessions.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use ::axum::http::request::Parts;
use ::axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use ::axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use tower::{Layer, Service};

use super::caller::Caller;
use super::credential::{CredentialSource, RequestCredential, read_credential};
use super::forwarded;
use super::layer::KeywardLayer;
use super::rejection::KeywardRejection;
use crate::policy::ResourceRef;
use crate::session::IssuedSession;
use crate::store::KeyStore;
use crate::store::SessionStore;
use crate::verify::SessionError;

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
    pub(super) layer: KeywardLayer<S>,
    pub(super) inner: I,
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
    S: KeyStore,
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
            // One clock read per request, for the route's check and the
            // expiry warning (the verifier reads its own).
            let now = layer.config.ctx.clock.now();
            let caller = match layer.check(&mut parts, now).await {
                Ok(caller) => caller,
                Err(rejection) if rejection.is_missing_credentials() && layer.anonymous_ok() => {
                    // No credential sent, and the route serves anonymous
                    // callers: no Caller for the handler.
                    return inner.call(Request::from_parts(parts, body)).await;
                }
                Err(rejection) => {
                    let realm = &layer.config.ctx.realm;
                    return Ok(rejection.in_realm(realm).into_response());
                }
            };
            let warning = layer.expiry_warning(&caller, now);
            let rate = if layer.config.rate_limit_headers {
                caller.key.rate_limit()
            } else {
                None
            };
            parts.extensions.insert(caller);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if let Some(value) = warning {
                let name = layer.config.warning_header.clone();
                response.headers_mut().insert(name, value);
            }
            if let Some(status) = rate {
                super::rate_headers::insert(response.headers_mut(), &status);
            }
            Ok(response)
        })
    }
}

impl<S: KeyStore> KeywardLayer<S> {
    /// Whether a request without any credential goes through: set with
    /// `allow_anonymous`, and only where no permission is required.
    fn anonymous_ok(&self) -> bool {
        self.config.allow_anonymous && self.requirement.is_none()
    }

    /// Reads the credential: Authorization (Bearer or Basic), then the API-key header.
    fn credential(&self, headers: &HeaderMap) -> Result<RequestCredential, KeywardRejection> {
        read_credential(
            headers,
            self.config.api_key_header.as_ref(),
            &self.config.verifier.shared.format,
            &self.config.ctx.environment,
        )
    }

    /// The client's address: the peer, or, behind trusted proxies, what
    /// the headers of [`ProxyHeaders`](forwarded::ProxyHeaders) say (see
    /// [`forwarded::client_ip`]).
    fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        let trusted = &self.config.trusted_proxies;
        forwarded::client_ip(peer, &parts.headers, self.config.proxy_headers, |ip| {
            trusted.iter().any(|n| n.contains(&ip))
        })
    }

    /// Authenticates (and authorizes, when the route requires it) a request.
    async fn check(
        &self,
        parts: &mut Parts,
        now: DateTime<Utc>,
    ) -> Result<Caller, KeywardRejection> {
        let credential = self.credential(&parts.headers)?;
        let client_ip = self.client_ip(parts);
        let config = &*self.config;
        let env = &config.ctx.environment;
        let t = credential.expose_secret();
        // A Basic pair is always a key; a bare token may be a session token.
        let basic = credential.source() == CredentialSource::Basic;
        let sessions = config.sessions.as_deref();
        let session_auth = sessions.filter(|s| !basic && s.is_session_token(t));
        let (key, session) = if let Some(sessions) = session_auth {
            let s = sessions
                .authenticate(t, env, client_ip)
                .await
                .map_err(|d| KeywardRejection::denied(&d, &config.ctx.policy, None))?;
            let id = s.session_id().clone();
            (s.into_key(), Some(id))
        } else {
            let verifier = &config.verifier;
            let key = match credential.pair_key_id() {
                Some(id) => verifier.authenticate_pair(id, t, env, client_ip).await,
                None => verifier.authenticate(t, env, client_ip).await,
            }
            .map_err(|d| KeywardRejection::denied(&d, &config.ctx.policy, None))?;
            (key, None)
        };
        let mut caller = Caller {
            key,
            session,
            client_ip,
            ctx: Arc::clone(&config.ctx),
        };
        if let Some(req) = &self.requirement {
            match &req.resource_param {
                None => caller.authorize_at(req.permission, None, now)?,
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
                    let resource = Some(ResourceRef::new(&owner, &name));
                    caller.authorize_at(req.permission, resource, now)?;
                }
            }
        }
        // Usage controls are spent last, once the key may do this: a
        // refused request spends nothing. A session spends its key's.
        caller.key = config
            .verifier
            .charge(caller.key.clone(), &self.spending, client_ip)
            .await
            .map_err(|d| KeywardRejection::denied(&d, &config.ctx.policy, None))?;
        Ok(caller)
    }

    fn expiry_warning(&self, caller: &Caller, now: DateTime<Utc>) -> Option<HeaderValue> {
        let days = self.config.warn_within_days;
        if days == 0 || caller.session.is_some() {
            return None;
        }
        let expires = caller.expires_at()?;
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
        let client_ip = self.client_ip(parts);
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
