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
//! the verifier calls [`top_up`] (in `lease.rs`: one lease in flight per
//! key) and tries again; the store is never asked while the local blocks
//! suffice. [`Ledgers::sweep`] gives back what idle keys hold.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use foldhash::fast::RandomState;

use super::denial::{DenialReason, RateLimitStatus};
use super::request::Spending;
use crate::ids::KeyId;
use crate::key::KeyRecord;
use crate::store::KeyStore;
use crate::usage::{LimitName, RateLimit, RateLimits, Refill};

mod lease;

pub(crate) use lease::top_up;

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
    /// The number of the earliest lease whose tokens are still held
    /// ([`RateGrant::lease`](crate::usage::RateGrant::lease)), given back
    /// with them: the store credits them whole if it was its latest lease,
    /// else as far as the leases since allow, and not at all if the bucket
    /// restarted since (their charge is forgotten: given back, they would
    /// count twice; an outside review measured 124 requests at one instant
    /// under a limit of 100 across two servers, 2026-12-03).
    lease: u64,
    /// The number of the latest lease and what it granted: that many of
    /// the tokens held go back under its number, the rest under
    /// [`lease`](Self::lease)'s ([`take_tokens`](Self::take_tokens)).
    latest: (u64, u32),
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
            lease: 0,
            latest: (0, 0),
        }
    }

    /// Counts `granted` tokens of lease number `lease`.
    fn leased(&mut self, granted: u32, lease: u64) {
        // The earliest lease held decides: tokens of a lease before a
        // restart may not go back, even with later ones.
        if self.tokens == 0 {
            self.lease = lease;
        }
        self.latest = (lease, granted);
        self.tokens = self.tokens.saturating_add(granted);
    }

    /// Takes every token held, to give back, as (tokens, lease number)
    /// pairs: as many as the latest lease granted under its number (the
    /// store credits its latest lease's tokens whole), the rest under the
    /// earliest's (credited within the bucket's slack). Which of the
    /// tokens were spent does not matter: each bound holds for any tokens
    /// given back under it. With all of them under the earliest number, a
    /// server spending 3 a request under 1,000 a day lost 245 of 248
    /// tokens at each give-back (an outside review, 2026-12-03).
    fn take_tokens(&mut self) -> [(u32, u64); 2] {
        let tokens = std::mem::take(&mut self.tokens);
        let (latest, granted) = self.latest;
        let recent = tokens.min(granted);
        [(recent, latest), (tokens - recent, self.lease)]
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
    /// Until then, a cost above `exhausted_room` is denied without asking
    /// the store (it granted too little).
    exhausted_until_us: i64,
    /// What the store and this ledger had together at that denial: a
    /// cheaper request may still pass.
    exhausted_room: u64,
    leased_at_us: i64,
    spent_since_lease: u64,
}

