//! Hashing secrets at rest (argon2id PHC strings) and the cache fingerprint.
//!
//! Everything argon2-specific lives in this file behind [`SecretHasher`], so
//! the argon2 crate (or the algorithm) can change in one place.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

mod error;
mod fingerprint;

pub use error::HashError;
pub(crate) use fingerprint::{FINGERPRINT_LEN, Fingerprinter, same_fingerprint};

/// Turns a secret into a string safe to store, and checks a secret against it.
///
/// Implement it to use another algorithm or a hardware module; keyward ships
/// [`Argon2Hasher`]. Implementations are called off the async executor's
/// threads (see [`Verifier`](crate::Verifier)), so they may block.
pub trait SecretHasher: Send + Sync + 'static {
    /// Hashes a secret with a fresh salt.
    fn hash(&self, secret: &[u8]) -> Result<String, HashError>;
    /// Checks a secret against a stored hash. `Ok(false)` means "wrong
    /// secret"; `Err` means the stored hash is unusable (treated as a denial).
    fn verify(&self, secret: &[u8], stored: &str) -> Result<bool, HashError>;
    /// Whether a stored hash was made with weaker parameters (or an older
    /// pepper) than the hasher now uses, so it should be replaced after the
    /// next successful verification.
    fn needs_rehash(&self, stored: &str) -> bool;

    /// [`SecretHasher::hash`], free to reuse `scratch` as working memory
    /// (see [`SecretHasher::verify_with`]). The default ignores `scratch`.
    fn hash_with(&self, secret: &[u8], scratch: &mut HashScratch) -> Result<String, HashError> {
        let _ = scratch;
        self.hash(secret)
    }

    /// [`SecretHasher::verify`], free to reuse `scratch` as working memory.
    /// The verifier calls this from its hashing threads, each with its own
    /// scratch, so the memory of a memory-hard hash is allocated once per
    /// thread instead of once per check (and freed blocks cannot pile up in
    /// the allocator's per-thread arenas). The default ignores `scratch`.
    fn verify_with(
        &self,
        secret: &[u8],
        stored: &str,
        scratch: &mut HashScratch,
    ) -> Result<bool, HashError> {
        let _ = scratch;
        self.verify(secret, stored)
    }
}

/// Working memory a [`SecretHasher`] may reuse between checks (see
/// [`SecretHasher::verify_with`]). [`Argon2Hasher`] keeps its argon2 blocks
/// here, zeroed after each use and never more than its own parameters need.
///
/// The verifier's hashing threads zero their scratch right after they have
/// sent a check its answer instead of before: the 19 MiB wipe (about 7 %
/// of an argon2 run with the default parameters) is then off the check's
/// latency, and still done before the thread takes another job or exits.
#[derive(Default)]
pub struct HashScratch {
    blocks: Vec<argon2::Block>,
    /// Zero after use only when told ([`HashScratch::wipe`]), not when a
    /// hash returns (set for the verifier's hashing threads only).
    deferred: bool,
    /// Blocks at the start of `blocks` that may hold state derived from a
    /// secret (deferred wiping only).
    dirty: usize,
}

impl HashScratch {
    /// An empty scratch; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty scratch that, after a successful hash, keeps its blocks
    /// until [`HashScratch::wipe`] (or until it is dropped or shrunk): for
    /// a hashing thread that answers first and wipes after. A hash that
    /// panics is still wiped at once.
    pub(crate) fn deferring() -> Self {
        Self {
            blocks: Vec::new(),
            deferred: true,
            dirty: 0,
        }
    }

    /// Bytes held.
    pub fn capacity_bytes(&self) -> usize {
        self.blocks.capacity() * argon2::Block::SIZE
    }

