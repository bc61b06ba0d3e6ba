//! Usage controls: per-key rate limits ([`RateLimit`]) and usage credits
//! with refill ([`Credits`]).
//!
//! A key carries them in [`UsageControls`] (on its record, set at create,
//! editable). Verifiers spend them in memory from blocks leased from the
//! store in one atomic statement each ([`KeyStore::lease_credits`],
//! [`KeyStore::lease_rate`]), so a check stays in memory and many servers
//! sharing one database never overspend; `docs/DESIGN.md` gives the
//! design and its bounds.
//!
//! [`KeyStore::lease_credits`]: crate::KeyStore::lease_credits
//! [`KeyStore::lease_rate`]: crate::KeyStore::lease_rate

mod credits;
mod error;
mod limits;

use serde::{Deserialize, Serialize};

pub use credits::{CreditChange, CreditGrant, Credits, Refill, RefillDue, RefillInterval};
pub use error::UsageError;
pub use limits::{LimitName, RateLimit, RateLimits, gcra_take, gcra_wait_us};

/// A key's usage controls: its rate limits and its credits. The default
/// has neither (the key is limited only by the failure throttles).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageControls {
    /// Named rate limits.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Credits, if the key is metered.
    #[serde(default)]
    pub credits: Option<Credits>,
}

impl UsageControls {
    /// Whether the key has no limits and no credits.
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.credits.is_none()
    }
}

/// What a store's [`KeyStore::lease_rate`](crate::KeyStore::lease_rate) is
/// asked: up to `want` tokens of the limit `name` at `now_us`, in the
/// limit's GCRA terms ([`RateLimit::interval_us`], [`RateLimit::burst_us`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLease {
    /// The limit.
    pub name: LimitName,
    /// Tokens asked for.
    pub want: u32,
    /// The caller's clock, in microseconds since the Unix epoch.
    pub now_us: i64,
    /// [`RateLimit::interval_us`].
    pub interval_us: u64,
    /// [`RateLimit::burst_us`].
    pub burst_us: u64,
}

/// What a store's [`KeyStore::lease_rate`](crate::KeyStore::lease_rate) gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateGrant {
    /// Tokens granted (0 when the bucket is empty).
    pub granted: u32,
    /// The bucket's theoretical arrival time after the grant, in
    /// microseconds since the Unix epoch ([`gcra_wait_us`] turns it into a
    /// wait).
    pub tat_us: i64,
    /// This lease's number in its bucket (opaque: one more than the
    /// bucket's previous lease, from a random start). Given back with
    /// unspent tokens ([`KeyStore::return_rate`](crate::KeyStore::return_rate)):
    /// the store credits the latest lease's tokens whole, an earlier
    /// lease's as far as the leases since allow, and none of a lease
    /// before the bucket last started again from the clock (their charge
    /// is forgotten already: given back, they would count twice).
    pub lease: u64,
}
