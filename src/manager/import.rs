//! Bringing keys over from another system: [`KeyManager::import`].

use super::credits::new_key_usage;
use super::inputs::{ImportKey, checked_external_id, checked_metadata, started_usage};
use super::{KeyManager, read_back};
use crate::audit::AuditAction;
use crate::ids::KeyId;
use crate::ids::{OwnerId, check_text};
use crate::key::{KeyKind, KeyRecord, KeyView, MAX_NAME_LEN, SecretHash};
use crate::manager::KeywardError;
use crate::policy::PolicyError;
use crate::policy::{Actor, IpAllowlist, ManagementAction, PermissionGrant, ResourceScope};
use crate::store::StoreError;
use crate::store::{KeyStore, QuotaCheck};

impl<S: KeyStore> KeyManager<S> {
    /// Imports a key from another system by its id and the SHA-256 (hex) of
    /// its secret; see [`ImportKey`]. Administrators only under the default
    /// [`ManagementPolicy`](crate::policy::ManagementPolicy) (or [`Actor::system`], for a migration job).
    ///
    /// A scoped key's expiry must fit the [`ExpiryPolicy`](crate::policy::ExpiryPolicy)
    /// ([`ExpiryPolicy::check_expires_at`](crate::policy::ExpiryPolicy::check_expires_at):
    /// never expiring only where "never" is allowed, else
    /// [`PolicyError::NeverNotAllowed`]; no more than the maximum from now,
    /// else [`PolicyError::ExpiryNotAllowed`]). Legacy full-access keys,
    /// the documented exception, never expire, and come in only through
    /// [`ImportKey::legacy`]. Imports count against the quota like created
    /// keys: [`KeywardError::QuotaExceeded`] when the owner already has
    /// the quota's number of live keys in the environment (raise the quota,
    /// or revoke keys, before migrating more). The id must never have been
    /// used in this store (a deleted key's id included):
    /// [`KeywardError::IdTaken`]. Usage controls as in
    /// [`KeyManager::create`]: none given, the policy's default; looser
    /// than the default (without one: a balance) also needs
    /// [`ManagementAction::Usage`]. A refusal stores nothing.
    pub async fn import(&self, actor: &Actor, key: ImportKey) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(actor.id(), ManagementAction::Import, None, async move {
            let policy = &self.shared.policy;
            let owner = OwnerId::new(&key.owner).map_err(PolicyError::from)?;
            self.allow(actor, ManagementAction::Import, &owner, None)
                .await?;
            let id = KeyId::new(&key.id).map_err(PolicyError::from)?;
            let environment = self.environment(&key.environment)?;
            check_text("name", &key.name, MAX_NAME_LEN).map_err(PolicyError::from)?;
            let hex = key.sha256_hex.to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(KeywardError::BadImportHash(id));
            }
            let now = self.now();
            let (permissions, resources, expires_at) = match key.kind {
                // The documented exception: full access, never expires.
                KeyKind::Legacy => (PermissionGrant::All, ResourceScope::All, None),
                KeyKind::Scoped => {
                    policy.permissions().resolve(&key.permissions)?;
                    policy.resource_rule().compile(&key.resources)?;
                    policy.expiry().check_expires_at(now, key.expires_at)?;
                    (key.permissions, key.resources, key.expires_at)
                }
            };
            let ip_allowlist = IpAllowlist::parse(&key.ip_allowlist)?;
            let external_id = checked_external_id(key.external_id.as_deref())?;
            let metadata = checked_metadata(key.metadata)?;
            // No usage controls given: the policy's default. Looser than
            // the default (a balance, without one) is usage given: the
            // application's to give.
            let (usage, looser) = new_key_usage(policy, key.usage)?;
            if looser {
                self.allow(actor, ManagementAction::Usage, &owner, None)
                    .await?;
            }
            let record = KeyRecord {
                id,
                owner,
                environment,
                name: key.name,
                kind: key.kind,
                permissions,
                resources,
                ip_allowlist,
                external_id,
                metadata,
                usage: started_usage(usage, now),
                created_at: key.created_at.unwrap_or(now),
                expires_at,
                revoked_at: None,
                suspended_at: None,
                last_used_at: None,
                last_used_ip: None,
                reminded_at: None,
                generation: 1,
                secret_hash: SecretHash::new(format!("{}{hex}", crate::hash::SHA256_IMPORT_PREFIX)),
            };
            let quota = policy
                .quota()
                .map(|max_live| QuotaCheck::new(max_live, now).idle_expiry(policy.idle_expiry()));
            let result = self.shared.store.insert(&record, quota).await;
            // A lost reply: if exactly this record is there, the import
            // happened (a retry would now be refused as IdTaken).
            let landed = |stored: Option<KeyRecord>| stored.as_ref() == Some(&record);
            match read_back(result, || self.shared.store.get(&record.id), landed).await {
                Ok(()) => {}
                Err(StoreError::DuplicateId(id)) => return Err(KeywardError::IdTaken(id)),
                Err(e) => return Err(KeywardError::from_store(e)),
            }
            self.shared.invalidate(&record.id);
            self.done_with(
                actor,
                ManagementAction::Import,
                AuditAction::Imported,
                &record,
                record.kind.as_str().to_owned(),
            )
            .await;
            Ok(record.view(now))
        })
        .await
    }
}
