//! The manager's side of leak reports (feature `leak-reports`): check the
//! report, prove each token, revoke its key as leaked, tell the owner. The
//! report's types live in `crate::leak`.

use std::collections::HashMap;

use zeroize::Zeroizing;

use super::KeyManager;
use crate::audit::{AuditAction, AuditEvent};
use crate::hash::HashError;
use crate::ids::KeyId;
use crate::key::KeyRecord;
use crate::leak::{
    LeakLabel, LeakNotice, LeakReportError, LeakReports, ReportedToken, TokenLabel, parse_report,
};
use crate::manager::KeywardError;
use crate::policy::ManagementAction;
use crate::store::KeyStore;
use crate::store::StoreError;

/// How many times one token is proven and its key revoked when the key
/// changes under the revocation (a concurrent edit, or the same token in
/// a concurrent report).
const REVOKE_ATTEMPTS: usize = 3;

impl<S: KeyStore> KeyManager<S> {
    /// Handles a leak report from a secret scanner (GitHub's partner
    /// program; see [`crate::leak`] for the whole story and an example):
    /// checks its signature, proves each token to be the current secret of
    /// a stored key, revokes those keys as leaked (audited, sessions ended,
    /// owner notified) and answers one [`TokenLabel`] per entry, in order.
    ///
    /// `key_identifier` and `signature` are the values of the
    /// `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`
    /// headers; `body` is the raw request body, unparsed.
    ///
    /// # Errors
    ///
    /// Before anything is read or changed:
    /// [`LeakReportError::BodyTooLarge`]; the signature errors of
    /// [`ScannerKeys::verify`](crate::leak::ScannerKeys::verify) (missing,
    /// unknown key identifier, malformed, bad);
    /// [`MalformedReport`](LeakReportError::MalformedReport);
    /// [`TooManyEntries`](LeakReportError::TooManyEntries). On the way
    /// (earlier tokens may be revoked; send the report again):
    /// [`Store`](LeakReportError::Store), [`Hashing`](LeakReportError::Hashing),
    /// [`SessionsNotEnded`](LeakReportError::SessionsNotEnded).
    pub async fn handle_leak_report(
        &self,
        reports: &LeakReports,
        key_identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<TokenLabel>, LeakReportError> {
        let max = reports.body_limit();
        if body.len() > max {
            return Err(LeakReportError::BodyTooLarge {
                len: body.len(),
                max,
            });
        }
        reports.keys().verify(key_identifier, signature, body)?;
        let entries = parse_report(body, reports.entry_limit())?;
        // A token repeated in the report is proven once: its answer is
        // remembered by its hash (never by the token).
        let mut decided: HashMap<String, LeakLabel> = HashMap::new();
        let mut labels = Vec::with_capacity(entries.len());
        for entry in &entries {
            let token_hash = entry.hash_hex();
            let label = match decided.get(&token_hash) {
                Some(label) => *label,
                None => {
                    let label = self.leaked(reports, entry).await?;
                    decided.insert(token_hash.clone(), label);
                    label
                }
            };
            labels.push(TokenLabel {
                token_hash,
                token_type: entry.token_type.clone(),
                label,
            });
        }
        Ok(labels)
    }

    /// Proves one reported token and revokes its key.
    async fn leaked(
        &self,
        reports: &LeakReports,
        entry: &ReportedToken,
    ) -> Result<LeakLabel, LeakReportError> {
        // Not this application's format (or environment): no store read.
        let Ok(parsed) = self.shared.format.parse(&entry.token) else {
            return Ok(LeakLabel::FalsePositive);
        };
        let Ok(id) = KeyId::new(parsed.key_id()) else {
            return Ok(LeakLabel::FalsePositive);
        };
        // The stored hash the secret was last proven against: a retry after
        // a concurrent change skips argon2 when the hash is unchanged.
        let mut proven: Option<String> = None;
        for _ in 0..REVOKE_ATTEMPTS {
            let record = match self.shared.store.get(&id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(LeakLabel::FalsePositive),
                Err(e) => return Err(LeakReportError::Store(e)),
            };
            if record.id != id || record.environment.as_str() != parsed.environment() {
                return Ok(LeakLabel::FalsePositive);
            }
            let stored = record.secret_hash.as_str();
            if proven.as_deref() != Some(stored) {
                if !self.proves(parsed.expose_secret(), stored).await? {
                    return Ok(LeakLabel::FalsePositive);
                }
                proven = Some(stored.to_owned());
            }
            if record.revoked_at.is_some() {
                // Revoked before (by an earlier report, or otherwise): no
                // change, no notice; its sessions are ended again, so a
                // report retried after `SessionsNotEnded` finishes the job.
                self.end_leaked_sessions(&id).await?;
                return Ok(LeakLabel::TruePositive);
            }
            match self.revoke_leaked(record).await {
                Ok(record) => {
                    self.after_leak_revoke(reports, entry, &record).await?;
                    return Ok(LeakLabel::TruePositive);
                }
                // Changed since read (or deleted): read and decide again.
                Err(
                    KeywardError::Store(StoreError::Conflict { .. }) | KeywardError::NotFound(_),
                ) => {}
                Err(KeywardError::Store(e)) => return Err(LeakReportError::Store(e)),
                Err(other) => {
                    return Err(LeakReportError::Store(StoreError::Backend(
                        other.to_string(),
                    )));
                }
            }
        }
        Err(LeakReportError::Store(StoreError::Backend(
            "the key kept changing during the leak report".into(),
        )))
    }

    /// Whether `secret` matches the stored hash `stored`, checked on
    /// keyward's hashing threads as the verifier checks it. A stored hash
    /// that cannot be used (corrupt, an unknown pepper) proves nothing.
    async fn proves(&self, secret: &str, stored: &str) -> Result<bool, LeakReportError> {
        let secret = Zeroizing::new(secret.as_bytes().to_vec());
        let phc = stored.to_owned();
        let checked = self
            .shared
            .run_hasher(move |h, scratch| crate::hash::verify_stored(h, &secret, &phc, scratch))
            .await;
        match checked {
            Ok((matched, _rehash)) => Ok(matched),
            Err(HashError::Malformed(_) | HashError::UnknownPepper(_)) => Ok(false),
            Err(e) => Err(LeakReportError::Hashing(e)),
        }
    }

    /// Writes the key revoked (compare-and-swap; drops it from the cache).
    async fn revoke_leaked(&self, mut record: KeyRecord) -> Result<KeyRecord, KeywardError> {
        record.revoked_at = Some(self.now());
        self.save(record).await
    }

    /// The tail of a leak revocation: audit, trace, notice, sessions.
    async fn after_leak_revoke(
        &self,
        reports: &LeakReports,
        entry: &ReportedToken,
        record: &KeyRecord,
    ) -> Result<(), LeakReportError> {
        let (url, source, token_type) = (entry.url_cut(), entry.source_cut(), entry.type_cut());
        let detail = format!("leaked: type={token_type}; source={source}; url={url}");
        self.audit(vec![AuditEvent {
            actor: Some(LeakReports::ACTOR.to_owned()),
            owner: Some(record.owner.clone()),
            key_id: Some(record.id.clone()),
            detail,
            ..AuditEvent::new(self.now(), AuditAction::Revoked)
        }])
        .await;
        crate::trace::management(
            LeakReports::ACTOR,
            ManagementAction::Revoke,
            Some(&record.id),
            Ok(()),
        );
        if let Some(notifier) = reports.notifier_hook() {
            notifier
                .key_leaked(LeakNotice {
                    owner: record.owner.clone(),
                    key_id: record.id.clone(),
                    key_name: record.name.clone(),
                    environment: record.environment.clone(),
                    revoked_at: record.revoked_at.unwrap_or_else(|| self.now()),
                    url,
                    source,
                    token_type,
                })
                .await;
        }
        self.end_leaked_sessions(&record.id).await
    }

    async fn end_leaked_sessions(&self, id: &KeyId) -> Result<(), LeakReportError> {
        self.end_key_sessions(id).await.map(drop).map_err(|source| {
            LeakReportError::SessionsNotEnded {
                id: id.clone(),
                source,
            }
        })
    }
}
