//! The audit trail: an event for every management action, aggregated
//! authentication failures and usage. The sink that keeps them is
//! [`AuditSink`](crate::store::AuditSink), in `store`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::source::Source;

/// A boxed future, as [`AuditSink`](crate::store::AuditSink) returns (so sinks can be trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A key was created.
    Created,
    /// A key was imported from another system.
    Imported,
    /// A key was edited.
    Edited,
    /// A key got a new secret.
    Regenerated,
    /// A key got a successor and will expire after a grace period.
    Rotated,
    /// A key was suspended.
    Suspended,
    /// A key was resumed.
    Resumed,
    /// A key was revoked.
    Revoked,
    /// A key was deleted.
    Deleted,
    /// A session token was issued for a key.
    SessionIssued,
    /// A management call was refused by the management policy.
    ManagementDenied,
    /// Checks with this key failed (aggregated: see [`AuditEvent::count`]).
    AuthenticationFailed,
    /// The key was used successfully (aggregated: see [`AuditEvent::count`]).
    Used,
    /// A trust policy (trusted publishing) was registered; `key_id` is its id.
    TrustPolicyCreated,
    /// A trust policy was deleted; `key_id` is its id.
    TrustPolicyDeleted,
    /// A key's credit balance was set; `detail` gives the new balance.
    CreditsSet,
    /// Credits were added to a key's balance; `detail` gives the amount
    /// and the balance after.
    CreditsAdded,
}

impl AuditAction {
    /// Every action, in declaration order.
    pub const ALL: [AuditAction; 17] = [
        AuditAction::Created,
        AuditAction::Imported,
        AuditAction::Edited,
        AuditAction::Regenerated,
        AuditAction::Rotated,
        AuditAction::Suspended,
        AuditAction::Resumed,
        AuditAction::Revoked,
        AuditAction::Deleted,
        AuditAction::SessionIssued,
        AuditAction::ManagementDenied,
        AuditAction::AuthenticationFailed,
        AuditAction::Used,
        AuditAction::TrustPolicyCreated,
        AuditAction::TrustPolicyDeleted,
        AuditAction::CreditsSet,
        AuditAction::CreditsAdded,
    ];

    /// The stable name sinks store (`created`, `session_issued`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Created => "created",
            AuditAction::Imported => "imported",
            AuditAction::Edited => "edited",
            AuditAction::Regenerated => "regenerated",
            AuditAction::Rotated => "rotated",
            AuditAction::Suspended => "suspended",
            AuditAction::Resumed => "resumed",
            AuditAction::Revoked => "revoked",
            AuditAction::Deleted => "deleted",
            AuditAction::SessionIssued => "session_issued",
            AuditAction::ManagementDenied => "management_denied",
            AuditAction::AuthenticationFailed => "authentication_failed",
            AuditAction::Used => "used",
            AuditAction::TrustPolicyCreated => "trust_policy_created",
            AuditAction::TrustPolicyDeleted => "trust_policy_deleted",
            AuditAction::CreditsSet => "credits_set",
            AuditAction::CreditsAdded => "credits_added",
        }
    }

    /// Parses [`AuditAction::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One entry of the audit trail. Never holds a secret or a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened (for aggregated events: the last occurrence).
    pub at: DateTime<Utc>,
    /// What happened.
    pub action: AuditAction,
    /// Who did it (an actor id), when known.
    pub actor: Option<String>,
    /// The owner of the key, when known.
    pub owner: Option<OwnerId>,
    /// The key, when known.
    pub key_id: Option<KeyId>,
    /// The client's address, when known.
    pub client_ip: Option<IpAddr>,
    /// What changed (`"name, permissions"`), or a reason code (`"wrong_secret"`).
    pub detail: String,
    /// How many occurrences this event stands for (1 unless aggregated).
    pub count: u64,
}

impl AuditEvent {
    /// An event with `count` 1 and no actor, owner, key or address.
    pub fn new(at: DateTime<Utc>, action: AuditAction) -> Self {
        Self {
            at,
            action,
            actor: None,
            owner: None,
            key_id: None,
            client_ip: None,
            detail: String::new(),
            count: 1,
        }
    }
}

