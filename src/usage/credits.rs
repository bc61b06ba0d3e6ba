//! Usage credits: a key's balance ([`Credits`]), its optional [`Refill`],
//! and the changes management makes ([`CreditChange`]).

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::UsageError;

/// A key's usage credits: each request spends a cost; at zero the check is
/// denied ([`DenialReason::UsageExhausted`](crate::DenialReason::UsageExhausted)).
///
/// `remaining` is what the store still holds; `leased` what verifiers took
/// from it in blocks and have not yet settled (spent or about to be; see
/// `docs/DESIGN.md`). Stores change both only in their atomic lease,
/// settle and change operations: [`KeyStore::update`](crate::KeyStore::update)
/// never overwrites a balance.
///
/// ```
/// use keyward::usage::{Credits, Refill};
/// let credits = Credits::new(10_000).unwrap().with_refill(Refill::monthly(1, 10_000).unwrap());
/// assert_eq!(credits.remaining, 10_000);
/// assert!(Credits::new(Credits::MAX + 1).is_err()); // names `credits.remaining`
/// ```
///
/// Amounts are at most [`Credits::MAX`]: a deserialized balance above it is
/// refused (naming `credits.remaining` or `credits.leased`), and
/// [`KeyManager::create`](crate::KeyManager::create), `import` and `edit`
/// refuse one set through the public fields ([`Credits::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CreditsForm")]
pub struct Credits {
    /// Credits left in the store.
    pub remaining: u64,
    /// Credits leased to verifiers and not yet settled.
    #[serde(default)]
    pub leased: u64,
    /// The refill, if any.
    #[serde(default)]
    pub refill: Option<Refill>,
    /// The start of the refill period the balance was last refilled for
    /// (set at creation, so a new key is not refilled at once).
    #[serde(default)]
    pub refilled_for: Option<DateTime<Utc>>,
}

/// [`Credits`] as read, before its amounts are checked.
#[derive(Deserialize)]
struct CreditsForm {
    remaining: u64,
    #[serde(default)]
    leased: u64,
    #[serde(default)]
    refill: Option<Refill>,
    #[serde(default)]
    refilled_for: Option<DateTime<Utc>>,
}

impl TryFrom<CreditsForm> for Credits {
    type Error = UsageError;
    fn try_from(f: CreditsForm) -> Result<Self, UsageError> {
        let credits = Credits {
            remaining: f.remaining,
            leased: f.leased,
            refill: f.refill,
            refilled_for: f.refilled_for,
        };
        credits.check()?;
        Ok(credits)
    }
}

impl Credits {
    /// The largest balance or amount: 2^53 − 1, the largest integer a
    /// JSON number holds exactly in every client.
    pub const MAX: u64 = (1 << 53) - 1;

    /// A balance of `remaining`, no refill.
    pub fn new(remaining: u64) -> Result<Self, UsageError> {
        check_amount("credits.remaining", remaining)?;
        Ok(Self {
            remaining,
            leased: 0,
            refill: None,
            refilled_for: None,
        })
    }

    /// Checks the amounts (the fields are public): `remaining` and
    /// `leased` at most [`Credits::MAX`], else
    /// [`UsageError::CreditsTooLarge`] naming `credits.remaining` or
    /// `credits.leased`.
    ///
    /// ```
    /// use keyward::usage::Credits;
    /// let huge = Credits { remaining: u64::MAX, ..Credits::new(0).unwrap() };
    /// assert!(huge.check().is_err());
    /// assert!(Credits::new(5).unwrap().check().is_ok());
    /// ```
    pub fn check(&self) -> Result<(), UsageError> {
        check_amount("credits.remaining", self.remaining)?;
        check_amount("credits.leased", self.leased)
    }

    /// With `refill`.
    pub fn with_refill(mut self, refill: Refill) -> Self {
        self.refill = Some(refill);
        self
    }

    /// What a refill due at `now` asks the store for, if this balance has a
    /// refill: its amount and the current period's start.
    pub fn refill_due(&self, now: DateTime<Utc>) -> Option<RefillDue> {
        self.refill.as_ref().map(|r| RefillDue {
            amount: r.amount,
            period_start: r.period_start(now),
        })
    }
}

fn check_amount(field: &'static str, value: u64) -> Result<(), UsageError> {
    if value > Credits::MAX {
        return Err(UsageError::CreditsTooLarge { field, value });
    }
    Ok(())
}

