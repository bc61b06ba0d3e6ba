//! Usage controls through the manager: reading and changing a key's credit
//! balance ([`KeyManager::credits`], [`KeyManager::set_credits`],
//! [`KeyManager::add_credits`]), the edit rule for limits and metering, and
//! moving a balance to a rotation's successor.

use chrono::{DateTime, Utc};

use super::KeyManager;
use crate::audit::AuditAction;
use crate::ids::KeyId;
use crate::key::KeyRecord;
use crate::manager::KeywardError;
use crate::policy::{Actor, ManagementAction, Policy};
use crate::store::KeyStore;
use crate::usage::{CreditChange, Credits, RateLimits, Refill, UsageControls};

impl<S: KeyStore> KeyManager<S> {
    /// The key's credits as the store holds them now (`None`: the key is
    /// not metered): `remaining` in the store, `leased` to verifiers and
    /// not yet settled, the refill and the period last refilled for. Needs
    /// [`ManagementAction::View`] (an owner's administrators and managers
    /// may read their balance).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use keyward::*;
    /// use keyward::{hash::Argon2Hasher, policy::PermissionGrant, usage::Credits};
    /// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
    /// let manager = KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(registry),
    /// )
    /// .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    /// .build().unwrap();
    /// let billing = Actor::system("billing");
    /// let new = NewKey::new("contoso", "live", "CI")
    ///     .permissions(PermissionGrant::All)
    ///     .credits(Credits::new(1_000).unwrap());
    /// let id = manager.create(&billing, new).await.unwrap().key.id;
    ///
    /// manager.add_credits(&billing, &id, 500).await.unwrap();
    /// let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
    /// assert_eq!(manager.credits(&admin, &id).await.unwrap().unwrap().remaining, 1_500);
    /// // The publisher's own administrator may read the balance, not raise it.
    /// assert!(matches!(
    ///     manager.add_credits(&admin, &id, 500).await,
    ///     Err(KeywardError::NotAllowed { .. })
    /// ));
    /// # });
    /// ```
    pub async fn credits(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<Option<Credits>, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::View, Some(id), async move {
            let record = self.load_for(actor, ManagementAction::View, id).await?;
            Ok(record.usage.credits)
        })
        .await
    }

    /// Sets the key's balance (`remaining`) to `n`, atomically against
    /// verifiers' leases (credits already leased are spent or returned as
    /// usual, on top of `n`). Needs [`ManagementAction::Usage`] (the
    /// application itself only, by default). Audited
    /// ([`AuditAction::CreditsSet`]).
    ///
    /// Errors: [`KeywardError::NotMetered`] for a key without credits;
    /// [`KeywardError::Usage`] naming `credits.remaining` when `n` is above
    /// [`Credits::MAX`]; [`KeywardError::Revoked`] /
    /// [`KeywardError::Expired`]. Nothing changes on an error.
    pub async fn set_credits(
        &self,
        actor: &Actor,
        id: &KeyId,
        n: u64,
    ) -> Result<Credits, KeywardError> {
        self.change_credits(actor, id, CreditChange::Set(n)).await
    }

    /// Adds `n` credits to the key's balance, atomically (two concurrent
    /// adds both count). Needs [`ManagementAction::Usage`] (the application
    /// itself only, by default). Audited ([`AuditAction::CreditsAdded`],
    /// with the amount and the balance after).
    ///
    /// Errors: as [`KeyManager::set_credits`]; a sum above [`Credits::MAX`]
    /// is [`KeywardError::Usage`] naming `add`, and nothing changes. A
    /// negative amount from an API is refused before it gets here by
    /// [`CreditChange::add_signed`].
    pub async fn add_credits(
        &self,
        actor: &Actor,
        id: &KeyId,
        n: u64,
    ) -> Result<Credits, KeywardError> {
        self.change_credits(actor, id, CreditChange::Add(n)).await
    }

    async fn change_credits(
        &self,
        actor: &Actor,
        id: &KeyId,
        change: CreditChange,
    ) -> Result<Credits, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Usage, Some(id), async move {
            let record = self.load_for(actor, ManagementAction::Usage, id).await?;
            self.changeable(&record)?;
            change.check()?;
            let after = self
                .shared
                .store
                .change_credits(id, change)
                .await
                .map_err(KeywardError::from_store)?;
            // A verifier's cached view of the key shows its balance.
            self.shared.invalidate(id);
            self.shared.ledgers.balance_changed(id);
            let after = after.ok_or_else(|| KeywardError::NotMetered(id.clone()))?;
            let (audited, detail) = match change {
                CreditChange::Set(n) => (AuditAction::CreditsSet, format!("set to {n}")),
                CreditChange::Add(n) => (
                    AuditAction::CreditsAdded,
                    format!("added {n}, remaining {}", after.remaining),
                ),
            };
            self.done_with(actor, ManagementAction::Usage, audited, &record, detail)
                .await;
            Ok(after)
        })
        .await
    }

    /// Takes the whole balance of a key being rotated, for its successor:
    /// in one atomic lease (a refill due is applied first, so the
    /// successor does not get a second one this period), all of
    /// `remaining` moves to the old key's `leased`. `None`: not metered.
    pub(super) async fn take_balance(
        &self,
        old: &KeyRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<Credits>, KeywardError> {
        let Some(credits) = &old.usage.credits else {
            return Ok(None);
        };
        let grant = self
            .shared
            .store
            .lease_credits(&old.id, Credits::MAX, credits.refill_due(now))
            .await
            .map_err(KeywardError::from_store)?;
        Ok(grant.map(|g| Credits {
            remaining: g.granted,
            leased: 0,
            refill: credits.refill,
            refilled_for: credits
                .refill
                .map(|r| r.period_start(now))
                .max(credits.refilled_for),
        }))
    }
}

