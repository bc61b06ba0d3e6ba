//! The local usage ledger: per key, the credits and rate-limit tokens this
//! process leased from the store and spends in memory.
//!
//! A [`KeyLedger`] exists only for a key whose secret this process proved
//! and that carries usage controls (so nobody without a secret can grow the
//! map; it is bounded by the cache capacity plus the keys awaiting a sweep).
//! Each compiled copy of the key holds a [`Metering`] with an `Arc` to it,
//! so a cached check finds it without a map lookup; the ledger outlives
//! cache entries and is reconfigured when the key's generation changes.
//!
//! Spending ([`KeyLedger::try_spend`]) is one short lock: check every
//! spend, then take them all, or take nothing. When a local block is short
//! the verifier calls [`top_up`] (one lease in flight per key) and tries
//! again; the store is never asked while the local blocks suffice.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Months, TimeDelta, Utc};
use foldhash::fast::RandomState;

use super::denial::{DenialReason, RateLimitStatus};
use super::request::Spending;
use crate::ids::KeyId;
use crate::key::KeyRecord;
use crate::store::KeyStore;
use crate::usage::{LimitName, RateLease, RateLimit, RateLimits, Refill, RefillInterval};

const SHARDS: usize = 16;
const NEVER: i64 = i64::MIN;
/// How long a key whose credits ran out is denied without asking the
/// store again.
const EXHAUSTED_BACKOFF_US: i64 = 1_000_000;
/// The window over which a credit block should last (rate × this).
const CREDIT_BLOCK_SPAN_US: i64 = 1_000_000;

/// How long a rate-limit lease may be spent after it was granted:
/// `min(window / 10, 1 s)` (at least 1 µs). The error bound across servers
/// is this over the window: at most 10 % of the limit.
pub(crate) fn lease_span_us(limit: &RateLimit) -> i64 {
    i64::try_from((limit.window_us() / 10).clamp(1, 1_000_000)).unwrap_or(1_000_000)
}

/// What a compiled key needs to spend: its ledger and its controls as of
/// its generation.
#[derive(Debug)]
pub(crate) struct Metering {
    pub(crate) ledger: Arc<KeyLedger>,
    pub(crate) limits: RateLimits,
    pub(crate) metered: bool,
    pub(crate) refill: Option<Refill>,
    generation: u64,
}

/// What a successful spend saw, for the response's headers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UsageSeen {
    /// The spent limit with the least remaining: its index in the key's
    /// limits, requests remaining, microseconds until full.
    pub(crate) rate: Option<(u8, u32, u64)>,
    /// Credits: local block plus the store's remaining at the last lease.
    pub(crate) credits: Option<u64>,
}

impl UsageSeen {
    /// The rate-limit status of a spend, from the key's limits.
    pub(crate) fn rate_status(&self, limits: &RateLimits) -> Option<RateLimitStatus> {
        let (i, remaining, reset_us) = self.rate?;
        let l = limits.iter().nth(usize::from(i))?;
        Some(RateLimitStatus {
            name: l.name().clone(),
            limit: l.limit(),
            window: l.window(),
            remaining,
            reset: Duration::from_micros(reset_us),
        })
    }
}

/// One limit's local tokens.
#[derive(Debug)]
struct LimitLedger {
    limit: RateLimit,
    /// Tokens leased and not spent, spendable until `expires_us`.
    tokens: u32,
    expires_us: i64,
    granted_at_us: i64,
    spent_since_lease: u32,
    /// Denied locally until then (the store granted too few).
    blocked_until_us: i64,
    /// Tokens the store's bucket had left after the last lease.
    store_room: u32,
}

