//! The `RateLimit-Policy` and `RateLimit` header fields of the IETF
//! httpapi draft (draft-ietf-httpapi-ratelimit-headers-10): Structured
//! Fields lists whose members are the quoted policy name with parameters,
//! `RateLimit-Policy: "publish";q=10;w=3600` (quota, window in seconds)
//! and `RateLimit: "publish";r=0;t=120` (remaining, seconds to reset).

use ::axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::verify::RateLimitStatus;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up (a client that waits this long is not early).
pub(super) fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The two field values for `status` (limit names are `a-z 0-9 _ - . :`,
/// so the quoted string needs no escaping).
pub fn rate_limit_fields(status: &RateLimitStatus) -> (String, String) {
    let name = status.name.as_str();
    (
        format!(
            "\"{name}\";q={};w={}",
            status.limit,
            ceil_secs(status.window).max(1)
        ),
        format!(
            "\"{name}\";r={};t={}",
            status.remaining,
            ceil_secs(status.reset)
        ),
    )
}

/// Sets both fields on `headers`.
pub(super) fn insert(headers: &mut HeaderMap, status: &RateLimitStatus) {
    let (policy, current) = rate_limit_fields(status);
    if let (Ok(p), Ok(c)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&current),
    ) {
        headers.insert(RATELIMIT_POLICY, p);
        headers.insert(RATELIMIT, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::LimitName;
    use std::time::Duration;

    #[test]
    fn fields_follow_the_draft_syntax() {
        let status = RateLimitStatus {
            name: LimitName::new("publish").unwrap(),
            limit: 10,
            window: Duration::from_secs(3600),
            remaining: 0,
            reset: Duration::from_millis(119_001),
        };
        let (p, c) = rate_limit_fields(&status);
        assert_eq!(p, "\"publish\";q=10;w=3600");
        assert_eq!(c, "\"publish\";r=0;t=120");
    }
}
