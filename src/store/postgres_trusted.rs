//! [`TrustStore`] for [`PostgresStore`]: trust policies in `<schema>.<table>_trust`
//! (the policy as JSON, beside the columns it is found by) and used token
//! ids in `<schema>.<table>_jtis`, created by [`PostgresStore::migrate`] (through
//! [`PostgresStore::migrate_trust`]).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::sql::{self, boxed};
use super::trusted::TrustStore;
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::store::StoreError;
use crate::trust_policy::TrustPolicy;

impl PostgresStore {
    fn trust_names(&self) -> (String, String) {
        (
            sql::derived_ident(self.table(), "trust"),
            sql::derived_ident(self.table(), "jtis"),
        )
    }

    /// `"schema"."<table>_trust"` and `"schema"."<table>_jtis"`, quoted.
    fn trust_tables(&self) -> (String, String) {
        let (t, j) = self.trust_names();
        let s = self.schema();
        (format!("\"{s}\".\"{t}\""), format!("\"{s}\".\"{j}\""))
    }

    /// Creates the trust policy and used-`jti` tables, if missing.
    /// Idempotent; [`migrate`](Self::migrate) calls it.
    pub async fn migrate_trust(&self) -> Result<(), StoreError> {
        let (t, j) = self.trust_names();
        let s = self.schema().to_owned();
        let lookup = sql::derived_ident(&t, "lookup");
        let owner = sql::derived_ident(&t, "owner");
        let expiry = sql::derived_ident(&j, "expires");
        boxed(async move {
            let mut tx = self
                .pool()
                .begin()
                .await
                .map_err(|e| sql::backend("begin create the trust tables", e))?;
            // The lock `migrate` takes: concurrent CREATEs of one name collide.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('keyward.migrate'))")
                .execute(&mut *tx)
                .await
                .map_err(|e| sql::backend("take the migration lock", e))?;
            for statement in [
                format!(
                    "CREATE TABLE IF NOT EXISTS \"{s}\".\"{t}\" (
                        id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,
                        owner TEXT COLLATE \"C\" NOT NULL,
                        issuer TEXT NOT NULL,
                        lookup TEXT NOT NULL,
                        body TEXT NOT NULL
                    )"
                ),
                format!("CREATE INDEX IF NOT EXISTS \"{lookup}\" ON \"{s}\".\"{t}\" (issuer, lookup, id)"),
                format!("CREATE INDEX IF NOT EXISTS \"{owner}\" ON \"{s}\".\"{t}\" (owner, id)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS \"{s}\".\"{j}\" (
                        issuer TEXT NOT NULL,
                        jti TEXT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        PRIMARY KEY (issuer, jti)
                    )"
                ),
                format!("CREATE INDEX IF NOT EXISTS \"{expiry}\" ON \"{s}\".\"{j}\" (expires_at)"),
            ] {
                sqlx::query(&statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| sql::backend("create the trust tables", e))?;
            }
            tx.commit()
                .await
                .map_err(|e| sql::backend("commit the trust tables", e))
        })
        .await
    }
}

fn decode(row: &PgRow) -> Result<TrustPolicy, StoreError> {
    let id: String = row
        .try_get("id")
        .map_err(|e| sql::backend("read a trust policy", e))?;
    let body: String = row.try_get("body").map_err(|e| StoreError::Corrupt {
        id: id.clone(),
        field: "body",
        reason: e.to_string(),
    })?;
    let policy: TrustPolicy = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
        id: id.clone(),
        field: "body",
        reason: e.to_string(),
    })?;
    if policy.id.as_str() != id {
        return Err(StoreError::Corrupt {
            id,
            field: "id",
            reason: "differs from the stored policy's".into(),
        });
    }
    Ok(policy)
}

