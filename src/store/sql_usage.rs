//! What the SQLite and PostgreSQL stores share for usage controls: the
//! columns, their encoding, and the one-statement leases, written once.
//!
//! Columns of the key table: `rate_limits` (JSON text of
//! [`RateLimits`], NULL when none), `credits_remaining` (NULL: the key has
//! no credits), `credits_leased`, `credits_refill` (JSON text of
//! [`Refill`], NULL when none), `credits_refilled_for` (microseconds, like
//! every time) and `credits_last_grant` (what the latest lease granted,
//! read back by its `RETURNING`). Rate-limit states are rows of
//! `<table>_rates`: `(key_id, name)` → `tat` (microseconds) and
//! `last_grant`.
//!
//! Every statement below is one `UPDATE` or upsert whose `SET` expressions
//! all see the row as it was: the database's row lock makes each lease
//! atomic under any number of concurrent servers (PostgreSQL re-evaluates
//! a waiting `UPDATE` on the newest row version under READ COMMITTED;
//! SQLite has one writer). The texts use `$n` placeholders, which sqlx
//! binds by number in both databases; [`Dialect`] only renames
//! `LEAST`/`GREATEST` to SQLite's scalar `MIN`/`MAX` (neither ever sees a
//! NULL argument here, where the two dialects would differ).

use super::sql::corrupt;
use crate::ids::KeyId;
use crate::store::StoreError;
use crate::usage::{
    CreditChange, CreditGrant, Credits, RateLease, RateLimits, Refill, RefillDue, UsageControls,
    gcra_take,
};

/// The usage columns, in the order [`super::sql::COLUMNS`] ends with them
/// (a test checks it).
#[cfg(test)]
pub(crate) const USAGE_COLUMNS: &str =
    "rate_limits, credits_remaining, credits_leased, credits_refill, credits_refilled_for";

/// The credit columns a change returns.
const CREDIT_COLUMNS: &str =
    "credits_remaining, credits_leased, credits_refill, credits_refilled_for";

/// The `SET` clauses of a key update for the usage columns, placeholders
/// `$19` to `$23` (see [`EncodedUsage`] for the binding order): the limits
/// and the refill are replaced; credits are turned on (with the record's
/// balance) or off; a refill period is set only where none was (a refill
/// added to a metered key starts with the current period, so it does not
/// refill at once); an existing balance, its leases and its refill period
/// are never touched (they change only by the atomic operations, which a
/// read-modify-write update racing them would undo).
pub(crate) const UPDATE_USAGE_SET: &str = "rate_limits = $19, credits_refill = $20, \
     credits_remaining = CASE WHEN $21 IS NULL THEN NULL ELSE COALESCE(credits_remaining, $21) END, \
     credits_leased = CASE WHEN $21 IS NULL THEN 0 WHEN credits_remaining IS NULL THEN $22 \
     ELSE credits_leased END, \
     credits_refilled_for = CASE WHEN $21 IS NULL THEN NULL WHEN credits_remaining IS NULL THEN $23 \
     ELSE COALESCE(credits_refilled_for, $23) END";

/// The SQL dialect of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Dialect {
    fn text(self, sql: String) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => sql,
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => sql.replace("LEAST(", "MIN(").replace("GREATEST(", "MAX("),
        }
    }
}

/// A record's usage controls encoded for binding.
pub(crate) struct EncodedUsage {
    pub rate_limits: Option<String>,
    pub credits_refill: Option<String>,
    pub credits_remaining: Option<i64>,
    pub credits_leased: i64,
    pub credits_refilled_for: Option<i64>,
}

pub(crate) fn encode_usage(u: &UsageControls) -> Result<EncodedUsage, StoreError> {
    let rate_limits = (!u.rate_limits.is_empty())
        .then(|| super::sql::to_json("rate_limits", &u.rate_limits))
        .transpose()?;
    let c = u.credits.as_ref();
    let credits_refill = c
        .and_then(|c| c.refill.as_ref())
        .map(|r| super::sql::to_json("credits_refill", r))
        .transpose()?;
    Ok(EncodedUsage {
        rate_limits,
        credits_refill,
        credits_remaining: c.map(|c| amount(c.remaining)),
        credits_leased: c.map_or(0, |c| amount(c.leased)),
        credits_refilled_for: c.and_then(|c| c.refilled_for).map(super::sql::micros),
    })
}

