//! [`MemoryStore`]'s usage controls: each record's limits, credits and
//! rate-limit states, inline in its packed form and changed under its
//! shard's write lock (one lock: every lease is atomic).

use std::sync::PoisonError;

use super::MemoryStore;
use super::StoreError;
use crate::ids::KeyId;
use crate::usage::{
    CreditChange, CreditGrant, Credits, LimitName, RateGrant, RateLease, RateLimit, RefillDue,
    UsageControls, UsageError, gcra_take,
};

/// A record's usage controls and the theoretical arrival time of each of
/// its limits that was leased from.
#[derive(Debug, Clone)]
pub(super) struct UsageState {
    pub(super) controls: UsageControls,
    /// Per limit leased from: its bucket.
    tats: Vec<(LimitName, RateBucket)>,
}

/// A limit's bucket in the store: what [`gcra_take`] works on, and what a
/// give-back of unspent tokens may move back. The SQL stores keep the same
/// in columns of their rates table and compute the same in their
/// statements (`sql_usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateBucket {
    /// The theoretical arrival time, in microseconds since the epoch.
    pub(crate) tat: i64,
    /// The number of the latest lease ([`RateGrant::lease`]).
    pub(crate) lease: u64,
    /// The number of the lease that last started the bucket again from
    /// the clock (a restart): the charges before it are forgotten, so
    /// tokens of an earlier lease may not go back.
    pub(crate) restart_lease: u64,
    /// How far give-backs of tokens of leases before the latest may still
    /// move the TAT back: the least any lease since the restart found it
    /// ahead of the clock, less what such give-backs moved.
    pub(crate) slack: i64,
    /// How far give-backs of the latest lease's own tokens may still move
    /// the TAT back: what that lease added, less what they moved.
    pub(crate) added: i64,
}

impl RateBucket {
    /// The bucket after a lease at `now_us` that took `granted` tokens,
    /// leaving the TAT at `tat` (by [`gcra_take`]); `None`: the first.
    ///
    /// A lease that finds the TAT behind the clock starts the bucket again
    /// from the clock, forgetting every charge before: a restart, after
    /// which no lease limits give-backs yet. One that finds it ahead
    /// limits give-backs of tokens leased before it to how far ahead it
    /// was: moving the TAT back further would have let it start from the
    /// clock, and would credit time that has passed. Its own tokens can go
    /// back whole: no lease came after it whose start they decided.
    pub(crate) fn after_lease(
        old: Option<&RateBucket>,
        now_us: i64,
        granted: u32,
        interval_us: u64,
        tat: i64,
    ) -> RateBucket {
        let interval = i64::try_from(interval_us.max(1)).unwrap_or(i64::MAX);
        let added = interval.saturating_mul(i64::from(granted));
        match old {
            None => {
                let first = first_lease();
                RateBucket {
                    tat,
                    lease: first,
                    restart_lease: first,
                    slack: i64::MAX,
                    added,
                }
            }
            Some(old) => {
                let lease = old.lease.saturating_add(1);
                let (restart_lease, slack) = if old.tat < now_us {
                    (lease, i64::MAX)
                } else {
                    (
                        old.restart_lease,
                        old.slack.min(old.tat.saturating_sub(now_us)),
                    )
                };
                RateBucket {
                    tat,
                    lease,
                    restart_lease,
                    slack,
                    added,
                }
            }
        }
    }

