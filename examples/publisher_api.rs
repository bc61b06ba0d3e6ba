//! A package marketplace's publisher API on SQLite or PostgreSQL, protected
//! by keyward.
//!
//! ```sh
//! cargo run --example publisher_api --all-features -- 8080
//! cargo run --example publisher_api --all-features -- 8080 \
//!     --postgres postgres://app@127.0.0.1:5432/registry
//! ```
//!
//! * Listens on 127.0.0.1, port from the first argument or `PORT` (default 8080).
//! * Keys and sessions live in SQLite by default: `KEYWARD_DATABASE` (a file
//!   path), or a fresh file in a temporary directory.
//! * Or in PostgreSQL, when a URL is given with `--postgres URL` or
//!   `KEYWARD_DATABASE_URL` (the argument wins). `KEYWARD_DATABASE_SCHEMA`
//!   picks the schema (default `public`). The tables (keys, sessions) are
//!   created at startup (`PostgresStore::migrate`, safe with several servers
//!   starting at once), and each server runs the change feed, so a key
//!   revoked, regenerated or deleted through one server is refused by every
//!   other server's cache within milliseconds.
//! * One owner (`OWNER`, default `contoso`) has an administrator, who signs
//!   in with `X-Admin-Secret: <secret>`: `KEYWARD_ADMIN_SECRET`, or a random
//!   secret printed at startup. The administrator manages the owner's keys
//!   and is the only one who may delete a package (a session-only
//!   operation: refused for keys and for sessions made from keys).
//!
//! Endpoints (keys or session tokens, as `Authorization: Bearer`,
//! `X-Api-Key`, or HTTP Basic `key_id:secret`):
//!
//! | method and path | needs |
//! |---|---|
//! | `POST /packages/{name}/versions` `{"version"}` | `package:push-new` for a new package, `package:push` for an existing one |
//! | `PUT /packages/{name}/metadata` `{"description"}` | `package:metadata` |
//! | `POST /packages/{name}/unlist` | `package:unlist` |
//! | `GET /packages/{name}/analytics` | `analytics:read` |
//! | `DELETE /packages/{name}` | session-only: always 403 for keys |
//! | `GET /me` | any valid key or session |
//! | `POST /session?ttl_seconds=N` | a key (never a session) |
//!
//! For the `cargo` and `npm` binaries: `GET /index/config.json` (a sparse
//! index naming this API: `index = "sparse+http://127.0.0.1:8080/index/"`),
//! `GET /api/v1/crates/{name}/owners` (`cargo owner --list`, any valid key),
//! `DELETE /api/v1/crates/{name}/{version}/yank` (`cargo yank`,
//! `package:unlist`), both taking cargo's `Authorization: <token>`;
//! `GET /-/whoami` (`npm whoami`, Bearer).
//!
//! Administrator (`X-Admin-Secret`): `POST /admin/keys` (optional
//! `external_id` and `metadata`), `GET /admin/keys` (a page, `?name_prefix=`,
//! `?external_id=`, `?after=`, `?limit=`, and the `total` matching),
//! `PATCH /admin/keys/{id}`, `POST /admin/keys/{id}/regenerate`,
//! `POST /admin/keys/{id}/revoke` (ends its sessions too;
//! `{"compromised": true}` also accepts a key already revoked and ends its
//! sessions again), `DELETE /admin/keys/{id}`, `DELETE /admin/packages/{name}`,
//! `POST /admin/keys/{id}/rotate` `{"grace_hours"}` (a successor; the old key
//! works until the grace ends, default 24 hours), `POST /admin/keys/{id}/suspend`,
//! `POST /admin/keys/{id}/resume`, `GET /admin/keys/{id}/audit` (the key's
//! audit trail) and `GET /admin/audit` (the owner's).
//!
//! Keys are created in an environment (`"environment": "live"`, the default,
//! or `"test"`: tokens `mkh_live_...` and `mkh_test_...`), at most 3 live
//! keys per owner and environment, like the developer portal (409 beyond;
//! revoked and expired keys free their slot). This API accepts live keys only.
//!
//! A manager (`X-Manager-Secret`: `KEYWARD_MANAGER_SECRET`; no manager if
//! unset) uses the same `/admin/keys` routes as a manager with API access:
//! creates, lists, edits, rotates (a grace of at least a day), suspends,
//! resumes and reads the audit trail, but revoking, deleting, regenerating
//! and a rotation with a shorter grace are the administrator's (403), as is
//! deleting a package.
//!
//! Trusted publishing: `POST /admin/trust-policies` (the administrator only;
//! `{"name", "audience", "repository_owner", "repository_owner_id",
//! "repository_name", "workflow", "github_environment"?, "environment"?,
//! "permissions", "resources"?}`), `GET /admin/trust-policies`,
//! `DELETE /admin/trust-policies/{id}` (ends its sessions), and
//! `POST /trusted-publishing/exchange` `{"token": <the CI job's OIDC JWT>}`
//! (no key: 201 with a 30-minute session token of the policy's grant, or
//! 401 naming what was wrong). GitHub's JWKS is read from the file named by
//! `KEYWARD_GITHUB_JWKS` (fetched by the operator; without it every exchange
//! is refused).
//!
//! GitHub secret scanning: `POST /secret-scanning/leaks` (no key: GitHub
//! signs its reports; 401 for a missing or wrong signature). Its keys are
//! read from the file named by `KEYWARD_SCANNER_KEYS` (the document at
//! `https://api.github.com/meta/public_keys/secret_scanning`; without it
//! every report is refused). A proven leak revokes the key and prints a
//! notice (a real registry emails the owner).
//!
//! `POST /admin/expiry-reminders?within_days=N` (the administrator): the
//! keys expiring within N days (default 10), each returned once, for a
//! daily reminder job.
//!
//! `POST /admin/keys/import` `{"id", "name", "sha256", "permissions",
//! "resources"?, "environment"?}` (the administrator): a key from another
//! system, its holder keeping the secret (HTTP Basic `id:secret`).
//!
//! Usage controls: the policy declares two rate limits, `requests` and
//! `publish`. `POST /admin/keys` and `PATCH /admin/keys/{id}` take
//! `"rate_limits": [{"name", "limit", "window_secs"}]` and `"credits":
//! {"remaining", "refill"?: {"amount", "every": "day" | "month", "day"?}}`
//! (`"credits": null` in an edit stops metering; on a metered key an edit
//! changes only the refill). `GET /admin/keys/{id}/credits` reads the
//! balance; `PUT` `{"remaining"}` sets it and `POST` `{"add"}` adds to it.
//! The marketplace sells usage, so the publisher's administrator and
//! manager may narrow limits and read the balance, but only the marketplace
//! itself (`X-Operator-Secret`: `KEYWARD_OPERATOR_SECRET`, or a random
//! secret printed at startup; it acts as the application, for any owner)
//! may give credits or widen limits (403 otherwise). Bad input is 400,
//! naming the field.
//!
//! Spending: every key-protected request spends 1 of the key's `requests`
//! limit, a push also 1 of `publish`, and a metered key pays 1 credit (a
//! key without a limit or credits pays nothing for it; a session spends its
//! key's; a refused request spends nothing). Successful answers carry the
//! `RateLimit-Policy` and `RateLimit` fields (IETF draft) of the spent
//! limit with the fewest requests left, e.g. `"publish";q=10;w=3600` and
//! `"publish";r=9;t=360`, and a metered key's balance in
//! `X-Credits-Remaining` (`credits_remaining` in `GET /me`). A spent limit
//! is 429 with `Retry-After` and both fields; spent credits are 402
//! `usage_exhausted` until the marketplace adds some or the refill comes.
//! On Ctrl-C or SIGTERM the server finishes the requests under way and
//! gives the credits and tokens it leased back to the store
//! (`Verifier::release_usage`) before it exits.
//!
//! Every 5 minutes the server purges expired sessions and the expired ids
//! of exchanged OIDC tokens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use keyward::audit::AuditQuery;
use keyward::axum::{Caller, KeywardLayer, ManagementRejection};
use keyward::leak::{LeakReports, ScannerKeys};
use keyward::prelude::*;
use keyward::store::{AuditSink, BoxedSessionStore};
use keyward::trusted::{
    GITHUB_ACTIONS_ISSUER, GitHubClaims, NewTrustPolicy, TrustConfig, TrustError, TrustedPublishing,
};
use keyward::usage::{
    CreditChange, Credits, RateLimit, RateLimits, Refill, RefillInterval, UsageError,
};
use keyward::{PostgresStore, SqliteStore, policy::ResourceRef, session::SessionConfig};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use subtle::ConstantTimeEq;