/// Which events to read: by owner, key and time range (`from` inclusive,
/// `to` exclusive), oldest first, at most `limit`.
///
/// "What did this key do between T1 and T2" is
/// `AuditQuery::key(id).between(t1, t2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this owner's events.
    pub owner: Option<OwnerId>,
    /// Only this key's events.
    pub key_id: Option<KeyId>,
    /// Not before this time.
    pub from: Option<DateTime<Utc>>,
    /// Before this time.
    pub to: Option<DateTime<Utc>>,
    /// At most this many (default 1000).
    pub limit: usize,
}

impl AuditQuery {
    /// Every event of this key.
    pub fn key(id: KeyId) -> Self {
        Self {
            key_id: Some(id),
            ..Self::all()
        }
    }
    /// Every event of this owner.
    pub fn owner(owner: OwnerId) -> Self {
        Self {
            owner: Some(owner),
            ..Self::all()
        }
    }
    /// Every event.
    pub fn all() -> Self {
        Self {
            owner: None,
            key_id: None,
            from: None,
            to: None,
            limit: 1000,
        }
    }
    /// Only events in `[from, to)`.
    pub fn between(mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        self.from = Some(from);
        self.to = Some(to);
        self
    }
    /// Whether an event passes the filters.
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|o| e.owner.as_ref() == Some(o))
            && self
                .key_id
                .as_ref()
                .is_none_or(|k| e.key_id.as_ref() == Some(k))
            && self.from.is_none_or(|f| e.at >= f)
            && self.to.is_none_or(|t| e.at < t)
    }
}

/// Most distinct (key, reason) pairs of existing keys kept between flushes;
/// beyond it, failures are counted in one overflow event, so a flood of
/// distinct ids cannot grow memory or the log without bound.
const MAX_PENDING_FAILURES: usize = 10_000;

/// Most rows per window for failures that name no existing key (unknown
/// ids, malformed tokens, throttled sources, ...): one per (reason, client
/// source), at most this many, the rest in the overflow row. So a flood of
/// random ids writes at most 64 + 1 rows per window, whatever its size.
pub const MAX_ANONYMOUS_FAILURE_ROWS: usize = 64;

#[derive(Debug, Clone)]
struct Pending {
    owner: Option<OwnerId>,
    client_ip: Option<IpAddr>,
    last: DateTime<Utc>,
    count: u64,
}

/// What failures are counted under: an existing key (its owner should see
/// each of its failures), or, for failures that name no existing key, the
/// reason and the client source, with no key id (anyone can compute a
/// token for a random id: a row each would bury the owners' real failures).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    Key(KeyId, &'static str),
    Anonymous(&'static str, Option<Source>),
}

/// The failures of the current window: counts by [`FailureKey`], when the
/// window started, how many anonymous rows it holds, and how many failures
/// overflowed the bounds.
struct Window {
    map: HashMap<FailureKey, Pending>,
    started: DateTime<Utc>,
    anonymous: usize,
    overflow: u64,
}

/// Aggregates authentication failures: at most one event per (key id,
/// reason) of an existing key, and per (reason, client source) otherwise,
/// per window, carrying the count.
pub(crate) struct FailureAggregator {
    pending: Mutex<Window>,
    window: TimeDelta,
}