impl LimitLedger {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: 0,
            expires_us: NEVER,
            granted_at_us: NEVER,
            spent_since_lease: 0,
            blocked_until_us: NEVER,
            store_room: 0,
        }
    }

    fn status(&self, remaining: u32) -> (u32, u64) {
        let missing = u64::from(self.limit.limit().saturating_sub(remaining));
        (remaining, missing.saturating_mul(self.limit.interval_us()))
    }

    /// Tokens to lease: the spend rate over the lease span, at least 1, at
    /// most a quarter of the limit.
    fn block(&self, now_us: i64) -> u32 {
        let max = (self.limit.limit() / 4).max(1);
        if self.granted_at_us == NEVER {
            return 1;
        }
        let elapsed = now_us.saturating_sub(self.granted_at_us);
        if elapsed <= 0 {
            return max;
        }
        let span = lease_span_us(&self.limit);
        let est = i64::from(self.spent_since_lease).saturating_mul(span) / elapsed + 1;
        u32::try_from(est.clamp(1, i64::from(max))).unwrap_or(max)
    }
}

/// The local credits.
#[derive(Debug, Default)]
struct CreditLedger {
    /// Leased, not spent.
    local: u64,
    /// Spent, not yet settled with the store.
    unsettled: u64,
    /// The end of the refill period the local block belongs to
    /// (`i64::MAX`: no refill; `NEVER`: no block yet).
    period_end_us: i64,
    store_remaining: u64,
    exhausted_until_us: i64,
    leased_at_us: i64,
    spent_since_lease: u64,
}

/// Work left by a reconfiguration: what a dropped limit or credit block
/// held, for the sweeper to give back.
#[derive(Debug, Default)]
struct Orphans {
    rate: Vec<(LimitName, u32, u64)>,
    credits: (u64, u64),
}

#[derive(Debug)]
struct State {
    generation: u64,
    limits: Vec<LimitLedger>,
    credits: Option<CreditLedger>,
    last_spend_us: i64,
    orphans: Orphans,
}

impl State {
    fn find(&self, name: &str) -> Option<usize> {
        self.limits
            .binary_search_by(|l| l.limit.name().as_str().cmp(name))
            .ok()
    }
}

/// One key's local ledger.
#[derive(Debug)]
pub(crate) struct KeyLedger {
    id: KeyId,
    state: Mutex<State>,
    /// Held while leasing or settling: one store call sequence per key.
    leasing: tokio::sync::Mutex<()>,
}

/// Why a spend did not happen at once.
pub(crate) enum Outcome {
    Spent(UsageSeen),
    /// A local block is short: [`top_up`], then try again.
    Short,
    Denied(DenialReason, Option<Duration>),
}

fn us_to_duration(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The spends of a request merged per limit of the ledger: (index, cost).
fn merged(st: &State, spending: &Spending<'_>) -> ([(usize, u32); Spending::MAX], usize) {
    let mut out = [(usize::MAX, 0u32); Spending::MAX];
    let mut n = 0;
    for (name, cost) in spending.limits() {
        let Some(j) = st.find(name) else { continue };
        match out[..n].iter_mut().find(|(k, _)| *k == j) {
            Some(slot) => slot.1 = slot.1.saturating_add(cost),
            None => {
                out[n] = (j, cost);
                n += 1;
            }
        }
    }
    (out, n)
}

impl KeyLedger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks every spend against the local blocks, then takes them all, or
    /// takes nothing.
    pub(crate) fn try_spend(&self, m: &Metering, spending: &Spending<'_>, now_us: i64) -> Outcome {
        let cost = if m.metered { spending.credit_cost() } else { 0 };
        let mut st = self.lock();
        let (spends, n) = merged(&st, spending);
        let mut short = false;
        for &(j, c) in &spends[..n] {
            let l = &st.limits[j];
            if l.blocked_until_us > now_us {
                let (remaining, reset_us) = l.status(0);
                let status = RateLimitStatus {
                    name: l.limit.name().clone(),
                    limit: l.limit.limit(),
                    window: l.limit.window(),
                    remaining,
                    reset: Duration::from_micros(reset_us),
                };
                let wait = us_to_duration(l.blocked_until_us - now_us);
                return Outcome::Denied(DenialReason::RateLimited(Box::new(status)), Some(wait));
            }
            if l.expires_us <= now_us || l.tokens < c {
                short = true;
            }
        }
        if cost > 0 {
            match &st.credits {
                Some(c) if now_us < c.period_end_us && c.local >= cost => {}
                Some(c) if now_us < c.period_end_us && c.exhausted_until_us > now_us => {
                    let wait = (c.period_end_us != i64::MAX)
                        .then(|| us_to_duration(c.period_end_us - now_us));
                    return Outcome::Denied(DenialReason::UsageExhausted, wait);
                }
                _ => short = true,
            }
        }
        if short {
            return Outcome::Short;
        }
        // Every spend fits: take them all.
        let aligned = st.generation == m.generation;
        let mut seen = UsageSeen::default();
        for &(j, c) in &spends[..n] {
            let l = &mut st.limits[j];
            l.tokens -= c;
            l.spent_since_lease = l.spent_since_lease.saturating_add(c);
            let remaining = l.tokens.saturating_add(l.store_room).min(l.limit.limit());
            if aligned && seen.rate.is_none_or(|(_, r, _)| remaining < r) {
                let (remaining, reset_us) = l.status(remaining);
                seen.rate = Some((u8::try_from(j).unwrap_or(u8::MAX), remaining, reset_us));
            }
        }
        if m.metered {
            if let Some(c) = &mut st.credits {
                c.local -= cost;
                c.unsettled = c.unsettled.saturating_add(cost);
                c.spent_since_lease = c.spent_since_lease.saturating_add(cost);
                seen.credits = Some(c.local.saturating_add(c.store_remaining));
            }
        }
        st.last_spend_us = now_us;
        Outcome::Spent(seen)
    }
}

