//! The PostgreSQL store (feature `postgres`): many application servers
//! sharing one database, with a LISTEN/NOTIFY change feed that keeps every
//! server's verifier cache honest.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::{self, COLUMNS, InvalidName, boxed};
use super::sql_usage::{Dialect, UPDATE_USAGE_SET, UsageQueries};
use super::sql_usage_ops;
use super::{KeyStore, ListQuery, QuotaCheck};
use crate::ids::KeyId;
use crate::key::KeyRecord;
use crate::store::StoreError;

const DEFAULT_SCHEMA: &str = "public";
const DEFAULT_TABLE: &str = "keyward_keys";
/// How long the change feed may be quiet before it checks its connection.
const DEFAULT_FEED_PING: Duration = Duration::from_secs(15);
/// The shortest quiet interval [`PostgresStore::with_feed_ping`] accepts.
const MIN_FEED_PING: Duration = Duration::from_millis(100);

/// A [`KeyStore`] in PostgreSQL.
///
/// - **Schema**: a key table (default `public.keyward_keys`, see
///   [`with_schema`](Self::with_schema) and [`with_table`](Self::with_table))
///   keyed by `id` (text in the `"C"` collation, so listings are in byte
///   order), with indexes on `(owner, id)` for listings and on
///   `(owner, environment)` of unrevoked keys for the quota count.
///   Permissions, resources and the IP allowlist are JSON text; times are
///   `BIGINT` microseconds since the epoch.
/// - **Sessions**: the store is also a [`SessionStore`](crate::store::SessionStore),
///   in `<table>_sessions` (same schema), created by [`migrate`](Self::migrate).
/// - **Migrations** ([`migrate`](Self::migrate)) are embedded, run under a
///   transaction-scoped advisory lock and use `IF NOT EXISTS`: safe to run on
///   every start, from any number of processes at once.
/// - **Quota**: an insert with a quota takes a transaction-scoped advisory
///   lock on (table, owner, environment), counts the live keys and inserts
///   in the same transaction, so inserts racing from any number of
///   connections or servers never exceed it.
/// - **Updates** compare-and-swap on `generation` and never write
///   `last_used_at`/`last_used_ip`; [`record_usage`](KeyStore::record_usage) is one
///   conditional `UPDATE` that never moves `last_used_at` backwards.
/// - **Usage controls** (rate limits, credits): columns of the key table
///   and `<table>_rates` for the limits' states; every lease, settle and
///   change is one atomic statement, so any number of servers sharing the
///   database never overspend, and `update` never changes a balance (see
///   `docs/DESIGN.md`, "Usage controls in the stores").
/// - **Ids are never reused**: every insert also claims the id in
///   `<table>_ids`, in the same transaction, and delete leaves it there.
/// - **Expiry reminders** are taken by one `UPDATE ... RETURNING` over rows
///   selected `FOR UPDATE SKIP LOCKED` (a partial index on `expires_at`
///   finds them), so concurrent callers, on any server, never get the same key.
/// - **Audit trail**: the store is also an [`AuditSink`](crate::store::AuditSink)
///   writing `<table>_audit` (indexed by key and time, owner and time), so
///   one database keeps both: `KeyManager::builder(store.clone(), ..).audit(store.clone())`.
/// - **Change feed**: every update and delete that changes a row also runs
///   `pg_notify(channel, key_id)` in its transaction, so the notice goes out
///   exactly when the change is committed. [`listen`](Self::listen) feeds
///   those notices to a [`Verifier`](crate::Verifier) in another process.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use keyward::PostgresStore;
/// let store = PostgresStore::connect("postgres://app@db.internal/registry")
///     .await?
///     .with_schema("auth")?
///     .with_table("api_keys")?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(super) pool: PgPool,
    pub(super) schema: Arc<str>,
    pub(super) table: Arc<str>,
    pub(super) channel: Arc<str>,
    pub(super) queries: Arc<Queries>,
    pub(super) feed_ping: Duration,
}

#[derive(Debug)]
pub(super) struct Queries {
    lock_owner: String,
    count_live: String,
    insert: String,
    insert_id: String,
    record_usage: String,
    take_reminders: String,
    get: String,
    update: String,
    generation_of: String,
    delete: String,
    list_base: String,
    count_base: String,
    pub(super) usage: UsageQueries,
}