/// The store the server runs on, chosen at startup: SQLite (embedded) or
/// PostgreSQL (shared), behind one type.
type Store = BoxedSessionStore;

type Manager = KeyManager<Store>;

/// Trust policies and their exchange need the store's `TrustStore`, which
/// `BoxedSessionStore` does not forward: a second manager over the same
/// database, through the concrete store.
#[derive(Clone)]
enum TrustManager {
    Sqlite(KeyManager<SqliteStore>),
    Postgres(KeyManager<PostgresStore>),
}

macro_rules! on_trust {
    ($t:expr, $m:ident => $e:expr) => {
        match $t {
            TrustManager::Sqlite($m) => $e,
            TrustManager::Postgres($m) => $e,
        }
    };
}

/// The manager's settings, for either store.
fn build_manager<S: keyward::store::KeyStore + keyward::store::SessionStore>(
    store: S,
    policy: Policy,
    audit: Arc<dyn AuditSink>,
) -> Result<KeyManager<S>, Box<dyn std::error::Error>> {
    let mut builder =
        KeyManager::builder(store, TokenFormat::new("mkh", &["live", "test"])?, policy)
            .sessions(SessionConfig::new("mkhs"))
            .audit_shared(audit);
    if std::env::var("KEYWARD_FAST_HASH").is_ok_and(|v| v == "1") {
        // For demos and tests only: cheap argon2 parameters.
        builder = builder.hasher(Argon2Hasher::new(
            keyward::Argon2Params::insecure_for_tests(),
        ));
    }
    Ok(builder.build()?)
}

#[derive(Default)]
struct Package {
    owner: String,
    versions: Vec<String>,
    listed: bool,
    description: String,
    downloads: u64,
}

type Packages = Arc<Mutex<HashMap<String, Package>>>;

#[derive(Clone)]
struct App {
    manager: Manager,
    auth: KeywardLayer<Store>,
    packages: Packages,
    registry: PermissionRegistry,
    owner: String,
    admin_secret: Arc<str>,
    trust: TrustManager,
    trusted: Arc<TrustedPublishing>,
    /// The manager's secret (`X-Manager-Secret`), if one is configured.
    manager_secret: Option<Arc<str>>,
    /// The marketplace operator's secret (`X-Operator-Secret`): acts as the
    /// application itself, which alone gives usage (credits, wider limits).
    operator_secret: Arc<str>,
    /// This server's address, for the cargo index's `config.json`.
    base_url: Arc<str>,
}

impl App {
    /// The owner's administrator, as the management policy sees them.
    fn admin(&self) -> Actor {
        Actor::administrator(
            "admin",
            OwnerId::new(&self.owner).unwrap_or_else(|_| unreachable!("checked at startup")),
        )
    }
}

/// Who is calling the management routes: the administrator
/// (`X-Admin-Secret`), the manager (`X-Manager-Secret`, a manager with API
/// access: creates, edits, rotates with a grace of at least a day, suspends,
/// resumes and reads the audit trail, but cannot revoke, delete, regenerate
/// or import: 403), or the marketplace operator (`X-Operator-Secret`, the
/// application itself: also gives credits and widens rate limits).
fn actor(app: &App, headers: &HeaderMap) -> Option<Actor> {
    if is_admin(app, headers) {
        return Some(app.admin());
    }
    let header_is = |name: &str, secret: &str| {
        headers
            .get(name)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret.as_bytes())))
    };
    if header_is("x-operator-secret", &app.operator_secret) {
        // The marketplace itself: the one that sells usage.
        return Some(Actor::system("marketplace"));
    }
    let matches = |secret: &str| header_is("x-manager-secret", secret);
    match &app.manager_secret {
        Some(secret) if matches(secret) => Some(Actor::manager(
            "manager",
            OwnerId::new(&app.owner).unwrap_or_else(|_| unreachable!("checked at startup")),
            true,
        )),
        _ => None,
    }
}

