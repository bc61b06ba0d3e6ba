//! The audit sink check.

use super::fixtures::*;
use crate::audit::{AuditAction, AuditEvent, AuditQuery};
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::store::AuditSink;

/// Checks an [`AuditSink`]: one batch recorded, then read back by key, by
/// owner, by owner and time range (`from` inclusive, `to` exclusive), by time
/// range alone, and with a limit; oldest first (events at the same time in
/// the order recorded); every field intact, IPv4 and IPv6 addresses and all
/// [`AuditAction`]s. Uses its own owners, keys and a time window of its own,
/// so the sink may be shared with other checks.
///
/// # Panics
///
/// When the sink breaks a rule: the message says which.
pub async fn audit_sink_conformance<A: AuditSink>(sink: A) {
    const C: &str = "audit_sink_conformance";
    let ta = own_epoch();
    let at = |s: i64| ta + secs(s);
    let (o1, o2) = (owner(), owner());
    let (k1, k2, k3) = (KeyId::generate(), KeyId::generate(), KeyId::generate());
    let event = |s: i64, action: AuditAction, o: Option<&OwnerId>, k: Option<&KeyId>| AuditEvent {
        owner: o.cloned(),
        key_id: k.cloned(),
        ..AuditEvent::new(at(s), action)
    };
    let created = AuditEvent {
        actor: Some("alice@contoso".into()),
        client_ip: Some(ip("192.0.2.44")),
        detail: "name, permissions".into(),
        ..event(0, AuditAction::Created, Some(&o1), Some(&k1))
    };
    let failed = AuditEvent {
        client_ip: Some(ip("2001:db8:0:1::beef")),
        detail: "wrong_secret".into(),
        count: 4_000_000_000_123,
        ..event(10, AuditAction::AuthenticationFailed, Some(&o1), Some(&k1))
    };
    let edited_same_time = AuditEvent {
        actor: Some("Ünïcødé \"actor\" 🚀".into()),
        detail: "resources".into(),
        ..event(10, AuditAction::Edited, Some(&o1), Some(&k1))
    };
    let revoked = event(20, AuditAction::Revoked, Some(&o1), Some(&k2));
    let other_owner = AuditEvent {
        actor: Some("mallory".into()),
        ..event(5, AuditAction::ManagementDenied, Some(&o2), None)
    };
    let anonymous = AuditEvent {
        // Marked, having no owner, so that it can be found and dropped.
        detail: format!("{}overflow", super::OWNER_PREFIX),
        count: 17,
        ..event(15, AuditAction::AuthenticationFailed, None, None)
    };
    let every_action: Vec<AuditEvent> = AuditAction::ALL
        .iter()
        .enumerate()
        .map(|(i, a)| event(30 + i as i64, *a, Some(&o2), Some(&k3)))
        .collect();
    // Recorded out of time order, in one batch.
    let mut batch = vec![
        revoked.clone(),
        created.clone(),
        other_owner.clone(),
        failed.clone(),
        anonymous.clone(),
        edited_same_time.clone(),
    ];
    batch.extend(every_action.iter().rev().cloned());
    if let Err(e) = sink.record(&batch).await {
        panic!("{C}: record of a batch failed: {e}");
    }
    if let Err(e) = sink.record(&[]).await {
        panic!("{C}: record of an empty batch failed: {e}");
    }
    let read = |q: AuditQuery| {
        let sink = &sink;
        async move {
            match sink.query(&q).await {
                Ok(v) => v,
                Err(e) => panic!("{C}: query {q:?} failed: {e}"),
            }
        }
    };

    assert_eq!(
        read(AuditQuery::key(k1.clone())).await,
        vec![created.clone(), failed.clone(), edited_same_time.clone()],
        "{C}: by key: oldest first, same-time events in recorded order, every field intact"
    );
    assert_eq!(
        read(AuditQuery::owner(o1.clone())).await,
        vec![
            created.clone(),
            failed.clone(),
            edited_same_time.clone(),
            revoked.clone()
        ],
        "{C}: by owner"
    );
    assert_eq!(
        read(AuditQuery::owner(o1.clone()).between(at(10), at(20))).await,
        vec![failed.clone(), edited_same_time.clone()],
        "{C}: by owner in [from, to): from is inclusive, to exclusive"
    );
    let mut limited = AuditQuery::owner(o1.clone());
    limited.limit = 2;
    assert_eq!(
        read(limited).await,
        vec![created.clone(), failed.clone()],
        "{C}: limit keeps the oldest"
    );
    let mut both = AuditQuery::key(k1.clone());
    both.owner = Some(o2.clone());
    assert!(
        read(both).await.is_empty(),
        "{C}: owner and key filters combine"
    );
    assert_eq!(
        read(AuditQuery::all().between(at(0), at(16))).await,
        vec![
            created.clone(),
            other_owner.clone(),
            failed.clone(),
            edited_same_time.clone(),
            anonymous.clone()
        ],
        "{C}: by time range alone, events without owner or key included"
    );
    assert_eq!(
        read(AuditQuery::key(k3.clone())).await,
        every_action,
        "{C}: every action must round-trip"
    );
    assert!(
        read(AuditQuery::key(KeyId::generate())).await.is_empty(),
        "{C}: a key without events has none"
    );
}
