//! [`AuditSink`] for [`PostgresStore`]: events in `<table>_audit`, created by
//! [`PostgresStore::migrate`].

use std::borrow::Cow;

use super::PostgresStore;
use super::sql::{self, AUDIT_COLUMNS, boxed};
use crate::audit::{AuditEvent, AuditQuery, BoxFuture};
use crate::store::AuditSink;
use crate::store::StoreError;

impl PostgresStore {
    fn audit_table(&self) -> String {
        format!(
            "\"{}\".\"{}\"",
            self.schema(),
            sql::derived_ident(self.table(), "audit")
        )
    }

    async fn record_events(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let encoded = events
            .iter()
            .map(sql::encode_event)
            .collect::<Result<Vec<_>, _>>()?;
        let text = format!(
            "INSERT INTO {} (at, action, actor, owner, key_id, client_ip, detail, count) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.audit_table()
        );
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|e| sql::backend("begin recording audit events", e))?;
        for e in &encoded {
            sqlx::query(&text)
                .bind(e.at)
                .bind(e.action)
                .bind(e.actor.map(without_nul))
                .bind(e.owner)
                .bind(e.key_id)
                .bind(&e.client_ip)
                .bind(without_nul(e.detail))
                .bind(e.count)
                .execute(&mut *tx)
                .await
                .map_err(|e| sql::backend("record an audit event", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| sql::backend("commit audit events", e))
    }

    async fn query_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut text = format!(
            "SELECT {AUDIT_COLUMNS} FROM {} WHERE TRUE",
            self.audit_table()
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if query.owner.is_some() {
            text.push_str(&format!(" AND owner = {}", next()));
        }
        if query.key_id.is_some() {
            text.push_str(&format!(" AND key_id = {}", next()));
        }
        if query.from.is_some() {
            text.push_str(&format!(" AND at >= {}", next()));
        }
        if query.to.is_some() {
            text.push_str(&format!(" AND at < {}", next()));
        }
        text.push_str(&format!(" ORDER BY at, id LIMIT {}", next()));
        let mut q = sqlx::query(&text);
        if let Some(owner) = &query.owner {
            q = q.bind(owner.as_str());
        }
        if let Some(key) = &query.key_id {
            q = q.bind(key.as_str());
        }
        if let Some(from) = query.from {
            q = q.bind(sql::micros(from));
        }
        if let Some(to) = query.to {
            q = q.bind(sql::micros(to));
        }
        q = q.bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = q
            .fetch_all(self.pool())
            .await
            .map_err(|e| sql::backend("query audit events", e))?;
        rows.iter().map(sql::decode_event).collect()
    }
}

/// PostgreSQL text cannot hold NUL: in the free-text fields (`actor`,
/// `detail`) it is stored as U+FFFD, so one odd event never makes a whole
/// batch fail (the manager would retry it forever).
fn without_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Events go to `<table>_audit` (created by [`PostgresStore::migrate`]); a
/// batch is written in one transaction, all or nothing. A NUL character in
/// `actor` or `detail` is stored as U+FFFD (PostgreSQL text cannot hold it).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use keyward::{audit::AuditQuery, store::AuditSink, KeyId, PostgresStore};
/// let store = PostgresStore::connect("postgres://app@db.internal/registry").await?;
/// store.migrate().await?;
/// // After a leak: what did this key do between T1 and T2?
/// # let (id, t1, t2) = (KeyId::new("abc").unwrap(), chrono::Utc::now(), chrono::Utc::now());
/// let events = store.query(&AuditQuery::key(id).between(t1, t2)).await?;
/// # Ok(()) }
/// ```
impl AuditSink for PostgresStore {
    fn record<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        boxed(self.record_events(events))
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, StoreError>> {
        boxed(self.query_events(query))
    }
}