fn packages(app: &App) -> std::sync::MutexGuard<'_, HashMap<String, Package>> {
    app.packages.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": status.canonical_reason(), "message": message.into() })),
    )
        .into_response()
}

/// keyward's one mapping of management errors to HTTP answers (404, 409,
/// 503, ...; 5xx bodies never carry the store's text).
fn manager_error(e: KeywardError) -> Response {
    ManagementRejection::from(e).into_response()
}

// ---- key-protected endpoints ----

#[derive(Deserialize)]
struct PushBody {
    version: String,
}

async fn push_version(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<PushBody>,
) -> Response {
    // One lock across the owner lookup, the permission check and the
    // insert: with two owners racing to create the same name, the second
    // sees the first one's package (and needs `package:push` on it), so it
    // can never append a version to a package it does not own.
    let mut all = packages(&app);
    let existing_owner = all.get(&name).map(|p| p.owner.clone());
    let (permission, owner) = match &existing_owner {
        Some(owner) => ("package:push", owner.clone()),
        None => ("package:push-new", caller.owner().as_str().to_owned()),
    };
    let Some(permission) = app.registry.get(permission) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "permission not registered",
        );
    };
    if let Err(rejection) = caller.authorize(permission, Some(ResourceRef::new(&owner, &name))) {
        return rejection.into_response();
    }
    let package = all.entry(name.clone()).or_insert_with(|| Package {
        owner,
        listed: true,
        ..Package::default()
    });
    if package.versions.contains(&body.version) {
        return error(StatusCode::CONFLICT, "this version already exists");
    }
    package.versions.push(body.version.clone());
    let status = if existing_owner.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, Json(json!({ "package": name, "version": body.version, "new_package": existing_owner.is_none() })))
        .into_response()
}

#[derive(Deserialize)]
struct MetadataBody {
    description: String,
}

async fn update_metadata(
    State(app): State<App>,
    Path(name): Path<String>,
    Json(body): Json<MetadataBody>,
) -> Response {
    match packages(&app).get_mut(&name) {
        Some(p) => {
            p.description = body.description;
            Json(json!({ "package": name, "description": p.description })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such package"),
    }
}

async fn unlist(State(app): State<App>, Path(name): Path<String>) -> Response {
    match packages(&app).get_mut(&name) {
        Some(p) => {
            p.listed = false;
            Json(json!({ "package": name, "listed": false })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such package"),
    }
}

async fn analytics(State(app): State<App>, Path(name): Path<String>) -> Response {
    match packages(&app).get(&name) {
        Some(p) => {
            Json(json!({ "package": name, "downloads": p.downloads, "versions": p.versions.len() }))
                .into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such package"),
    }
}

async fn delete_package_with_key() -> Response {
    // Unreachable for keys: the route requires a session-only permission.
    error(StatusCode::FORBIDDEN, "session-only")
}

async fn me(caller: Caller) -> Response {
    Json(json!({
        "key_id": caller.id(),
        "name": caller.name(),
        "owner": caller.owner(),
        "environment": caller.environment(),
        "permissions": caller.permission_names(),
        "resources": caller.resources(),
        "expires_at": caller.expires_at(),
        "session_id": caller.session_id(),
        // A metered key's balance after this request (null: unmetered).
        "credits_remaining": caller.key().credits_remaining(),
    }))
    .into_response()
}

/// The response header naming a metered key's credits left after the
/// request (this server's view: its leased block plus what the store had at
/// its last lease; other servers may have spent since).
const CREDITS_HEADER: HeaderName = HeaderName::from_static("x-credits-remaining");

/// Inside the key-checking layer (it runs after it, so the `Caller` is
/// there): puts a metered key's remaining credits on the answer.
async fn credits_header(request: Request, next: Next) -> Response {
    let remaining = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.key().credits_remaining());
    let mut response = next.run(request).await;
    if let Some(left) = remaining {
        response
            .headers_mut()
            .insert(CREDITS_HEADER, HeaderValue::from(left));
    }
    response
}

/// `routes` behind `guard`, answers carrying the credits header.
fn guarded(routes: Router<App>, guard: KeywardLayer<Store>) -> Router<App> {
    routes
        .route_layer(middleware::from_fn(credits_header))
        .route_layer(guard)
}

/// Ctrl-C or SIGTERM: the server stops taking requests, finishes those
/// under way, then gives back the usage it leased.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler: wait for SIGTERM only.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[derive(Deserialize)]
struct SessionParams {
    ttl_seconds: Option<u64>,
}

async fn create_session(
    State(app): State<App>,
    Query(params): Query<SessionParams>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    match app
        .auth
        .exchange(&parts, params.ttl_seconds.map(Duration::from_secs))
        .await
    {
        Ok(issued) => (
            StatusCode::CREATED,
            Json(json!({ "token": issued.token.expose_secret(), "session": issued.session })),
        )
            .into_response(),
        Err(rejection) => rejection.into_response(),
    }
}

// ---- what the cargo and npm binaries ask ----

/// The sparse index's `config.json`: where the web API is. The index holds
/// no crates in this example; `cargo owner` and `cargo yank` only need the API.
async fn cargo_index_config(State(app): State<App>) -> Response {
    Json(json!({
        "dl": format!("{}/api/v1/crates", app.base_url),
        "api": &*app.base_url,
        "auth-required": false,
    }))
    .into_response()
}

/// `cargo owner --list <crate>`: the package's owner (any valid key).
async fn cargo_owners(State(app): State<App>, Path(name): Path<String>) -> Response {
    match packages(&app).get(&name) {
        Some(p) => {
            Json(json!({ "users": [{ "id": 1, "login": p.owner, "name": null }] })).into_response()
        }
        None => cargo_error(StatusCode::NOT_FOUND, "no such crate"),
    }
}

/// `cargo yank --version <v> <crate>`: unlists (needs `package:unlist` on it).
async fn cargo_yank(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match packages(&app).get_mut(&name) {
        Some(p) if p.versions.contains(&version) => {
            p.listed = false;
            Json(json!({ "ok": true })).into_response()
        }
        _ => cargo_error(StatusCode::NOT_FOUND, "no such crate version"),
    }
}

/// cargo shows `errors[].detail` of a failed API call.
fn cargo_error(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "errors": [{ "detail": detail }] }))).into_response()
}

