//! Client addresses behind trusted proxies: what a client sends to the
//! left of its proxy's entry can neither hide its address (which would
//! take it out of the per-source throttle) nor choose one (which would
//! pass IP allowlists). Each test failed before 2026-12-03, when an
//! outside review found both.
#![cfg(feature = "axum")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use ::axum::Router;
use ::axum::http::HeaderValue;
use ::axum::routing::get;
use common::*;
use keyward::axum::{KeywardLayer, ProxyHeaders};
use keyward::verify::VerifierConfig;
use keyward::*;
use tower::ServiceExt;

/// A fixture whose per-id bucket is out of the way (1000) and whose
/// per-source bucket is small (3), behind a trusted proxy at 10.0.0.1;
/// `/me` answers the caller's address.
fn setup(read: ProxyHeaders) -> (Fixture, Router) {
    setup_behind("10.0.0.0/8", read)
}

/// [`setup`] with the proxies of `trusted` (a CIDR).
fn setup_behind(trusted: &str, read: ProxyHeaders) -> (Fixture, Router) {
    let fx = fixture_with(
        Arc::new(MemoryStore::new()),
        policy(),
        VerifierConfig {
            failure_burst: 1000,
            source_failure_burst: 3,
            ..VerifierConfig::default()
        },
    );
    let auth = KeywardLayer::new(fx.manager.verifier(), fx.live.clone())
        .trusted_proxies([trusted.parse().unwrap()])
        .proxy_headers(read);
    let app = Router::new()
        .route(
            "/me",
            get(|c: keyward::axum::Caller| async move {
                c.client_ip().map(|i| i.to_string()).unwrap_or_default()
            }),
        )
        .route_layer(auth);
    (fx, app)
}

/// One request from the trusted proxy 10.0.0.1, with `header: value`.
async fn send(app: &Router, token: &str, header: &str, value: &[u8]) -> u16 {
    send_for_body(app, token, header, value).await.0
}

/// [`send`], with the body of the answer.
async fn send_for_body(app: &Router, token: &str, header: &str, value: &[u8]) -> (u16, String) {
    let mut req = ::axum::http::Request::builder()
        .uri("/me")
        .header("authorization", format!("Bearer {token}"))
        .body(::axum::body::Body::empty())
        .unwrap();
    req.headers_mut().insert(
        header.parse::<::axum::http::HeaderName>().unwrap(),
        HeaderValue::from_bytes(value).unwrap(),
    );
    let peer: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    req.extensions_mut()
        .insert(::axum::extract::ConnectInfo(peer));
    let answer = app.clone().oneshot(req).await.unwrap();
    let status = answer.status().as_u16();
    let body = ::axum::body::to_bytes(answer.into_body(), 1024)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Wrong secrets for a public key id (a fresh, valid-checksum token each time).
async fn spray(fx: &Fixture, app: &Router, header: &str, value: &[u8], n: usize) -> Vec<u16> {
    let key = fx.push_key().await;
    let id = key.key.id.clone();
    let mut out = Vec::new();
    for _ in 0..n {
        let wrong = format().generate(&fx.live, &id);
        out.push(send(app, wrong.expose_secret(), header, value).await);
    }
    out
}

/// Wrong secrets for a public key id from a client behind a proxy that
/// appends the client's address (nginx's `$proxy_add_x_forwarded_for`) to
/// what the client sent: the per-source bucket stops them after its burst
/// (3), whatever the client put to the left. The first case is the
/// control. With `\x80` on the left the whole value once failed `to_str`
/// (until 2026-12-03): the address was unknown, and the per-source failure
/// limit (and the argon2 runs it saves) did not apply at all.
#[tokio::test]
async fn bytes_left_of_the_proxys_entry_do_not_escape_the_source_throttle() {
    for (read, header, value) in [
        (
            ProxyHeaders::XForwardedFor,
            "x-forwarded-for",
            &b"1.1.1.1, 203.0.113.5"[..],
        ),
        (
            ProxyHeaders::XForwardedFor,
            "x-forwarded-for",
            &b"\x80, 203.0.113.5"[..],
        ),
        (
            ProxyHeaders::Forwarded,
            "forwarded",
            &b"for=\"\x80\", for=203.0.113.5"[..],
        ),
        (
            ProxyHeaders::Forwarded,
            "forwarded",
            &b"for=\"a, for=203.0.113.5"[..],
        ),
    ] {
        let (fx, app) = setup(read);
        let statuses = spray(&fx, &app, header, value, 20).await;
        assert!(
            statuses.contains(&429),
            "{value:?}: never throttled: {statuses:?}; argon2 runs: {}",
            fx.hash_verifies()
        );
        assert!(
            fx.hash_verifies() <= 3,
            "{value:?}: argon2 runs: {}",
            fx.hash_verifies()
        );
    }
}

/// The bytes reach the layer over real HTTP/1.1: hyper accepts obs-text
/// (0x80-0xFF) in a header value, as RFC 9110 §5.5 allows and nginx/Envoy
/// pass on (here the proxy is simulated by sending from 127.0.0.1, trusted).
#[tokio::test]
async fn over_real_http_a_non_ascii_byte_still_meets_the_source_throttle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (fx, app) = setup_behind("127.0.0.0/8", ProxyHeaders::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        ::axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let key = fx.push_key().await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let wrong = format().generate(&fx.live, &key.key.id);
        let mut req = format!(
            "GET /me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nX-Forwarded-For: ",
            wrong.expose_secret()
        )
        .into_bytes();
        req.extend_from_slice(b"\xff, 203.0.113.5\r\n\r\n");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        statuses.push(String::from_utf8_lossy(&resp[9..12]).into_owned());
    }
    assert!(
        statuses.iter().any(|s| s == "429"),
        "never throttled over real HTTP: {statuses:?}; argon2 runs: {}",
        fx.hash_verifies()
    );
}

