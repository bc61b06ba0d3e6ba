//! The axum layer's credential parsing (`keyward::axum::read_credential`):
//! arbitrary Authorization and API-key headers never panic, and what is
//! accepted has the documented shape.
//!
//! Input: the first byte's bits say which headers to send (none, one or two
//! Authorization values; none, one or two `x-api-key` values; whether the
//! API-key header is configured); the rest, split at `\n`, gives the values.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use keyward::axum::{CredentialSource, read_credential};
use keyward::{Environment, TokenFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
    let live = Environment::new("live").expect("env");
    let api_key = HeaderName::from_static("x-api-key");
    let mut values = rest.split(|b| *b == b'\n');
    let mut headers = HeaderMap::new();
    let auth_count = flags & 0b11;
    let key_count = (flags >> 2) & 0b11;
    for _ in 0..auth_count.min(2) {
        let Some(v) = values.next() else { break };
        let Ok(v) = HeaderValue::from_bytes(v) else {
            return;
        };
        headers.append(http::header::AUTHORIZATION, v);
    }
    for _ in 0..key_count.min(2) {
        let Some(v) = values.next() else { break };
        let Ok(v) = HeaderValue::from_bytes(v) else {
            return;
        };
        headers.append(api_key.clone(), v);
    }
    let configured = flags & 0b1_0000 != 0;
    let result = read_credential(&headers, configured.then_some(&api_key), &format, &live);
    match result {
        Ok(credential) => {
            let token = credential.expose_secret();
            assert!(!token.is_empty());
            assert_eq!(token, token.trim());
            let expected = format!(
                "RequestCredential {{ source: {:?}, token: \"<redacted>\" }}",
                credential.source()
            );
            assert_eq!(format!("{credential:?}"), expected, "Debug shows no secret");
            match credential.source() {
                CredentialSource::Basic => match credential.pair_key_id() {
                    // A pair in keyward's shape becomes a valid token.
                    None => {
                        let parsed = format
                            .parse(token)
                            .expect("a Basic pair becomes a valid token");
                        assert_eq!(parsed.environment(), "live");
                    }
                    // Any other pair is an imported key's id and secret,
                    // within the limits `Verifier::verify_pair` checks.
                    Some(id) => {
                        assert!(!id.is_empty() && id.len() <= keyward::KeyId::MAX_LEN);
                        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
                        assert!(token.len() <= keyward::verify::MAX_PAIR_SECRET_LEN);
                        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
                    }
                },
                CredentialSource::Bearer => {
                    assert!(headers.contains_key(http::header::AUTHORIZATION))
                }
                CredentialSource::ApiKeyHeader => {
                    assert!(configured && !headers.contains_key(http::header::AUTHORIZATION));
                }
                _ => unreachable!("no other source"),
            }
        }
        Err(rejection) => {
            // Always a 401 challenge, never a 5xx: malformed or missing.
            assert_eq!(rejection.status().as_u16(), 401);
            assert!(
                matches!(rejection.error(), "invalid_token" | "missing_credentials"),
                "{}",
                rejection.error()
            );
            if rejection.error() == "missing_credentials" {
                assert!(!headers.contains_key(http::header::AUTHORIZATION));
            }
        }
    }
});
