//! The token format: `<prefix>_<env>_<key id><secret><checksum>`.
//!
//! ```text
//! mkh_live_Q2x8bV0aP1rT  d3Kf...43 chars...9a  1kZp0A
//!  │    │       │               │                 └ CRC32 of everything before it, 6 base62 chars
//!  │    │       │               └ 256-bit secret: 43 random base62 characters (43 × log2 62 ≈ 256.03 bits)
//!  │    │       └ public key id: 12 random base62 characters
//!  │    └ environment tag, chosen by the application (`live`, `test`, ...)
//!  └ prefix chosen by the application, so secret scanners can find leaked keys
//! ```
//!
//! Only `[A-Za-z0-9_]` appears, so a double click selects the whole token. The
//! checksum lets a typo or a random string be refused without touching the
//! store or running argon2. A token longer than [`TokenFormat::max_len`] is
//! refused before any of it is read.

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::ids::{
    Environment, InvalidValue, KEY_ID_LEN, KeyId, check_chars, non_alphanumeric, random_base62,
    tag16,
};

/// Length of the secret part, in characters (base62, 256 bits of entropy).
pub(crate) const SECRET_LEN: usize = 43;
/// Length of the checksum, in characters (base62 of a CRC32).
pub(crate) const CHECKSUM_LEN: usize = 6;
/// Length of the part after `<prefix>_<env>_`.
pub(crate) const BODY_LEN: usize = KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// Longest prefix an application may choose.
pub(crate) const MAX_PREFIX_LEN: usize = 16;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a token (or a piece of one) could not be parsed.
///
/// None of the variants carries any part of the token, so the error can be
/// logged without leaking what the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token was empty.
    #[error("the token is empty")]
    Empty,
    /// The token is longer than any token this format can produce; it was not read.
    #[error("the token is {len} bytes long, more than the maximum of {max}")]
    TooLong {
        /// Length of what was received, in bytes.
        len: usize,
        /// The longest token the format accepts.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_]` (or outside the part's own alphabet).
    #[error("the token has a character that is not allowed at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// The token does not start with the application's prefix.
    #[error("the token does not start with the expected prefix")]
    BadPrefix,
    /// The environment tag is not one the application configured.
    #[error("the token names an unknown environment")]
    UnknownEnvironment,
    /// The part after the environment has the wrong length.
    #[error("the token body is {found} characters long, expected {expected}")]
    BadLength {
        /// The length the format requires.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// The CRC32 checksum does not match: a typo or a made-up string.
    #[error("the token checksum does not match")]
    BadChecksum,
}

/// A full API key: the one value that grants access.
///
/// It is returned exactly once, by create, regenerate and rotate. It is wiped
/// from memory when dropped, prints as `[REDACTED]` in `Debug` and `Display`,
/// cannot be serialized, and gives up its value only through
/// [`Token::expose_secret`], meant for the one-time display to its owner.
///
/// ```
/// use keyward::{Environment, KeyId, TokenFormat};
/// let format = TokenFormat::new("mkh", &["live", "test"]).unwrap();
/// let live = Environment::new("live").unwrap();
/// let token = format.generate(&live, &KeyId::generate());
/// assert_eq!(format!("{token:?}"), "Token([REDACTED])");
/// assert!(token.expose_secret().starts_with("mkh_live_"));
/// ```
pub struct Token(Zeroizing<String>);

impl Token {
    /// The full key, for the one-time display to its owner. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([REDACTED])")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The pieces of a token that parsed and passed its checksum. Borrows the input.
///
/// `Debug` shows the environment and key id, never the secret.
#[derive(Clone, Copy)]
pub struct ParsedToken<'a> {
    environment: &'a str,
    key_id: &'a str,
    secret: &'a str,
}

impl<'a> ParsedToken<'a> {
    /// The environment tag.
    pub fn environment(&self) -> &'a str {
        self.environment
    }
    /// The public key id.
    pub fn key_id(&self) -> &'a str {
        self.key_id
    }
    /// The secret part. Never log it.
    pub fn expose_secret(&self) -> &'a str {
        self.secret
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("environment", &self.environment)
            .field("key_id", &self.key_id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// The application's token format: its prefix and its environments.
///
/// ```
/// use keyward::{Environment, KeyId, TokenFormat, token::TokenError};
/// let format = TokenFormat::new("mkh", &["live", "test"]).unwrap();
/// let token = format.generate(&Environment::new("test").unwrap(), &KeyId::generate());
/// let parsed = format.parse(token.expose_secret()).unwrap();
/// assert_eq!(parsed.environment(), "test");
///
/// // A one-character typo is caught by the checksum, with no store access.
/// let mut typo = token.expose_secret().to_string();
/// let last = typo.pop().unwrap();
/// typo.push(if last == 'a' { 'b' } else { 'a' });
/// assert_eq!(format.parse(&typo).unwrap_err(), TokenError::BadChecksum);
/// ```
#[derive(Debug, Clone)]
pub struct TokenFormat {
    prefix: Box<str>,
    environments: Vec<Environment>,
    max_len: usize,
    /// A fresh CRC32 state with the CPU's fastest implementation chosen
    /// once: `crc32fast::hash` asks the CPU's features on every call
    /// (issue 14: about 15 instructions of a 700-instruction bad-checksum
    /// refusal).
    crc: crc32fast::Hasher,
    /// Each environment's length and [`tag16`], in the order of
    /// `environments`: the one-pass parse compares a token's environment
    /// as one word, with no call to `memcmp` (issue 14).
    env_tags: Box<[(usize, u128)]>,
    /// The prefix's [`tag16`]: the one-pass parse compares a token's first
    /// 16 bytes, masked to the prefix's length, with it, where
    /// `starts_with` called `memcmp` (issue 14: 6 % of a bad-checksum
    /// refusal under `perf`).
    prefix_tag: u128,
}

impl TokenFormat {
    /// Length of a generated key id, in characters.
    pub const KEY_ID_LEN: usize = KEY_ID_LEN;
    /// Length of the secret part, in characters (base62, 256 bits of entropy).
    pub const SECRET_LEN: usize = SECRET_LEN;
    /// Length of the checksum, in characters (base62 of a CRC32).
    pub const CHECKSUM_LEN: usize = CHECKSUM_LEN;
    /// Length of the part after `<prefix>_<env>_`: key id, secret and checksum.
    pub const BODY_LEN: usize = BODY_LEN;
    /// Longest prefix an application may choose, in characters.
    pub const MAX_PREFIX_LEN: usize = MAX_PREFIX_LEN;
}

impl TokenFormat {
    /// A format with this prefix (1 to 16 lowercase ASCII letters or digits)
    /// and these environment tags (at least one).
    pub fn new(prefix: &str, environments: &[&str]) -> Result<Self, InvalidValue> {
        check_chars(
            "token prefix",
            prefix,
            MAX_PREFIX_LEN,
            "lowercase ASCII letters and digits",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        )?;
        if environments.is_empty() {
            return Err(InvalidValue::Empty {
                field: "environments",
            });
        }
        let environments = environments
            .iter()
            .map(|e| Environment::new(e))
            .collect::<Result<Vec<_>, _>>()?;
        let longest_env = environments
            .iter()
            .map(|e| e.as_str().len())
            .max()
            .unwrap_or(0);
        Ok(Self {
            max_len: prefix.len() + 1 + longest_env + 1 + BODY_LEN,
            prefix: prefix.into(),
            prefix_tag: tag16(prefix),
            env_tags: env_tags(&environments),
            environments,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The configured environments.
    pub fn environments(&self) -> &[Environment] {
        &self.environments
    }

    /// Looks up a configured environment by tag.
    pub fn environment(&self, tag: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.as_str() == tag)
    }

    /// The longest token this format produces; anything longer is refused unread.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The regular expression a secret scanner (GitHub secret scanning,
    /// gitleaks, trufflehog) can use to find leaked keys of this format.
    ///
    /// ```
    /// use keyward::TokenFormat;
    /// let format = TokenFormat::new("mkh", &["live", "test"]).unwrap();
    /// assert_eq!(format.scanner_regex(), r"\bmkh_(?:live|test)_[A-Za-z0-9]{61}\b");
    /// ```
    pub fn scanner_regex(&self) -> String {
        let envs: Vec<&str> = self.environments.iter().map(|e| e.as_str()).collect();
        format!(
            r"\b{}_(?:{})_[A-Za-z0-9]{{{}}}\b",
            self.prefix,
            envs.join("|"),
            BODY_LEN
        )
    }

    /// Generates a new token for this key id with a fresh 256-bit secret from
    /// the operating system's generator.
    ///
    /// The id should come from [`KeyId::generate`]: a token only parses with
    /// a [`TokenFormat::KEY_ID_LEN`]-character id.
    pub fn generate(&self, environment: &Environment, id: &KeyId) -> Token {
        let secret = random_base62(SECRET_LEN);
        self.assemble(environment, id, &secret)
    }

    fn assemble(&self, environment: &Environment, id: &KeyId, secret: &str) -> Token {
        let mut s = Zeroizing::new(String::with_capacity(self.max_len));
        s.push_str(&self.prefix);
        s.push('_');
        s.push_str(environment.as_str());
        s.push('_');
        s.push_str(id.as_str());
        s.push_str(secret);
        let sum = encode_checksum(self.crc32(s.as_bytes()));
        s.extend(sum.iter().map(|b| char::from(*b)));
        Token(s)
    }

    /// Rebuilds the full token of an "application ID + secret" pair (for
    /// example from HTTP Basic `key_id:secret`), with its checksum, so the
    /// pair is checked exactly like the token.
    ///
    /// The key id must be [`TokenFormat::KEY_ID_LEN`] and the secret [`TokenFormat::SECRET_LEN`] ASCII
    /// letters or digits, and the environment one of this format's. The
    /// errors never contain the input.
    ///
    /// ```
    /// use keyward::{Environment, KeyId, TokenFormat, token::TokenError};
    /// let format = TokenFormat::new("mkh", &["live", "test"]).unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let token = format.generate(&live, &KeyId::generate());
    /// let parsed = format.parse(token.expose_secret()).unwrap();
    /// let rebuilt = format.from_pair(&live, parsed.key_id(), parsed.expose_secret()).unwrap();
    /// assert_eq!(rebuilt.expose_secret(), token.expose_secret());
    /// assert_eq!(format.from_pair(&live, "short", "x").unwrap_err(),
    ///            TokenError::BadLength { expected: 12, found: 5 });
    /// ```
    pub fn from_pair(
        &self,
        environment: &Environment,
        key_id: &str,
        secret: &str,
    ) -> Result<Token, TokenError> {
        if self.environment(environment.as_str()).is_none() {
            return Err(TokenError::UnknownEnvironment);
        }
        for (part, expected, offset) in [(key_id, KEY_ID_LEN, 0), (secret, SECRET_LEN, KEY_ID_LEN)]
        {
            if part.is_empty() {
                return Err(TokenError::Empty);
            }
            if part.len() != expected {
                return Err(TokenError::BadLength {
                    expected,
                    found: part.len(),
                });
            }
            if let Some(i) = part.bytes().position(|b| !b.is_ascii_alphanumeric()) {
                return Err(TokenError::BadCharacter {
                    position: offset + i,
                });
            }
        }
        let id = KeyId::new(key_id).map_err(|_| TokenError::BadCharacter { position: 0 })?;
        Ok(self.assemble(environment, &id, secret))
    }

    /// The same environments under another (already validated) prefix: the
    /// format of session tokens.
    pub(crate) fn with_prefix(&self, prefix: &str) -> TokenFormat {
        let longest_env = self
            .environments
            .iter()
            .map(|e| e.as_str().len())
            .max()
            .unwrap_or(0);
        TokenFormat {
            max_len: prefix.len() + 1 + longest_env + 1 + BODY_LEN,
            prefix: prefix.into(),
            prefix_tag: tag16(prefix),
            environments: self.environments.clone(),
            crc: self.crc.clone(),
            env_tags: self.env_tags.clone(),
        }
    }

    /// Whether `token` starts with this format's `<prefix>_`: a cheap test
    /// of which kind of token it is, before parsing.
    pub fn has_prefix(&self, token: &str) -> bool {
        token
            .strip_prefix(&*self.prefix)
            .is_some_and(|rest| rest.starts_with('_'))
    }

    /// Parses a token: length bound first, then characters, prefix,
    /// environment, body length and checksum. Reads nothing from any store.
    ///
    /// A well-formed token is read in one pass (prefix, environment,
    /// body characters, then the CRC); anything else is parsed again step
    /// by step, so the error names the first thing that was wrong.
    #[inline]
    pub fn parse<'a>(&self, token: &'a str) -> Result<ParsedToken<'a>, TokenError> {
        match self.parse_well_formed(token) {
            Some(parsed) => parsed,
            None => self.parse_stepwise(token),
        }
    }

    /// The CRC32 of `bytes` (`crc32fast::hash` without its feature check).
    #[inline]
    fn crc32(&self, bytes: &[u8]) -> u32 {
        let mut crc = self.crc.clone();
        crc.update(bytes);
        crc.finalize()
    }

    /// The one-pass parse of a token whose shape is right: `None` when
    /// anything but the checksum is wrong (the caller then finds which).
    /// Only `BadChecksum` is returned from here: every check the step-wise
    /// parse makes before the checksum passed.
    #[inline(always)]
    fn parse_well_formed<'a>(&self, token: &'a str) -> Option<Result<ParsedToken<'a>, TokenError>> {
        let bytes = token.as_bytes();
        // A prefix has 1 to 16 bytes, none of them NUL: equal masked words
        // are equal strings. Every well-formed token is longer than 16.
        let prefix_len = self.prefix.len();
        let head = u128::from_le_bytes(*bytes.first_chunk::<16>()?);
        let mask = u128::MAX
            .checked_shr(8 * 16usize.saturating_sub(prefix_len) as u32)
            .unwrap_or(0);
        if bytes.len() > self.max_len
            || head & mask != self.prefix_tag
            || bytes.get(prefix_len) != Some(&b'_')
        {
            return None;
        }
        let env_start = prefix_len + 1;
        let body_start = bytes.len().checked_sub(BODY_LEN)?;
        let env_end = body_start.checked_sub(1)?;
        if env_end <= env_start || bytes[env_end] != b'_' {
            return None;
        }
        let env = token.get(env_start..env_end)?;
        // The environment as one word: the 16 bytes from its start (the
        // body follows it, so they exist) with those past its end masked
        // off, compared with each configured tag's word and length. A
        // configured tag has at most 16 bytes, none of them NUL, so equal
        // words of equal length are equal strings.
        let len = env.len();
        if len > Environment::MAX_LEN {
            return None;
        }
        let window = bytes.get(env_start..)?.first_chunk::<16>()?;
        let mask = u128::MAX.checked_shr(8 * (16 - len) as u32).unwrap_or(0);
        let word = u128::from_le_bytes(*window) & mask;
        if !self.env_tags.contains(&(len, word)) {
            return None;
        }
        let body = bytes.get(body_start..)?.first_chunk::<BODY_LEN>()?;
        if !body_alphanumeric(body) {
            return None;
        }
        let (signed, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if decode_checksum(sum) != u64::from(self.crc32(signed)) {
            return Some(Err(TokenError::BadChecksum));
        }
        let secret_start = body_start + KEY_ID_LEN;
        Some(Ok(ParsedToken {
            environment: env,
            key_id: token.get(body_start..secret_start)?,
            secret: token.get(secret_start..secret_start + SECRET_LEN)?,
        }))
    }

    /// The step-by-step parse, for the precise error.
    fn parse_stepwise<'a>(&self, token: &'a str) -> Result<ParsedToken<'a>, TokenError> {
        let bytes = token.as_bytes();
        if bytes.is_empty() {
            return Err(TokenError::Empty);
        }
        if bytes.len() > self.max_len {
            return Err(TokenError::TooLong {
                len: bytes.len(),
                max: self.max_len,
            });
        }
        if let Some(position) = bytes.iter().position(|b| !TOKEN_BYTES[usize::from(*b)]) {
            return Err(TokenError::BadCharacter { position });
        }
        let rest = token
            .strip_prefix(&*self.prefix)
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(TokenError::BadPrefix)?;
        let (env, body) = rest.split_once('_').ok_or(TokenError::UnknownEnvironment)?;
        if self.environment(env).is_none() {
            return Err(TokenError::UnknownEnvironment);
        }
        if let Some(i) = body.find('_') {
            return Err(TokenError::BadCharacter {
                position: token.len() - body.len() + i,
            });
        }
        if body.len() != BODY_LEN {
            return Err(TokenError::BadLength {
                expected: BODY_LEN,
                found: body.len(),
            });
        }
        let (signed, sum) = token.split_at(token.len() - CHECKSUM_LEN);
        let expected = encode_checksum(self.crc32(signed.as_bytes()));
        if expected != sum.as_bytes() {
            return Err(TokenError::BadChecksum);
        }
        Ok(ParsedToken {
            environment: env,
            key_id: &body[..KEY_ID_LEN],
            secret: &body[KEY_ID_LEN..KEY_ID_LEN + SECRET_LEN],
        })
    }
}

