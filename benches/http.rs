//! What the axum layer costs per request, on one router, with no network.
//!
//! Ids (keep them stable so runs can be compared):
//!
//! - `http/open`: a route with no layer at all: the router's own cost.
//! - `http/noop_layer`: the same route behind a middleware that does nothing
//!   (`axum::middleware::from_fn` passing the request on): the control, the
//!   cost of any layer at all.
//! - `http/protected`: behind `KeywardLayer` requiring a permission, with a
//!   cached key sent as a bearer token.
//! - `http/scoped`: the same, plus a resource taken from the path and matched
//!   against the key's 10 patterns (`resource_param`), with 4 CIDRs.
//!
//! Each request is a fresh `Request` sent with `tower::ServiceExt::oneshot`
//! to a clone of one `Router`, from a client address inside the key's
//! allowlist (`ConnectInfo`, as `into_make_service_with_connect_info`
//! gives). The end-to-end figure over real sockets is `benches/http_wrk.sh`.
//!
//! Run with `cargo bench --features axum --bench http`; see `benches/README.md`.

use std::hint::black_box;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

#[path = "support/http_app.rs"]
mod http_app;

use http_app::{CASES, Setup, setup};

fn request(setup: &Setup, path: &str) -> Request<Body> {
    let mut req = Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", setup.token))
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(ConnectInfo(setup.client));
    req
}

async fn send(setup: &Setup, path: &str) -> StatusCode {
    let res = setup
        .router
        .clone()
        .oneshot(request(setup, path))
        .await
        .expect("infallible");
    res.status()
}

fn bench_http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = setup(&rt);
    // Every case answers 200 before it is measured (and the key is cached).
    for (name, path) in CASES {
        let status = rt.block_on(send(&setup, path));
        assert_eq!(status, StatusCode::OK, "http/{name} answered {status}");
    }
    let mut group = c.benchmark_group("http");
    for (name, path) in CASES {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(send(&setup, path).await) })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_http);
criterion_main!(benches);
