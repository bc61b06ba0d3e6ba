//! Hostile traffic (issue 10): argon2 once per secret, a cache that does not
//! switch itself off under load, no lockout of a key's holder, bounded
//! argon2 work, and anonymous floods that neither flood the audit trail nor
//! the store.
#![cfg(feature = "testing")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use keyward::store::{FaultyStore, Op};
use keyward::*;

/// A second server on the same store and clock: its own verifier cache, no
/// change feed (so only the TTL carries its changes to the first one).
fn second_server(f: &Fixture) -> KeyManager<Arc<MemoryStore>> {
    KeyManager::builder(
        Arc::clone(f.manager.store()),
        format(),
        policy().with_edits(EditPolicy::permissive()),
    )
    .hasher(CountingHasher::new(Counters::default()))
    .clock(f.clock.clone())
    .build()
}

#[tokio::test]
async fn a_key_checked_every_second_for_ten_minutes_costs_one_argon2_run() {
    let f = fixture();
    let created = f.push_key().await;
    let t = created.token.expose_secret();
    for _ in 0..600 {
        assert!(f.manager.verify(t, &f.req()).await.is_ok());
        f.clock.advance(TimeDelta::seconds(1));
    }
    assert_eq!(
        f.hash_verifies(),
        1,
        "the TTL re-reads the record; it does not re-prove the secret"
    );
}

/// Checks `t` once a second until `pred` holds for its answer; returns the
/// seconds it took (at most `limit`).
async fn seconds_until(
    f: &Fixture,
    t: &str,
    req: &VerifyRequest<'_>,
    limit: i64,
    pred: impl Fn(&Result<VerifiedKey, Denial>) -> bool,
) -> i64 {
    for s in 0..=limit {
        if pred(&f.manager.verify(t, req).await) {
            return s;
        }
        f.clock.advance(TimeDelta::seconds(1));
    }
    panic!("not seen within {limit} s");
}

#[tokio::test]
async fn changes_made_through_another_server_are_seen_within_the_ttl() {
    let f = fixture_with(
        Arc::new(MemoryStore::new()),
        policy().with_edits(EditPolicy::permissive()),
        VerifierConfig::default(),
    );
    let other = second_server(&f);
    let ttl = VerifierConfig::default().cache_ttl.as_secs() as i64;
    let created = f.push_key().await;
    let id = &created.key.id;
    let t = created.token.expose_secret();
    assert!(f.manager.verify(t, &f.req()).await.is_ok());

    // Edit: permission narrowed on the other server.
    other
        .edit(
            &sys(),
            id,
            KeyEdit {
                permissions: Some(PermissionGrant::only(["analytics:read"])),
                ..KeyEdit::default()
            },
        )
        .await
        .unwrap();
    let s = seconds_until(
        &f,
        t,
        &f.req(),
        ttl,
        |r| matches!(r, Err(d) if d.reason == DenialReason::PermissionMissing),
    )
    .await;
    assert!(s <= ttl);
    let read = VerifyRequest::new(&f.live, f.perm("analytics:read"));

    // Suspend, then resume.
    other.suspend(&sys(), id).await.unwrap();
    seconds_until(
        &f,
        t,
        &read,
        ttl,
        |r| matches!(r, Err(d) if d.reason == DenialReason::Suspended),
    )
    .await;
    other.resume(&sys(), id).await.unwrap();
    seconds_until(&f, t, &read, ttl, |r| r.is_ok()).await;
    assert_eq!(
        f.hash_verifies(),
        1,
        "no change above touched the stored hash"
    );

    // Regenerate: the old secret stops working within the TTL, which costs
    // one argon2 run (the stored hash changed), and then none: it is
    // throttled like any wrong secret, its proof forgotten.
    let new = other.regenerate(&sys(), id).await.unwrap();
    seconds_until(
        &f,
        t,
        &read,
        ttl,
        |r| matches!(r, Err(d) if d.reason == DenialReason::WrongSecret),
    )
    .await;
    assert_eq!(f.hash_verifies(), 2);
    let t2 = new.token.expose_secret();
    assert!(f.manager.verify(t2, &read).await.is_ok());
    assert_eq!(f.hash_verifies(), 3);

    // Revoke.
    other.revoke(&sys(), id).await.unwrap();
    seconds_until(
        &f,
        t2,
        &read,
        ttl,
        |r| matches!(r, Err(d) if d.reason == DenialReason::Revoked),
    )
    .await;
    assert_eq!(f.hash_verifies(), 3, "a revoke keeps the stored hash");

    // Delete (a second key).
    let second = f.push_key().await;
    let t3 = second.token.expose_secret();
    assert!(f.manager.verify(t3, &f.req()).await.is_ok());
    other.delete(&sys(), &second.key.id).await.unwrap();
    seconds_until(
        &f,
        t3,
        &f.req(),
        ttl,
        |r| matches!(r, Err(d) if d.reason == DenialReason::UnknownKey),
    )
    .await;
}

#[tokio::test]
async fn a_check_that_waited_past_the_ttl_still_leaves_a_fresh_cache_entry() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let counters = Counters::default();
    let config = VerifierConfig {
        cache_ttl: Duration::from_millis(800),
        ..VerifierConfig::default()
    };
    let manager = KeyManager::builder(Arc::clone(&store), format(), policy())
        .hasher(CountingHasher::new(counters.clone()))
        .verifier_config(config)
        .build();
    let created = manager
        .create(
            &sys(),
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"])),
        )
        .await
        .unwrap();
    let live = Environment::new("live").unwrap();
    let push = registry().get("package:push").unwrap();
    let req = VerifyRequest::new(&live, push);
    let t = created.token.expose_secret();

    // The store answers after longer than the TTL.
    store.delay(Op::Get, Duration::from_millis(1000));
    assert!(manager.verify(t, &req).await.is_ok());
    store.heal();
    let reads = store.calls(Op::Get);
    assert!(manager.verify(t, &req).await.is_ok());
    assert_eq!(store.calls(Op::Get), reads, "the next check is a cache hit");
    assert_eq!(
        counters.verifies.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