/// Which bytes a token may hold (`[A-Za-z0-9_]`): one table lookup per
/// byte on the hot path instead of a chain of range tests.
static TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    table
};

// `parse_well_formed` and `tag16` pack an environment and a prefix into
// 16 bytes.
const _: () = assert!(Environment::MAX_LEN <= 16 && MAX_PREFIX_LEN <= 16);

/// [`TokenFormat::env_tags`] of `environments`.
fn env_tags(environments: &[Environment]) -> Box<[(usize, u128)]> {
    environments
        .iter()
        .map(|e| (e.as_str().len(), tag16(e.as_str())))
        .collect()
}

/// Whether every byte of a token's body (key id, secret, checksum:
/// [`BODY_LEN`] bytes) is `[A-Za-z0-9]`. Branch-free per byte, with no
/// early exit and no table, over two fixed-size windows that together
/// cover the body (the first 48 bytes and the last 16, overlapping): with
/// the lengths known, the compiler tests 16 bytes per instruction and
/// leaves no byte-by-byte tail (issue 14: the parse is on every request;
/// 134 → 35 instructions a token under callgrind).
#[inline]
fn body_alphanumeric(body: &[u8; BODY_LEN]) -> bool {
    const HEAD: usize = 48;
    const TAIL: usize = 16;
    const _: () = assert!(HEAD + TAIL >= BODY_LEN && HEAD <= BODY_LEN && TAIL <= BODY_LEN);
    let (head, _) = body
        .split_first_chunk::<HEAD>()
        .unwrap_or((&[b'_'; HEAD], &[]));
    let (_, tail) = body
        .split_last_chunk::<TAIL>()
        .unwrap_or((&[], &[b'_'; TAIL]));
    non_alphanumeric(head) | non_alphanumeric(tail) == 0
}