/// A rate lease to ask for.
struct RateAsk {
    name: LimitName,
    need: u32,
    lease: RateLease,
    returned: u32,
    span_us: i64,
}

/// Leases what `spending` is short of from the store (one lease sequence
/// per key at a time; others wait for it). After it, [`KeyLedger::try_spend`]
/// either finds enough or denies from what the store said. A store error
/// is returned (the check is denied, never passed).
pub(crate) async fn top_up<S: KeyStore>(
    store: &S,
    m: &Metering,
    spending: &Spending<'_>,
    now: DateTime<Utc>,
    max_credit_block: u64,
) -> Result<(), DenialReason> {
    let ledger = &*m.ledger;
    let _leasing = ledger.leasing.lock().await;
    let now_us = now.timestamp_micros();
    let cost = if m.metered { spending.credit_cost() } else { 0 };
    let mut asks: Vec<RateAsk> = Vec::new();
    let mut forfeit = (0u64, 0u64);
    let mut credit_want = 0u64;
    {
        let mut st = ledger.lock();
        let (spends, n) = merged(&st, spending);
        for &(j, c) in &spends[..n] {
            let l = &mut st.limits[j];
            if l.blocked_until_us > now_us {
                continue;
            }
            let valid = l.expires_us > now_us;
            if valid && l.tokens >= c {
                continue;
            }
            let returned = if valid {
                0
            } else {
                std::mem::take(&mut l.tokens)
            };
            let need = c - l.tokens;
            let want = l.block(now_us).max(need);
            asks.push(RateAsk {
                name: l.limit.name().clone(),
                need: c,
                lease: RateLease {
                    name: l.limit.name().clone(),
                    want,
                    now_us,
                    interval_us: l.limit.interval_us(),
                    burst_us: l.limit.burst_us(),
                },
                returned,
                span_us: lease_span_us(&l.limit),
            });
        }
        if cost > 0 {
            let c = st.credits.get_or_insert_with(|| CreditLedger {
                period_end_us: NEVER,
                exhausted_until_us: NEVER,
                leased_at_us: NEVER,
                ..CreditLedger::default()
            });
            if now_us >= c.period_end_us && c.period_end_us != NEVER {
                // A block of an older refill period is forfeited, not spent.
                forfeit = (
                    std::mem::take(&mut c.local),
                    std::mem::take(&mut c.unsettled),
                );
                c.exhausted_until_us = NEVER;
            }
            let fresh = now_us < c.period_end_us;
            if !(fresh && (c.local >= cost || c.exhausted_until_us > now_us)) {
                let est = if c.leased_at_us == NEVER {
                    1
                } else {
                    let elapsed = now_us.saturating_sub(c.leased_at_us);
                    if elapsed <= 0 {
                        max_credit_block
                    } else {
                        let rate = u128::from(c.spent_since_lease)
                            * u128::from(CREDIT_BLOCK_SPAN_US.unsigned_abs())
                            / u128::from(elapsed.unsigned_abs());
                        u64::try_from(rate).unwrap_or(u64::MAX).saturating_add(1)
                    }
                };
                let mut block = est.clamp(1, max_credit_block.max(1));
                if c.leased_at_us != NEVER {
                    block = block.min((c.store_remaining / 8).max(1));
                }
                credit_want = block.max(cost.saturating_sub(c.local));
            }
        }
    }
    for ask in &asks {
        if ask.returned > 0 {
            // Best effort: a token not given back is lost (fewer requests
            // pass), never a token spent twice.
            let _ = store
                .return_rate(&ledger.id, &ask.name, ask.returned, ask.lease.interval_us)
                .await;
        }
    }
    for ask in asks {
        let grant = store
            .lease_rate(&ledger.id, &ask.lease)
            .await
            .map_err(|_| DenialReason::StoreUnavailable)?;
        let mut st = ledger.lock();
        let Some(j) = st.find(ask.name.as_str()) else {
            continue;
        };
        let l = &mut st.limits[j];
        if l.expires_us <= now_us {
            // A new lease: spendable for the span from now.
            l.expires_us = now_us.saturating_add(ask.span_us);
            l.granted_at_us = now_us;
            l.spent_since_lease = 0;
        }
        l.tokens = l.tokens.saturating_add(grant.granted);
        let interval = l.limit.interval_us();
        let base = grant.tat_us.max(now_us);
        let room = now_us
            .saturating_add(i64::try_from(l.limit.burst_us()).unwrap_or(i64::MAX))
            .saturating_sub(base)
            / i64::try_from(interval).unwrap_or(i64::MAX).max(1);
        l.store_room = u32::try_from(room.max(0)).unwrap_or(u32::MAX);
        if l.tokens < ask.need {
            // Denied locally, with no store call, until the store's bucket
            // has room for what is missing.
            let missing = u64::from(ask.need - l.tokens);
            let wait = crate::usage::gcra_wait_us(
                grant.tat_us,
                now_us,
                interval.saturating_mul(missing),
                l.limit.burst_us(),
            );
            let wait = i64::try_from(wait).unwrap_or(i64::MAX).max(1);
            l.blocked_until_us = now_us.saturating_add(wait);
        }
    }
    if forfeit != (0, 0) {
        // Settled as spent: the store's `leased` falls, nothing returns to
        // `remaining` (the refill set a new balance).
        let _ = store
            .settle_credits(&ledger.id, 0, forfeit.0.saturating_add(forfeit.1))
            .await;
    }
    if credit_want > 0 {
        let refill = m.refill.map(|r| crate::usage::RefillDue {
            amount: r.amount(),
            period_start: r.period_start(now),
        });
        let grant = store
            .lease_credits(&ledger.id, credit_want, refill)
            .await
            .map_err(|_| DenialReason::StoreUnavailable)?;
        let mut st = ledger.lock();
        let c = st.credits.get_or_insert_with(CreditLedger::default);
        // The store's `None` (no credits there): nothing granted, denied
        // until the compiled key is refreshed (fail closed).
        let (granted, remaining) = grant.map_or((0, 0), |g| (g.granted, g.remaining));
        let period_end = match (m.refill, refill) {
            (Some(r), Some(due)) => period_end_us(&r, due.period_start),
            _ => i64::MAX,
        };
        if c.period_end_us != period_end {
            c.period_end_us = period_end;
        }
        c.local = c.local.saturating_add(granted);
        c.store_remaining = remaining;
        c.leased_at_us = now_us;
        c.spent_since_lease = 0;
        if c.local < cost {
            c.exhausted_until_us = now_us.saturating_add(EXHAUSTED_BACKOFF_US);
        }
    }
    Ok(())
}

