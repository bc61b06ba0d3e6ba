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
//!   against the key's 10 patterns (`resource_param`), with 4 CIDRs; the
//!   owner from `resource_owner` (a future, boxed per request).
//! - `http/scoped_now`: the same with the owner from `resource_owner_now`
//!   (borrows the name, answers at once: no copy, no boxed future).
//!
//! Each request is a fresh `Request` sent with `tower::ServiceExt::oneshot`
//! to a clone of one `Router`, from a client address inside the key's
//! allowlist (`ConnectInfo`, as `into_make_service_with_connect_info`
//! gives). The end-to-end figure over real sockets is `benches/http_wrk.sh`.
//!
//! After criterion's cases, the same five are measured interleaved (blocks
//! of requests to each case in turn, over rounds) and each case's
//! throughput is printed as a ratio of the control's in the same rounds:
//! `http_interleaved: id=<id> median_ns=<n> vs_noop=<ratio>`.
//!
//! Run with `cargo bench --features axum --bench http`; see `benches/README.md`.

use std::hint::black_box;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

#[path = "support/http_app.rs"]
mod http_app;

use http_app::{CASES, OWNER, Setup, setup};
use keyward::policy::ResourceRef;
use keyward::{Environment, VerifyRequest};

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
    interleaved(&rt, &setup);
}

/// Rounds of the interleaved comparison, and requests per case per round.
const ROUNDS: usize = 60;
const BLOCK: usize = 2_000;

/// The ratios against `http/noop_layer` measured interleaved: each round
/// sends a block of requests to every case in turn, so a change of load
/// hits all cases alike (criterion measures one case after another). Prints
/// per case the median block time per request and the median over rounds
/// of its throughput relative to the control's in the same round:
/// `http_interleaved: id=<id> median_ns=<n> vs_noop=<ratio>`.
fn interleaved(rt: &tokio::runtime::Runtime, setup: &Setup) {
    let mut per_request = vec![Vec::with_capacity(ROUNDS); CASES.len()];
    for _ in 0..ROUNDS {
        for (i, (_, path)) in CASES.iter().enumerate() {
            let started = Instant::now();
            rt.block_on(async {
                for _ in 0..BLOCK {
                    black_box(send(setup, path).await);
                }
            });
            per_request[i].push(started.elapsed().as_secs_f64() * 1e9 / BLOCK as f64);
        }
    }
    // The verifier's check alone, as the layer makes it for each case: the
    // key (its IP allowlist) and, for `scoped`, the permission and the
    // resource against the 10 patterns. What is left of a case's time over
    // the control's and its check is the layer's own cost.
    let live = Environment::new("live").expect("env");
    let ip = Some(setup.client.ip());
    let checks: [(&str, f64); 2] = [
        ("check/key", {
            let mut times = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let started = Instant::now();
                rt.block_on(async {
                    for _ in 0..BLOCK {
                        let key = setup.verifier.authenticate(&setup.token, &live, ip).await;
                        black_box(key.is_ok());
                    }
                });
                times.push(started.elapsed().as_secs_f64() * 1e9 / BLOCK as f64);
            }
            median(&mut times)
        }),
        ("check/scoped", {
            let req = VerifyRequest {
                environment: &live,
                permission: setup.push,
                resource: Some(ResourceRef::new(OWNER, "Fabrikam.Data.Sql")),
                client_ip: ip,
                spending: Default::default(),
            };
            let mut times = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let started = Instant::now();
                rt.block_on(async {
                    for _ in 0..BLOCK {
                        black_box(setup.verifier.verify(&setup.token, &req).await.is_ok());
                    }
                });
                times.push(started.elapsed().as_secs_f64() * 1e9 / BLOCK as f64);
            }
            median(&mut times)
        }),
    ];
    let control = CASES
        .iter()
        .position(|(name, _)| *name == "noop_layer")
        .expect("the control case");
    for (i, (name, _)) in CASES.iter().enumerate() {
        let mut ratios: Vec<f64> = per_request[control]
            .iter()
            .zip(&per_request[i])
            .map(|(noop, case)| noop / case)
            .collect();
        println!(
            "http_interleaved: id=http/{name} median_ns={:.0} vs_noop={:.3}",
            median(&mut per_request[i].clone()),
            median(&mut ratios),
        );
    }
    for (name, ns) in checks {
        println!(
            "http_interleaved: id={name} median_ns={ns:.0} (the verifier alone, for comparison)"
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

criterion_group!(benches, bench_http);
criterion_main!(benches);
