//! [`MemoryStore`]'s usage controls: each record's limits, credits and
//! rate-limit states, inline in its packed form and changed under its
//! shard's write lock (one lock: every lease is atomic).

use std::sync::PoisonError;

use super::MemoryStore;
use super::StoreError;
use crate::ids::KeyId;
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RefillDue, UsageControls,
    gcra_take,
};

/// A record's usage controls and the theoretical arrival time of each of
/// its limits that was leased from.
#[derive(Debug, Clone)]
pub(super) struct UsageState {
    pub(super) controls: UsageControls,
    /// Per limit leased from: its theoretical arrival time, how often it
    /// restarted ([`RateGrant::restarts`]) and how far give-backs may
    /// still move it back ([`give_back`]).
    tats: Vec<(LimitName, (i64, u64, i64))>,
}

impl UsageState {
    /// The state a new record starts with (`None` for no controls).
    pub(super) fn new(controls: &UsageControls) -> Option<Box<Self>> {
        (!controls.is_empty()).then(|| {
            Box::new(Self {
                controls: controls.clone(),
                tats: Vec::new(),
            })
        })
    }

    /// The state after an update to `new`: limits and refill from `new`;
    /// an existing balance, its leases and refill period kept; limit states
    /// kept for the limits still there.
    pub(super) fn merged(old: Option<&UsageState>, new: &UsageControls) -> Option<Box<Self>> {
        let Some(old) = old else {
            return Self::new(new);
        };
        let credits = match (&old.controls.credits, &new.credits) {
            (_, None) => None,
            (None, Some(n)) => Some(n.clone()),
            (Some(o), Some(n)) => Some(Credits {
                refill: n.refill,
                // Set only where none was (a refill added to a metered key).
                refilled_for: o.refilled_for.or(n.refilled_for),
                ..o.clone()
            }),
        };
        let controls = UsageControls {
            rate_limits: new.rate_limits.clone(),
            credits,
        };
        if controls.is_empty() {
            return None;
        }
        let tats = old
            .tats
            .iter()
            .filter(|(n, _)| controls.rate_limits.get(n.as_str()).is_some())
            .cloned()
            .collect();
        Some(Box::new(Self { controls, tats }))
    }
}

