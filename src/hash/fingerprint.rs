//! The cache fingerprint: a keyed HMAC-SHA256 of a secret (crate-internal).

use std::fmt;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of a cache fingerprint in bytes.
pub(crate) const FINGERPRINT_LEN: usize = 32;

/// A keyed fingerprint of a secret: HMAC-SHA256 under a random key made when
/// the process starts (or given). The verifier's cache keeps this, never the
/// secret, and compares it in constant time.
pub(crate) struct Fingerprinter {
    mac: Hmac<Sha256>,
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random 256-bit key from the OS generator.
    pub fn random() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.unwrap_err().fill_bytes(&mut *key);
        Self::with_key(&*key)
    }

    /// A fingerprinter with a given key (for benchmarks and tests).
    pub fn with_key(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        Self { mac }
    }

    /// The fingerprint of `secret`.
    pub fn fingerprint(&self, secret: &[u8]) -> [u8; FINGERPRINT_LEN] {
        let mut mac = self.mac.clone();
        mac.update(secret);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter([REDACTED])")
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn a_fingerprinter_prints_no_key_and_depends_on_it() {
        let printed = format!("{:?}", Fingerprinter::with_key(b"fingerprint-key"));
        assert_eq!(printed, "Fingerprinter([REDACTED])");
        let a = Fingerprinter::with_key(b"one").fingerprint(b"secret");
        let b = Fingerprinter::with_key(b"two").fingerprint(b"secret");
        assert_ne!(a, b);
        assert_eq!(a, Fingerprinter::with_key(b"one").fingerprint(b"secret"));
    }
}
