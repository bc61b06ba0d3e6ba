//! Token parsing never panics, whatever parses has the documented shape,
//! and `TokenFormat::parse` accepts exactly what a reference reading of
//! the documented format accepts (`<prefix>_<env>_<61 letters and digits>`,
//! the last 6 the base62 CRC32 of everything before them), under prefixes
//! of 1 to 16 characters. Half the inputs get their checksum fixed up, so
//! the accepting path is reached as often as the refusing one.
#![no_main]

use keyward::TokenFormat;
use libfuzzer_sys::fuzz_target;

const PREFIXES: [&str; 5] = ["mkh", "a", "abcdefghijklmnop", "mk", "mkhx"];
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62(mut n: u32) -> String {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

/// The documented format, read the plain way: `(environment, id, secret)`.
fn reference<'a>(prefix: &str, s: &'a str, max_len: usize) -> Option<(&'a str, &'a str, &'a str)> {
    if s.is_empty() || s.len() > max_len {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let rest = s.strip_prefix(prefix)?.strip_prefix('_')?;
    let (env, body) = rest.split_once('_')?;
    if env != "live" && env != "test" {
        return None;
    }
    if body.contains('_') || body.len() != TokenFormat::BODY_LEN {
        return None;
    }
    let (signed, sum) = s.split_at(s.len() - TokenFormat::CHECKSUM_LEN);
    if base62(crc32fast::hash(signed.as_bytes())) != sum {
        return None;
    }
    let id = &body[..TokenFormat::KEY_ID_LEN];
    let secret = &body[TokenFormat::KEY_ID_LEN..TokenFormat::KEY_ID_LEN + TokenFormat::SECRET_LEN];
    Some((env, id, secret))
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let prefix = PREFIXES[usize::from(select & 0x7f) % PREFIXES.len()];
    let format = TokenFormat::new(prefix, &["live", "test"]).expect("format");
    let mut s = s.to_owned();
    let cut = s.len().saturating_sub(TokenFormat::CHECKSUM_LEN);
    if select & 0x80 != 0 && s.len() > TokenFormat::CHECKSUM_LEN && s.is_char_boundary(cut) {
        let crc = crc32fast::hash(&s.as_bytes()[..cut]);
        s.truncate(cut);
        s.push_str(&base62(crc));
    }
    let parsed = format.parse(&s);
    let expected = reference(prefix, &s, format.max_len());
    assert_eq!(parsed.is_ok(), expected.is_some(), "{prefix} {s:?}: {parsed:?}");
    if let (Ok(parsed), Some((env, id, secret))) = (parsed, expected) {
        assert!(s.len() <= format.max_len());
        assert!(s.starts_with(prefix) && s[prefix.len()..].starts_with('_'));
        assert_eq!(parsed.environment(), env);
        assert_eq!(parsed.key_id(), id);
        assert_eq!(parsed.expose_secret(), secret);
        assert_eq!(
            s.len(),
            prefix.len() + 1 + env.len() + 1 + TokenFormat::BODY_LEN
        );
    }
});
