//! [`SessionStore`] for [`PostgresStore`]: sessions in
//! `<schema>.<table>_sessions`, created by [`PostgresStore::migrate`]
//! (migration 2 of `PostgresStore::migrate`).
//!
//! Sessions are stored as the SQLite store keeps them: the SHA-256 of the
//! secret (`BYTEA`, 32 bytes), never the secret; the key snapshot with
//! permissions, resources and IP allowlist as JSON text; times as `BIGINT`
//! microseconds since the epoch. A row that does not decode is
//! [`StoreError::Corrupt`], never a panic.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::sql::{self, boxed};
use super::sql_sessions;
use crate::ids::{KeyId, OwnerId};
use crate::session::{SessionCap, SessionRecord};
use crate::store::{SessionStore, StoreError};

const COLUMNS: &str = sql_sessions::SESSION_COLUMNS;

/// Migration 2 of [`PostgresStore::migrate`]: the sessions table, an index
/// on the key id (to end a key's sessions) and one on the expiry (to purge).
/// `{s}`, `{sessions}`, `{sessions_key}` and `{sessions_expiry}` are
/// replaced by the schema, table and index names.
pub(super) const MIGRATION: &str = "CREATE TABLE IF NOT EXISTS \"{s}\".\"{sessions}\" (
        id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,
        key_id TEXT COLLATE \"C\" NOT NULL,
        owner TEXT COLLATE \"C\" NOT NULL,
        environment TEXT COLLATE \"C\" NOT NULL,
        key_name TEXT NOT NULL,
        permissions TEXT NOT NULL,
        resources TEXT NOT NULL,
        ip_allowlist TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked BOOLEAN NOT NULL,
        secret_hash BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS \"{sessions_key}\" ON \"{s}\".\"{sessions}\" (key_id);
    CREATE INDEX IF NOT EXISTS \"{sessions_expiry}\" ON \"{s}\".\"{sessions}\" (expires_at);";

/// The sessions table of the key table `table`: `<table>_sessions` (or a
/// hashed name when that is too long).
pub(super) fn sessions_table(table: &str) -> String {
    sql::derived_ident(table, "sessions")
}

/// `ddl` with the sessions names of the key table `table` filled in.
pub(super) fn name_sessions(ddl: &str, table: &str) -> String {
    let t = sessions_table(table);
    ddl.replace("{sessions_key}", &sql::derived_ident(&t, "key_id"))
        .replace("{sessions_expiry}", &sql::derived_ident(&t, "expires"))
        .replace("{sessions}", &t)
}

impl PostgresStore {
    /// `"schema"."<table>_sessions"`, quoted.
    fn sessions(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema(), sessions_table(self.table()))
    }
}

fn decode(row: &PgRow) -> Result<SessionRecord, StoreError> {
    sql_sessions::decode_session(row, |row| row.try_get::<bool, _>("revoked"))
}

/// Every method is one statement or one transaction (atomic); the futures are boxed
/// as the [`KeyStore`](super::KeyStore) methods are.
impl SessionStore for PostgresStore {
    async fn insert_session(
        &self,
        record: &SessionRecord,
        cap: Option<SessionCap>,
    ) -> Result<(), StoreError> {
        let t = self.sessions();
        let json = sql_sessions::session_json(record)?;
        boxed(async move {
            let mut tx = self
                .pool()
                .begin()
                .await
                .map_err(|e| sql::backend("begin insert a session", e))?;
            if let Some(cap) = cap {
                // Serializes capped inserts of one key's sessions.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                    .bind(&t)
                    .bind(record.key_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| sql::backend("lock the key's sessions", e))?;
                let live: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM {t} WHERE key_id = $1 AND NOT revoked AND expires_at > $2"
                ))
                .bind(record.key_id.as_str())
                .bind(sql::micros(cap.now))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| sql::backend("count live sessions", e))?;
                sql_sessions::within_session_cap(record, cap, live)?;
            }
            let result = sqlx::query(&format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
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
            .bind(record.revoked)
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
        let t = self.sessions();
        boxed(async move {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM {t} WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(|e| sql::backend("get a session", e))?;
            row.as_ref().map(decode).transpose()
        })
        .await
    }

    async fn session_owner(&self, key_id: &KeyId) -> Result<Option<OwnerId>, StoreError> {
        let t = self.sessions();
        boxed(async move {
            let owner: Option<String> =
                sqlx::query_scalar(&format!("SELECT owner FROM {t} WHERE key_id = $1 LIMIT 1"))
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
        let t = self.sessions();
        boxed(async move {
            // One transaction with a change notice for the key, so every
            // server's change feed drops its cached sessions of the key
            // once they are ended here (also when the key itself is not
            // changed: already revoked, or deleted).
            let mut tx = self
                .pool()
                .begin()
                .await
                .map_err(|e| sql::backend("begin revoke sessions", e))?;
            let done = sqlx::query(&format!(
                "UPDATE {t} SET revoked = TRUE WHERE key_id = $1 AND NOT revoked"
            ))
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| sql::backend("revoke sessions", e))?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(self.channel())
                .bind(key_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| sql::backend("notify revoked sessions", e))?;
            tx.commit()
                .await
                .map_err(|e| sql::backend("commit revoke sessions", e))?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let t = self.sessions();
        boxed(async move {
            let done = sqlx::query(&format!("DELETE FROM {t} WHERE expires_at <= $1"))
                .bind(sql::micros(now))
                .execute(self.pool())
                .await
                .map_err(|e| sql::backend("delete expired sessions", e))?;
            Ok(done.rows_affected())
        })
        .await
    }
}
