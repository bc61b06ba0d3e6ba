//! # keyward
//!
//! Issue, check and retire API keys the way the best package registries do:
//! argon2id at rest, checks in about a microsecond, permissions, resource
//! scopes with glob patterns, expiry policies, IP allowlists, quotas,
//! regeneration and permanent revocation, behind one storage trait.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use keyward::prelude::*;
//!
//! // Once, at startup: the application's permissions, policy and token format.
//! let registry = PermissionRegistry::builder()
//!     .permission("package:push-new")
//!     .permission_implying("package:push", &["package:push-new"])
//!     .permission("package:unlist")
//!     .session_only("package:delete")
//!     .build()?;
//! let push = registry.get("package:push").unwrap();
//! let delete = registry.get("package:delete").unwrap();
//! let policy = Policy::new(registry).with_quota(3)?;
//! let format = TokenFormat::new("mkh", &["live", "test"])?;
//! let manager = KeyManager::builder(MemoryStore::new(), format, policy)
//! #   .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
//!     .build().unwrap();
//!
//! // A publisher's administrator creates a key for one family of packages.
//! let admin = Actor::administrator("alice", OwnerId::new("contoso")?);
//! let created = manager
//!     .create(
//!         &admin,
//!         NewKey::new("contoso", "live", "GitHub Actions")
//!             .permissions(PermissionGrant::only(["package:push"]))
//!             .resources(ResourceScope::only(["AzureRM.DataFactory*"])),
//!     )
//!     .await?;
//! let token = created.token.expose_secret(); // show once, never store
//!
//! // Every request: one call.
//! let live = Environment::new("live")?;
//! let ok = VerifyRequest::new(&live, push).resource("contoso", "AzureRm.DataFactoryV2");
//! assert!(manager.verify(token, &ok).await.is_ok());
//!
//! let other = VerifyRequest::new(&live, push).resource("contoso", "AzureRM.Profile");
//! let denial = manager.verify(token, &other).await.unwrap_err();
//! assert_eq!(denial.reason, DenialReason::ResourceOutOfScope);
//! assert_eq!(denial.kind(), DenialKind::Authorization); // HTTP 403
//!
//! let session_only = VerifyRequest::new(&live, delete);
//! let denial = manager.verify(token, &session_only).await.unwrap_err();
//! assert_eq!(denial.reason, DenialReason::SessionOnly);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Where things are
//!
//! The crate root holds what a program needs in its first hour (and
//! [`prelude`] the same for a glob import); everything else is under its
//! module:
//!
//! | module | holds |
//! |---|---|
//! | [`ids`] | [`KeyId`], [`OwnerId`], [`Environment`], [`ids::ExternalId`], [`ids::InvalidValue`] |
//! | [`metadata`] | a key's application metadata, [`metadata::Metadata`], and [`metadata::MetadataError`] |
//! | [`token`] | [`TokenFormat`] and its length limits, [`Token`], [`token::TokenError`] |
//! | [`hash`] | [`hash::Argon2Hasher`], [`Argon2Params`], peppers, [`hash::HashError`] |
//! | [`policy`] | [`Policy`], permissions, resource scopes, expiry, IP allowlists, [`policy::PolicyError`] |
//! | [`key`] | the stored [`key::KeyRecord`] and the [`key::KeyView`] APIs show |
//! | [`session`] | session data: [`session::SessionConfig`], [`session::SessionRecord`], ... |
//! | [`audit`] | audit events and queries |
//! | [`store`] | [`KeyStore`], [`store::SessionStore`], [`store::AuditSink`], the stores, [`store::StoreError`] |
//! | [`verify`] | [`Verifier`], [`VerifyRequest`], [`Denial`], session checks |
//! | [`manager`] | [`KeyManager`], its inputs and [`KeywardError`] |
//! | [`usage`] | per-key rate limits and usage credits: [`usage::RateLimit`], [`usage::Credits`], [`usage::UsageError`] |
//! | [`clock`] | [`clock::Clock`], [`ManualClock`] for tests |
//! | `axum` | the tower layer and handlers (feature `axum`) |
//!
//! See `docs/DESIGN.md` in the repository for the design, and the README for
//! the token format and the secret-scanner expression.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod audit;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
pub mod clock;
pub mod hash;
pub mod ids;
pub mod key;
#[cfg(feature = "leak-reports")]
#[cfg_attr(docsrs, doc(cfg(feature = "leak-reports")))]
pub mod leak;
pub mod manager;
pub mod metadata;
pub mod policy;
pub mod session;
mod source;
pub mod store;
pub mod token;
mod trace;
mod trust_policy;
pub mod trusted;
pub mod usage;
pub mod verify;

