//! [`TrustError`]: why an OIDC token was not exchanged for a session.

use std::time::Duration;

use thiserror::Error;

use super::claims::ClaimName;
use crate::policy::PolicyError;
use crate::store::StoreError;
use crate::verify::SessionError;

/// Why an OIDC token was refused, or trusted publishing could not be set up.
///
/// Never carries the token or any part of it but claim names; nothing was
/// issued or stored (except a refused-as-replay token's `jti`, which was
/// stored by the exchange that used it first).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The token is longer than [`TrustedPublishing::MAX_TOKEN_BYTES`](super::TrustedPublishing::MAX_TOKEN_BYTES); it was not read.
    #[error("the token is {len} bytes long, more than the maximum of {max}")]
    TokenTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a JWT (three base64url parts with a JSON header and payload),
    /// or a claim of the wrong type.
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not RS256 or ES256 (`none` and HMAC included).
    #[error("the token's algorithm {0:?} is not accepted (RS256 or ES256 only)")]
    DisallowedAlgorithm(String),
    /// The header has no `kid`.
    #[error("the token's header names no key (kid)")]
    MissingKeyId,
    /// The issuer's key set has no usable key with the header's `kid` (or
    /// that key is of another algorithm).
    #[error("the issuer has no key {0:?} for this algorithm")]
    UnknownKeyId(String),
    /// No keys are configured for the token's issuer.
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `exp - iat` is longer than [`TrustedPublishing::MAX_TOKEN_LIFETIME`](super::TrustedPublishing::MAX_TOKEN_LIFETIME).
    #[error("the token lives longer than the maximum of {max:?}")]
    LifetimeTooLong {
        /// The maximum.
        max: Duration,
    },
    /// A claim keyward needs is missing (`exp`, `iat`, `jti`, `aud`, ...).
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    /// No trust policy for the token's issuer names its audience.
    #[error("no trust policy accepts the token's audience")]
    WrongAudience,
    /// No trust policy is registered for the token's issuer and owner.
    #[error("no trust policy is registered for this identity")]
    NoPolicy,
    /// Policies exist for the identity, but none matched: this claim was
    /// missing or different (in the first policy checked).
    #[error("the token's {claim} claim does not match the trust policy")]
    ClaimMismatch {
        /// The claim.
        claim: ClaimName,
    },
    /// Policies of more than one owner match the token, or so many owners
    /// registered policies for its repository owner that not all could be
    /// read ([`TrustPolicy::MAX_CANDIDATES`](super::TrustPolicy::MAX_CANDIDATES));
    /// nothing was issued. Name the owner
    /// ([`TrustedPublishing::exchange_for`](super::TrustedPublishing::exchange_for)).
    #[error("trust policies of several owners match the token; name the owner")]
    AmbiguousOwner,
    /// The token's `jti` was already exchanged: a token is used once.
    #[error("the token was already used")]
    Replayed,
    /// The matching policy grants what the application's policy no longer
    /// allows (a permission removed or made session-only, a pattern now
    /// refused); nothing was issued.
    #[error("the trust policy is no longer valid: {0}")]
    PolicyInvalid(PolicyError),
    /// A key set (JWKS) could not be read, or held no usable key.
    #[error("invalid key set: {0}")]
    BadKeySet(String),
    /// The configured leeway is above [`TrustedPublishing::MAX_LEEWAY`](super::TrustedPublishing::MAX_LEEWAY).
    #[error("a leeway of {0:?} is above the maximum of 60 s")]
    LeewayTooLong(Duration),
    /// Issuing the session failed or is not configured.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store failed; nothing was issued.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of trusted-publishing calls.
pub type TrustResult<T> = Result<T, TrustError>;
