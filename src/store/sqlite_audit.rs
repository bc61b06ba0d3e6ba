//! [`AuditSink`] for [`SqliteStore`]: events in `<table>_audit`, created by
//! [`SqliteStore::migrate`].

use super::SqliteStore;
use super::sql::{self, AUDIT_COLUMNS, boxed};
use crate::audit::{AuditEvent, AuditQuery, BoxFuture};
use crate::store::AuditSink;
use crate::store::StoreError;

impl SqliteStore {
    fn audit_table(&self) -> String {
        sql::derived_ident(self.table(), "audit")
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
            "INSERT INTO \"{}\" (at, action, actor, owner, key_id, client_ip, detail, count) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.audit_table()
        );
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| sql::backend("begin recording audit events", e))?;
        for e in &encoded {
            sqlx::query(&text)
                .bind(e.at)
                .bind(e.action)
                .bind(e.actor)
                .bind(e.owner)
                .bind(e.key_id)
                .bind(&e.client_ip)
                .bind(e.detail)
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
            "SELECT {AUDIT_COLUMNS} FROM \"{}\" WHERE 1 = 1",
            self.audit_table()
        );
        if query.owner.is_some() {
            text.push_str(" AND owner = ?");
        }
        if query.key_id.is_some() {
            text.push_str(" AND key_id = ?");
        }
        if query.from.is_some() {
            text.push_str(" AND at >= ?");
        }
        if query.to.is_some() {
            text.push_str(" AND at < ?");
        }
        text.push_str(" ORDER BY at, id LIMIT ?");
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

/// Events go to `<table>_audit` (created by [`SqliteStore::migrate`]); a
/// batch is written in one transaction, all or nothing.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use keyward::{audit::AuditAction, audit::AuditEvent, audit::AuditQuery, store::AuditSink, SqliteStore};
/// let store = SqliteStore::in_memory().await?;
/// store.migrate().await?;
/// store.record(&[AuditEvent::new(chrono::Utc::now(), AuditAction::Created)]).await?;
/// assert_eq!(store.query(&AuditQuery::all()).await?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
impl AuditSink for SqliteStore {
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
