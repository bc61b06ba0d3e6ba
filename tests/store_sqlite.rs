//! The SQLite store: the conformance suite (in memory and on a WAL file),
//! migrations, table names, corrupt rows and failure behaviour.
#![cfg(all(feature = "sqlite", feature = "testing"))]

mod gcra_cases;

use std::path::PathBuf;

use keyward::*;
use keyward::{
    audit::AuditAction, audit::AuditEvent, audit::AuditQuery, hash::Argon2Hasher, key::KeyKind,
    policy::PermissionGrant, store::AuditSink, store::ListQuery, store::StoreError,
    verify::DenialKind,
};

async fn memory_store() -> SqliteStore {
    let store = SqliteStore::in_memory()
        .await
        .expect("open in-memory SQLite");
    store.migrate().await.expect("migrate");
    store
}

// One test per contract item, each on a fresh in-memory database.
keyward::store_conformance_tests!(memory_store());

/// A temporary database file, removed (with its WAL files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        let name = format!("keyward-test-{}.db", KeyId::generate());
        Self(std::env::temp_dir().join(name))
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn admin() -> Actor {
    Actor::administrator("store-tests", OwnerId::new("contoso").expect("owner"))
}

fn new_key(name: &str) -> NewKey {
    NewKey::new("contoso", "live", name).permissions(PermissionGrant::only(["package:push"]))
}