/// An amount as stored: at most [`Credits::MAX`] (a larger one gives the
/// same result in every statement that takes it: a grant, a return).
pub(crate) fn amount(n: u64) -> i64 {
    // At most 2^53 - 1: fits.
    n.min(Credits::MAX) as i64
}

/// Reads a stored amount back, naming the field when it is out of range.
fn stored_amount(id: &str, field: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v)
        .ok()
        .filter(|n| *n <= Credits::MAX || field == "credits_leased")
        .ok_or_else(|| corrupt(id, field, format!("{v} is out of range")))
}

/// The credits of a row, from their columns (`remaining` NULL: none).
pub(crate) fn decode_credits(
    id: &str,
    remaining: Option<i64>,
    leased: i64,
    refill: Option<String>,
    refilled_for: Option<i64>,
) -> Result<Option<Credits>, StoreError> {
    let Some(remaining) = remaining else {
        return Ok(None);
    };
    let refill = refill
        .map(|s| serde_json::from_str::<Refill>(&s).map_err(|e| corrupt(id, "credits_refill", e)))
        .transpose()?;
    let refilled_for = refilled_for
        .map(|v| {
            chrono::DateTime::from_timestamp_micros(v).ok_or_else(|| {
                corrupt(
                    id,
                    "credits_refilled_for",
                    format!("{v} microseconds is out of range"),
                )
            })
        })
        .transpose()?;
    Ok(Some(Credits {
        remaining: stored_amount(id, "credits_remaining", remaining)?,
        leased: stored_amount(id, "credits_leased", leased)?,
        refill,
        refilled_for,
    }))
}

/// The usage controls of a row selected with [`super::sql::COLUMNS`].
pub(crate) fn decode_usage<'r, R>(row: &'r R, id: &str) -> Result<UsageControls, StoreError>
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let opt_text = |field: &'static str| {
        row.try_get::<Option<String>, _>(field)
            .map_err(|e| corrupt(id, field, e))
    };
    let opt_int = |field: &'static str| {
        row.try_get::<Option<i64>, _>(field)
            .map_err(|e| corrupt(id, field, e))
    };
    let rate_limits = match opt_text("rate_limits")? {
        None => RateLimits::none(),
        Some(s) => serde_json::from_str(&s).map_err(|e| corrupt(id, "rate_limits", e))?,
    };
    let leased = row
        .try_get::<i64, _>("credits_leased")
        .map_err(|e| corrupt(id, "credits_leased", e))?;
    let credits = decode_credits(
        id,
        opt_int("credits_remaining")?,
        leased,
        opt_text("credits_refill")?,
        opt_int("credits_refilled_for")?,
    )?;
    Ok(UsageControls {
        rate_limits,
        credits,
    })
}

/// A credit lease's binds: `$2` want, `$3` the refill period's start (NULL
/// without a refill), `$4` the refill amount.
pub(crate) struct LeaseBinds {
    pub want: i64,
    pub period_start: Option<i64>,
    pub refill_amount: Option<i64>,
}

pub(crate) fn lease_binds(want: u64, refill: Option<RefillDue>) -> LeaseBinds {
    LeaseBinds {
        want: amount(want),
        period_start: refill.map(|r| super::sql::micros(r.period_start)),
        refill_amount: refill.map(|r| amount(r.amount)),
    }
}

/// The grant a lease's `RETURNING credits_last_grant, credits_remaining` read.
pub(crate) fn credit_grant(
    id: &KeyId,
    granted: i64,
    remaining: i64,
) -> Result<CreditGrant, StoreError> {
    Ok(CreditGrant {
        granted: stored_amount(id.as_str(), "credits_last_grant", granted)?,
        remaining: stored_amount(id.as_str(), "credits_remaining", remaining)?,
    })
}

