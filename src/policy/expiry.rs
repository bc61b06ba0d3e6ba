//! Expiry policy: which lifetimes a key may be given.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyError;

/// A lifetime chosen when a key is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryChoice {
    /// Expires this many days (of 24 hours) after creation.
    Days(u32),
    /// Never expires.
    Never,
}

impl ExpiryChoice {
    /// When a key created at `created` with this choice expires.
    ///
    /// ```
    /// use keyward::policy::ExpiryChoice;
    /// let created = "2028-02-28T12:00:00Z".parse().unwrap();
    /// let at = ExpiryChoice::Days(1).expires_at(created).unwrap();
    /// assert_eq!(at.to_rfc3339(), "2028-02-29T12:00:00+00:00"); // leap day
    /// assert_eq!(ExpiryChoice::Never.expires_at(created), None);
    /// ```
    pub fn expires_at(self, created: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            ExpiryChoice::Days(d) => Some(
                created
                    .checked_add_signed(TimeDelta::days(i64::from(d)))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            ),
            ExpiryChoice::Never => None,
        }
    }
}

/// Which lifetimes keys may have, and the default.
///
/// "90 days / 1 year / never", default 90 days:
///
/// ```
/// use keyward::{policy::ExpiryChoice, policy::ExpiryPolicy};
/// let policy = ExpiryPolicy::choices(&[90, 365], true, ExpiryChoice::Days(90)).unwrap();
/// assert_eq!(policy.check(None).unwrap(), ExpiryChoice::Days(90));
/// assert_eq!(policy.check(Some(ExpiryChoice::Never)).unwrap(), ExpiryChoice::Never);
/// assert!(policy.check(Some(ExpiryChoice::Days(30))).is_err());
/// ```
///
/// "1 / 90 / 180 / 270 / 365 days", default 365, never is not allowed:
///
/// ```
/// use keyward::{policy::ExpiryChoice, policy::ExpiryPolicy};
/// let policy = ExpiryPolicy::choices(&[1, 90, 180, 270, 365], false, ExpiryChoice::Days(365)).unwrap();
/// assert_eq!(policy.check(None).unwrap(), ExpiryChoice::Days(365));
/// assert!(policy.check(Some(ExpiryChoice::Never)).is_err());
/// ```
///
/// Any number of days up to a maximum:
///
/// ```
/// use keyward::{policy::ExpiryChoice, policy::ExpiryPolicy};
/// let policy = ExpiryPolicy::up_to(400, ExpiryChoice::Days(30)).unwrap();
/// assert!(policy.check(Some(ExpiryChoice::Days(399))).is_ok());
/// assert!(policy.check(Some(ExpiryChoice::Days(401))).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryPolicy {
    days: Option<Vec<u32>>,
    max_days: Option<u32>,
    allow_never: bool,
    default: ExpiryChoice,
    regenerate_expired: bool,
}

impl Default for ExpiryPolicy {
    /// 1, 90, 180, 270 or 365 days, default 365, never not allowed.
    fn default() -> Self {
        Self {
            days: Some(vec![1, 90, 180, 270, 365]),
            max_days: Some(365),
            allow_never: false,
            default: ExpiryChoice::Days(365),
            regenerate_expired: false,
        }
    }
}

impl ExpiryPolicy {
    /// Only these numbers of days (each at least 1), plus "never" when
    /// `allow_never`; `default` is used when a request gives no choice.
    pub fn choices(
        days: &[u32],
        allow_never: bool,
        default: ExpiryChoice,
    ) -> Result<Self, PolicyError> {
        if days.is_empty() && !allow_never {
            return Err(PolicyError::InvalidExpiryPolicy {
                reason: "no expiry choice is allowed".into(),
            });
        }
        if days.contains(&0) {
            return Err(PolicyError::InvalidExpiryPolicy {
                reason: "0 days is not a lifetime".into(),
            });
        }
        let mut days = days.to_vec();
        days.sort_unstable();
        days.dedup();
        let policy = Self {
            max_days: days.last().copied(),
            days: Some(days),
            allow_never,
            default,
            regenerate_expired: false,
        };
        policy.check_default()
    }