/// The value of base62 digits (for `[A-Za-z0-9]` only; 0 elsewhere).
static BASE62_VALUES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 62 {
        table[BASE62[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The number 6 base62 digits (most significant first) stand for, to
/// compare with a CRC32: for `[A-Za-z0-9]` digits it equals the CRC
/// exactly when [`encode_checksum`] of the CRC gives these digits (a
/// fixed-width numeral is unique), without encoding and comparing bytes.
#[inline]
fn decode_checksum(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |n, &d| {
        n * 62 + u64::from(BASE62_VALUES[usize::from(d)])
    })
}

/// Encodes a CRC32 as 6 base62 digits, most significant first (62^6 > 2^32).
fn encode_checksum(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branch-free body test is `is_ascii_alphanumeric` on every byte,
    /// alone and among good bytes at every position.
    #[test]
    fn the_body_test_is_ascii_alphanumeric() {
        for b in 0..=255u8 {
            for at in 0..BODY_LEN {
                let mut body = [b'a'; BODY_LEN];
                body[at] = b;
                assert_eq!(
                    body_alphanumeric(&body),
                    b.is_ascii_alphanumeric(),
                    "{b} at {at}"
                );
            }
        }
        // Every base62 digit, at every position.
        let mut body = [0u8; BODY_LEN];
        for shift in 0..BASE62.len() {
            for (i, slot) in body.iter_mut().enumerate() {
                *slot = BASE62[(i + shift) % BASE62.len()];
            }
            assert!(body_alphanumeric(&body));
        }
    }

    /// Decoding is the inverse of encoding, so comparing a decoded checksum
    /// with the CRC accepts exactly the digits the encoder writes.
    #[test]
    fn the_checksum_decodes_to_the_crc_it_encodes() {
        for n in [0, 1, 61, 62, 3843, 3844, u32::MAX - 1, u32::MAX]
            .into_iter()
            .chain((0..10_000u32).map(|i| i.wrapping_mul(2_654_435_761)))
        {
            let digits = encode_checksum(n);
            assert_eq!(decode_checksum(&digits), u64::from(n));
            // Any other digit string stands for another number.
            for at in 0..CHECKSUM_LEN {
                let mut other = digits;
                other[at] = if other[at] == b'z' { b'0' } else { b'z' };
                assert_ne!(decode_checksum(&other), u64::from(n));
            }
        }
        // The largest 6 digits stand for more than any CRC.
        assert!(decode_checksum(b"zzzzzz") > u64::from(u32::MAX));
    }

    /// The one-pass parse and the step-wise one agree on every token built
    /// from pieces that are right or wrong in one way.
    #[test]
    fn the_one_pass_parse_agrees_with_the_stepwise_one() {
        let format = TokenFormat::new("mkh", &["live", "test", "t", "sixteen0charsenv"]).unwrap();
        let live = Environment::new("live").unwrap();
        let good = format
            .generate(&live, &KeyId::new("Q2x8bV0aP1rT").unwrap())
            .expose_secret()
            .to_owned();
        let body = &good["mkh_live_".len()..];
        let mut inputs: Vec<String> = vec![
            good.clone(),
            String::new(),
            "mkh".into(),
            "mkh_".into(),
            "mkh_live_".into(),
            format!("mkh__{body}"),
            format!("mkh_t_{body}"),
            format!("mkh_tes_{body}"),
            format!("mkh_Live_{body}"),
            format!("mk_live_{body}"),
            format!("mkhx_live_{body}"),
            format!("mkh_live{body}"),
            format!("mkh_live_{}", &body[1..]),
            format!("mkh_live_{body}0"),
            format!("mkh_live__{}", &body[1..]),
            format!("mkh_live_live_{body}"),
            format!("mkh_test_{body}"),
            format!("{good}{good}"),
            format!("mkh_liv\0_{body}"),
            format!("mkh_live\0_{body}"),
            format!("mkh_t\0_{body}"),
            format!("mkh_\0_{body}"),
            format!("mkh_l\0ve_{body}"),
            format!("mkh_sixteen0charsenv_{body}"),
            format!("mkh_sixteen0charsen_{body}"),
            format!("mkh_sixteen0charsenvx_{body}"),
            format!("mkh_sixteen0charsen\0_{body}"),
        ];
        for i in 0..good.len() {
            for c in ['_', 'a', '0', '-', 'Z', '\0'] {
                let mut t = good.clone().into_bytes();
                t[i] = c as u8;
                inputs.push(String::from_utf8(t).unwrap());
            }
            let mut t = good.clone();
            t.replace_range(i..i + 1, "é");
            inputs.push(t);
        }
        // Every configured environment takes the one-pass path.
        for env in format.environments() {
            let t = format.generate(env, &KeyId::generate());
            let parsed = format.parse_well_formed(t.expose_secret());
            assert!(
                matches!(parsed, Some(Ok(p)) if p.environment() == env.as_str()),
                "{env}"
            );
        }
        for t in &inputs {
            let one = format
                .parse(t)
                .map(|p| format!("{p:?}/{}", p.expose_secret()));
            let step = format
                .parse_stepwise(t)
                .map(|p| format!("{p:?}/{}", p.expose_secret()));
            assert_eq!(one, step, "{t:?}");
        }
    }

    #[test]
    fn checksum_encoding_is_fixed_width_and_distinct() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(62), b"000010");
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }
}
