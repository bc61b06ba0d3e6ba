//! The ground floor: the ids every other module speaks ([`KeyId`],
//! [`OwnerId`], [`Environment`], the application's [`ExternalId`]) and the
//! error of a value that does not fit one ([`InvalidValue`]).
//!
//! This module imports nothing from the rest of the crate: every other module
//! may import it, and it never imports them back.

use rand::distr::Alphanumeric;
use rand::rngs::OsRng;
use rand::{Rng, TryRngCore};
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of a generated key id, in characters.
pub(crate) const KEY_ID_LEN: usize = 12;
/// Longest environment tag.
pub(crate) const MAX_ENVIRONMENT_LEN: usize = 16;
/// Longest key id accepted anywhere (generated ids are [`TokenFormat::KEY_ID_LEN`](crate::TokenFormat::KEY_ID_LEN) long).
pub(crate) const MAX_KEY_ID_LEN: usize = 64;
/// Longest owner id.
pub(crate) const MAX_OWNER_LEN: usize = 128;
/// Longest external id.
pub(crate) const MAX_EXTERNAL_ID_LEN: usize = 128;

/// A configuration value (prefix, environment, key id, owner, name) was invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// The value is empty.
    #[error("{field} is empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// The value is longer than allowed.
    #[error("{field} is {len} characters long, the maximum is {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The value holds a character it may not hold.
    #[error("{field} contains the character {ch:?}, allowed: {allowed}")]
    BadCharacter {
        /// Which field.
        field: &'static str,
        /// The first character that is not allowed.
        ch: char,
        /// A description of the allowed characters.
        allowed: &'static str,
    },
}

pub(crate) fn check_chars(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), InvalidValue> {
    if value.is_empty() {
        return Err(InvalidValue::Empty { field });
    }
    // No more bytes than `max`: no more characters either, nothing to
    // count (ids are checked on every denial that names one).
    if value.len() > max {
        let len = value.chars().count();
        if len > max {
            return Err(InvalidValue::TooLong { field, len, max });
        }
    }
    if let Some(ch) = value.chars().find(|c| !ok(*c)) {
        return Err(InvalidValue::BadCharacter { field, ch, allowed });
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        // `SmolStr` (the `smol_str` crate): up to 23 bytes inline (every
        // generated key id, most owners, every environment), longer ones in
        // one shared allocation (a clone is O(1)). A cached key's id and
        // owner are held by its compiled policy, its usage cell and the
        // usage tracker's map, and a denial names the id it refused: as
        // `Box<str>` each was a heap copy (issue 14: bytes per cached key,
        // and an allocation per denial).
        pub struct $name(smol_str::SmolStr);

        impl $name {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                String::from(v.0.as_str())
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                $name::new(&s)
            }
        }
        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                $name::new(s)
            }
        }
    };
}

string_newtype!(
    /// An environment tag such as `live` or `test`: 1 to 16 lowercase ASCII letters or digits.
    ///
    /// ```
    /// use keyward::Environment;
    /// assert!(Environment::new("live").is_ok());
    /// assert!(Environment::new("Live").is_err());
    /// ```
    Environment
);

impl Environment {
    /// Longest environment tag, in characters.
    pub const MAX_LEN: usize = MAX_ENVIRONMENT_LEN;

    /// Validates and wraps an environment tag.
    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        check_chars(
            "environment",
            s,
            MAX_ENVIRONMENT_LEN,
            "lowercase ASCII letters and digits",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        )?;
        Ok(Self(smol_str::SmolStr::new(s)))
    }
}

string_newtype!(
    /// The public id of a key: the store's lookup key, shown in listings and logs.
    ///
    /// Generated ids are [`TokenFormat::KEY_ID_LEN`](crate::TokenFormat::KEY_ID_LEN) random base62 characters; ids of
    /// imported keys may be up to [`KeyId::MAX_LEN`] ASCII letters and digits.
    KeyId
);

impl KeyId {
    /// Longest key id accepted anywhere, in characters (generated ids are
    /// [`TokenFormat::KEY_ID_LEN`](crate::TokenFormat::KEY_ID_LEN) long).
    pub const MAX_LEN: usize = MAX_KEY_ID_LEN;

    /// Validates and wraps a key id.
    ///
    /// ```
    /// use keyward::KeyId;
    /// assert!(KeyId::new("Q2x8bV0aP1rT").is_ok());
    /// assert!(KeyId::new("no spaces").is_err());
    /// ```
    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        // The common case in one pass over the bytes (every denial that
        // names a key makes one); the error, when there is one, from
        // `check_chars`.
        if short_alphanumeric(s.as_bytes()) {
            // At most 16 bytes, so inline (`new_inline` takes up to 23)
            // without `SmolStr::new`'s search for a shared whitespace string.
            return Ok(Self(smol_str::SmolStr::new_inline(s)));
        }
        if !s.is_empty()
            && s.len() <= MAX_KEY_ID_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Ok(Self(smol_str::SmolStr::new(s)));
        }
        check_chars(
            "key id",
            s,
            MAX_KEY_ID_LEN,
            "ASCII letters and digits",
            |c| c.is_ascii_alphanumeric(),
        )?;
        Ok(Self(smol_str::SmolStr::new(s)))
    }

    /// A fresh random id of [`TokenFormat::KEY_ID_LEN`](crate::TokenFormat::KEY_ID_LEN) characters from the OS generator.
    pub fn generate() -> Self {
        Self(smol_str::SmolStr::new(random_base62(KEY_ID_LEN).as_str()))
    }
}

