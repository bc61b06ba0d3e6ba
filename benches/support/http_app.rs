//! The router `benches/http.rs` measures and `examples/http_bench_server.rs`
//! serves to wrk (`benches/http_wrk.sh`): one route with no layer, one behind
//! a no-op middleware (the control), one behind `KeywardLayer` with a cached
//! key, one that also matches a resource from the path against 10 patterns
//! (its owner from a resolver returning a future), and the same with a
//! resolver that answers at once (`resource_owner_now`).
//! Included by path from both, so the two measure the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use keyward::axum::KeywardLayer;
use keyward::prelude::*;

/// The key's 10 patterns (the same as `benches/verify.rs`).
const PATTERNS: [&str; 10] = [
    "AzureRM.DataFactory*",
    "AzureRM.Profile",
    "Contoso.*.Tools",
    "Contoso.Build?",
    "Fabrikam.Core*",
    "Fabrikam.Data.*",
    "Northwind.*",
    "Tailspin.Web*",
    "Wingtip.??.Client",
    "Litware.Analytics*",
];
/// The key's 4 CIDRs (those of `benches/verify.rs`, with loopback for the
/// first so that wrk's connections are allowed); the client address is in it.
const CIDRS: [&str; 4] = [
    "127.0.0.0/8",
    "192.0.2.0/24",
    "2001:db8::/32",
    "203.0.113.0/24",
];
/// The key's owner (and of every resource, as the resolver says).
pub const OWNER: &str = "publisher-000042";

async fn ok() -> &'static str {
    "ok"
}

async fn noop(req: axum::extract::Request, next: Next) -> Response {
    next.run(req).await
}

/// The router, a key's token for it, and a client address in the key's allowlist.
pub struct Setup {
    /// The five routes.
    pub router: Router,
    /// The key's full token (send it as `Authorization: Bearer <token>`).
    pub token: String,
    /// A client address inside the key's allowlist.
    pub client: SocketAddr,
    /// The layer's verifier, for the check alone (read by `benches/http.rs`).
    #[allow(dead_code)]
    pub verifier: Verifier<Arc<MemoryStore>>,
    /// The permission the protected routes require (likewise).
    #[allow(dead_code)]
    pub push: Permission,
}

/// Builds the router with one key (insecure argon2 parameters: the key is
/// cached after its first check, so they do not matter here).
pub fn setup(rt: &tokio::runtime::Runtime) -> Setup {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .permission("analytics:read")
        .build()
        .expect("registry");
    let push = registry.get("package:push").expect("push");
    let format = TokenFormat::new("mkh", &["live"]).expect("format");
    let store = Arc::new(MemoryStore::new());
    let manager = KeyManager::builder(store, format, Policy::new(registry))
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .expect("manager");
    let created = rt
        .block_on(
            manager.create(
                &Actor::system("bench"),
                NewKey::new(OWNER, "live", "GitHub Actions Production")
                    .permissions(PermissionGrant::only(["package:push", "analytics:read"]))
                    .resources(ResourceScope::only(PATTERNS))
                    .ip_allowlist(CIDRS),
            ),
        )
        .expect("create");
    let live = Environment::new("live").expect("env");
    let auth = KeywardLayer::new(manager.verifier(), live)
        .resource_owner(|_name: String| async { Some(OWNER.to_owned()) });
    let router = Router::new()
        .route("/open/{name}/versions", post(ok))
        .merge(
            Router::new()
                .route("/noop/{name}/versions", post(ok))
                .route_layer(middleware::from_fn(noop)),
        )
        .merge(
            Router::new()
                .route("/keys/{name}/versions", post(ok))
                .route_layer(auth.require(push)),
        )
        .merge(
            Router::new()
                .route("/pkgs/{name}/versions", post(ok))
                .route_layer(auth.require(push).resource_param("name").expect("layer")),
        )
        .merge(
            Router::new()
                .route("/sync/{name}/versions", post(ok))
                .route_layer(
                    auth.clone()
                        .resource_owner_now(|_name: &str| Some(OWNER))
                        .require(push)
                        .resource_param("name")
                        .expect("layer"),
                ),
        )
        // Every handler made into a route now, as `axum::serve` does (through
        // `into_make_service`): without it a `Router` still holding handlers
        // applies each route's layers again on every request, a cost a
        // server never pays.
        .with_state(());
    Setup {
        router,
        token: created.token.expose_secret().to_owned(),
        client: "127.0.0.1:51234".parse().expect("addr"),
        verifier: manager.verifier(),
        push,
    }
}

/// The paths of the five cases, by bench id. Every first segment is four
/// letters, each starting with its own letter, so that the request line's
/// parsing and the router's match (work per byte and per tree node) cost
/// the same on every route: a longer path (`/protected/` was 5 bytes longer
/// than `/noop/`, about 90 instructions under callgrind) would charge the
/// layer for its route's name.
pub const CASES: [(&str, &str); 5] = [
    ("open", "/open/Fabrikam.Data.Sql/versions"),
    ("noop_layer", "/noop/Fabrikam.Data.Sql/versions"),
    ("protected", "/keys/Fabrikam.Data.Sql/versions"),
    ("scoped", "/pkgs/Fabrikam.Data.Sql/versions"),
    ("scoped_now", "/sync/Fabrikam.Data.Sql/versions"),
];
