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
//! See `docs/DESIGN.md` in the repository for the design, and the README for
//! the token format and the secret-scanner expression.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod audit;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod clock;
mod error;
mod hash;
mod key;
#[cfg(feature = "leak-reports")]
#[cfg_attr(docsrs, doc(cfg(feature = "leak-reports")))]
pub mod leak;
mod manager;
pub mod policy;
mod session;
mod source;
pub mod store;
mod token;
mod trace;
mod verify;

pub mod prelude {
    //! The names a program needs in its first hour with keyward, without the
    //! modules: the recommended import.
    //!
    //! ```
    //! use keyward::prelude::*;
    //! ```
    //!
    //! `use keyward::*` also brings in the modules `keyward::axum`,
    //! `keyward::store`, `keyward::policy` and `keyward::audit`, so a file
    //! that glob-imports the crate root and also uses the `axum` crate fails
    //! to compile (`axum` is ambiguous). This module holds types and traits
    //! only, no modules; anything else is one `keyward::Name` away.
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
    pub use crate::error::KeywardError;
    pub use crate::hash::{Argon2Hasher, Argon2Params};
    pub use crate::key::{KeyStatus, KeyView, OwnerId};
    pub use crate::manager::{CreatedKey, KeyEdit, KeyManager, NewKey};
    pub use crate::policy::{
        Actor, ExpiryChoice, ExpiryPolicy, Permission, PermissionGrant, PermissionRegistry, Policy,
        ResourceScope,
    };
    pub use crate::store::{KeyStore, ListQuery, MemoryStore};
    pub use crate::token::{Environment, KeyId, Token, TokenFormat};
    pub use crate::verify::{
        Denial, DenialKind, DenialReason, VerifiedKey, Verifier, VerifyRequest,
    };
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use audit::{AuditAction, AuditEvent, AuditQuery, AuditSink, MemoryAuditSink};
/// The `chrono` keyward's API speaks (`DateTime<Utc>`, `TimeDelta`), so
/// callers and test suites need not add it themselves:
/// `use keyward::chrono::TimeDelta;`.
#[doc(no_inline)]
pub use chrono;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{HashError, InvalidValue, KeywardError, PolicyError, StoreError, TokenError};
pub use hash::{
    Argon2Hasher, Argon2Params, FINGERPRINT_LEN, Fingerprinter, HashScratch, Pepper, SecretHasher,
};
pub use key::{
    KeyKind, KeyRecord, KeyStatus, KeyView, MAX_NAME_LEN, MAX_OWNER_LEN, OwnerId, SecretHash,
};
pub use manager::{
    BuildError, CreatedKey, ImportKey, KeyEdit, KeyManager, KeyManagerBuilder, MIN_ROTATION_GRACE,
    NewKey, RotatedKey,
};
pub use policy::{
    Actor, CompiledScope, DefaultManagementPolicy, EditPolicy, ExpiryChoice, ExpiryPolicy,
    IpAllowlist, ManagementAction, ManagementDenial, ManagementPolicy, Permission, PermissionGrant,
    PermissionRegistry, PermissionSet, Policy, ResourceRef, ResourceRule, ResourceScope, Role,
};
pub use session::{
    DEFAULT_MAX_SESSION_TTL, DEFAULT_MAX_SESSIONS_PER_KEY, DEFAULT_SESSION_TTL, IssuedSession,
    SessionCap, SessionConfig, SessionError, SessionHash, SessionRecord, SessionStore, SessionView,
    VerifiedSession,
};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use store::InvalidName;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::SqliteStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{ChangeListener, FeedStatus, PostgresStore};
pub use store::{KeyStore, ListQuery, MemoryStore, QuotaCheck, due_for_reminder};
pub use token::{
    BODY_LEN, CHECKSUM_LEN, Environment, KEY_ID_LEN, KeyId, MAX_KEY_ID_LEN, ParsedToken,
    SECRET_LEN, Token, TokenFormat,
};
pub use verify::{
    CompiledKey, Denial, DenialKind, DenialReason, MAX_PAIR_SECRET_LEN, VerifiedKey, Verifier,
    VerifierConfig, VerifyRequest,
};