/// `npm whoami`: the key's owner.
async fn npm_whoami(caller: Caller) -> Response {
    Json(json!({ "username": caller.owner() })).into_response()
}

// ---- the owner's administrator ----

fn is_admin(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get("x-admin-secret")
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(app.admin_secret.as_bytes())))
}

macro_rules! require_actor {
    ($app:expr, $headers:expr) => {
        match actor(&$app, &$headers) {
            Some(actor) => actor,
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "send the administrator secret in X-Admin-Secret \
                     or the manager's in X-Manager-Secret",
                )
            }
        }
    };
}

macro_rules! require_admin {
    ($app:expr, $headers:expr) => {
        if !is_admin(&$app, &$headers) {
            return error(
                StatusCode::UNAUTHORIZED,
                "send the administrator secret in X-Admin-Secret",
            );
        }
    };
}

/// Loads a key of the administrator's owner; other owners' keys are "not found".
async fn own_key(app: &App, actor: &Actor, id: &str) -> Result<KeyId, Response> {
    let not_found = || error(StatusCode::NOT_FOUND, "no such key");
    let id = KeyId::new(id).map_err(|_| not_found())?;
    match app.manager.get(actor, &id).await {
        Ok(view) if view.owner.as_str() == app.owner => Ok(id),
        Ok(_) | Err(KeywardError::NotFound(_) | KeywardError::NotAllowed { .. }) => {
            Err(not_found())
        }
        Err(e) => Err(manager_error(e)),
    }
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    permissions: Vec<String>,
    resources: Option<Vec<String>>,
    expiry_days: Option<u32>,
    /// `live` (the default) or `test`: at most 3 keys per environment.
    environment: Option<String>,
    #[serde(default)]
    ip_allowlist: Vec<String>,
    /// The application's id for the key (a CI job, a ticket).
    external_id: Option<String>,
    /// A JSON object (at most 4 KiB): shown in listings, never a secret.
    metadata: Option<serde_json::Value>,
    /// `[{"name": "publish", "limit": 10, "window_secs": 3600}]`.
    rate_limits: Option<Vec<LimitBody>>,
    /// `{"remaining": 1000, "refill": {"amount": 1000, "every": "month", "day": 1}}`
    /// (the marketplace operator only).
    credits: Option<CreditsBody>,
}

/// One rate limit as the API takes it. Numbers are read as JSON numbers
/// and checked here, so a negative or fractional one is a 400 naming the
/// field rather than a deserializer's message.
#[derive(Deserialize)]
struct LimitBody {
    name: String,
    limit: f64,
    window_secs: f64,
}

#[derive(Deserialize)]
struct RefillBody {
    amount: f64,
    every: String,
    day: Option<f64>,
}

#[derive(Deserialize)]
struct CreditsBody {
    remaining: f64,
    refill: Option<RefillBody>,
}

/// A whole number for `field`, at most `max` (negative, fractional and
/// larger ones are refused, naming the field).
fn whole(field: &'static str, value: f64, max: u64) -> Result<u64, String> {
    if value < 0.0 {
        return Err(UsageError::NegativeCredits {
            field,
            // Saturating float-to-int conversion: the message shows the value.
            value: value as i64,
        }
        .to_string());
    }
    if value.fract() != 0.0 {
        return Err(format!("{field}: {value} is not a whole number"));
    }
    // Exact up to 2^53, past every maximum used here.
    if value > max as f64 {
        return Err(format!("{field}: {value} is above the maximum {max}"));
    }
    Ok(value as u64)
}

fn parse_limits(body: Vec<LimitBody>) -> Result<RateLimits, String> {
    let mut limits = Vec::with_capacity(body.len());
    for l in body {
        let limit = whole("rate_limits[].limit", l.limit, u64::from(u32::MAX))?;
        let window = Duration::try_from_secs_f64(l.window_secs).map_err(|_| {
            format!(
                "rate limit {}: window_secs {} is not a duration",
                l.name, l.window_secs
            )
        })?;
        let limit = u32::try_from(limit).map_err(|e| e.to_string())?;
        limits.push(RateLimit::new(&l.name, limit, window).map_err(|e| e.to_string())?);
    }
    RateLimits::new(limits).map_err(|e| e.to_string())
}

fn parse_credits(body: CreditsBody) -> Result<Credits, String> {
    let remaining = whole("credits.remaining", body.remaining, Credits::MAX)?;
    let mut credits = Credits::new(remaining).map_err(|e| e.to_string())?;
    if let Some(r) = body.refill {
        let amount = whole("credits.refill.amount", r.amount, Credits::MAX)?;
        let interval = match (r.every.as_str(), r.day) {
            ("day", None) => RefillInterval::Day,
            ("day", Some(_)) => {
                return Err("credits.refill.day: only for \"every\": \"month\"".into());
            }
            ("month", day) => {
                let day = whole("credits.refill.day", day.unwrap_or(1.0), 31)?;
                RefillInterval::Month {
                    day: u32::try_from(day).map_err(|e| e.to_string())?,
                }
            }
            (other, _) => {
                return Err(format!(
                    "credits.refill.every: {other:?} is not \"day\" or \"month\""
                ));
            }
        };
        credits = credits.with_refill(Refill::new(interval, amount).map_err(|e| e.to_string())?);
    }
    Ok(credits)
}