impl Queries {
    fn new(s: &str, t: &str) -> Self {
        let q = format!("\"{s}\".\"{t}\"");
        let ids = format!("\"{s}\".\"{}\"", sql::derived_ident(t, "ids"));
        let rates = format!("\"{s}\".\"{}\"", sql::derived_ident(t, "rates"));
        Self {
            lock_owner: "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))".to_owned(),
            count_live: format!(
                "SELECT COUNT(*) FROM {q} WHERE owner = $1 AND environment = $2 AND {}",
                sql::live_condition("$3", "$4")
            ),
            insert: format!(
                "INSERT INTO {q} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
            ),
            insert_id: format!("INSERT INTO {ids} (id) VALUES ($1)"),
            record_usage: format!(
                "UPDATE {q} SET last_used_at = $1, last_used_ip = $2 \
                 WHERE id = $3 AND (last_used_at IS NULL OR last_used_at <= $1)"
            ),
            // SKIP LOCKED: concurrent callers take disjoint rows; the outer
            // condition re-checks a row another caller marked meanwhile.
            // `= ANY(ARRAY(...))` makes the selection an init plan, run once:
            // an `IN (...)` semi-join may rescan a LIMIT ... FOR UPDATE
            // subquery and take more than `limit` rows.
            take_reminders: format!(
                "UPDATE {q} SET reminded_at = $1 WHERE id = ANY(ARRAY(\
                 SELECT id FROM {q} WHERE revoked_at IS NULL AND reminded_at IS NULL \
                 AND expires_at > $1 AND expires_at <= $2 ORDER BY expires_at, id LIMIT $3 \
                 FOR UPDATE SKIP LOCKED)) AND reminded_at IS NULL RETURNING {COLUMNS}"
            ),
            get: format!("SELECT {COLUMNS} FROM {q} WHERE id = $1"),
            update: format!(
                "UPDATE {q} SET owner = $1, environment = $2, name = $3, kind = $4, permissions = $5, \
                 resources = $6, ip_allowlist = $7, created_at = $8, expires_at = $9, revoked_at = $10, \
                 suspended_at = $11, reminded_at = $12, generation = $13, secret_hash = $14, \
                 external_id = $15, metadata = $16, {UPDATE_USAGE_SET} \
                 WHERE id = $17 AND generation = $18"
            ),
            generation_of: format!("SELECT generation FROM {q} WHERE id = $1"),
            delete: format!("DELETE FROM {q} WHERE id = $1"),
            list_base: format!("SELECT {COLUMNS} FROM {q} WHERE owner = $1"),
            count_base: format!("SELECT COUNT(*) FROM {q} WHERE owner = $1"),
            usage: UsageQueries::new(Dialect::Postgres, &q, &rates),
        }
    }
}

pub(super) fn err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| sql::backend(op, e)
}

fn channel_name(schema: &str, table: &str) -> String {
    let plain = format!("keyward.{schema}.{table}");
    if plain.len() <= sql::MAX_IDENT_LEN {
        plain
    } else {
        sql::derived_ident(&format!("{schema}.{table}"), "changes")
    }
}

