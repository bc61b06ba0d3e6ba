//! The trust store check.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::fixtures::*;
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::policy::{PermissionGrant, ResourceScope};
use crate::store::StoreError;
use crate::store::TrustStore;
use crate::trust_policy::{GitHubClaims, TrustClaims, TrustPolicy};

const C: &str = "trust_store_conformance";

/// A window of its own in the distant past (years 1300 to 1800, random), so
/// the global `delete_expired_jtis` never reaches a real token's record.
fn jti_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1300, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        + TimeDelta::minutes(i64::from(rand::random::<u32>() % 260_000_000))
        + TimeDelta::microseconds(i64::from(rand::random::<u32>() % 1_000_000))
}

/// A policy of `owner` for GitHub-like issuer `issuer` and owner id `lookup`,
/// with every optional field set and awkward text.
fn policy(owner: &OwnerId, issuer: &str, lookup: &str) -> TrustPolicy {
    TrustPolicy {
        id: KeyId::generate(),
        owner: owner.clone(),
        environment: env("live"),
        name: "publish ✓ \"quoted\" 'x'".into(),
        issuer: issuer.into(),
        audience: "registry.example".into(),
        claims: TrustClaims::GitHub(
            GitHubClaims::new("Octo-Org", lookup, "widgets.rs", "release.yml")
                .environment("Release ✓")
                .git_ref("refs/tags/v1.0.0"),
        ),
        permissions: PermissionGrant::only(["package:push", "package:unlist"]),
        resources: ResourceScope::only(["widgets*", "gadget"]),
        created_at: t0(),
        created_by: "alice".into(),
    }
}

fn random_lookup() -> String {
    format!("{}", rand::random::<u64>())
}