/// What a change that matched no row means, from the key's stored balance
/// (`None`: no key; `Some(None)`: no credits): [`StoreError::NotFound`],
/// `Ok(None)`, the overflow (nothing changed), or `Ok(Some(()))` when the
/// change fits now (the balance moved meanwhile): try again.
pub(crate) fn unmatched_change(
    id: &KeyId,
    change: CreditChange,
    stored: Option<Option<i64>>,
) -> Result<Option<()>, StoreError> {
    let Some(stored) = stored else {
        return Err(StoreError::NotFound(id.clone()));
    };
    let Some(remaining) = stored else {
        return Ok(None);
    };
    let remaining = stored_amount(id.as_str(), "credits_remaining", remaining)?;
    change
        .apply(remaining)
        .map(|_| Some(()))
        .map_err(|error| StoreError::Usage {
            id: id.clone(),
            error,
        })
}

/// The binds of a rate lease: the inputs of [`gcra_take`] checked to lie
/// where integer SQL computes exactly what it does (no saturation), and
/// the outcome for a bucket not yet stored (a full one).
pub(crate) struct RateBinds {
    pub now: i64,
    pub want: i64,
    pub interval: i64,
    pub burst: i64,
    pub fresh_granted: i64,
    pub fresh_tat: i64,
    /// The number of the lease, when it creates the bucket (random: see
    /// `memory_usage::first_lease`).
    pub fresh_lease: i64,
}

pub(crate) fn rate_binds(id: &KeyId, lease: &RateLease) -> Result<RateBinds, StoreError> {
    super::memory_usage::check_rate_lease(id, lease)?;
    let (fresh_granted, fresh_tat) = gcra_take(
        None,
        lease.now_us,
        lease.want,
        lease.interval_us,
        lease.burst_us,
    );
    // Both at most MAX_WINDOW in microseconds: fit.
    Ok(RateBinds {
        now: lease.now_us,
        want: i64::from(lease.want),
        interval: lease.interval_us.max(1) as i64,
        burst: lease.burst_us as i64,
        fresh_granted: i64::from(fresh_granted),
        fresh_tat,
        // Below 2^62: fits, with room to count leases.
        fresh_lease: super::memory_usage::first_lease() as i64,
    })
}

/// How far back a return moves the bucket: `tokens × interval_us`,
/// saturated as [`MemoryStore`](crate::MemoryStore) saturates it.
pub(crate) fn rate_return(tokens: u32, interval_us: u64) -> i64 {
    i64::try_from(interval_us.saturating_mul(u64::from(tokens))).unwrap_or(i64::MAX)
}

/// The usage statements of one key table and its rates table (both given
/// quoted and, in PostgreSQL, schema-qualified).
#[derive(Debug)]
pub(crate) struct UsageQueries {
    /// `$1` id, then [`LeaseBinds`]; returns `credits_last_grant`,
    /// `credits_remaining`; no row: no key or no credits.
    pub lease_credits: String,
    /// `$1` id, `$2` returned, `$3` spent.
    pub settle_credits: String,
    /// `$1` id, `$2` the new balance; returns the credit columns.
    pub set_credits: String,
    /// `$1` id, `$2` the amount; no row when the sum would pass the maximum.
    pub add_credits: String,
    /// `$1` id: the stored balance (NULL: no credits).
    pub credits_of: String,
    /// `$1` id, `$2` name, then [`RateBinds`] (`$3` now, `$4` want, `$5`
    /// interval, `$6` burst, `$7` fresh grant, `$8` fresh tat, `$9` fresh
    /// lease number); returns `tat`, `last_grant`, `lease`; no row: no key.
    /// Computes what `memory_usage::RateBucket::after_lease` does.
    pub lease_rate: String,
    /// `$1` id, `$2` name, `$3` how far back, `$4` `i64::MIN`, `$5` the
    /// number of the lease the tokens came from. Computes what
    /// `memory_usage::RateBucket::give_back` does.
    pub return_rate: String,
    /// `$1` id: deletes the key's rate states (PostgreSQL's foreign key
    /// cascades instead).
    #[cfg(feature = "sqlite")]
    pub delete_rates: String,
    rates: String,
}

