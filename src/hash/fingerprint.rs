//! The cache fingerprint: a keyed SHA-256 of a secret (crate-internal).
//!
//! The fingerprint is SHA-256 over one 64-byte block of per-process random
//! key, then the secret. The state after the key block is computed once,
//! so a fingerprint of a token's 43-character secret costs one compression
//! (HMAC-SHA256, used before 2026-12-02, costs two: inner and outer).
//!
//! Why a keyed prefix is enough here, though it is not a general MAC: a
//! fingerprint never leaves the process (it is not sent, logged or
//! stored), so nobody can extend one (the length-extension weakness of
//! `SHA-256(key ‖ message)` needs a tag to start from). What the cache
//! needs is that a different secret has a different fingerprint (SHA-256
//! collision resistance) and that a copy of the process memory does not
//! allow checking guesses of low-entropy imported secrets offline without
//! the 512-bit key, which sits next to it but is never in a fingerprint.

use std::fmt;

use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of a cache fingerprint in bytes.
pub(crate) const FINGERPRINT_LEN: usize = 32;

/// Length of the key block, one SHA-256 block.
const KEY_BLOCK: usize = 64;

/// A keyed fingerprint of a secret: SHA-256 of a random key block made when
/// the process starts (or derived from a given key) followed by the secret.
/// The verifier's cache keeps this, never the secret, and compares it in
/// constant time.
pub(crate) struct Fingerprinter {
    /// SHA-256 after absorbing the key block (one compression done, empty
    /// buffer): cloned for each fingerprint.
    keyed: Sha256,
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random 512-bit key block from the OS generator.
    pub fn random() -> Self {
        let mut block = Zeroizing::new([0u8; KEY_BLOCK]);
        OsRng.unwrap_err().fill_bytes(&mut *block);
        Self::with_block(&block)
    }

    /// A fingerprinter with a given key (for tests): the key block is
    /// SHA-256 of the key, zero-padded to a block.
    #[cfg(test)]
    pub fn with_key(key: &[u8]) -> Self {
        let mut block = Zeroizing::new([0u8; KEY_BLOCK]);
        block[..32].copy_from_slice(&Sha256::digest(key));
        Self::with_block(&block)
    }

    fn with_block(block: &[u8; KEY_BLOCK]) -> Self {
        let mut keyed = Sha256::new();
        keyed.update(block);
        Self { keyed }
    }

    /// The fingerprint of `secret`.
    #[inline]
    pub fn fingerprint(&self, secret: &[u8]) -> [u8; FINGERPRINT_LEN] {
        let mut hash = self.keyed.clone();
        hash.update(secret);
        hash.finalize().into()
    }
}

/// Whether two fingerprints are equal, in constant time: a word at a time.
///
/// `subtle`'s slice comparison makes a `Choice` per byte, and each goes
/// through its optimization barrier, a call that is never inlined: 32
/// calls per cached hit, 8 % of a hit's time under `perf` (2026-12-03).
/// Here the differences of the four 8-byte words are folded with `|`
/// (branch-free: the time does not depend on where the fingerprints
/// differ) and only the folded word goes through `subtle`'s `u64`
/// comparison, one barrier (a comparison and a `Choice` `&` per word
/// were eight).
#[inline]
pub(crate) fn same_fingerprint(a: &[u8; FINGERPRINT_LEN], b: &[u8; FINGERPRINT_LEN]) -> bool {
    const WORD: usize = 8;
    const _: () = assert!(FINGERPRINT_LEN % WORD == 0);
    let mut differ = 0u64;
    for (x, y) in a.chunks_exact(WORD).zip(b.chunks_exact(WORD)) {
        let (mut wx, mut wy) = ([0u8; WORD], [0u8; WORD]);
        wx.copy_from_slice(x);
        wy.copy_from_slice(y);
        differ |= u64::from_ne_bytes(wx) ^ u64::from_ne_bytes(wy);
    }
    bool::from(differ.ct_eq(&0))
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
        assert_ne!(a, Fingerprinter::with_key(b"one").fingerprint(b"secreT"));
        assert_ne!(a, Fingerprinter::with_key(b"one").fingerprint(b"secret2"));
    }

    /// Equal exactly when every byte is: a difference in any one byte, by
    /// any bit, makes two fingerprints differ.
    #[test]
    fn fingerprints_are_the_same_only_when_every_byte_is() {
        let a = Fingerprinter::with_key(b"k").fingerprint(b"secret");
        let copy = a;
        assert!(same_fingerprint(&a, &copy));
        for i in 0..FINGERPRINT_LEN {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!same_fingerprint(&a, &b), "byte {i}, bit {bit}");
                assert!(!same_fingerprint(&b, &a), "byte {i}, bit {bit}");
            }
        }
        assert!(same_fingerprint(
            &[0; FINGERPRINT_LEN],
            &[0; FINGERPRINT_LEN]
        ));
        assert!(!same_fingerprint(
            &[0; FINGERPRINT_LEN],
            &[0xff; FINGERPRINT_LEN]
        ));
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_key_block_then_the_secret() {
        let mut block = [0u8; KEY_BLOCK];
        block[..32].copy_from_slice(&Sha256::digest(b"k"));
        let mut whole = block.to_vec();
        whole.extend_from_slice(b"a 43-character secret would go right here..");
        let expected: [u8; 32] = Sha256::digest(&whole).into();
        let got = Fingerprinter::with_key(b"k")
            .fingerprint(b"a 43-character secret would go right here..");
        assert_eq!(got, expected);
        // Not the plain SHA-256 of the secret: the key matters.
        let plain: [u8; 32] = Sha256::digest(b"a 43-character secret would go right here..").into();
        assert_ne!(got, plain);
    }
}
