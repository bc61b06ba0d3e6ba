//! Token parsing never panics, and whatever parses has the documented shape.
#![no_main]

use keyward::TokenFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
    if let Ok(parsed) = format.parse(s) {
        assert!(s.len() <= format.max_len());
        assert!(s.starts_with("mkh_"));
        assert!(parsed.environment() == "live" || parsed.environment() == "test");
        assert_eq!(parsed.key_id().len(), keyward::TokenFormat::KEY_ID_LEN);
        assert_eq!(
            parsed.expose_secret().len(),
            keyward::TokenFormat::SECRET_LEN
        );
        assert_eq!(
            s.len(),
            4 + parsed.environment().len() + 1 + keyward::TokenFormat::BODY_LEN
        );
    }
});
