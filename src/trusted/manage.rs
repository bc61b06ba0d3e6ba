//! Registering, listing and deleting trust policies through
//! [`KeyManager`], under its [`ManagementPolicy`](crate::ManagementPolicy).

use std::convert::Infallible;

use crate::audit::{AuditAction, AuditEvent};
use crate::ids::KeyId;
use crate::ids::{OwnerId, check_text};
use crate::manager::KeywardError;
use crate::manager::{KeyManager, insert_with_fresh_ids};
use crate::policy::PolicyError;
use crate::policy::{Actor, ManagementAction};
use crate::store::{KeyStore, TrustStore};
use crate::trust_policy::{NewTrustPolicy, TrustPolicy, check_audience, check_issuer};

impl<S: KeyStore + TrustStore> KeyManager<S> {
    /// Registers a trust policy: tokens of its issuer and audience whose
    /// claims match may be exchanged for session tokens of its owner.
    ///
    /// Needs [`ManagementAction::Trust`] (administrators only, by default).
    /// Everything is validated before anything is stored.
    ///
    /// # Errors
    /// [`KeywardError::NotAllowed`]; [`KeywardError::Policy`] for an
    /// invalid field (issuer, audience, claims, name), an unknown or
    /// session-only permission, an empty permission list or a refused
    /// resource pattern; [`KeywardError::UnknownEnvironment`];
    /// [`KeywardError::QuotaExceeded`] when the owner holds
    /// [`TrustPolicy::MAX_PER_OWNER`] policies; [`KeywardError::Store`].
    pub async fn create_trust_policy(
        &self,
        actor: &Actor,
        new: NewTrustPolicy,
    ) -> Result<TrustPolicy, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Trust,
            None,
            self.create_trust_policy_impl(actor, new),
        )
        .await
    }

    async fn create_trust_policy_impl(
        &self,
        actor: &Actor,
        new: NewTrustPolicy,
    ) -> Result<TrustPolicy, KeywardError> {
        let owner = OwnerId::new(&new.owner).map_err(PolicyError::from)?;
        self.allow(actor, ManagementAction::Trust, &owner, None)
            .await?;
        let environment = self
            .format()
            .environment(&new.environment)
            .cloned()
            .ok_or_else(|| {
                KeywardError::UnknownEnvironment(new.environment.chars().take(32).collect())
            })?;
        check_text("name", &new.name, TrustPolicy::MAX_NAME_LEN).map_err(PolicyError::from)?;
        check_issuer(&new.issuer).map_err(PolicyError::from)?;
        check_audience(&new.audience).map_err(PolicyError::from)?;
        new.claims.validate().map_err(PolicyError::from)?;
        let policy = self.policy();
        policy.permissions().resolve(&new.permissions)?;
        policy.resource_rule().compile(&new.resources)?;

        let first = TrustPolicy {
            id: KeyId::generate(),
            owner,
            environment,
            name: new.name,
            issuer: new.issuer,
            audience: new.audience,
            claims: new.claims,
            permissions: new.permissions,
            resources: new.resources,
            created_at: self.shared.clock.now(),
            created_by: actor.id().to_owned(),
        };
        // A clash of generated ids gets new ids (the manager's one loop);
        // the per-owner cap is the store's QuotaExceeded, mapped by `From`.
        let record = insert_with_fresh_ids(first.id.clone(), |id| {
            let candidate = TrustPolicy {
                id,
                ..first.clone()
            };
            async move {
                let stored = self
                    .store()
                    .insert_trust_policy(&candidate, TrustPolicy::MAX_PER_OWNER)
                    .await;
                Ok::<_, Infallible>(stored.map(|()| candidate))
            }
        })
        .await
        .unwrap_or_else(|never| match never {})
        .map_err(KeywardError::from)?;
        self.trust_audit(
            actor,
            AuditAction::TrustPolicyCreated,
            &record,
            format!(
                "trust policy {:?}: iss={} aud={}",
                record.name, record.issuer, record.audience
            ),
        )
        .await;
        Ok(record)
    }

    /// The owner's trust policies, ordered by id. Needs
    /// [`ManagementAction::View`].
    pub async fn list_trust_policies(
        &self,
        actor: &Actor,
        owner: &OwnerId,
    ) -> Result<Vec<TrustPolicy>, KeywardError> {
        self.allow(actor, ManagementAction::View, owner, None)
            .await?;
        self.store()
            .list_trust_policies(owner)
            .await
            .map_err(KeywardError::from_store)
    }

    /// Deletes a trust policy and ends the sessions issued through it
    /// (when sessions are configured). Needs [`ManagementAction::Trust`]
    /// (administrators only, by default).
    ///
    /// # Errors
    /// [`KeywardError::NotFound`]; [`KeywardError::NotAllowed`] (another
    /// owner's policy, or not an administrator); [`KeywardError::Store`];
    /// [`KeywardError::SessionsNotEnded`] when the policy is deleted but
    /// ending its sessions failed (they still expire within the session
    /// lifetime).
    pub async fn delete_trust_policy(&self, actor: &Actor, id: &KeyId) -> Result<(), KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Trust,
            Some(id),
            self.delete_trust_policy_impl(actor, id),
        )
        .await
    }

    async fn delete_trust_policy_impl(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<(), KeywardError> {
        let record = self
            .store()
            .get_trust_policy(id)
            .await
            .map_err(KeywardError::from_store)?
            .ok_or_else(|| KeywardError::NotFound(id.clone()))?;
        self.allow(actor, ManagementAction::Trust, &record.owner, Some(id))
            .await?;
        self.store()
            .delete_trust_policy(id)
            .await
            .map_err(KeywardError::from_store)?;
        self.trust_audit(
            actor,
            AuditAction::TrustPolicyDeleted,
            &record,
            format!("trust policy {:?}", record.name),
        )
        .await;
        self.end_key_sessions(id)
            .await
            .map_err(|source| KeywardError::SessionsNotEnded {
                id: id.clone(),
                source,
            })?;
        Ok(())
    }

    async fn trust_audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        record: &TrustPolicy,
        detail: String,
    ) {
        let event = AuditEvent {
            actor: Some(actor.id().to_owned()),
            owner: Some(record.owner.clone()),
            key_id: Some(record.id.clone()),
            client_ip: actor.client_ip(),
            detail,
            ..AuditEvent::new(self.shared.clock.now(), action)
        };
        if let Err(_e) = self.shared.audit.send(vec![event]).await {
            crate::trace::audit_failed(&_e);
        }
    }
}