pub mod prelude {
    //! The names a program needs in its first hour with keyward, without the
    //! modules: the recommended import.
    //!
    //! ```
    //! use keyward::prelude::*;
    //! ```
    //!
    //! `use keyward::*` also brings in the modules (`keyward::axum`,
    //! `keyward::store`, `keyward::policy`, `keyward::token`, ...), so a file
    //! that glob-imports the crate root and also uses the `axum` crate fails
    //! to compile (`axum` is ambiguous). This module holds types and traits
    //! only, no modules; anything else is under its module
    //! (`keyward::store::StoreError`, `keyward::session::SessionConfig`).
    //!
    //! | for | names |
    //! |---|---|
    //! | setup | [`PermissionRegistry`], [`Permission`], [`Policy`], [`ExpiryPolicy`], [`ExpiryChoice`], [`TokenFormat`], [`Environment`] |
    //! | keys | [`KeyManager`], [`NewKey`], [`CreatedKey`], [`KeyEdit`], [`PermissionGrant`], [`ResourceScope`], [`Token`], [`KeyView`], [`KeyStatus`], [`ListQuery`] |
    //! | identities | [`Actor`], [`OwnerId`], [`KeyId`] |
    //! | checks | [`Verifier`], [`VerifyRequest`], [`VerifiedKey`], [`Denial`], [`DenialKind`], [`DenialReason`] |
    //! | storage | [`KeyStore`], [`MemoryStore`] |
    //! | errors | [`KeywardError`] |
    //! | tests | [`Argon2Hasher`], [`Argon2Params`], [`ManualClock`] |

    pub use crate::clock::ManualClock;
    pub use crate::hash::{Argon2Hasher, Argon2Params};
    pub use crate::ids::{Environment, KeyId, OwnerId};
    pub use crate::key::{KeyStatus, KeyView};
    pub use crate::manager::{CreatedKey, KeyEdit, KeyManager, KeywardError, NewKey};
    pub use crate::policy::{
        Actor, ExpiryChoice, ExpiryPolicy, Permission, PermissionGrant, PermissionRegistry, Policy,
        ResourceScope,
    };
    pub use crate::store::{KeyStore, ListQuery, MemoryStore};
    pub use crate::token::{Token, TokenFormat};
    pub use crate::verify::{
        Denial, DenialKind, DenialReason, VerifiedKey, Verifier, VerifyRequest,
    };
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The `chrono` keyward's API speaks (`DateTime<Utc>`, `TimeDelta`), so
/// callers and test suites need not add it themselves:
/// `use keyward::chrono::TimeDelta;`.
#[doc(no_inline)]
pub use chrono;

// The front door: what a program needs in its first hour. Everything else
// is under its module (`keyward::store::StoreError`, `keyward::policy::ResourceScope`,
// `keyward::session::SessionConfig`, ...).
#[doc(inline)]
pub use clock::ManualClock;
#[doc(inline)]
pub use hash::Argon2Params;
#[doc(inline)]
pub use ids::{Environment, KeyId, OwnerId};
#[doc(inline)]
pub use manager::{CreatedKey, KeyEdit, KeyManager, KeywardError, NewKey};
#[doc(inline)]
pub use policy::{Actor, Permission, PermissionRegistry, Policy};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[doc(inline)]
pub use store::PostgresStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[doc(inline)]
pub use store::SqliteStore;
#[doc(inline)]
pub use store::{KeyStore, MemoryStore};
#[doc(inline)]
pub use token::{Token, TokenFormat};
#[doc(inline)]
pub use verify::{Denial, DenialReason, VerifiedKey, Verifier, VerifyRequest};