/// Checks a [`TrustStore`]: policies round-trip and are found by id, owner
/// and (issuer, lookup); a duplicate id is refused; the per-owner cap holds
/// under concurrency and a refused insert writes nothing; delete removes
/// one policy; `claim_jti` is true once per live (issuer, jti), also under
/// 32 concurrent claims, and again once the record expired; and
/// `delete_expired_jtis` deletes exactly the expired records. Deletes the
/// policies it wrote before it returns.
pub async fn trust_store_conformance<S: TrustStore>(store: S) {
    let store = Arc::new(store);
    let issuer = format!("https://issuer.example/{}", KeyId::generate());
    let (oa, ob) = (owner(), owner());
    let lookup = random_lookup();

    // Round trip, unknown id, duplicate.
    let a1 = policy(&oa, &issuer, &lookup);
    store
        .insert_trust_policy(&a1, 5)
        .await
        .expect("insert a policy");
    let got = store.get_trust_policy(&a1.id).await.expect("get a policy");
    assert_eq!(
        got.as_ref(),
        Some(&a1),
        "{C}: every field must come back as written"
    );
    assert_eq!(
        store
            .get_trust_policy(&KeyId::generate())
            .await
            .expect("get unknown"),
        None,
        "{C}: an unknown id must be None"
    );
    let mut dup = policy(&ob, &issuer, &lookup);
    dup.id = a1.id.clone();
    assert_eq!(
        store.insert_trust_policy(&dup, 5).await,
        Err(StoreError::DuplicateId(a1.id.clone())),
        "{C}: a duplicate id must be refused"
    );
    assert_eq!(
        store.get_trust_policy(&a1.id).await.expect("get").as_ref(),
        Some(&a1),
        "{C}: a refused duplicate must leave the first policy untouched"
    );

    // Listing and finding.
    let a2 = policy(&oa, &issuer, &random_lookup());
    let b1 = policy(&ob, &issuer, &lookup);
    let other_issuer = policy(&ob, "https://elsewhere.example", &lookup);
    for p in [&a2, &b1, &other_issuer] {
        store.insert_trust_policy(p, 5).await.expect("insert");
    }
    let mut want: Vec<&KeyId> = vec![&a1.id, &a2.id];
    want.sort();
    let listed = store.list_trust_policies(&oa).await.expect("list");
    assert_eq!(
        listed.iter().map(|p| &p.id).collect::<Vec<_>>(),
        want,
        "{C}: list_trust_policies must return exactly the owner's policies, by id"
    );
    let mut want: Vec<&KeyId> = vec![&a1.id, &b1.id];
    want.sort();
    let found = store
        .find_trust_policies(&issuer, &lookup)
        .await
        .expect("find");
    assert_eq!(
        found.iter().map(|p| &p.id).collect::<Vec<_>>(),
        want,
        "{C}: find_trust_policies must return exactly the issuer's policies with that lookup, by id"
    );

    // The cap: refused at the cap, nothing written.
    assert_eq!(
        store
            .insert_trust_policy(&policy(&oa, &issuer, &lookup), 2)
            .await,
        Err(StoreError::QuotaExceeded { limit: 2 }),
        "{C}: an owner at the cap must be refused"
    );
    assert_eq!(
        store.list_trust_policies(&oa).await.expect("list").len(),
        2,
        "{C}: a refused insert must write nothing"
    );
    // Under concurrency: 16 inserts for a new owner, cap 3.
    let oc = owner();
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let p = policy(&oc, &issuer, &random_lookup());
        tasks.spawn(async move {
            barrier.wait().await;
            store.insert_trust_policy(&p, 3).await
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(()) => ok += 1,
            Err(StoreError::QuotaExceeded { limit: 3 }) => {}
            Err(e) => panic!("{C}: unexpected error under concurrency: {e}"),
        }
    }
    assert_eq!(
        ok, 3,
        "{C}: the per-owner cap must hold under concurrent inserts"
    );
    assert_eq!(store.list_trust_policies(&oc).await.expect("list").len(), 3);

    // Delete.
    store.delete_trust_policy(&a1.id).await.expect("delete");
    assert_eq!(store.get_trust_policy(&a1.id).await.expect("get"), None);
    assert_eq!(
        store.delete_trust_policy(&a1.id).await,
        Err(StoreError::NotFound(a1.id.clone())),
        "{C}: deleting a deleted policy must be NotFound"
    );
    assert_eq!(
        store.get_trust_policy(&a2.id).await.expect("get").as_ref(),
        Some(&a2),
        "{C}: delete must leave other policies untouched"
    );

    // Token ids.
    let w = jti_epoch();
    let at = move |s: i64| w + TimeDelta::seconds(s);
    let jti = KeyId::generate().to_string();
    assert!(
        store
            .claim_jti(&issuer, &jti, at(10), at(0))
            .await
            .expect("claim"),
        "{C}: the first claim of a jti must win"
    );
    assert!(
        !store
            .claim_jti(&issuer, &jti, at(20), at(5))
            .await
            .expect("claim"),
        "{C}: a live jti claimed again must be refused"
    );
    assert!(
        store
            .claim_jti("https://elsewhere.example", &jti, at(10), at(5))
            .await
            .expect("claim"),
        "{C}: the same jti of another issuer is another token"
    );
    assert!(
        store
            .claim_jti(&issuer, &jti, at(30), at(10))
            .await
            .expect("claim"),
        "{C}: a jti whose record expired may be claimed again"
    );
    assert!(
        !store
            .claim_jti(&issuer, &jti, at(40), at(29))
            .await
            .expect("claim"),
        "{C}: the renewed record must hold until its new expiry"
    );
    // Concurrent claims of one jti: exactly one wins.
    let racy = KeyId::generate().to_string();
    let barrier = Arc::new(Barrier::new(32));
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        let (issuer, racy) = (issuer.clone(), racy.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            store.claim_jti(&issuer, &racy, at(60), at(0)).await
        });
    }
    let mut winners = 0;
    while let Some(r) = tasks.join_next().await {
        if r.expect("task").expect("claim") {
            winners += 1;
        }
    }
    assert_eq!(
        winners, 1,
        "{C}: of concurrent claims of one jti exactly one must win"
    );
    // Purging: exactly the expired records go.
    let (short, long) = (KeyId::generate().to_string(), KeyId::generate().to_string());
    store
        .claim_jti(&issuer, &short, at(100), at(90))
        .await
        .expect("claim");
    store
        .claim_jti(&issuer, &long, at(200), at(90))
        .await
        .expect("claim");
    let purged = store.delete_expired_jtis(at(150)).await.expect("purge");
    assert!(
        purged >= 1,
        "{C}: delete_expired_jtis must count what it deleted"
    );
    assert!(
        store
            .claim_jti(&issuer, &short, at(300), at(95))
            .await
            .expect("claim"),
        "{C}: delete_expired_jtis must delete a record expired at `now`"
    );
    assert!(
        !store
            .claim_jti(&issuer, &long, at(300), at(95))
            .await
            .expect("claim"),
        "{C}: delete_expired_jtis must keep a record expiring after `now`"
    );
    store.delete_expired_jtis(at(10_000)).await.expect("purge");

    // Clean up.
    for o in [&oa, &ob, &oc] {
        for p in store.list_trust_policies(o).await.expect("list") {
            store.delete_trust_policy(&p.id).await.expect("delete");
        }
    }
}
