//! Shared PostgreSQL fixture of the test targets: the server's URL and a
//! fresh schema per test, dropped at the end.
//!
//! `KEYWARD_TEST_POSTGRES_URL` names the server. Without it a test writes
//! `SKIPPED <test target>::<test>: ...` to stderr (uncaptured, so it shows
//! beside libtest's "ok") and returns, unless `KEYWARD_REQUIRE_POSTGRES=1`
//! (set by `.ci/run`), which makes it fail. A URL whose server cannot be
//! reached always fails.
#![allow(dead_code)]

use std::future::Future;

/// Whether the PostgreSQL tests must run (`KEYWARD_REQUIRE_POSTGRES=1`).
pub fn required() -> bool {
    std::env::var("KEYWARD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// The server's URL, or `None` (after a notice) when it is not configured
/// and not required. Panics when it is required but not configured.
pub fn url() -> Option<String> {
    match std::env::var("KEYWARD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if required() => panic!(
            "KEYWARD_REQUIRE_POSTGRES=1 but KEYWARD_TEST_POSTGRES_URL is not set: \
             the PostgreSQL tests must run"
        ),
        _ => {
            report_skip();
            None
        }
    }
}

/// Says on the terminal, past libtest's output capture (which swallows
/// `eprintln!` of passing tests), that the calling test is skipped and why,
/// naming it: libtest has no "skipped" result, so the test counts as passed.
fn report_skip() {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    // One write of the whole line, so lines of tests running in parallel
    // do not interleave.
    let line = format!(
        "SKIPPED {}::{test}: KEYWARD_TEST_POSTGRES_URL is not set, so this PostgreSQL test \
         did not run (it is counted as passed; KEYWARD_REQUIRE_POSTGRES=1 makes it fail instead)\n",
        env!("CARGO_CRATE_NAME")
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A fresh schema name: `kwtest_` and a random id.
pub fn schema_name() -> String {
    format!(
        "kwtest_{}",
        keyward::KeyId::generate().as_str().to_ascii_lowercase()
    )
}

/// Runs `body(url, schema)` with a fresh schema name, then drops the schema,
/// then re-raises any panic of `body`. Fails at once when the server cannot
/// be reached.
pub async fn with_schema<F, Fut>(body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = url() else { return };
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await;
    let admin = match admin {
        Ok(pool) => pool,
        Err(e) => panic!("KEYWARD_TEST_POSTGRES_URL is set but PostgreSQL is unreachable: {e}"),
    };
    let schema = schema_name();
    let outcome = tokio::spawn(body(url.clone(), schema.clone())).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
    admin.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
