//! The PostgreSQL store: the conformance suite, migrations, names, corrupt
//! rows, failure behaviour, and the change feed between two "servers".
//!
//! Needs `KEYWARD_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`);
//! without it every test writes `SKIPPED store_postgres::<test>: ...` to stderr
//! (past the output capture) and returns, unless
//! `KEYWARD_REQUIRE_POSTGRES=1` (CI), which makes them fail. Each test works
//! in a fresh schema with a random name and drops it at the end, pass or fail.
#![cfg(all(feature = "postgres", feature = "testing"))]

mod gcra_cases;
mod postgres;

use std::time::{Duration, Instant};

use keyward::*;
use keyward::{
    audit::AuditAction, audit::AuditEvent, audit::AuditQuery, hash::Argon2Hasher, key::KeyKind,
    key::KeyRecord, key::SecretHash, policy::IpAllowlist, policy::PermissionGrant,
    policy::ResourceScope, session::SessionConfig, store::AuditSink, store::ListQuery,
    store::QuotaCheck, store::StoreError,
};
use postgres::with_schema;

async fn store(url: &str, schema: &str) -> PostgresStore {
    let store = PostgresStore::connect(url)
        .await
        .expect("connect")
        .with_schema(schema)
        .expect("schema name");
    store.migrate().await.expect("migrate");
    store
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
    let policy = Policy::new(registry).with_quota(50).expect("quota");
    let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
    KeyManager::builder(store, format, policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap()
}

fn live() -> Environment {
    Environment::new("live").expect("env")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    with_schema(|url, schema| async move {
        let store = store(&url, &schema).await;
        keyward::store::conformance::run_all(|| {
            let store = store.clone();
            async move { store }
        })
        .await;
        keyward::store::conformance::audit_sink_conformance(store.clone()).await;
        keyward::store::conformance::session_store_conformance(store.clone()).await;
        keyward::store::conformance::usage_conformance(store.clone()).await;
        // A passing suite leaves no key, no session and no rate-limit state behind.
        for table in [
            "keyward_keys",
            "keyward_keys_sessions",
            "keyward_keys_rates",
        ] {
            let left: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{schema}\".{table}"))
                    .fetch_one(store.pool())
                    .await
                    .expect("count");
            assert_eq!(left, 0, "rows left in {table}");
        }
        store.pool().close().await;
    })
    .await;
}