    /// Gives back `back` microseconds of charge of tokens of lease number
    /// `lease`. Tokens of a lease before the last restart, or of a lease
    /// this bucket never made, move nothing. The latest lease's own move
    /// the TAT back by at most what it added; an earlier lease's, by at
    /// most the slack (see [`after_lease`](Self::after_lease)). Either
    /// bound shrinks by what it let through. Sound (no charge is credited
    /// twice, and every later lease would have started where it did without
    /// the tokens given back); exact for the latest lease's tokens, and
    /// conservative for an earlier lease's: what the slack cannot credit
    /// stays charged until the bucket drains.
    pub(crate) fn give_back(&mut self, lease: u64, back: i64) {
        if lease < self.restart_lease || lease > self.lease {
            return;
        }
        let bound = if lease == self.lease {
            &mut self.added
        } else {
            &mut self.slack
        };
        let credit = back.min(*bound).max(0);
        *bound -= credit;
        self.tat = self.tat.saturating_sub(credit);
    }
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
        check_rate_lease(id, lease)?;
        self.with_usage(id, |usage| {
            let state = usage.get_or_insert_with(|| {
                Box::new(UsageState {
                    controls: UsageControls::default(),
                    tats: Vec::new(),
                })
            });
            let slot = state.tats.iter().position(|(n, _)| *n == lease.name);
            let old = slot.map(|i| &state.tats[i].1);
            let (granted, tat) = gcra_take(
                old.map(|b| b.tat),
                lease.now_us,
                lease.want,
                lease.interval_us,
                lease.burst_us,
            );
            let bucket =
                RateBucket::after_lease(old, lease.now_us, granted, lease.interval_us, tat);
            let number = bucket.lease;
            match slot {
                Some(i) => state.tats[i].1 = bucket,
                None => state.tats.push((lease.name.clone(), bucket)),
            }
            Ok(RateGrant {
                granted,
                tat_us: tat,
                lease: number,
            })
        })
    }

    pub(super) fn return_rate_sync(
        &self,
        id: &KeyId,
        name: &LimitName,
        tokens: u32,
        interval_us: u64,
        lease: u64,
    ) -> Result<(), StoreError> {
        match self.with_usage(id, |usage| {
            if let Some(state) = usage.as_mut() {
                if let Some((_, bucket)) = state.tats.iter_mut().find(|(n, _)| n == name) {
                    let back = i64::try_from(interval_us.saturating_mul(u64::from(tokens)))
                        .unwrap_or(i64::MAX);
                    bucket.give_back(lease, back);
                }
            }
            Ok(())
        }) {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }
}

/// The largest `|now_us|` a store accepts: about 73,000 years around 1970.
/// A TAT is then at most this plus the longest burst, so the SQL lease
/// statement's `tat - now` (at most 2^62 and a burst) fits in 64 bits;
/// with 2^62 it did not, and PostgreSQL refused a lease at `-2^62` after
/// one at `2^62` ("bigint out of range", an outside review, 2026-12-03).
pub(crate) const MAX_ABS_NOW_US: i64 = 1 << 61;

/// Refuses a rate lease outside the domain every store computes exactly:
/// a window past [`RateLimit::MAX_WINDOW`] (`StoreError::Usage`), a clock
/// past [`MAX_ABS_NOW_US`] (`StoreError::Backend`). The memory store
/// checks it too, so that all stores answer the same input alike (it
/// saturated instead, where SQL refused: an outside review, 2026-12-03).
pub(crate) fn check_rate_lease(id: &KeyId, lease: &RateLease) -> Result<(), StoreError> {
    let max_window = u64::try_from(RateLimit::MAX_WINDOW.as_micros()).unwrap_or(u64::MAX);
    if lease.burst_us > max_window || lease.interval_us > max_window {
        return Err(StoreError::Usage {
            id: id.clone(),
            error: UsageError::WindowTooLong {
                name: lease.name.as_str().into(),
                window: std::time::Duration::from_micros(lease.burst_us.max(lease.interval_us)),
            },
        });
    }
    if !(-MAX_ABS_NOW_US..=MAX_ABS_NOW_US).contains(&lease.now_us) {
        return Err(StoreError::Backend(format!(
            "lease_rate of key {id}: now_us {} is out of range",
            lease.now_us
        )));
    }
    Ok(())
}