/// A string of at most 16 bytes packed into a `u128` (zero-padded), or 0
/// when longer. For a string without NUL bytes (a validated owner or
/// environment) the length is where the padding starts, so
/// [`same_as_tag`] compares an untrusted string with it exactly: a check
/// compares one inline word instead of following a pointer to a heap
/// string that is likely cold in the CPU caches (issue 14).
#[inline]
pub(crate) fn tag16(s: &str) -> u128 {
    let b = s.as_bytes();
    if b.len() > 16 {
        return 0;
    }
    packed(b)
}

/// The (at most 16) bytes of `b` as a little-endian number, zero-padded.
///
/// Read as two overlapping words (whose common bytes are the same bytes,
/// so `|` keeps them) rather than copied into a padded array: a copy of
/// unknown length is a `memcpy` call whose stores the compare after it
/// cannot take from the store buffer. In `same_as_tag` that stall was
/// about a tenth of a cached check's time in the verifier under `perf`
/// (issue 14, 2026-12-03), as it was in [`short_alphanumeric`].
#[inline]
fn packed(b: &[u8]) -> u128 {
    let len = b.len();
    debug_assert!(len <= 16);
    if let (Some(head), Some(tail)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        let head = u128::from(u64::from_le_bytes(*head));
        head | u128::from(u64::from_le_bytes(*tail)) << (8 * (len - 8))
    } else if let (Some(head), Some(tail)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        let head = u128::from(u32::from_le_bytes(*head));
        head | u128::from(u32::from_le_bytes(*tail)) << (8 * (len - 4))
    } else {
        b.iter().rev().fold(0, |word, &x| word << 8 | u128::from(x))
    }
}

/// Whether `s` is the string packed in `tag` (non-zero, from a string
/// without NUL bytes): same packed bytes and same length, so an input with
/// trailing NUL bytes is not taken for the shorter string.
#[inline]
pub(crate) fn same_as_tag(s: &str, tag: u128) -> bool {
    let len = 16 - (tag.leading_zeros() / 8) as usize;
    s.len() == len && tag16(s) == tag
}

/// Non-zero when a byte of `bytes` is not `[A-Za-z0-9]`.
#[inline]
pub(crate) fn non_alphanumeric<const N: usize>(bytes: &[u8; N]) -> u8 {
    bytes
        .iter()
        .map(|&b| {
            let digit = b.wrapping_sub(b'0') < 10;
            // `| 0x20` takes `A-Z` to `a-z`; no byte outside the two
            // ranges lands in `a-z`.
            let letter = (b | 0x20).wrapping_sub(b'a') < 26;
            u8::from(!(digit | letter))
        })
        .fold(0, |bad, b| bad | b)
}

/// Whether `b` is 1 to 16 ASCII letters and digits (every generated key
/// id): padded to 16 bytes with `'0'` and tested in one vector, where a
/// byte-by-byte test with early exit costs about 70 instructions for 12
/// bytes (issue 14: each refusal that names a key makes a [`KeyId`]).
///
/// An id of 8 to 16 bytes (a generated one has 12) is read as two
/// overlapping 8-byte words rather than copied into the padded array: a
/// copy of unknown length is a `memcpy` call whose stores the vector load
/// after it cannot take from the store buffer, a stall measured as a
/// tenth of an unknown-id refusal under `perf`.
#[inline]
fn short_alphanumeric(b: &[u8]) -> bool {
    let len = b.len();
    let padded = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(head), Some(tail)) if len <= 16 => {
            let head = u128::from(u64::from_le_bytes(*head));
            let tail = u128::from(u64::from_le_bytes(*tail)) << (8 * (len - 8));
            // The bytes both words hold are the same bytes: `|` keeps them.
            let word = head | tail;
            let mask = u128::MAX >> (8 * (16 - len));
            ((word & mask) | (u128::from_le_bytes([b'0'; 16]) & !mask)).to_le_bytes()
        }
        _ if (1..8).contains(&len) => {
            let mut padded = [b'0'; 16];
            padded[..len].copy_from_slice(b);
            padded
        }
        _ => return false,
    };
    non_alphanumeric(&padded) == 0
}

pub(crate) fn random_base62(len: usize) -> Zeroizing<String> {
    let mut rng = OsRng.unwrap_err();
    let mut s = Zeroizing::new(String::with_capacity(len));
    for _ in 0..len {
        s.push(char::from(rng.sample(Alphanumeric)));
    }
    s
}

