//! Issuer key sets (JWKS) compiled into verification keys, and the JWT
//! checks that need no store: size, header, algorithm, key, signature,
//! times.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::claims::TokenClaims;
use super::error::TrustError;

/// The most keys kept per issuer.
pub(crate) const MAX_KEYS: usize = 32;
/// The longest key set document read, in bytes.
pub(crate) const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// One issuer's verification keys, by `kid`.
pub(crate) struct IssuerKeys {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

impl IssuerKeys {
    /// Whether the set holds a key with this `kid`.
    pub(crate) fn has(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Reads a JWKS document; keeps RSA keys (for RS256, at least 2048
    /// bits) and P-256 keys (for ES256) that carry a `kid` and are not
    /// marked for another use or algorithm. Errors: not a JWKS, too large,
    /// too many keys, or no usable key.
    pub(crate) fn from_jwks(json: &str) -> Result<Self, TrustError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(TrustError::BadKeySet(format!(
                "the key set is {} bytes long, the maximum is {MAX_JWKS_BYTES}",
                json.len()
            )));
        }
        let set: JwkSet = serde_json::from_str(json)
            .map_err(|e| TrustError::BadKeySet(format!("not a JWKS document: {e}")))?;
        if set.keys.len() > MAX_KEYS {
            return Err(TrustError::BadKeySet(format!(
                "{} keys, the maximum is {MAX_KEYS}",
                set.keys.len()
            )));
        }
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(p) => {
                    let n = URL_SAFE_NO_PAD
                        .decode(p.n.trim_end_matches('='))
                        .unwrap_or_default();
                    let significant = n.iter().skip_while(|b| **b == 0).count();
                    if significant < MIN_RSA_BYTES {
                        continue;
                    }
                    Algorithm::RS256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let declared_ok = match jwk.common.key_algorithm {
                None => true,
                Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
                Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
                Some(_) => false,
            };
            if !declared_ok {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.insert(kid, (alg, key));
        }
        if keys.is_empty() {
            return Err(TrustError::BadKeySet(
                "no RS256 or ES256 signing key with a kid".into(),
            ));
        }
        Ok(Self { keys })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Issuer {
    iss: Option<serde_json::Value>,
}

/// The parts of a token read before its signature is checked.
pub(crate) struct Unverified {
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
    pub(crate) issuer: String,
}

/// At most `max` characters of a value the caller sent, control
/// characters replaced, for an error message.
fn printable(value: &str, max: usize) -> String {
    value
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn part(token: &str, index: usize) -> Result<Vec<u8>, TrustError> {
    let text = token
        .split('.')
        .nth(index)
        .ok_or(TrustError::Malformed("not three dot-separated parts"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TrustError::Malformed("a part is not base64url"))
}

/// Reads the header (`alg`, `kid`) and the issuer, without trusting them:
/// they only choose the key the signature is checked with.
pub(crate) fn peek(token: &str) -> Result<Unverified, TrustError> {
    if token.split('.').count() != 3 {
        return Err(TrustError::Malformed("not three dot-separated parts"));
    }
    let header: Header = serde_json::from_slice(&part(token, 0)?)
        .map_err(|_| TrustError::Malformed("the header is not a JSON object"))?;
    let alg = match &header.alg {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => return Err(TrustError::Malformed("alg is not a string")),
        None => return Err(TrustError::MissingClaim("alg")),
    };
    let alg = match alg {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => return Err(TrustError::DisallowedAlgorithm(printable(other, 16))),
    };
    let kid = match header.kid {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
        Some(serde_json::Value::String(_)) | None => return Err(TrustError::MissingKeyId),
        Some(_) => return Err(TrustError::Malformed("kid is not a string")),
    };
    let payload: Issuer = serde_json::from_slice(&part(token, 1)?)
        .map_err(|_| TrustError::Malformed("the payload is not a JSON object"))?;
    let issuer = match payload.iss {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(TrustError::Malformed("iss is not a string")),
        None => return Err(TrustError::MissingClaim("iss")),
    };
    Ok(Unverified { alg, kid, issuer })
}

/// `aud`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Payload {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    aud: Option<Audience>,
    #[serde(flatten)]
    claims: TokenClaims,
}

/// A token whose signature verified and whose times are valid.
pub(crate) struct Verified {
    pub(crate) audiences: Vec<String>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) claims: TokenClaims,
}

fn time(value: Option<f64>, name: &'static str) -> Result<Option<DateTime<Utc>>, TrustError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v.abs() < 1e12 => {
            Ok(DateTime::from_timestamp(v.floor() as i64, 0))
        }
        Some(_) => Err(TrustError::Malformed(name)),
    }
}

/// Checks the signature with the issuer's key `kid`, then `exp`, `nbf`,
/// `iat` (with `leeway`) and the token's lifetime against `max_lifetime`.
pub(crate) fn verify(
    token: &str,
    head: &Unverified,
    keys: &IssuerKeys,
    now: DateTime<Utc>,
    leeway: Duration,
    max_lifetime: Duration,
) -> Result<Verified, TrustError> {
    let (alg, key) = keys
        .keys
        .get(&head.kid)
        .filter(|(alg, _)| *alg == head.alg)
        .ok_or_else(|| TrustError::UnknownKeyId(printable(&head.kid, 64)))?;
    let mut validation = Validation::new(*alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Payload>(token, key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::Crypto(_) => TrustError::BadSignature,
            ErrorKind::InvalidAlgorithm => TrustError::DisallowedAlgorithm(format!("{alg:?}")),
            ErrorKind::Json(_) => TrustError::Malformed("a claim has the wrong type"),
            _ => TrustError::Malformed("the token could not be decoded"),
        }
    })?;
    let payload = data.claims;
    let leeway = TimeDelta::from_std(leeway).unwrap_or(TimeDelta::zero());
    let exp = time(payload.exp, "exp")?.ok_or(TrustError::MissingClaim("exp"))?;
    let iat = time(payload.iat, "iat")?.ok_or(TrustError::MissingClaim("iat"))?;
    if exp + leeway <= now {
        return Err(TrustError::Expired);
    }
    if let Some(nbf) = time(payload.nbf, "nbf")? {
        if nbf - leeway > now {
            return Err(TrustError::NotYetValid);
        }
    }
    if iat - leeway > now {
        return Err(TrustError::IssuedInFuture);
    }
    let lifetime = TimeDelta::from_std(max_lifetime).unwrap_or(TimeDelta::MAX);
    if exp - iat > lifetime {
        return Err(TrustError::LifetimeTooLong { max: max_lifetime });
    }
    let audiences = match payload.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(list)) => list,
        None => return Err(TrustError::MissingClaim("aud")),
    };
    Ok(Verified {
        audiences,
        expires_at: exp + leeway,
        claims: payload.claims,
    })
}
