//! A table of GCRA cases for the SQL stores: each store's one-statement
//! `lease_rate` must give exactly what `usage::gcra_take` gives, from any
//! stored bucket state, including the edges (a bucket far in the past or
//! future, a saturated return, the longest window, negative and far
//! times).
#![allow(dead_code)]

use std::future::Future;

use chrono::{TimeZone, Utc};
use keyward::usage::{LimitName, RateLease, RateLimit, gcra_take};
use keyward::{
    KeyId, KeyStore, OwnerId, key::KeyKind, key::KeyRecord, key::SecretHash, policy::IpAllowlist,
    policy::PermissionGrant, policy::ResourceScope,
};

/// `(stored tat, now, want, interval, burst)`.
pub type Case = (Option<i64>, i64, u32, u64, u64);

pub fn cases() -> Vec<Case> {
    let now = 1_800_000_000_000_000_i64;
    let max = RateLimit::MAX_WINDOW.as_micros() as u64;
    let s = 1_000_000_u64;
    let mut v: Vec<Case> = vec![
        (None, now, 1, 100_000, s),
        (None, now, 100, 100_000, s),
        (None, now, 0, 100_000, s),
        (None, now, u32::MAX, 1, max),
        (None, -now, 3, 7, 70),
        (Some(now), now, 5, 100_000, s),
        (Some(now + 900_000), now, 5, 100_000, s),
        (Some(now + 1_000_000), now, 1, 100_000, s),
        (Some(now + 999_999), now, 1, 100_000, s),
        (Some(now + 5_000_000), now, 1, 100_000, s),
        (Some(now - 5_000_000), now, 20, 100_000, s),
        (Some(now - 1), now, 10, 100_000, s),
        (Some(i64::MIN), now, 4, 100_000, s),
        (Some(i64::MAX), now, 4, 100_000, s),
        (Some(now), now, 2, 0, 10),
        (Some(now), now, 2, max, max),
        (Some(now + 1), now, 1, max, max),
        (Some(now - 1), now, u32::MAX, 1, max),
        (Some(1 << 61), 1 << 61, 3, 3, 10),
        (Some(-(1 << 61)), -(1 << 61), 3, 3, 10),
        // The far ends of the clock's domain at once: the lease statement's
        // `tat - now` is 2^62 and a burst (at ±2^62, PostgreSQL failed
        // with "bigint out of range": an outside review, 2026-12-03).
        (Some((1 << 61) + 10), -(1 << 61), 1, 3, 10),
        (Some(now), now, 3, 10, 5),
    ];
    // A deterministic spread of ordinary cases.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let interval = 1 + x % 500_000;
        let limit = 1 + (x >> 20) % 50;
        let offset = ((x >> 8) % 4_000_000) as i64 - 1_000_000;
        let tat = (x % 3 != 0).then_some(now + offset);
        v.push((
            tat,
            now,
            ((x >> 40) % 20) as u32,
            interval,
            interval * limit,
        ));
    }
    v
}

fn record(owner: &OwnerId) -> KeyRecord {
    let id = KeyId::generate();
    KeyRecord {
        secret_hash: SecretHash::new(format!("$argon2id$v=19$m=8,t=1,p=1$c2FsdA${id}")),
        id,
        owner: owner.clone(),
        environment: keyward::Environment::new("live").expect("env"),
        name: "gcra".into(),
        kind: KeyKind::Scoped,
        permissions: PermissionGrant::All,
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::any(),
        external_id: None,
        metadata: Default::default(),
        usage: Default::default(),
        created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        expires_at: None,
        revoked_at: None,
        suspended_at: None,
        last_used_at: None,
        last_used_ip: None,
        reminded_at: None,
        generation: 1,
    }
}

/// Runs every case on a key of its own: `put_tat(key id, limit name, tat)`
/// writes the stored state behind the store's back, then `lease_rate` must
/// match `gcra_take` in grant and new state.
pub async fn check<S, F, Fut>(store: &S, put_tat: F)
where
    S: KeyStore,
    F: Fn(String, String, i64) -> Fut,
    Fut: Future<Output = ()>,
{
    let owner = OwnerId::new("gcra-cases").expect("owner");
    let name = LimitName::new("requests").expect("name");
    for (i, (tat, now, want, interval, burst)) in cases().into_iter().enumerate() {
        let r = record(&owner);
        store.insert(&r, None).await.expect("insert");
        if let Some(t) = tat {
            put_tat(r.id.to_string(), name.to_string(), t).await;
        }
        let lease = RateLease {
            name: name.clone(),
            want,
            now_us: now,
            interval_us: interval,
            burst_us: burst,
        };
        let got = store
            .lease_rate(&r.id, &lease)
            .await
            .unwrap_or_else(|e| panic!("case {i}: lease_rate failed: {e}"));
        let (granted, new_tat) = gcra_take(tat, now, want, interval, burst);
        assert_eq!(
            (got.granted, got.tat_us),
            (granted, new_tat),
            "case {i} {:?}: the store must compute exactly gcra_take",
            (tat, now, want, interval, burst)
        );
    }
}