fn manager<S: KeyStore>(store: S) -> KeyManager<S> {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()
        .expect("registry");
    let policy = Policy::new(registry).with_quota(5).expect("quota");
    let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
    KeyManager::builder(store, format, policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap()
}

/// The whole suite on a file in WAL mode with a pool of several connections,
/// so the concurrent-quota check races real connections; one shared store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_a_wal_file() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.expect("open");
    store.migrate().await.expect("migrate");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
    keyward::store::conformance::run_all(|| {
        let store = store.clone();
        async move { store }
    })
    .await;
    keyward::store::conformance::audit_sink_conformance(store.clone()).await;
    keyward::store::conformance::session_store_conformance(store.clone()).await;
    keyward::store::conformance::usage_conformance(store.clone()).await;
    // A passing suite leaves no key, no session and no rate-limit state
    // behind (the audit trail, which has no delete, keeps events of
    // `conformance-` owners).
    for table in [
        "keyward_keys",
        "keyward_keys_sessions",
        "keyward_keys_rates",
    ] {
        let left: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(store.pool())
            .await
            .expect("count");
        assert_eq!(left, 0, "rows left in {table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sink_conformance_in_memory() {
    keyward::store::conformance::audit_sink_conformance(memory_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_conformance_in_memory() {
    keyward::store::conformance::usage_conformance(memory_store().await).await;
}

/// The one-statement rate lease computes exactly `usage::gcra_take`, from
/// any stored state.
#[tokio::test]
async fn rate_leases_compute_exactly_gcra_take() {
    let store = memory_store().await;
    let pool = store.pool().clone();
    gcra_cases::check(&store, |id, name, tat| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO keyward_keys_rates (key_id, name, tat) VALUES (?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(tat)
                .execute(&pool)
                .await
                .expect("write a bucket state");
        }
    })
    .await;
}

/// Usage columns written behind the store's back that do not decode are
/// `StoreError::Corrupt` naming the column; an upgraded row without them
/// reads as a key without usage controls.
#[tokio::test]
async fn corrupt_usage_columns_are_errors() {
    let store = memory_store().await;
    let created = manager(store.clone())
        .create(&admin(), new_key("metered"))
        .await
        .expect("create");
    let id = created.key.id.clone();
    assert!(
        store
            .get(&id)
            .await
            .expect("get")
            .expect("row")
            .usage
            .is_empty()
    );
    for (column, value) in [
        (
            "rate_limits",
            "'[{\"name\":\"r\",\"limit\":0,\"window_us\":1}]'",
        ),
        ("credits_remaining", "-1"),
        ("credits_remaining", "9007199254740992"),
        (
            "credits_refill",
            "'{\"amount\":5,\"every\":\"month\",\"day\":31}'",
        ),
        ("credits_refilled_for", "9223372036854775807"),
    ] {
        let with_credits = if column.starts_with("credits_") && column != "credits_remaining" {
            ", credits_remaining = 5"
        } else {
            ""
        };
        sqlx::query(&format!(
            "UPDATE keyward_keys SET {column} = {value}{with_credits} WHERE id = ?"
        ))
        .bind(id.as_str())
        .execute(store.pool())
        .await
        .expect("break the row");
        match store.get(&id).await {
            Err(StoreError::Corrupt { field, .. }) => assert_eq!(field, column, "{value}"),
            other => panic!("{column} = {value}: expected Corrupt, got {other:?}"),
        }
        sqlx::query(
            "UPDATE keyward_keys SET rate_limits = NULL, credits_remaining = NULL, \
             credits_refill = NULL, credits_refilled_for = NULL WHERE id = ?",
        )
        .bind(id.as_str())
        .execute(store.pool())
        .await
        .expect("repair the row");
    }
}

#[tokio::test]
async fn session_store_conformance_in_memory() {
    keyward::store::conformance::session_store_conformance(memory_store().await).await;
}

#[tokio::test]
async fn url_form_and_custom_table_and_persistence() {
    let db = TempDb::new();
    let url = format!("sqlite://{}", db.path());
    let store = SqliteStore::connect(&url)
        .await
        .expect("open")
        .with_table("registry_api_keys")
        .expect("valid name");
    assert_eq!(store.table(), "registry_api_keys");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate twice");
    let created = manager(store.clone())
        .create(&admin(), new_key("CI"))
        .await
        .expect("create");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(store.pool())
            .await
            .expect("tables");
    assert_eq!(
        tables,
        [
            "registry_api_keys",
            "registry_api_keys_audit",
            "registry_api_keys_ids",
            "registry_api_keys_jtis",
            "registry_api_keys_migrations",
            "registry_api_keys_rates",
            "registry_api_keys_sessions",
            "registry_api_keys_trust",
            "sqlite_sequence"
        ]
    );
    store.pool().close().await;

    // Reopen: the key is still there, and migrating again changes nothing.
    let reopened = SqliteStore::connect(db.path())
        .await
        .expect("reopen")
        .with_table("registry_api_keys")
        .expect("valid name");
    reopened.migrate().await.expect("migrate on reopen");
    let record = reopened
        .get(&created.key.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (&record.owner, &record.name),
        (&created.key.owner, &created.key.name)
    );
    // Times are kept to the microsecond.
    assert_eq!(
        record.created_at.timestamp_micros(),
        created.key.created_at.timestamp_micros()
    );
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM registry_api_keys_migrations")
        .fetch_all(reopened.pool())
        .await
        .expect("versions");
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn invalid_table_names_are_refused() {
    let store = SqliteStore::in_memory().await.expect("open");
    for bad in [
        "",
        "Keys",
        "1keys",
        "api-keys",
        "keys\"; DROP TABLE x; --",
        "clés",
        &"k".repeat(64),
    ] {
        let err = store.clone().with_table(bad).expect_err(bad);
        assert_eq!(err.kind, "table");
    }
    assert!(store.with_table(&"k".repeat(63)).is_ok());
}

/// Rows written behind the store's back that do not decode are
/// `StoreError::Corrupt` naming the field, from `get` and from `list`.
/// A stored hash that is not a usable PHC string (or a broken imported
/// SHA-256) denies the check as a corrupt record: never a pass, never a panic.
#[tokio::test]
async fn an_unusable_stored_hash_denies() {
    let store = memory_store().await;
    let m = manager(store.clone());
    let key = m.create(&admin(), new_key("ci")).await.expect("create");
    let push = m.policy().permissions().get("package:push").expect("perm");
    let env = Environment::new("live").expect("env");
    let req = VerifyRequest::new(&env, push);
    for bad in [
        "",
        "not-a-phc",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!$!!!",
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$sha256$zz",
    ] {
        sqlx::query("UPDATE keyward_keys SET secret_hash = ? WHERE id = ?")
            .bind(bad)
            .bind(key.key.id.as_str())
            .execute(store.pool())
            .await
            .expect("break the hash");
        m.verifier().invalidate_all();
        let denial = m
            .verify(key.token.expose_secret(), &req)
            .await
            .expect_err("an unusable hash must deny");
        assert_eq!(denial.reason, DenialReason::CorruptRecord, "{bad:?}");
        assert_eq!(denial.kind(), DenialKind::Unavailable, "{bad:?}");
    }
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let store = memory_store().await;
    let good = manager(store.clone())
        .create(&admin(), new_key("good").ip_allowlist(["10.0.0.0/8"]))
        .await
        .expect("create")
        .key;
    let cases: &[(&str, &str, &str)] = &[
        ("badjson00001", "permissions", "{not json"),
        ("badcidr00001", "ip_allowlist", "[\"10.0.0.0/33\"]"),
        ("badscope0001", "resources", "{\"only\": 5}"),
        ("badenv000001", "environment", "LIVE!"),
        ("badowner0001", "owner", ""),
        ("badkind00001", "kind", "superuser"),
        ("badip0000001", "last_used_ip", "10.0.0.256"),
    ];
    for (id, column, value) in cases {
        // Copy the good row under a new id, then break one column.
        sqlx::query(
            "INSERT INTO keyward_keys (id, owner, environment, name, permissions, resources, ip_allowlist, \
             created_at, expires_at, revoked_at, last_used_at, generation, secret_hash) \
             SELECT ?, 'corrupt-owner', environment, name, permissions, resources, ip_allowlist, created_at, \
             expires_at, revoked_at, last_used_at, generation, secret_hash FROM keyward_keys WHERE id = ?",
        )
        .bind(id)
        .bind(good.id.as_str())
        .execute(store.pool())
        .await
        .expect("copy row");
        sqlx::query(&format!(
            "UPDATE keyward_keys SET {column} = ? WHERE id = ?"
        ))
        .bind(value)
        .bind(id)
        .execute(store.pool())
        .await
        .expect("break row");
        let err = store
            .get(&KeyId::new(id).expect("id"))
            .await
            .expect_err("corrupt row must fail");
        match err {
            StoreError::Corrupt {
                id: got,
                field,
                reason,
            } => {
                assert_eq!(got, *id);
                assert_eq!(field, *column, "{reason}");
                assert!(!reason.contains("argon2"), "the hash must never be quoted");
            }
            other => panic!("expected Corrupt for {column}, got {other:?}"),
        }
        sqlx::query("DELETE FROM keyward_keys WHERE id = ?")
            .bind(id)
            .execute(store.pool())
            .await
            .expect("clean");
    }

    // A bad id, a negative generation and an out-of-range time, seen through a listing.
    for (column, value) in [
        ("id", "not an id!"),
        ("generation", "-1"),
        ("created_at", "9223372036854775807"),
    ] {
        sqlx::query(
            "INSERT INTO keyward_keys (id, owner, environment, name, permissions, resources, ip_allowlist, \
             created_at, expires_at, revoked_at, last_used_at, generation, secret_hash) \
             SELECT 'fine00000001', 'corrupt-owner', environment, name, permissions, resources, ip_allowlist, \
             created_at, expires_at, revoked_at, last_used_at, generation, secret_hash FROM keyward_keys WHERE id = ?"
        )
        .bind(good.id.as_str())
        .execute(store.pool())
        .await
        .expect("copy row");
        let value_sql = if column == "id" {
            format!("'{value}'")
        } else {
            value.to_owned()
        };
        sqlx::query(&format!(
            "UPDATE keyward_keys SET {column} = {value_sql} WHERE id = 'fine00000001'"
        ))
        .execute(store.pool())
        .await
        .expect("break row");
        let err = store
            .list(&ListQuery::new(
                OwnerId::new("corrupt-owner").expect("owner"),
            ))
            .await
            .expect_err("corrupt row must fail the listing");
        assert!(
            matches!(err, StoreError::Corrupt { field, .. } if field == column),
            "{column}: {err:?}"
        );
        sqlx::query("DELETE FROM keyward_keys WHERE owner = 'corrupt-owner'")
            .execute(store.pool())
            .await
            .expect("clean");
    }

    // A corrupt record denies verification as unavailable (not a pass, not a panic).
    let m = manager(store.clone());
    let created = m.create(&admin(), new_key("victim")).await.expect("create");
    sqlx::query("UPDATE keyward_keys SET ip_allowlist = '[\"bad\"]' WHERE id = ?")
        .bind(created.key.id.as_str())
        .execute(store.pool())
        .await
        .expect("break row");
    let live = Environment::new("live").expect("env");
    let push = m.policy().permissions().get("package:push").expect("perm");
    let denial = m
        .verify(
            created.token.expose_secret(),
            &VerifyRequest::new(&live, push),
        )
        .await
        .expect_err("corrupt record must deny");
    assert_eq!(denial.reason, DenialReason::StoreUnavailable);
}

/// A closed pool and a failing query are `StoreError::Backend`; the manager
/// returns the error, verification denies, and nothing is half-written.
#[tokio::test]
async fn backend_failures_deny_and_write_nothing() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.expect("open");
    store.migrate().await.expect("migrate");
    let m = manager(store.clone());
    let created = m.create(&admin(), new_key("CI")).await.expect("create");
    let id = created.key.id.clone();
    let live = Environment::new("live").expect("env");
    let push = m.policy().permissions().get("package:push").expect("perm");
    let req = VerifyRequest::new(&live, push);

    // A failing query: the table is gone from under the store.
    sqlx::query("ALTER TABLE keyward_keys RENAME TO moved_away")
        .execute(store.pool())
        .await
        .expect("rename");
    assert!(matches!(store.get(&id).await, Err(StoreError::Backend(_))));
    let denial = m
        .verify(created.token.expose_secret(), &req)
        .await
        .expect_err("deny");
    assert_eq!(denial.reason, DenialReason::StoreUnavailable);
    assert_eq!(denial.kind(), DenialKind::Unavailable);
    sqlx::query("ALTER TABLE moved_away RENAME TO keyward_keys")
        .execute(store.pool())
        .await
        .expect("rename back");

    // A closed pool: every operation is a Backend error.
    store.pool().close().await;
    assert!(matches!(store.get(&id).await, Err(StoreError::Backend(_))));
    assert!(matches!(
        store
            .list(&ListQuery::new(OwnerId::new("contoso").expect("owner")))
            .await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.delete(&id).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        m.create(&admin(), new_key("second")).await,
        Err(KeywardError::Store(StoreError::Backend(_)))
    ));
    assert!(matches!(
        m.revoke(&admin(), &id).await,
        Err(KeywardError::Store(StoreError::Backend(_)))
    ));
    assert!(matches!(
        m.delete(&admin(), &id).await,
        Err(KeywardError::Store(StoreError::Backend(_)))
    ));
    let denial = m
        .verify(created.token.expose_secret(), &req)
        .await
        .expect_err("deny");
    assert_eq!(denial.reason, DenialReason::StoreUnavailable);

    // Read back through a new pool: exactly the first key, unchanged.
    let reopened = SqliteStore::connect(db.path()).await.expect("reopen");
    let all = reopened
        .list(&ListQuery::new(OwnerId::new("contoso").expect("owner")))
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].revoked_at, None);
    assert_eq!(all[0].generation, 1);
    assert!(
        manager(reopened)
            .verify(created.token.expose_secret(), &req)
            .await
            .is_ok()
    );
}

/// Audit rows written behind the store's back that do not decode are
/// `StoreError::Corrupt` naming the field, never a panic.
#[tokio::test]
async fn corrupt_audit_rows_are_errors() {
    let store = memory_store().await;
    let key = KeyId::generate();
    let event = AuditEvent {
        key_id: Some(key.clone()),
        client_ip: Some("2001:db8::1".parse().expect("ip")),
        // Stores keep microseconds.
        ..AuditEvent::new(
            chrono::DateTime::from_timestamp_micros(1_800_000_000_123_456).expect("time"),
            AuditAction::Revoked,
        )
    };
    store
        .record(std::slice::from_ref(&event))
        .await
        .expect("record");
    assert_eq!(
        store
            .query(&AuditQuery::key(key.clone()))
            .await
            .expect("query"),
        [event]
    );
    for (column, value) in [
        ("action", "'exploded'"),
        ("client_ip", "'not-an-ip'"),
        ("count", "-3"),
        ("at", "9223372036854775807"),
        ("owner", "''"),
    ] {
        let mut tx = store.pool().begin().await.expect("begin");
        sqlx::query(&format!(
            "UPDATE keyward_keys_audit SET {column} = {value} WHERE key_id = ?"
        ))
        .bind(key.as_str())
        .execute(&mut *tx)
        .await
        .expect("break row");
        tx.commit().await.expect("commit");
        match store.query(&AuditQuery::key(key.clone())).await {
            Err(StoreError::Corrupt { field, id, .. }) => {
                assert_eq!(field, column);
                assert!(id.starts_with("audit#"), "{id}");
            }
            other => panic!("{column}: expected Corrupt, got {other:?}"),
        }
        sqlx::query(
            "UPDATE keyward_keys_audit SET action = 'revoked', client_ip = NULL, count = 1, \
             at = 1800000000000000, owner = NULL WHERE key_id = ?",
        )
        .bind(key.as_str())
        .execute(store.pool())
        .await
        .expect("repair");
        assert_eq!(
            store
                .query(&AuditQuery::key(key.clone()))
                .await
                .expect("repaired")
                .len(),
            1
        );
    }
}

/// A database created by the first schema version (before kinds,
/// suspension, reminders and the id table) is upgraded in place: its rows
/// read back as scoped keys, and their ids can never be reused once deleted.
#[tokio::test]
async fn migration_upgrades_a_version_1_database() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.expect("open");
    for statement in [
        "CREATE TABLE keyward_keys_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)",
        "INSERT INTO keyward_keys_migrations VALUES (1, 0)",
        "CREATE TABLE keyward_keys (id TEXT NOT NULL PRIMARY KEY, owner TEXT NOT NULL, \
         environment TEXT NOT NULL, name TEXT NOT NULL, permissions TEXT NOT NULL, \
         resources TEXT NOT NULL, ip_allowlist TEXT NOT NULL, created_at INTEGER NOT NULL, \
         expires_at INTEGER, revoked_at INTEGER, last_used_at INTEGER, \
         generation INTEGER NOT NULL, secret_hash TEXT NOT NULL)",
        "CREATE INDEX keyward_keys_owner_id ON keyward_keys (owner, id)",
        "CREATE INDEX keyward_keys_owner_env ON keyward_keys (owner, environment)",
        "INSERT INTO keyward_keys VALUES ('oldkey000001', 'contoso', 'live', 'from v1', '\"all\"', \
         '\"all\"', '[]', 1800000000000000, 1900000000000000, NULL, 1800000001000000, 3, \
         '$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA')",
    ] {
        sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect("build a version 1 database");
    }
    store.migrate().await.expect("upgrade");
    store.migrate().await.expect("upgrade twice");
    let id = KeyId::new("oldkey000001").expect("id");
    let old = store.get(&id).await.expect("get").expect("kept");
    assert_eq!(old.kind, KeyKind::Scoped);
    assert_eq!(
        (old.suspended_at, old.last_used_ip, old.reminded_at),
        (None, None, None)
    );
    assert_eq!((old.name.as_str(), old.generation), ("from v1", 3));
    assert_eq!(old.external_id, None, "no external id before version 4");
    assert!(old.metadata.is_empty(), "no metadata before version 4");
    assert_eq!(
        old.last_used_at.map(|t| t.timestamp_micros()),
        Some(1_800_000_001_000_000)
    );
    store.delete(&id).await.expect("delete");
    assert_eq!(
        store.insert(&old, None).await,
        Err(StoreError::DuplicateId(id.clone())),
        "ids of rows from before the upgrade are remembered too"
    );
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM keyward_keys_migrations ORDER BY 1")
            .fetch_all(store.pool())
            .await
            .expect("versions");
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

/// Migrating from several connections at once applies each step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_step_once() {
    let db = TempDb::new();
    let a = SqliteStore::connect(db.path()).await.expect("a");
    let b = SqliteStore::connect(db.path()).await.expect("b");
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.expect("migrate a");
    rb.expect("migrate b");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM keyward_keys_migrations ORDER BY 1")
            .fetch_all(a.pool())
            .await
            .expect("versions");
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

/// A manager writing its audit trail into the same SQLite database.
#[tokio::test]
async fn the_store_is_the_managers_audit_sink() {
    let store = memory_store().await;
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()
        .expect("registry");
    let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
    let m = KeyManager::builder(store.clone(), format, Policy::new(registry))
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .audit(store.clone())
        .build()
        .unwrap();
    let created = m
        .create(&admin(), new_key("audited"))
        .await
        .expect("create");
    m.revoke(&admin(), &created.key.id).await.expect("revoke");
    m.flush().await.expect("flush");
    let actions: Vec<AuditAction> = store
        .query(&AuditQuery::key(created.key.id.clone()))
        .await
        .expect("query")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, [AuditAction::Created, AuditAction::Revoked]);
}