    /// Blocks that may still hold state derived from a secret.
    #[cfg(test)]
    pub(crate) fn dirty_blocks(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.as_ref().iter().any(|&w| w != 0))
            .count()
    }

    /// Zeroes every block a deferred hash left (a no-op otherwise).
    pub(crate) fn wipe(&mut self) {
        let dirty = self.dirty.min(self.blocks.len());
        self.blocks[..dirty].iter_mut().for_each(Zeroize::zeroize);
        self.dirty = 0;
    }

    /// Runs `f` on `count` blocks (grown if needed), then zeroes them, even
    /// if `f` panics: they hold state derived from the secret. A
    /// [deferring](HashScratch::deferring) scratch zeroes them on a panic
    /// only, and otherwise at its next [`HashScratch::wipe`].
    fn fill<R>(&mut self, count: usize, f: impl FnOnce(&mut [argon2::Block]) -> R) -> R {
        if self.blocks.len() < count {
            // Growing may move the blocks and free the old buffer as it is:
            // zero what a deferred hash left first (a job may hash twice).
            self.wipe();
            self.blocks.resize(count, argon2::Block::default());
        }
        /// Zeroes the blocks when dropped while armed: always when the
        /// hasher panics.
        struct Wipe<'a>(&'a mut [argon2::Block], bool);
        impl Drop for Wipe<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.iter_mut().for_each(Zeroize::zeroize);
                }
            }
        }
        let deferred = self.deferred;
        let mut wipe = Wipe(&mut self.blocks[..count], true);
        let result = f(&mut *wipe.0);
        wipe.1 = !deferred;
        drop(wipe);
        if deferred {
            self.dirty = self.dirty.max(count);
        }
        result
    }
}

impl Drop for HashScratch {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl fmt::Debug for HashScratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashScratch")
            .field("bytes", &self.capacity_bytes())
            .finish()
    }
}

/// Argon2id cost parameters.
///
/// The default is the OWASP recommendation: m = 19456 KiB (19 MiB), t = 2, p = 1,
/// about 20 ms per hash on a current server core (17.7–19.1 ms measured,
/// benches/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            m_cost: 19_456,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl Argon2Params {
    /// Memory in KiB, iterations and lanes. Refused when argon2 refuses them.
    ///
    /// ```
    /// use keyward::Argon2Params;
    /// assert!(Argon2Params::new(19_456, 2, 1).is_ok());
    /// assert!(Argon2Params::new(1, 1, 1).is_err()); // below argon2's minimum memory
    /// ```
    pub fn new(m_cost: u32, t_cost: u32, p_cost: u32) -> Result<Self, HashError> {
        Params::new(m_cost, t_cost, p_cost, None).map_err(|e| HashError::Params(e.to_string()))?;
        Ok(Self {
            m_cost,
            t_cost,
            p_cost,
        })
    }

    /// The cheapest parameters argon2 accepts (8 KiB, t = 1). For tests only:
    /// never protect real keys with them.
    pub fn insecure_for_tests() -> Self {
        Self {
            m_cost: 8,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Memory cost in KiB.
    pub fn m_cost(&self) -> u32 {
        self.m_cost
    }
    /// Iterations.
    pub fn t_cost(&self) -> u32 {
        self.t_cost
    }
    /// Lanes.
    pub fn p_cost(&self) -> u32 {
        self.p_cost
    }
}

/// An application-wide secret mixed into every hash (argon2's "secret" input),
/// kept outside the database so a stolen database alone cannot be attacked
/// offline. Its id (1 to 8 ASCII letters or digits) is written into each PHC
/// string, so peppers can be rotated: old hashes keep verifying with the old
/// pepper and are rehashed with the new one on their next successful check.
pub struct Pepper {
    id: String,
    secret: Zeroizing<Vec<u8>>,
}

impl Pepper {
    /// A pepper with this id and secret bytes.
    pub fn new(id: &str, secret: impl Into<Vec<u8>>) -> Result<Self, HashError> {
        if id.is_empty()
            || id.len() > Params::MAX_KEYID_LEN
            || !id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(HashError::BadPepperId);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: Zeroizing::new(secret.into()),
        })
    }

    /// The pepper's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pepper")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// The argon2id [`SecretHasher`].
