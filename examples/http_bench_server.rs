//! The router of `benches/http.rs`, served over TCP for wrk: the end-to-end
//! figure of what the axum layer costs. `benches/http_wrk.sh` starts it,
//! pinned to one core, and runs wrk on the other.
//!
//! ```text
//! cargo run --release --features axum --example http_bench_server -- 127.0.0.1:3999
//! ```
//!
//! It prints `token=<token>` (a throwaway key in a memory store, for the
//! load generator's header), `client=`, one `route=<bench id> path=<path>`
//! line per case and `listening=<address>`, then serves until killed, on a
//! single-threaded runtime.

use std::net::SocketAddr;

#[path = "../benches/support/http_app.rs"]
mod http_app;

fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3999".to_owned())
        .parse()
        .expect("usage: http_bench_server [ADDRESS:PORT]");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = http_app::setup(&rt);
    println!("token={}", setup.token);
    // The key admits this client address's network (loopback), so wrk's
    // connections pass its allowlist.
    println!("client={}", setup.client.ip());
    for (id, path) in http_app::CASES {
        println!("route={id} path={path}");
    }
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        println!("listening={}", listener.local_addr().expect("address"));
        let app = setup
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.expect("serve");
    });
}