impl fmt::Debug for FailureAggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureAggregator")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl FailureAggregator {
    pub(crate) fn new(window: TimeDelta, now: DateTime<Utc>) -> Self {
        Self {
            pending: Mutex::new(Window {
                map: HashMap::new(),
                started: now,
                anonymous: 0,
                overflow: 0,
            }),
            window,
        }
    }

    /// Counts one failure (of an existing key when `owner` is known);
    /// returns the events to write when the window closed.
    pub(crate) fn add(
        &self,
        key_id: Option<KeyId>,
        owner: Option<OwnerId>,
        reason: &'static str,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Option<Vec<AuditEvent>> {
        let mut guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let w = &mut *guard;
        let (key, full) = match (key_id, &owner) {
            (Some(id), Some(_)) => (
                FailureKey::Key(id, reason),
                w.map.len() - w.anonymous >= MAX_PENDING_FAILURES,
            ),
            _ => (
                FailureKey::Anonymous(reason, client_ip.map(Source::of)),
                w.anonymous >= MAX_ANONYMOUS_FAILURE_ROWS,
            ),
        };
        match w.map.get_mut(&key) {
            Some(p) => {
                p.count += 1;
                p.last = now;
                p.client_ip = client_ip.or(p.client_ip);
            }
            None if full => w.overflow += 1,
            None => {
                if matches!(key, FailureKey::Anonymous(..)) {
                    w.anonymous += 1;
                }
                w.map.insert(
                    key,
                    Pending {
                        owner,
                        client_ip,
                        last: now,
                        count: 1,
                    },
                );
            }
        }
        if now - w.started >= self.window {
            Some(Self::drain(w, now))
        } else {
            None
        }
    }

    /// Everything pending, as events.
    pub(crate) fn flush(&self, now: DateTime<Utc>) -> Vec<AuditEvent> {
        let mut guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        Self::drain(&mut guard, now)
    }

    fn drain(w: &mut Window, now: DateTime<Utc>) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = w
            .map
            .drain()
            .map(|(key, p)| {
                let (key_id, reason) = match key {
                    FailureKey::Key(id, reason) => (Some(id), reason),
                    FailureKey::Anonymous(reason, _) => (None, reason),
                };
                AuditEvent {
                    at: p.last,
                    action: AuditAction::AuthenticationFailed,
                    actor: None,
                    owner: p.owner,
                    key_id,
                    client_ip: p.client_ip,
                    detail: reason.to_string(),
                    count: p.count,
                }
            })
            .collect();
        if w.overflow > 0 {
            events.push(AuditEvent {
                detail: "overflow".into(),
                count: w.overflow,
                ..AuditEvent::new(now, AuditAction::AuthenticationFailed)
            });
            w.overflow = 0;
        }
        w.anonymous = 0;
        w.started = now;
        events.sort_by_key(|e| e.at);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_flood_of_failures_becomes_one_event_per_key_and_reason() {
        let agg = FailureAggregator::new(TimeDelta::seconds(60), t(0));
        let id = KeyId::new("abc").unwrap();
        let owner = || Some(OwnerId::new("contoso").unwrap());
        for s in 0..59 {
            assert!(
                agg.add(Some(id.clone()), owner(), "wrong_secret", None, t(s))
                    .is_none()
            );
        }
        let events = agg
            .add(Some(id.clone()), owner(), "wrong_secret", None, t(60))
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key_id.as_ref(), Some(&id));
        assert_eq!((events[0].count, events[0].at), (60, t(60)));
        assert_eq!(events[0].detail, "wrong_secret");
        assert!(agg.flush(t(61)).is_empty());
    }

    #[test]
    fn distinct_ids_beyond_the_bound_are_counted_not_kept() {
        let agg = FailureAggregator::new(TimeDelta::seconds(60), t(0));
        for i in 0..MAX_PENDING_FAILURES + 5 {
            let id = KeyId::new(&format!("k{i}")).unwrap();
            let owner = OwnerId::new("contoso").unwrap();
            agg.add(Some(id), Some(owner), "wrong_secret", None, t(1));
        }
        let events = agg.flush(t(2));
        assert_eq!(events.len(), MAX_PENDING_FAILURES + 1);
        let overflow = events.iter().find(|e| e.detail == "overflow").unwrap();
        assert_eq!(overflow.count, 5);
    }

    #[test]
    fn failures_of_no_existing_key_are_one_row_per_reason_and_source() {
        let agg = FailureAggregator::new(TimeDelta::seconds(60), t(0));
        let ip = |i: u32| Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        // 1,000 random ids from 3 sources, and from no address.
        for i in 0..1000u32 {
            let id = KeyId::new(&format!("r{i}")).unwrap();
            agg.add(Some(id), None, "unknown_key", ip(i % 3), t(1));
            agg.add(None, None, "malformed", None, t(1));
        }
        let events = agg.flush(t(2));
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events.iter().all(|e| e.key_id.is_none()));
        assert_eq!(events.iter().map(|e| e.count).sum::<u64>(), 2000);
        // From many sources: at most the bound, the rest in the overflow.
        for i in 0..10_000u32 {
            agg.add(None, None, "unknown_key", ip(i), t(3));
        }
        let events = agg.flush(t(4));
        assert_eq!(events.len(), MAX_ANONYMOUS_FAILURE_ROWS + 1);
        assert_eq!(events.iter().map(|e| e.count).sum::<u64>(), 10_000);
    }
}