string_newtype!(
    /// The owner of keys and resources: a publisher, an organization, a user.
    /// 1 to 128 characters, no control characters.
    ///
    /// ```
    /// use keyward::OwnerId;
    /// assert!(OwnerId::new("contoso").is_ok());
    /// assert!(OwnerId::new("").is_err());
    /// ```
    OwnerId
);

impl OwnerId {
    /// Longest owner id, in characters.
    pub const MAX_LEN: usize = MAX_OWNER_LEN;

    /// Validates and wraps an owner id.
    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        check_text("owner", s, MAX_OWNER_LEN)?;
        Ok(Self(smol_str::SmolStr::new(s)))
    }
}

string_newtype!(
    /// An id the application chose for a key (its own record's id, a CI
    /// job, a customer's reference): 1 to 128 characters, not blank, no
    /// control characters. Compared exactly (case-sensitive).
    ///
    /// Not unique: several keys of an owner may share one (a rotated key and
    /// its successor do, during the grace period). Listing by external id
    /// ([`ListQuery::external_id`](crate::store::ListQuery::external_id))
    /// returns all of them, ordered by key id. It is shown to whoever can
    /// list the key: never a secret.
    ///
    /// ```
    /// use keyward::ids::ExternalId;
    /// assert!(ExternalId::new("ci-pipeline/4211").is_ok());
    /// assert!(ExternalId::new("").is_err());
    /// assert!(ExternalId::new("tab\there").is_err());
    /// ```
    ExternalId
);

impl ExternalId {
    /// Longest external id, in characters.
    pub const MAX_LEN: usize = MAX_EXTERNAL_ID_LEN;

    /// Validates and wraps an external id.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] naming the field `external_id`: `Empty` when empty
    /// or blank, `TooLong` past [`ExternalId::MAX_LEN`], `BadCharacter` for
    /// a control character.
    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        check_text("external_id", s, MAX_EXTERNAL_ID_LEN)?;
        Ok(Self(smol_str::SmolStr::new(s)))
    }
}

/// Checks a free-text field: not empty or blank, not too long, no control characters.
pub(crate) fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), InvalidValue> {
    if s.trim().is_empty() {
        return Err(InvalidValue::Empty { field });
    }
    let len = s.chars().count();
    if len > max {
        return Err(InvalidValue::TooLong { field, len, max });
    }
    if let Some(ch) = s.chars().find(|c| c.is_control()) {
        return Err(InvalidValue::BadCharacter {
            field,
            ch,
            allowed: "printable characters",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overlapping reads give the zero-padded copy, for every length
    /// up to 16 and every byte value at every position; the tag of a
    /// longer string is 0, and a tag is found only for its own string.
    #[test]
    fn a_packed_string_is_its_zero_padded_bytes() {
        for len in 0..=16 {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut bytes: Vec<u8> = (1..=len as u8).collect();
                    bytes[at] = b;
                    let mut padded = [0u8; 16];
                    padded[..len].copy_from_slice(&bytes);
                    assert_eq!(
                        packed(&bytes),
                        u128::from_le_bytes(padded),
                        "{len} {at} {b}"
                    );
                }
            }
        }
        assert_eq!(tag16(&"a".repeat(17)), 0);
        let tag = tag16("live");
        assert!(same_as_tag("live", tag));
        assert!(!same_as_tag("live\0", tag));
        assert!(!same_as_tag("liv", tag));
        assert!(!same_as_tag("lime", tag));
        let tag = tag16("publisher-000042");
        assert!(same_as_tag("publisher-000042", tag));
        assert!(!same_as_tag("publisher-000043", tag));
        assert!(!same_as_tag("ublisher-000042", tag));
    }

    /// The one-vector test is the byte-by-byte one, for every length from
    /// 0 to 17 and every byte value at every position.
    #[test]
    fn the_short_id_test_is_ascii_alphanumeric() {
        for len in 0..=17 {
            let expected_len_ok = (1..=16).contains(&len);
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut id = vec![b'x'; len];
                    id[at] = b;
                    let expected = expected_len_ok && b.is_ascii_alphanumeric();
                    assert_eq!(short_alphanumeric(&id), expected, "{len} {at} {b}");
                }
            }
            assert_eq!(
                short_alphanumeric(&vec![b'Z'; len]),
                expected_len_ok,
                "{len}"
            );
        }
    }

    /// `KeyId::new` takes exactly the ids of 1 to 64 ASCII letters and
    /// digits, on either side of the 16-byte fast path.
    #[test]
    fn key_ids_are_1_to_64_letters_and_digits() {
        for len in 0..=66 {
            let id = "a9".repeat(40)[..len].to_owned();
            assert_eq!(KeyId::new(&id).is_ok(), (1..=64).contains(&len), "{len}");
            for bad in ["-", "_", "é", "\0", " "] {
                if len > 0 && len < 60 {
                    let with = format!("{}{bad}", &id[..len - 1]);
                    assert!(KeyId::new(&with).is_err(), "{with:?}");
                }
            }
        }
    }
}
