//! The axum layer end to end, over real HTTP on loopback.
#![cfg(feature = "axum")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ::axum::Router;
use ::axum::extract::{Request, State};
use ::axum::http::{HeaderName, HeaderValue};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{delete, get, post, put};
use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use keyward::axum::{Caller, KeywardLayer, LayerError, WARNING_HEADER};
use keyward::*;
use keyward::{
    hash::Argon2Hasher, key::KeyRecord, manager::ImportKey, policy::ExpiryChoice,
    policy::PermissionGrant, policy::ResourceScope, session::DEFAULT_MAX_SESSIONS_PER_KEY,
    session::SessionCap, session::SessionConfig, session::SessionRecord, store::ListQuery,
    store::QuotaCheck, store::SessionStore, store::StoreError, verify::VerifierConfig,
};
use reqwest::StatusCode;

type Store = Arc<FlakyStore<MemoryStore>>;

impl<S: SessionStore> SessionStore for FlakyStore<S> {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        self.inner.insert_session(record, cap).await
    }
    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        self.inner.session_owner(key_id).await
    }
    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected failure".into()));
        }
        self.inner.get_session(id).await
    }
    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        self.inner.revoke_sessions(key_id).await
    }
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.delete_expired_sessions(now).await
    }
}

struct Server {
    base: String,
    manager: KeyManager<Store>,
    store: Store,
    live: Environment,
    /// The manager's (and so the layers') clock.
    clock: ManualClock,
    http: reqwest::Client,
}

async fn me(caller: Caller) -> Response {
    ::axum::Json(serde_json::json!({
        "key_id": caller.id().as_str(),
        "owner": caller.owner().as_str(),
        "session": caller.session_id().map(|s| s.as_str().to_owned()),
        "ip": caller.client_ip().map(|i| i.to_string()),
    }))
    .into_response()
}

async fn ok() -> &'static str {
    "ok"
}

async fn exchange(State(auth): State<KeywardLayer<Store>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    match auth.exchange(&parts, None).await {
        Ok(issued) => ::axum::Json(serde_json::json!({
            "token": issued.token.expose_secret(),
            "expires_at": issued.session.expires_at,
        }))
        .into_response(),
        Err(rejection) => rejection.into_response(),
    }
}

async fn start_server() -> Server {
    let store: Store = Arc::new(FlakyStore::new(MemoryStore::new()));
    let clock = ManualClock::new(Utc::now());
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock.clone())
        .verifier_config(VerifierConfig {
            failure_burst: 2,
            ..VerifierConfig::default()
        })
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let registry = registry();
    let live = Environment::new("live").unwrap();
    let auth = KeywardLayer::with_sessions(manager.clone(), live.clone())
        .api_key_header(HeaderName::from_static("x-api-key"))
        .resource_owner(|name: String| async move {
            // Fabrikam's packages, and Contoso's existing Contoso.Tools;
            // any other name is new (it would be created for the caller).
            if name.starts_with("Fabrikam.") {
                Some("fabrikam".to_owned())
            } else {
                (name == "Contoso.Tools").then(|| OWNER.to_owned())
            }
        });
    let proxied = KeywardLayer::with_sessions(manager.clone(), live.clone())
        .trusted_proxies(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
        // The test proxy writes both headers.
        .proxy_headers(keyward::axum::ProxyHeaders::Both);
    let push = registry.get("package:push").unwrap();
    let del = registry.get("package:delete").unwrap();
    let app = Router::new()
        .route("/me", get(me))
        .route_layer(auth.clone())
        .merge(
            Router::new()
                .route("/packages/{name}/versions", post(ok))
                .route_layer(auth.require(push).resource_param("name").unwrap()),
        )
        .merge(
            Router::new()
                .route("/packages/{name}", delete(ok))
                .route_layer(auth.require(del).resource_param("name").unwrap()),
        )
        .merge(
            Router::new()
                .route("/proxied/me", get(me))
                .route_layer(proxied),
        )
        .merge(
            Router::new()
                .route("/warn30/me", get(me))
                .route_layer(auth.clone().expiry_warning_days(30)),
        )
        .merge(
            Router::new()
                .route("/nowarn/me", get(me))
                .route_layer(auth.clone().expiry_warning_days(0)),
        )
        .merge(
            Router::new()
                .route("/misconfigured/{id}", post(ok))
                .route_layer(auth.require(push).resource_param("name").unwrap()),
        )
        .route("/nolayer", get(me))
        .route("/session", post(exchange))
        .with_state(auth);
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
    Server {
        base: format!("http://{addr}"),
        manager,
        store,
        live,
        clock,
        http: reqwest::Client::new(),
    }
}

impl Server {
    /// A 90-day key with every permission, and when it expires.
    async fn quarterly_key(&self) -> (CreatedKey, DateTime<Utc>) {
        let key = self
            .key(
                NewKey::new(OWNER, "live", "quarterly")
                    .permissions(PermissionGrant::All)
                    .expiry(ExpiryChoice::Days(90)),
            )
            .await;
        let expires = key.key.expires_at.expect("an expiring key");
        (key, expires)
    }