/// 64 quota-checked inserts spread over two pools (as two servers would
/// send them): exactly 3 succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_holds_across_pools() {
    with_schema(|url, schema| async move {
        let a = store(&url, &schema).await;
        let b = store(&url, &schema).await;
        let owner = OwnerId::new("racer").expect("owner");
        let now = chrono::Utc::now();
        let mut set = tokio::task::JoinSet::new();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(64));
        for i in 0..64 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = barrier.clone();
            let id = KeyId::generate();
            let record = KeyRecord {
                secret_hash: SecretHash::new(format!("$argon2id$v=19$m=8,t=1,p=1$c2FsdA${id}")),
                id,
                owner: owner.clone(),
                environment: live(),
                name: format!("racer {i}"),
                kind: KeyKind::Scoped,
                permissions: PermissionGrant::All,
                resources: ResourceScope::All,
                ip_allowlist: IpAllowlist::any(),
                external_id: None,
                metadata: Default::default(),
                usage: Default::default(),
                created_at: now,
                expires_at: None,
                revoked_at: None,
                suspended_at: None,
                last_used_at: None,
                last_used_ip: None,
                reminded_at: None,
                generation: 1,
            };
            set.spawn(async move {
                barrier.wait().await;
                s.insert(&record, Some(QuotaCheck::new(3, now))).await
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            match r.expect("task") {
                Ok(()) => ok += 1,
                Err(StoreError::QuotaExceeded { limit: 3 }) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(ok, 3);
        let listed = a.list(&ListQuery::new(owner)).await.expect("list");
        assert_eq!(listed.len(), 3);
    })
    .await;
}

/// The one-statement rate lease computes exactly `usage::gcra_take`, from
/// any stored state.
#[tokio::test]
async fn rate_leases_compute_exactly_gcra_take() {
    with_schema(|url, schema| async move {
        let store = store(&url, &schema).await;
        let pool = store.pool().clone();
        gcra_cases::check(&store, |id, name, tat| {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move {
                sqlx::query(&format!(
                    "INSERT INTO \"{schema}\".keyward_keys_rates (key_id, name, tat) VALUES ($1, $2, $3)"
                ))
                .bind(id)
                .bind(name)
                .bind(tat)
                .execute(&pool)
                .await
                .expect("write a bucket state");
            }
        })
        .await;
        store.pool().close().await;
    })
    .await;
}

/// Eight "servers" (each its own pool) lease one key's credits and one
/// limit's tokens at once, each lease one statement: the credit grants sum
/// to exactly the balance, the token grants to exactly the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_are_exact_across_pools() {
    use keyward::usage::{Credits, RateLease, RateLimit, RateLimits, UsageControls};
    with_schema(|url, schema| async move {
        let first = store(&url, &schema).await;
        let limit = RateLimit::new("requests", 1_000, Duration::from_secs(3_600)).expect("limit");
        let id = KeyId::generate();
        let record = KeyRecord {
            secret_hash: SecretHash::new(format!("$argon2id$v=19$m=8,t=1,p=1$c2FsdA${id}")),
            id: id.clone(),
            owner: OwnerId::new("contoso").expect("owner"),
            environment: live(),
            name: "metered".into(),
            kind: KeyKind::Scoped,
            permissions: PermissionGrant::All,
            resources: ResourceScope::All,
            ip_allowlist: IpAllowlist::any(),
            external_id: None,
            metadata: Default::default(),
            usage: UsageControls {
                rate_limits: RateLimits::new([limit.clone()]).expect("limits"),
                credits: Some(Credits::new(10_000).expect("credits")),
            },
            created_at: chrono::Utc::now(),
            expires_at: None,
            revoked_at: None,
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            reminded_at: None,
            generation: 1,
        };
        first.insert(&record, None).await.expect("insert");
        let now_us = chrono::Utc::now().timestamp_micros();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let mut servers = tokio::task::JoinSet::new();
        for server in 0..8u64 {
            let (url, schema, id, limit) = (url.clone(), schema.clone(), id.clone(), limit.clone());
            let barrier = std::sync::Arc::clone(&barrier);
            servers.spawn(async move {
                let s = PostgresStore::connect_with(
                    PostgresStore::pool_options().max_connections(2),
                    &url,
                )
                .await
                .expect("connect")
                .with_schema(&schema)
                .expect("schema");
                barrier.wait().await;
                let (mut credits, mut tokens) = (0u64, 0u64);
                loop {
                    // Blocks of different sizes per server.
                    let g = s
                        .lease_credits(&id, 37 + server * 11, None)
                        .await
                        .expect("lease");
                    let g = g.expect("metered");
                    let t = s
                        .lease_rate(
                            &id,
                            &RateLease {
                                name: limit.name().clone(),
                                want: 7,
                                now_us,
                                interval_us: limit.interval_us(),
                                burst_us: limit.burst_us(),
                            },
                        )
                        .await
                        .expect("lease rate");
                    credits += g.granted;
                    tokens += u64::from(t.granted);
                    if g.granted == 0 && t.granted == 0 {
                        break;
                    }
                }
                s.pool().close().await;
                (credits, tokens)
            });
        }
        let (mut credits, mut tokens) = (0, 0);
        while let Some(r) = servers.join_next().await {
            let (c, t) = r.expect("server");
            credits += c;
            tokens += t;
        }
        assert_eq!(
            credits, 10_000,
            "credit grants across servers sum to the balance"
        );
        assert_eq!(
            tokens, 1_000,
            "token grants across servers sum to the bucket"
        );
        let c = first
            .get(&id)
            .await
            .expect("get")
            .expect("kept")
            .usage
            .credits
            .expect("credits");
        assert_eq!((c.remaining, c.leased), (0, 10_000));
        first.delete(&id).await.expect("delete");
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{schema}\".keyward_keys_rates WHERE key_id = $1"
        ))
        .bind(id.as_str())
        .fetch_one(first.pool())
        .await
        .expect("count");
        assert_eq!(left, 0, "the key's rate state is deleted with it");
        first.pool().close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_twice_and_from_two_pools_at_once() {
    with_schema(|url, schema| async move {
        let a = PostgresStore::connect(&url).await.expect("a").with_schema(&schema).expect("name");
        let b = PostgresStore::connect(&url).await.expect("b").with_schema(&schema).expect("name");
        let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
        ra.expect("migrate a");
        rb.expect("migrate b");
        let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
        ra.expect("migrate a again");
        rb.expect("migrate b again");
        let versions: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".keyward_keys_migrations ORDER BY 1"))
                .fetch_all(a.pool())
                .await
                .expect("versions");
        assert_eq!(
            versions,
            [1, 2, 3, 4, 5, 6, 7],
            "keys, sessions, operations, audit, external ids and metadata, usage controls"
        );
        let indexes_of = |table: &'static str| {
            let pool = a.pool().clone();
            let schema = schema.clone();
            async move {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY 1",
                )
                .bind(&schema)
                .bind(table)
                .fetch_all(&pool)
                .await
                .expect("indexes");
                names
            }
        };
        assert_eq!(
            indexes_of("keyward_keys").await,
            [
                "keyward_keys_expiry",
                "keyward_keys_owner_env",
                "keyward_keys_owner_ext",
                "keyward_keys_owner_id",
                "keyward_keys_pkey"
            ]
        );
        assert_eq!(
            indexes_of("keyward_keys_sessions").await,
            ["keyward_keys_sessions_expires", "keyward_keys_sessions_key_id", "keyward_keys_sessions_pkey"]
        );
        assert_eq!(
            indexes_of("keyward_keys_audit").await,
            [
                "keyward_keys_audit_key_at",
                "keyward_keys_audit_owner_at",
                "keyward_keys_audit_pkey"
            ]
        );
        let created = manager(a.clone()).create(&admin(), new_key("after migrate")).await.expect("create");
        assert!(b.get(&created.key.id).await.expect("get").is_some());
    })
    .await;
}