/// The number of a new rate bucket's first lease: random, below 2^62, so
/// that a give-back leased from a bucket since dropped (its limit removed
/// and added back, which starts a new bucket) matches no lease of a later
/// bucket (an outside review found 124 tokens granted at one instant by a
/// bucket of 100 when every bucket counted from 0). The SQL stores bind
/// the same for the row a first lease inserts.
pub(crate) fn first_lease() -> u64 {
    rand::random::<u64>() >> 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const I: u64 = 100;
    const BURST: u64 = 1_000;

    /// One step of a server: after `dt` microseconds, give back what it
    /// holds but `spend` (all it holds when it holds fewer), then lease
    /// `want`.
    fn step() -> impl Strategy<Value = (usize, i64, u32, u32)> {
        (0..3usize, 0..300i64, 0..4u32, 0..12u32)
    }

    proptest! {
        /// Soundness of give-backs, whatever servers do honestly: the
        /// tokens leases took in any span of time, less what was given
        /// back of them, are never more than one GCRA admits in that span
        /// (its burst and one token per interval).
        #[test]
        fn give_backs_never_let_more_through_than_one_gcra(
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let mut bucket: Option<RateBucket> = None;
            let mut now = 0i64;
            // Per server: the lease whose tokens it holds, and how many.
            let mut held: [Option<(usize, u32)>; 3] = [None; 3];
            // Per lease: when, and how many tokens were kept.
            let mut leases: Vec<(i64, u32)> = Vec::new();
            let mut numbers: Vec<u64> = Vec::new();
            for (server, dt, spend, want) in steps {
                now += dt;
                if let Some((l, tokens)) = held[server].take() {
                    let back = tokens.saturating_sub(spend);
                    let b = bucket.as_mut().expect("leased before");
                    b.give_back(numbers[l], i64::try_from(u64::from(back) * I).unwrap());
                    leases[l].1 -= back;
                }
                let (granted, tat) = gcra_take(bucket.as_ref().map(|b| b.tat), now, want, I, BURST);
                let next = RateBucket::after_lease(bucket.as_ref(), now, granted, I, tat);
                numbers.push(next.lease);
                bucket = Some(next);
                leases.push((now, granted));
                held[server] = Some((leases.len() - 1, granted));
            }
            for i in 0..leases.len() {
                let mut net = 0u64;
                for lease in &leases[i..] {
                    net += u64::from(lease.1);
                    let span = u64::try_from(lease.0 - leases[i].0).unwrap();
                    prop_assert!(
                        net <= (span + BURST) / I,
                        "{net} tokens kept by leases over {span} µs from lease {i}: {leases:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_memory_store_refuses_leases_outside_the_sql_domain() {
        let store = MemoryStore::new();
        let id = KeyId::generate();
        let lease = |now_us, burst_us| RateLease {
            name: LimitName::new("requests").unwrap(),
            want: 1,
            now_us,
            interval_us: 1,
            burst_us,
        };
        let max_window = RateLimit::MAX_WINDOW.as_micros() as u64;
        assert!(matches!(
            store.lease_rate_sync(&id, &lease(0, max_window + 1)),
            Err(StoreError::Usage {
                error: UsageError::WindowTooLong { .. },
                ..
            })
        ));
        for now in [MAX_ABS_NOW_US + 1, -MAX_ABS_NOW_US - 1, i64::MIN] {
            assert!(matches!(
                store.lease_rate_sync(&id, &lease(now, 10)),
                Err(StoreError::Backend(_))
            ));
        }
        // Within the domain the record is looked up: no such key.
        assert!(matches!(
            store.lease_rate_sync(&id, &lease(MAX_ABS_NOW_US, max_window)),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn the_latest_lease_goes_back_whole_and_an_earlier_one_within_the_slack() {
        let (g1, tat1) = gcra_take(None, 0, 4, I, BURST);
        let first = RateBucket::after_lease(None, 0, g1, I, tat1);
        assert_eq!((first.tat, first.added, first.slack), (400, 400, i64::MAX));
        let (g2, tat2) = gcra_take(Some(first.tat), 150, 3, I, BURST);
        let mut b = RateBucket::after_lease(Some(&first), 150, g2, I, tat2);
        assert_eq!((b.lease, b.restart_lease), (first.lease + 1, first.lease));
        assert_eq!((b.tat, b.slack, b.added), (700, 250, 300));
        // The first lease's 4 tokens: at most the 250 the second found.
        b.give_back(first.lease, 400);
        assert_eq!((b.tat, b.slack, b.added), (450, 0, 300));
        // The second's own 3 whole, and no more.
        b.give_back(b.lease, 500);
        assert_eq!((b.tat, b.slack, b.added), (150, 0, 0));
        // A restart: the earlier leases' tokens move nothing.
        let (g3, tat3) = gcra_take(Some(b.tat), 1_000, 1, I, BURST);
        let mut r = RateBucket::after_lease(Some(&b), 1_000, g3, I, tat3);
        assert_eq!((r.restart_lease, r.slack), (r.lease, i64::MAX));
        r.give_back(b.lease, 100);
        r.give_back(r.lease + 1, 100);
        assert_eq!(r.tat, 1_100);
    }
}
