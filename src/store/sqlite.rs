//! The SQLite store (feature `sqlite`): embedded and persistent, for one
//! machine. SQLite itself is compiled in (sqlx's bundled `libsqlite3`).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::{self, COLUMNS, InvalidName, boxed};
use super::sql_usage::{Dialect, UPDATE_USAGE_SET, UsageQueries};
use super::sql_usage_ops;
use super::{KeyStore, ListQuery, QuotaCheck};
use crate::ids::KeyId;
use crate::key::KeyRecord;
use crate::store::StoreError;

/// The table name used unless [`SqliteStore::with_table`] says otherwise.
const DEFAULT_TABLE: &str = "keyward_keys";

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`KeyStore`] in a SQLite database.
///
/// - **Files** are opened in WAL mode (readers never wait for the writer)
///   with `synchronous = NORMAL` and a busy timeout, and created if missing.
/// - **In memory** ([`SqliteStore::in_memory`]) uses a single connection,
///   so the database lives as long as the store.
/// - **Schema**: a key table (default `keyward_keys`, see
///   [`with_table`](SqliteStore::with_table)) with indexes on
///   `(owner, id)`, `(owner, environment)` and `(owner, external_id)`, created by
///   [`migrate`](SqliteStore::migrate). Permissions, resources and the IP
///   allowlist are JSON text; times are integer microseconds since the epoch.
/// - **Quota**: the live-key count and the insert run in one
///   `BEGIN IMMEDIATE` transaction, which holds SQLite's single write lock,
///   so concurrent inserts can never exceed the quota.
/// - **Updates** compare-and-swap on the `generation` column and never
///   write `last_used_at`/`last_used_ip`; [`record_usage`](KeyStore::record_usage) is
///   one conditional `UPDATE` that never moves `last_used_at` backwards.
/// - **Usage controls** (rate limits, credits): columns of the key table
///   and `<table>_rates` for the limits' states; every lease, settle and
///   change is one atomic statement, so any number of servers sharing the
///   database never overspend, and `update` never changes a balance (see
///   `docs/DESIGN.md`, "Usage controls in the stores").
/// - **Ids are never reused**: every insert also claims the id in
///   `<table>_ids`, in the same transaction, and delete leaves it there.
/// - **Expiry reminders** are taken by one `UPDATE ... RETURNING` under
///   SQLite's write lock (a partial index on `expires_at` finds the due
///   keys), so concurrent callers never get the same key.
/// - **Audit trail**: the store is also an [`AuditSink`](crate::store::AuditSink)
///   writing `<table>_audit` (indexed by key and time, owner and time), so
///   one database keeps both: `KeyManager::builder(store.clone(), ..).audit(store.clone())`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use keyward::{KeyId, KeyStore, SqliteStore};
/// let store = SqliteStore::in_memory().await?.with_table("api_keys")?;
/// store.migrate().await?;
/// assert!(store.get(&KeyId::new("nosuchkey").unwrap()).await?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    table: Arc<str>,
    queries: Arc<Queries>,
}

#[derive(Debug)]
struct Queries {
    insert: String,
    insert_id: String,
    count_live: String,
    get: String,
    update: String,
    generation_of: String,
    delete: String,
    record_usage: String,
    take_reminders: String,
    usage: UsageQueries,
}

