//! Rate limits and credits through the axum layer: 429 with `Retry-After`
//! and the `RateLimit-Policy` / `RateLimit` fields, 402 for spent credits,
//! 500 for a spend the policy does not declare, the fields on successes
//! when asked, and a refused request spends nothing.
#![cfg(feature = "axum")]

use std::sync::Arc;
use std::time::Duration;

use ::axum::Router;
use ::axum::body::Body;
use ::axum::http::{Request, StatusCode, header};
use ::axum::routing::get;
use keyward::axum::{Caller, KeywardLayer};
use keyward::prelude::*;
use keyward::usage::{Credits, RateLimit, RateLimits};
use tower::ServiceExt;

async fn ok(caller: Caller) -> String {
    caller.id().as_str().to_owned()
}

struct Fixture {
    manager: KeyManager<Arc<MemoryStore>>,
    app: Router,
    auth: KeywardLayer<Arc<MemoryStore>>,
    search: Permission,
}

fn fixture() -> Fixture {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .permission("search")
        .build()
        .unwrap();
    let push = registry.get("package:push").unwrap();
    let search = registry.get("search").unwrap();
    let policy = Policy::new(registry).with_rate_limits(["publish"]).unwrap();
    let manager = KeyManager::builder(
        Arc::new(MemoryStore::new()),
        TokenFormat::new("mkh", &["live"]).unwrap(),
        policy,
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .clock(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()))
    .build()
    .unwrap();
    // Served in-process (oneshot): no client address.
    let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
        .without_client_addresses()
        .rate_limit_headers(true);
    let app = Router::new()
        .route(
            "/publish",
            get(ok).route_layer(auth.require(push).spend("publish", 1).unwrap()),
        )
        .route(
            "/search",
            get(ok).route_layer(auth.require(search).credits(2)),
        );
    Fixture {
        manager,
        app,
        auth,
        search,
    }
}

impl Fixture {
    async fn key(&self, usage: impl FnOnce(NewKey) -> NewKey) -> String {
        let new = NewKey::new("contoso", "live", "ci")
            .permissions(PermissionGrant::only(["package:push", "search"]));
        let created = self
            .manager
            .create(&Actor::system("tests"), usage(new))
            .await
            .unwrap();
        created.token.expose_secret().to_owned()
    }

    async fn get(&self, path: &str, token: &str) -> ::axum::response::Response {
        let req = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.app.clone().oneshot(req).await.unwrap()
    }
}

#[tokio::test]
async fn a_spent_limit_is_429_with_retry_after_and_the_draft_fields() {
    let f = fixture();
    let publish = RateLimit::new("publish", 2, Duration::from_secs(3600)).unwrap();
    let token = f
        .key(|n| n.rate_limits(RateLimits::new([publish]).unwrap()))
        .await;
    let first = f.get("/publish", &token).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.headers()["ratelimit-policy"],
        "\"publish\";q=2;w=3600"
    );
    assert_eq!(first.headers()["ratelimit"], "\"publish\";r=1;t=1800");
    assert_eq!(f.get("/publish", &token).await.status(), StatusCode::OK);
    let denied = f.get("/publish", &token).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.headers()[header::RETRY_AFTER], "1800");
    assert_eq!(
        denied.headers()["ratelimit-policy"],
        "\"publish\";q=2;w=3600"
    );
    assert_eq!(denied.headers()["ratelimit"], "\"publish\";r=0;t=3600");
    // A route that does not spend it is not limited.
    assert_eq!(f.get("/search", &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn spent_credits_are_402_and_a_refused_request_spends_nothing() {
    let f = fixture();
    let token = f.key(|n| n.credits(Credits::new(5).unwrap())).await;
    // Each /search costs 2: two pass, the third is refused.
    assert_eq!(f.get("/search", &token).await.status(), StatusCode::OK);
    assert_eq!(f.get("/search", &token).await.status(), StatusCode::OK);
    let refused = f.get("/search", &token).await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    let body = ::axum::body::to_bytes(refused.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "usage_exhausted");
    // The last credit is still there: /publish charges the default 1.
    assert_eq!(f.get("/publish", &token).await.status(), StatusCode::OK);
    assert_eq!(
        f.get("/publish", &token).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
}

#[tokio::test]
async fn an_undeclared_spend_fails_when_the_route_is_built() {
    let f = fixture();
    for (name, cost) in [("publsh", 1), ("publish", 0)] {
        let refused = f.auth.require(f.search).spend(name, cost).unwrap_err();
        assert!(
            matches!(&refused, keyward::axum::LayerError::BadSpend { name: n, .. } if n == name),
            "{refused:?}"
        );
    }
    let mut guard = f.auth.require(f.search);
    for _ in 0..4 {
        guard = guard.spend("publish", 1).unwrap();
    }
    assert!(guard.spend("publish", 1).is_err(), "a fifth limit");
}

#[tokio::test]
async fn a_session_spends_its_keys_credits() {
    let registry = PermissionRegistry::builder()
        .permission("search")
        .build()
        .unwrap();
    let search = registry.get("search").unwrap();
    let manager = KeyManager::builder(
        Arc::new(MemoryStore::new()),
        TokenFormat::new("mkh", &["live"]).unwrap(),
        Policy::new(registry),
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .sessions(keyward::session::SessionConfig::new("mkhs"))
    .build()
    .unwrap();
    let live = Environment::new("live").unwrap();
    let auth =
        KeywardLayer::with_sessions(manager.clone(), live.clone()).without_client_addresses();
    let app = Router::new().route("/search", get(ok).route_layer(auth.require(search)));
    let created = manager
        .create(
            &Actor::system("tests"),
            NewKey::new("contoso", "live", "ci")
                .permissions(PermissionGrant::only(["search"]))
                .credits(Credits::new(3).unwrap()),
        )
        .await
        .unwrap();
    let key = created.token.expose_secret().to_owned();
    let session = manager
        .exchange(&key, &live, None, None)
        .await
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    let call = |token: String| {
        let app = app.clone();
        async move {
            let req = Request::get("/search")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    // The key and its session share the key's 3 credits.
    assert_eq!(call(session.clone()).await, StatusCode::OK);
    assert_eq!(call(key.clone()).await, StatusCode::OK);
    assert_eq!(call(session.clone()).await, StatusCode::OK);
    assert_eq!(call(session).await, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(call(key).await, StatusCode::PAYMENT_REQUIRED);
}
