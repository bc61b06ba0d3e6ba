//! [`SessionStore`] for [`SqliteStore`]: sessions in `<table>_sessions`,
//! created by [`SqliteStore::migrate`] (through
//! [`SqliteStore::migrate_sessions`]).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use super::sql::{self, boxed};
use super::sql_sessions;
use crate::ids::{KeyId, OwnerId};
use crate::session::{SessionCap, SessionRecord};
use crate::store::{SessionStore, StoreError};

const COLUMNS: &str = sql_sessions::SESSION_COLUMNS;

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

fn decode(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
    sql_sessions::decode_session(row, |row| row.try_get::<i64, _>("revoked").map(|r| r != 0))
}

impl SessionStore for SqliteStore {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        let t = self.sessions_table();
        let json = sql_sessions::session_json(record)?;
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
                sql_sessions::within_session_cap(record, cap, live)?;
            }
            let result = sqlx::query(&format!(
                "INSERT INTO \"{t}\" ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(record.id.as_str())
            .bind(record.key_id.as_str())
            .bind(record.owner.as_str())
            .bind(record.environment.as_str())
            .bind(&record.key_name)
            .bind(&json.permissions)
            .bind(&json.resources)
            .bind(&json.ip_allowlist)
            .bind(sql::micros(record.created_at))
            .bind(sql::micros(record.expires_at))
            .bind(i64::from(record.revoked))
            .bind(&record.secret_hash.as_bytes()[..])
            .execute(&mut *tx)
            .await;
            sql_sessions::session_inserted(result, record)?;
            tx.commit()
                .await
                .map_err(|e| sql::backend("commit a session", e))
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