/// When a balance is refilled: every day at 00:00 UTC, or every month on a
/// day at 00:00 UTC. A refill *sets* the balance to the amount (unspent
/// credits do not carry over), lazily at the first lease of a new period,
/// exactly once per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "every", rename_all = "snake_case")]
pub enum RefillInterval {
    /// Every day at 00:00 UTC.
    Day,
    /// Every month on `day` (1 to 28) at 00:00 UTC.
    Month {
        /// The day of the month.
        day: u32,
    },
}

/// A balance's refill: [`Refill::daily`] or [`Refill::monthly`].
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use keyward::usage::Refill;
/// let r = Refill::monthly(15, 1_000).unwrap();
/// let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
/// assert_eq!(r.period_start(now), Utc.with_ymd_and_hms(2026, 2, 15, 0, 0, 0).unwrap());
/// assert!(Refill::monthly(31, 1_000).is_err()); // no day 31 in February: names `refill.day`
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RefillForm", into = "RefillForm")]
pub struct Refill {
    amount: u64,
    interval: RefillInterval,
}

#[derive(Serialize, Deserialize)]
struct RefillForm {
    amount: u64,
    #[serde(flatten)]
    interval: RefillInterval,
}

impl TryFrom<RefillForm> for Refill {
    type Error = UsageError;
    fn try_from(f: RefillForm) -> Result<Self, UsageError> {
        Refill::new(f.interval, f.amount)
    }
}

impl From<Refill> for RefillForm {
    fn from(r: Refill) -> Self {
        RefillForm {
            amount: r.amount,
            interval: r.interval,
        }
    }
}

impl Refill {
    /// Back to `amount` every day at 00:00 UTC.
    pub fn daily(amount: u64) -> Result<Self, UsageError> {
        Self::new(RefillInterval::Day, amount)
    }

    /// Back to `amount` every month on `day` (1 to 28: a day every month
    /// has) at 00:00 UTC.
    pub fn monthly(day: u32, amount: u64) -> Result<Self, UsageError> {
        Self::new(RefillInterval::Month { day }, amount)
    }

    /// Checks and builds a refill.
    pub fn new(interval: RefillInterval, amount: u64) -> Result<Self, UsageError> {
        if amount == 0 {
            return Err(UsageError::ZeroRefill);
        }
        check_amount("refill.amount", amount)?;
        if let RefillInterval::Month { day } = interval {
            if !(1..=28).contains(&day) {
                return Err(UsageError::RefillDay { day });
            }
        }
        Ok(Self { amount, interval })
    }

    /// Whether this refill is no more generous than `other`: the same
    /// interval with at most its amount (another interval counts as more).
    ///
    /// ```
    /// use keyward::usage::Refill;
    /// let daily = |n| Refill::daily(n).unwrap();
    /// assert!(daily(4).narrows(&daily(5)));
    /// assert!(!daily(6).narrows(&daily(5)));
    /// assert!(!Refill::monthly(1, 5).unwrap().narrows(&daily(5)));
    /// ```
    pub fn narrows(&self, other: &Refill) -> bool {
        self.interval == other.interval && self.amount <= other.amount
    }

    /// The balance a refill sets.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// When it refills.
    pub fn interval(&self) -> RefillInterval {
        self.interval
    }

    /// The start of the period `now` is in: today's 00:00 UTC, or the
    /// latest refill day at 00:00 UTC not after `now`.
    pub fn period_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = now.date_naive();
        let start = match self.interval {
            RefillInterval::Day => today,
            RefillInterval::Month { day } => {
                // Day 1..=28 exists in every month; the fallbacks are never taken.
                let this_month =
                    NaiveDate::from_ymd_opt(today.year(), today.month(), day).unwrap_or(today);
                if this_month <= today {
                    this_month
                } else {
                    this_month
                        .checked_sub_months(Months::new(1))
                        .unwrap_or(this_month)
                }
            }
        };
        start.and_time(NaiveTime::MIN).and_utc()
    }
}

/// A refill the store applies, atomically with a lease, if the balance was
/// last refilled for a period before `period_start`: the balance becomes
/// `amount` and `refilled_for` becomes `period_start`, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefillDue {
    /// The balance after the refill.
    pub amount: u64,
    /// The current period's start.
    pub period_start: DateTime<Utc>,
}