///
/// ```
/// use keyward::{hash::Argon2Hasher, Argon2Params, hash::SecretHasher};
/// let hasher = Argon2Hasher::new(Argon2Params::insecure_for_tests());
/// let phc = hasher.hash(b"s3cret").unwrap();
/// assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
/// assert!(hasher.verify(b"s3cret", &phc).unwrap());
/// assert!(!hasher.verify(b"other", &phc).unwrap());
///
/// // Stronger parameters later: the old hash still verifies, and asks to be rehashed.
/// let stronger = Argon2Hasher::new(Argon2Params::new(64, 2, 1).unwrap());
/// assert!(stronger.verify(b"s3cret", &phc).unwrap());
/// assert!(stronger.needs_rehash(&phc));
/// ```
#[derive(Debug)]
pub struct Argon2Hasher {
    params: Argon2Params,
    pepper: Option<Pepper>,
    old_peppers: Vec<Pepper>,
}

impl Default for Argon2Hasher {
    fn default() -> Self {
        Self::new(Argon2Params::default())
    }
}

impl Argon2Hasher {
    /// A hasher with these parameters and no pepper.
    pub fn new(params: Argon2Params) -> Self {
        Self {
            params,
            pepper: None,
            old_peppers: Vec::new(),
        }
    }

    /// Mixes `pepper` into every new hash.
    pub fn with_pepper(mut self, pepper: Pepper) -> Self {
        self.pepper = Some(pepper);
        self
    }

    /// Keeps an older pepper so hashes made with it still verify (and get rehashed).
    pub fn with_old_pepper(mut self, pepper: Pepper) -> Self {
        self.old_peppers.push(pepper);
        self
    }

    /// The parameters of new hashes.
    pub fn params(&self) -> Argon2Params {
        self.params
    }

    fn pepper_by_id(&self, id: &[u8]) -> Option<&Pepper> {
        self.pepper
            .iter()
            .chain(self.old_peppers.iter())
            .find(|p| p.id.as_bytes() == id)
    }

    /// Lets go of scratch memory beyond what this hasher's own parameters
    /// need (a stored hash with a larger memory cost is verified, then its
    /// blocks are freed).
    fn keep_own_size(&self, scratch: &mut HashScratch) {
        let own = Params::new(
            self.params.m_cost,
            self.params.t_cost,
            self.params.p_cost,
            None,
        )
        .map_or(0, |p| p.block_count());
        if scratch.blocks.len() > own {
            // Blocks let go of are zeroed first, also by a deferring scratch.
            scratch.wipe();
            scratch.blocks.truncate(own);
            scratch.blocks.shrink_to_fit();
        }
    }

    /// The pepper a stored hash was made with (none when it names none).
    fn pepper_for(&self, params: &Params) -> Result<Option<&Pepper>, HashError> {
        if params.keyid().is_empty() {
            return Ok(None);
        }
        self.pepper_by_id(params.keyid()).map(Some).ok_or_else(|| {
            HashError::UnknownPepper(String::from_utf8_lossy(params.keyid()).into_owned())
        })
    }

    fn context<'a>(
        &self,
        params: Params,
        pepper: Option<&'a Pepper>,
    ) -> Result<Argon2<'a>, HashError> {
        match pepper {
            Some(p) => {
                Argon2::new_with_secret(&p.secret, Algorithm::Argon2id, Version::V0x13, params)
                    .map_err(|e| HashError::Params(e.to_string()))
            }
            None => Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)),
        }
    }
}

fn parse_phc(stored: &str) -> Result<(PasswordHash<'_>, Params), HashError> {
    let hash = PasswordHash::new(stored).map_err(|e| HashError::Malformed(e.to_string()))?;
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return Err(HashError::Malformed(format!(
            "algorithm {} is not argon2id",
            hash.algorithm
        )));
    }
    let params = Params::try_from(&hash).map_err(|e| HashError::Malformed(e.to_string()))?;
    Ok((hash, params))
}

