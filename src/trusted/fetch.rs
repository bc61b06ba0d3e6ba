//! [`JwksFetcher`]: key sets fetched on demand and cached, for issuers the
//! application names, without keyward depending on an HTTP client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Fetches an issuer's key set (JWKS document), for
/// [`TrustedPublishing::with_fetcher`](super::TrustedPublishing::with_fetcher).
/// The application implements it with its HTTP client (for GitHub:
/// `https://token.actions.githubusercontent.com/.well-known/jwks`).
///
/// keyward calls it only for the issuers given to `with_fetcher`, when it
/// has no keys for one or a token names a `kid` it does not know (a key
/// rotation), at most once per issuer per refresh interval and one at a
/// time, so tokens cannot make it fetch at will.
pub trait JwksFetcher: Send + Sync + 'static {
    /// The JWKS document of `issuer`, or why it could not be had.
    fn fetch<'a>(
        &'a self,
        issuer: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
}

/// The fetcher and when each issuer was last fetched.
pub(crate) struct Fetching {
    pub(crate) fetcher: Box<dyn JwksFetcher>,
    pub(crate) issuers: Vec<String>,
    pub(crate) min_refresh: Duration,
    /// Held while fetching: one fetch at a time, and the last times.
    pub(crate) last: tokio::sync::Mutex<HashMap<String, Instant>>,
}

impl Fetching {
    /// Whether `issuer` may be fetched now (named, and not fetched within
    /// the refresh interval); records the attempt.
    pub(crate) fn due(&self, last: &mut HashMap<String, Instant>, issuer: &str) -> bool {
        if !self.issuers.iter().any(|i| i == issuer) {
            return false;
        }
        let now = Instant::now();
        match last.get(issuer) {
            Some(at) if now.duration_since(*at) < self.min_refresh => false,
            _ => {
                last.insert(issuer.to_owned(), now);
                true
            }
        }
    }
}