#[tokio::test]
async fn names_are_validated_and_custom_names_work() {
    with_schema(|url, schema| async move {
        let base = PostgresStore::connect(&url).await.expect("connect");
        for bad in [
            "",
            "Public",
            "1x",
            "a-b",
            "x\"; DROP SCHEMA public; --",
            &"s".repeat(64),
        ] {
            assert_eq!(base.clone().with_schema(bad).expect_err(bad).kind, "schema");
            assert_eq!(base.clone().with_table(bad).expect_err(bad).kind, "table");
        }
        let long_table = "t".repeat(63);
        let store = base
            .with_schema(&schema)
            .expect("schema")
            .with_table(&long_table)
            .expect("table");
        assert!(store.channel().len() <= 63);
        store
            .migrate()
            .await
            .expect("migrate with a 63-character table name");
        let created = manager(store.clone())
            .create(&admin(), new_key("long names"))
            .await
            .expect("create");
        assert!(store.get(&created.key.id).await.expect("get").is_some());
    })
    .await;
}

#[tokio::test]
async fn corrupt_rows_are_errors() {
    with_schema(|url, schema| async move {
        let store = store(&url, &schema).await;
        let m = manager(store.clone());
        let created = m.create(&admin(), new_key("victim")).await.expect("create");
        let id = created.key.id.clone();
        let table = format!("\"{schema}\".keyward_keys");
        for (column, value) in [
            ("ip_allowlist", "'[\"300.1.1.1/8\"]'"),
            ("permissions", "'{oops'"),
            ("generation", "-4"),
            ("expires_at", "9223372036854775807"),
            ("kind", "'superuser'"),
            ("last_used_ip", "'10.0.0.256'"),
        ] {
            let mut tx = store.pool().begin().await.expect("begin");
            sqlx::query(&format!("UPDATE {table} SET {column} = {value} WHERE id = $1"))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .expect("break");
            let got = sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut *tx)
                .await
                .expect("count");
            assert_eq!(got, 1);
            tx.commit().await.expect("commit");
            match store.get(&id).await {
                Err(StoreError::Corrupt { id: got, field, .. }) => {
                    assert_eq!(got, id.as_str());
                    assert_eq!(field, column);
                }
                other => panic!("{column}: expected Corrupt, got {other:?}"),
            }
            let denial = m
                .verify(created.token.expose_secret(), &VerifyRequest::new(&live(), m.policy().permissions().get("package:push").expect("perm")))
                .await
                .expect_err("deny");
            assert_eq!(denial.reason, DenialReason::StoreUnavailable);
            // Restore the row from a good copy of the column values.
            sqlx::query(&format!(
                "UPDATE {table} SET ip_allowlist = '[]', permissions = '{{\"only\":[\"package:push\"]}}', \
                 generation = 1, expires_at = NULL, kind = 'scoped', last_used_ip = NULL WHERE id = $1"
            ))
            .bind(id.as_str())
            .execute(store.pool())
            .await
            .expect("repair");
            assert!(store.get(&id).await.expect("repaired").is_some());
        }
        sqlx::query(&format!("UPDATE {table} SET id = 'bad id!' WHERE id = $1"))
            .bind(id.as_str())
            .execute(store.pool())
            .await
            .expect("break id");
        let err = store
            .list(&ListQuery::new(OwnerId::new("contoso").expect("owner")))
            .await
            .expect_err("bad id");
        assert!(matches!(err, StoreError::Corrupt { field: "id", .. }), "{err:?}");
    })
    .await;
}

