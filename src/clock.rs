//! Clocks: the system clock, and a manual clock for tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[cfg(not(target_os = "linux"))]
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeDelta, Timelike, Utc};

/// A source of the current time. keyward never reads the time any other way,
/// so expiry, cache lifetimes and throttling can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// The current time as whole microseconds since the Unix epoch: what
    /// [`Clock::now`] says, as a number. A cached check reads the time
    /// this way (compared as integers, no calendar arithmetic); the
    /// default converts [`Clock::now`].
    ///
    /// ```
    /// use keyward::{clock::Clock, clock::SystemClock, ManualClock};
    /// let clock = ManualClock::new("2026-01-01T00:00:00.000007Z".parse().unwrap());
    /// assert_eq!(clock.now_micros(), clock.now().timestamp_micros());
    /// assert_eq!(clock.now_micros() % 1_000_000, 7);
    /// // After 2020-01-01 on any machine that runs this.
    /// assert!(SystemClock.now_micros() > 1_577_836_800_000_000);
    /// ```
    fn now_micros(&self) -> i64 {
        self.now().timestamp_micros()
    }
}

/// The operating system's clock, read in whole microseconds: the precision
/// keyward's SQL stores keep, so a time taken here (a key's creation, a
/// revocation) reads back from any store exactly as it was taken.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        to_micros(Utc::now())
    }

    /// The operating system's time in microseconds, without building a
    /// `DateTime` (whose calendar conversion cost about 300 instructions
    /// per read, measured with callgrind: more than the rest of a cached
    /// check's bookkeeping; issue 14).
    ///
    /// On Linux, `clock_gettime(CLOCK_REALTIME)` through `rustix` (over
    /// libc): the same clock as `SystemTime::now`, without the
    /// `duration_since` and `as_micros` around it, which cost 78 more
    /// instructions per read and about 7 ns of a 110 ns unknown-id refusal
    /// (callgrind and a timed loop, 2026-12-03). A clock set before 1970
    /// (where [`Clock::now`] panics, as chrono's `Utc::now` does) gives
    /// the negative count, rounded toward the past.
    #[cfg(target_os = "linux")]
    // `tv_nsec` is a C `long`: `i32` on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    fn now_micros(&self) -> i64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        // `tv_nsec` is below 10^9; whole microseconds toward the past.
        i64::from(t.tv_sec)
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.tv_nsec).div_euclid(1_000))
    }

    /// The operating system's time in microseconds, without building a
    /// `DateTime` (whose calendar conversion cost about 300 instructions
    /// per read, measured with callgrind; issue 14).
    #[cfg(not(target_os = "linux"))]
    fn now_micros(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            // Before 1970: rounding as `now` rounds, whatever it is.
            Err(_) => self.now().timestamp_micros(),
        }
    }
}

/// `at` truncated to whole microseconds, the precision keyward keeps.
///
/// ```
/// use keyward::clock::to_micros;
/// let at = "2026-01-01T00:00:00.123456789Z".parse().unwrap();
/// assert_eq!(to_micros(at).to_rfc3339(), "2026-01-01T00:00:00.123456+00:00");
/// ```
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    // Setting the nanosecond field is a field write; `trunc_subsecs(6)`
    // does date arithmetic, and this runs on every check (SystemClock::now).
    // A leap second's nanoseconds (1e9 and up) stay in range when truncated.
    at.with_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap_or(at)
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use keyward::{clock::Clock, ManualClock};
/// use chrono::TimeDelta;
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// let shared = clock.clone();
/// clock.advance(TimeDelta::days(90));
/// assert_eq!(shared.now().to_rfc3339(), "2026-04-01T00:00:00+00:00");
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `start` (microsecond precision).
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            micros: Arc::new(AtomicI64::new(start.timestamp_micros())),
        }
    }

    /// Moves the clock by `delta` (which may be negative).
    pub fn advance(&self, delta: TimeDelta) {
        // Too long to count in microseconds: as far as it goes, in its
        // direction; the sum saturates instead of wrapping.
        let d = delta
            .num_microseconds()
            .unwrap_or(if delta < TimeDelta::zero() {
                i64::MIN
            } else {
                i64::MAX
            });
        let _ = self
            .micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(d))
            });
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        self.micros.store(at.timestamp_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let micros = self.micros.load(Ordering::SeqCst);
        // Beyond chrono's range: its end on that side.
        DateTime::from_timestamp_micros(micros).unwrap_or(if micros < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, SubsecRound};

    use super::*;

    /// A step too long to count moves the clock to its end in that
    /// direction, never the other way.
    #[test]
    fn a_huge_step_saturates_in_its_direction() {
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        clock.advance(TimeDelta::MIN);
        assert!(clock.now() < start);
        assert_eq!(clock.now(), DateTime::<Utc>::MIN_UTC);
        let clock = ManualClock::new(start);
        clock.advance(TimeDelta::MAX);
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
    }

    /// The system clock's microseconds are those of its `now`: the same
    /// clock, in the same unit, read between two reads of `now`.
    #[test]
    fn system_micros_are_those_of_now() {
        for _ in 0..1_000 {
            let before = SystemClock.now().timestamp_micros();
            let micros = SystemClock.now_micros();
            let after = SystemClock.now().timestamp_micros();
            assert!(
                before <= micros && micros <= after,
                "{before} <= {micros} <= {after}"
            );
        }
    }

    /// The fast truncation gives what chrono's `trunc_subsecs(6)` gives,
    /// leap seconds and the ends of the range included.
    #[test]
    fn to_micros_truncates_like_chrono() {
        let day = NaiveDate::from_ymd_opt(2016, 12, 31).unwrap();
        let mut times = vec![
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::from_timestamp(0, 0).unwrap(),
            DateTime::from_timestamp(-1, 999_999_999).unwrap(),
            day.and_hms_nano_opt(23, 59, 59, 1_999_999_999)
                .unwrap()
                .and_utc(),
            day.and_hms_nano_opt(23, 59, 59, 1_000_000_001)
                .unwrap()
                .and_utc(),
        ];
        for nanos in [0, 1, 999, 1_000, 123_456_789, 999_999_999] {
            times.push(DateTime::from_timestamp(1_764_633_600, nanos).unwrap());
        }
        for at in times {
            assert_eq!(to_micros(at), at.trunc_subsecs(6), "{at:?}");
            assert_eq!(to_micros(at).nanosecond() % 1_000, 0, "{at:?}");
        }
    }
}
