//! Where audit events go: the [`AuditSink`] trait and its in-memory sink.

use std::sync::{Mutex, PoisonError};

use crate::audit::{AuditEvent, AuditQuery, BoxFuture};
use crate::store::StoreError;

/// Where audit events go. Returns boxed futures so a sink can be shared as a
/// trait object; write `Box::pin(async move { ... })`.
pub trait AuditSink: Send + Sync + 'static {
    /// Appends events.
    fn record<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Reads events, oldest first.
    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, StoreError>>;
}

/// An [`AuditSink`] in memory, for tests and single-process deployments.
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }
    /// Every event recorded so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record<'a>(&'a self, events: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(events);
            Ok(())
        })
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, StoreError>> {
        Box::pin(async move {
            let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            let mut out: Vec<AuditEvent> = events
                .iter()
                .filter(|e| query.matches(e))
                .cloned()
                .collect();
            out.sort_by_key(|e| e.at);
            out.truncate(query.limit);
            Ok(out)
        })
    }
}
