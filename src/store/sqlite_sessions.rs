//! [`SessionStore`] for [`SqliteStore`]: sessions in `<table>_sessions`,
//! created by [`SqliteStore::migrate`] (through
//! [`SqliteStore::migrate_sessions`]).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use super::sql::{self, boxed};
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::session::{SessionCap, SessionHash, SessionRecord};
use crate::store::SessionStore;
use crate::store::StoreError;

const COLUMNS: &str = "id, key_id, owner, environment, key_name, permissions, resources, ip_allowlist, \
                       created_at, expires_at, revoked, secret_hash";

impl SqliteStore {
    fn sessions_table(&self) -> String {
        sql::derived_ident(self.table(), "sessions")
    }

    /// Creates the sessions table (`<table>_sessions`) and its index on the
    /// key id, if missing. Idempotent; [`migrate`](Self::migrate) calls it,
    /// so only stores migrated by an older keyward need it on its own.
    pub async fn migrate_sessions(&self) -> Result<(), StoreError> {
        let t = self.sessions_table();
        let index = sql::derived_ident(&t, "key");
        boxed(async move {
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS \"{t}\" (
                    id TEXT NOT NULL PRIMARY KEY,
                    key_id TEXT NOT NULL,
                    owner TEXT NOT NULL,
                    environment TEXT NOT NULL,
                    key_name TEXT NOT NULL,
                    permissions TEXT NOT NULL,
                    resources TEXT NOT NULL,
                    ip_allowlist TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    revoked INTEGER NOT NULL,
                    secret_hash BLOB NOT NULL
                )"
            ))
            .execute(self.pool())
            .await
            .map_err(|e| sql::backend("create the sessions table", e))?;
            sqlx::query(&format!(
                "CREATE INDEX IF NOT EXISTS \"{index}\" ON \"{t}\" (key_id)"
            ))
            .execute(self.pool())
            .await
            .map_err(|e| sql::backend("create the sessions index", e))?;
            Ok(())
        })
        .await
    }
}

fn json<T: serde::Serialize>(field: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("cannot encode {field}: {e}")))
}

fn decode(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
    let id: String = row
        .try_get("id")
        .map_err(|e| sql::backend("read a session", e))?;
    let corrupt = |field: &'static str, reason: String| StoreError::Corrupt {
        id: id.clone(),
        field,
        reason,
    };
    let text = |field: &'static str| -> Result<String, StoreError> {
        row.try_get::<String, _>(field)
            .map_err(|e| corrupt(field, e.to_string()))
    };
    let time = |field: &'static str| -> Result<DateTime<Utc>, StoreError> {
        let v: i64 = row
            .try_get(field)
            .map_err(|e| corrupt(field, e.to_string()))?;
        DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(field, "out of range".into()))
    };
    let hash: Vec<u8> = row
        .try_get("secret_hash")
        .map_err(|e| corrupt("secret_hash", e.to_string()))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt("secret_hash", "not 32 bytes".into()))?;
    Ok(SessionRecord {
        id: KeyId::new(&id).map_err(|e| corrupt("id", e.to_string()))?,
        key_id: KeyId::new(&text("key_id")?).map_err(|e| corrupt("key_id", e.to_string()))?,
        owner: text("owner")?
            .parse()
            .map_err(|e: crate::ids::InvalidValue| corrupt("owner", e.to_string()))?,
        environment: text("environment")?
            .parse()
            .map_err(|e: crate::ids::InvalidValue| corrupt("environment", e.to_string()))?,
        key_name: text("key_name")?,
        permissions: serde_json::from_str(&text("permissions")?)
            .map_err(|e| corrupt("permissions", e.to_string()))?,
        resources: serde_json::from_str(&text("resources")?)
            .map_err(|e| corrupt("resources", e.to_string()))?,
        ip_allowlist: serde_json::from_str(&text("ip_allowlist")?)
            .map_err(|e| corrupt("ip_allowlist", e.to_string()))?,
        created_at: time("created_at")?,
        expires_at: time("expires_at")?,
        revoked: row
            .try_get::<i64, _>("revoked")
            .map_err(|e| corrupt("revoked", e.to_string()))?
            != 0,
        secret_hash: SessionHash::from_bytes(hash),
    })
}

