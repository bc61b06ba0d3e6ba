//! A key's life after creation: get, list, edit, regenerate, rotate,
//! suspend, resume, revoke, delete.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::credits::{changed_usage, edit_usage};
use super::inputs::{CreatedKey, KeyEdit, RotatedKey, checked_external_id, checked_metadata};
use super::successor::UndoRotation;
use super::{KeyManager, MAX_WINDOW_DAYS, MIN_ROTATION_GRACE};
use crate::audit::AuditAction;
use crate::ids::KeyId;
use crate::ids::check_text;
use crate::key::{KeyKind, KeyRecord, KeyStatus, KeyView, MAX_NAME_LEN, SecretHash};
use crate::manager::KeywardError;
use crate::policy::PolicyError;
use crate::policy::{Actor, IpAllowlist, ManagementAction};
use crate::store::{KeyStore, ListQuery, QuotaCheck};
use crate::usage::UsageControls;

/// Which fields an edit changed, for the audit trail.
fn changed_fields(old: &KeyRecord, new: &KeyRecord) -> String {
    let mut fields = Vec::new();
    if old.name != new.name {
        fields.push("name");
    }
    if old.permissions != new.permissions {
        fields.push("permissions");
    }
    if old.resources != new.resources {
        fields.push("resources");
    }
    if old.expires_at != new.expires_at {
        fields.push("expires_at");
    }
    if old.ip_allowlist != new.ip_allowlist {
        fields.push("ip_allowlist");
    }
    if old.external_id != new.external_id {
        fields.push("external_id");
    }
    if old.metadata != new.metadata {
        fields.push("metadata");
    }
    changed_usage(old, new, &mut fields);
    fields.join(", ")
}

