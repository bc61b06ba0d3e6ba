//! The axum layer's tracing: with a subscriber that wants it, a check runs
//! inside a `keyward.verify` span, cold or cached. A file of its own: the
//! test installs a thread-local subscriber, and tracing caches each
//! callsite's interest for the whole process, so tests running beside it
//! on other threads without a subscriber made it fail now and then.
#![cfg(all(feature = "axum", feature = "tracing"))]

mod common;

use ::axum::Router;
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::get;
use common::*;
use keyward::axum::{Caller, KeywardLayer};
use keyward::*;

async fn me(caller: Caller) -> Response {
    caller.id().as_str().to_owned().into_response()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// With the `tracing` feature and a subscriber that wants it, a check
/// through the layer runs inside a `keyward.verify` span whether it had
/// to wait (the first, cold request) or ended at once (the cached ones).
#[tokio::test]
async fn the_layers_checks_are_traced_cold_and_cached() {
    use tower::ServiceExt;

    let (logs, _guard) = capture_tracing();

    let f = fixture();
    let key = f.push_key().await;
    let auth = KeywardLayer::new(f.manager.verifier(), f.live.clone()).without_client_addresses();
    let app = Router::new().route("/me", get(me)).route_layer(auth);
    for _ in 0..3 {
        let req = ::axum::http::Request::get("/me")
            .header("authorization", bearer(key.token.expose_secret()))
            .body(::axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let traced = logs.text();
    let granted_in_span = traced
        .lines()
        .filter(|l| l.contains("keyward.verify{kind=\"key\"}") && l.contains("outcome=\"granted\""))
        .count();
    assert_eq!(granted_in_span, 3, "{traced}");
}

/// A credential refused before any cache or store access (a malformed
/// token, a token of another environment, malformed pair input) is traced
/// inside the check's `keyward.verify` span too, through each entry point
/// and through the layer, whose refusals need no waiting.
#[tokio::test]
async fn refusals_before_any_lookup_are_traced_in_the_span() {
    use tower::ServiceExt;

    let (logs, _guard) = capture_tracing();
    let f = fixture();
    let key = f.push_key().await;
    let (live, test_env) = (&f.live, &f.test);
    let verifier = f.manager.verifier();
    let garbage = "mkh_live_not-a-token";
    let denied = verifier
        .authenticate(garbage, live, None)
        .await
        .unwrap_err();
    assert_eq!(denied.reason.code(), "malformed");
    let denied = verifier
        .authenticate(key.token.expose_secret(), test_env, None)
        .await
        .unwrap_err();
    assert_eq!(denied.reason, DenialReason::WrongEnvironment);
    assert_eq!(denied.key_id.as_ref(), Some(&key.key.id));
    let denied = verifier
        .authenticate_pair("not an id", "secret", live, None)
        .await
        .unwrap_err();
    assert_eq!(denied.reason.code(), "malformed");

    let auth = KeywardLayer::new(verifier.clone(), live.clone()).without_client_addresses();
    let app = Router::new().route("/me", get(me)).route_layer(auth);
    let req = ::axum::http::Request::get("/me")
        .header("authorization", bearer(garbage))
        .body(::axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), 401);

    let traced = logs.text();
    let in_span = |kind: &str, reason: &str| {
        traced
            .lines()
            .filter(|l| {
                l.contains(&format!("keyward.verify{{kind=\"{kind}\"}}"))
                    && l.contains("outcome=\"denied\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .count()
    };
    assert_eq!(in_span("key", "malformed"), 2, "{traced}");
    assert_eq!(in_span("key", "wrong_environment"), 1, "{traced}");
    assert_eq!(in_span("pair", "malformed"), 1, "{traced}");
    let denials = traced
        .lines()
        .filter(|l| l.contains("outcome=\"denied\""))
        .count();
    assert_eq!(denials, 4, "every denial once, each in a span: {traced}");
}
