//! [`leak_report_route`]: the leak-report endpoint a secret scanner POSTs
//! to (features `axum` and `leak-reports`).

use std::sync::Arc;

use ::axum::body::{Body, to_bytes};
use ::axum::extract::Request;
use ::axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use ::axum::http::{HeaderMap, HeaderValue, StatusCode};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{MethodRouter, post};

use crate::leak::{LeakReportError, LeakReports};
use crate::manager::KeyManager;
use crate::store::KeyStore;

/// The header naming the scanner key that signed the report.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header holding the report's signature (base64 of DER).
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// A POST route that handles leak reports from GitHub's secret scanning
/// partner program with [`KeyManager::handle_leak_report`]: reads the body
/// up to [`LeakReports::body_limit`] bytes and the two signature headers,
/// and answers 200 with the JSON array of labels.
///
/// Mount it where the scanner was told to POST, outside any key-checking
/// layer (the scanner signs its reports; it has no key):
///
/// ```
/// use std::sync::Arc;
/// use axum::Router;
/// use keyward::leak::{LeakReports, ScannerKeys};
/// use keyward::{KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat};
///
/// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
/// let manager = KeyManager::builder(
///     MemoryStore::new(),
///     TokenFormat::new("mkh", &["live"]).unwrap(),
///     Policy::new(registry),
/// )
/// .build()
/// .unwrap();
/// // Fill with ScannerKeys::from_github_json(<the document fetched at startup>).
/// let reports = Arc::new(LeakReports::new(ScannerKeys::new()));
/// let app: Router = Router::new()
///     .route("/secret-scanning/leaks", keyward::axum::leak_report_route(manager, reports));
/// # let _ = app;
/// ```
///
/// | outcome | status |
/// |---|---|
/// | handled | 200, `[{"token_hash", "token_type", "label"}]` |
/// | malformed JSON | 400 |
/// | missing, malformed, unknown-key or wrong signature | 401 |
/// | body over the limit, too many tokens | 413 |
/// | store or argon2 unavailable, sessions not ended (retry) | 503, `Retry-After: 5` |
///
/// Error bodies are `{"error": <LeakReportError::code>, "message": ..}`;
/// a 503's message is fixed (a store's own text never reaches the caller).
/// Log the error and refetch the scanner keys on `unknown_key_identifier`
/// ([`LeakReports::set_keys`]).
pub fn leak_report_route<S: KeyStore>(
    manager: KeyManager<S>,
    reports: Arc<LeakReports>,
) -> MethodRouter {
    post(move |request: Request| {
        let manager = manager.clone();
        let reports = Arc::clone(&reports);
        async move { handle(&manager, &reports, request).await }
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle<S: KeyStore>(
    manager: &KeyManager<S>,
    reports: &LeakReports,
    request: Request,
) -> Response {
    let (parts, body): (_, Body) = request.into_parts();
    let max = reports.body_limit();
    // A declared length over the bound is refused before reading a byte.
    let declared = header(&parts.headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > max) {
        return rejection(&LeakReportError::BodyTooLarge { len, max });
    }
    let Ok(body) = to_bytes(body, max).await else {
        return rejection(&LeakReportError::BodyTooLarge {
            len: max.saturating_add(1),
            max,
        });
    };
    let result = manager
        .handle_leak_report(
            reports,
            header(&parts.headers, KEY_IDENTIFIER_HEADER),
            header(&parts.headers, SIGNATURE_HEADER),
            &body,
        )
        .await;
    match result {
        Ok(labels) => match serde_json::to_vec(&labels) {
            Ok(json) => (
                StatusCode::OK,
                [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                json,
            )
                .into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        Err(e) => rejection(&e),
    }
}

/// How long a 503 asks the scanner to wait, in seconds.
const RETRY_AFTER_SECS: u64 = 5;

fn rejection(error: &LeakReportError) -> Response {
    use LeakReportError as E;
    let status = match error {
        E::MalformedReport { .. } => StatusCode::BAD_REQUEST,
        E::BodyTooLarge { .. } | E::TooManyEntries { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        e if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = if status.is_server_error() {
        "The report could not be finished right now; send it again in a few seconds.".to_owned()
    } else {
        error.to_string()
    };
    let body = serde_json::json!({ "error": error.code(), "message": message });
    let mut response = (status, ::axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}