/// What a store's [`KeyStore::lease_credits`](crate::KeyStore::lease_credits) gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditGrant {
    /// Credits granted (at most what was asked; 0 when none are left).
    pub granted: u64,
    /// Credits left in the store after the grant.
    pub remaining: u64,
}

/// A change of a key's balance by management
/// ([`KeyStore::change_credits`](crate::KeyStore::change_credits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditChange {
    /// Set the balance.
    Set(u64),
    /// Add to the balance; refused if the sum would pass [`Credits::MAX`].
    Add(u64),
}

impl CreditChange {
    /// Checks the amount (at most [`Credits::MAX`]).
    pub fn check(self) -> Result<Self, UsageError> {
        match self {
            CreditChange::Set(n) => check_amount("credits.remaining", n)?,
            CreditChange::Add(n) => check_amount("add", n)?,
        }
        Ok(self)
    }

    /// The balance after the change, or the error naming the overflow.
    pub fn apply(self, remaining: u64) -> Result<u64, UsageError> {
        match self {
            CreditChange::Set(n) => check_amount("credits.remaining", n).map(|()| n),
            CreditChange::Add(n) => {
                let sum = remaining.saturating_add(n);
                if sum > Credits::MAX {
                    return Err(UsageError::CreditsTooLarge {
                        field: "add",
                        value: sum,
                    });
                }
                Ok(sum)
            }
        }
    }

    /// A signed amount from an API (`"add": -5`): negative is refused,
    /// naming `field`.
    pub fn add_signed(field: &'static str, value: i64) -> Result<Self, UsageError> {
        let n = u64::try_from(value).map_err(|_| UsageError::NegativeCredits { field, value })?;
        check_amount(field, n)?;
        Ok(CreditChange::Add(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn period_starts() {
        let daily = Refill::daily(5).unwrap();
        assert_eq!(daily.period_start(at(2026, 3, 2, 23)), at(2026, 3, 2, 0));
        let monthly = Refill::monthly(28, 5).unwrap();
        assert_eq!(monthly.period_start(at(2026, 3, 2, 1)), at(2026, 2, 28, 0));
        assert_eq!(monthly.period_start(at(2026, 3, 28, 0)), at(2026, 3, 28, 0));
        let first = Refill::monthly(1, 5).unwrap();
        assert_eq!(first.period_start(at(2026, 1, 1, 0)), at(2026, 1, 1, 0));
        assert_eq!(
            Refill::monthly(3, 5)
                .unwrap()
                .period_start(at(2026, 1, 2, 0)),
            at(2025, 12, 3, 0)
        );
    }

    #[test]
    fn bad_amounts_and_days_name_the_field() {
        assert_eq!(
            Refill::monthly(31, 5),
            Err(UsageError::RefillDay { day: 31 })
        );
        assert_eq!(Refill::monthly(0, 5), Err(UsageError::RefillDay { day: 0 }));
        assert_eq!(Refill::daily(0), Err(UsageError::ZeroRefill));
        assert!(matches!(
            Credits::new(Credits::MAX + 1),
            Err(UsageError::CreditsTooLarge {
                field: "credits.remaining",
                ..
            })
        ));
        assert!(matches!(
            CreditChange::Add(1).apply(Credits::MAX),
            Err(UsageError::CreditsTooLarge { field: "add", .. })
        ));
        assert_eq!(
            CreditChange::add_signed("add", -5),
            Err(UsageError::NegativeCredits {
                field: "add",
                value: -5
            })
        );
        let huge = r#"{"remaining":18446744073709551615}"#;
        let e = serde_json::from_str::<Credits>(huge)
            .unwrap_err()
            .to_string();
        assert!(e.contains("credits.remaining"), "{e}");
        let leased = format!(r#"{{"remaining":1,"leased":{}}}"#, Credits::MAX + 1);
        let e = serde_json::from_str::<Credits>(&leased)
            .unwrap_err()
            .to_string();
        assert!(e.contains("credits.leased"), "{e}");
        let ok = Credits::new(Credits::MAX)
            .unwrap()
            .with_refill(Refill::daily(3).unwrap());
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<Credits>(&json).unwrap(), ok);
        let bad = r#"{"amount":5,"every":"month","day":31}"#;
        assert!(serde_json::from_str::<Refill>(bad).is_err());
        let good = Refill::monthly(3, 5).unwrap();
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<Refill>(&json).unwrap(), good);
    }
}