/// The end of the refill period that starts at `start`.
fn period_end_us(refill: &Refill, start: DateTime<Utc>) -> i64 {
    let end = match refill.interval() {
        RefillInterval::Day => start.checked_add_signed(TimeDelta::days(1)),
        RefillInterval::Month { .. } => start.checked_add_months(Months::new(1)),
    };
    end.map_or(i64::MAX, |e| e.timestamp_micros())
}

type Shard = Mutex<HashMap<KeyId, Arc<KeyLedger>, RandomState>>;

/// Every ledger of this process.
pub(crate) struct Ledgers {
    shards: Box<[Shard]>,
    hasher: RandomState,
    pub(crate) max_credit_block: u64,
    pub(crate) idle: Duration,
    pub(crate) sweeper: AtomicBool,
}

impl Ledgers {
    pub(crate) fn new(max_credit_block: u64, idle: Duration) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
            max_credit_block: max_credit_block.max(1),
            idle,
            sweeper: AtomicBool::new(false),
        }
    }

    fn shard(&self, id: &KeyId) -> MutexGuard<'_, HashMap<KeyId, Arc<KeyLedger>, RandomState>> {
        self.shards[(self.hasher.hash_one(id.as_str()) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The metering of a proven key with usage controls (`None` without
    /// them), its ledger created or reconfigured for the record's
    /// generation. Called on the cold path only.
    pub(crate) fn metering(&self, record: &KeyRecord) -> Option<Arc<Metering>> {
        let usage = &record.usage;
        if usage.is_empty() {
            return None;
        }
        let ledger = {
            let mut map = self.shard(&record.id);
            Arc::clone(map.entry(record.id.clone()).or_insert_with(|| {
                Arc::new(KeyLedger {
                    id: record.id.clone(),
                    state: Mutex::new(State {
                        generation: u64::MAX,
                        limits: Vec::new(),
                        credits: None,
                        last_spend_us: NEVER,
                        orphans: Orphans::default(),
                    }),
                    leasing: tokio::sync::Mutex::new(()),
                })
            }))
        };
        {
            let mut st = ledger.lock();
            if st.generation != record.generation {
                reconfigure(&mut st, record);
            }
        }
        Some(Arc::new(Metering {
            ledger,
            limits: usage.rate_limits.clone(),
            metered: usage.credits.is_some(),
            refill: usage.credits.as_ref().and_then(|c| c.refill),
            generation: record.generation,
        }))
    }

    /// Every ledger; those no cached key holds and with nothing to give
    /// back are dropped from the map.
    fn snapshot(&self) -> Vec<Arc<KeyLedger>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, l| {
                let keep = Arc::strong_count(l) > 1 || !l.lock().is_empty();
                if keep {
                    out.push(Arc::clone(l));
                }
                keep
            });
        }
        out
    }

    /// Gives back to the store what idle keys hold (every key when `all`),
    /// returns expired rate tokens, and settles the credits spent since the
    /// last sweep. Store errors leave the credits in the ledger for the
    /// next sweep.
    pub(crate) async fn sweep<S: KeyStore>(&self, store: &S, now_us: i64, all: bool) {
        let idle_us = i64::try_from(self.idle.as_micros()).unwrap_or(i64::MAX);
        for ledger in self.snapshot() {
            let _leasing = ledger.leasing.lock().await;
            let (credits, rate) = {
                let mut st = ledger.lock();
                let idle = all || now_us.saturating_sub(st.last_spend_us) >= idle_us;
                let mut credits = std::mem::take(&mut st.orphans.credits);
                let mut rate = std::mem::take(&mut st.orphans.rate);
                if let Some(c) = &mut st.credits {
                    credits.1 = credits.1.saturating_add(std::mem::take(&mut c.unsettled));
                    if idle {
                        credits.0 = credits.0.saturating_add(std::mem::take(&mut c.local));
                        c.leased_at_us = NEVER;
                    }
                }
                for l in &mut st.limits {
                    if l.tokens > 0 && (idle || l.expires_us <= now_us) {
                        rate.push((
                            l.limit.name().clone(),
                            std::mem::take(&mut l.tokens),
                            l.limit.interval_us(),
                        ));
                        l.expires_us = NEVER;
                    }
                }
                (credits, rate)
            };
            if credits != (0, 0)
                && store
                    .settle_credits(&ledger.id, credits.0, credits.1)
                    .await
                    .is_err()
            {
                // Kept for the next sweep.
                let mut st = ledger.lock();
                let o = &mut st.orphans.credits;
                *o = (o.0.saturating_add(credits.0), o.1.saturating_add(credits.1));
            }
            for (name, tokens, interval_us) in rate {
                let _ = store
                    .return_rate(&ledger.id, &name, tokens, interval_us)
                    .await;
            }
        }
    }
}