/// Unreachable server and closed pool: `StoreError::Backend`; the manager
/// returns the error, verification denies, and reading back through another
/// pool shows nothing half-written.
#[tokio::test]
async fn backend_failures_deny_and_write_nothing() {
    with_schema(|url, schema| async move {
        // Nothing listens on port 1.
        match PostgresStore::connect("postgres://postgres@127.0.0.1:1/postgres").await {
            Err(StoreError::Backend(msg)) => assert!(!msg.is_empty()),
            other => panic!("expected Backend, got {other:?}"),
        }
        let unreachable = PostgresStore::from_pool(
            sqlx::postgres::PgPoolOptions::new()
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy("postgres://postgres@127.0.0.1:1/postgres")
                .expect("lazy pool"),
        );
        assert!(matches!(
            unreachable.get(&KeyId::generate()).await,
            Err(StoreError::Backend(_))
        ));

        let store = store(&url, &schema).await;
        let m = manager(store.clone());
        let created = m.create(&admin(), new_key("CI")).await.expect("create");
        let id = created.key.id.clone();
        let push = m.policy().permissions().get("package:push").expect("perm");
        let env = live();
        let req = VerifyRequest::new(&env, push);

        // The same token against a manager whose store is unreachable: denied.
        let cut_off = manager(unreachable);
        let denial = cut_off
            .verify(created.token.expose_secret(), &req)
            .await
            .expect_err("deny");
        assert_eq!(denial.reason, DenialReason::StoreUnavailable);
        assert!(matches!(
            cut_off.create(&admin(), new_key("nope")).await,
            Err(KeywardError::Store(StoreError::Backend(_)))
        ));

        store.pool().close().await;
        assert!(matches!(store.get(&id).await, Err(StoreError::Backend(_))));
        assert!(matches!(
            m.revoke(&admin(), &id).await,
            Err(KeywardError::Store(StoreError::Backend(_)))
        ));
        assert!(matches!(
            m.delete(&admin(), &id).await,
            Err(KeywardError::Store(StoreError::Backend(_)))
        ));
        assert!(matches!(
            m.create(&admin(), new_key("second")).await,
            Err(KeywardError::Store(StoreError::Backend(_)))
        ));
        let denial = m
            .verify(created.token.expose_secret(), &req)
            .await
            .expect_err("deny");
        assert_eq!(denial.reason, DenialReason::StoreUnavailable);

        let reader = self::store(&url, &schema).await;
        let all = reader
            .list(&ListQuery::new(OwnerId::new("contoso").expect("owner")))
            .await
            .expect("list");
        assert_eq!(all.len(), 1, "nothing was added");
        assert_eq!(
            (all[0].revoked_at, all[0].generation),
            (None, 1),
            "nothing was changed"
        );
        assert!(
            manager(reader)
                .verify(created.token.expose_secret(), &req)
                .await
                .is_ok()
        );
    })
    .await;
}