impl Queries {
    fn new(t: &str) -> Self {
        let ids = sql::derived_ident(t, "ids");
        let rates = sql::derived_ident(t, "rates");
        Self {
            insert: format!(
                "INSERT INTO \"{t}\" ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
                 ?, ?, ?, ?, ?)"
            ),
            insert_id: format!("INSERT INTO \"{ids}\" (id) VALUES (?)"),
            count_live: format!(
                "SELECT COUNT(*) FROM \"{t}\" WHERE owner = ? AND environment = ? AND {}",
                sql::live_condition("?", "?")
            ),
            get: format!("SELECT {COLUMNS} FROM \"{t}\" WHERE id = ?"),
            // `$n` placeholders (sqlx binds them by number): the usage
            // clauses are shared with PostgreSQL.
            update: format!(
                "UPDATE \"{t}\" SET owner = $1, environment = $2, name = $3, kind = $4, permissions = $5, \
                 resources = $6, ip_allowlist = $7, created_at = $8, expires_at = $9, revoked_at = $10, \
                 suspended_at = $11, reminded_at = $12, generation = $13, secret_hash = $14, \
                 external_id = $15, metadata = $16, {UPDATE_USAGE_SET} WHERE id = $17 AND generation = $18"
            ),
            generation_of: format!("SELECT generation FROM \"{t}\" WHERE id = ?"),
            delete: format!("DELETE FROM \"{t}\" WHERE id = ?"),
            record_usage: format!(
                "UPDATE \"{t}\" SET last_used_at = ?, last_used_ip = ? \
                 WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)"
            ),
            // One statement: SQLite runs it under its single write lock, so
            // concurrent callers never take the same key.
            take_reminders: format!(
                "UPDATE \"{t}\" SET reminded_at = ? WHERE id IN (\
                 SELECT id FROM \"{t}\" WHERE revoked_at IS NULL AND reminded_at IS NULL \
                 AND expires_at > ? AND expires_at <= ? ORDER BY expires_at, id LIMIT ?) \
                 RETURNING {COLUMNS}"
            ),
            usage: UsageQueries::new(
                Dialect::Sqlite,
                &format!("\"{t}\""),
                &format!("\"{rates}\""),
            ),
        }
    }
}

/// The schema, in order; `{t}` is the table, the other `{...}` are derived
/// table and index names. Each step is applied once and recorded in
/// `{t}_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS \"{t}\" (
        id TEXT NOT NULL PRIMARY KEY,
        owner TEXT NOT NULL,
        environment TEXT NOT NULL,
        name TEXT NOT NULL,
        permissions TEXT NOT NULL,
        resources TEXT NOT NULL,
        ip_allowlist TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER,
        last_used_at INTEGER,
        generation INTEGER NOT NULL,
        secret_hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS \"{owner_id}\" ON \"{t}\" (owner, id);
    CREATE INDEX IF NOT EXISTS \"{owner_env}\" ON \"{t}\" (owner, environment);",
    ),
    // Key kinds, suspension, usage address, expiry reminders; the ids ever
    // used (never deleted from, so an id is never reused), backfilled.
    (
        2,
        "ALTER TABLE \"{t}\" ADD COLUMN kind TEXT NOT NULL DEFAULT 'scoped';
    ALTER TABLE \"{t}\" ADD COLUMN suspended_at INTEGER;
    ALTER TABLE \"{t}\" ADD COLUMN last_used_ip TEXT;
    ALTER TABLE \"{t}\" ADD COLUMN reminded_at INTEGER;
    CREATE TABLE IF NOT EXISTS \"{ids}\" (id TEXT NOT NULL PRIMARY KEY) WITHOUT ROWID;
    INSERT OR IGNORE INTO \"{ids}\" (id) SELECT id FROM \"{t}\";
    CREATE INDEX IF NOT EXISTS \"{expiry}\" ON \"{t}\" (expires_at)
        WHERE revoked_at IS NULL AND reminded_at IS NULL AND expires_at IS NOT NULL;",
    ),
    // The audit trail (`impl AuditSink for SqliteStore`).
    (
        3,
        "CREATE TABLE IF NOT EXISTS \"{audit}\" (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        action TEXT NOT NULL,
        actor TEXT,
        owner TEXT,
        key_id TEXT,
        client_ip TEXT,
        detail TEXT NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS \"{audit_key}\" ON \"{audit}\" (key_id, at);
    CREATE INDEX IF NOT EXISTS \"{audit_owner}\" ON \"{audit}\" (owner, at);",
    ),
    // The application's external id and metadata (NULL: none, empty).
    (
        4,
        "ALTER TABLE \"{t}\" ADD COLUMN external_id TEXT;
    ALTER TABLE \"{t}\" ADD COLUMN metadata TEXT;
    CREATE INDEX IF NOT EXISTS \"{owner_ext}\" ON \"{t}\" (owner, external_id)
        WHERE external_id IS NOT NULL;",
    ),
    // Usage controls: the limits and credits of a key (`sql_usage`) and
    // the state of each limit leased from (deleted with the key, in the
    // delete's transaction).
    (
        5,
        "ALTER TABLE \"{t}\" ADD COLUMN rate_limits TEXT;
    ALTER TABLE \"{t}\" ADD COLUMN credits_remaining INTEGER;
    ALTER TABLE \"{t}\" ADD COLUMN credits_leased INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE \"{t}\" ADD COLUMN credits_refill TEXT;
    ALTER TABLE \"{t}\" ADD COLUMN credits_refilled_for INTEGER;
    ALTER TABLE \"{t}\" ADD COLUMN credits_last_grant INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS \"{rates}\" (
        key_id TEXT NOT NULL,
        name TEXT NOT NULL,
        tat INTEGER NOT NULL,
        last_grant INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, name)
    ) WITHOUT ROWID;",
    ),
    // What give-backs of unspent rate tokens may move each bucket back
    // (`KeyStore::return_rate`): the numbers of its latest lease and of
    // the lease that last restarted it, its slack, and what the latest
    // lease added.
    (
        6,
        "ALTER TABLE \"{rates}\" ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE \"{rates}\" ADD COLUMN restart_lease INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE \"{rates}\" ADD COLUMN slack INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE \"{rates}\" ADD COLUMN added INTEGER NOT NULL DEFAULT 0;",
    ),
];