impl SecretHasher for Argon2Hasher {
    fn hash(&self, secret: &[u8]) -> Result<String, HashError> {
        self.hash_with(secret, &mut HashScratch::new())
    }

    fn hash_with(&self, secret: &[u8], scratch: &mut HashScratch) -> Result<String, HashError> {
        let mut builder = argon2::ParamsBuilder::new();
        builder
            .m_cost(self.params.m_cost)
            .t_cost(self.params.t_cost)
            .p_cost(self.params.p_cost);
        if let Some(p) = &self.pepper {
            let keyid = argon2::KeyId::new(p.id.as_bytes())
                .map_err(|e| HashError::Params(e.to_string()))?;
            builder.keyid(keyid);
        }
        let params = builder
            .build()
            .map_err(|e| HashError::Params(e.to_string()))?;
        let mut salt_bytes = [0u8; 16];
        OsRng
            .try_fill_bytes(&mut salt_bytes)
            .map_err(|e| HashError::Failed(e.to_string()))?;
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| HashError::Failed(e.to_string()))?;
        let ctx = self.context(params.clone(), self.pepper.as_ref())?;
        let mut out = Zeroizing::new([0u8; Params::DEFAULT_OUTPUT_LEN]);
        scratch
            .fill(params.block_count(), |blocks| {
                ctx.hash_password_into_with_memory(secret, &salt_bytes, &mut *out, blocks)
            })
            .map_err(|e| HashError::Failed(e.to_string()))?;
        self.keep_own_size(scratch);
        let failed = |e: argon2::password_hash::Error| HashError::Failed(e.to_string());
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: argon2::password_hash::ParamsString::try_from(&params).map_err(failed)?,
            salt: Some(salt.as_salt()),
            hash: Some(argon2::password_hash::Output::new(&*out).map_err(failed)?),
        };
        Ok(phc.to_string())
    }

    fn verify(&self, secret: &[u8], stored: &str) -> Result<bool, HashError> {
        let (hash, params) = parse_phc(stored)?;
        let pepper = self.pepper_for(&params)?;
        let ctx = self.context(params.clone(), pepper)?;
        match ctx.verify_password(secret, &hash) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(HashError::Malformed(e.to_string())),
        }
    }

    fn verify_with(
        &self,
        secret: &[u8],
        stored: &str,
        scratch: &mut HashScratch,
    ) -> Result<bool, HashError> {
        use subtle::ConstantTimeEq;
        let malformed = |e: &dyn fmt::Display| HashError::Malformed(e.to_string());
        let (hash, params) = parse_phc(stored)?;
        let pepper = self.pepper_for(&params)?;
        let version = match hash.version {
            Some(v) => Version::try_from(v).map_err(|e| malformed(&e))?,
            None => Version::default(),
        };
        let ctx = match pepper {
            Some(p) => {
                Argon2::new_with_secret(&p.secret, Algorithm::Argon2id, version, params.clone())
                    .map_err(|e| HashError::Params(e.to_string()))?
            }
            None => Argon2::new(Algorithm::Argon2id, version, params.clone()),
        };
        let salt = hash.salt.ok_or_else(|| malformed(&"no salt"))?;
        let mut salt_buf = [0u8; 64];
        let salt = salt.decode_b64(&mut salt_buf).map_err(|e| malformed(&e))?;
        let expected = hash.hash.ok_or_else(|| malformed(&"no hash"))?;
        let mut out = Zeroizing::new(vec![0u8; expected.len()]);
        let result = scratch.fill(params.block_count(), |blocks| {
            ctx.hash_password_into_with_memory(secret, salt, &mut out, blocks)
        });
        self.keep_own_size(scratch);
        result.map_err(|e| malformed(&e))?;
        Ok(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
    }

    fn needs_rehash(&self, stored: &str) -> bool {
        let Ok((hash, params)) = parse_phc(stored) else {
            return true;
        };
        let current_pepper = self.pepper.as_ref().map(|p| p.id.as_bytes()).unwrap_or(&[]);
        hash.version != Some(Version::V0x13.into())
            || params.m_cost() < self.params.m_cost
            || params.t_cost() < self.params.t_cost
            || params.p_cost() < self.params.p_cost
            || params.keyid() != current_pepper
    }
}