/// Work left for the sweeper: the tokens of a dropped limit to give back,
/// and credits to settle as spent.
#[derive(Debug, Default)]
struct Orphans {
    /// Rate tokens to give back: (limit, tokens, interval, the number of
    /// the lease they came from: [`RateGrant::lease`](crate::usage::RateGrant::lease)).
    rate: Vec<(LimitName, u32, u64, u64)>,
    /// Credits to settle as spent (`settle_credits(id, 0, n)`: the store's
    /// `leased` falls, nothing returns to `remaining`): the block of a key
    /// no longer metered, and what a settle that failed carried. A settle
    /// that failed may have committed (its reply lost), so it is never
    /// sent again with credits to return: sent twice, that would mint
    /// them. Sent as spent, twice or not, it mints nothing; at worst the
    /// returned part stays out of `remaining` (stranded).
    credits: u64,
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
                Some(c) if now_us < c.period_end_us && c.backing_off(cost, now_us) => {
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
    /// last sweep. A block whose refill period has ended is forfeited
    /// (settled as spent), idle or not. A settle that fails is settled
    /// again by the next sweep, all of it as spent: it may have committed.
    pub(crate) async fn sweep<S: KeyStore>(&self, store: &S, now_us: i64, all: bool) {
        let idle_us = i64::try_from(self.idle.as_micros()).unwrap_or(i64::MAX);
        for ledger in self.snapshot() {
            let _leasing = ledger.leasing.lock().await;
            let (credits, rate) = {
                let mut st = ledger.lock();
                let idle = all || now_us.saturating_sub(st.last_spend_us) >= idle_us;
                // (returned, spent)
                let mut credits = (0u64, std::mem::take(&mut st.orphans.credits));
                let mut rate = std::mem::take(&mut st.orphans.rate);
                if let Some(c) = &mut st.credits {
                    credits.1 = credits.1.saturating_add(std::mem::take(&mut c.unsettled));
                    // A block of a refill period that has ended is
                    // forfeited, never returned into the new period's
                    // balance (the refill set it).
                    let stale = c.period_end_us != NEVER && now_us >= c.period_end_us;
                    if idle || stale {
                        let local = std::mem::take(&mut c.local);
                        if stale {
                            credits.1 = credits.1.saturating_add(local);
                        } else {
                            credits.0 = credits.0.saturating_add(local);
                        }
                        c.leased_at_us = NEVER;
                    }
                }
                for l in &mut st.limits {
                    if l.tokens > 0 && (idle || l.expires_us <= now_us) {
                        for (tokens, lease) in l.take_tokens() {
                            if tokens > 0 {
                                let (name, interval) = (l.limit.name(), l.limit.interval_us());
                                rate.push((name.clone(), tokens, interval, lease));
                            }
                        }
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
                // It may have committed: the next sweep settles all of it
                // as spent (see `Orphans::credits`).
                ledger.spent_later(credits.0.saturating_add(credits.1));
            }
            for (name, tokens, interval_us, lease) in rate {
                let _ = store
                    .return_rate(&ledger.id, &name, tokens, interval_us, lease)
                    .await;
            }
        }
    }
}

impl CreditLedger {
    /// Whether a spend of `cost` is denied by the backoff after the store
    /// granted too little.
    fn backing_off(&self, cost: u64, now_us: i64) -> bool {
        self.exhausted_until_us > now_us && cost > self.exhausted_room
    }
}

impl KeyLedger {
    /// Leaves `n` credits for the sweeper to settle as spent.
    fn spent_later(&self, n: u64) {
        let mut st = self.lock();
        st.orphans.credits = st.orphans.credits.saturating_add(n);
    }
}

impl State {
    fn is_empty(&self) -> bool {
        self.orphans.credits == 0
            && self.orphans.rate.is_empty()
            && self
                .credits
                .as_ref()
                .is_none_or(|c| c.local == 0 && c.unsettled == 0)
            && self.limits.iter().all(|l| l.tokens == 0)
    }
}

/// Aligns a ledger with a record's controls: limits that did not change
/// keep their tokens; the tokens of changed or removed limits go to the
/// sweeper to give back, and the block of a key no longer metered to be
/// settled as spent (the store dropped its credits; were they turned on
/// again, a returned block would add to the new balance).
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
    for mut l in old {
        for (tokens, lease) in l.take_tokens() {
            if tokens > 0 {
                let orphan = (l.limit.name().clone(), tokens, l.limit.interval_us(), lease);
                st.orphans.rate.push(orphan);
            }
        }
    }
    if usage.credits.is_none() {
        if let Some(c) = st.credits.take() {
            st.orphans.credits = st
                .orphans
                .credits
                .saturating_add(c.local)
                .saturating_add(c.unsettled);
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
    /// The manager changed the store's balance of `id` (set or added
    /// credits): a key this process found exhausted leases again at its
    /// next check instead of after its backoff. (Other processes ask the
    /// store again when their backoff of at most 1 s ends.)
    pub(crate) fn balance_changed(&self, id: &KeyId) {
        let ledger = self.shard(id).get(id).map(Arc::clone);
        if let Some(ledger) = ledger {
            if let Some(c) = &mut ledger.lock().credits {
                c.exhausted_until_us = NEVER;
            }
        }
    }

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

    /// A key still in use (not idle) whose block belongs to an ended
    /// refill period: the periodic sweep forfeits the block (settled as
    /// spent) instead of keeping it to give back into the new period.
    #[tokio::test]
    async fn the_sweep_forfeits_a_busy_keys_old_period_block() {
        use crate::ids::{Environment, OwnerId};
        use crate::key::{KeyKind, SecretHash};
        use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
        use crate::store::MemoryStore;
        use crate::usage::{Credits, RefillDue, UsageControls};
        use chrono::{DateTime, TimeDelta, Utc};

        let start: DateTime<Utc> = "2026-01-10T23:59:00Z".parse().unwrap();
        let refill = Refill::daily(1_000).unwrap();
        let id = KeyId::generate();
        let record = KeyRecord {
            secret_hash: SecretHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            id: id.clone(),
            owner: OwnerId::new("contoso").unwrap(),
            environment: Environment::new("live").unwrap(),
            name: "metered".into(),
            kind: KeyKind::Scoped,
            permissions: PermissionGrant::All,
            resources: ResourceScope::All,
            ip_allowlist: IpAllowlist::any(),
            external_id: None,
            metadata: Default::default(),
            usage: UsageControls {
                rate_limits: Default::default(),
                credits: Some(Credits::new(1_000).unwrap().with_refill(refill)),
            },
            created_at: start,
            expires_at: None,
            revoked_at: None,
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            reminded_at: None,
            generation: 1,
        };
        let store = MemoryStore::new();
        store.insert(&record, None).await.unwrap();
        let credits = |r: Option<KeyRecord>| r.unwrap().usage.credits.unwrap();

        let ledgers = Ledgers::new(100, Duration::from_secs(3600));
        let m = ledgers.metering(&record).unwrap();
        let spending = Spending::default();
        let now_us = start.timestamp_micros();
        // Two spends at the same instant: the second leases a full block.
        for _ in 0..2 {
            assert!(matches!(
                m.ledger.try_spend(&m, &spending, now_us),
                Outcome::Short
            ));
            top_up(&store, &m, &spending, start, 100).await.unwrap();
            assert!(matches!(
                m.ledger.try_spend(&m, &spending, now_us),
                Outcome::Spent(_)
            ));
        }
        assert_eq!(credits(store.get(&id).await.unwrap()).leased, 101);
        // Past midnight another server's lease refills the balance.
        let later = start + TimeDelta::minutes(2);
        let due = RefillDue {
            amount: 1_000,
            period_start: refill.period_start(later),
        };
        store.lease_credits(&id, 1, Some(due)).await.unwrap();
        // Not idle (1 h): only the old period makes the sweep act.
        ledgers.sweep(&store, later.timestamp_micros(), false).await;
        let c = credits(store.get(&id).await.unwrap());
        assert_eq!((c.remaining, c.leased), (999, 1), "{c:?}");
        // Nothing is left to give back into the new period.
        ledgers.sweep(&store, later.timestamp_micros(), true).await;
        let c = credits(store.get(&id).await.unwrap());
        assert_eq!((c.remaining, c.leased), (999, 1), "{c:?}");
    }
}
