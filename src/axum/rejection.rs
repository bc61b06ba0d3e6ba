//! The refusals as HTTP responses ([`KeywardRejection`]).

use std::fmt;
use std::sync::Arc;

use ::axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use ::axum::http::{HeaderName, HeaderValue, StatusCode};
use ::axum::response::{IntoResponse, Response};

use crate::policy::{Permission, Policy};
use crate::verify::{Denial, DenialKind, DenialReason, RateLimitStatus};

/// The default `realm` of the `WWW-Authenticate` challenge (see
/// [`KeywardLayer::realm`](super::KeywardLayer::realm)).
pub const DEFAULT_REALM: &str = "keyward";

/// Seconds for `Retry-After`, saturating.
fn secs32(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The parts of an RFC 6750 challenge; the realm is added when the
/// response is made.
#[derive(Debug, Clone)]
enum Challenge {
    /// No credential was sent: no `error` (RFC 6750 §3.1).
    Plain,
    /// `error="invalid_token"`.
    InvalidToken,
    /// `error="insufficient_scope"`, with the permission when known.
    InsufficientScope(Option<Box<str>>),
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
    challenge: Option<Challenge>,
    /// `None`: [`DEFAULT_REALM`].
    realm: Option<Arc<str>>,
    /// Whole seconds (a `u32` keeps the rejection small: 136 years).
    retry_after: Option<u32>,
    reason: Option<&'static str>,
    /// The spent limit of a [`DenialReason::RateLimited`], for the
    /// `RateLimit` header fields.
    rate: Option<Box<RateLimitStatus>>,
}

impl KeywardRejection {
    pub(super) fn new(status: StatusCode, error: &'static str, message: String) -> Self {
        Self {
            status,
            error,
            message,
            challenge: None,
            realm: None,
            retry_after: None,
            reason: None,
            rate: None,
        }
    }

    fn challenge(mut self, challenge: Challenge) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// The realm its challenge names (the layer's setting).
    pub(super) fn in_realm(mut self, realm: &Arc<str>) -> Self {
        self.realm = Some(Arc::clone(realm));
        self
    }

    /// The `WWW-Authenticate` value, when the refusal carries a challenge:
    /// `Bearer realm="<realm>"`, then `error` and `scope` when known.
    pub fn www_authenticate(&self) -> Option<String> {
        let challenge = self.challenge.as_ref()?;
        let realm = self.realm.as_deref().unwrap_or(DEFAULT_REALM);
        let mut value = format!("Bearer realm=\"{realm}\"");
        match challenge {
            Challenge::Plain => {}
            Challenge::InvalidToken => value.push_str(", error=\"invalid_token\""),
            Challenge::InsufficientScope(scope) => {
                value.push_str(", error=\"insufficient_scope\"");
                if let Some(s) = scope {
                    value.push_str(&format!(", scope=\"{s}\""));
                }
            }
        }
        Some(value)
    }

    pub(super) fn missing(header: Option<&HeaderName>) -> Self {
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
        .challenge(Challenge::Plain)
    }

    pub(super) fn malformed(what: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            format!("The credentials are malformed: {what}. Send the API key exactly as it was shown when it was created."),
        )
        .challenge(Challenge::InvalidToken)
    }

    pub(super) fn unavailable() -> Self {
        let mut r = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The key could not be checked right now. Try again in a few seconds.".into(),
        );
        r.retry_after = Some(5);
        r
    }

    pub(super) fn misconfigured() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "keyward is misconfigured on this route: a resource path parameter was required but not found \
             (add the layer with Router::route_layer and check the parameter name)."
                .into(),
        )
    }

    /// A path parameter is not UTF-8 once percent-decoded (`e` names it),
    /// so it names no resource.
    pub(super) fn path_not_utf8(e: &dyn fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{e} of the path: a resource name must be UTF-8 once percent-decoded."),
        )
    }

    /// The request carries no client address (no `ConnectInfo`), and the
    /// layer was not told to go without ([`KeywardLayer::without_client_addresses`](super::KeywardLayer::without_client_addresses)).
    pub(super) fn no_client_address() -> Self {
        let mut r = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "keyward is misconfigured on this server: requests carry no client address, so failures \
             could not be limited per source (serve the router with \
             into_make_service_with_connect_info::<SocketAddr>(), or opt out with \
             KeywardLayer::without_client_addresses)."
                .into(),
        );
        r.reason = Some("no_client_address");
        r
    }

    pub(super) fn owner_unknown(permission: Permission, policy: &Policy) -> Self {
        let scope = policy.permissions().name(permission);
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The owner of this resource could not be determined, so no key may use it here.".into(),
        )
        .challenge(Challenge::InsufficientScope(Some(scope.into())))
    }

    pub(super) fn missing_layer() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "keyward::axum::Caller was used on a route without KeywardLayer: add the layer to this route \
             (Router::route_layer(KeywardLayer::new(...)))."
                .into(),
        )
    }

    pub(super) fn denied(denial: &Denial, policy: &Policy, permission: Option<Permission>) -> Self {
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
                    .challenge(Challenge::InvalidToken)
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
                Self::new(StatusCode::FORBIDDEN, "insufficient_scope", message).challenge(
                    Challenge::InsufficientScope(scope.as_deref().map(Into::into)),
                )
            }
            DenialKind::Throttled => {
                let mut r = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    "Too many failed attempts. Wait before trying again.".into(),
                );
                r.retry_after = Some(secs32(denial.retry_after.map_or(1, |d| d.as_secs().max(1))));
                r
            }
            DenialKind::Limited => {
                let mut r = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "This API key's rate limit is spent. Wait the Retry-After seconds before trying again.".into(),
                );
                r.retry_after = Some(secs32(
                    denial
                        .retry_after
                        .map_or(1, |d| super::rate_headers::ceil_secs(d).max(1)),
                ));
                if let RateLimited(status) = &denial.reason {
                    r.rate = Some(status.clone());
                }
                r
            }
            DenialKind::Exhausted => {
                let mut r = Self::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "usage_exhausted",
                    "This API key's usage credits are spent. Add credits, or wait for its refill."
                        .into(),
                );
                r.retry_after = denial
                    .retry_after
                    .map(|d| secs32(super::rate_headers::ceil_secs(d).max(1)));
                r
            }
            DenialKind::Misuse => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "This route spends a rate limit its policy does not declare (see the server log)."
                    .into(),
            ),
            DenialKind::Unavailable => {
                let mut r = Self::unavailable();
                if let Some(wait) = denial.retry_after {
                    r.retry_after = Some(secs32(wait.as_secs().max(1)));
                }
                r
            }
        };
        r.reason = Some(denial.reason.code());
        r
    }

    /// Whether the request sent no credential at all (the 401 whose
    /// challenge has no `error`).
    pub(super) fn is_missing_credentials(&self) -> bool {
        self.error == "missing_credentials"
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
        let challenge = self.www_authenticate();
        let body = serde_json::json!({ "error": self.error, "message": self.message });
        let mut response = (self.status, ::axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(v) = challenge.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(WWW_AUTHENTICATE, v);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(status) = &self.rate {
            super::rate_headers::insert(headers, status);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PermissionRegistry;
    use std::time::Duration;

    fn response(reason: DenialReason, retry_after: Option<Duration>) -> Response {
        let policy = Policy::new(
            PermissionRegistry::builder()
                .permission("p")
                .build()
                .unwrap(),
        );
        let denial = Denial {
            reason,
            key_id: None,
            retry_after,
        };
        KeywardRejection::denied(&denial, &policy, None).into_response()
    }

    #[test]
    fn overloaded_is_503_with_the_denials_retry_after() {
        let r = response(DenialReason::Overloaded, Some(Duration::from_secs(7)));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        // A store failure carries no retry time of its own: the default.
        let r = response(DenialReason::StoreUnavailable, None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
    }

    #[test]
    fn rate_limited_is_429_with_retry_after_rounded_up_and_the_fields() {
        let status = RateLimitStatus {
            name: crate::usage::LimitName::new("publish").unwrap(),
            limit: 10,
            window: Duration::from_secs(3600),
            remaining: 0,
            reset: Duration::from_secs(3600),
        };
        let r = response(
            DenialReason::RateLimited(Box::new(status)),
            Some(Duration::from_millis(359_500)),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "360");
        assert_eq!(r.headers()["ratelimit-policy"], "\"publish\";q=10;w=3600");
        assert_eq!(r.headers()["ratelimit"], "\"publish\";r=0;t=3600");
        let r = response(DenialReason::UsageExhausted, None);
        assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
        assert!(r.headers().get(RETRY_AFTER).is_none());
        let bad = crate::usage::UsageError::UnknownLimit { name: "x".into() };
        let r = response(DenialReason::BadSpend(bad), None);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn throttled_is_429_with_whole_seconds_to_wait() {
        let r = response(DenialReason::Throttled, Some(Duration::from_millis(1500)));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
