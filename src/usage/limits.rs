//! Rate limits: a key's named limits ([`RateLimit`], [`RateLimits`]) and the
//! GCRA arithmetic every store and the verifier share ([`gcra_take`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::UsageError;
use crate::ids::{InvalidValue, check_chars};

/// The name of a rate limit (`requests`, `publish`, `package:push`): 1 to 32
/// characters of `a-z`, `0-9`, `_`, `-`, `.` and `:`.
///
/// ```
/// use keyward::usage::LimitName;
/// assert!(LimitName::new("publish").is_ok());
/// assert!(LimitName::new("Publish").is_err()); // lowercase only
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LimitName(Box<str>);

impl LimitName {
    /// The longest name.
    pub const MAX_LEN: usize = 32;

    /// Checks and wraps `name`.
    pub fn new(name: &str) -> Result<Self, InvalidValue> {
        check_chars(
            "rate limit name",
            name,
            Self::MAX_LEN,
            "a-z 0-9 _ - . :",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.:".contains(c),
        )?;
        Ok(Self(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<LimitName> for String {
    fn from(v: LimitName) -> String {
        v.0.into()
    }
}

impl TryFrom<String> for LimitName {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        LimitName::new(&s)
    }
}

/// One named limit: at most `limit` requests in any `window`, spent as a
/// bucket of `limit` tokens that refills at `limit` per `window` (GCRA; see
/// `docs/DESIGN.md`).
///
/// ```
/// use std::time::Duration;
/// use keyward::usage::RateLimit;
/// let publish = RateLimit::new("publish", 10, Duration::from_secs(3600)).unwrap();
/// assert_eq!(publish.limit(), 10);
/// assert!(RateLimit::new("publish", 0, Duration::from_secs(1)).is_err()); // names `limit`
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RateLimitForm", into = "RateLimitForm")]
pub struct RateLimit {
    name: LimitName,
    limit: u32,
    window: Duration,
}

/// The serde form: `{"name": "publish", "limit": 10, "window_us": 3600000000}`.
#[derive(Serialize, Deserialize)]
struct RateLimitForm {
    name: String,
    limit: u32,
    window_us: u64,
}

impl TryFrom<RateLimitForm> for RateLimit {
    type Error = UsageError;
    fn try_from(f: RateLimitForm) -> Result<Self, UsageError> {
        RateLimit::new(&f.name, f.limit, Duration::from_micros(f.window_us))
    }
}

impl From<RateLimit> for RateLimitForm {
    fn from(r: RateLimit) -> Self {
        let window_us = r.window_us();
        RateLimitForm {
            name: r.name.into(),
            limit: r.limit,
            window_us,
        }
    }
}

impl RateLimit {
    /// The longest window: 366 days.
    pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

    /// `limit` requests per `window`. Refused: a limit of 0, a window of 0
    /// (under a microsecond) or over [`RateLimit::MAX_WINDOW`], more than
    /// one request per microsecond. The window is kept in whole
    /// microseconds.
    pub fn new(name: &str, limit: u32, window: Duration) -> Result<Self, UsageError> {
        let name = LimitName::new(name)?;
        let named = || Box::<str>::from(name.as_str());
        if limit == 0 {
            return Err(UsageError::ZeroLimit { name: named() });
        }
        let window = Duration::from_micros(u64::try_from(window.as_micros()).unwrap_or(u64::MAX));
        if window.is_zero() {
            return Err(UsageError::ZeroWindow { name: named() });
        }
        if window > Self::MAX_WINDOW {
            return Err(UsageError::WindowTooLong {
                name: named(),
                window,
            });
        }
        if window.as_micros() < u128::from(limit) {
            return Err(UsageError::TooFine {
                name: named(),
                limit,
                window,
            });
        }
        Ok(Self {
            name,
            limit,
            window,
        })
    }

    /// The limit's name.
    pub fn name(&self) -> &LimitName {
        &self.name
    }

    /// Requests per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The window in microseconds.
    pub fn window_us(&self) -> u64 {
        // At most MAX_WINDOW: fits.
        self.window.as_micros() as u64
    }

    /// The time one token takes to come back (`window / limit`), in whole
    /// microseconds (at least 1).
    pub fn interval_us(&self) -> u64 {
        (self.window_us() / u64::from(self.limit)).max(1)
    }

    /// The bucket's depth in time: `limit` intervals (the window, rounded
    /// down to whole intervals, so a full bucket holds exactly `limit`).
    pub fn burst_us(&self) -> u64 {
        self.interval_us() * u64::from(self.limit)
    }

    /// Whether `self` is no looser than `other`: same name, at most as many
    /// requests, over at least as long a window. The edit policy lets a
    /// narrowing pass always.
    pub fn narrows(&self, other: &RateLimit) -> bool {
        self.name == other.name && self.limit <= other.limit && self.window >= other.window
    }
}

/// A key's rate limits: at most [`RateLimits::MAX`], names unique, kept in
/// name order. Empty (the default): the key is not rate-limited.
///
/// ```
/// use std::time::Duration;
/// use keyward::usage::{RateLimit, RateLimits};
/// let limits = RateLimits::new([
///     RateLimit::new("requests", 100, Duration::from_secs(1)).unwrap(),
///     RateLimit::new("publish", 10, Duration::from_secs(3600)).unwrap(),
/// ])
/// .unwrap();
/// assert_eq!(limits.get("publish").unwrap().limit(), 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<RateLimit>", into = "Vec<RateLimit>")]
pub struct RateLimits(Vec<RateLimit>);

impl RateLimits {
    /// The most limits one key may carry.
    pub const MAX: usize = 8;

    /// Checks and sorts `limits`: unique names, at most [`RateLimits::MAX`].
    pub fn new(limits: impl IntoIterator<Item = RateLimit>) -> Result<Self, UsageError> {
        let mut v: Vec<RateLimit> = limits.into_iter().collect();
        if v.len() > Self::MAX {
            return Err(UsageError::TooManyLimits {
                count: v.len(),
                max: Self::MAX,
            });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = v.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(UsageError::DuplicateLimit {
                name: w[0].name.as_str().into(),
            });
        }
        Ok(Self(v))
    }

    /// No limits.
    pub fn none() -> Self {
        Self::default()
    }

    /// The limit named `name`, if the key carries it.
    pub fn get(&self, name: &str) -> Option<&RateLimit> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i])
    }