impl UsageQueries {
    pub(crate) fn new(dialect: Dialect, keys: &str, rates: &str) -> Self {
        let max = Credits::MAX;
        // The balance a lease works on: the refill's amount when one is
        // due (never refilled, or last for an earlier period), else the
        // stored balance.
        let due =
            "($3 IS NOT NULL AND (credits_refilled_for IS NULL OR credits_refilled_for < $3))";
        let balance = format!("(CASE WHEN {due} THEN $4 ELSE credits_remaining END)");
        let grant = format!("LEAST($2, {balance})");
        // GCRA (`usage::gcra_take`) over the stored `r.tat`, `$3` now,
        // `$4` want, `$5` interval, `$6` burst.
        let max_i64 = i64::MAX;
        let base = "GREATEST(r.tat, $3)";
        let granted = format!("LEAST(GREATEST($3 + $6 - {base}, 0) / $5, $4)");
        let d = |s: String| dialect.text(s);
        Self {
            lease_credits: d(format!(
                "UPDATE {keys} SET credits_last_grant = {grant}, \
                 credits_remaining = {balance} - {grant}, \
                 credits_leased = credits_leased + {grant}, \
                 credits_refilled_for = CASE WHEN {due} THEN $3 ELSE credits_refilled_for END \
                 WHERE id = $1 AND credits_remaining IS NOT NULL \
                 RETURNING credits_last_grant, credits_remaining"
            )),
            settle_credits: d(format!(
                "UPDATE {keys} SET credits_remaining = LEAST(credits_remaining + $2, {max}), \
                 credits_leased = GREATEST(credits_leased - ($2 + $3), 0) \
                 WHERE id = $1 AND credits_remaining IS NOT NULL"
            )),
            set_credits: format!(
                "UPDATE {keys} SET credits_remaining = $2 \
                 WHERE id = $1 AND credits_remaining IS NOT NULL RETURNING {CREDIT_COLUMNS}"
            ),
            add_credits: format!(
                "UPDATE {keys} SET credits_remaining = credits_remaining + $2 \
                 WHERE id = $1 AND credits_remaining IS NOT NULL \
                 AND credits_remaining <= {max} - $2 RETURNING {CREDIT_COLUMNS}"
            ),
            credits_of: format!("SELECT credits_remaining FROM {keys} WHERE id = $1"),
            // In `SET`, every `r.` column is the row before the update.
            lease_rate: d(format!(
                "INSERT INTO {rates} AS r \
                 (key_id, name, tat, last_grant, lease, restart_lease, slack, added) \
                 SELECT id, $2, $8, $7, $9, $9, {max_i64}, $5 * $7 FROM {keys} WHERE id = $1 \
                 ON CONFLICT (key_id, name) DO UPDATE SET \
                 tat = CASE WHEN {granted} = 0 THEN r.tat ELSE {base} + $5 * {granted} END, \
                 last_grant = {granted}, \
                 lease = r.lease + 1, \
                 restart_lease = CASE WHEN r.tat < $3 THEN r.lease + 1 ELSE r.restart_lease END, \
                 slack = CASE WHEN r.tat < $3 THEN {max_i64} ELSE LEAST(r.slack, r.tat - $3) END, \
                 added = $5 * {granted} \
                 RETURNING tat, last_grant, lease"
            )),
            // The latest lease's tokens move the TAT back by at most what
            // it added, an earlier lease's by at most the slack; `$4`
            // (`i64::MIN`) keeps the subtraction in range.
            return_rate: {
                let latest = "lease = $5";
                let credit = format!(
                    "(CASE WHEN {latest} THEN LEAST($3, GREATEST(added, 0)) \
                     ELSE LEAST($3, GREATEST(slack, 0)) END)"
                );
                d(format!(
                    "UPDATE {rates} SET \
                     tat = CASE WHEN tat < $4 + {credit} THEN $4 ELSE tat - {credit} END, \
                     added = CASE WHEN {latest} THEN added - {credit} ELSE added END, \
                     slack = CASE WHEN {latest} THEN slack ELSE slack - {credit} END \
                     WHERE key_id = $1 AND name = $2 AND restart_lease <= $5 AND $5 <= lease"
                ))
            },
            #[cfg(feature = "sqlite")]
            delete_rates: format!("DELETE FROM {rates} WHERE key_id = $1"),
            rates: rates.to_owned(),
        }
    }