/// Applies an edit's usage controls to `record` (see
/// [`KeyEdit`](crate::KeyEdit)); returns whether they widen the key's
/// usage, which needs [`ManagementAction::Usage`].
pub(super) fn edit_usage(
    policy: &Policy,
    record: &mut KeyRecord,
    rate_limits: Option<RateLimits>,
    credits: Option<Option<Credits>>,
    now: DateTime<Utc>,
) -> Result<bool, KeywardError> {
    let mut widens = false;
    if let Some(limits) = rate_limits {
        policy.check_rate_limits(&limits)?;
        widens |= !limits.narrows(&record.usage.rate_limits);
        record.usage.rate_limits = limits;
    }
    if let Some(credits) = credits {
        match (record.usage.credits.take(), credits) {
            (None, None) => {}
            (Some(_), None) => widens = true,
            (None, Some(new)) => {
                // Turning metering on gives a balance.
                new.check()?;
                widens = true;
                record.usage.credits = Some(Credits {
                    leased: 0,
                    refilled_for: new.refill.map(|r| r.period_start(now)),
                    ..new
                });
            }
            (Some(mut old), Some(new)) => {
                widens |= !refill_narrows(new.refill.as_ref(), old.refill.as_ref());
                // A refill added to a metered key starts with the current
                // period: the balance is refilled at the next period, not
                // at once (the store keeps a period it already has).
                if old.refilled_for.is_none() {
                    old.refilled_for = new.refill.map(|r| r.period_start(now));
                }
                old.refill = new.refill;
                record.usage.credits = Some(old);
            }
        }
    }
    Ok(widens)
}

/// Whether refill `new` is no more generous than `old`: none, or the same
/// interval with at most the amount. Another interval counts as wider.
fn refill_narrows(new: Option<&Refill>, old: Option<&Refill>) -> bool {
    match (new, old) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(n), Some(o)) => n.narrows(o),
    }
}

/// A new key's usage controls (create, import): the policy's default
/// ([`Policy::with_default_usage`]) when none are given; with whether they
/// are looser than the default, which needs [`ManagementAction::Usage`].
/// A balance above [`Credits::MAX`] is refused, naming `credits.remaining`.
pub(super) fn new_key_usage(
    policy: &Policy,
    usage: UsageControls,
) -> Result<(UsageControls, bool), KeywardError> {
    policy.check_rate_limits(&usage.rate_limits)?;
    if let Some(c) = &usage.credits {
        c.check()?;
    }
    let usage = match policy.default_usage() {
        Some(default) if usage.is_empty() => default.clone(),
        _ => usage,
    };
    let looser = !policy.usage_within_default(&usage);
    Ok((usage, looser))
}

/// The usage fields an edit changed, for the audit trail.
pub(super) fn changed_usage(old: &KeyRecord, new: &KeyRecord, fields: &mut Vec<&'static str>) {
    if old.usage.rate_limits != new.usage.rate_limits {
        fields.push("rate_limits");
    }
    let refill = |r: &KeyRecord| r.usage.credits.as_ref().map(|c| c.refill);
    if refill(old) != refill(new) {
        fields.push("credits");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refill_narrows_only_to_none_or_less_on_the_same_interval() {
        let daily = |n| Refill::daily(n).unwrap();
        let monthly = |n| Refill::monthly(1, n).unwrap();
        assert!(refill_narrows(None, Some(&daily(5))));
        assert!(refill_narrows(None, None));
        assert!(!refill_narrows(Some(&daily(5)), None));
        assert!(refill_narrows(Some(&daily(5)), Some(&daily(5))));
        assert!(refill_narrows(Some(&daily(4)), Some(&daily(5))));
        assert!(!refill_narrows(Some(&daily(6)), Some(&daily(5))));
        assert!(!refill_narrows(Some(&monthly(5)), Some(&daily(5))));
        assert!(!refill_narrows(
            Some(&Refill::monthly(2, 5).unwrap()),
            Some(&monthly(5))
        ));
    }
}