impl SessionStore for SqliteStore {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        let t = self.sessions_table();
        let permissions = json("permissions", &record.permissions)?;
        let resources = json("resources", &record.resources)?;
        let ips = json("ip_allowlist", &record.ip_allowlist)?;
        boxed(async move {
            // IMMEDIATE takes the write lock now: the count below cannot go stale.
            let mut tx = self
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(|e| sql::backend("begin insert a session", e))?;
            if let Some(cap) = cap {
                let live: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM \"{t}\" WHERE key_id = ? AND revoked = 0 AND expires_at > ?"
                ))
                .bind(record.key_id.as_str())
                .bind(sql::micros(cap.now))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| sql::backend("count live sessions", e))?;
                if live >= i64::from(cap.max_live) {
                    return Err(StoreError::TooManySessions {
                        key_id: record.key_id.clone(),
                        limit: cap.max_live,
                    });
                }
            }
            let result = sqlx::query(&format!(
                "INSERT INTO \"{t}\" ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(record.id.as_str())
            .bind(record.key_id.as_str())
            .bind(record.owner.as_str())
            .bind(record.environment.as_str())
            .bind(&record.key_name)
            .bind(&permissions)
            .bind(&resources)
            .bind(&ips)
            .bind(sql::micros(record.created_at))
            .bind(sql::micros(record.expires_at))
            .bind(i64::from(record.revoked))
            .bind(&record.secret_hash.as_bytes()[..])
            .execute(&mut *tx)
            .await;
            match result {
                Ok(_) => tx
                    .commit()
                    .await
                    .map_err(|e| sql::backend("commit a session", e)),
                Err(ref e) if sql::is_unique_violation(e) => {
                    Err(StoreError::DuplicateId(record.id.clone()))
                }
                Err(e) => Err(sql::backend("insert a session", e)),
            }
        })
        .await
    }

    async fn get_session(&self, id: &KeyId) -> Result<Option<SessionRecord>, StoreError> {
        let t = self.sessions_table();
        boxed(async move {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM \"{t}\" WHERE id = ?"))
                .bind(id.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(|e| sql::backend("get a session", e))?;
            row.as_ref().map(decode).transpose()
        })
        .await
    }

    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        let t = self.sessions_table();
        boxed(async move {
            let owner: Option<String> = sqlx::query_scalar(&format!(
                "SELECT owner FROM \"{t}\" WHERE key_id = ? LIMIT 1"
            ))
            .bind(key_id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| sql::backend("get the owner of sessions", e))?;
            owner
                .map(|o| {
                    OwnerId::new(&o).map_err(|e| StoreError::Corrupt {
                        id: key_id.to_string(),
                        field: "owner",
                        reason: e.to_string(),
                    })
                })
                .transpose()
        })
        .await
    }

    async fn revoke_sessions(&self, key_id: &KeyId) -> Result<u64, StoreError> {
        let t = self.sessions_table();
        boxed(async move {
            let done = sqlx::query(&format!(
                "UPDATE \"{t}\" SET revoked = 1 WHERE key_id = ? AND revoked = 0"
            ))
            .bind(key_id.as_str())
            .execute(self.pool())
            .await
            .map_err(|e| sql::backend("revoke sessions", e))?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let t = self.sessions_table();
        boxed(async move {
            let done = sqlx::query(&format!("DELETE FROM \"{t}\" WHERE expires_at <= ?"))
                .bind(sql::micros(now))
                .execute(self.pool())
                .await
                .map_err(|e| sql::backend("delete expired sessions", e))?;
            Ok(done.rows_affected())
        })
        .await
    }
}
