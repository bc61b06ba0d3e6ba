//! `KeyRecord` serializes whole (for stores over document databases and
//! Redis) and comes back equal; invalid values are refused on the way in.

use keyward::chrono::{DateTime, TimeDelta, Utc};
use keyward::key::{KeyKind, KeyRecord, SecretHash};
use keyward::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use keyward::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn full_record() -> KeyRecord {
    KeyRecord {
        id: KeyId::new("K7x2Lq9").unwrap(),
        owner: OwnerId::new("contoso").unwrap(),
        environment: Environment::new("live").unwrap(),
        name: "GitHub Actions \"Production\" ✓".into(),
        kind: KeyKind::Scoped,
        permissions: PermissionGrant::only(["package:push", "analytics:read"]),
        resources: ResourceScope::only(["Contoso.*", "Tools"]),
        ip_allowlist: IpAllowlist::parse(&["10.0.0.0/8", "2001:db8::/32"]).unwrap(),
        external_id: Some(ids::ExternalId::new("crm/Account 17").unwrap()),
        metadata: metadata::Metadata::parse(r#"{"ticket": 4211, "tags": ["ci", "prod"]}"#).unwrap(),
        usage: Default::default(),
        created_at: at("2026-01-01T00:00:00.123456Z"),
        expires_at: Some(at("2026-04-01T00:00:00Z")),
        revoked_at: Some(at("2026-03-01T00:00:00Z")),
        suspended_at: Some(at("2026-02-01T00:00:00Z")),
        last_used_at: Some(at("2026-02-15T12:34:56.789Z")),
        last_used_ip: Some("2001:db8::1".parse().unwrap()),
        reminded_at: Some(at("2026-03-20T00:00:00Z")),
        generation: 42,
        secret_hash: SecretHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
    }
}

#[test]
fn a_record_round_trips_through_json() {
    let empty = KeyRecord {
        kind: KeyKind::Legacy,
        permissions: PermissionGrant::All,
        resources: ResourceScope::All,
        ip_allowlist: IpAllowlist::default(),
        expires_at: None,
        revoked_at: None,
        suspended_at: None,
        last_used_at: None,
        last_used_ip: None,
        reminded_at: None,
        external_id: None,
        metadata: Default::default(),
        usage: Default::default(),
        ..full_record()
    };
    for record in [full_record(), empty] {
        let json = serde_json::to_string(&record).unwrap();
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record, "{json}");
        assert_eq!(back.secret_hash.as_str(), record.secret_hash.as_str());
        assert_eq!(
            back.created_at - record.created_at,
            TimeDelta::zero(),
            "microseconds kept"
        );
    }
}

#[test]
fn the_json_names_every_field_and_holds_the_hash_not_a_secret() {
    let value = serde_json::to_value(full_record()).unwrap();
    let object = value.as_object().unwrap();
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "created_at",
            "environment",
            "expires_at",
            "external_id",
            "generation",
            "id",
            "ip_allowlist",
            "kind",
            "last_used_at",
            "last_used_ip",
            "metadata",
            "name",
            "owner",
            "permissions",
            "reminded_at",
            "resources",
            "revoked_at",
            "secret_hash",
            "suspended_at",
            "usage",
        ]
    );
    assert_eq!(object["id"], "K7x2Lq9");
    assert_eq!(
        object["secret_hash"],
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
    );
}

#[test]
fn invalid_values_are_refused_when_read() {
    let good = serde_json::to_value(full_record()).unwrap();
    for (field, bad) in [
        ("id", serde_json::json!("no spaces allowed")),
        ("owner", serde_json::json!("")),
        ("environment", serde_json::json!("LIVE")),
        ("kind", serde_json::json!("admin")),
        ("created_at", serde_json::json!("yesterday")),
        ("last_used_ip", serde_json::json!("10.0.0.256")),
        ("generation", serde_json::json!(-1)),
        ("external_id", serde_json::json!("")),
        ("metadata", serde_json::json!([1, 2])),
        ("metadata", serde_json::json!({ "x": "a".repeat(5000) })),
    ] {
        let mut value = good.clone();
        value[field] = bad;
        assert!(
            serde_json::from_value::<KeyRecord>(value).is_err(),
            "{field} accepted"
        );
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("secret_hash");
    assert!(serde_json::from_value::<KeyRecord>(missing).is_err());
}

#[test]
fn records_written_before_external_ids_and_metadata_still_read() {
    let mut old = serde_json::to_value(full_record()).unwrap();
    let object = old.as_object_mut().unwrap();
    object.remove("external_id");
    object.remove("metadata");
    let back: KeyRecord = serde_json::from_value(old).unwrap();
    assert_eq!(back.external_id, None);
    assert!(back.metadata.is_empty());
    assert_eq!(back.name, full_record().name);
}