    /// The limits, in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, RateLimit> {
        self.0.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `self` is no looser than `other`: every limit of `other` is
    /// still there and narrowed (or equal), and perhaps more are added.
    pub fn narrows(&self, other: &RateLimits) -> bool {
        other
            .iter()
            .all(|o| self.get(o.name.as_str()).is_some_and(|s| s.narrows(o)))
    }
}

impl TryFrom<Vec<RateLimit>> for RateLimits {
    type Error = UsageError;
    fn try_from(v: Vec<RateLimit>) -> Result<Self, UsageError> {
        RateLimits::new(v)
    }
}

impl From<RateLimits> for Vec<RateLimit> {
    fn from(l: RateLimits) -> Self {
        l.0
    }
}

impl<'a> IntoIterator for &'a RateLimits {
    type Item = &'a RateLimit;
    type IntoIter = std::slice::Iter<'a, RateLimit>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One GCRA step: takes up to `want` tokens from a bucket whose theoretical
/// arrival time is `tat_us` (`None`: full), at `now_us`, for a limit whose
/// token comes back every `interval_us` and whose bucket is `burst_us` deep.
/// Returns the tokens granted and the new theoretical arrival time (equal
/// to the old one when nothing is granted).
///
/// Every store's [`KeyStore::lease_rate`](crate::KeyStore::lease_rate) and
/// the verifier's local spending use this one function, so they agree to
/// the microsecond. Hand-written (10 lines): `governor` implements the same
/// algorithm but keeps its own state per key with one quota for all keys,
/// while keyward needs a state per key *and* limit, each limit its own
/// quota, in a row of the application's database.
pub fn gcra_take(
    tat_us: Option<i64>,
    now_us: i64,
    want: u32,
    interval_us: u64,
    burst_us: u64,
) -> (u32, i64) {
    let interval = i64::try_from(interval_us.max(1)).unwrap_or(i64::MAX);
    let burst = i64::try_from(burst_us).unwrap_or(i64::MAX);
    let base = tat_us.map_or(now_us, |t| t.max(now_us));
    let room = now_us.saturating_add(burst).saturating_sub(base).max(0);
    let granted = u32::try_from((room / interval).min(i64::from(want))).unwrap_or(0);
    if granted == 0 {
        return (0, tat_us.unwrap_or(now_us));
    }
    (
        granted,
        base.saturating_add(interval.saturating_mul(i64::from(granted))),
    )
}

/// How long after `now_us` one token is free again in a bucket whose
/// theoretical arrival time is `tat_us` (zero when one is free now).
pub fn gcra_wait_us(tat_us: i64, now_us: i64, interval_us: u64, burst_us: u64) -> u64 {
    let free_at = tat_us
        .saturating_add(i64::try_from(interval_us).unwrap_or(i64::MAX))
        .saturating_sub(i64::try_from(burst_us).unwrap_or(i64::MAX));
    u64::try_from(free_at.saturating_sub(now_us)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_exactly_the_limit_then_one_per_interval() {
        let l = RateLimit::new("r", 10, Duration::from_secs(1)).unwrap();
        let (g, tat) = gcra_take(None, 0, 100, l.interval_us(), l.burst_us());
        assert_eq!(g, 10);
        assert_eq!(
            gcra_take(Some(tat), 0, 1, l.interval_us(), l.burst_us()).0,
            0
        );
        assert_eq!(gcra_wait_us(tat, 0, l.interval_us(), l.burst_us()), 100_000);
        assert_eq!(
            gcra_take(Some(tat), 99_999, 1, l.interval_us(), l.burst_us()).0,
            0
        );
        let (g, _) = gcra_take(Some(tat), 100_000, 5, l.interval_us(), l.burst_us());
        assert_eq!(g, 1);
    }

    #[test]
    fn tokens_taken_one_at_a_time_match_tokens_taken_in_a_block() {
        let l = RateLimit::new("r", 7, Duration::from_millis(700)).unwrap();
        let mut tat = None;
        let mut one_by_one = 0;
        for _ in 0..20 {
            let (g, t) = gcra_take(tat, 5_000, 1, l.interval_us(), l.burst_us());
            one_by_one += g;
            tat = Some(t);
        }
        let (block, t2) = gcra_take(None, 5_000, 20, l.interval_us(), l.burst_us());
        assert_eq!((one_by_one, tat), (block, Some(t2)));
    }

    #[test]
    fn bad_limits_name_what_was_wrong() {
        let s = Duration::from_secs(1);
        assert!(matches!(
            RateLimit::new("r", 0, s),
            Err(UsageError::ZeroLimit { .. })
        ));
        assert!(matches!(
            RateLimit::new("r", 1, Duration::ZERO),
            Err(UsageError::ZeroWindow { .. })
        ));
        assert!(matches!(
            RateLimit::new("r", 1, Duration::from_nanos(999)),
            Err(UsageError::ZeroWindow { .. })
        ));
        assert!(matches!(
            RateLimit::new("r", 2_000_000, s),
            Err(UsageError::TooFine { .. })
        ));
        assert!(matches!(
            RateLimit::new("r", 1, RateLimit::MAX_WINDOW + s),
            Err(UsageError::WindowTooLong { .. })
        ));
        assert!(matches!(
            RateLimit::new("R", 1, s),
            Err(UsageError::Name(_))
        ));
        let r = RateLimit::new("r", 1, s).unwrap();
        assert!(matches!(
            RateLimits::new([r.clone(), r.clone()]),
            Err(UsageError::DuplicateLimit { name }) if &*name == "r"
        ));
        let many = (0..9).map(|i| RateLimit::new(&format!("l{i}"), 1, s).unwrap());
        assert!(matches!(
            RateLimits::new(many),
            Err(UsageError::TooManyLimits { count: 9, max: 8 })
        ));
    }

    #[test]
    fn narrowing_keeps_every_limit_no_looser() {
        let s = Duration::from_secs(1);
        let wide = RateLimits::new([RateLimit::new("r", 10, s).unwrap()]).unwrap();
        let narrow = RateLimits::new([RateLimit::new("r", 5, s).unwrap()]).unwrap();
        assert!(narrow.narrows(&wide));
        assert!(!wide.narrows(&narrow));
        assert!(!RateLimits::none().narrows(&wide));
        assert!(wide.narrows(&RateLimits::none()));
    }

    #[test]
    fn serde_checks_what_new_checks() {
        let bad = r#"[{"name":"r","limit":0,"window_us":1000}]"#;
        assert!(serde_json::from_str::<RateLimits>(bad).is_err());
        let good =
            RateLimits::new([RateLimit::new("r", 3, Duration::from_secs(1)).unwrap()]).unwrap();
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<RateLimits>(&json).unwrap(), good);
    }
}