/// How an imported key's SHA-256 hash is stored until its first successful
/// check replaces it with an argon2id hash: `$sha256$<64 hex>`.
pub(crate) const SHA256_IMPORT_PREFIX: &str = "$sha256$";

/// Checks a secret against a stored hash: an imported `$sha256$` hash
/// (compared in constant time), anything else through `hasher`. Returns
/// whether it matched and whether the stored hash should be replaced.
pub(crate) fn verify_stored(
    hasher: &dyn SecretHasher,
    secret: &[u8],
    stored: &str,
    scratch: &mut HashScratch,
) -> Result<(bool, bool), HashError> {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    match stored.strip_prefix(SHA256_IMPORT_PREFIX) {
        Some(hex) => {
            let mut expected = [0u8; 32];
            if hex.len() != 64 || !hex.is_ascii() {
                return Err(HashError::Malformed("imported SHA-256 hash".into()));
            }
            for (i, byte) in expected.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| HashError::Malformed("imported SHA-256 hash".into()))?;
            }
            let actual = Sha256::digest(secret);
            Ok((bool::from(actual.as_slice().ct_eq(&expected)), true))
        }
        None => Ok((
            hasher.verify_with(secret, stored, scratch)?,
            hasher.needs_rehash(stored),
        )),
    }
}

/// Whether a stored hash should be replaced after a successful check,
/// without checking any secret (an imported `$sha256$` hash always is).
pub(crate) fn needs_replacing(hasher: &dyn SecretHasher, stored: &str) -> bool {
    stored.starts_with(SHA256_IMPORT_PREFIX) || hasher.needs_rehash(stored)
}

#[cfg(test)]
mod import_tests {
    use super::*;

    #[test]
    fn imported_sha256_hashes_match_only_their_secret_and_ask_for_a_rehash() {
        let hasher = Argon2Hasher::new(Argon2Params::insecure_for_tests());
        // SHA-256("test")
        let stored = "$sha256$9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(
            verify_stored(&hasher, b"test", stored, &mut HashScratch::new()).unwrap(),
            (true, true)
        );
        assert_eq!(
            verify_stored(&hasher, b"tesT", stored, &mut HashScratch::new()).unwrap(),
            (false, true)
        );
        assert!(verify_stored(&hasher, b"test", "$sha256$zz", &mut HashScratch::new()).is_err());
        assert!(
            verify_stored(
                &hasher,
                b"test",
                "$sha256$9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00aZZ",
                &mut HashScratch::new(),
            )
            .is_err()
        );
        let phc = hasher.hash(b"test").unwrap();
        assert_eq!(
            verify_stored(&hasher, b"test", &phc, &mut HashScratch::new()).unwrap(),
            (true, false)
        );
    }

    #[test]
    fn verifying_in_reused_memory_agrees_with_argon2s_own_verifier() {
        let small = Argon2Params::new(64, 1, 1).unwrap();
        let big = Argon2Params::new(256, 1, 1).unwrap();
        let peppered = Argon2Hasher::new(small)
            .with_pepper(Pepper::new("p2", b"new".to_vec()).unwrap())
            .with_old_pepper(Pepper::new("p1", b"old".to_vec()).unwrap());
        let old = Argon2Hasher::new(small).with_pepper(Pepper::new("p1", b"old".to_vec()).unwrap());
        let stored = [
            Argon2Hasher::new(small).hash(b"right").unwrap(),
            Argon2Hasher::new(big).hash(b"right").unwrap(),
            old.hash(b"right").unwrap(),
            peppered.hash(b"right").unwrap(),
        ];
        let mut scratch = HashScratch::new();
        for phc in &stored {
            for secret in [&b"right"[..], b"wrong", b""] {
                assert_eq!(
                    peppered.verify_with(secret, phc, &mut scratch).unwrap(),
                    peppered.verify(secret, phc).unwrap(),
                    "{phc}"
                );
            }
            // A larger stored cost is verified, then let go.
            assert!(scratch.capacity_bytes() <= 64 * 1024, "{scratch:?}");
        }
        assert!(
            scratch.capacity_bytes() > 0,
            "the hasher's own size is kept"
        );
        // Unusable hashes are errors, as with `verify`.
        for bad in [
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAAA",
            "garbage",
        ] {
            assert!(
                peppered.verify_with(b"right", bad, &mut scratch).is_err(),
                "{bad}"
            );
        }
        let unknown =
            Argon2Hasher::new(small).with_pepper(Pepper::new("p9", b"x".to_vec()).unwrap());
        assert!(matches!(
            unknown.verify_with(b"right", &stored[2], &mut scratch),
            Err(HashError::UnknownPepper(_))
        ));
    }
}

