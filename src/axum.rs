//! axum/tower integration (feature `axum`): a layer that authenticates each
//! request with a key or session token, an extractor for handlers, and
//! responses per RFC 6750.
//!
//! ```
//! use std::collections::HashMap;
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{Router, routing::{get, post}, http::HeaderName};
//! use keyward::{Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, session::SessionConfig, TokenFormat};
//! use keyward::axum::{Caller, KeywardLayer};
//!
//! let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
//! let push = registry.get("package:push").unwrap();
//! let manager = KeyManager::builder(
//!     MemoryStore::new(),
//!     TokenFormat::new("mkh", &["live"]).unwrap(),
//!     Policy::new(registry),
//! )
//! .sessions(SessionConfig::new("mkhs"))
//! .build().unwrap();
//!
//! // Who owns each package (your database): a guard on a path resource
//! // needs this, or it cannot be built. `None` means no such package yet:
//! // it would be created for the caller, so it is checked as the caller's.
//! let owners: Arc<HashMap<String, String>> =
//!     Arc::new(HashMap::from([("Contoso.Tools".into(), "contoso".into())]));
//! let auth = KeywardLayer::with_sessions(manager, Environment::new("live").unwrap())
//!     .api_key_header(HeaderName::from_static("x-api-key"))
//!     .trusted_proxies(["10.0.0.0/8".parse().unwrap()])
//!     .resource_owner(move |name: String| {
//!         let owner = owners.get(&name).cloned();
//!         async move { owner }
//!     });
//!
//! async fn me(caller: Caller) -> String {
//!     format!("hello {}", caller.owner())
//! }
//! async fn push_version(caller: Caller) -> &'static str {
//!     "pushed"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/me", get(me))
//!     .route_layer(auth.clone())                                   // any valid key or session
//!     .merge(
//!         Router::new()
//!             .route("/packages/{name}/versions", post(push_version))
//!             // permission + path resource (and its owner)
//!             .route_layer(auth.require(push).resource_param("name")?),
//!     );
//! // Serve with the peer address so IP allowlists work:
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # let _ = app;
//! # Ok::<(), keyward::axum::LayerError>(())
//! ```
//!
//! **Stores and sessions**: the layer holds a [`Verifier`](crate::Verifier),
//! so [`KeywardLayer::new`] works over any [`KeyStore`](crate::KeyStore)
//! and checks keys. Session tokens are opt-in:
//! [`KeywardLayer::with_sessions`] takes a [`KeyManager`](crate::KeyManager)
//! whose store is also a [`SessionStore`](crate::store::SessionStore) (the bundled
//! stores are); then a token with the session prefix is checked as a
//! session, anything else as a key, and [`KeywardLayer::exchange`] issues
//! sessions. Without it, a session token is refused like any token that is
//! no key, and `exchange` answers 500.
//!
//! **Resources and owners**: a route guarded with
//! [`resource_param`](KeywardLayer::resource_param) checks the key against
//! the resource's name *and its owner*, so a key of one publisher never
//! reaches another's packages, whatever its name scope. The owner comes from
//! the resolver given to [`KeywardLayer::resource_owner`] (or, for owners
//! known without waiting, [`KeywardLayer::resource_owner_now`], which
//! costs a request less); building such a guard without one is refused
//! with [`LayerError::NoOwnerResolver`].
//!
//! **Credentials**, in this order: `Authorization: Bearer <token>`,
//! `Authorization: Basic base64(key_id:secret)` (the "application ID +
//! secret" pair, rebuilt with [`TokenFormat::from_pair`](crate::TokenFormat::from_pair)), or the configured
//! API-key header. Each registry client's way:
//!
//! | client | sends | layer setting |
//! |---|---|---|
//! | cargo (crates.io and alternative registries) | `Authorization: <token>` | [`api_key_header(AUTHORIZATION)`](KeywardLayer::api_key_header) |
//! | `nuget push`, `dotnet nuget push` | `X-NuGet-ApiKey: <token>` | `api_key_header("x-nuget-apikey")`, and [`expiry_warning_header("x-nuget-warning")`](KeywardLayer::expiry_warning_header), the only header NuGet shows |
//! | npm | `Authorization: Bearer <token>` | none |
//! | curl, CI scripts | Bearer, `-u key_id:secret` (Basic) or an API-key header | none, or `api_key_header` |
//!
//! **Client address**: the TCP peer ([`ConnectInfo<SocketAddr>`](::axum::extract::ConnectInfo)). Only
//! when the peer is in the trusted proxy ranges is the header the proxy
//! writes read ([`ProxyHeaders`]: `X-Forwarded-For` by default, or the
//! standard `Forwarded` header, RFC 7239: `for=` values quoted or not, IPv6
//! in brackets, with ports; or both), from the right, skipping trusted
//! hops, over all headers of that name, at most 32 entries. The other
//! header is ignored: a proxy that writes one passes a client's forgery of
//! the other through. An entry that is not an address (`unknown`, an
//! obfuscated `_name`, an element without `for=`, anything unparsable)
//! makes the address unknown rather than falling back to a proxy's. With
//! [`ProxyHeaders::Both`], both headers present must name the same client,
//! or the address is unknown. Without `ConnectInfo`, the address is
//! unknown. An unknown address refuses keys with an IP allowlist, and
//! checks without an address are not limited per client source (see
//! [`VerifierConfig::source_failure_burst`](crate::verify::VerifierConfig::source_failure_burst)):
//! wire `ConnectInfo` and the right proxy header.
//!
//! **Responses**: 401 with `WWW-Authenticate: Bearer error="invalid_token"`
//! for authentication failures (no `error` when no credential was sent),
//! 403 with `error="insufficient_scope"` for authorization failures, 429 with
//! `Retry-After` when throttled, 503 with `Retry-After` when the store fails
//! or too many checks wait for argon2. JSON bodies say what to do; an
//! unknown key id, a wrong secret and a malformed token get the same answer.
//! What a response does show: a client source throttled for its failures
//! gets 429 whether the id it sent exists or not, but the per-id throttle
//! exists only for existing ids, so after
//! [`failure_burst`](crate::verify::VerifierConfig::failure_burst) wrong secrets
//! for one id, a 429 shows that the id exists. Key ids are public by design
//! (in the token, listings, logs, Basic pairs), so this reveals nothing
//! secret; the secret, revoked, expired and suspended states are only told
//! after the secret was proven. A successful response for a
//! key that expires within [`KeywardLayer::expiry_warning_days`] days carries
//! a [`WARNING_HEADER`] header (its name set by
//! [`KeywardLayer::expiry_warning_header`]).
//!
//! **Management errors**: [`ManagementRejection`] turns a
//! [`KeywardError`](crate::KeywardError) from a [`KeyManager`](crate::KeyManager)
//! call into a response (400, 403, 404, 409, 429, 500 or 503, with a JSON
//! body like the layer's), so a handler can return it with `?`.

mod caller;
mod credential;
mod forwarded;
mod future;
mod layer;
#[cfg(feature = "leak-reports")]
mod leaks;
mod management;
mod rate_headers;
mod rejection;
mod service;
mod sessions;

pub use caller::Caller;
pub use credential::{
    CredentialSource, MAX_CREDENTIAL_HEADER_LEN, RequestCredential, read_credential,
};
pub use forwarded::ProxyHeaders;
pub use future::ResponseFuture;
pub use layer::{KeywardLayer, LayerError, WARNING_HEADER};
#[cfg(feature = "leak-reports")]
#[cfg_attr(docsrs, doc(cfg(all(feature = "axum", feature = "leak-reports"))))]
pub use leaks::{KEY_IDENTIFIER_HEADER, SIGNATURE_HEADER, leak_report_route};
pub use management::ManagementRejection;
pub use rate_headers::{RATELIMIT, RATELIMIT_POLICY, rate_limit_fields};
pub use rejection::{DEFAULT_REALM, KeywardRejection};
pub use service::RequireKey;