impl PostgresStore {
    /// Connects a pool of up to 16 connections to `url`
    /// (`postgres://user@host:5432/db`), with [`pool_options`](Self::pool_options).
    /// Fails at once if the server cannot be reached. Run
    /// [`migrate`](Self::migrate) before first use. To size the pool or name
    /// the connections, see [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(Self::pool_options(), url).await
    }

    /// The pool settings [`connect`](Self::connect) uses, to start from:
    /// up to 16 connections, 5 s to wait for one.
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
    }

    /// Connects a pool with your settings (size, timeouts, lifetimes) to
    /// `url`. Fails at once if the server cannot be reached.
    ///
    /// Connections are named by the URL's `application_name` parameter, so
    /// `pg_stat_activity` tells this server's connections from others'
    /// (the change feed's own connection is always
    /// `keyward-change-feed`). For settings a URL cannot carry, build the
    /// pool yourself and use [`from_pool`](Self::from_pool).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyward::store::StoreError> {
    /// use std::time::Duration;
    /// use keyward::PostgresStore;
    /// let store = PostgresStore::connect_with(
    ///     PostgresStore::pool_options()
    ///         .max_connections(64)
    ///         .min_connections(4)
    ///         .idle_timeout(Duration::from_secs(600)),
    ///     "postgres://app@db.internal:5432/registry?application_name=publisher-api",
    /// )
    /// .await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn connect_with(options: PgPoolOptions, url: &str) -> Result<Self, StoreError> {
        let pool = options
            .connect(url)
            .await
            .map_err(err("connect to PostgreSQL"))?;
        Ok(Self::from_pool(pool))
    }

    /// A store over a pool you configured yourself (connection options
    /// included: `PgConnectOptions::application_name` names its
    /// connections), or one shared with the rest of the program.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            schema: DEFAULT_SCHEMA.into(),
            table: DEFAULT_TABLE.into(),
            channel: channel_name(DEFAULT_SCHEMA, DEFAULT_TABLE).into(),
            queries: Arc::new(Queries::new(DEFAULT_SCHEMA, DEFAULT_TABLE)),
            feed_ping: DEFAULT_FEED_PING,
        }
    }

    /// How long the change feed ([`listen`](Self::listen)) may receive
    /// nothing before it checks its connection with a query (default 15 s).
    /// A check that fails, or takes longer than `interval` (and at least
    /// 1 s), counts as a lost connection: the feed reconnects on a fresh
    /// connection and invalidates everything. Without it, a network that
    /// drops packets silently would leave the feed waiting, unaware, until
    /// TCP gave up. Intervals below 100 ms are taken as 100 ms.
    pub fn with_feed_ping(mut self, interval: Duration) -> Self {
        self.feed_ping = interval.max(MIN_FEED_PING);
        self
    }

    fn rebuild(mut self) -> Self {
        self.channel = channel_name(&self.schema, &self.table).into();
        self.queries = Arc::new(Queries::new(&self.schema, &self.table));
        self
    }

    /// Uses schema `name` (default `public`); [`migrate`](Self::migrate)
    /// creates it if missing. Names must match `[a-z_][a-z0-9_]{0,62}`.
    pub fn with_schema(mut self, name: &str) -> Result<Self, InvalidName> {
        sql::check_ident("schema", name)?;
        self.schema = name.into();
        Ok(self.rebuild())
    }

    /// Uses table `name` (default `keyward_keys`). Names must match
    /// `[a-z_][a-z0-9_]{0,62}`.
    pub fn with_table(mut self, name: &str) -> Result<Self, InvalidName> {
        sql::check_ident("table", name)?;
        self.table = name.into();
        Ok(self.rebuild())
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The NOTIFY channel of the change feed: `keyward.<schema>.<table>`
    /// (or a name derived from a hash of both when that is too long).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The connection pool (to share it, or to close it at shutdown).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl PostgresStore {
    async fn insert_impl(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        let e = sql::encode(record)?;
        let mut tx = self.pool.begin().await.map_err(err("begin insert"))?;
        if let Some(q) = quota {
            // Serializes quota-checked inserts of one owner and environment.
            let scope = format!("{}.{}", self.schema, self.table);
            let who = format!("{}\u{1f}{}", e.owner, e.environment);
            sqlx::query(&self.queries.lock_owner)
                .bind(&scope)
                .bind(&who)
                .execute(&mut *tx)
                .await
                .map_err(err("lock the owner's quota"))?;
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
        // The id table keeps every id ever inserted (delete leaves it): a
        // unique violation there is a duplicate, whether the id is stored
        // or was deleted, and a racing insert of the same id waits on it.
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
        let mut n = 1;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        let (conditions, needs_now) = sql::list_conditions(query, true, &mut next);
        let limit = next();
        let text = format!(
            "{}{conditions} ORDER BY id LIMIT {limit}",
            self.queries.list_base
        );
        let q = sqlx::query(&text).bind(query.owner.as_str());
        let q = sql::bind_list_conditions!(q, query, true, needs_now)
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = q.fetch_all(&self.pool).await.map_err(err("list"))?;
        rows.iter().map(sql::decode).collect()
    }

    async fn count_impl(&self, query: &ListQuery) -> Result<u64, StoreError> {
        let mut n = 1;
        let (conditions, needs_now) = sql::list_conditions(query, false, || {
            n += 1;
            format!("${n}")
        });
        let text = format!("{}{conditions}", self.queries.count_base);
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
        let mut tx = self.pool.begin().await.map_err(err("begin update"))?;
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
            notify(&mut tx, &self.channel, e.id).await?;
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
        let mut tx = self.pool.begin().await.map_err(err("begin delete"))?;
        let done = sqlx::query(&self.queries.delete)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err("delete"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(id.clone()));
        }
        notify(&mut tx, &self.channel, id.as_str()).await?;
        tx.commit().await.map_err(err("commit delete"))
    }

    async fn record_usage_impl(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        sqlx::query(&self.queries.record_usage)
            .bind(sql::micros(at))
            .bind(ip.map(|ip| ip.to_string()))
            .bind(id.as_str())
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
        let rows = sqlx::query(&self.queries.take_reminders)
            .bind(sql::micros(now))
            .bind(sql::micros(until))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(err("take expiry reminders"))?;
        let mut taken = rows
            .iter()
            .map(sql::decode)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING does not keep the subquery's order.
        taken.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
        Ok(taken)
    }
}

// The trait methods box the futures of the inherent `*_impl` methods: the
// boxed future is checked `Send` once, here, so that callers spawning a
// `KeyManager<PostgresStore>`'s futures (web handlers) do not hit rustc's
// "implementation of `Executor` is not general enough" on sqlx's executors.
impl KeyStore for PostgresStore {
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

sql_usage_ops::usage_operations!(PostgresStore, sqlx::PgConnection);

/// Queues a change notice; PostgreSQL sends it when the transaction commits.
async fn notify(tx: &mut sqlx::PgConnection, channel: &str, id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(id)
        .execute(tx)
        .await
        .map_err(err("notify"))?;
    Ok(())
}