    /// `$1` id, `$2`... the names of the key's limits after an update:
    /// deletes the states of limits the key no longer carries (so a limit
    /// removed and added again starts with a full bucket, as in
    /// [`MemoryStore`](crate::MemoryStore)).
    pub(crate) fn prune_rates(&self, limits: &RateLimits) -> String {
        let mut text = format!("DELETE FROM {} WHERE key_id = $1", self.rates);
        if !limits.is_empty() {
            let names: Vec<String> = (0..limits.len()).map(|i| format!("${}", i + 2)).collect();
            text.push_str(&format!(" AND name NOT IN ({})", names.join(", ")));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageError;

    #[test]
    #[cfg(all(feature = "sqlite", feature = "postgres"))]
    fn sqlite_text_has_no_least_or_greatest() {
        let q = UsageQueries::new(Dialect::Sqlite, "\"k\"", "\"r\"");
        for text in [&q.lease_credits, &q.settle_credits, &q.lease_rate] {
            assert!(
                !text.contains("LEAST(") && !text.contains("GREATEST("),
                "{text}"
            );
        }
        let p = UsageQueries::new(Dialect::Postgres, "\"k\"", "\"r\"");
        assert!(p.lease_rate.contains("GREATEST(r.tat, $3)"));
    }

    #[test]
    fn amounts_are_clamped_and_checked() {
        assert_eq!(amount(u64::MAX), Credits::MAX as i64);
        assert!(decode_credits("k", Some(-1), 0, None, None).is_err());
        assert!(decode_credits("k", Some(1), -1, None, None).is_err());
        assert!(matches!(
            decode_credits("k", Some(1), 0, Some("{".into()), None),
            Err(StoreError::Corrupt {
                field: "credits_refill",
                ..
            })
        ));
        assert_eq!(decode_credits("k", None, 0, None, None), Ok(None));
    }

    #[test]
    fn out_of_domain_rate_leases_are_refused() {
        let id = KeyId::generate();
        let lease = |now_us, burst_us| RateLease {
            name: crate::usage::LimitName::new("r").unwrap(),
            want: 1,
            now_us,
            interval_us: 1,
            burst_us,
        };
        assert!(rate_binds(&id, &lease(0, 10)).is_ok());
        assert!(matches!(
            rate_binds(&id, &lease(0, u64::MAX)),
            Err(StoreError::Usage {
                error: UsageError::WindowTooLong { .. },
                ..
            })
        ));
        assert!(rate_binds(&id, &lease(i64::MAX, 10)).is_err());
        // The domain's ends (`tests/gcra_cases` leases at both at once).
        use super::super::memory_usage::MAX_ABS_NOW_US;
        assert!(rate_binds(&id, &lease(MAX_ABS_NOW_US, 10)).is_ok());
        assert!(rate_binds(&id, &lease(-MAX_ABS_NOW_US, 10)).is_ok());
        assert!(rate_binds(&id, &lease(MAX_ABS_NOW_US + 1, 10)).is_err());
        assert!(rate_binds(&id, &lease(-MAX_ABS_NOW_US - 1, 10)).is_err());
        assert_eq!(MAX_ABS_NOW_US, 1 << 61, "tests/gcra_cases uses ±2^61");
    }
}