/// Polls `$check` (an async expression) every 5 ms until it is true or
/// `$limit` passes; yields the time it took.
macro_rules! within {
    ($limit:expr, $check:expr) => {{
        let start = Instant::now();
        let mut took = None;
        while start.elapsed() < $limit {
            if $check {
                took = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took
    }};
}

/// Two "servers": separate pools, separate managers over one schema. A
/// revoke, a regenerate and a delete in one reach the other's warm cache
/// within a second through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_feed_reaches_the_other_server() {
    with_schema(|url, schema| async move {
        let a = manager(store(&url, &schema).await);
        let b_store = store(&url, &schema).await;
        let b = manager(b_store.clone());
        // Long TTL: only the feed can make b notice.
        let feed = b_store.listen(&b.verifier()).await.expect("listen");
        assert!(feed.status().connected);
        let push = a.policy().permissions().get("package:push").expect("perm");
        let env = live();
        let req = VerifyRequest::new(&env, push);

        let revoked = a
            .create(&admin(), new_key("revoked"))
            .await
            .expect("create");
        let regenerated = a
            .create(&admin(), new_key("regenerated"))
            .await
            .expect("create");
        let deleted = a
            .create(&admin(), new_key("deleted"))
            .await
            .expect("create");
        for k in [&revoked, &regenerated, &deleted] {
            b.verify(k.token.expose_secret(), &req)
                .await
                .expect("warm b's cache");
        }
        assert_eq!(b.verifier().cached_keys(), 3);

        a.revoke(&admin(), &revoked.key.id).await.expect("revoke");
        a.regenerate(&admin(), &regenerated.key.id)
            .await
            .expect("regenerate");
        a.delete(&admin(), &deleted.key.id).await.expect("delete");
        let expect = [
            (&revoked, DenialReason::Revoked),
            (&regenerated, DenialReason::WrongSecret),
            (&deleted, DenialReason::UnknownKey),
        ];
        for (k, reason) in expect {
            let took = within!(
                Duration::from_secs(1),
                b.verify(k.token.expose_secret(), &req)
                    .await
                    .err()
                    .map(|d| d.reason)
                    == Some(reason.clone())
            );
            assert!(
                took.is_some(),
                "{reason:?} did not reach the other server within 1 s"
            );
        }
        assert!(feed.status().notifications >= 3);
    })
    .await;
}

/// After a reconnect: `b` caches `key` again, `a` revokes it, and the
/// feed brings the revoke to `b` within 1 s.
async fn assert_feed_carries_a_revoke(
    a: &KeyManager<PostgresStore>,
    b: &KeyManager<PostgresStore>,
    key: &CreatedKey,
    req: &VerifyRequest<'_>,
) {
    b.verify(key.token.expose_secret(), req)
        .await
        .expect("warm again");
    a.revoke(&admin(), &key.key.id).await.expect("revoke");
    let took = within!(
        Duration::from_secs(1),
        b.verify(key.token.expose_secret(), req)
            .await
            .err()
            .map(|d| d.reason)
            == Some(DenialReason::Revoked)
    );
    assert!(took.is_some(), "the feed works after reconnecting");
}

/// A connection that stops answering without closing (a network dropping
/// packets; here the feed's server process is stopped with SIGSTOP) is found
/// by the feed's quiet-time check: it reconnects and invalidates everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_feed_notices_a_silent_connection() {
    with_schema(|url, schema| async move {
        let a_store = store(&url, &schema).await;
        let a = manager(a_store.clone());
        let b_store = store(&url, &schema)
            .await
            .with_feed_ping(Duration::from_millis(300));
        let b = manager(b_store.clone());
        let feed = b_store.listen(&b.verifier()).await.expect("listen");
        let push = a.policy().permissions().get("package:push").expect("perm");
        let env = live();
        let req = VerifyRequest::new(&env, push);
        let k = a.create(&admin(), new_key("one")).await.expect("create");
        b.verify(k.token.expose_secret(), &req).await.expect("warm");

        // Quiet but healthy: checks pass, nothing reconnects.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(feed.status().connections, 1);
        assert_eq!(feed.status().pings_failed, 0);
        assert_eq!(b.verifier().cached_keys(), 1);

        let pid = feed.status().backend_pid.expect("pid");
        let signal = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !signal("-STOP") {
            // The server is on another machine (or another user's): the
            // process cannot be stopped from here.
            assert!(
                std::env::var("KEYWARD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "could not stop the feed's PostgreSQL backend {pid}"
            );
            eprintln!(
                "NOTICE: cannot signal PostgreSQL backend {pid}; silent-connection test skipped"
            );
            return;
        }
        let mut rx = feed.subscribe();
        let reconnected = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.connected && s.connections >= 2),
        )
        .await
        .map(|r| r.is_ok());
        // Whatever happened, let the stopped process go and end it.
        signal("-CONT");
        let _ = sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid as i32)
            .execute(a_store.pool())
            .await;
        assert_eq!(reconnected, Ok(true), "reconnected within 10 s");
        assert!(feed.status().pings_failed >= 1);
        assert_eq!(b.verifier().cached_keys(), 0, "a reconnect invalidates all");
        assert_feed_carries_a_revoke(&a, &b, &k, &req).await;
    })
    .await;
}

/// A compromise revoke on one server ends the key's sessions on the other
/// at once (through the feed), while a plain regenerate leaves them valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compromise_revoke_ends_sessions_on_the_other_server() {
    with_schema(|url, schema| async move {
        let with_sessions = |store: PostgresStore| {
            let registry = PermissionRegistry::builder()
                .permission("package:push")
                .build()
                .expect("registry");
            KeyManager::builder(
                store,
                TokenFormat::new("mkh", &["live", "test"]).expect("format"),
                Policy::new(registry),
            )
            .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
            .sessions(SessionConfig::new("mkhs"))
            .build()
            .unwrap()
        };
        let a = with_sessions(store(&url, &schema).await);
        let b_store = store(&url, &schema).await;
        let b = with_sessions(b_store.clone());
        let _feed = b_store.listen(&b.verifier()).await.expect("listen");
        let push = a.policy().permissions().get("package:push").expect("perm");
        let env = live();
        let req = VerifyRequest::new(&env, push);
        let key = a.create(&admin(), new_key("ci")).await.expect("create");
        let session = a
            .exchange(key.token.expose_secret(), &env, None, None)
            .await
            .expect("exchange");
        let token = session.token.expose_secret();
        b.verify_session(token, &req).await.expect("b caches it");

        // Regenerate: b's cached session is dropped, re-read, still valid.
        a.regenerate(&admin(), &key.key.id)
            .await
            .expect("regenerate");
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.verify_session(token, &req)
            .await
            .expect("a session survives regenerate");

        a.revoke_compromised(&admin(), &key.key.id)
            .await
            .expect("revoke");
        let took = within!(
            Duration::from_secs(1),
            b.verify_session(token, &req).await.err().map(|d| d.reason)
                == Some(DenialReason::Revoked)
        );
        assert!(
            took.is_some(),
            "the compromise did not reach the other server's session within 1 s"
        );
    })
    .await;
}

