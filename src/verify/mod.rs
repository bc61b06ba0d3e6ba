//! The verification hot path: [`Verifier`], its request and its answers.
//!
//! Arrows point one way: `verifier` (the front) → `cold` (the cache miss)
//! → `shared` (the state a manager and its verifiers share) → `cache`,
//! `throttle`, `hash_pool`, `usage`, `ledger`, `config`; `compiled` →
//! `request`, `denial`, `usage`, `ledger`; `cache` → `compiled`, `denial`;
//! `ledger` (the local usage ledger) → `denial`, `request`; `verifier` →
//! `alarm` (the thread that wakes checks waiting for a refill).

mod alarm;
mod audit_log;
mod cache;
mod cold;
mod compiled;
mod config;
mod denial;
mod flights;
mod hash_pool;
mod ledger;
mod request;
mod session;
mod shared;
mod throttle;
mod usage;
mod verifier;

pub use compiled::{CompiledKey, VerifiedKey};
pub use config::VerifierConfig;
pub use denial::{Denial, DenialKind, DenialReason, RateLimitStatus};
pub use request::{Spending, VerifyRequest};
pub(crate) use session::Sessions;
pub use session::{SessionError, VerifiedSession};
pub(crate) use shared::Shared;
pub use verifier::{MAX_PAIR_SECRET_LEN, Verifier};