fn err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| sql::backend(op, e)
}

impl SqliteStore {
    /// Opens (creating if missing) a database file, given as a path
    /// (`/var/lib/app/keys.db`) or a URL (`sqlite://keys.db`,
    /// `sqlite::memory:`). Files use WAL mode. Run [`migrate`](Self::migrate)
    /// before first use.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), keyward::store::StoreError> {
    /// let store = keyward::SqliteStore::connect("/var/lib/registry/keys.db").await?;
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(path_or_url: &str) -> Result<Self, StoreError> {
        if path_or_url.starts_with("sqlite:") {
            let options =
                SqliteConnectOptions::from_str(path_or_url).map_err(err("parse the SQLite URL"))?;
            if path_or_url.contains(":memory:") || path_or_url.contains("mode=memory") {
                return Self::memory_with(options).await;
            }
            Self::file_with(options).await
        } else {
            Self::file_with(SqliteConnectOptions::new().filename(path_or_url)).await
        }
    }

    async fn file_with(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(err("open the SQLite database"))?;
        Ok(Self::from_pool(pool))
    }

    async fn memory_with(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        // Every connection to `:memory:` is its own database: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.busy_timeout(BUSY_TIMEOUT))
            .await
            .map_err(err("open the in-memory SQLite database"))?;
        Ok(Self::from_pool(pool))
    }

    /// A fresh in-memory database (gone when the store and its clones are
    /// dropped). Run [`migrate`](Self::migrate) before first use.
    pub async fn in_memory() -> Result<Self, StoreError> {
        Self::memory_with(SqliteConnectOptions::new().in_memory(true)).await
    }

