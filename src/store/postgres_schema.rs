//! The PostgreSQL store's schema: [`PostgresStore::migrate`], the
//! numbered migrations run under an advisory lock.

use super::postgres::{PostgresStore, err};
use super::sql::{self, boxed};
use crate::store::StoreError;

/// The schema, in order. `{s}`, `{t}` and the other `{...}` are replaced by
/// the schema, table, derived table and index names (the sessions names: see
/// `postgres_sessions`).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS \"{s}\".\"{t}\" (
        id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,
        owner TEXT COLLATE \"C\" NOT NULL,
        environment TEXT COLLATE \"C\" NOT NULL,
        name TEXT NOT NULL,
        permissions TEXT NOT NULL,
        resources TEXT NOT NULL,
        ip_allowlist TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        revoked_at BIGINT,
        last_used_at BIGINT,
        generation BIGINT NOT NULL,
        secret_hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS \"{owner_id}\" ON \"{s}\".\"{t}\" (owner, id);
    CREATE INDEX IF NOT EXISTS \"{owner_env}\" ON \"{s}\".\"{t}\" (owner, environment) WHERE revoked_at IS NULL;",
    ),
    (2, super::postgres_sessions::MIGRATION),
    // Key kinds, suspension, usage address, expiry reminders; the ids ever
    // used (never deleted from, so an id is never reused), backfilled.
    (
        3,
        "ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'scoped';
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS suspended_at BIGINT;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS last_used_ip TEXT;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS reminded_at BIGINT;
    CREATE TABLE IF NOT EXISTS \"{s}\".\"{ids}\" (id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY);
    INSERT INTO \"{s}\".\"{ids}\" (id) SELECT id FROM \"{s}\".\"{t}\" ON CONFLICT DO NOTHING;
    CREATE INDEX IF NOT EXISTS \"{expiry}\" ON \"{s}\".\"{t}\" (expires_at)
        WHERE revoked_at IS NULL AND reminded_at IS NULL AND expires_at IS NOT NULL;",
    ),
    // The audit trail (`impl AuditSink for PostgresStore`).
    (
        4,
        "CREATE TABLE IF NOT EXISTS \"{s}\".\"{audit}\" (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        action TEXT NOT NULL,
        actor TEXT,
        owner TEXT COLLATE \"C\",
        key_id TEXT COLLATE \"C\",
        client_ip TEXT,
        detail TEXT NOT NULL,
        count BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS \"{audit_key}\" ON \"{s}\".\"{audit}\" (key_id, at);
    CREATE INDEX IF NOT EXISTS \"{audit_owner}\" ON \"{s}\".\"{audit}\" (owner, at);",
    ),
    // The application's external id and metadata (NULL: none, empty).
    (
        5,
        "ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS external_id TEXT COLLATE \"C\";
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS metadata TEXT;
    CREATE INDEX IF NOT EXISTS \"{owner_ext}\" ON \"{s}\".\"{t}\" (owner, external_id)
        WHERE external_id IS NOT NULL;",
    ),
    // Usage controls: the limits and credits of a key (`sql_usage`) and
    // the state of each limit leased from, deleted with its key (the
    // foreign key also makes a lease racing the key's delete wait for it).
    (
        6,
        "ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS rate_limits TEXT;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS credits_remaining BIGINT;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS credits_leased BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS credits_refill TEXT;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS credits_refilled_for BIGINT;
    ALTER TABLE \"{s}\".\"{t}\" ADD COLUMN IF NOT EXISTS credits_last_grant BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS \"{s}\".\"{rates}\" (
        key_id TEXT COLLATE \"C\" NOT NULL REFERENCES \"{s}\".\"{t}\" (id) ON DELETE CASCADE,
        name TEXT COLLATE \"C\" NOT NULL,
        tat BIGINT NOT NULL,
        last_grant BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, name)
    );",
    ),
    // What give-backs of unspent rate tokens may move each bucket back
    // (`KeyStore::return_rate`): the numbers of its latest lease and of
    // the lease that last restarted it, its slack, and what the latest
    // lease added.
    (
        7,
        "ALTER TABLE \"{s}\".\"{rates}\" ADD COLUMN IF NOT EXISTS lease BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE \"{s}\".\"{rates}\" ADD COLUMN IF NOT EXISTS restart_lease BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE \"{s}\".\"{rates}\" ADD COLUMN IF NOT EXISTS slack BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE \"{s}\".\"{rates}\" ADD COLUMN IF NOT EXISTS added BIGINT NOT NULL DEFAULT 0;",
    ),
];

impl PostgresStore {
    /// Creates the schema, the table and its indexes, the sessions table
    /// (`<table>_sessions`) and the trust tables
    /// ([`migrate_trust`](Self::migrate_trust)), if missing. Safe to run twice and from several
    /// processes at once: everything runs in one
    /// transaction holding an advisory lock, applied steps are recorded in
    /// `<table>_migrations` and every statement uses `IF NOT EXISTS`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        boxed(self.migrate_impl()).await?;
        self.migrate_trust().await
    }

    async fn migrate_impl(&self) -> Result<(), StoreError> {
        let (s, t) = (&*self.schema, &*self.table);
        let log = sql::derived_ident(t, "migrations");
        let mut tx = self.pool.begin().await.map_err(err("begin migration"))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('keyward.migrate'))")
            .execute(&mut *tx)
            .await
            .map_err(err("take the migration lock"))?;
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS \"{s}\""),
            format!(
                "CREATE TABLE IF NOT EXISTS \"{s}\".\"{log}\" \
                 (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)"
            ),
        ] {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(err("create the migrations table"))?;
        }
        let applied: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM \"{s}\".\"{log}\""))
                .fetch_all(&mut *tx)
                .await
                .map_err(err("read applied migrations"))?;
        for (version, step) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let ddl = super::postgres_sessions::name_sessions(step, t)
                .replace("{owner_id}", &sql::derived_ident(t, "owner_id"))
                .replace("{owner_env}", &sql::derived_ident(t, "owner_env"))
                .replace("{ids}", &sql::derived_ident(t, "ids"))
                .replace("{expiry}", &sql::derived_ident(t, "expiry"))
                .replace("{audit}", &sql::derived_ident(t, "audit"))
                .replace("{audit_key}", &sql::derived_ident(t, "audit_key_at"))
                .replace("{audit_owner}", &sql::derived_ident(t, "audit_owner_at"))
                .replace("{owner_ext}", &sql::derived_ident(t, "owner_ext"))
                .replace("{rates}", &sql::derived_ident(t, "rates"))
                .replace("{s}", s)
                .replace("{t}", t);
            for statement in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("apply a migration"))?;
            }
            sqlx::query(&format!(
                "INSERT INTO \"{s}\".\"{log}\" (version, applied_at) VALUES ($1, $2)"
            ))
            .bind(version)
            .bind(sql::micros(chrono::Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(err("record a migration"))?;
        }
        tx.commit().await.map_err(err("commit migration"))
    }
}
