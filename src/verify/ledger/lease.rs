//! Leasing: what a ledger is short of, asked of the store ([`top_up`]).

use chrono::{DateTime, Months, TimeDelta, Utc};

use super::CREDIT_BLOCK_SPAN_US;
use super::{CreditLedger, EXHAUSTED_BACKOFF_US, Metering, NEVER, lease_span_us, merged};
use crate::store::KeyStore;
use crate::usage::{LimitName, RateLease, Refill, RefillInterval};
use crate::verify::denial::DenialReason;
use crate::verify::request::Spending;

/// A rate lease to ask for.
struct RateAsk {
    name: LimitName,
    need: u32,
    lease: RateLease,
    /// Tokens to give back first, with the number of the lease each part
    /// goes back under ([`LimitLedger::take_tokens`](super::LimitLedger)).
    returned: [(u32, u64); 2],
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
    let mut credit_block = 0u64;
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
            let returned = if valid { [(0, 0); 2] } else { l.take_tokens() };
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
            if !(fresh && (c.local >= cost || c.backing_off(cost, now_us))) {
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
                credit_block = block;
                credit_want = block.max(cost.saturating_sub(c.local));
            }
        }
    }
    for ask in &asks {
        for &(tokens, number) in &ask.returned {
            if tokens > 0 {
                // Best effort: a token not given back is lost (fewer
                // requests pass), never a token spent twice.
                let interval_us = ask.lease.interval_us;
                let _ = store
                    .return_rate(&ledger.id, &ask.name, tokens, interval_us, number)
                    .await;
            }
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
        l.leased(grant.granted, grant.lease);
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
        // `remaining` (the refill set a new balance). Failed: the sweeper
        // settles it (as spent, which is safe to send twice).
        let n = forfeit.0.saturating_add(forfeit.1);
        if store.settle_credits(&ledger.id, 0, n).await.is_err() {
            ledger.spent_later(n);
        }
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
        let give_back = {
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
                // Denied: of a grant sized for this cost, only a normal
                // block stays here; the rest goes back at once, so neither
                // a crash nor the other servers' view of the balance pays
                // for a request that could not pass.
                let back = granted.saturating_sub(credit_block).min(c.local);
                c.local -= back;
                c.store_remaining = c.store_remaining.saturating_add(back);
                c.exhausted_room = c.local.saturating_add(c.store_remaining);
                back
            } else {
                0
            }
        };
        // A give-back whose outcome is unknown is never sent again with
        // credits to return (it may have committed): the sweeper settles
        // it as spent.
        if give_back > 0
            && store
                .settle_credits(&ledger.id, give_back, 0)
                .await
                .is_err()
        {
            ledger.spent_later(give_back);
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

#[cfg(test)]
mod tests {
    use super::*;

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