impl State {
    fn is_empty(&self) -> bool {
        self.orphans.credits == (0, 0)
            && self.orphans.rate.is_empty()
            && self
                .credits
                .as_ref()
                .is_none_or(|c| c.local == 0 && c.unsettled == 0)
            && self.limits.iter().all(|l| l.tokens == 0)
    }
}

/// Aligns a ledger with a record's controls: limits that did not change
/// keep their tokens; the tokens of changed or removed limits, and the
/// credits of a key no longer metered, go to the sweeper to give back.
fn reconfigure(st: &mut State, record: &KeyRecord) {
    let usage = &record.usage;
    let mut old = std::mem::take(&mut st.limits);
    for limit in usage.rate_limits.iter() {
        let kept = old
            .iter()
            .position(|l| l.limit == *limit)
            .map(|i| old.swap_remove(i));
        st.limits
            .push(kept.unwrap_or_else(|| LimitLedger::new(limit.clone())));
    }
    for l in old {
        if l.tokens > 0 {
            st.orphans
                .rate
                .push((l.limit.name().clone(), l.tokens, l.limit.interval_us()));
        }
    }
    if usage.credits.is_none() {
        if let Some(c) = st.credits.take() {
            st.orphans.credits.0 = st.orphans.credits.0.saturating_add(c.local);
            st.orphans.credits.1 = st.orphans.credits.1.saturating_add(c.unsettled);
        }
    } else if let Some(c) = &mut st.credits {
        // The refill may have changed: the block's period is judged again
        // at the next lease.
        if c.period_end_us != NEVER && usage.credits.as_ref().and_then(|c| c.refill).is_none() {
            c.period_end_us = i64::MAX;
        }
    }
    st.generation = record.generation;
}

impl Ledgers {
    /// Marks the sweeper started; `true` for the one caller that should
    /// start it.
    pub(crate) fn claim_sweeper(&self) -> bool {
        !self.sweeper.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_span_is_a_tenth_of_the_window_at_most_a_second() {
        let l = RateLimit::new("r", 100, Duration::from_secs(1)).unwrap();
        assert_eq!(lease_span_us(&l), 100_000);
        let h = RateLimit::new("h", 10, Duration::from_secs(3600)).unwrap();
        assert_eq!(lease_span_us(&h), 1_000_000);
    }

    #[test]
    fn period_ends() {
        use chrono::TimeZone;
        let start = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        let daily = Refill::daily(5).unwrap();
        assert_eq!(
            period_end_us(&daily, start),
            Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        );
        let monthly = Refill::monthly(28, 5).unwrap();
        let s = Utc.with_ymd_and_hms(2026, 1, 28, 0, 0, 0).unwrap();
        assert_eq!(
            period_end_us(&monthly, s),
            Utc.with_ymd_and_hms(2026, 2, 28, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        );
    }
}