    /// A store over a pool you configured yourself (use WAL mode and a busy
    /// timeout for files; one connection for `:memory:`).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            pool,
            table: DEFAULT_TABLE.into(),
            queries: Arc::new(Queries::new(DEFAULT_TABLE)),
        }
    }

    /// Uses table `name` (default `keyward_keys`). Names must match
    /// `[a-z_][a-z0-9_]{0,62}`.
    pub fn with_table(mut self, name: &str) -> Result<Self, InvalidName> {
        sql::check_ident("table", name)?;
        self.table = name.into();
        self.queries = Arc::new(Queries::new(name));
        Ok(self)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The connection pool (to share it, or to close it at shutdown).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the table and its indexes, the sessions table
    /// ([`migrate_sessions`](Self::migrate_sessions)) and the trust tables
    /// ([`migrate_trust`](Self::migrate_trust)). Idempotent: applied
    /// steps are recorded in `<table>_migrations` and skipped, all in one
    /// write transaction, so concurrent calls are safe.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        boxed(self.migrate_impl()).await?;
        self.migrate_sessions().await?;
        self.migrate_trust().await
    }

    async fn migrate_impl(&self) -> Result<(), StoreError> {
        let t = &*self.table;
        let log = sql::derived_ident(t, "migrations");
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err("begin migration"))?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS \"{log}\" (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)"
        ))
        .execute(&mut *tx)
        .await
        .map_err(err("create the migrations table"))?;
        let applied: Vec<i64> = sqlx::query_scalar(&format!("SELECT version FROM \"{log}\""))
            .fetch_all(&mut *tx)
            .await
            .map_err(err("read applied migrations"))?;
        for (version, step) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let ddl = step
                .replace("{owner_id}", &sql::derived_ident(t, "owner_id"))
                .replace("{owner_env}", &sql::derived_ident(t, "owner_env"))
                .replace("{ids}", &sql::derived_ident(t, "ids"))
                .replace("{expiry}", &sql::derived_ident(t, "expiry"))
                .replace("{audit}", &sql::derived_ident(t, "audit"))
                .replace("{audit_key}", &sql::derived_ident(t, "audit_key_at"))
                .replace("{audit_owner}", &sql::derived_ident(t, "audit_owner_at"))
                .replace("{owner_ext}", &sql::derived_ident(t, "owner_ext"))
                .replace("{rates}", &sql::derived_ident(t, "rates"))
                .replace("{t}", t);
            for statement in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("apply a migration"))?;
            }
            sqlx::query(&format!(
                "INSERT INTO \"{log}\" (version, applied_at) VALUES (?, ?)"
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

impl SqliteStore {
    async fn insert_impl(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        let e = sql::encode(record)?;
        // IMMEDIATE takes the write lock now: the count below cannot go stale.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err("begin insert"))?;
        if let Some(q) = quota {
            let live: i64 = sqlx::query_scalar(&self.queries.count_live)
                .bind(e.owner)
                .bind(e.environment)
                .bind(sql::micros(q.now))
                .bind(sql::idle_cutoff(q.now, q.idle_expiry))
                .fetch_one(&mut *tx)
                .await
                .map_err(err("count live keys"))?;
            if live >= i64::from(q.max_live) {
                return Err(StoreError::QuotaExceeded { limit: q.max_live });
            }
        }
        // The id table keeps every id ever inserted (delete leaves it), so
        // a unique violation here, or on the key table, is a duplicate.
        let claimed = sqlx::query(&self.queries.insert_id)
            .bind(e.id)
            .execute(&mut *tx)
            .await;
        match claimed {
            Ok(_) => {}
            Err(ref x) if sql::is_unique_violation(x) => {
                return Err(StoreError::DuplicateId(record.id.clone()));
            }
            Err(x) => return Err(sql::backend("claim the id", x)),
        }
        let result = sqlx::query(&self.queries.insert)
            .bind(e.id)
            .bind(e.owner)
            .bind(e.environment)
            .bind(e.name)
            .bind(e.kind)
            .bind(&e.permissions)
            .bind(&e.resources)
            .bind(&e.ip_allowlist)
            .bind(e.created_at)
            .bind(e.expires_at)
            .bind(e.revoked_at)
            .bind(e.suspended_at)
            .bind(e.last_used_at)
            .bind(&e.last_used_ip)
            .bind(e.reminded_at)
            .bind(e.generation)
            .bind(e.secret_hash)
            .bind(e.external_id)
            .bind(&e.metadata)
            .bind(&e.usage.rate_limits)
            .bind(e.usage.credits_remaining)
            .bind(e.usage.credits_leased)
            .bind(&e.usage.credits_refill)
            .bind(e.usage.credits_refilled_for)
            .execute(&mut *tx)
            .await;
        match result {
            Ok(_) => tx.commit().await.map_err(err("commit insert")),
            Err(ref x) if sql::is_unique_violation(x) => {
                Err(StoreError::DuplicateId(record.id.clone()))
            }
            Err(x) => Err(sql::backend("insert", x)),
        }
    }

    async fn get_impl(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&self.queries.get)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err("get"))?;
        row.as_ref().map(sql::decode).transpose()
    }

    async fn list_impl(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let (conditions, needs_now) = sql::list_conditions(query, true, || "?".to_owned());
        let text = format!(
            "SELECT {COLUMNS} FROM \"{}\" WHERE owner = ?{conditions} ORDER BY id LIMIT ?",
            self.table
        );
        let q = sqlx::query(&text).bind(query.owner.as_str());
        let q = sql::bind_list_conditions!(q, query, true, needs_now)
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = q.fetch_all(&self.pool).await.map_err(err("list"))?;
        rows.iter().map(sql::decode).collect()
    }

    async fn count_impl(&self, query: &ListQuery) -> Result<u64, StoreError> {
        let (conditions, needs_now) = sql::list_conditions(query, false, || "?".to_owned());
        let text = format!(
            "SELECT COUNT(*) FROM \"{}\" WHERE owner = ?{conditions}",
            self.table
        );
        let q = sqlx::query_scalar(&text).bind(query.owner.as_str());
        let n: i64 = sql::bind_list_conditions!(q, query, false, needs_now)
            .fetch_one(&self.pool)
            .await
            .map_err(err("count"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn update_impl(
        &self,
        record: &KeyRecord,
        expected_generation: u64,
    ) -> Result<(), StoreError> {
        let e = sql::encode(record)?;
        let expected = sql::generation_to_sql(expected_generation)?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err("begin update"))?;
        let done = sqlx::query(&self.queries.update)
            .bind(e.owner)
            .bind(e.environment)
            .bind(e.name)
            .bind(e.kind)
            .bind(&e.permissions)
            .bind(&e.resources)
            .bind(&e.ip_allowlist)
            .bind(e.created_at)
            .bind(e.expires_at)
            .bind(e.revoked_at)
            .bind(e.suspended_at)
            .bind(e.reminded_at)
            .bind(e.generation)
            .bind(e.secret_hash)
            .bind(e.external_id)
            .bind(&e.metadata)
            .bind(e.id)
            .bind(expected)
            .bind(&e.usage.rate_limits)
            .bind(&e.usage.credits_refill)
            .bind(e.usage.credits_remaining)
            .bind(e.usage.credits_leased)
            .bind(e.usage.credits_refilled_for)
            .execute(&mut *tx)
            .await
            .map_err(err("update"))?;
        if done.rows_affected() == 1 {
            self.prune_rates(&mut tx, record).await?;
            return tx.commit().await.map_err(err("commit update"));
        }
        let found: Option<i64> = sqlx::query_scalar(&self.queries.generation_of)
            .bind(e.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err("read generation"))?;
        Err(match found {
            None => StoreError::NotFound(record.id.clone()),
            Some(g) => StoreError::Conflict {
                id: record.id.clone(),
                expected: expected_generation,
                found: u64::try_from(g).unwrap_or(0),
            },
        })
    }

    async fn delete_impl(&self, id: &KeyId) -> Result<(), StoreError> {
        // The key's rate-limit states go with it, in one transaction.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err("begin delete"))?;
        let done = sqlx::query(&self.queries.delete)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err("delete"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(id.clone()));
        }
        sqlx::query(&self.queries.usage.delete_rates)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err("delete rate states"))?;
        tx.commit().await.map_err(err("commit delete"))
    }

    async fn record_usage_impl(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        let at = sql::micros(at);
        sqlx::query(&self.queries.record_usage)
            .bind(at)
            .bind(ip.map(|ip| ip.to_string()))
            .bind(id.as_str())
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(err("record usage"))?;
        Ok(())
    }

    async fn take_expiry_reminders_impl(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        if limit == 0 || until <= now {
            return Ok(Vec::new());
        }
        let now = sql::micros(now);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(err("begin taking reminders"))?;
        let rows = sqlx::query(&self.queries.take_reminders)
            .bind(now)
            .bind(now)
            .bind(sql::micros(until))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(err("take expiry reminders"))?;
        let mut taken = rows
            .iter()
            .map(sql::decode)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.map_err(err("commit taking reminders"))?;
        // RETURNING does not keep the subquery's order.
        taken.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
        Ok(taken)
    }
}

// The trait methods box the futures of the inherent `*_impl` methods: the
// boxed future is checked `Send` once, here, so that callers spawning a
// `KeyManager<SqliteStore>`'s futures (web handlers) do not hit rustc's
// "implementation of `Executor` is not general enough" on sqlx's executors.
impl KeyStore for SqliteStore {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        boxed(self.insert_impl(record, quota)).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        boxed(self.get_impl(id)).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        boxed(self.list_impl(query)).await
    }
    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        boxed(self.count_impl(query)).await
    }
    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        boxed(self.update_impl(record, expected_generation)).await
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        boxed(self.delete_impl(id)).await
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        boxed(self.record_usage_impl(id, at, ip)).await
    }
    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        boxed(self.take_expiry_reminders_impl(now, until, limit)).await
    }
    sql_usage_ops::usage_trait_methods!();
}

sql_usage_ops::usage_operations!(SqliteStore, sqlx::SqliteConnection);