impl MemoryStore {
    /// Runs `f` on key `id`'s usage state under its shard's write lock.
    fn with_usage<T>(
        &self,
        id: &KeyId,
        f: impl FnOnce(&mut Option<Box<UsageState>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let stored = shard
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        f(&mut stored.usage)
    }

    pub(super) fn lease_credits_sync(
        &self,
        id: &KeyId,
        want: u64,
        refill: Option<RefillDue>,
    ) -> Result<Option<CreditGrant>, StoreError> {
        self.with_usage(id, |usage| {
            let Some(c) = usage.as_mut().and_then(|u| u.controls.credits.as_mut()) else {
                return Ok(None);
            };
            if let Some(due) = refill {
                if c.refilled_for.is_none_or(|t| t < due.period_start) {
                    c.remaining = due.amount.min(Credits::MAX);
                    c.refilled_for = Some(due.period_start);
                }
            }
            let granted = want.min(c.remaining);
            c.remaining -= granted;
            c.leased = c.leased.saturating_add(granted);
            Ok(Some(CreditGrant {
                granted,
                remaining: c.remaining,
            }))
        })
    }

    pub(super) fn settle_credits_sync(
        &self,
        id: &KeyId,
        returned: u64,
        spent: u64,
    ) -> Result<(), StoreError> {
        match self.with_usage(id, |usage| {
            if let Some(c) = usage.as_mut().and_then(|u| u.controls.credits.as_mut()) {
                c.remaining = c.remaining.saturating_add(returned).min(Credits::MAX);
                c.leased = c.leased.saturating_sub(returned.saturating_add(spent));
            }
            Ok(())
        }) {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    pub(super) fn change_credits_sync(
        &self,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Option<Credits>, StoreError> {
        self.with_usage(id, |usage| {
            let Some(c) = usage.as_mut().and_then(|u| u.controls.credits.as_mut()) else {
                return Ok(None);
            };
            c.remaining = change
                .apply(c.remaining)
                .map_err(|error| StoreError::Usage {
                    id: id.clone(),
                    error,
                })?;
            Ok(Some(c.clone()))
        })
    }

    pub(super) fn lease_rate_sync(
        &self,
        id: &KeyId,
        lease: &RateLease,
    ) -> Result<RateGrant, StoreError> {
        self.with_usage(id, |usage| {
            let state = usage.get_or_insert_with(|| {
                Box::new(UsageState {
                    controls: UsageControls::default(),
                    tats: Vec::new(),
                })
            });
            let slot = match state.tats.iter().position(|(n, _)| *n == lease.name) {
                Some(i) => i,
                None => {
                    let first = first_restarts();
                    state
                        .tats
                        .push((lease.name.clone(), (i64::MIN, first, i64::MAX)));
                    state.tats.len() - 1
                }
            };
            let (tat, restarts, slack) = &mut state.tats[slot].1;
            let old = (*tat != i64::MIN).then_some(*tat);
            if let Some(old) = old {
                (*restarts, *slack) = after_lease(old, *restarts, *slack, lease.now_us);
            }
            let (granted, new_tat) = gcra_take(
                old,
                lease.now_us,
                lease.want,
                lease.interval_us,
                lease.burst_us,
            );
            *tat = new_tat;
            Ok(RateGrant {
                granted,
                tat_us: new_tat,
                restarts: *restarts,
            })
        })
    }

    pub(super) fn return_rate_sync(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        restarts: u64,
    ) -> Result<(), StoreError> {
        match self.with_usage(id, |usage| {
            if let Some(state) = usage.as_mut() {
                let found = state.tats.iter_mut().find(|(n, _)| n == name);
                if let Some((_, (tat, _, slack))) = found.filter(|(_, (_, r, _))| *r == restarts) {
                    let back = i64::try_from(interval_us.saturating_mul(u64::from(tokens)))
                        .unwrap_or(i64::MAX);
                    (*tat, *slack) = give_back(*tat, *slack, back);
                }
            }
            Ok(())
        }) {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }
}

/// A rate bucket's restarts and slack after a lease at `now_us` found its
/// theoretical arrival time at `old_tat`. Behind the clock, the lease
/// starts the bucket again from the clock, forgetting every charge before:
/// a restart, after which no lease limits give-backs yet. Ahead of it, the
/// lease limits them to how far ahead it was: a give-back moving the TAT
/// back further would have let this lease start from the clock, and would
/// credit time that has passed (`give_back`). The SQL stores compute the
/// same in their statements (`sql_usage`).
pub(crate) fn after_lease(old_tat: i64, restarts: u64, slack: i64, now_us: i64) -> (u64, i64) {
    if old_tat < now_us {
        (restarts.saturating_add(1), i64::MAX)
    } else {
        (restarts, slack.min(old_tat.saturating_sub(now_us)))
    }
}

/// A rate bucket's TAT and slack after a give-back of `back` microseconds
/// of charge: at most the slack (see [`after_lease`]), which shrinks by
/// what was given back. Exact for tokens leased since the last restart:
/// no later lease would have found the TAT behind the clock without their
/// charge, so every later charge stands as it was counted.
pub(crate) fn give_back(tat: i64, slack: i64, back: i64) -> (i64, i64) {
    let credit = back.min(slack).max(0);
    (tat.saturating_sub(credit), slack - credit)
}

/// The restart count a new rate bucket starts from: random, below 2^62,
/// so that a give-back leased from a bucket since dropped (its limit
/// removed and added back, which starts a new bucket) matches no later
/// bucket (an outside review found 125 tokens granted at one instant by a
/// bucket of 100 when every bucket started from 0). The SQL stores bind
/// the same for the row a first lease inserts.
pub(crate) fn first_restarts() -> u64 {
    rand::random::<u64>() >> 2
}