impl<S: KeyStore> KeyManager<S> {
    /// The key with this id.
    pub async fn get(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::View, Some(id), async move {
            let record = self.load_for(actor, ManagementAction::View, id).await?;
            Ok(self.view(&record, self.now()))
        })
        .await
    }

    /// One page of an owner's keys, revoked ones included (filter with
    /// [`ListQuery::status`]), with their last use, so unused keys can be
    /// found and revoked. Status is judged at the manager's clock.
    pub async fn list(
        &self,
        actor: &Actor,
        query: ListQuery,
    ) -> Result<Vec<KeyView>, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::View, None, async move {
            let mut query = query;

            self.allow(actor, ManagementAction::View, &query.owner, None)
                .await?;
            query.now = self.now();
            query.idle_expiry = self.shared.policy.idle_expiry();
            let records = self
                .shared
                .store
                .list(&query)
                .await
                .map_err(KeywardError::from_store)?;
            Ok(records.iter().map(|r| self.view(r, query.now)).collect())
        })
        .await
    }

    /// How many of an owner's keys match `query`'s filters (environment,
    /// status, name prefix, external id), for a console's pagination; its
    /// `after` and `limit` are ignored. Status is judged at the manager's
    /// clock. The count and a following [`list`](Self::list) are two reads:
    /// keys created or deleted in between make them disagree.
    pub async fn count(&self, actor: &Actor, query: &ListQuery) -> Result<u64, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::View, None, async move {
            self.allow(actor, ManagementAction::View, &query.owner, None)
                .await?;
            let mut query = query.clone();
            query.now = self.now();
            self.shared
                .store
                .count(&query)
                .await
                .map_err(KeywardError::from_store)
        })
        .await
    }

    /// Edits a key. Takes effect for the very next check in this process.
    /// Legacy keys cannot be edited ([`KeywardError::Legacy`]).
    ///
    /// Rate limits and metering ([`KeyEdit::rate_limits`],
    /// [`KeyEdit::credits`]) may always narrow; an edit that widens them
    /// also needs [`ManagementAction::Usage`] (the application itself
    /// only, by default), else [`KeywardError::NotAllowed`] (audited) and
    /// nothing changes. An edit never changes a balance.
    pub async fn edit(
        &self,
        actor: &Actor,
        id: &KeyId,
        edit: KeyEdit,
    ) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Edit, Some(id), async move {
            let policy = &self.shared.policy;
            let mut record = self.load_for(actor, ManagementAction::Edit, id).await?;
            self.changeable(&record)?;
            if record.kind == KeyKind::Legacy {
                return Err(KeywardError::Legacy(id.clone(), "edited"));
            }
            let before = record.clone();
            let now = self.now();
            if let Some(name) = edit.name {
                check_text("name", &name, MAX_NAME_LEN).map_err(PolicyError::from)?;
                record.name = name;
            }
            if let Some(grant) = edit.permissions {
                if policy.edits().freeze_permissions && grant != record.permissions {
                    return Err(PolicyError::Frozen {
                        setting: "permissions",
                    }
                    .into());
                }
                let new = policy.permissions().resolve(&grant)?;
                let old = policy.permissions().resolve_stored(&record.permissions);
                if !policy.edits().widen_permissions && !old.is_superset(new) {
                    let added = policy.permissions().names(new.without(old));
                    let name = added.first().copied().unwrap_or_default().to_owned();
                    return Err(PolicyError::PermissionWidening { name }.into());
                }
                record.permissions = grant;
            }
            if let Some(scope) = edit.resources {
                policy.resource_rule().compile(&scope)?;
                record.resources = scope;
            }
            if let Some(choice) = edit.expiry {
                if policy.edits().freeze_expiry {
                    return Err(PolicyError::Frozen { setting: "expiry" }.into());
                }
                let choice = policy.expiry().check(Some(choice))?;
                let new = choice.expires_at(now);
                let narrower = match (new, record.expires_at) {
                    (_, None) => true,
                    (None, Some(_)) => false,
                    (Some(n), Some(o)) => n <= o,
                };
                if !narrower && !policy.edits().extend_expiry {
                    return Err(PolicyError::ExpiryExtension.into());
                }
                if new != record.expires_at {
                    // A new expiry deserves its own reminder.
                    record.reminded_at = None;
                }
                record.expires_at = new;
            }
            if let Some(ranges) = edit.ip_allowlist {
                let list = IpAllowlist::parse(&ranges)?;
                if policy.edits().freeze_ip_allowlist && list != record.ip_allowlist {
                    return Err(PolicyError::Frozen {
                        setting: "IP allowlist",
                    }
                    .into());
                }
                if !list.is_within(&record.ip_allowlist) && !policy.edits().widen_ip_allowlist {
                    return Err(PolicyError::IpWidening.into());
                }
                record.ip_allowlist = list;
            }
            if let Some(external_id) = edit.external_id {
                record.external_id = checked_external_id(external_id.as_deref())?;
            }
            if let Some(object) = edit.metadata {
                record.metadata = checked_metadata(Some(object))?;
            }
            if edit_usage(policy, &mut record, edit.rate_limits, edit.credits, now)? {
                self.allow(actor, ManagementAction::Usage, &record.owner, Some(id))
                    .await?;
            }
            let detail = changed_fields(&before, &record);
            let record = self.save(record).await?;
            self.done_with(
                actor,
                ManagementAction::Edit,
                AuditAction::Edited,
                &record,
                detail,
            )
            .await;
            Ok(self.view(&record, now))
        })
        .await
    }

    /// Gives the key a new secret: same id and settings; the old secret is
    /// refused from the next check on. Returns the new token, once. Session
    /// tokens already exchanged stay valid until they expire.
    ///
    /// An expired key (by its expiry, or for being unused under
    /// [`Policy::with_idle_expiry`](crate::Policy::with_idle_expiry)) is
    /// [`KeywardError::Expired`], unless the policy's
    /// [`ExpiryPolicy::with_regenerate_expired`](crate::policy::ExpiryPolicy::with_regenerate_expired)
    /// allows it (a package gallery: "After expiration, the key is
    /// unusable. [...] You can generate a new key value"). Then the key
    /// starts a fresh lifetime at the regeneration: `created_at` becomes
    /// now, and the expiry is its old lifetime length from now (never longer
    /// than the policy's maximum; a key that never expired keeps never
    /// expiring only where "never" is still allowed, else the default
    /// choice), with a new expiry reminder. A renewed key counts against the
    /// quota again: with the owner at the quota in that environment it is
    /// [`KeywardError::QuotaExceeded`] (counted before the write, so unlike
    /// an insert not atomic against a concurrent create). Revoked keys are
    /// never regenerated ([`KeywardError::Revoked`]).
    ///
    /// A developer portal's "regenerate", which gives "a new pair of the
    /// application ID and application secret", is
    /// [`KeyManager::regenerate_pair`].
    pub async fn regenerate(&self, actor: &Actor, id: &KeyId) -> Result<CreatedKey, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Regenerate,
            Some(id),
            async move {
                let mut record = self
                    .load_for(actor, ManagementAction::Regenerate, id)
                    .await?;
                let now = self.now();
                let expiry = self.shared.policy.expiry();
                let renew = match self.status(&record, now) {
                    KeyStatus::Expired if expiry.regenerates_expired() => true,
                    _ => {
                        self.changeable(&record)?;
                        false
                    }
                };
                if record.kind == KeyKind::Legacy {
                    return Err(KeywardError::Legacy(id.clone(), "regenerated"));
                }
                let mut detail = String::new();
                if renew {
                    self.renewal_fits_quota(&record, now).await?;
                    let lifetime = record
                        .expires_at
                        .map(|e| e.signed_duration_since(record.created_at));
                    record.expires_at = expiry.successor_expiry(now, lifetime);
                    record.created_at = now;
                    record.reminded_at = None;
                    detail = match record.expires_at {
                        Some(at) => format!("renewed after expiry, expires {}", at.to_rfc3339()),
                        None => "renewed after expiry, never expires".to_owned(),
                    };
                }
                let token = self.shared.format.generate(&record.environment, &record.id);
                record.secret_hash = self.hash_token(&token).await?;
                let record = self.save(record).await?;
                self.done_with(
                    actor,
                    ManagementAction::Regenerate,
                    AuditAction::Regenerated,
                    &record,
                    detail,
                )
                .await;
                Ok(CreatedKey {
                    token,
                    key: self.view(&record, now),
                })
            },
        )
        .await
    }

    /// Whether renewing the expired `record` keeps its owner within the
    /// quota in its environment (see [`KeyManager::regenerate`]).
    async fn renewal_fits_quota(
        &self,
        record: &KeyRecord,
        now: DateTime<Utc>,
    ) -> Result<(), KeywardError> {
        let Some(limit) = self.shared.policy.quota() else {
            return Ok(());
        };
        let mut live = 0usize;
        for status in [KeyStatus::Active, KeyStatus::Suspended] {
            let mut query = ListQuery::new(record.owner.clone())
                .environment(record.environment.clone())
                .status(status)
                .limit(usize::try_from(limit).unwrap_or(usize::MAX));
            query.now = now;
            query.idle_expiry = self.shared.policy.idle_expiry();
            live += self
                .shared
                .store
                .list(&query)
                .await
                .map_err(KeywardError::from_store)?
                .len();
        }
        if live >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(KeywardError::QuotaExceeded { limit });
        }
        Ok(())
    }

    /// A developer portal's "regenerate": "Regenerating the key will result
    /// in a new pair of the application ID and application secret", and
    /// "the previous pair can no longer be used to obtain a session token",
    /// while "any session tokens obtained from the previous key will remain
    /// valid, until those session tokens expire".
    ///
    /// Exactly [`KeyManager::rotate`] with a zero grace period: a successor
    /// with a new id and secret (same owner, environment, name, permissions,
    /// resources and IP allowlist, and lifetime length) is returned once, and
    /// the old key expires at once (it stays listed as
    /// [`KeyStatus::Expired`]; its sessions are not ended). Being an end of
    /// the old key's access, it needs the [`ManagementPolicy`](crate::policy::ManagementPolicy)'s
    /// permission to [`Rotate`](ManagementAction::Rotate) and to
    /// [`Revoke`](ManagementAction::Revoke) (administrators, by default).
    /// The old key is expired, not revoked: under
    /// [`ExpiryPolicy::with_regenerate_expired`](crate::policy::ExpiryPolicy::with_regenerate_expired)
    /// a later [`KeyManager::regenerate`] of the old id would renew it;
    /// [`KeyManager::revoke`] it (which ends its sessions) or
    /// [`KeyManager::delete`] it when that must never happen.
    ///
    /// To keep the id and change only the secret, use [`KeyManager::regenerate`].
    pub async fn regenerate_pair(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<RotatedKey, KeywardError> {
        self.rotate(actor, id, Duration::ZERO).await
    }

    /// Rotates a key with overlap: creates a successor with the same
    /// owner, environment, name, permissions, resources, IP allowlist and
    /// lifetime length (counted from now, never longer than the
    /// [`ExpiryPolicy`](crate::policy::ExpiryPolicy)'s maximum; a key that never
    /// expires gets a successor that never expires only where "never" is
    /// still allowed, else the policy's default), returns its token once,
    /// and makes the old key expire after `grace` (never later than its own
    /// expiry), so both work during the overlap and CI can switch with no
    /// downtime.
    ///
    /// A `grace` shorter than [`MIN_ROTATION_GRACE`] ends the old key's
    /// access almost at once, as a revoke would: the actor must also be
    /// allowed to [`Revoke`](ManagementAction::Revoke) it (administrators
    /// only, by default), else [`KeywardError::NotAllowed`] for `revoke`.
    ///
    /// The old key is on its way out, so the quota check allows one key
    /// more than the policy's quota for the successor: an owner at the
    /// quota can rotate one key at a time, and repeated rotations cannot pile
    /// up keys ([`KeywardError::QuotaExceeded`] until the overlap ends; an
    /// owner already above the quota, as a quota lowered since can leave one, must revoke
    /// keys before rotating). If
    /// retiring the old key fails, or the call is cancelled (a dropped
    /// future, a timeout) between the two writes, the successor is deleted
    /// again and the error returned. Legacy and suspended keys cannot be
    /// rotated.
    ///
    /// Usage controls: the successor gets the same rate limits and refill,
    /// and the old key's balance moves to it exactly once. The balance is
    /// taken in one atomic lease (a refill due is applied first, so the
    /// period is not refilled twice), the successor is inserted with it,
    /// and the take is then settled as spent; if the insert or the retiring
    /// fails (or the call is cancelled), the successor is deleted and the
    /// balance given back to the old key, only once the successor is read
    /// back as gone: the balance is never in two keys. (A cancelled insert
    /// could still land, so its id is first taken by a revoked placeholder
    /// deleted at once: a deleted id is never inserted again.) When that
    /// cannot be known (the store does not answer), the balance stays in
    /// the old key's `leased`, stranded rather than doubled (an orphan
    /// successor keeps it; its token was never returned). The old key keeps no refill, and during its grace period
    /// spends only what verifiers had already leased from it: later checks
    /// with it are denied as `DenialReason::UsageExhausted`.
    pub async fn rotate(
        &self,
        actor: &Actor,
        id: &KeyId,
        grace: Duration,
    ) -> Result<RotatedKey, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Rotate, Some(id), async move {
            let old = self.load_for(actor, ManagementAction::Rotate, id).await?;
            if grace < MIN_ROTATION_GRACE {
                // Ends the old key's access almost at once: a revoke in effect.
                self.allow(actor, ManagementAction::Revoke, &old.owner, Some(id))
                    .await?;
            }
            self.changeable(&old)?;
            if old.kind == KeyKind::Legacy {
                return Err(KeywardError::Legacy(id.clone(), "rotated"));
            }
            if old.suspended_at.is_some() {
                return Err(KeywardError::Suspended(id.clone()));
            }
            let grace = TimeDelta::from_std(grace)
                .ok()
                .filter(|g| *g <= TimeDelta::days(MAX_WINDOW_DAYS))
                .ok_or(PolicyError::BadGracePeriod)?;
            let now = self.now();
            // Checked: an imported or unrestricted key may expire near the end
            // of time, and `+` would panic there.
            let later = |d: TimeDelta| {
                now.checked_add_signed(d)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            };
            // The old key's lifetime length, never longer than the policy's
            // maximum: its creation time may come from another system (an
            // import dated decades back).
            let expires_at = self.shared.policy.expiry().successor_expiry(
                now,
                old.expires_at
                    .map(|e| e.signed_duration_since(old.created_at)),
            );
            // The balance moves to the successor: taken here, given back
            // (by `undo`, or below) if the successor is not kept.
            let balance = self.take_balance(&old, now).await?;
            let moved = balance.as_ref().map_or(0, |c| c.remaining);
            let mut undo = UndoRotation::new(Arc::clone(&self.shared), old.id.clone(), moved);
            let successor = KeyRecord {
                id: KeyId::generate(),
                usage: UsageControls {
                    rate_limits: old.usage.rate_limits.clone(),
                    credits: balance,
                },
                created_at: now,
                expires_at,
                revoked_at: None,
                suspended_at: None,
                last_used_at: None,
                last_used_ip: None,
                reminded_at: None,
                generation: 1,
                secret_hash: SecretHash::new(String::new()),
                ..old.clone()
            };
            let quota = self.shared.policy.quota().map(|q| {
                QuotaCheck::new(q.saturating_add(1), now)
                    .idle_expiry(self.shared.policy.idle_expiry())
            });
            // Until the old key is retired, dropping this future deletes the
            // successor (whose token nobody would ever see) before the
            // balance goes back; the guard knows the successor's id before
            // its insert is sent.
            let (token, successor) = self.insert_successor(successor, quota, &mut undo).await?;
            let mut retired = old.clone();
            let end = later(grace);
            retired.expires_at = Some(old.expires_at.map_or(end, |e| e.min(end)));
            if let Some(c) = retired.usage.credits.as_mut() {
                // The successor refills now; the old key spends out its leases.
                c.refill = None;
            }
            let retired = match self.save(retired).await {
                Ok(r) => r,
                Err(e) => {
                    // Undo: nothing half-done. The successor is deleted and
                    // read back before the balance goes back; if that
                    // cannot be confirmed, the balance stays stranded in the
                    // old key's `leased` (the successor's token is never
                    // returned). Disarmed first: a drop during the undo
                    // strands rather than gives back twice.
                    undo.shared = None;
                    self.abandon_successor(&successor, &old.id, moved).await;
                    return Err(e);
                }
            };
            undo.shared = None;
            if moved > 0 {
                // The take is spent: it lives on in the successor. Should
                // this fail, the old key's `leased` stays too high, which
                // strands nothing spendable.
                let _ = self.shared.store.settle_credits(&old.id, 0, moved).await;
            }
            let events = vec![
                self.event(
                    actor,
                    AuditAction::Rotated,
                    &retired,
                    format!("successor {}", successor.id),
                ),
                self.event(
                    actor,
                    AuditAction::Created,
                    &successor,
                    format!("rotated from {}", retired.id),
                ),
            ];
            self.done(actor, ManagementAction::Rotate, id, events).await;
            Ok(RotatedKey {
                successor: CreatedKey {
                    token,
                    key: self.view(&successor, now),
                },
                previous: self.view(&retired, now),
            })
        })
        .await
    }

    /// Suspends a key: refused with [`DenialReason::Suspended`](crate::DenialReason::Suspended)
    /// from the next check on, until [`KeyManager::resume`]. Unlike revoke,
    /// reversible. Session tokens already issued are not ended (use
    /// [`KeyManager::end_sessions`]); no new one is exchanged while it is
    /// suspended.
    pub async fn suspend(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Suspend,
            Some(id),
            async move {
                let mut record = self.load_for(actor, ManagementAction::Suspend, id).await?;
                self.changeable(&record)?;
                if record.suspended_at.is_some() {
                    return Err(KeywardError::Suspended(id.clone()));
                }
                let now = self.now();
                record.suspended_at = Some(now);
                let record = self.save(record).await?;
                self.done_with(
                    actor,
                    ManagementAction::Suspend,
                    AuditAction::Suspended,
                    &record,
                    String::new(),
                )
                .await;
                Ok(self.view(&record, now))
            },
        )
        .await
    }

    /// Resumes a suspended key. Errors: [`KeywardError::NotSuspended`].
    pub async fn resume(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Resume, Some(id), async move {
            let mut record = self.load_for(actor, ManagementAction::Resume, id).await?;
            self.changeable(&record)?;
            if record.suspended_at.is_none() {
                return Err(KeywardError::NotSuspended(id.clone()));
            }
            record.suspended_at = None;
            let record = self.save(record).await?;
            self.done_with(
                actor,
                ManagementAction::Resume,
                AuditAction::Resumed,
                &record,
                String::new(),
            )
            .await;
            Ok(self.view(&record, self.now()))
        })
        .await
    }

    /// Revokes a key, permanently: it stays listed as revoked and can never
    /// be re-enabled, and every session token exchanged for it ends at once
    /// (the key "is disabled immediately and any integration using it will
    /// stop working"). Revoking it again is [`KeywardError::Revoked`].
    ///
    /// The key is revoked first, so no new session can be exchanged for it
    /// once its sessions are ended. If ending them fails, the key stays
    /// revoked and the error is [`KeywardError::SessionsNotEnded`]: call
    /// [`KeyManager::revoke_compromised`] (which accepts a key already
    /// revoked) or [`KeyManager::end_sessions`] again. Other processes drop
    /// their cached sessions of the key on the change feed (PostgreSQL) or
    /// within the verifier's cache TTL. Sessions are ended in the store by
    /// managers built with
    /// [`KeyManagerBuilder::sessions`](crate::manager::KeyManagerBuilder::sessions);
    /// any manager with sessions also refuses a session whose key is revoked
    /// when it reads the session from the store, so a revoke by a manager
    /// without sessions (or whose ending failed) stops them too.
    pub async fn revoke(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Revoke, Some(id), async move {
            let mut record = self.load_for(actor, ManagementAction::Revoke, id).await?;
            if record.revoked_at.is_some() {
                return Err(KeywardError::Revoked(id.clone()));
            }
            let now = self.now();
            record.revoked_at = Some(now);
            let record = self.save(record).await?;
            // The revoke is done once saved; ending its sessions is the
            // part a retry (`revoke_compromised`) can finish.
            self.done_with(
                actor,
                ManagementAction::Revoke,
                AuditAction::Revoked,
                &record,
                String::new(),
            )
            .await;
            self.end_key_sessions(id)
                .await
                .map_err(|source| KeywardError::SessionsNotEnded {
                    id: id.clone(),
                    source,
                })?;
            Ok(self.view(&record, now))
        })
        .await
    }

    /// Deletes a key: gone from listings, refused from the next check on.
    /// Its id is never used again (a deleted legacy key cannot be re-imported).
    /// Session tokens already exchanged for it stay valid until they expire
    /// (as regenerating leaves them); revoke the key first to end them, or
    /// end them afterwards with [`KeyManager::end_sessions`].
    pub async fn delete(&self, actor: &Actor, id: &KeyId) -> Result<(), KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Delete, Some(id), async move {
            let record = self.load_for(actor, ManagementAction::Delete, id).await?;
            let result = self.shared.store.delete(id).await;
            self.shared.invalidate(id);
            self.shared.usage.forget(id);
            // A lost reply: gone now means deleted.
            super::read_back(result, || self.shared.store.get(id), |s| s.is_none())
                .await
                .map_err(KeywardError::from_store)?;
            self.done_with(
                actor,
                ManagementAction::Delete,
                AuditAction::Deleted,
                &record,
                String::new(),
            )
            .await;
            Ok(())
        })
        .await
    }
}
