//! Sends a fixed number of requests to one route of the router that
//! `benches/http.rs` measures, in process (`tower::ServiceExt::oneshot`),
//! for counting instructions per request under callgrind, which a shared,
//! noisy machine does not disturb as it does times:
//!
//! ```text
//! cargo build --release --features axum --example http_instructions
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/http_instructions scoped 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/http_instructions scoped 10000
//! ```
//!
//! The difference of the two `Collected` counts over 10,000 is the
//! instructions of one request (route ids: `open`, `noop_layer`,
//! `protected`, `scoped`, `scoped_now`; see `benches/README.md`). Every route is sent one
//! request first (the key is cached, and each must answer 200), in both runs.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use std::hint::black_box;
use tower::ServiceExt;

#[path = "../benches/support/http_app.rs"]
mod http_app;

fn main() {
    let mut args = std::env::args().skip(1);
    let route = args.next().unwrap_or_else(|| "scoped".to_owned());
    let n: usize = args
        .next()
        .unwrap_or_else(|| "10000".to_owned())
        .parse()
        .expect("usage: http_instructions ROUTE COUNT");
    let path = http_app::CASES
        .iter()
        .find(|(id, _)| *id == route)
        .map(|(_, path)| *path)
        .expect("route: open, noop_layer, protected, scoped or scoped_now");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = http_app::setup(&rt);
    let send = |path: &str| {
        let mut req = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", setup.token))
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(ConnectInfo(setup.client));
        let router = setup.router.clone();
        rt.block_on(async move { router.oneshot(req).await.expect("infallible").status() })
    };
    for (id, path) in http_app::CASES {
        assert_eq!(send(path), StatusCode::OK, "{id}");
    }
    for _ in 0..n {
        black_box(send(path));
    }
    println!("route={route} requests={n}");
}