/// RFC 7239 §4: a `quoted-string` value may hold `,` and `;`. A proxy that
/// writes `host` (the client's Host header, whose reg-name may contain the
/// sub-delims `,` `;` `=`, RFC 3986 §3.2.2) correctly quotes it:
/// `for=203.0.113.5;host="x,for=198.51.100.99"`. That is ONE element whose
/// client is 203.0.113.5; the `rfc7239` crate, used until 2026-12-03,
/// split on every `,`, so keyward read the client as 198.51.100.99, chosen
/// by the client.
#[tokio::test]
async fn a_quoted_comma_in_the_proxys_forwarded_element_does_not_choose_the_client() {
    let (fx, app) = setup(ProxyHeaders::Forwarded);
    let key = fx.push_key().await;
    let value = b"for=203.0.113.5;host=\"x,for=198.51.100.99\"";
    let answer = send_for_body(&app, key.token.expose_secret(), "forwarded", value).await;
    assert_eq!(answer, (200, "203.0.113.5".to_owned()));
}

/// The same, as a throttle evasion: a fresh spoofed address per request.
#[tokio::test]
async fn a_quoted_comma_in_forwarded_cannot_rotate_the_source_past_the_throttle() {
    let (fx, app) = setup(ProxyHeaders::Forwarded);
    let key = fx.push_key().await;
    let mut statuses = Vec::new();
    for i in 0..20u8 {
        let wrong = format().generate(&fx.live, &key.key.id);
        let value = format!("for=203.0.113.5;host=\"x,for=198.51.100.{i}\"");
        statuses.push(send(&app, wrong.expose_secret(), "forwarded", value.as_bytes()).await);
    }
    assert!(
        statuses.contains(&429),
        "never throttled: {statuses:?}; argon2 runs: {}",
        fx.hash_verifies()
    );
}

/// Nor is an IP allowlist passed from outside it.
#[tokio::test]
async fn a_quoted_comma_in_forwarded_cannot_pass_an_ip_allowlist() {
    let (fx, app) = setup(ProxyHeaders::Forwarded);
    let key = fx
        .create(
            NewKey::new(OWNER, "live", "office")
                .permissions(keyward::policy::PermissionGrant::only(["package:push"]))
                .ip_allowlist(["192.0.2.0/24"]),
        )
        .await;
    // The real client is 203.0.113.5, outside the allowlist.
    let value = b"for=203.0.113.5;host=\"x,for=192.0.2.1\"";
    let status = send(&app, key.token.expose_secret(), "forwarded", value).await;
    assert_eq!(status, 401, "allowlist passed from 203.0.113.5");
}
