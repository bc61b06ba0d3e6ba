//! A rotation's successor: inserting it with the balance taken from the old
//! key, and undoing that so the balance is never in two keys (see
//! [`KeyManager::rotate`]).
//!
//! The rule: the taken balance goes back to the old key only once the
//! successor is known not to exist, because its insert never landed or its
//! delete was read back. A cancelled insert may still land later, so its id
//! is first taken by a placeholder, deleted at once (a store never inserts a
//! deleted id again). When the outcome cannot be known (the store does not
//! answer), the balance stays in the old key's `leased`: stranded, never
//! spendable twice.

use std::sync::Arc;

use super::{ID_ATTEMPTS, KeyManager, read_back};
use crate::ids::KeyId;
use crate::key::{KeyRecord, SecretHash};
use crate::manager::KeywardError;
use crate::store::{KeyStore, QuotaCheck, StoreError};
use crate::token::Token;
use crate::usage::UsageControls;
use crate::verify::Shared;

impl<S: KeyStore> KeyManager<S> {
    /// Inserts a rotation's `successor` under a fresh id, with `undo`
    /// armed with its id and hash before each insert is sent, so a dropped
    /// call deletes it (read back) before the balance goes back. On an
    /// error the undo is done here and the guard disarmed.
    pub(super) async fn insert_successor(
        &self,
        successor: KeyRecord,
        quota: Option<QuotaCheck>,
        undo: &mut UndoRotation<S>,
    ) -> Result<(Token, KeyRecord), KeywardError> {
        let mut record = successor;
        for _ in 0..ID_ATTEMPTS {
            let token = self.shared.format.generate(&record.environment, &record.id);
            record.secret_hash = match self.hash_token(&token).await {
                Ok(h) => h,
                Err(e) => {
                    // Nothing sent for this id (an earlier one was refused
                    // as a duplicate, so it is not ours).
                    undo.successor = None;
                    undo.shared = None;
                    self.give_back(&undo.old, undo.moved).await;
                    return Err(e);
                }
            };
            undo.successor = Some(record.clone());
            undo.insert_pending = true;
            let result = self.shared.store.insert(&record, quota).await;
            let hash = &record.secret_hash;
            let landed = |stored: Option<KeyRecord>| stored.is_some_and(|s| &s.secret_hash == hash);
            let result = read_back(result, || self.shared.store.get(&record.id), landed).await;
            undo.insert_pending = false;
            match result {
                Ok(()) => return Ok((token, record)),
                // The id is another key's: ours was not inserted.
                Err(StoreError::DuplicateId(_)) => {
                    undo.successor = None;
                    record.id = KeyId::generate();
                }
                Err(e) => {
                    // Disarmed first: a drop during the undo strands the
                    // balance rather than giving it back twice.
                    undo.shared = None;
                    self.abandon_successor(&record, &undo.old, undo.moved).await;
                    return Err(KeywardError::from_store(e));
                }
            }
        }
        undo.shared = None;
        self.give_back(&undo.old, undo.moved).await;
        Err(KeywardError::from_store(StoreError::DuplicateId(record.id)))
    }

    /// Deletes a successor that is not kept, and gives the balance back to
    /// the old key only if the successor is then known to be gone.
    pub(super) async fn abandon_successor(&self, successor: &KeyRecord, old: &KeyId, moved: u64) {
        if remove_successor(&self.shared, successor, false).await {
            self.give_back(old, moved).await;
        }
    }

    /// Gives a rotation's taken balance back to the old key (the
    /// successor is known not to exist).
    pub(super) async fn give_back(&self, old: &KeyId, moved: u64) {
        give_back(&self.shared, old, moved).await;
    }
}

async fn give_back<S: KeyStore>(shared: &Shared<S>, old: &KeyId, moved: u64) {
    if moved > 0 {
        // Failing, the credits stay in the old key's `leased`: stranded,
        // never created twice.
        let _ = shared.store.settle_credits(old, moved, 0).await;
    }
}

/// Deletes the successor if the store holds it (with its hash: ours);
/// whether it is then known not to exist and never to be inserted.
/// `pending`: the insert may still be running (a cancelled call), so not
/// finding the successor proves nothing yet: its id is then taken by a
/// placeholder (revoked, unmetered, with no secret) that is deleted at once,
/// since a store never inserts a deleted id again.
async fn remove_successor<S: KeyStore>(
    shared: &Shared<S>,
    successor: &KeyRecord,
    pending: bool,
) -> bool {
    let id = &successor.id;
    let ours = |s: &KeyRecord| s.secret_hash == successor.secret_hash;
    match shared.store.get(id).await {
        Ok(Some(s)) if ours(&s) => delete_confirmed(shared, id).await,
        // Another key's id: ours can never land there.
        Ok(Some(_)) => true,
        Ok(None) if !pending => true,
        Ok(None) => {
            let placeholder = KeyRecord {
                secret_hash: SecretHash::new(String::new()),
                usage: UsageControls::default(),
                revoked_at: Some(successor.created_at),
                ..successor.clone()
            };
            match shared.store.insert(&placeholder, None).await {
                Ok(()) => delete_confirmed(shared, id).await,
                // Ours landed meanwhile (or the id is another's, or deleted).
                Err(StoreError::DuplicateId(_)) => match shared.store.get(id).await {
                    Ok(Some(s)) if ours(&s) => delete_confirmed(shared, id).await,
                    Ok(_) => true,
                    Err(_) => false,
                },
                Err(_) => false,
            }
        }
        Err(_) => false,
    }
}

/// Deletes `id` and reads it back: whether it is gone.
async fn delete_confirmed<S: KeyStore>(shared: &Shared<S>, id: &KeyId) -> bool {
    let _ = shared.store.delete(id).await;
    shared.invalidate(id);
    matches!(shared.store.get(id).await, Ok(None))
}

/// Undoes a rotation dropped before it retired the old key (see
/// [`KeyManager::rotate`]): deletes the successor, if inserted, and gives
/// the taken balance back to the old key once the successor is known not
/// to exist. Disarmed by taking `shared`.
pub(super) struct UndoRotation<S: KeyStore> {
    /// The manager's state; `None`: disarmed.
    pub(super) shared: Option<Arc<Shared<S>>>,
    /// The successor (with its hash), from the moment its insert is sent.
    pub(super) successor: Option<KeyRecord>,
    /// Whether the successor's insert was sent and has not answered.
    pub(super) insert_pending: bool,
    /// The key being rotated.
    pub(super) old: KeyId,
    /// The balance taken from it.
    pub(super) moved: u64,
}

impl<S: KeyStore> UndoRotation<S> {
    /// An armed guard for rotating `old`, whose balance `moved` was taken.
    pub(super) fn new(shared: Arc<Shared<S>>, old: KeyId, moved: u64) -> Self {
        Self {
            shared: Some(shared),
            successor: None,
            insert_pending: false,
            old,
            moved,
        }
    }
}

impl<S: KeyStore> Drop for UndoRotation<S> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let successor = self.successor.take();
        let pending = self.insert_pending;
        let old = self.old.clone();
        let moved = self.moved;
        // Without a runtime there is nothing to run the undo on; the
        // successor's token was never returned, so it can never be used,
        // and the balance stays in the old key's `leased` (stranded).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let gone = match &successor {
                    None => true,
                    Some(record) => remove_successor(&shared, record, pending).await,
                };
                if gone {
                    give_back(&shared, &old, moved).await;
                }
            });
        }
    }
}