    async fn key(&self, new: NewKey) -> CreatedKey {
        self.manager
            .create(&keyward::Actor::system("tests"), new)
            .await
            .expect("create")
    }
    async fn push_key(&self) -> CreatedKey {
        self.key(
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"])),
        )
        .await
    }
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }
    /// GETs `path` with `token`; asserts 200 and returns the warning header.
    async fn warning(&self, path: &str, token: &str) -> Option<String> {
        let r = self
            .get(path)
            .header("authorization", bearer(token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.headers()
            .get(WARNING_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn body(r: reqwest::Response) -> serde_json::Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}"))
}

fn www(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn bearer_custom_header_and_basic_all_authenticate() {
    let s = start_server().await;
    let key = s.push_key().await;
    let t = key.token.expose_secret();
    let parsed = s.manager.format().parse(t).unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        parsed.key_id(),
        parsed.expose_secret()
    ));
    for (name, value) in [
        ("authorization", bearer(t)),
        ("authorization", format!("bearer {t}")),
        ("x-api-key", t.to_owned()),
        ("authorization", format!("Basic {basic}")),
    ] {
        let r = s.get("/me").header(name, value).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        let b = body(r).await;
        assert_eq!(b["key_id"], key.key.id.as_str());
        assert_eq!(b["owner"], OWNER);
        assert_eq!(b["ip"], "127.0.0.1");
    }
}

#[tokio::test]
async fn authentication_failures_are_401_invalid_token_and_say_nothing_about_ids() {
    let s = start_server().await;
    let key = s.push_key().await;
    let parsed = s.manager.format().parse(key.token.expose_secret()).unwrap();

    let r = s.get("/me").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        www(&r),
        "Bearer realm=\"keyward\"",
        "no error code without credentials"
    );
    assert_eq!(body(r).await["error"], "missing_credentials");

    let wrong = s
        .manager
        .format()
        .from_pair(
            &s.live,
            parsed.key_id(),
            &"W".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    let unknown = s.manager.format().generate(&s.live, &KeyId::generate());
    let mut bodies = Vec::new();
    for t in [wrong.expose_secret(), unknown.expose_secret()] {
        let r = s
            .get("/me")
            .header("authorization", bearer(t))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(www(&r), "Bearer realm=\"keyward\", error=\"invalid_token\"");
        let b = body(r).await;
        assert_eq!(b["error"], "invalid_token");
        assert!(!b.to_string().contains(parsed.key_id()));
        bodies.push(b);
    }
    assert_eq!(
        bodies[0], bodies[1],
        "unknown id and wrong secret look the same"
    );

    // Revoked and expired are told (the secret was proven).
    let other = s.push_key().await;
    s.manager
        .revoke(&keyward::Actor::system("tests"), &other.key.id)
        .await
        .unwrap();
    let r = s
        .get("/me")
        .header("authorization", bearer(other.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}

#[tokio::test]
async fn authorization_failures_are_403_insufficient_scope() {
    let s = start_server().await;
    let scoped = s
        .key(
            NewKey::new(OWNER, "live", "scoped")
                .permissions(PermissionGrant::only(["package:push"]))
                .resources(ResourceScope::only(["Contoso.*"])),
        )
        .await;
    let reader = s
        .key(
            NewKey::new(OWNER, "live", "reader")
                .permissions(PermissionGrant::only(["analytics:read"])),
        )
        .await;
    let st = scoped.token.expose_secret();
    let push = |name: &str, t: &str| {
        s.post(&format!("/packages/{name}/versions"))
            .header("authorization", bearer(t))
            .send()
    };
    assert_eq!(
        push("Contoso.Tools", st).await.unwrap().status(),
        StatusCode::OK
    );
    for (name, t) in [
        ("Other.Lib", st),                               // outside the key's scope
        ("Fabrikam.Lib", st),                            // another owner's package
        ("Contoso.Tools", reader.token.expose_secret()), // permission missing
    ] {
        let r = push(name, t).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}");
        assert_eq!(
            www(&r),
            "Bearer realm=\"keyward\", error=\"insufficient_scope\", scope=\"package:push\""
        );
        assert_eq!(body(r).await["error"], "insufficient_scope");
    }
    // Session-only: always refused for keys, and for sessions made from keys.
    let all = s
        .key(NewKey::new(OWNER, "live", "all").permissions(PermissionGrant::All))
        .await;
    let r = s
        .http
        .delete(format!("{}/packages/Contoso.Tools", s.base))
        .header("authorization", bearer(all.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("administrator")
    );
    let session = s
        .manager
        .exchange(all.token.expose_secret(), &s.live, None, None)
        .await
        .unwrap();
    let r = s
        .http
        .delete(format!("{}/packages/Contoso.Tools", s.base))
        .header("authorization", bearer(session.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Issue 10 point 5: with `resource_param("name")` and no owner resolver,
/// fabrikam's key with scope `*` pushed `Contoso.Tools` and got 201. Such a
/// guard can no longer be built.
#[tokio::test]
async fn a_resource_guard_without_an_owner_resolver_is_refused_when_built() {
    let s = start_server().await;
    let push = registry().get("package:push").unwrap();
    let bare = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone());
    let refused = bare.require(push).resource_param("name").unwrap_err();
    assert_eq!(
        refused,
        LayerError::NoOwnerResolver {
            param: "name".into()
        }
    );
    assert!(refused.to_string().contains("resource_owner"), "{refused}");
    // A resource parameter without a permission would check nothing: refused too.
    assert_eq!(
        bare.clone().resource_param("name").unwrap_err(),
        LayerError::NoPermission {
            param: "name".into()
        }
    );
    // With a resolver on the shared layer, it builds.
    let resolved = bare.resource_owner(|_: String| async { None });
    assert!(resolved.require(push).resource_param("name").is_ok());
}

/// The reproduction over HTTP: fabrikam's key with every permission and
/// scope `*` cannot push contoso's package, and still pushes its own and new ones.
#[tokio::test]
async fn another_publishers_wildcard_key_is_403_on_their_package() {
    let s = start_server().await;
    let fabrikam = s
        .key(
            NewKey::new("fabrikam", "live", "everything")
                .permissions(PermissionGrant::All)
                .resources(ResourceScope::only(["*"])),
        )
        .await;
    let push = |name: &str| {
        s.post(&format!("/packages/{name}/versions"))
            .header("authorization", bearer(fabrikam.token.expose_secret()))
            .send()
    };
    let r = push("Contoso.Tools").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(r).await["error"], "insufficient_scope");
    assert_eq!(push("Fabrikam.Lib").await.unwrap().status(), StatusCode::OK);
    assert_eq!(push("Brand.New").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn throttled_is_429_with_retry_after() {
    let s = start_server().await;
    let key = s.push_key().await;
    let parsed = s.manager.format().parse(key.token.expose_secret()).unwrap();
    let wrong = s
        .manager
        .format()
        .from_pair(
            &s.live,
            parsed.key_id(),
            &"W".repeat(keyward::TokenFormat::SECRET_LEN),
        )
        .unwrap();
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..4 {
        let r = s
            .get("/me")
            .header("authorization", bearer(wrong.expose_secret()))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(body(r).await["error"], "throttled");
        }
    }
    assert_eq!(
        &statuses[..2],
        &[StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED]
    );
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(secs >= 1);
}

#[tokio::test]
async fn store_failure_is_503() {
    let s = start_server().await;
    let key = s.push_key().await;
    s.store.fail_reads.store(true, Ordering::SeqCst);
    let r = s
        .get("/me")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(body(r).await["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn a_key_expiring_soon_gets_a_warning_header() {
    let s = start_server().await;
    let soon = s
        .key(
            NewKey::new(OWNER, "live", "soon")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await;
    let later = s
        .key(
            NewKey::new(OWNER, "live", "later")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(90)),
        )
        .await;
    let r = s
        .get("/me")
        .header("authorization", bearer(soon.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let warning = r
        .headers()
        .get(WARNING_HEADER)
        .expect("warning")
        .to_str()
        .unwrap();
    assert!(
        warning.contains(soon.key.id.as_str()) && warning.contains("expires"),
        "{warning}"
    );
    let r = s
        .get("/me")
        .header("authorization", bearer(later.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get(WARNING_HEADER).is_none());
}

#[tokio::test]
async fn the_default_warning_starts_ten_days_before_expiry() {
    let s = start_server().await;
    let (key, expires) = s.quarterly_key().await;
    let t = key.token.expose_secret();
    let at = |left: TimeDelta| s.clock.set(expires - left);

    at(TimeDelta::days(11));
    assert_eq!(s.warning("/me", t).await, None, "11 days left");
    at(TimeDelta::days(10) + TimeDelta::minutes(1));
    assert_eq!(s.warning("/me", t).await, None, "just over 10 days left");
    at(TimeDelta::days(10) - TimeDelta::minutes(1));
    let warning = s.warning("/me", t).await.expect("just under 10 days left");
    assert!(warning.contains(key.key.id.as_str()), "{warning}");
    at(TimeDelta::days(9));
    let warning = s.warning("/me", t).await.expect("9 days left");
    assert!(
        warning.contains(key.key.id.as_str()) && warning.contains("expires in 9 days"),
        "{warning}"
    );
}

#[tokio::test]
async fn a_configured_number_of_days_moves_the_warning() {
    let s = start_server().await;
    let (key, expires) = s.quarterly_key().await;
    let t = key.token.expose_secret();

    // 31 days left: neither the 10-day nor the 30-day layer warns.
    s.clock.set(expires - TimeDelta::days(31));
    assert_eq!(s.warning("/warn30/me", t).await, None);
    assert_eq!(s.warning("/me", t).await, None);
    // 29 days left: only the 30-day layer warns.
    s.clock.set(expires - TimeDelta::days(29));
    let warning = s.warning("/warn30/me", t).await.expect("30-day layer");
    assert!(
        warning.contains(key.key.id.as_str()) && warning.contains("expires in 29 days"),
        "{warning}"
    );
    assert_eq!(s.warning("/me", t).await, None, "the default stays 10 days");
    // 1 day left: both warn, and 0 turns the warning off.
    s.clock.set(expires - TimeDelta::days(1));
    assert!(s.warning("/warn30/me", t).await.is_some());
    assert!(s.warning("/me", t).await.is_some());
    assert_eq!(s.warning("/nowarn/me", t).await, None, "0 days: never");
}

#[tokio::test]
async fn session_tokens_never_get_the_warning_header() {
    let s = start_server().await;
    let soon = s
        .key(
            NewKey::new(OWNER, "live", "soon")
                .permissions(PermissionGrant::All)
                .expiry(ExpiryChoice::Days(1)),
        )
        .await;
    let t = soon.token.expose_secret();
    // The key itself is warned about on both warning layers...
    assert!(s.warning("/me", t).await.is_some());
    assert!(s.warning("/warn30/me", t).await.is_some());

    let r = s
        .post("/session")
        .header("authorization", bearer(t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = body(r).await["token"].as_str().unwrap().to_owned();
    // ...its session, which expires sooner still, never is.
    for path in ["/me", "/warn30/me", "/nowarn/me"] {
        let r = s
            .get(path)
            .header("authorization", bearer(&session))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers().get(WARNING_HEADER).is_none(), "{path}");
        assert!(body(r).await["session"].is_string(), "{path}: a session");
    }
    // Still not with the key an hour from expiry.
    s.clock
        .set(soon.key.expires_at.unwrap() - TimeDelta::hours(1));
    let r = s
        .post("/session")
        .header("authorization", bearer(t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let late = body(r).await["token"].as_str().unwrap().to_owned();
    for path in ["/me", "/warn30/me"] {
        assert_eq!(s.warning(path, &late).await, None, "{path}");
    }
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let s = start_server().await;
    let key = s
        .key(
            NewKey::new(OWNER, "live", "office")
                .permissions(PermissionGrant::All)
                .ip_allowlist(["203.0.113.0/24"]),
        )
        .await;
    let t = key.token.expose_secret();
    let send = |path: &'static str, xff: &'static str| {
        s.get(path)
            .header("authorization", bearer(t))
            .header("x-forwarded-for", xff)
            .send()
    };
    // Untrusted peer: the header is ignored, 127.0.0.1 is not allowed.
    assert_eq!(
        send("/me", "203.0.113.5").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // Trusted peer: the client is the header's address.
    let r = send("/proxied/me", "203.0.113.5").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["ip"], "203.0.113.5");
    // The rightmost untrusted hop counts, not what the client wrote first.
    let r = send("/proxied/me", "203.0.113.5, 198.51.100.7")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send("/proxied/me", "198.51.100.7, 203.0.113.5, 127.0.0.2")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        send("/proxied/me", "not-an-ip").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// A key at its cap of live sessions (100 by default) gets 429
/// `too_many_sessions` from the exchange endpoint; its sessions keep working.
#[tokio::test]
async fn an_exchange_over_the_session_cap_is_429() {
    let s = start_server().await;
    let key = s.push_key().await;
    let exchange = || {
        s.post("/session")
            .header("authorization", bearer(key.token.expose_secret()))
            .send()
    };
    let mut last = String::new();
    for _ in 0..DEFAULT_MAX_SESSIONS_PER_KEY {
        let r = exchange().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        last = body(r).await["token"].as_str().unwrap().to_owned();
    }
    let r = exchange().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body(r).await["error"], "too_many_sessions");
    let r = s
        .get("/me")
        .header("authorization", bearer(&last))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "issued sessions keep working");
}

#[tokio::test]
async fn sessions_over_http_survive_regenerate_and_die_on_compromise() {
    let s = start_server().await;
    let key = s.push_key().await;
    let r = s
        .post("/session")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = body(r).await["token"].as_str().unwrap().to_owned();
    assert!(session.starts_with("mkhs_live_"));

    let me = || {
        s.get("/me")
            .header("authorization", bearer(&session))
            .send()
    };
    let r = me().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b = body(r).await;
    assert_eq!(b["key_id"], key.key.id.as_str());
    assert!(b["session"].is_string());
    let r = s
        .post("/packages/Contoso.Tools/versions")
        .header("x-api-key", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "session accepted by the same layer"
    );

    // A session token cannot mint another session.
    let r = s
        .post("/session")
        .header("authorization", bearer(&session))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(r).await["error"], "insufficient_scope");

    let new = s
        .manager
        .regenerate(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    assert_eq!(
        me().await.unwrap().status(),
        StatusCode::OK,
        "survives regenerate"
    );
    let r = s
        .get("/me")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "old key dead");

    s.manager
        .revoke_compromised(&keyward::Actor::system("tests"), &key.key.id)
        .await
        .unwrap();
    let r = me().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "dies on compromise revoke"
    );
    assert_eq!(www(&r), "Bearer realm=\"keyward\", error=\"invalid_token\"");
    let r = s
        .get("/me")
        .header("authorization", bearer(new.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_headers_get_401_never_500() {
    let s = start_server().await;
    let key = s.push_key().await;
    let t = key.token.expose_secret();
    let huge = format!("Bearer {}", "a".repeat(10_000));
    let cases: Vec<(&str, HeaderValue)> = vec![
        (
            "authorization",
            HeaderValue::from_bytes(b"Bearer \xe9\xe8\xff").unwrap(),
        ),
        ("authorization", HeaderValue::from_str(&huge).unwrap()),
        ("authorization", HeaderValue::from_static("")),
        ("authorization", HeaderValue::from_static("Bearer")),
        ("authorization", HeaderValue::from_static("Bearer    ")),
        (
            "authorization",
            HeaderValue::from_str(&format!("Token {t}")).unwrap(),
        ),
        (
            "authorization",
            HeaderValue::from_static("Basic !!!not-base64"),
        ),
        (
            "authorization",
            HeaderValue::from_static("Basic bm9jb2xvbg=="),
        ), // "nocolon"
        ("authorization", HeaderValue::from_static("Basic w6k6w6k=")), // "é:é"
        ("authorization", HeaderValue::from_static("Basic //79")),     // invalid UTF-8
        (
            "authorization",
            HeaderValue::from_static("Bearer mkh_live_short"),
        ),
        (
            "authorization",
            HeaderValue::from_static("Bearer mkhs_live_short"),
        ),
        ("x-api-key", HeaderValue::from_static("")),
        ("x-api-key", HeaderValue::from_bytes(b"\xc3\xa9").unwrap()),
    ];
    for (name, value) in cases {
        let shown = format!("{name}: {value:?}");
        let r = s.get("/me").header(name, value).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            &shown[..shown.len().min(80)]
        );
        assert!(www(&r).contains("invalid_token"));
        let b = body(r).await;
        assert_eq!(b["error"], "invalid_token");
    }
    // Two Authorization headers.
    let r = s
        .get("/me")
        .header("authorization", bearer(t))
        .header("authorization", bearer(t))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Fuzz a little: random printable and non-ASCII bytes never give a 500.
    for i in 0u32..64 {
        let bytes: Vec<u8> = (0..(i * 7 % 90))
            .map(|j| {
                let b = ((i * 31 + j * 17) % 256) as u8;
                if b < 0x20 || b == 0x7f { b'x' } else { b }
            })
            .collect();
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            continue;
        };
        let r = s
            .get("/me")
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{:?}", r.status());
    }
}

#[tokio::test]
async fn a_missing_layer_or_path_parameter_is_a_clear_500() {
    let s = start_server().await;
    let key = s.push_key().await;
    let r = s
        .get("/nolayer")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("KeywardLayer")
    );
    let r = s
        .post("/misconfigured/1")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("route_layer")
    );
}

#[tokio::test]
async fn a_resource_name_that_is_not_utf8_is_a_400_not_a_500() {
    let s = start_server().await;
    let key = s.push_key().await;
    let r = s
        .post("/packages/Contoso.%FF/versions")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b = body(r).await;
    assert_eq!(b["error"], "invalid_request");
    let message = b["message"].as_str().unwrap().to_owned();
    // axum's words name the parameter.
    assert!(message.contains("`name`"), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
    // The same key passes on a name that decodes (`%2E` is `.`).
    let r = s
        .post("/packages/Contoso%2ETools/versions")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn expired_session_is_401() {
    // The clock is manual: advance past the session's lifetime.
    let store: Store = Arc::new(FlakyStore::new(MemoryStore::new()));
    let clock = ManualClock::new(Utc::now());
    let manager = KeyManager::builder(store, format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .clock(clock.clone())
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    let key = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::All),
        )
        .await
        .unwrap();
    let session = manager
        .exchange(key.token.expose_secret(), &live, None, None)
        .await
        .unwrap();
    let app = Router::new()
        .route("/me", get(me))
        .route_layer(KeywardLayer::with_sessions(manager, live));
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
    let get = || {
        reqwest::Client::new()
            .get(format!("http://{addr}/me"))
            .header("authorization", bearer(session.token.expose_secret()))
            .send()
    };
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    clock.advance(TimeDelta::minutes(16));
    let r = get().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn an_imported_key_works_over_basic_with_its_old_secret() {
    let s = start_server().await;
    let secret = "cio_Old+Registry/Token=42";
    let hex = sha256_hex(secret);
    s.manager
        .import(
            &keyward::Actor::system("tests"),
            ImportKey::scoped("Imported7", OWNER, "live", "old token", hex)
                .permissions(PermissionGrant::only(["package:push"])),
        )
        .await
        .unwrap();
    let basic = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let r = s
        .post("/packages/Contoso.Tools/versions")
        .header("authorization", basic("Imported7", secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .get("/me")
        .header("authorization", basic("Imported7", secret))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["key_id"], "Imported7");
    // Upgraded to argon2id on that first use.
    let stored = s
        .store
        .get(&KeyId::new("Imported7").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.secret_hash.as_str().starts_with("$argon2id$"));
    // A wrong secret is 401 invalid_token; a secret with a space cannot be a pair: 401 too.
    for bad in [
        basic("Imported7", "cio_wrong"),
        basic("Imported7", "with space"),
    ] {
        let r = s
            .get("/me")
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(www(&r).contains("invalid_token"));
    }
    // The pair is exchanged for a session too (POST /session with Basic).
    let r = s
        .post("/session")
        .header("authorization", basic("Imported7", secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = body(r).await["token"].as_str().unwrap().to_owned();
    let r = s
        .get("/me")
        .header("authorization", bearer(&session))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["key_id"], "Imported7");
    let r = s
        .post("/session")
        .header("authorization", basic("Imported7", "cio_wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// A registry serving every client's own way of sending a key, each on its
/// own layer as a real registry would configure it.
async fn start_registry_server() -> Server {
    let mut s = start_server().await;
    let owners =
        |name: String| async move { name.starts_with("fabrikam").then(|| "fabrikam".to_owned()) };
    let push = registry().get("package:push").unwrap();
    // cargo: `Authorization: <token>`, no scheme.
    let crates = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone())
        .api_key_header(::axum::http::header::AUTHORIZATION)
        .resource_owner(owners);
    // NuGet: `X-NuGet-ApiKey`; only `X-NuGet-Warning` is shown to the user.
    let nuget = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone())
        .api_key_header(HeaderName::from_static("x-nuget-apikey"))
        .expiry_warning_header(HeaderName::from_static("x-nuget-warning"));
    // npm and curl: Bearer and Basic, the defaults.
    let npm = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone()).resource_owner(owners);
    let app = Router::new()
        .route("/api/v1/crates/new", put(me))
        .route_layer(crates.require(push))
        .merge(
            Router::new()
                .route("/api/v1/crates/{crate_name}/{version}/yank", delete(me))
                .route("/api/v1/crates/{crate_name}/owners", get(me))
                .route_layer(crates.require(push).resource_param("crate_name").unwrap()),
        )
        .merge(
            Router::new()
                .route("/api/v2/package", put(me))
                .route_layer(nuget.require(push)),
        )
        .merge(
            Router::new()
                .route("/npm/{package}", put(me))
                .route_layer(npm.require(push).resource_param("package").unwrap()),
        )
        .merge(Router::new().route("/me", get(me)).route_layer(npm));
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
    s.base = format!("http://{addr}");
    s
}

/// Issue 11 §1: each client's real request shape is accepted where the
/// registry asks for it, and the key is the one that was sent.
#[tokio::test]
async fn every_registry_clients_request_shape_authenticates() {
    let s = start_registry_server().await;
    let key = s.push_key().await;
    let t = key.token.expose_secret();
    let id = key.key.id.as_str();
    let check = |r: reqwest::Response, what: &'static str| async move {
        assert_eq!(r.status(), StatusCode::OK, "{what}");
        assert_eq!(body(r).await["key_id"], id, "{what}");
    };

    // cargo publish: PUT /api/v1/crates/new, `Authorization: <token>`.
    let r = s
        .http
        .put(format!("{}/api/v1/crates/new", s.base))
        .header("authorization", t)
        .header("accept", "application/json")
        .header("user-agent", "cargo/1.85.0 (d73d2caf9 2024-12-31)")
        .body(vec![0u8; 64])
        .send()
        .await
        .unwrap();
    check(r, "cargo publish").await;
    // cargo yank and cargo owner --list, on the crate's own guard.
    let r = s
        .http
        .delete(format!("{}/api/v1/crates/contoso-tools/1.0.0/yank", s.base))
        .header("authorization", t)
        .send()
        .await
        .unwrap();
    check(r, "cargo yank").await;
    let r = s
        .get("/api/v1/crates/contoso-tools/owners")
        .header("authorization", t)
        .send()
        .await
        .unwrap();
    check(r, "cargo owner --list").await;
    // Another publisher's crate is still theirs.
    let r = s
        .http
        .delete(format!("{}/api/v1/crates/fabrikam-lib/1.0.0/yank", s.base))
        .header("authorization", t)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "cargo yank of another's crate"
    );

    // nuget push: PUT /api/v2/package, X-NuGet-ApiKey, multipart body.
    let r = s
        .http
        .put(format!("{}/api/v2/package", s.base))
        .header("x-nuget-apikey", t)
        .header("x-nuget-protocol-version", "4.1.0")
        .header("content-type", "multipart/form-data; boundary=abc")
        .body("--abc\r\nContent-Disposition: form-data; name=package; filename=package.nupkg\r\n\r\nPK\r\n--abc--\r\n")
        .send()
        .await
        .unwrap();
    check(r, "nuget push").await;

    // npm publish: PUT /{package}, `Authorization: Bearer <token>`.
    let r = s
        .http
        .put(format!("{}/npm/contoso-tools", s.base))
        .header("authorization", bearer(t))
        .header("npm-command", "publish")
        .header("content-type", "application/json")
        .body(r#"{"name":"contoso-tools","versions":{}}"#)
        .send()
        .await
        .unwrap();
    check(r, "npm publish").await;

    // curl -u key_id:secret (Basic).
    let parsed = s.manager.format().parse(t).unwrap();
    let r = s
        .get("/me")
        .basic_auth(parsed.key_id(), Some(parsed.expose_secret()))
        .send()
        .await
        .unwrap();
    check(r, "curl -u").await;
}

/// The raw form is read only where the registry asked for it, and is one
/// word: anything else in Authorization is still refused.
#[tokio::test]
async fn a_raw_authorization_token_is_refused_unless_asked_for() {
    let s = start_registry_server().await;
    let key = s.push_key().await;
    let t = key.token.expose_secret();
    // npm's layer (the default): refused, 401 invalid_token.
    let r = s
        .get("/me")
        .header("authorization", t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www(&r).contains("invalid_token"));
    // cargo's layer: a scheme it does not know, a second word, or an empty value.
    for value in [format!("Token {t}"), format!("{t} {t}"), String::new()] {
        let r = s
            .http
            .put(format!("{}/api/v1/crates/new", s.base))
            .header("authorization", value.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{value:?}");
        assert!(www(&r).contains("invalid_token"), "{value:?}");
    }
    // Without any credential, cargo's layer says how to send one.
    let r = s
        .http
        .put(format!("{}/api/v1/crates/new", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("`Authorization: <key>`")
    );
}

/// NuGet shows only `X-NuGet-Warning`: the warning goes there, and nowhere else.
#[tokio::test]
async fn the_expiry_warning_goes_in_the_configured_header() {
    let s = start_registry_server().await;
    let (key, expires) = s.quarterly_key().await;
    s.clock.set(expires - TimeDelta::days(3));
    let r = s
        .http
        .put(format!("{}/api/v2/package", s.base))
        .header("x-nuget-apikey", key.token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let warning = r
        .headers()
        .get("x-nuget-warning")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("X-NuGet-Warning");
    assert!(warning.contains("expires in 3 days"), "{warning}");
    assert!(r.headers().get(WARNING_HEADER).is_none());
    // The default stays x-keyward-warning.
    let r = s
        .get("/me")
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get(WARNING_HEADER).is_some());
    assert!(r.headers().get("x-nuget-warning").is_none());
}

/// RFC 7239 `Forwarded`, from trusted proxies only, as X-Forwarded-For is.
#[tokio::test]
async fn the_forwarded_header_is_believed_only_from_trusted_proxies() {
    let s = start_server().await;
    let office = s
        .key(
            NewKey::new(OWNER, "live", "office")
                .permissions(PermissionGrant::All)
                .ip_allowlist(["203.0.113.0/24", "2001:db8::/32"]),
        )
        .await;
    let t = office.token.expose_secret();
    let send = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let mut req = s.get(path).header("authorization", bearer(t));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.send()
    };
    // Untrusted peer: ignored.
    let r = send("/me", vec![("forwarded", "for=203.0.113.5")])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Trusted peer: every form of for=.
    for (value, client) in [
        ("for=203.0.113.5", "203.0.113.5"),
        ("for=\"203.0.113.5:4711\";proto=https", "203.0.113.5"),
        ("for=\"[2001:db8::17]:443\"", "2001:db8::17"),
        (
            "for=198.51.100.7, for=203.0.113.5, for=127.0.0.2",
            "203.0.113.5",
        ),
    ] {
        let r = send("/proxied/me", vec![("forwarded", value)])
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{value}");
        assert_eq!(body(r).await["ip"], client, "{value}");
    }
    // Two Forwarded headers are one list.
    let r = send(
        "/proxied/me",
        vec![
            ("forwarded", "for=198.51.100.7"),
            ("forwarded", "for=203.0.113.5"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(body(r).await["ip"], "203.0.113.5");
    // Unknown addresses refuse the allowlisted key; so do disagreeing headers.
    for headers in [
        vec![("forwarded", "for=unknown")],
        vec![("forwarded", "for=_hidden")],
        vec![("forwarded", "for=203.0.113.5, for=198.51.100.7")],
        vec![
            ("forwarded", "for=203.0.113.5"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    ] {
        let r = send("/proxied/me", headers.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
    }
    // Agreeing headers are fine.
    let r = send(
        "/proxied/me",
        vec![
            ("forwarded", "for=203.0.113.5"),
            ("x-forwarded-for", "203.0.113.5"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Serves `app` on loopback with the peer address; returns the base URL.
async fn serve(app: Router) -> String {
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
    format!("http://{addr}")
}

/// A custom store that implements [`KeyStore`] and nothing else (no
/// [`SessionStore`]).
struct KeysOnly(MemoryStore);

impl KeyStore for KeysOnly {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        self.0.insert(record, quota).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.0.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.list(query).await
    }
    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        self.0.count(query).await
    }
    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        self.0.update(record, expected_generation).await
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        self.0.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), StoreError> {
        self.0.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.take_expiry_reminders(now, until, limit).await
    }
}

/// The layer holds a `Verifier`, so a store that is only a `KeyStore`
/// protects routes (before, the layer's service asked `SessionStore` too,
/// and this did not compile).
#[tokio::test]
async fn the_layer_works_over_a_store_without_sessions() {
    let manager = KeyManager::builder(KeysOnly(MemoryStore::new()), format(), policy())
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
    let push = registry().get("package:push").unwrap();
    let unlist = registry().get("package:unlist").unwrap();
    let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap());
    assert!(!auth.has_sessions());
    let app = Router::new()
        .route("/me", get(me))
        .route_layer(auth.clone())
        .merge(
            Router::new()
                .route("/push", post(ok))
                .route_layer(auth.require(push)),
        )
        .merge(
            Router::new()
                .route("/unlist", post(ok))
                .route_layer(auth.require(unlist)),
        );
    let base = serve(app).await;
    let http = reqwest::Client::new();
    let token = bearer(key.token.expose_secret());
    let r = http
        .get(format!("{base}/me"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["owner"], OWNER);
    let r = http
        .post(format!("{base}/push"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(format!("{base}/unlist"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http.get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Sessions are opt-in: a layer built with `KeywardLayer::new` over a
/// manager that has sessions refuses session tokens (as a layer over a
/// manager without sessions always did) and its `exchange` answers 500;
/// `with_sessions` accepts them.
#[tokio::test]
async fn sessions_are_checked_only_by_a_layer_built_with_them() {
    let s = start_server().await;
    let key = s.push_key().await;
    let session = s
        .manager
        .exchange(key.token.expose_secret(), &s.live, None, None)
        .await
        .unwrap();
    let keys_only = KeywardLayer::new(s.manager.verifier(), s.live.clone());
    let with = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone());
    assert!(!keys_only.has_sessions());
    assert!(with.has_sessions());
    let app = Router::new()
        .merge(
            Router::new()
                .route("/keys/me", get(me))
                .route_layer(keys_only.clone()),
        )
        .merge(Router::new().route("/both/me", get(me)).route_layer(with))
        .route("/keys/session", post(exchange))
        .with_state(keys_only);
    let base = serve(app).await;
    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        http.get(format!("{base}{path}"))
            .header("authorization", bearer(token))
            .send()
    };
    let session_token = session.token.expose_secret();
    let r = get("/both/me", session_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["session"], session.session.id.as_str());
    let r = get("/keys/me", session_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www(&r).contains("invalid_token"));
    let r = get("/keys/me", key.token.expose_secret()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(format!("{base}/keys/session"))
        .header("authorization", bearer(key.token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("Sessions are not available")
    );
}

async fn maybe_me(caller: Option<Caller>) -> Response {
    ::axum::Json(serde_json::json!({
        "owner": caller.map(|c| c.owner().as_str().to_owned()),
    }))
    .into_response()
}

/// `Option<Caller>` is an extractor (axum 0.8's `OptionalFromRequestParts`):
/// `None` without a caller, never a rejection; with `allow_anonymous`, a
/// request without credentials reaches the handler, a bad credential is
/// still 401, and a guard requiring a permission still refuses anonymity.
#[tokio::test]
async fn option_caller_serves_anonymous_requests_where_allowed() {
    let s = start_server().await;
    let key = s.push_key().await;
    let push = registry().get("package:push").unwrap();
    let auth = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone());
    let open = auth.clone().allow_anonymous();
    let app = Router::new()
        .merge(
            Router::new()
                .route("/open/me", get(maybe_me))
                .route_layer(open.clone()),
        )
        .merge(
            Router::new()
                .route("/open/push", post(maybe_me))
                .route_layer(open.require(push)),
        )
        .merge(
            Router::new()
                .route("/closed/me", get(maybe_me))
                .route_layer(auth),
        )
        .route("/nolayer/me", get(maybe_me));
    let base = serve(app).await;
    let http = reqwest::Client::new();
    let token = bearer(key.token.expose_secret());

    let r = http.get(format!("{base}/open/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["owner"], serde_json::Value::Null);
    let r = http
        .get(format!("{base}/open/me"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["owner"], OWNER);
    let r = http
        .get(format!("{base}/open/me"))
        .header("authorization", "Bearer mkh_live_nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www(&r).contains("invalid_token"));

    let r = http.post(format!("{base}/open/push")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .post(format!("{base}/open/push"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Without allow_anonymous the layer still answers 401.
    let r = http.get(format!("{base}/closed/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // No layer: None, where `Caller` answers 500.
    let r = http.get(format!("{base}/nolayer/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["owner"], serde_json::Value::Null);
}

/// The challenge's realm is the layer's setting (default `keyward`), in
/// the layer's 401 and 403, in `exchange`'s answers and in
/// `Caller::authorize`'s refusals; a realm that cannot be quoted is refused
/// when the layer is built.
#[tokio::test]
async fn the_challenge_realm_is_configurable() {
    let s = start_server().await;
    let key = s.push_key().await;
    let push = registry().get("package:push").unwrap();
    let unlist = registry().get("package:unlist").unwrap();
    let default = KeywardLayer::with_sessions(s.manager.clone(), s.live.clone());
    for bad in [
        "",
        "say \"hi\"",
        "back\\slash",
        "tab\there",
        "é",
        &"r".repeat(65),
    ] {
        assert!(
            matches!(default.clone().realm(bad), Err(LayerError::BadRealm { .. })),
            "{bad:?}"
        );
    }
    let custom = default.clone().realm("Contoso packages").unwrap();
    async fn authorize_unlist(caller: Caller) -> Response {
        let unlist = registry().get("package:unlist").unwrap();
        match caller.authorize(unlist, None) {
            Ok(()) => "ok".into_response(),
            Err(rejection) => rejection.into_response(),
        }
    }
    let app = Router::new()
        .merge(
            Router::new()
                .route("/default/me", get(me))
                .route_layer(default.clone()),
        )
        .merge(
            Router::new()
                .route("/custom/me", get(me))
                .route_layer(custom.clone()),
        )
        .merge(
            Router::new()
                .route("/custom/unlist", post(ok))
                .route_layer(custom.require(unlist)),
        )
        .merge(
            Router::new()
                .route("/custom/push", post(authorize_unlist))
                .route_layer(custom.require(push)),
        )
        .route("/custom/session", post(exchange))
        .with_state(custom);
    let base = serve(app).await;
    let http = reqwest::Client::new();
    let token = bearer(key.token.expose_secret());

    let r = http.get(format!("{base}/default/me")).send().await.unwrap();
    assert_eq!(www(&r), "Bearer realm=\"keyward\"");
    let r = http.get(format!("{base}/custom/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www(&r), "Bearer realm=\"Contoso packages\"");
    let r = http
        .get(format!("{base}/custom/me"))
        .header("authorization", "Bearer mkh_live_nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(
        www(&r),
        "Bearer realm=\"Contoso packages\", error=\"invalid_token\""
    );
    let r = http
        .post(format!("{base}/custom/unlist"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        www(&r),
        "Bearer realm=\"Contoso packages\", error=\"insufficient_scope\", scope=\"package:unlist\""
    );
    // Refused inside the handler by Caller::authorize.
    let r = http
        .post(format!("{base}/custom/push"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(www(&r).starts_with("Bearer realm=\"Contoso packages\", error=\"insufficient_scope\""));
    // The exchange endpoint of a layer with that realm.
    let r = http
        .post(format!("{base}/custom/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www(&r), "Bearer realm=\"Contoso packages\"");
}

/// `with_sessions` over a manager built without sessions is a keys-only
/// layer, and says so.
#[tokio::test]
async fn with_sessions_over_a_manager_without_sessions_has_none() {
    let manager = KeyManager::builder(MemoryStore::new(), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let live = Environment::new("live").unwrap();
    assert!(!KeywardLayer::with_sessions(manager.clone(), live.clone()).has_sessions());
    assert!(!KeywardLayer::new(manager.verifier(), live).has_sessions());
}

/// A router served without `into_make_service_with_connect_info` gives the
/// layer no client address, so the per-source failure limit could not
/// apply: the layer fails closed (500, reason `no_client_address`), for
/// good and bad keys alike and for `exchange`, unless built
/// `without_client_addresses`.
#[tokio::test]
async fn requests_without_a_client_address_are_refused_unless_opted_out() {
    use tower::ServiceExt;
    let manager = KeyManager::builder(MemoryStore::new(), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
    let key = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"])),
        )
        .await
        .unwrap();
    let token = bearer(key.token.expose_secret());
    let live = Environment::new("live").unwrap();
    let strict = KeywardLayer::with_sessions(manager.clone(), live.clone());
    let lax = strict.clone().without_client_addresses();
    let app = |auth: KeywardLayer<MemoryStore>| {
        Router::new()
            .route("/me", get(me))
            .route_layer(auth.clone())
            .route("/session", post(session_exchange))
            .with_state(auth)
    };
    let send = |app: Router, path: &str, token: Option<&str>, peer: Option<SocketAddr>| {
        let mut req =
            ::axum::http::Request::builder().method(if path == "/me" { "GET" } else { "POST" });
        req = req.uri(path);
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let mut req = req.body(::axum::body::Body::empty()).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(::axum::extract::ConnectInfo(peer));
        }
        async move {
            let r = app.oneshot(req).await.unwrap();
            let status = r.status();
            let bytes = ::axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            (status.as_u16(), json)
        }
    };
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    for path in ["/me", "/session"] {
        // Fail closed: no address, no check (a good key as a bad one).
        for t in [
            token.as_str(),
            "Bearer mkh_live_00000000000000000000000000000000",
        ] {
            let (status, json) = send(app(strict.clone()), path, Some(t), None).await;
            assert_eq!(status, 500, "{path}: {json}");
            assert_eq!(json["error"], "server_error");
            let message = json["message"].as_str().unwrap();
            assert!(
                message.contains("into_make_service_with_connect_info"),
                "{message}"
            );
            assert!(message.contains("without_client_addresses"), "{message}");
        }
        // With the peer's address: served.
        let (status, _) = send(app(strict.clone()), path, Some(&token), Some(peer)).await;
        assert_eq!(status, 200, "{path}");
        // Opted out: served without an address.
        let (status, _) = send(app(lax.clone()), path, Some(&token), None).await;
        assert_eq!(status, 200, "{path}");
    }
    // The handler sees which address was used (none when opted out).
    let (_, json) = send(app(strict.clone()), "/me", Some(&token), Some(peer)).await;
    assert_eq!(json["ip"], "192.0.2.7");
    let (_, json) = send(app(lax), "/me", Some(&token), None).await;
    assert_eq!(json["ip"], serde_json::Value::Null);
    // No credential at all: still the plain 401, not the 500.
    let (status, _) = send(app(strict), "/me", None, None).await;
    assert_eq!(status, 401);
}

async fn session_exchange(State(auth): State<KeywardLayer<MemoryStore>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    match auth.exchange(&parts, None).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(rejection) => rejection.into_response(),
    }
}

/// The layer finishes a check without waiting when it can (a cached key,
/// a resolver that answers at once); a resolver that waits moves the rest
/// of the check to the request's task, with the same answers: the caller's
/// own and new packages pass, another owner's is 403, on the first
/// (cold) request of a key and on the cached ones after it.
#[tokio::test]
async fn a_resource_owner_resolver_that_waits_guards_the_same() {
    use tower::ServiceExt;
    let manager = KeyManager::builder(MemoryStore::new(), format(), policy())
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let key = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::All)
                .resources(ResourceScope::only(["*"])),
        )
        .await
        .unwrap();
    let token = bearer(key.token.expose_secret());
    let push = registry().get("package:push").unwrap();
    let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
        .resource_owner(|name: String| async move {
            // Answers only after yielding to the runtime once.
            tokio::task::yield_now().await;
            if name.starts_with("Fabrikam.") {
                Some("fabrikam".to_owned())
            } else {
                (name == "Contoso.Tools").then(|| OWNER.to_owned())
            }
        });
    let app = Router::new()
        .route("/packages/{name}/versions", post(ok))
        .route_layer(auth.require(push).resource_param("name").unwrap());
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let send = |name: &str| {
        let mut req = ::axum::http::Request::post(format!("/packages/{name}/versions"))
            .header("authorization", &token)
            .body(::axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(::axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    for _ in 0..2 {
        assert_eq!(send("Fabrikam.Lib").await, 403);
        assert_eq!(send("Contoso.Tools").await, 200);
        assert_eq!(send("Brand.New").await, 200);
    }
}

/// A resolver that answers at once (`resource_owner_now`, borrowing the
/// name) guards as the one that returns a future: the caller's own and new
/// packages pass, another owner's is 403, a name outside the key's scope
/// is 403, on the first (cold) request of a key and on the cached ones;
/// and a route that spends a rate limit still spends it, after the owner
/// check (a refused request spends nothing).
#[tokio::test]
async fn a_resource_owner_resolver_that_answers_at_once_guards_the_same() {
    use keyward::usage::{RateLimit, RateLimits};
    use tower::ServiceExt;
    let policy = policy().with_rate_limits(["publish"]).unwrap();
    let manager = KeyManager::builder(MemoryStore::new(), format(), policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let publish = RateLimit::new("publish", 3, std::time::Duration::from_secs(3600)).unwrap();
    let key = manager
        .create(
            &keyward::Actor::system("tests"),
            NewKey::new(OWNER, "live", "CI")
                .permissions(PermissionGrant::All)
                .resources(ResourceScope::only(["Contoso.*", "Brand.*", "Fabrikam.*"]))
                .rate_limits(RateLimits::new([publish]).unwrap()),
        )
        .await
        .unwrap();
    let token = bearer(key.token.expose_secret());
    let push = registry().get("package:push").unwrap();
    let owners: std::collections::HashMap<String, Arc<str>> = [
        ("Fabrikam.Lib".to_owned(), Arc::from("fabrikam")),
        ("Contoso.Tools".to_owned(), Arc::from(OWNER)),
    ]
    .into();
    let auth = KeywardLayer::new(manager.verifier(), Environment::new("live").unwrap())
        .resource_owner_now(move |name: &str| owners.get(name).cloned());
    let app = Router::new()
        .route("/packages/{name}/versions", post(ok))
        .route_layer(auth.require(push).resource_param("name").unwrap())
        .route(
            "/spend/{name}",
            post(ok).route_layer(
                auth.require(push)
                    .spend("publish", 1)
                    .unwrap()
                    .resource_param("name")
                    .unwrap(),
            ),
        );
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let send = |path: String| {
        let mut req = ::axum::http::Request::post(path)
            .header("authorization", &token)
            .body(::axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(::axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    let push_to = |name: &str| send(format!("/packages/{name}/versions"));
    for _ in 0..2 {
        assert_eq!(push_to("Fabrikam.Lib").await, 403);
        assert_eq!(push_to("Contoso.Tools").await, 200);
        assert_eq!(push_to("Brand.New").await, 200);
        assert_eq!(push_to("Northwind.New").await, 403, "outside the scope");
    }
    // Refused by owner: nothing spent; then the limit's 3 requests, then 429.
    assert_eq!(send("/spend/Fabrikam.Lib".into()).await, 403);
    for _ in 0..3 {
        assert_eq!(send("/spend/Contoso.Tools".into()).await, 200);
    }
    assert_eq!(send("/spend/Contoso.Tools".into()).await, 429);
}

/// The expiry warning is about the key's expiry, not its idle deadline:
/// under an idle-expiry policy a key whose idle deadline falls within the
/// warning window but whose expiry does not gets no warning (the layer
/// tests the deadline first, which is never later than the expiry, and
/// reads the expiry only then), and a key whose expiry is near gets one.
#[tokio::test]
async fn an_idle_deadline_within_the_window_is_no_expiry_warning() {
    use tower::ServiceExt;
    let clock = ManualClock::new(Utc::now());
    let manager = KeyManager::builder(
        MemoryStore::new(),
        format(),
        policy().with_idle_expiry(30).unwrap(),
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .clock(clock.clone())
    .build()
    .unwrap();
    let create = |name: &'static str, days: u32| {
        let manager = manager.clone();
        async move {
            manager
                .create(
                    &keyward::Actor::system("tests"),
                    NewKey::new(OWNER, "live", name)
                        .permissions(PermissionGrant::All)
                        .expiry(ExpiryChoice::Days(days)),
                )
                .await
                .unwrap()
        }
    };
    let far = create("far", 90).await;
    let near = create("near", 1).await;
    let live = Environment::new("live").unwrap();
    let app = Router::new()
        .route("/me", get(me))
        .route_layer(KeywardLayer::new(manager.verifier(), live).without_client_addresses());
    let warning = |token: String| {
        let app = app.clone();
        async move {
            let req = ::axum::http::Request::get("/me")
                .header("authorization", bearer(&token))
                .body(::axum::body::Body::empty())
                .unwrap();
            let r = app.oneshot(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.headers()
                .get(WARNING_HEADER)
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    let far_token = far.token.expose_secret().to_owned();
    assert_eq!(warning(far_token.clone()).await, None);
    let near_warning = warning(near.token.expose_secret().to_owned()).await;
    assert!(
        near_warning.is_some_and(|w| w.contains(near.key.id.as_str())),
        "a key expiring tomorrow is warned about"
    );
    // 25 days on: the idle deadline (30 days after the last use) is 5
    // days away, inside the default 10-day window; the expiry 65.
    clock.advance(TimeDelta::days(25));
    assert_eq!(warning(far_token).await, None);
}
