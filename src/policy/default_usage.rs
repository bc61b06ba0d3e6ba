//! The policy's default usage controls for new keys
//! ([`Policy::with_default_usage`]) and what counts as looser than them.

use super::Policy;
use crate::usage::{Credits, UsageControls, UsageError};

impl Policy {
    /// The usage controls every new key gets unless the application itself
    /// gives it others: keys created or imported with no usage controls of
    /// their own ([`UsageControls::is_empty`]) get `usage`, so a publisher's
    /// administrator (who may create keys, but not give usage away) cannot
    /// create a key that is never charged nor limited.
    ///
    /// Usage controls given with a key are checked against the default:
    /// anything looser needs [`ManagementAction::Usage`](crate::policy::ManagementAction::Usage)
    /// (the application itself only, by default), else
    /// [`KeywardError::NotAllowed`](crate::KeywardError::NotAllowed) and
    /// nothing is stored. Looser is: a default limit missing or wider
    /// (more per window, or a shorter window); no credits when the default
    /// meters, or a larger starting balance, or a more generous refill
    /// (another interval, or a larger amount); any credits when the default
    /// does not meter. Limits the default does not have may always be
    /// added. To meter keys without giving them anything, use a balance of 0
    /// (with a refill if keys should get some every period). Without a
    /// default (the default), only a starting balance needs `Usage`.
    ///
    /// An empty `usage` removes the default. The limits must be declared
    /// first ([`Policy::with_rate_limits`]): [`UsageError::UnknownLimit`]
    /// names one that is not; an amount above [`Credits::MAX`] is
    /// [`UsageError::CreditsTooLarge`] naming `credits.remaining`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keyward::{PermissionRegistry, Policy};
    /// use keyward::usage::{Credits, RateLimit, RateLimits, Refill, UsageControls};
    ///
    /// let registry = PermissionRegistry::builder().permission("search").build().unwrap();
    /// let default = UsageControls {
    ///     rate_limits: RateLimits::new([
    ///         RateLimit::new("requests", 100, Duration::from_secs(1)).unwrap(),
    ///     ])
    ///     .unwrap(),
    ///     // Metered from the start, with nothing to spend until the
    ///     // application sells credits.
    ///     credits: Some(Credits::new(0).unwrap()),
    /// };
    /// let policy = Policy::new(registry)
    ///     .with_rate_limits(["requests"])
    ///     .unwrap()
    ///     .with_default_usage(default.clone())
    ///     .unwrap();
    /// assert_eq!(policy.default_usage(), Some(&default));
    /// // No limits and no credits: looser than the default.
    /// assert!(!policy.usage_within_default(&UsageControls::default()));
    /// assert!(policy.usage_within_default(&default));
    /// ```
    pub fn with_default_usage(mut self, usage: UsageControls) -> Result<Self, UsageError> {
        self.check_rate_limits(&usage.rate_limits)?;
        if let Some(c) = &usage.credits {
            c.check()?;
        }
        self.default_usage = if usage.is_empty() {
            None
        } else {
            Some(UsageControls {
                rate_limits: usage.rate_limits,
                credits: usage.credits.map(|c| Credits {
                    leased: 0,
                    refilled_for: None,
                    ..c
                }),
            })
        };
        Ok(self)
    }

    /// The default usage controls of new keys, if any
    /// ([`Policy::with_default_usage`]).
    pub fn default_usage(&self) -> Option<&UsageControls> {
        self.default_usage.as_ref()
    }

    /// Whether `usage` is no looser than the default
    /// ([`Policy::with_default_usage`]), so anyone allowed to create a key
    /// may give it; without a default, whether it gives no credits.
    pub fn usage_within_default(&self, usage: &UsageControls) -> bool {
        let Some(default) = &self.default_usage else {
            return usage.credits.is_none();
        };
        if !usage.rate_limits.narrows(&default.rate_limits) {
            return false;
        }
        match (&usage.credits, &default.credits) {
            (_, None) => usage.credits.is_none(),
            (None, Some(_)) => false,
            (Some(c), Some(d)) => {
                c.remaining <= d.remaining
                    && match (&c.refill, &d.refill) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(r), Some(dr)) => r.narrows(dr),
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::PermissionRegistry;
    use crate::usage::{RateLimit, RateLimits, Refill};

    fn limits(limit: u32, secs: u64) -> RateLimits {
        RateLimits::new([RateLimit::new("requests", limit, Duration::from_secs(secs)).unwrap()])
            .unwrap()
    }

    fn policy(default: UsageControls) -> Policy {
        let registry = PermissionRegistry::builder()
            .permission("p")
            .build()
            .unwrap();
        Policy::new(registry)
            .with_rate_limits(["requests", "publish"])
            .unwrap()
            .with_default_usage(default)
            .unwrap()
    }

    #[test]
    fn looser_than_the_default_is_what_gives_more() {
        let credits = |n, refill: Option<Refill>| {
            let c = Credits::new(n).unwrap();
            Some(match refill {
                Some(r) => c.with_refill(r),
                None => c,
            })
        };
        let daily = |n| Some(Refill::daily(n).unwrap());
        let p = policy(UsageControls {
            rate_limits: limits(100, 1),
            credits: credits(10, daily(100)),
        });
        let u = |rate_limits, credits| UsageControls {
            rate_limits,
            credits,
        };
        assert!(p.usage_within_default(&u(limits(100, 1), credits(10, daily(100)))));
        assert!(p.usage_within_default(&u(limits(50, 2), credits(0, None))));
        assert!(!p.usage_within_default(&u(limits(101, 1), credits(0, None))));
        assert!(!p.usage_within_default(&u(RateLimits::default(), credits(0, None))));
        assert!(!p.usage_within_default(&u(limits(100, 1), None)));
        assert!(!p.usage_within_default(&u(limits(100, 1), credits(11, None))));
        assert!(!p.usage_within_default(&u(limits(100, 1), credits(0, daily(101)))));
        let monthly = Some(Refill::monthly(1, 5).unwrap());
        assert!(!p.usage_within_default(&u(limits(100, 1), credits(0, monthly))));

        let limits_only = policy(u(limits(100, 1), None));
        assert!(limits_only.usage_within_default(&u(limits(10, 1), None)));
        assert!(!limits_only.usage_within_default(&u(limits(10, 1), credits(0, None))));
    }

    #[test]
    fn a_bad_default_is_refused_and_an_empty_one_removes_it() {
        let registry = PermissionRegistry::builder()
            .permission("p")
            .build()
            .unwrap();
        let undeclared = Policy::new(registry.clone()).with_default_usage(UsageControls {
            rate_limits: limits(1, 1),
            credits: None,
        });
        assert!(matches!(undeclared, Err(UsageError::UnknownLimit { .. })));
        let huge = Credits {
            remaining: u64::MAX,
            ..Credits::new(0).unwrap()
        };
        let too_large = Policy::new(registry).with_default_usage(UsageControls {
            rate_limits: RateLimits::default(),
            credits: Some(huge),
        });
        assert!(matches!(
            too_large,
            Err(UsageError::CreditsTooLarge {
                field: "credits.remaining",
                ..
            })
        ));
        let p = policy(UsageControls::default());
        assert_eq!(p.default_usage(), None);
        assert!(p.usage_within_default(&UsageControls::default()));
        assert!(!p.usage_within_default(&UsageControls {
            rate_limits: RateLimits::default(),
            credits: Some(Credits::new(0).unwrap()),
        }));
    }
}