#[cfg(test)]
mod scratch_tests {
    use super::*;

    fn stored() -> (Argon2Hasher, String) {
        let hasher = Argon2Hasher::new(Argon2Params::insecure_for_tests());
        let stored = hasher.hash(b"right").unwrap();
        (hasher, stored)
    }

    /// A scratch a caller makes is zeroed as soon as the hash returns.
    #[test]
    fn a_plain_scratch_is_zeroed_when_the_hash_returns() {
        let (hasher, stored) = stored();
        let mut scratch = HashScratch::new();
        assert!(hasher.verify_with(b"right", &stored, &mut scratch).unwrap());
        assert!(scratch.capacity_bytes() > 0);
        assert_eq!(scratch.dirty_blocks(), 0);
    }

    /// A deferring scratch keeps its blocks until `wipe`, and a hash that
    /// panics is zeroed at once all the same.
    #[test]
    fn a_deferring_scratch_is_zeroed_by_wipe_and_on_a_panic() {
        let (hasher, stored) = stored();
        let mut scratch = HashScratch::deferring();
        assert!(hasher.verify_with(b"right", &stored, &mut scratch).unwrap());
        assert!(scratch.dirty_blocks() > 0);
        scratch.wipe();
        assert_eq!(scratch.dirty_blocks(), 0);

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scratch.fill(4, |blocks| {
                blocks.iter_mut().for_each(|b| b.as_mut().fill(7));
                panic!("the hasher failed");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(scratch.dirty_blocks(), 0);
    }

    /// A deferring scratch about to grow (a second, larger hash in one
    /// job) zeroes what the first left before its buffer may move: only
    /// the second hash's blocks are left.
    #[test]
    fn a_deferring_scratch_is_zeroed_before_it_grows() {
        let mut scratch = HashScratch::deferring();
        scratch.fill(4, |blocks| {
            blocks.iter_mut().for_each(|b| b.as_mut().fill(7))
        });
        assert_eq!(scratch.dirty_blocks(), 4);
        scratch.fill(2, |blocks| {
            blocks.iter_mut().for_each(|b| b.as_mut().fill(9))
        });
        assert_eq!(
            scratch.dirty_blocks(),
            4,
            "a smaller hash reuses the blocks in place"
        );
        // Growing: the wipe runs first, so the old buffer freed by the
        // move held zeroes, and the first hash's blocks are gone.
        scratch.fill(8, |blocks| {
            assert!(blocks.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)));
            blocks[..3].iter_mut().for_each(|b| b.as_mut().fill(5));
        });
        assert_eq!(scratch.dirty_blocks(), 3);
        drop(scratch);
    }
}
