//! Reading the credential from request headers: `Authorization` (Bearer,
//! Basic, or cargo's bare token) and the API-key header.

use std::fmt;

use ::axum::http::header::AUTHORIZATION;
use ::axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use zeroize::Zeroizing;

use super::rejection::KeywardRejection;
use crate::ids::Environment;
use crate::token::TokenFormat;

/// Longest credential header value read, in bytes; longer is refused unread.
pub const MAX_CREDENTIAL_HEADER_LEN: usize = 512;

/// Where a request's credential came from; see [`read_credential`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic base64(key_id:secret)`, rebuilt into a token.
    Basic,
    /// The API-key header set with [`KeywardLayer::api_key_header`](super::KeywardLayer::api_key_header).
    ApiKeyHeader,
    /// `Authorization: <token>` without a scheme, as cargo sends it; read
    /// only when the API-key header is `Authorization` itself.
    RawAuthorization,
}

/// A credential read from request headers by [`read_credential`]: the token
/// to check (for Basic, the token rebuilt from the key id and secret), or,
/// for a Basic pair whose secret does not follow the token format (a key
/// imported from another system, see [`ImportKey`](crate::manager::ImportKey)), the
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

/// A credential as read by the layer: borrowed from the header when it is
/// the token as sent (nothing to copy or zeroize), owned and zeroized on
/// drop when it was decoded (Basic). [`read_credential`] copies it into a
/// [`RequestCredential`].
pub(super) struct HeaderCredential<'a> {
    token: TokenText<'a>,
    pair_id: Option<String>,
    source: CredentialSource,
}

/// The token of a [`HeaderCredential`].
enum TokenText<'a> {
    /// As sent, in the request's header.
    Header(&'a str),
    /// Decoded from the header (Basic): a copy, zeroized on drop.
    Decoded(Zeroizing<String>),
}

impl HeaderCredential<'_> {
    /// The token, or the secret of a foreign pair.
    pub(super) fn expose_secret(&self) -> &str {
        match &self.token {
            TokenText::Header(t) => t,
            TokenText::Decoded(t) => t,
        }
    }
    /// For a Basic pair whose secret is not in the token format: the key id.
    pub(super) fn pair_key_id(&self) -> Option<&str> {
        self.pair_id.as_deref()
    }
    /// Which header and scheme it came from.
    pub(super) fn source(&self) -> CredentialSource {
        self.source
    }
    fn into_owned(self) -> RequestCredential {
        let token = match self.token {
            TokenText::Header(t) => Zeroizing::new(t.to_owned()),
            TokenText::Decoded(t) => t,
        };
        RequestCredential {
            token,
            pair_id: self.pair_id,
            source: self.source,
        }
    }
}

/// Reads the credential from request headers exactly as [`KeywardLayer`](super::KeywardLayer)
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
    read_header_credential(headers, api_key_header, format, environment)
        .map(HeaderCredential::into_owned)
}

/// [`read_credential`] without copying a token sent as is.
pub(super) fn read_header_credential<'a>(
    headers: &'a HeaderMap,
    api_key_header: Option<&HeaderName>,
    format: &TokenFormat,
    environment: &Environment,
) -> Result<HeaderCredential<'a>, KeywardRejection> {
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
            let token = header_text(value)?.trim_ascii();
            if token.is_empty() {
                return Err(KeywardRejection::malformed("the API key header is empty"));
            }
            return Ok(HeaderCredential {
                token: TokenText::Header(token),
                pair_id: None,
                source: CredentialSource::ApiKeyHeader,
            });
        }
    }
    Err(KeywardRejection::missing(api_key_header))
}

/// Reads an Authorization value: Bearer, Basic, or, when `raw` (the
/// application named Authorization as its API-key header), a bare token.
fn parse_authorization<'a>(
    value: &'a HeaderValue,
    raw: bool,
    format: &TokenFormat,
    environment: &Environment,
) -> Result<HeaderCredential<'a>, KeywardRejection> {
    // `trim_ascii`, not `trim`: the text is visible ASCII and tab, where
    // the two agree, and it skips `trim`'s decoding of characters.
    let text = header_text(value)?.trim_ascii();
    if text.is_empty() {
        return Err(KeywardRejection::malformed(
            "the Authorization header is empty",
        ));
    }
    // `Bearer ` first, without a search for the space (the usual case).
    let (scheme, rest) = match text.split_at_checked(BEARER.len()) {
        Some((head, tail)) if head.eq_ignore_ascii_case(BEARER) => ("bearer", tail),
        _ => text.split_once(' ').unwrap_or((text, "")),
    };
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(KeywardRejection::malformed(
                "the Bearer credential is empty",
            ));
        }
        return Ok(HeaderCredential {
            token: TokenText::Header(rest),
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
            return Ok(HeaderCredential {
                token: TokenText::Decoded(Zeroizing::new(token.expose_secret().to_owned())),
                pair_id: None,
                source: CredentialSource::Basic,
            });
        }
        // Not this format's shape: an imported key's id and secret, checked
        // as a pair (the same limits as `Verifier::verify_pair`).
        let id_ok = !id.is_empty()
            && id.len() <= crate::ids::MAX_KEY_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric());
        let secret_ok = !secret.is_empty()
            && secret.len() <= crate::verify::MAX_PAIR_SECRET_LEN
            && secret.bytes().all(|b| b.is_ascii_graphic());
        if !(id_ok && secret_ok) {
            return Err(KeywardRejection::malformed(
                "the Basic credential is not a valid key_id:secret pair",
            ));
        }
        return Ok(HeaderCredential {
            token: TokenText::Decoded(Zeroizing::new(secret.to_owned())),
            pair_id: Some(id.to_owned()),
            source: CredentialSource::Basic,
        });
    }
    if raw && rest.is_empty() {
        // One word that is no scheme: the token itself (cargo's form).
        return Ok(HeaderCredential {
            token: TokenText::Header(text),
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

/// The Bearer scheme and the space after it.
const BEARER: &str = "bearer ";

fn header_text(value: &HeaderValue) -> Result<&str, KeywardRejection> {
    if value.len() > MAX_CREDENTIAL_HEADER_LEN {
        return Err(KeywardRejection::malformed("the credential is too long"));
    }
    value.to_str().map_err(|_| {
        KeywardRejection::malformed("the credential has characters that are not visible ASCII")
    })
}
