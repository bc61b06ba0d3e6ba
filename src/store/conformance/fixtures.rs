//! Shared fixtures of the conformance checks: fixed times, random owners,
//! records, and `must_*` helpers whose panics name the check.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use crate::ids::OwnerId;
use crate::ids::{Environment, ExternalId, KeyId};
use crate::key::{KeyKind, KeyRecord, SecretHash};
use crate::metadata::Metadata;
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::store::StoreError;
use crate::store::{KeyStore, ListQuery, QuotaCheck};

/// A fixed instant with whole microseconds, far from any real clock, so that
/// a store judging status by its own clock instead of `now` is caught.
pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2031, 5, 17, 9, 30, 0)
        .single()
        .map(|t| t + TimeDelta::microseconds(123_456))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(super) fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

pub(super) fn owner() -> OwnerId {
    OwnerId::new(&format!("{}{}", super::OWNER_PREFIX, KeyId::generate())).expect("valid owner id")
}

pub(super) fn env(tag: &str) -> Environment {
    Environment::new(tag).expect("valid environment")
}

pub(super) fn phc(id: &KeyId) -> SecretHash {
    // Looks like an argon2id PHC string; stores must never interpret it.
    SecretHash::new(format!(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0{}$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        id.as_str()
    ))
}

/// A minimal active record of `owner` in `environment`.
pub(super) fn record(owner: &OwnerId, environment: &str) -> KeyRecord {
    let id = KeyId::generate();
    KeyRecord {
        secret_hash: phc(&id),
        id,
        owner: owner.clone(),
        environment: env(environment),
        name: "conformance key".into(),
        kind: KeyKind::Scoped,
        permissions: PermissionGrant::All,
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::any(),
        external_id: None,
        metadata: Default::default(),
        usage: Default::default(),
        created_at: t0(),
        expires_at: None,
        revoked_at: None,
        suspended_at: None,
        last_used_at: None,
        last_used_ip: None,
        reminded_at: None,
        generation: 1,
    }
}

/// A record with every optional field set and awkward values in the text ones.
pub(super) fn full_record(owner: &OwnerId) -> KeyRecord {
    let mut r = record(owner, "live");
    r.name = "Déploiement \"prod\" 🚀 'quotes' \\ back".into();
    r.permissions = PermissionGrant::only(["package:push", "package:push-new", "analytics:read"]);
    r.resources =
        ResourceScope::only(["AzureRM.DataFactory*", "AzureRM.Profile", "Contoso.?.Tools"]);
    r.ip_allowlist =
        IpAllowlist::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).expect("valid CIDRs");
    r.created_at = t0() - secs(86_400);
    r.expires_at = Some(t0() + secs(90 * 86_400) + TimeDelta::microseconds(1));
    r.kind = KeyKind::Legacy;
    r.suspended_at = Some(t0() - secs(3_600) + TimeDelta::microseconds(17));
    r.last_used_at = Some(t0() - TimeDelta::microseconds(999_999));
    r.last_used_ip = Some(ip("2001:db8:85a3::8a2e:370:7334"));
    r.reminded_at = Some(t0() - secs(60) + TimeDelta::microseconds(3));
    r.generation = (1 << 40) + 7;
    r.external_id = Some(ExternalId::new("Ext 'ïd' \"%_\" 🚀").expect("valid external id"));
    r.metadata = Metadata::parse(
        r#"{"pipeline": "release", "n": 4211, "f": 1.5, "ok": true, "none": null,
            "nested": {"list": [1, "two", {"three": []}]}, "ünï": "\"quotes\" \\ back"}"#,
    )
    .expect("valid metadata");
    r
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid IP address")
}

/// A window start of its own for checks of global queries (reminders, audit
/// time ranges): years after `t0`, at a random minute with odd microseconds,
/// so checks sharing a store (or a database reused across runs) never see
/// each other's records in their window.
pub(super) fn own_epoch() -> DateTime<Utc> {
    // Spread over about 1,900 years, so that two checks' 30-day windows in
    // one shared store practically never overlap (with a two-year spread
    // they could, about one run in twelve).
    t0() + TimeDelta::days(3_650)
        + TimeDelta::minutes(i64::from(rand::random::<u32>() % 1_000_000_000))
        + TimeDelta::microseconds(i64::from(rand::random::<u32>() % 1_000_000))
}

pub(super) fn query(owner: &OwnerId) -> ListQuery {
    let mut q = ListQuery::new(owner.clone()).limit(crate::store::MAX_PAGE_SIZE);
    q.now = t0();
    q
}

pub(super) fn quota(max_live: u32) -> Option<QuotaCheck> {
    Some(QuotaCheck::new(max_live, t0()))
}

pub(super) async fn must_get<S: KeyStore>(store: &S, id: &KeyId, check: &str) -> KeyRecord {
    match store.get(id).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{check}: get({id}) returned None for a stored record"),
        Err(e) => panic!("{check}: get({id}) failed: {e}"),
    }
}

pub(super) async fn must_insert<S: KeyStore>(
    store: &S,
    r: &KeyRecord,
    q: Option<QuotaCheck>,
    check: &str,
) {
    if let Err(e) = store.insert(r, q).await {
        panic!("{check}: insert of {} failed: {e}", r.id);
    }
}

pub(super) async fn must_list<S: KeyStore>(
    store: &S,
    q: &ListQuery,
    check: &str,
) -> Vec<KeyRecord> {
    match store.list(q).await {
        Ok(v) => v,
        Err(e) => panic!("{check}: list failed: {e}"),
    }
}

pub(super) fn ids(records: &[KeyRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// Deletes every key of `owners` (a check's own random owners), so that a
/// passing check leaves no key behind. Their ids stay remembered by the
/// store, as [`KeyStore::delete`] requires.
pub(super) async fn delete_keys_of<S: KeyStore>(store: &S, owners: &[&OwnerId], check: &str) {
    for owner in owners {
        let mut keys = Vec::new();
        let mut page = query(owner);
        loop {
            let got = must_list(store, &page, check).await;
            let Some(last) = got.last() else { break };
            page = page.after(last.id.clone());
            keys.extend(got.into_iter().map(|r| r.id));
        }
        for id in &keys {
            match store.delete(id).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => panic!("{check}: cleanup: delete({id}) failed: {e}"),
            }
        }
        assert!(
            must_list(store, &query(owner), check).await.is_empty(),
            "{check}: cleanup: keys of {owner} left after deleting them"
        );
    }
}