    /// Any number of days from 1 to `max_days`; never is not allowed.
    pub fn up_to(max_days: u32, default: ExpiryChoice) -> Result<Self, PolicyError> {
        if max_days == 0 {
            return Err(PolicyError::InvalidExpiryPolicy {
                reason: "the maximum must be at least 1 day".into(),
            });
        }
        Self {
            days: None,
            max_days: Some(max_days),
            allow_never: false,
            default,
            regenerate_expired: false,
        }
        .check_default()
    }

    /// Any number of days, or never. The default is never.
    pub fn unrestricted() -> Self {
        Self {
            days: None,
            max_days: None,
            allow_never: true,
            default: ExpiryChoice::Never,
            regenerate_expired: false,
        }
    }

    /// Additionally caps every lifetime in days at `max_days` (whether
    /// "never" is allowed stays as it was).
    pub fn with_max_days(mut self, max_days: u32) -> Result<Self, PolicyError> {
        if let Some(days) = &self.days {
            if days.iter().any(|d| *d > max_days) {
                return Err(PolicyError::InvalidExpiryPolicy {
                    reason: format!("a listed choice is above the maximum of {max_days} days"),
                });
            }
        }
        self.max_days = Some(max_days);
        self.check_default()
    }

    /// Whether [`KeyManager::regenerate`](crate::KeyManager::regenerate)
    /// may give an **expired** key a new value (a package gallery: "After
    /// expiration, the key is unusable. [...] You can generate a new key
    /// value"). The new value gets a fresh lifetime: the key's own lifetime
    /// length counted from the regeneration, within this policy (as a
    /// rotation's successor gets, see
    /// [`KeyManager::rotate`](crate::KeyManager::rotate)); a key expired
    /// for being unused ([`Policy::with_idle_expiry`](crate::Policy::with_idle_expiry))
    /// is renewed the same way.
    ///
    /// Off by default: an expired key stays expired and regenerating it is
    /// [`KeywardError::Expired`](crate::KeywardError::Expired), so a policy
    /// that forgets the setting never brings a key back to life. Revoked keys
    /// are never regenerated.
    ///
    /// ```
    /// use keyward::policy::ExpiryPolicy;
    /// assert!(!ExpiryPolicy::default().regenerates_expired());
    /// let gallery = ExpiryPolicy::default().with_regenerate_expired(true);
    /// assert!(gallery.regenerates_expired());
    /// ```
    pub fn with_regenerate_expired(mut self, allow: bool) -> Self {
        self.regenerate_expired = allow;
        self
    }

    /// Whether an expired key may be regenerated (see
    /// [`with_regenerate_expired`](Self::with_regenerate_expired)).
    pub fn regenerates_expired(&self) -> bool {
        self.regenerate_expired
    }

    fn check_default(self) -> Result<Self, PolicyError> {
        self.check(Some(self.default))
            .map_err(|e| PolicyError::InvalidExpiryPolicy {
                reason: format!("the default is not allowed: {e}"),
            })?;
        Ok(self)
    }

    /// The default choice.
    pub fn default_choice(&self) -> ExpiryChoice {
        self.default
    }

    /// Whether "never" is allowed.
    pub fn allows_never(&self) -> bool {
        self.allow_never
    }

    /// The longest lifetime in days (`None`: no maximum).
    pub fn max_days(&self) -> Option<u32> {
        self.max_days
    }

