//! The error of hashing and checking secrets.

use thiserror::Error;

/// What went wrong when hashing or checking a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HashError {
    /// The argon2 parameters were refused.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// The stored PHC string could not be parsed or is not argon2id.
    #[error("stored hash is malformed: {0}")]
    Malformed(String),
    /// The stored hash names a pepper id the hasher was not given.
    #[error("stored hash uses pepper {0:?}, which is not configured")]
    UnknownPepper(String),
    /// A pepper id longer than argon2 allows (8 bytes) or not ASCII alphanumeric.
    #[error("pepper id must be 1 to 8 ASCII letters or digits")]
    BadPepperId,
    /// Hashing failed for another reason.
    #[error("hashing failed: {0}")]
    Failed(String),
}
