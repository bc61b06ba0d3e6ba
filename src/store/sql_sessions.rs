//! What the SQLite and PostgreSQL session stores share: the columns of a
//! session row, their JSON encoding, the rule of the capped insert, the
//! insert's outcome and row decoding.

use super::sql::{backend, corrupt, is_unique_violation, to_json};
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::session::{SessionCap, SessionHash, SessionRecord};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use sqlx::Row;

/// The columns of a session row, in this order, in both SQL stores.
pub(crate) const SESSION_COLUMNS: &str = "id, key_id, owner, environment, key_name, permissions, \
                                          resources, ip_allowlist, created_at, expires_at, \
                                          revoked, secret_hash";

/// A session's JSON columns (`permissions`, `resources`, `ip_allowlist`),
/// encoded before any database work.
pub(crate) struct SessionJson {
    pub permissions: String,
    pub resources: String,
    pub ip_allowlist: String,
}

pub(crate) fn session_json(r: &SessionRecord) -> Result<SessionJson, StoreError> {
    Ok(SessionJson {
        permissions: to_json("permissions", &r.permissions)?,
        resources: to_json("resources", &r.resources)?,
        ip_allowlist: to_json("ip_allowlist", &r.ip_allowlist)?,
    })
}

/// The rule of a capped session insert, once the key's `live` sessions were
/// counted inside the insert's transaction (each store makes that count
/// race-free its own way): at the cap, [`StoreError::TooManySessions`].
pub(crate) fn within_session_cap(
    record: &SessionRecord,
    cap: SessionCap,
    live: i64,
) -> Result<(), StoreError> {
    if live >= i64::from(cap.max_live) {
        return Err(StoreError::TooManySessions {
            key_id: record.key_id.clone(),
            limit: cap.max_live,
        });
    }
    Ok(())
}

/// The outcome of a session's `INSERT`: a clash on the id is
/// [`StoreError::DuplicateId`].
pub(crate) fn session_inserted<T>(
    result: Result<T, sqlx::Error>,
    record: &SessionRecord,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(ref e) if is_unique_violation(e) => Err(StoreError::DuplicateId(record.id.clone())),
        Err(e) => Err(backend("insert a session", e)),
    }
}

/// Decodes one session row (selected with [`SESSION_COLUMNS`]); `revoked`
/// reads the dialect's boolean. Anything that does not parse is
/// [`StoreError::Corrupt`], naming the field; the reason never quotes the
/// hash.
pub(crate) fn decode_session<'r, R>(
    row: &'r R,
    revoked: impl FnOnce(&'r R) -> Result<bool, sqlx::Error>,
) -> Result<SessionRecord, StoreError>
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let raw_id: String = row.try_get("id").map_err(|e| corrupt("?", "id", e))?;
    let id = raw_id.as_str();
    let text = |field: &'static str| -> Result<String, StoreError> {
        row.try_get::<String, _>(field)
            .map_err(|e| corrupt(id, field, e))
    };
    let time = |field: &'static str| -> Result<DateTime<Utc>, StoreError> {
        let v: i64 = row.try_get(field).map_err(|e| corrupt(id, field, e))?;
        DateTime::from_timestamp_micros(v)
            .ok_or_else(|| corrupt(id, field, format!("{v} microseconds is out of range")))
    };
    // The hash is checked for its length only; its bytes are never quoted.
    let hash: Vec<u8> = row
        .try_get("secret_hash")
        .map_err(|_| corrupt(id, "secret_hash", "not bytes"))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt(id, "secret_hash", "not 32 bytes"))?;
    Ok(SessionRecord {
        id: KeyId::new(id).map_err(|e| corrupt(id, "id", e))?,
        key_id: KeyId::new(&text("key_id")?).map_err(|e| corrupt(id, "key_id", e))?,
        owner: OwnerId::new(&text("owner")?).map_err(|e| corrupt(id, "owner", e))?,
        environment: Environment::new(&text("environment")?)
            .map_err(|e| corrupt(id, "environment", e))?,
        key_name: text("key_name")?,
        permissions: serde_json::from_str(&text("permissions")?)
            .map_err(|e| corrupt(id, "permissions", e))?,
        resources: serde_json::from_str(&text("resources")?)
            .map_err(|e| corrupt(id, "resources", e))?,
        ip_allowlist: serde_json::from_str(&text("ip_allowlist")?)
            .map_err(|e| corrupt(id, "ip_allowlist", e))?,
        created_at: time("created_at")?,
        expires_at: time("expires_at")?,
        revoked: revoked(row).map_err(|e| corrupt(id, "revoked", e))?,
        secret_hash: SessionHash::from_bytes(hash),
    })
}
