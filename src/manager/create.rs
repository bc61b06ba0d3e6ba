//! Creating keys: [`KeyManager::create`] and the insert it shares with
//! regeneration and rotation.

use super::credits::new_key_usage;
use super::inputs::{CreatedKey, NewKey, checked_external_id, checked_metadata, started_usage};
use super::{KeyManager, insert_with_fresh_ids, read_back};
use crate::audit::AuditAction;
use crate::ids::KeyId;
use crate::ids::{OwnerId, check_text};
use crate::key::{KeyKind, KeyRecord, MAX_NAME_LEN, SecretHash};
use crate::manager::KeywardError;
use crate::policy::PolicyError;
use crate::policy::{Actor, IpAllowlist, ManagementAction};
use crate::store::{KeyStore, QuotaCheck};
use crate::token::Token;

impl<S: KeyStore> KeyManager<S> {
    /// Creates a key. The full token is in the result and nowhere else.
    ///
    /// Everything is validated before anything is stored: owner, environment,
    /// name, permissions (unknown or session-only names are refused),
    /// resource patterns, expiry, IP ranges, external id and metadata. The store enforces the quota
    /// atomically.
    ///
    /// Rate limits ([`NewKey::rate_limits`]) must be declared by the policy
    /// ([`Policy::with_rate_limits`](crate::Policy::with_rate_limits)). A
    /// key given no usage controls gets the policy's default
    /// ([`Policy::with_default_usage`](crate::Policy::with_default_usage)),
    /// if it has one. Usage controls looser than the default (without a
    /// default: any starting balance, [`NewKey::credits`]) are usage given,
    /// so they also need [`ManagementAction::Usage`] (the application
    /// itself only, by default): a publisher's administrator creates keys
    /// at most as free as the default, the application any. A balance
    /// above [`Credits::MAX`](crate::usage::Credits::MAX) is
    /// [`KeywardError::Usage`] naming `credits.remaining`.
    pub async fn create(&self, actor: &Actor, new: NewKey) -> Result<CreatedKey, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Create, None, async move {
            let policy = &self.shared.policy;
            let owner = OwnerId::new(&new.owner).map_err(PolicyError::from)?;
            self.allow(actor, ManagementAction::Create, &owner, None)
                .await?;
            let environment = self.environment(&new.environment)?;
            check_text("name", &new.name, MAX_NAME_LEN).map_err(PolicyError::from)?;
            policy.permissions().resolve(&new.permissions)?;
            policy.resource_rule().compile(&new.resources)?;
            let expiry = policy.expiry().check(new.expiry)?;
            let ip_allowlist = IpAllowlist::parse(&new.ip_allowlist)?;
            let external_id = checked_external_id(new.external_id.as_deref())?;
            let metadata = checked_metadata(new.metadata)?;
            // No usage controls given: the policy's default. Looser than
            // the default (a balance, without one) is usage given: the
            // application's to give.
            let (usage, looser) = new_key_usage(policy, new.usage)?;
            if looser {
                self.allow(actor, ManagementAction::Usage, &owner, None)
                    .await?;
            }

            let now = self.now();
            let quota = policy
                .quota()
                .map(|max_live| QuotaCheck::new(max_live, now).idle_expiry(policy.idle_expiry()));
            let record = KeyRecord {
                id: KeyId::generate(),
                owner,
                environment,
                name: new.name,
                kind: KeyKind::Scoped,
                permissions: new.permissions,
                resources: new.resources,
                ip_allowlist,
                external_id,
                metadata,
                usage: started_usage(usage, now),
                created_at: now,
                expires_at: expiry.expires_at(now),
                revoked_at: None,
                suspended_at: None,
                last_used_at: None,
                last_used_ip: None,
                reminded_at: None,
                generation: 1,
                secret_hash: SecretHash::new(String::new()),
            };
            let created = self.insert_new(record, quota).await?;
            self.done_with(
                actor,
                ManagementAction::Create,
                AuditAction::Created,
                &created.1,
                String::new(),
            )
            .await;
            Ok(CreatedKey {
                token: created.0,
                key: created.1.view(now),
            })
        })
        .await
    }

    /// Hashes a fresh token for `record` and inserts it, with a new id on
    /// the (astronomically unlikely) clash.
    pub(super) async fn insert_new(
        &self,
        record: KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(Token, KeyRecord), KeywardError> {
        let template = &record;
        insert_with_fresh_ids(record.id.clone(), |id| async move {
            let mut record = KeyRecord {
                id,
                ..template.clone()
            };
            let token = self.shared.format.generate(&record.environment, &record.id);
            record.secret_hash = self.hash_token(&token).await?;
            let result = self.shared.store.insert(&record, quota).await;
            // A lost reply: if the record is there with this secret's hash,
            // it is ours, and its token must not be lost.
            let landed = |stored: Option<KeyRecord>| {
                stored.is_some_and(|s| s.secret_hash.as_str() == record.secret_hash.as_str())
            };
            let result = read_back(result, || self.shared.store.get(&record.id), landed).await;
            Ok::<_, KeywardError>(result.map(|()| (token, record)))
        })
        .await?
        .map_err(KeywardError::from_store)
    }
}