async fn admin_create(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> Response {
    let actor = require_actor!(app, headers);
    let environment = body.environment.unwrap_or_else(|| "live".into());
    let mut new = NewKey::new(app.owner.clone(), environment, body.name)
        .permissions(PermissionGrant::only(body.permissions))
        .ip_allowlist(body.ip_allowlist);
    if let Some(resources) = body.resources {
        new = new.resources(ResourceScope::only(resources));
    }
    if let Some(days) = body.expiry_days {
        new = new.expiry(ExpiryChoice::Days(days));
    }
    if let Some(id) = body.external_id {
        new = new.external_id(id);
    }
    if let Some(object) = body.metadata {
        new = new.metadata(object);
    }
    if let Some(limits) = body.rate_limits {
        match parse_limits(limits) {
            Ok(limits) => new = new.rate_limits(limits),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        }
    }
    if let Some(credits) = body.credits {
        match parse_credits(credits) {
            Ok(credits) => new = new.credits(credits),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        }
    }
    match app.manager.create(&actor, new).await {
        Ok(created) => (
            StatusCode::CREATED,
            Json(json!({ "token": created.token.expose_secret(), "key": created.key })),
        )
            .into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize)]
struct ListParams {
    name_prefix: Option<String>,
    external_id: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// One page of the owner's keys (`?name_prefix=&external_id=&after=&limit=`)
/// and the total matching the filters, for a console's pagination.
async fn admin_list(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Response {
    let actor = require_actor!(app, headers);
    let Ok(owner) = OwnerId::new(&app.owner) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad owner");
    };
    let mut query = ListQuery::new(owner).limit(params.limit.unwrap_or(50));
    if let Some(prefix) = params.name_prefix {
        query = query.name_prefix(prefix);
    }
    if let Some(x) = params.external_id {
        match keyward::ids::ExternalId::new(&x) {
            Ok(x) => query = query.external_id(x),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    if let Some(after) = params.after {
        match KeyId::new(&after) {
            Ok(after) => query = query.after(after),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    let total = match app.manager.count(&actor, &query).await {
        Ok(n) => n,
        Err(e) => return manager_error(e),
    };
    match app.manager.list(&actor, query).await {
        Ok(keys) => Json(json!({ "keys": keys, "total": total })).into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize)]
struct EditBody {
    name: Option<String>,
    permissions: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    expiry_days: Option<u32>,
    ip_allowlist: Option<Vec<String>>,
    /// A new external id (this example sets it; `KeyEdit` can also clear it).
    external_id: Option<String>,
    /// A new metadata object, replacing the old one (`{}` empties it).
    metadata: Option<serde_json::Value>,
    /// New rate limits, replacing the old ones (`[]`: none).
    rate_limits: Option<Vec<LimitBody>>,
    /// Metering: `null` stops it; an object starts it, or on a metered key
    /// changes only the refill. Missing: unchanged.
    #[serde(default, deserialize_with = "present")]
    credits: Option<Option<CreditsBody>>,
}

/// A field that is there, `null` included (`Some(None)`); a missing one
/// is the `#[serde(default)]` `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

async fn admin_edit(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<EditBody>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let rate_limits = match body.rate_limits.map(parse_limits).transpose() {
        Ok(limits) => limits,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let credits = match body
        .credits
        .map(|c| c.map(parse_credits).transpose())
        .transpose()
    {
        Ok(credits) => credits,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let edit = KeyEdit {
        name: body.name,
        permissions: body.permissions.map(PermissionGrant::only),
        resources: body.resources.map(ResourceScope::only),
        expiry: body.expiry_days.map(ExpiryChoice::Days),
        ip_allowlist: body.ip_allowlist,
        external_id: body.external_id.map(Some),
        metadata: body.metadata,
        rate_limits,
        credits,
    };
    match app.manager.edit(&actor, &id, edit).await {
        Ok(view) => Json(json!({ "key": view })).into_response(),
        Err(e) => manager_error(e),
    }
}

/// The key's credits (`null`: not metered): the administrator, the
/// manager and the operator may read them.
async fn admin_credits(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.manager.credits(&actor, &id).await {
        Ok(credits) => Json(json!({ "credits": credits })).into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize)]
struct SetCreditsBody {
    remaining: f64,
}

#[derive(Deserialize)]
struct AddCreditsBody {
    add: f64,
}

/// `PUT` `{"remaining": n}`: sets the balance (the operator only).
async fn admin_set_credits(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<SetCreditsBody>,
) -> Response {
    let change = whole("remaining", body.remaining, Credits::MAX).map(CreditChange::Set);
    change_credits(app, headers, id, change).await
}

/// `POST` `{"add": n}`: adds to the balance (the operator only).
async fn admin_add_credits(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<AddCreditsBody>,
) -> Response {
    let change = whole("add", body.add, Credits::MAX).map(CreditChange::Add);
    change_credits(app, headers, id, change).await
}

async fn change_credits(
    app: App,
    headers: HeaderMap,
    id: String,
    change: Result<CreditChange, String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let result = match change {
        Ok(CreditChange::Set(n)) => app.manager.set_credits(&actor, &id, n).await,
        Ok(CreditChange::Add(n)) => app.manager.add_credits(&actor, &id, n).await,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match result {
        Ok(credits) => Json(json!({ "credits": credits })).into_response(),
        Err(e) => manager_error(e),
    }
}

async fn admin_regenerate(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.manager.regenerate(&actor, &id).await {
        Ok(created) => Json(json!({ "token": created.token.expose_secret(), "key": created.key }))
            .into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize, Default)]
struct RevokeBody {
    #[serde(default)]
    compromised: bool,
}

async fn admin_revoke(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RevokeBody>>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let compromised = body.map(|Json(b)| b.compromised).unwrap_or_default();
    let result = if compromised {
        app.manager.revoke_compromised(&actor, &id).await
    } else {
        app.manager.revoke(&actor, &id).await
    };
    match result {
        Ok(view) => Json(json!({ "key": view, "sessions_ended": true })).into_response(),
        Err(e) => manager_error(e),
    }
}

async fn admin_delete_key(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.manager.delete(&actor, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize, Default)]
struct RotateBody {
    /// How long the old key keeps working (default 1 day, the least a
    /// manager may choose; shorter is a revoke, for the administrator).
    grace_hours: Option<u64>,
}

/// Rotate with grace: a successor with the same settings, and the old key
/// working until the grace ends (both count towards the quota meanwhile).
async fn admin_rotate(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RotateBody>>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let hours = body.and_then(|Json(b)| b.grace_hours).unwrap_or(24);
    let grace = Duration::from_secs(hours.saturating_mul(3600));
    match app.manager.rotate(&actor, &id, grace).await {
        Ok(rotated) => (
            StatusCode::CREATED,
            Json(json!({
                "token": rotated.successor.token.expose_secret(),
                "key": rotated.successor.key,
                "previous": rotated.previous,
            })),
        )
            .into_response(),
        Err(e) => manager_error(e),
    }
}

/// Suspends a key (reversible: refused until resumed).
async fn admin_suspend(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.manager.suspend(&actor, &id).await {
        Ok(view) => Json(json!({ "key": view })).into_response(),
        Err(e) => manager_error(e),
    }
}

async fn admin_resume(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.manager.resume(&actor, &id).await {
        Ok(view) => Json(json!({ "key": view })).into_response(),
        Err(e) => manager_error(e),
    }
}

/// The audit trail of one key.
async fn admin_key_audit(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let id = match own_key(&app, &actor, &id).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.manager.audit_trail(&actor, AuditQuery::key(id)).await {
        Ok(events) => Json(json!({ "events": events })).into_response(),
        Err(e) => manager_error(e),
    }
}

/// The audit trail of the whole owner (every key, every actor).
async fn admin_owner_audit(State(app): State<App>, headers: HeaderMap) -> Response {
    let actor = require_actor!(app, headers);
    let Ok(owner) = OwnerId::new(&app.owner) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad owner");
    };
    match app
        .manager
        .audit_trail(&actor, AuditQuery::owner(owner))
        .await
    {
        Ok(events) => Json(json!({ "events": events })).into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize)]
struct ImportBody {
    /// The key's id in the old system (kept: holders send `id:secret`).
    id: String,
    name: String,
    /// The SHA-256 (hex) of the secret, as the old system stored it.
    sha256: String,
    permissions: Vec<String>,
    resources: Option<Vec<String>>,
    environment: Option<String>,
}

/// Brings a key over from another system (the administrator only: 403 for
/// the manager). Its holder keeps their secret, sent as HTTP Basic
/// `id:secret`; the first check replaces the SHA-256 with argon2id.
async fn admin_import(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<ImportBody>,
) -> Response {
    let actor = require_actor!(app, headers);
    let mut key = keyward::manager::ImportKey::scoped(
        body.id,
        app.owner.clone(),
        body.environment.unwrap_or_else(|| "live".into()),
        body.name,
        body.sha256,
    )
    .permissions(PermissionGrant::only(body.permissions));
    if let Some(resources) = body.resources {
        key = key.resources(ResourceScope::only(resources));
    }
    match app.manager.import(&actor, key).await {
        Ok(view) => (StatusCode::CREATED, Json(json!({ "key": view }))).into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize)]
struct ReminderParams {
    within_days: Option<u32>,
}

/// Keys expiring within `within_days` (default 10), each returned once, of
/// every owner: what a daily job emails to their owners. Run here by the
/// administrator, as the application (taking reminders is across owners).
async fn admin_expiry_reminders(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<ReminderParams>,
) -> Response {
    require_admin!(app, headers);
    let system = Actor::system("expiry-reminders");
    match app
        .manager
        .take_expiry_reminders(&system, params.within_days.unwrap_or(10), 100)
        .await
    {
        // Every owner's: a reminder taken is not handed out again, so none
        // may be dropped here (each view names its owner, whom the job emails).
        Ok(keys) => Json(json!({ "keys": keys })).into_response(),
        Err(e) => manager_error(e),
    }
}

// ---- trusted publishing ----

#[derive(Deserialize)]
struct TrustBody {
    name: String,
    /// The sessions' environment (default `live`).
    environment: Option<String>,
    /// The `aud` the CI job asks its token for.
    audience: String,
    repository_owner: String,
    repository_owner_id: String,
    repository_name: String,
    /// The workflow file, e.g. `release.yml`.
    workflow: String,
    /// The GitHub deployment environment the job must run in, if any.
    github_environment: Option<String>,
    permissions: Vec<String>,
    resources: Option<Vec<String>>,
}

/// Registers a trust policy (the administrator only: 403 for the manager).
async fn trust_create(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<TrustBody>,
) -> Response {
    let actor = require_actor!(app, headers);
    let mut claims = GitHubClaims::new(
        body.repository_owner,
        body.repository_owner_id,
        body.repository_name,
        body.workflow,
    );
    if let Some(environment) = body.github_environment {
        claims = claims.environment(environment);
    }
    let mut new = NewTrustPolicy::github(
        app.owner.clone(),
        body.environment.unwrap_or_else(|| "live".into()),
        body.name,
        body.audience,
        claims,
    )
    .permissions(PermissionGrant::only(body.permissions));
    if let Some(resources) = body.resources {
        new = new.resources(ResourceScope::only(resources));
    }
    match on_trust!(&app.trust, m => m.create_trust_policy(&actor, new).await) {
        Ok(policy) => (StatusCode::CREATED, Json(json!({ "policy": policy }))).into_response(),
        Err(e) => manager_error(e),
    }
}

async fn trust_list(State(app): State<App>, headers: HeaderMap) -> Response {
    let actor = require_actor!(app, headers);
    let Ok(owner) = OwnerId::new(&app.owner) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad owner");
    };
    match on_trust!(&app.trust, m => m.list_trust_policies(&actor, &owner).await) {
        Ok(policies) => Json(json!({ "policies": policies })).into_response(),
        Err(e) => manager_error(e),
    }
}

/// Deletes a trust policy, ending the sessions issued through it.
async fn trust_delete(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let actor = require_actor!(app, headers);
    let Ok(id) = KeyId::new(&id) else {
        return error(StatusCode::NOT_FOUND, "no such trust policy");
    };
    match on_trust!(&app.trust, m => m.delete_trust_policy(&actor, &id).await) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => manager_error(e),
    }
}

#[derive(Deserialize)]
struct ExchangeBody {
    /// The CI job's OIDC identity token (a JWT).
    token: String,
}

/// The CI job's exchange: its OIDC token for a session token of this owner
/// (30 minutes, the policy's grant). Every refusal names what was wrong:
/// 401 for the token, 503 when the store is unavailable.
async fn trusted_exchange(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(body): Json<ExchangeBody>,
) -> Response {
    let Ok(owner) = OwnerId::new(&app.owner) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad owner");
    };
    let result = on_trust!(&app.trust, m => {
        app.trusted.exchange_for(m, &body.token, &owner, Some(peer.ip())).await
    });
    match result {
        Ok(issued) => (
            StatusCode::CREATED,
            Json(json!({
                "token": issued.session.token.expose_secret(),
                "session": issued.session.session,
                "policy_id": issued.policy_id,
            })),
        )
            .into_response(),
        Err(e @ (TrustError::Store(_) | TrustError::Session(_))) => {
            eprintln!("trusted publishing exchange failed: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "try again later")
        }
        Err(e) => error(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

async fn admin_delete_package(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    require_admin!(app, headers);
    let mut all = packages(&app);
    match all.get(&name) {
        Some(p) if p.owner == app.owner => {
            all.remove(&name);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "no such package"),
    }
}

// ---- startup ----

fn random_secret() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Arguments: [PORT] [--postgres URL]
    let mut port_arg = None;
    let mut postgres_arg = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--postgres" {
            postgres_arg = Some(args.next().ok_or("--postgres needs a URL")?);
        } else if let Some(url) = arg.strip_prefix("--postgres=") {
            postgres_arg = Some(url.to_owned());
        } else if port_arg.is_none() && !arg.starts_with('-') {
            port_arg = Some(arg);
        } else {
            return Err(
                format!("unexpected argument {arg:?}; usage: [PORT] [--postgres URL]").into(),
            );
        }
    }
    let port: u16 = port_arg
        .or_else(|| std::env::var("PORT").ok())
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(8080);
    let postgres_url = postgres_arg.or_else(|| {
        std::env::var("KEYWARD_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
    });
    let owner = std::env::var("OWNER").unwrap_or_else(|_| "contoso".into());
    let (admin_secret, generated) = match std::env::var("KEYWARD_ADMIN_SECRET") {
        Ok(s) if !s.is_empty() => (s, false),
        _ => (random_secret(), true),
    };
    // The store, the audit trail (in the same database) and, with
    // PostgreSQL, the store whose change feed this server follows.
    #[allow(clippy::type_complexity)]
    let (store, audit, feed, db, concrete): (
        Store,
        Arc<dyn AuditSink>,
        Option<PostgresStore>,
        String,
        Result<SqliteStore, PostgresStore>,
    ) = match postgres_url {
        Some(url) => {
            let schema =
                std::env::var("KEYWARD_DATABASE_SCHEMA").unwrap_or_else(|_| "public".into());
            let store = PostgresStore::connect(&url).await?.with_schema(&schema)?;
            store.migrate().await?; // keys and sessions tables
            let db = format!(
                "PostgreSQL, tables {schema}.{0} and {schema}.{0}_sessions",
                store.table()
            );
            (
                BoxedSessionStore::new(store.clone()),
                Arc::new(store.clone()),
                Some(store.clone()),
                db,
                Err(store),
            )
        }
        None => {
            let path = match std::env::var("KEYWARD_DATABASE") {
                Ok(path) => path,
                Err(_) => {
                    let dir = std::env::temp_dir()
                        .join(format!("keyward-publisher-{}", std::process::id()));
                    std::fs::create_dir_all(&dir)?;
                    dir.join("keys.db").to_string_lossy().into_owned()
                }
            };
            let store = SqliteStore::connect(&path).await?;
            store.migrate().await?;
            (
                BoxedSessionStore::new(store.clone()),
                Arc::new(store.clone()),
                None,
                format!("SQLite, {path}"),
                Ok(store),
            )
        }
    };

    let registry = PermissionRegistry::builder()
        .permission("package:push-new")
        .permission_implying("package:push", &["package:push-new"])
        .permission("package:unlist")
        .permission("package:metadata")
        .permission("analytics:read")
        .session_only("package:delete")
        .build()?;
    let policy = Policy::new(registry.clone())
        .with_rate_limits(["requests", "publish"])? // the limits a key may carry
        .with_quota(3)? // per owner and environment, like the developer portal
        .with_expiry(ExpiryPolicy::choices(
            &[1, 90, 365],
            true,
            ExpiryChoice::Days(90),
        )?);
    let manager = build_manager(store.clone(), policy.clone(), Arc::clone(&audit))?;
    let trust = match concrete {
        Ok(sqlite) => TrustManager::Sqlite(build_manager(sqlite, policy, audit)?),
        Err(pg) => TrustManager::Postgres(build_manager(pg, policy, audit)?),
    };
    // The issuer's key set (GitHub's JWKS, fetched by the operator:
    // https://token.actions.githubusercontent.com/.well-known/jwks):
    // `KEYWARD_GITHUB_JWKS` names the file. Without it every exchange is
    // refused (unknown issuer).
    let trusted = Arc::new(TrustedPublishing::new(TrustConfig::default())?);
    if let Ok(path) = std::env::var("KEYWARD_GITHUB_JWKS") {
        trusted.set_issuer_keys(GITHUB_ACTIONS_ISSUER, &std::fs::read_to_string(path)?)?;
    }
    // GitHub's secret scanning keys (the document at
    // https://api.github.com/meta/public_keys/secret_scanning, fetched by
    // the operator): `KEYWARD_SCANNER_KEYS` names the file. Without it every
    // report is refused (401).
    let scanner_keys = match std::env::var("KEYWARD_SCANNER_KEYS") {
        Ok(path) => ScannerKeys::from_github_json(&std::fs::read(path)?)?,
        Err(_) => ScannerKeys::new(),
    };
    let leak_reports = Arc::new(LeakReports::new(scanner_keys).notifier(
        |n: keyward::leak::LeakNotice| async move {
            // A real registry emails the owner.
            println!(
                "leaked key {} ({}) of {} found at {} and revoked",
                n.key_name, n.key_id, n.owner, n.url
            );
        },
    ));

    let manager_secret = std::env::var("KEYWARD_MANAGER_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let (operator_secret, operator_generated) = match std::env::var("KEYWARD_OPERATOR_SECRET") {
        Ok(s) if !s.is_empty() => (s, false),
        _ => (random_secret(), true),
    };
    // Expired sessions are refused, but their rows stay until purged: purge
    // them every 5 minutes (on every server, if you like: it is one
    // idempotent statement). Each key holds at most 100 live sessions.
    let purger = manager.clone();
    let (jti_purger, jti_manager) = (Arc::clone(&trusted), trust.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5 * 60));
        loop {
            every.tick().await;
            if let Err(e) = purger.purge_expired_sessions().await {
                eprintln!("session purge failed, retried in 5 minutes: {e}");
            }
            // The exchanged tokens' ids, kept until they expire (replays).
            if let Err(e) = on_trust!(&jti_manager, m => jti_purger.purge_expired_jtis(m).await) {
                eprintln!("token id purge failed, retried in 5 minutes: {e}");
            }
        }
    });
    // With PostgreSQL, other servers may share the database: follow their
    // changes (kept alive until the server stops).
    let _feed = match &feed {
        Some(pg) => Some(pg.listen(&manager.verifier()).await?),
        None => None,
    };
    let live = Environment::new("live")?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base_url = format!("http://{}", listener.local_addr()?);

    let packages: Packages = Arc::default();
    let owners = Arc::clone(&packages);
    // Successful answers carry the `RateLimit-Policy` and `RateLimit`
    // fields of the limit the request spent that has the fewest left (a
    // spent limit's 429 always does).
    let auth = KeywardLayer::with_sessions(manager.clone(), live)
        .api_key_header(HeaderName::from_static("x-api-key"))
        .rate_limit_headers(true)
        .resource_owner(move |name: String| {
            let owner = owners
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .map(|p| p.owner.clone());
            async move { owner }
        });
    // cargo sends `Authorization: <token>` with no scheme: the cargo API
    // names Authorization as its API-key header (Bearer and Basic still work).
    let crates = KeywardLayer::with_sessions(manager.clone(), auth.environment().clone())
        .api_key_header(AUTHORIZATION)
        .rate_limit_headers(true)
        .resource_owner({
            let owners = Arc::clone(&packages);
            move |name: String| {
                let owner = owners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&name)
                    .map(|p| p.owner.clone());
                async move { owner }
            }
        });
    let perm = |name: &str| {
        registry
            .get(name)
            .ok_or_else(|| format!("{name} is not registered"))
    };
    let leak_manager = manager.clone();
    let verifier = manager.verifier();
    let app_state = App {
        manager,
        auth: auth.clone(),
        packages,
        registry: registry.clone(),
        owner: owner.clone(),
        admin_secret: admin_secret.clone().into(),
        trust,
        trusted,
        manager_secret: manager_secret.map(Into::into),
        operator_secret: operator_secret.clone().into(),
        base_url: base_url.clone().into(),
    };

    // Usage: every key-protected request spends 1 of the key's `requests`
    // limit, a publish also 1 of `publish` (a key without that limit pays
    // nothing for it), and a metered key pays 1 credit per request. The
    // layer spends only once the key may do this: a refused request
    // spends nothing.
    let api = auth.clone().spend("requests", 1)?;
    let cargo_api = crates.clone().spend("requests", 1)?;
    let on_package = |permission| api.require(permission).resource_param("name");
    // The push route checks push-new on the package before it spends (push
    // implies push-new), so a push outside the key's scope or to another
    // owner's package spends nothing; the handler then asks for push on a
    // package that exists. A key holding only push-new that pushes to its
    // own existing package has spent its publish when the handler refuses
    // it (403): the layer cannot spend after a handler's own check.
    let publish = on_package(perm("package:push-new")?)?.spend("publish", 1)?;
    let route = |path: &str, handler| Router::new().route(path, handler);
    let app = Router::new()
        .merge(guarded(
            route("/packages/{name}/versions", post(push_version)),
            publish,
        ))
        .merge(guarded(route("/me", get(me)), api.clone()))
        .merge(guarded(
            route("/packages/{name}/metadata", put(update_metadata)),
            on_package(perm("package:metadata")?)?,
        ))
        .merge(guarded(
            route("/packages/{name}/unlist", post(unlist)),
            on_package(perm("package:unlist")?)?,
        ))
        .merge(guarded(
            route("/packages/{name}/analytics", get(analytics)),
            on_package(perm("analytics:read")?)?,
        ))
        .merge(guarded(
            route("/packages/{name}", delete(delete_package_with_key)),
            on_package(perm("package:delete")?)?,
        ))
        // cargo (a registry named in .cargo/config.toml with
        // index = "sparse+<base>/index/") and npm (--registry <base>/).
        .route("/index/config.json", get(cargo_index_config))
        .merge(guarded(
            route("/api/v1/crates/{name}/owners", get(cargo_owners)),
            cargo_api.clone(),
        ))
        .merge(guarded(
            route("/api/v1/crates/{name}/{version}/yank", delete(cargo_yank)),
            cargo_api
                .require(perm("package:unlist")?)
                .resource_param("name")?,
        ))
        .merge(guarded(route("/-/whoami", get(npm_whoami)), api.clone()))
        .route("/session", post(create_session))
        .route("/admin/keys", post(admin_create).get(admin_list))
        .route(
            "/admin/keys/{id}",
            patch(admin_edit).delete(admin_delete_key),
        )
        .route("/admin/keys/{id}/regenerate", post(admin_regenerate))
        .route("/admin/keys/{id}/revoke", post(admin_revoke))
        .route("/admin/keys/{id}/rotate", post(admin_rotate))
        .route("/admin/keys/{id}/suspend", post(admin_suspend))
        .route("/admin/keys/{id}/resume", post(admin_resume))
        .route("/admin/keys/{id}/audit", get(admin_key_audit))
        .route(
            "/admin/keys/{id}/credits",
            get(admin_credits)
                .put(admin_set_credits)
                .post(admin_add_credits),
        )
        .route("/admin/audit", get(admin_owner_audit))
        .route("/admin/expiry-reminders", post(admin_expiry_reminders))
        .route("/admin/keys/import", post(admin_import))
        .route("/admin/trust-policies", post(trust_create).get(trust_list))
        .route("/admin/trust-policies/{id}", delete(trust_delete))
        .route("/trusted-publishing/exchange", post(trusted_exchange))
        .route("/admin/packages/{name}", delete(admin_delete_package))
        .with_state(app_state)
        // Outside any key-checking layer: GitHub signs its reports.
        .route(
            "/secret-scanning/leaks",
            keyward::axum::leak_report_route(leak_manager, leak_reports),
        );

    println!("publisher API on {base_url}");
    println!("database: {db}");
    println!("owner: {owner}");
    if generated {
        println!("administrator secret (X-Admin-Secret): {admin_secret}");
    }
    if operator_generated {
        println!("marketplace operator secret (X-Operator-Secret): {operator_secret}");
    }
    ::axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    // The server takes no more requests: give the credits and rate-limit
    // tokens this process leased back to the store (without it they stay
    // `leased` there, at most one block per metered key).
    verifier.release_usage().await;
    println!("stopped; leased usage given back");
    Ok(())
}
