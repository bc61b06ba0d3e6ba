//! Spans and events for the `tracing` feature. Without the feature every
//! function here is empty and compiles away.
//!
//! What is recorded: key ids, owners, actor ids, outcomes and reason codes.
//! Never a token, a secret, a hash or a fingerprint: the functions here take
//! none of them, so a secret cannot reach a subscriber by mistake.

use crate::ids::KeyId;
use crate::policy::{ManagementAction, ManagementDenial};
use crate::store::StoreError;

/// A successful check.
#[inline]
pub(crate) fn verified(key_id: &KeyId, owner: &str) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        target: "keyward::verify",
        key_id = key_id.as_str(),
        owner,
        outcome = "granted"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, owner);
}

/// A refused check (with the key's owner when the key was found).
#[inline]
/// `reason` is the denial's stable code (`DenialReason::code`): this module
/// imports nothing from `verify`, so the arrow points one way.
pub(crate) fn denied(key_id: Option<&str>, owner: Option<&str>, reason: &'static str) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: "keyward::verify",
        key_id = key_id.unwrap_or(""),
        owner = owner.unwrap_or(""),
        reason,
        outcome = "denied"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, owner, reason);
}

/// Runs a check (`kind`: "key", "pair", "session") inside a
/// `keyward.verify` span; its events say what happened.
#[inline]
pub(crate) async fn verify_span<F: std::future::Future>(kind: &'static str, fut: F) -> F::Output {
    #[cfg(feature = "tracing")]
    {
        use tracing::Instrument;
        let span = tracing::debug_span!(target: "keyward::verify", "keyward.verify", kind);
        // No subscriber wants the span: no `Instrumented` wrapper to enter
        // and leave on every poll.
        if span.is_disabled() {
            return fut.await;
        }
        fut.instrument(span).await
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = kind;
        fut.await
    }
}

/// A `keyward.verify` span for a check whose first part runs without
/// waiting ([`VerifySpan::in_scope`]) and whose rest, when it must wait,
/// is a future ([`VerifySpan::instrument`]): one span for both, created
/// only when a subscriber wants it. Without the `tracing` feature it is
/// empty.
pub(crate) struct VerifySpan {
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
}

impl VerifySpan {
    /// The span of a check of `kind` ("key", "pair").
    #[inline]
    pub(crate) fn new(kind: &'static str) -> Self {
        #[cfg(feature = "tracing")]
        {
            let span = tracing::debug_span!(target: "keyward::verify", "keyward.verify", kind);
            Self {
                span: (!span.is_disabled()).then_some(span),
            }
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = kind;
            Self {}
        }
    }

    /// Runs `f` inside the span.
    #[inline]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            return span.in_scope(f);
        }
        f()
    }

    /// Runs `fut` inside the span.
    pub(crate) async fn instrument<F: std::future::Future>(self, fut: F) -> F::Output {
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span {
            use tracing::Instrument;
            return fut.instrument(span).await;
        }
        fut.await
    }
}

/// What [`manage_span`] records of a management call's error: its stable
/// code, or `None` when the error has its own event. Implemented by the
/// manager's error, so this module imports nothing from `manager`.
pub(crate) trait TracedError {
    /// The error's code for the span's outcome, or `None` to record nothing.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    fn trace_code(&self) -> Option<&'static str>;
}

/// Runs a management call inside a `keyward.manage` span (actor, action,
/// key id), and records its outcome: done, or the error's kind.
pub(crate) async fn manage_span<T, E, F>(
    actor: &str,
    action: ManagementAction,
    key_id: Option<&KeyId>,
    fut: F,
) -> Result<T, E>
where
    E: TracedError,
    F: std::future::Future<Output = Result<T, E>>,
{
    #[cfg(feature = "tracing")]
    {
        use tracing::Instrument;
        let span = tracing::info_span!(
            target: "keyward::manage",
            "keyward.manage",
            actor,
            action = %action,
            key_id = key_id.map_or("", |k| k.as_str()),
        );
        let result = fut.instrument(span.clone()).await;
        let _entered = span.enter();
        match &result {
            Ok(_) => tracing::debug!(target: "keyward::manage", outcome = "ok"),
            Err(e) => {
                if let Some(code) = e.trace_code() {
                    tracing::info!(target: "keyward::manage", outcome = "error", error = code)
                }
            }
        }
        result
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = (actor, action, key_id);
        fut.await
    }
}

/// A management call's outcome.
pub(crate) fn management(
    actor: &str,
    action: ManagementAction,
    key_id: Option<&KeyId>,
    outcome: Result<(), &ManagementDenial>,
) {
    #[cfg(feature = "tracing")]
    match outcome {
        Ok(()) => tracing::info!(
            target: "keyward::manage",
            actor,
            action = %action,
            key_id = key_id.map_or("", |k| k.as_str()),
            outcome = "done"
        ),
        Err(denial) => tracing::warn!(
            target: "keyward::manage",
            actor,
            action = %action,
            key_id = key_id.map_or("", |k| k.as_str()),
            outcome = "not_allowed",
            reason = %denial
        ),
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (actor, action, key_id, outcome);
}

/// The audit sink refused events (they are kept for a retry).
pub(crate) fn audit_failed(error: &StoreError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "keyward::audit", error = %error, "audit sink failed; events kept for retry");
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

/// A usage write to the store failed (kept for the next flush).
pub(crate) fn usage_write_failed(key_id: &KeyId, error: &StoreError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "keyward::usage", key_id = key_id.as_str(), error = %error, "usage write failed");
    #[cfg(not(feature = "tracing"))]
    let _ = (key_id, error);
}
