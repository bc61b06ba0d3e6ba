//! The axum layer's tracing: with a subscriber that wants it, a check runs
//! inside a `keyward.verify` span, cold or cached. A file of its own: the
//! test installs a thread-local subscriber, and tracing caches each
//! callsite's interest for the whole process, so tests running beside it
//! on other threads without a subscriber made it fail now and then.
#![cfg(all(feature = "axum", feature = "tracing"))]

mod common;

use std::sync::Arc;

use ::axum::Router;
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::get;
use common::*;
use keyward::axum::{Caller, KeywardLayer};
use keyward::*;
use keyward::{hash::Argon2Hasher, policy::PermissionGrant};

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
    use std::io::Write;
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let manager = KeyManager::builder(MemoryStore::new(), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let key = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"])),
        )
        .await
        .unwrap();
    let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
        .without_client_addresses();
    let app = Router::new().route("/me", get(me)).route_layer(auth);
    for _ in 0..3 {
        let req = ::axum::http::Request::get("/me")
            .header("authorization", bearer(key.token.expose_secret()))
            .body(::axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let traced = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let granted_in_span = traced
        .lines()
        .filter(|l| l.contains("keyward.verify{kind=\"key\"}") && l.contains("outcome=\"granted\""))
        .count();
    assert_eq!(granted_in_span, 3, "{traced}");
}