impl TrustStore for PostgresStore {
    async fn insert_trust_policy(
        &self,
        policy: &TrustPolicy,
        max_per_owner: u32,
    ) -> Result<(), StoreError> {
        let (t, _) = self.trust_tables();
        let body = serde_json::to_string(policy)
            .map_err(|e| StoreError::Backend(format!("cannot encode a trust policy: {e}")))?;
        boxed(async move {
            let mut tx = self
                .pool()
                .begin()
                .await
                .map_err(|e| sql::backend("begin insert a trust policy", e))?;
            // Serializes inserts of one owner's policies: the count cannot go stale.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                .bind(&t)
                .bind(policy.owner.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| sql::backend("lock the owner's trust policies", e))?;
            let held: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t} WHERE owner = $1"))
                    .bind(policy.owner.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| sql::backend("count trust policies", e))?;
            if held >= i64::from(max_per_owner) {
                return Err(StoreError::QuotaExceeded {
                    limit: max_per_owner,
                });
            }
            let result = sqlx::query(&format!(
                "INSERT INTO {t} (id, owner, issuer, lookup, body) VALUES ($1, $2, $3, $4, $5)"
            ))
            .bind(policy.id.as_str())
            .bind(policy.owner.as_str())
            .bind(&policy.issuer)
            .bind(policy.lookup())
            .bind(&body)
            .execute(&mut *tx)
            .await;
            match result {
                Ok(_) => tx
                    .commit()
                    .await
                    .map_err(|e| sql::backend("commit a trust policy", e)),
                Err(ref e) if sql::is_unique_violation(e) => {
                    Err(StoreError::DuplicateId(policy.id.clone()))
                }
                Err(e) => Err(sql::backend("insert a trust policy", e)),
            }
        })
        .await
    }

    async fn get_trust_policy(&self, id: &KeyId) -> Result<Option<TrustPolicy>, StoreError> {
        let (t, _) = self.trust_tables();
        boxed(async move {
            let row = sqlx::query(&format!("SELECT id, body FROM {t} WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(self.pool())
                .await
                .map_err(|e| sql::backend("get a trust policy", e))?;
            row.as_ref().map(decode).transpose()
        })
        .await
    }

    async fn list_trust_policies(&self, owner: &OwnerId) -> Result<Vec<TrustPolicy>, StoreError> {
        let (t, _) = self.trust_tables();
        boxed(async move {
            let rows = sqlx::query(&format!(
                "SELECT id, body FROM {t} WHERE owner = $1 ORDER BY id"
            ))
            .bind(owner.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(|e| sql::backend("list trust policies", e))?;
            rows.iter().map(decode).collect()
        })
        .await
    }

    async fn find_trust_policies(
        &self,
        issuer: &str,
        lookup: &str,
    ) -> Result<Vec<TrustPolicy>, StoreError> {
        let (t, _) = self.trust_tables();
        boxed(async move {
            let rows = sqlx::query(&format!(
                "SELECT id, body FROM {t} WHERE issuer = $1 AND lookup = $2 ORDER BY id LIMIT $3"
            ))
            .bind(issuer)
            .bind(lookup)
            .bind(TrustPolicy::MAX_CANDIDATES as i64)
            .fetch_all(self.pool())
            .await
            .map_err(|e| sql::backend("find trust policies", e))?;
            rows.iter().map(decode).collect()
        })
        .await
    }

    async fn delete_trust_policy(&self, id: &KeyId) -> Result<(), StoreError> {
        let (t, _) = self.trust_tables();
        boxed(async move {
            let done = sqlx::query(&format!("DELETE FROM {t} WHERE id = $1"))
                .bind(id.as_str())
                .execute(self.pool())
                .await
                .map_err(|e| sql::backend("delete a trust policy", e))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(id.clone()));
            }
            Ok(())
        })
        .await
    }

    async fn claim_jti(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (_, j) = self.trust_tables();
        boxed(async move {
            // One statement: inserted, or replacing an expired record; a
            // live record leaves it unchanged (0 rows).
            let done = sqlx::query(&format!(
                "INSERT INTO {j} AS used (issuer, jti, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (issuer, jti) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE used.expires_at <= $4"
            ))
            .bind(issuer)
            .bind(jti)
            .bind(sql::micros(expires_at))
            .bind(sql::micros(now))
            .execute(self.pool())
            .await
            .map_err(|e| sql::backend("claim a token id", e))?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn delete_expired_jtis(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let (_, j) = self.trust_tables();
        boxed(async move {
            let done = sqlx::query(&format!("DELETE FROM {j} WHERE expires_at <= $1"))
                .bind(sql::micros(now))
                .execute(self.pool())
                .await
                .map_err(|e| sql::backend("delete expired token ids", e))?;
            Ok(done.rows_affected())
        })
        .await
    }
}
