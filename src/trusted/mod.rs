//! Trusted publishing: a CI job exchanges its OIDC identity token (a JWT
//! from GitHub Actions and similar issuers) for a short-lived session
//! token, so no long-lived key lives in CI.
//!
//! * An owner's administrator registers [`TrustPolicy`]s
//!   ([`KeyManager::create_trust_policy`](crate::KeyManager::create_trust_policy)):
//!   issuer, audience, the claims that must match ([`GitHubClaims`]), and
//!   the permissions and resources the sessions get.
//! * [`TrustedPublishing::exchange`] (feature `trusted-publishing`) checks
//!   the token's signature against the issuer's keys (JWKS supplied by the
//!   application, or fetched through its [`JwksFetcher`] and cached), its times with a bounded leeway, its audience and the
//!   policy's claims, refuses a `jti` already used (in the store, so on
//!   every server), and issues a session token of the policy's owner.
//!
//! The policy types and the matching are always built, so stores implement
//! [`TrustStore`](crate::store::TrustStore) whatever the features.

mod claims;
#[cfg(feature = "trusted-publishing")]
mod error;
#[cfg(feature = "trusted-publishing")]
mod exchange;
#[cfg(feature = "trusted-publishing")]
mod fetch;
#[cfg(feature = "trusted-publishing")]
mod keys;
mod manage;

pub use crate::trust_policy::{
    GITHUB_ACTIONS_ISSUER, GitHubClaims, NewTrustPolicy, TrustClaims, TrustPolicy,
};
pub use claims::{ClaimError, ClaimName, MatchedClaims, TokenClaims, match_claims};
#[cfg(feature = "trusted-publishing")]
#[cfg_attr(docsrs, doc(cfg(feature = "trusted-publishing")))]
pub use error::{TrustError, TrustResult};
#[cfg(feature = "trusted-publishing")]
#[cfg_attr(docsrs, doc(cfg(feature = "trusted-publishing")))]
pub use exchange::{TrustConfig, TrustedPublishing, TrustedSession};
#[cfg(feature = "trusted-publishing")]
#[cfg_attr(docsrs, doc(cfg(feature = "trusted-publishing")))]
pub use fetch::JwksFetcher;