/// Killing the feed's connection: it reconnects, forgets every cached key
/// (notices sent while it was away are lost), and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_feed_reconnects_and_invalidates_all() {
    with_schema(|url, schema| async move {
        let a_store = store(&url, &schema).await;
        let a = manager(a_store.clone());
        let b_store = store(&url, &schema).await;
        let b = manager(b_store.clone());
        let feed = b_store.listen(&b.verifier()).await.expect("listen");
        let push = a.policy().permissions().get("package:push").expect("perm");
        let env = live();
        let req = VerifyRequest::new(&env, push);
        let k1 = a.create(&admin(), new_key("one")).await.expect("create");
        let k2 = a.create(&admin(), new_key("two")).await.expect("create");
        b.verify(k1.token.expose_secret(), &req)
            .await
            .expect("warm");
        b.verify(k2.token.expose_secret(), &req)
            .await
            .expect("warm");
        assert_eq!(b.verifier().cached_keys(), 2);

        let pid = feed.status().backend_pid.expect("pid") as i32;
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(a_store.pool())
            .await
            .expect("terminate");
        assert!(killed);
        let mut rx = feed.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.connected && s.connections >= 2),
        )
        .await
        .expect("reconnected within 10 s")
        .expect("feed alive");
        assert_ne!(feed.status().backend_pid, Some(pid as u32));
        assert_eq!(
            b.verifier().cached_keys(),
            0,
            "reconnect must invalidate everything"
        );

        assert_feed_carries_a_revoke(&a, &b, &k1, &req).await;
        drop(feed);
    })
    .await;
}

/// Reminders taken by workers on two pools (two servers) at once: each of
/// 60 due keys goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reminders_are_taken_once_across_pools() {
    with_schema(|url, schema| async move {
        let a = store(&url, &schema).await;
        let b = store(&url, &schema).await;
        let owner = OwnerId::new("reminded").expect("owner");
        let now = chrono::Utc::now();
        let mut want = Vec::new();
        for i in 0..60 {
            let id = KeyId::generate();
            let record = KeyRecord {
                secret_hash: SecretHash::new(format!("$argon2id$v=19$m=8,t=1,p=1$c2FsdA${id}")),
                id: id.clone(),
                owner: owner.clone(),
                environment: live(),
                name: format!("expiring {i}"),
                kind: KeyKind::Scoped,
                permissions: PermissionGrant::All,
                resources: ResourceScope::All,
                ip_allowlist: IpAllowlist::any(),
                external_id: None,
                metadata: Default::default(),
                usage: Default::default(),
                created_at: now,
                expires_at: Some(now + chrono::TimeDelta::hours(1 + i % 5)),
                revoked_at: None,
                suspended_at: None,
                last_used_at: None,
                last_used_ip: None,
                reminded_at: None,
                generation: 1,
            };
            a.insert(&record, None).await.expect("insert");
            want.push(id.as_str().to_owned());
        }
        want.sort();
        let until = now + chrono::TimeDelta::days(1);
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(4));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..4 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = barrier.clone();
            set.spawn(async move {
                barrier.wait().await;
                let mut got = Vec::new();
                loop {
                    let batch = s.take_expiry_reminders(now, until, 4).await.expect("take");
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|r| r.id.as_str().to_owned()));
                }
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.extend(r.expect("task"));
        }
        all.sort();
        assert_eq!(all, want, "every key exactly once");
        assert!(
            a.take_expiry_reminders(now, until, 100)
                .await
                .expect("take")
                .is_empty()
        );
    })
    .await;
}

