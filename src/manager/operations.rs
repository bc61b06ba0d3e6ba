//! Operations over many keys and the manager's own upkeep: expiry
//! reminders, the audit trail, flushing, and the verify shortcuts.

use std::net::IpAddr;

use chrono::TimeDelta;

use super::{KeyManager, MAX_WINDOW_DAYS};
use crate::audit::{AuditAction, AuditEvent, AuditQuery};
use crate::ids::KeyId;
use crate::key::{KeyStatus, KeyView};
use crate::manager::KeywardError;
use crate::policy::PolicyError;
use crate::policy::{Actor, ManagementAction};
use crate::store::KeyStore;
use crate::verify::{Denial, VerifiedKey, VerifyRequest};

impl<S: KeyStore> KeyManager<S> {
    /// Takes the keys that expire within `within_days` days and whose owners
    /// have not been reminded yet, marking them reminded (atomically: with
    /// two workers calling at once, each key comes back once). Keys already
    /// expired are not returned. For a scheduled job; needs an actor allowed
    /// to act across owners
    /// ([`ManagementPolicy::check_global`](crate::policy::ManagementPolicy::check_global)).
    ///
    /// Unlike the other writes, this one cannot be read back: if the store's
    /// reply is lost after it marked keys, those keys are not reminded.
    pub async fn take_expiry_reminders(
        &self,
        actor: &Actor,
        within_days: u32,
        limit: usize,
    ) -> Result<Vec<KeyView>, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Remind, None, async move {
            if !(1..=MAX_WINDOW_DAYS).contains(&i64::from(within_days)) {
                return Err(PolicyError::BadReminderWindow.into());
            }
            self.allow_global(actor, ManagementAction::Remind, None)
                .await?;
            let now = self.now();
            let until = now + TimeDelta::days(i64::from(within_days));
            let records = self
                .shared
                .store
                .take_expiry_reminders(now, until, limit.clamp(1, crate::store::MAX_PAGE_SIZE))
                .await
                .map_err(KeywardError::from_store)?;
            // A key expired by idle expiry (which stores do not know) is expired,
            // not about to expire: marked like the others, but not returned.
            Ok(records
                .iter()
                .map(|r| self.view(r, now))
                .filter(|v| v.status != KeyStatus::Expired)
                .collect())
        })
        .await
    }

    /// The audit trail matching `query` ("what did this key do between T1
    /// and T2": `AuditQuery::key(id).between(t1, t2)`). An actor of an
    /// owner sees only that owner's events (the query's owner is set to
    /// theirs); reading across owners needs
    /// [`ManagementPolicy::check_global`](crate::policy::ManagementPolicy::check_global).
    pub async fn audit_trail(
        &self,
        actor: &Actor,
        query: AuditQuery,
    ) -> Result<Vec<AuditEvent>, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::View, None, async move {
            let mut query = query;

            match (actor.owner(), &query.owner) {
                (Some(own), _) => {
                    let owner = own.clone();
                    self.allow(actor, ManagementAction::View, &owner, None)
                        .await?;
                    query.owner = Some(owner);
                }
                (None, Some(owner)) => {
                    let owner = owner.clone();
                    self.allow(actor, ManagementAction::View, &owner, None)
                        .await?;
                }
                (None, None) => {
                    self.allow_global(actor, ManagementAction::View, None)
                        .await?;
                }
            }
            // Pending aggregates first, so the answer includes recent activity;
            // a failure here is kept for later and does not hide the trail.
            let _ = self.flush().await;
            self.shared
                .audit
                .query(&query)
                .await
                .map_err(KeywardError::from_store)
        })
        .await
    }

    /// Writes everything pending: recorded uses not yet in the store, the
    /// aggregated authentication failures, and audit events a failing sink
    /// could not take. Call it on shutdown (and, if you like, from a timer).
    /// Returns the first store or sink error; what failed is kept for the
    /// next flush.
    pub async fn flush(&self) -> Result<(), KeywardError> {
        let now = self.now();
        let writes = self.shared.usage.pending();
        let mut first_error = None;
        for w in &writes {
            if let Err(e) = self.shared.store.record_usage(&w.id, w.at, w.ip).await {
                first_error.get_or_insert(e);
                self.shared.usage.restore(w);
            }
        }
        let mut events = self.shared.audit.failures.flush(now);
        events.extend(writes.iter().map(|w| self.shared.usage_event(w)));
        if let Err(e) = self.shared.audit.send(events).await {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(KeywardError::from_store(e)),
            None => Ok(()),
        }
    }

    /// Audit events kept because the sink failed, waiting for the next write.
    pub fn unsent_audit_events(&self) -> usize {
        self.shared.audit.unsent()
    }

    /// Audit events dropped because a failing sink's backlog (10 000) was full.
    pub fn dropped_audit_events(&self) -> u64 {
        self.shared.audit.dropped()
    }

    /// Checks a token for a request; see [`Verifier`](crate::Verifier).
    pub async fn verify(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        self.verifier().verify(token, req).await
    }

    /// Checks a key id and secret given separately (HTTP Basic
    /// `key_id:secret`, imported keys); see
    /// [`Verifier::verify_pair`](crate::Verifier::verify_pair).
    pub async fn verify_pair(
        &self,
        key_id: &str,
        secret: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        self.verifier().verify_pair(key_id, secret, req).await
    }

    /// Records a session issued for a key in the audit trail.
    pub(crate) async fn audit_session(
        &self,
        key: &VerifiedKey,
        session: &KeyId,
        ip: Option<IpAddr>,
    ) {
        self.audit(vec![AuditEvent {
            // Exchanges are made by the key's holder, not by a person of
            // the owner: the key is the actor.
            actor: Some(format!("key:{}", key.id())),
            owner: Some(key.owner().clone()),
            key_id: Some(key.id().clone()),
            client_ip: ip,
            detail: format!("session {session}"),
            ..AuditEvent::new(self.now(), AuditAction::SessionIssued)
        }])
        .await;
    }
}
