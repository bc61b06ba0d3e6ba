//! The error of a usage control that does not fit.

use std::time::Duration;

use thiserror::Error;

use crate::ids::InvalidValue;

/// A rate limit, credit amount or refill was invalid; nothing was stored.
///
/// Each variant names the field that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A limit's name is not a valid [`LimitName`](super::LimitName).
    #[error("rate limit name: {0}")]
    Name(#[from] InvalidValue),
    /// A limit of zero requests.
    #[error("rate limit {name}: limit is 0 (at least 1 per window)")]
    ZeroLimit {
        /// The limit's name.
        name: Box<str>,
    },
    /// A window of zero (or under a microsecond).
    #[error("rate limit {name}: window is 0 (at least 1 microsecond)")]
    ZeroWindow {
        /// The limit's name.
        name: Box<str>,
    },
    /// A window longer than [`RateLimit::MAX_WINDOW`](super::RateLimit::MAX_WINDOW).
    #[error(
        "rate limit {name}: window {window:?} is longer than the maximum {:?}",
        super::RateLimit::MAX_WINDOW
    )]
    WindowTooLong {
        /// The limit's name.
        name: Box<str>,
        /// The window asked for.
        window: Duration,
    },
    /// More requests per window than one per microsecond.
    #[error("rate limit {name}: {limit} per {window:?} is more than one per microsecond")]
    TooFine {
        /// The limit's name.
        name: Box<str>,
        /// The limit.
        limit: u32,
        /// The window.
        window: Duration,
    },
    /// A limit the policy does not declare
    /// ([`Policy::with_rate_limits`](crate::Policy::with_rate_limits)).
    #[error("rate limit {name}: not one of the policy's rate limits")]
    UnknownLimit {
        /// The name given.
        name: Box<str>,
    },
    /// Two limits of one key have the same name.
    #[error("rate limits: {name} is given twice")]
    DuplicateLimit {
        /// The name given twice.
        name: Box<str>,
    },
    /// More limits on one key than [`RateLimits::MAX`](super::RateLimits::MAX).
    #[error("rate limits: {count} limits, the maximum is {max}")]
    TooManyLimits {
        /// How many were given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// A credit amount above [`Credits::MAX`](super::Credits::MAX), or a
    /// sum that would overflow it.
    #[error("{field}: {value} is above the maximum {}", super::Credits::MAX)]
    CreditsTooLarge {
        /// Which field (`credits.remaining`, `refill.amount`, `add`, ...).
        field: &'static str,
        /// The amount given (or the sum it would make).
        value: u64,
    },
    /// A negative credit amount.
    #[error("{field}: {value} is negative")]
    NegativeCredits {
        /// Which field.
        field: &'static str,
        /// The amount given.
        value: i64,
    },
    /// A refill of zero credits.
    #[error("refill.amount: 0 (a refill adds at least 1 credit)")]
    ZeroRefill,
    /// A monthly refill day that does not exist in every month.
    #[error(
        "refill.day: {day} is not a day every month has (1 to 28; day 29 to 31 do not exist in February)"
    )]
    RefillDay {
        /// The day asked for.
        day: u32,
    },
    /// A request spends a limit the verifier does not know, or a cost of 0.
    #[error("spend {name}: {reason}")]
    BadSpend {
        /// The limit's name as the request gave it.
        name: Box<str>,
        /// What was wrong.
        reason: &'static str,
    },
}
