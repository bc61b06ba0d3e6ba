//! The checker's side of the audit trail: the sink, the events a failing
//! sink could not take yet, and the failure aggregator.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

use crate::audit::{AuditEvent, AuditQuery, FailureAggregator};
use crate::store::{AuditSink, StoreError};

/// Most events kept for a retry while the sink fails; beyond it the oldest
/// are dropped and counted ([`AuditLog::dropped`]).
const MAX_UNSENT: usize = 10_000;

/// The manager's side of the audit trail: the sink, the events a failing
/// sink could not take yet, and the failure aggregator.
pub(crate) struct AuditLog {
    sink: Option<Arc<dyn AuditSink>>,
    unsent: Mutex<VecDeque<AuditEvent>>,
    dropped: AtomicU64,
    pub(crate) failures: FailureAggregator,
}

impl AuditLog {
    pub(crate) fn new(
        sink: Option<Arc<dyn AuditSink>>,
        window: TimeDelta,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            sink,
            unsent: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            failures: FailureAggregator::new(window, now),
        }
    }

    /// Whether a sink is configured.
    pub(crate) fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Writes `events` (after any kept from earlier failures). On failure
    /// they are kept for the next attempt and the error is returned.
    pub(crate) async fn send(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let batch: Vec<AuditEvent> = {
            let mut unsent = self.unsent.lock().unwrap_or_else(PoisonError::into_inner);
            unsent.drain(..).chain(events).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        match sink.record(&batch).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut unsent = self.unsent.lock().unwrap_or_else(PoisonError::into_inner);
                // Older events first, then anything queued meanwhile.
                let newer: Vec<AuditEvent> = unsent.drain(..).collect();
                unsent.extend(batch);
                unsent.extend(newer);
                while unsent.len() > MAX_UNSENT {
                    unsent.pop_front();
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Events waiting for a failing sink.
    pub(crate) fn unsent(&self) -> usize {
        self.unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Events dropped because a failing sink's backlog was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reads events from the sink (empty without one).
    pub(crate) async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        match &self.sink {
            Some(sink) => sink.query(query).await,
            None => Ok(Vec::new()),
        }
    }
}