    /// Whether a key may be given the absolute expiry `expires_at` at `now`
    /// (an imported key's, which is not one of the choices): never expiring
    /// only where "never" is allowed, and no more than the maximum number
    /// of days from `now` (listed choices aside: an expiry from another
    /// system rarely falls on one). An expiry already past is allowed (the
    /// key is expired).
    ///
    /// # Errors
    ///
    /// [`PolicyError::NeverNotAllowed`]; [`PolicyError::ExpiryNotAllowed`]
    /// with the lifetime left in days, rounded up.
    ///
    /// ```
    /// use chrono::{TimeDelta, Utc};
    /// use keyward::{policy::ExpiryChoice, policy::ExpiryPolicy, policy::PolicyError};
    /// let policy = ExpiryPolicy::up_to(365, ExpiryChoice::Days(90)).unwrap();
    /// let now = Utc::now();
    /// assert!(policy.check_expires_at(now, Some(now + TimeDelta::days(365))).is_ok());
    /// assert!(matches!(
    ///     policy.check_expires_at(now, Some(now + TimeDelta::days(400))),
    ///     Err(PolicyError::ExpiryNotAllowed { days: 400, .. })
    /// ));
    /// assert_eq!(policy.check_expires_at(now, None), Err(PolicyError::NeverNotAllowed));
    /// ```
    pub fn check_expires_at(
        &self,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), PolicyError> {
        let Some(at) = expires_at else {
            return if self.allow_never {
                Ok(())
            } else {
                Err(PolicyError::NeverNotAllowed)
            };
        };
        let Some(max) = self.max_days else {
            return Ok(());
        };
        let left = at.signed_duration_since(now);
        if left <= TimeDelta::days(i64::from(max)) {
            return Ok(());
        }
        // Whole days, rounded up: 365 days and a second is 366.
        let whole = left.num_days();
        let partial = TimeDelta::try_days(whole).is_some_and(|w| left > w);
        let days = whole.saturating_add(i64::from(partial));
        Err(PolicyError::ExpiryNotAllowed {
            days: u32::try_from(days).unwrap_or(u32::MAX),
            allowed: self.describe(),
        })
    }

    /// The expiry of a successor (a rotation) to a key that lived
    /// `lifetime` (`None`: it never expired), counted from `now`: the same
    /// length, never longer than the maximum; never expiring only where
    /// "never" is allowed, else the default choice.
    pub(crate) fn successor_expiry(
        &self,
        now: DateTime<Utc>,
        lifetime: Option<TimeDelta>,
    ) -> Option<DateTime<Utc>> {
        let max = self.max_days.map(|m| TimeDelta::days(i64::from(m)));
        let length = match lifetime {
            None if self.allow_never => return None,
            None => return self.default.expires_at(now),
            // A foreign creation time after the expiry: no usable length.
            Some(l) if l <= TimeDelta::zero() => return self.default.expires_at(now),
            Some(l) => max.map_or(l, |m| l.min(m)),
        };
        Some(
            now.checked_add_signed(length)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// The allowed choice for a request (`None` means the default), or why not.
    pub fn check(&self, choice: Option<ExpiryChoice>) -> Result<ExpiryChoice, PolicyError> {
        let choice = choice.unwrap_or(self.default);
        match choice {
            ExpiryChoice::Never if self.allow_never => Ok(choice),
            ExpiryChoice::Never => Err(PolicyError::NeverNotAllowed),
            ExpiryChoice::Days(d) => {
                let listed = self.days.as_ref().is_none_or(|days| days.contains(&d));
                let under_max = self.max_days.is_none_or(|m| d <= m);
                if d >= 1 && listed && under_max {
                    Ok(choice)
                } else {
                    Err(PolicyError::ExpiryNotAllowed {
                        days: d,
                        allowed: self.describe(),
                    })
                }
            }
        }
    }

    fn describe(&self) -> String {
        let mut s = match (&self.days, self.max_days) {
            (Some(days), _) => days
                .iter()
                .map(|d| days_text(*d))
                .collect::<Vec<_>>()
                .join(", "),
            (None, Some(m)) => format!("1 to {}", days_text(m)),
            (None, None) => "any number of days".to_string(),
        };
        if self.allow_never {
            s.push_str(", never");
        }
        s
    }
}

fn days_text(d: u32) -> String {
    if d == 1 {
        "1 day".to_string()
    } else {
        format!("{d} days")
    }
}