/// Audit rows that do not decode are `StoreError::Corrupt` naming the field.
#[tokio::test]
async fn corrupt_audit_rows_are_errors() {
    with_schema(|url, schema| async move {
        let store = store(&url, &schema).await;
        let key = KeyId::generate();
        let event = AuditEvent {
            key_id: Some(key.clone()),
            client_ip: Some("2001:db8::1".parse().expect("ip")),
            ..AuditEvent::new(chrono::Utc::now(), AuditAction::Suspended)
        };
        store
            .record(std::slice::from_ref(&event))
            .await
            .expect("record");
        let table = format!("\"{schema}\".keyward_keys_audit");
        for (column, value) in [
            ("action", "'exploded'"),
            ("client_ip", "'not-an-ip'"),
            ("count", "-3"),
            ("key_id", "'bad id!'"),
        ] {
            sqlx::query(&format!("UPDATE {table} SET {column} = {value}"))
                .execute(store.pool())
                .await
                .expect("break row");
            match store.query(&AuditQuery::all()).await {
                Err(StoreError::Corrupt { field, id, .. }) => {
                    assert_eq!(field, column);
                    assert!(id.starts_with("audit#"), "{id}");
                }
                other => panic!("{column}: expected Corrupt, got {other:?}"),
            }
            sqlx::query(&format!(
                "UPDATE {table} SET action = 'suspended', client_ip = NULL, count = 1, key_id = $1"
            ))
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
    })
    .await;
}

/// A schema created by the first version is upgraded in place: old rows
/// read back as scoped keys, and their ids are never reused once deleted.
#[tokio::test]
async fn migration_upgrades_a_version_1_schema() {
    with_schema(|url, schema| async move {
        let admin_pool = sqlx::PgPool::connect(&url).await.expect("connect");
        for statement in [
            format!("CREATE SCHEMA \"{schema}\""),
            format!(
                "CREATE TABLE \"{schema}\".keyward_keys_migrations \
                 (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)"
            ),
            format!("INSERT INTO \"{schema}\".keyward_keys_migrations VALUES (1, 0)"),
            format!(
                "CREATE TABLE \"{schema}\".keyward_keys (id TEXT COLLATE \"C\" NOT NULL PRIMARY KEY, \
                 owner TEXT COLLATE \"C\" NOT NULL, environment TEXT COLLATE \"C\" NOT NULL, \
                 name TEXT NOT NULL, permissions TEXT NOT NULL, resources TEXT NOT NULL, \
                 ip_allowlist TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT, \
                 revoked_at BIGINT, last_used_at BIGINT, generation BIGINT NOT NULL, \
                 secret_hash TEXT NOT NULL)"
            ),
            format!(
                "INSERT INTO \"{schema}\".keyward_keys VALUES ('oldkey000001', 'contoso', 'live', \
                 'from v1', '\"all\"', '\"all\"', '[]', 1800000000000000, 1900000000000000, NULL, \
                 1800000001000000, 3, '$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA')"
            ),
        ] {
            sqlx::query(&statement)
                .execute(&admin_pool)
                .await
                .expect("build a version 1 schema");
        }
        admin_pool.close().await;
        let store = store(&url, &schema).await;
        store.migrate().await.expect("migrate twice");
        let id = KeyId::new("oldkey000001").expect("id");
        let old = store.get(&id).await.expect("get").expect("kept");
        assert_eq!(old.kind, KeyKind::Scoped);
        assert_eq!(
            (old.suspended_at, old.last_used_ip, old.reminded_at),
            (None, None, None)
        );
        assert_eq!((old.name.as_str(), old.generation), ("from v1", 3));
        assert_eq!(old.external_id, None, "no external id before version 5");
        assert!(old.metadata.is_empty(), "no metadata before version 5");
        store.delete(&id).await.expect("delete");
        assert_eq!(
            store.insert(&old, None).await,
            Err(StoreError::DuplicateId(id.clone())),
            "ids of rows from before the upgrade are remembered too"
        );
        let versions: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM \"{schema}\".keyward_keys_migrations ORDER BY 1"
        ))
        .fetch_all(store.pool())
        .await
        .expect("versions");
        assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
        assert!(old.usage.is_empty(), "no usage controls before version 6");
    })
    .await;
}

/// A NUL character (which PostgreSQL text cannot hold) in an event's free
/// text does not make the batch fail; it is stored as U+FFFD.
#[tokio::test]
async fn nul_in_audit_text_does_not_fail_the_batch() {
    with_schema(|url, schema| async move {
        let store = store(&url, &schema).await;
        let key = KeyId::generate();
        let at = chrono::DateTime::from_timestamp_micros(1_800_000_000_000_001).expect("time");
        let odd = AuditEvent {
            actor: Some("a\0b".into()),
            key_id: Some(key.clone()),
            detail: "x\0".into(),
            count: u64::MAX,
            ..AuditEvent::new(at, AuditAction::Edited)
        };
        let plain = AuditEvent {
            key_id: Some(key.clone()),
            ..AuditEvent::new(at, AuditAction::Revoked)
        };
        store.record(&[odd, plain.clone()]).await.expect("record");
        let got = store.query(&AuditQuery::key(key)).await.expect("query");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].actor.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(got[0].detail, "x\u{FFFD}");
        assert_eq!(got[0].count, i64::MAX as u64, "counts saturate");
        assert_eq!(got[1], plain);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trust_store_conformance() {
    with_schema(|url, schema| async move {
        let store = store(&url, &schema).await;
        store.migrate().await.expect("migrate twice");
        keyward::store::conformance::trust_store_conformance(store.clone()).await;
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{schema}\".keyward_keys_trust"
        ))
        .fetch_one(store.pool())
        .await
        .expect("count");
        assert_eq!(left, 0, "trust policies left behind");
    })
    .await;
}