/// Trust policies and used token ids on a WAL file with several
/// connections, so concurrent jti claims race real connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trust_store_conformance_on_a_wal_file() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.expect("open");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate twice");
    keyward::store::conformance::trust_store_conformance(store.clone()).await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keyward_keys_trust")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(left, 0, "trust policies left behind");
}

async fn rate_key(store: &SqliteStore) -> KeyId {
    use keyward::usage::{RateLimit, RateLimits};
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()
        .expect("registry");
    let policy = Policy::new(registry)
        .with_rate_limits(["requests"])
        .expect("limits");
    let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
    let m = KeyManager::builder(store.clone(), format, policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
    let limit = RateLimit::new("requests", 100, std::time::Duration::from_secs(10)).unwrap();
    m.create(
        &admin(),
        new_key("rated").rate_limits(RateLimits::new([limit]).unwrap()),
    )
    .await
    .expect("create")
    .key
    .id
    .clone()
}

fn rate_lease(want: u32, now_us: i64) -> keyward::usage::RateLease {
    keyward::usage::RateLease {
        name: keyward::usage::LimitName::new("requests").unwrap(),
        want,
        now_us,
        interval_us: 100_000,
        burst_us: 10_000_000,
    }
}

/// Migration 6 on a database whose rates table already has rows: leases
/// are numbered and give-backs judged by their numbers afterwards.
#[tokio::test]
async fn migration_6_numbers_the_leases_of_existing_rows() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.expect("open");
    store.migrate().await.expect("migrate");
    let id = rate_key(&store).await;
    let t = 1_800_000_000_000_000i64;
    for s in [
        "ALTER TABLE keyward_keys_rates DROP COLUMN lease".to_owned(),
        "ALTER TABLE keyward_keys_rates DROP COLUMN restart_lease".to_owned(),
        "ALTER TABLE keyward_keys_rates DROP COLUMN slack".to_owned(),
        "ALTER TABLE keyward_keys_rates DROP COLUMN added".to_owned(),
        "DELETE FROM keyward_keys_migrations WHERE version >= 6".to_owned(),
        format!(
            "INSERT INTO keyward_keys_rates (key_id, name, tat, last_grant) VALUES ('{}', 'requests', {}, 3)",
            id.as_str(),
            t
        ),
    ] {
        sqlx::query(&s).execute(store.pool()).await.expect(&s);
    }
    store.migrate().await.expect("upgrade");
    let name = keyward::usage::LimitName::new("requests").unwrap();
    // TAT ahead: no restart.
    let g = store.lease_rate(&id, &rate_lease(1, t - 1)).await.unwrap();
    assert_eq!((g.granted, g.lease, g.tat_us), (1, 1, t + 100_000));
    // TAT behind: a restart.
    let g2 = store
        .lease_rate(&id, &rate_lease(1, t + 1_000_000))
        .await
        .unwrap();
    assert_eq!((g2.granted, g2.lease, g2.tat_us), (1, 2, t + 1_100_000));
    store
        .return_rate(&id, &name, 1, 100_000, g.lease)
        .await
        .unwrap();
    let g3 = store
        .lease_rate(&id, &rate_lease(0, t + 1_000_000))
        .await
        .unwrap();
    assert_eq!((g3.tat_us, g3.lease), (t + 1_100_000, 3), "refused");
    // An earlier lease than the latest (g3) since the restart: within the
    // slack g3 found (one token).
    store
        .return_rate(&id, &name, 1, 100_000, g2.lease)
        .await
        .unwrap();
    let g4 = store
        .lease_rate(&id, &rate_lease(0, t + 1_000_000))
        .await
        .unwrap();
    assert_eq!((g4.tat_us, g4.lease), (t + 1_000_000, 4), "accepted");
}

/// Store level, SQLite: with no restart, a give-back of an earlier lease's
/// tokens still credits no charge that had elapsed (with the restart count
/// alone, 99 + 24 were granted at one instant).
#[tokio::test]
async fn a_give_back_credits_no_charge_that_has_elapsed_sqlite() {
    let store = memory_store().await;
    let id = rate_key(&store).await;
    let name = keyward::usage::LimitName::new("requests").unwrap();
    let t = 1_800_000_000_000_000i64;
    let a = store.lease_rate(&id, &rate_lease(26, t)).await.unwrap();
    assert_eq!(a.granted, 26);
    // A spends 2 at t. 2.5 s later (TAT t + 2.6 s, ahead) B leases.
    let now = t + 2_500_000;
    let b = store.lease_rate(&id, &rate_lease(100, now)).await.unwrap();
    assert_eq!((b.granted, b.lease), (99, a.lease + 1), "the next lease");
    store
        .return_rate(&id, &name, 24, 100_000, a.lease)
        .await
        .unwrap();
    let c = store.lease_rate(&id, &rate_lease(100, now)).await.unwrap();
    assert!(
        b.granted + c.granted <= 110,
        "{} + {} granted at one instant, limit 100",
        b.granted,
        c.granted
    );
}