/// `connect_with` sizes the pool as told and names its connections by the
/// URL's `application_name`; `connect` keeps its defaults; a bad URL or an
/// unreachable server is a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_sizes_the_pool_and_names_its_connections() {
    with_schema(|url, schema| async move {
        let separator = if url.contains('?') { '&' } else { '?' };
        let named = format!("{url}{separator}application_name=keyward-pool-test");
        let store = PostgresStore::connect_with(
            PostgresStore::pool_options()
                .max_connections(3)
                .min_connections(0),
            &named,
        )
        .await
        .expect("connect_with")
        .with_schema(&schema)
        .expect("schema name");
        assert_eq!(store.pool().options().get_max_connections(), 3);
        let name: String = sqlx::query_scalar(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(store.pool())
        .await
        .expect("application_name");
        assert_eq!(name, "keyward-pool-test");
        // The store works as one from `connect`.
        store.migrate().await.expect("migrate");
        let manager = manager(store.clone());
        let created = manager
            .create(&admin(), new_key("pool"))
            .await
            .expect("create");
        assert!(
            KeyStore::get(&store, &created.key.id)
                .await
                .expect("get")
                .is_some()
        );
        store.pool().close().await;

        let default = PostgresStore::connect(&url).await.expect("connect");
        assert_eq!(default.pool().options().get_max_connections(), 16);
        default.pool().close().await;

        let bad =
            PostgresStore::connect_with(PostgresStore::pool_options(), "mysql://nowhere").await;
        assert!(matches!(bad, Err(StoreError::Backend(_))));
    })
    .await;
}

/// Store level, PostgreSQL: with no restart, a give-back still credits no
/// charge that had elapsed; and migration 7 over existing rows.
#[tokio::test]
async fn a_give_back_credits_no_charge_that_has_elapsed_postgres() {
    with_schema(|url, schema| async move {
        use keyward::usage::{LimitName, RateLease, RateLimit, RateLimits};
        let store = store(&url, &schema).await;
        let registry = PermissionRegistry::builder()
            .permission("package:push")
            .build()
            .unwrap();
        let policy = Policy::new(registry)
            .with_rate_limits(["requests"])
            .unwrap();
        let m = KeyManager::builder(
            store.clone(),
            TokenFormat::new("mkh", &["live"]).unwrap(),
            policy,
        )
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .unwrap();
        let limit = RateLimit::new("requests", 100, std::time::Duration::from_secs(10)).unwrap();
        let id = m
            .create(
                &admin(),
                new_key("rated").rate_limits(RateLimits::new([limit]).unwrap()),
            )
            .await
            .unwrap()
            .key
            .id
            .clone();
        let name = LimitName::new("requests").unwrap();
        let lease = |want, now_us| RateLease {
            name: name.clone(),
            want,
            now_us,
            interval_us: 100_000,
            burst_us: 10_000_000,
        };
        let t = 1_800_000_000_000_000i64;
        // Migration 7 over an existing row.
        store
            .lease_rate(&id, &lease(1, t - 50_000_000))
            .await
            .unwrap();
        for s in [
            format!("ALTER TABLE \"{schema}\".keyward_keys_rates DROP COLUMN lease"),
            format!("ALTER TABLE \"{schema}\".keyward_keys_rates DROP COLUMN restart_lease"),
            format!("ALTER TABLE \"{schema}\".keyward_keys_rates DROP COLUMN slack"),
            format!("ALTER TABLE \"{schema}\".keyward_keys_rates DROP COLUMN added"),
            format!("DELETE FROM \"{schema}\".keyward_keys_migrations WHERE version >= 7"),
        ] {
            sqlx::query(&s).execute(store.pool()).await.expect(&s);
        }
        store.migrate().await.expect("upgrade");
        let a = store.lease_rate(&id, &lease(26, t)).await.unwrap();
        assert_eq!(
            (a.granted, a.lease),
            (26, 1),
            "a restart, numbered after the row's 0"
        );
        let now = t + 2_500_000;
        let b = store.lease_rate(&id, &lease(100, now)).await.unwrap();
        assert_eq!((b.granted, b.lease), (99, a.lease + 1), "the next lease");
        store
            .return_rate(&id, &name, 24, 100_000, a.lease)
            .await
            .unwrap();
        let c = store.lease_rate(&id, &lease(100, now)).await.unwrap();
        assert!(
            b.granted + c.granted <= 110,
            "{} + {} granted at one instant, limit 100",
            b.granted,
            c.granted
        );
    })
    .await;
}
