//! Benchmarks of the stores: SQLite and PostgreSQL, each measured next to
//! `MemoryStore` in the same run so that results read as ratios.
//!
//! Groups (`<group>/<store>`, store = `memory`, `sqlite`, `postgres`):
//!
//! - `store_cold_verify`: `Verifier::verify` with the key evicted from the
//!   cache before each iteration: one store read, an argon2id verify with
//!   cheap parameters (`Argon2Params::insecure_for_tests()`: m = 8 KiB,
//!   t = 1, p = 1) so that the store's share is visible, policy compile.
//! - `store_cold_verify_argon2_default`: the same with the default argon2id
//!   parameters (m = 19 MiB, t = 2, p = 1), as a production cold check.
//! - `store_cached_verify`: a cached hit (never reaches the store).
//! - `store_create`: `KeyManager::create` with cheap argon2 parameters, quota
//!   checked (quota 10, a fresh owner per call, so it is never reached).
//! - `store_list_1k`: one `KeyStore::list` page of 1,000 keys of one owner.
//! - `store_get_1m`: `KeyStore::get` by id among 1,000,000 rows (memory and
//!   PostgreSQL), rotating over 1,000 random ids.
//! - `store_lease_credits`: `KeyStore::lease_credits` of one credit from a
//!   key whose balance never runs dry (one atomic `UPDATE ... RETURNING`).
//! - `store_lease_rate`: `KeyStore::lease_rate` of one token of a limit (one
//!   upsert computing the GCRA step).
//!
//! PostgreSQL: `KEYWARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the run works in a fresh
//! schema `kwbench_<random>` and drops it at the end. When the server cannot
//! be reached, the PostgreSQL benchmarks are skipped with a notice. SQLite
//! works in a file in a fresh temporary directory (WAL mode).
//!
//! The 1k and 1M populations are filled with one set-based SQL statement
//! each (all rows share one precomputed PHC), not one argon2 hash per row.
//!
//! Run with `cargo bench --features sqlite,postgres --bench stores`; see
//! `benches/README.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use keyward::{
    Argon2Params, Environment, KeyId, KeyManager, KeyStore, MemoryStore, NewKey, OwnerId,
    PermissionRegistry, Policy, PostgresStore, SqliteStore, TokenFormat, VerifyRequest,
    hash::Argon2Hasher, hash::SecretHasher, key::KeyRecord, key::SecretHash, policy::IpAllowlist,
    policy::PermissionGrant, policy::ResourceScope, store::ListQuery, verify::VerifierConfig,
};
use rand::Rng;
use tokio::runtime::Runtime;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Keys of the listed owner.
const LIST_KEYS: i64 = 1_000;
const LIST_OWNER: &str = "lister";
/// Rows of the lookup table.
const LOOKUP_ROWS: i64 = 1_000_000;
/// Distinct ids a lookup benchmark rotates over.
const LOOKUP_SAMPLE: usize = 1_000;
const LOOKUP_TABLE: &str = "lookup_keys";

fn registry() -> PermissionRegistry {
    PermissionRegistry::builder()
        .permission("package:push")
        .permission("package:unlist")
        .build()
        .expect("registry")
}

fn format() -> TokenFormat {
    TokenFormat::new("mkh", &["live", "test"]).expect("format")
}

fn live() -> Environment {
    Environment::new("live").expect("env")
}

fn cheap() -> Argon2Hasher {
    Argon2Hasher::new(Argon2Params::insecure_for_tests())
}

/// A key created through a manager, for the verify benchmarks.
struct BenchKey<S: KeyStore> {
    manager: KeyManager<S>,
    token: String,
    id: KeyId,
}

fn bench_key<S: KeyStore + Clone>(rt: &Runtime, store: &S, hasher: Argon2Hasher) -> BenchKey<S> {
    let manager = KeyManager::builder(store.clone(), format(), Policy::new(registry()))
        .hasher(hasher)
        .verifier_config(VerifierConfig {
            failure_burst: 1_000_000,
            ..VerifierConfig::default()
        })
        .build()
        .unwrap();
    let created = rt
        .block_on(
            manager.create(
                &keyward::Actor::system("bench"),
                NewKey::new("publisher-000042", "live", "GitHub Actions")
                    .permissions(PermissionGrant::only(["package:push"])),
            ),
        )
        .expect("create the measured key");
    BenchKey {
        token: created.token.expose_secret().to_owned(),
        id: created.key.id.clone(),
        manager,
    }
}

/// Everything measured on one store.
struct Setup<S: KeyStore> {
    store: S,
    cheap: BenchKey<S>,
    strong: BenchKey<S>,
    creator: KeyManager<S>,
    owners: AtomicU64,
}

fn setup<S: KeyStore + Clone>(rt: &Runtime, store: S) -> Setup<S> {
    let creator = KeyManager::builder(
        store.clone(),
        format(),
        Policy::new(registry()).with_quota(10).expect("quota"),
    )
    .hasher(cheap())
    .build()
    .unwrap();
    Setup {
        cheap: bench_key(rt, &store, cheap()),
        strong: bench_key(rt, &store, Argon2Hasher::default()),
        creator,
        owners: AtomicU64::new(0),
        store,
    }
}

/// The stored fields every filler row shares, encoded as the stores encode them.
struct Filler {
    phc: String,
    permissions: String,
    resources: String,
    ip_allowlist: String,
    created_at: i64,
}

impl Filler {
    fn new() -> Self {
        Self {
            phc: cheap().hash(b"filler secret, never checked").expect("hash"),
            permissions: serde_json::to_string(&PermissionGrant::only([
                "package:push",
                "package:unlist",
            ]))
            .expect("json"),
            resources: serde_json::to_string(&ResourceScope::All).expect("json"),
            ip_allowlist: serde_json::to_string(&IpAllowlist::any()).expect("json"),
            created_at: Utc::now().timestamp_micros(),
        }
    }

    /// The same row as a record, for `MemoryStore`.
    fn record(&self, id: &str, owner: &str, n: i64) -> KeyRecord {
        KeyRecord {
            id: KeyId::new(id).expect("id"),
            owner: OwnerId::new(owner).expect("owner"),
            environment: live(),
            name: format!("key {n}"),
            permissions: PermissionGrant::only(["package:push", "package:unlist"]),
            resources: ResourceScope::All,
            ip_allowlist: IpAllowlist::any(),
            external_id: None,
            metadata: Default::default(),
            usage: Default::default(),
            created_at: chrono::DateTime::from_timestamp_micros(self.created_at).expect("time"),
            expires_at: None,
            revoked_at: None,
            suspended_at: None,
            last_used_ip: None,
            reminded_at: None,
            kind: keyward::key::KeyKind::Scoped,
            last_used_at: None,
            generation: 1,
            secret_hash: SecretHash::new(self.phc.clone()),
        }
    }
}

/// Ids of filler rows: a letter and the row number on 11 digits.
fn filler_id(letter: char, n: i64) -> String {
    format!("{letter}{n:011}")
}

const COLUMNS: &str = "id, owner, environment, name, permissions, resources, ip_allowlist, \
                       created_at, expires_at, revoked_at, last_used_at, generation, secret_hash";

fn fill_memory(
    rt: &Runtime,
    store: &MemoryStore,
    f: &Filler,
    letter: char,
    owner: Option<&str>,
    n: i64,
) {
    rt.block_on(async {
        for i in 1..=n {
            let owner = owner.map_or_else(|| format!("publisher-{:06}", i % 10_000), str::to_owned);
            store
                .insert(&f.record(&filler_id(letter, i), &owner, i), None)
                .await
                .expect("insert filler");
        }
    });
}

/// One statement: `n` rows `L00000000001`.. of `owner` in SQLite.
fn fill_sqlite(rt: &Runtime, store: &SqliteStore, f: &Filler, owner: &str, n: i64) {
    let sql = format!(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1) \
         INSERT INTO \"{t}\" ({COLUMNS}) \
         SELECT printf('L%011d', n), ?2, 'live', 'key ' || n, ?3, ?4, ?5, ?6, NULL, NULL, NULL, 1, ?7 FROM g",
        t = store.table()
    );
    let done = rt
        .block_on(
            sqlx::query(&sql)
                .bind(n)
                .bind(owner)
                .bind(&f.permissions)
                .bind(&f.resources)
                .bind(&f.ip_allowlist)
                .bind(f.created_at)
                .bind(&f.phc)
                .execute(store.pool()),
        )
        .expect("fill SQLite");
    assert_eq!(done.rows_affected(), n as u64);
}

/// One statement: `n` rows `<letter>00000000001`.. in PostgreSQL, owned by
/// `owner` or spread over 10,000 owners.
fn fill_postgres(
    rt: &Runtime,
    store: &PostgresStore,
    f: &Filler,
    letter: char,
    owner: Option<&str>,
    n: i64,
) {
    let sql = format!(
        "INSERT INTO \"{s}\".\"{t}\" ({COLUMNS}) \
         SELECT $1 || lpad(g::text, 11, '0'), \
                COALESCE($2, 'publisher-' || lpad((g % 10000)::text, 6, '0')), \
                'live', 'key ' || g, $3, $4, $5, $6, NULL, NULL, NULL, 1, $7 \
         FROM generate_series(1::bigint, $8::bigint) AS g",
        s = store.schema(),
        t = store.table()
    );
    let started = Instant::now();
    let done = rt
        .block_on(async {
            let done = sqlx::query(&sql)
                .bind(letter.to_string())
                .bind(owner)
                .bind(&f.permissions)
                .bind(&f.resources)
                .bind(&f.ip_allowlist)
                .bind(f.created_at)
                .bind(&f.phc)
                .bind(n)
                .execute(store.pool())
                .await?;
            sqlx::query(&format!(
                "ANALYZE \"{}\".\"{}\"",
                store.schema(),
                store.table()
            ))
            .execute(store.pool())
            .await?;
            Ok::<_, sqlx::Error>(done)
        })
        .expect("fill PostgreSQL");
    assert_eq!(done.rows_affected(), n as u64);
    eprintln!(
        "stores: {n} rows into {}.{} in {:.1?}",
        store.schema(),
        store.table(),
        started.elapsed()
    );
}

/// Drops the benchmark's PostgreSQL schema when the run ends (or panics).
struct DropSchema {
    handle: tokio::runtime::Handle,
    pool: sqlx::PgPool,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        match self.handle.block_on(sqlx::query(&sql).execute(&self.pool)) {
            Ok(_) => eprintln!("stores: dropped schema {}", self.schema),
            Err(e) => eprintln!("stores: could not drop schema {}: {e}", self.schema),
        }
    }
}

/// The PostgreSQL side: the main store, the 1M-row lookup store, the guard.
struct Postgres {
    setup: Setup<PostgresStore>,
    lookup: PostgresStore,
    _guard: DropSchema,
}

fn postgres(rt: &Runtime, filler: &Filler) -> Option<Postgres> {
    let url = std::env::var("KEYWARD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned());
    let base = match rt.block_on(PostgresStore::connect(&url)) {
        Ok(store) => store,
        Err(e) => {
            eprintln!(
                "stores: PostgreSQL is unreachable ({e}): skipping the PostgreSQL benchmarks \
                 (set KEYWARD_TEST_POSTGRES_URL)"
            );
            return None;
        }
    };
    let schema = format!(
        "kwbench_{}",
        KeyId::generate().as_str().to_ascii_lowercase()
    );
    let guard = DropSchema {
        handle: rt.handle().clone(),
        pool: base.pool().clone(),
        schema: schema.clone(),
    };
    let store = base.clone().with_schema(&schema).expect("schema name");
    rt.block_on(store.migrate()).expect("migrate");
    let lookup = store.clone().with_table(LOOKUP_TABLE).expect("table name");
    rt.block_on(lookup.migrate()).expect("migrate lookup table");
    fill_postgres(rt, &store, filler, 'L', Some(LIST_OWNER), LIST_KEYS);
    fill_postgres(rt, &lookup, filler, 'M', None, LOOKUP_ROWS);
    Some(Postgres {
        setup: setup(rt, store),
        lookup,
        _guard: guard,
    })
}

/// Runs `$body` for each store, with `$name` its id and `$setup` its [`Setup`].
macro_rules! each_store {
    ($stores:expr, |$name:ident, $setup:ident| $body:expr) => {{
        {
            let ($name, $setup) = ("memory", &$stores.memory);
            $body;
        }
        {
            let ($name, $setup) = ("sqlite", &$stores.sqlite);
            $body;
        }
        if let Some(pg) = &$stores.postgres {
            let ($name, $setup) = ("postgres", &pg.setup);
            $body;
        }
    }};
}

struct Stores {
    memory: Setup<Arc<MemoryStore>>,
    sqlite: Setup<SqliteStore>,
    postgres: Option<Postgres>,
}

fn cold_verify<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    key: &BenchKey<S>,
) {
    let env = live();
    let push = registry().get("package:push").expect("perm");
    let req = VerifyRequest::new(&env, push);
    let verifier = key.manager.verifier();
    group.bench_function(name, |b| {
        b.to_async(rt).iter_batched(
            || verifier.forget(&key.id),
            |()| async {
                verifier
                    .verify(black_box(&key.token), &req)
                    .await
                    .expect("cold verify")
            },
            BatchSize::PerIteration,
        )
    });
}

fn cached_verify<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    key: &BenchKey<S>,
) {
    let env = live();
    let push = registry().get("package:push").expect("perm");
    let req = VerifyRequest::new(&env, push);
    let verifier = key.manager.verifier();
    rt.block_on(verifier.verify(&key.token, &req))
        .expect("warm");
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            verifier
                .verify(black_box(&key.token), &req)
                .await
                .expect("cached verify")
        })
    });
}

fn create<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    setup: &Setup<S>,
) {
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            let n = setup.owners.fetch_add(1, Ordering::Relaxed);
            setup
                .creator
                .create(
                    &keyward::Actor::system("bench"),
                    NewKey::new(format!("creator-{n}"), "live", "CI")
                        .permissions(PermissionGrant::only(["package:push"])),
                )
                .await
                .expect("create")
        })
    });
}

fn list_1k<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    store: &S,
) {
    let query = ListQuery::new(OwnerId::new(LIST_OWNER).expect("owner")).limit(1000);
    let page = rt.block_on(store.list(&query)).expect("list");
    assert_eq!(page.len(), LIST_KEYS as usize, "{name}: the whole page");
    assert_eq!(page[0].id.as_str(), filler_id('L', 1));
    group.bench_function(name, |b| {
        b.to_async(rt)
            .iter(|| async { store.list(black_box(&query)).await.expect("list") })
    });
}

/// A key with a balance that never runs dry and one rate limit.
fn metered_key<S: KeyStore>(rt: &Runtime, store: &S, filler: &Filler) -> KeyRecord {
    use keyward::usage::{Credits, RateLimit, RateLimits, UsageControls};
    let mut r = filler.record(KeyId::generate().as_str(), "metered", 0);
    r.usage = UsageControls {
        rate_limits: RateLimits::new([
            RateLimit::new("requests", 1_000, Duration::from_secs(1)).expect("limit")
        ])
        .expect("limits"),
        credits: Some(Credits::new(Credits::MAX).expect("credits")),
    };
    rt.block_on(store.insert(&r, None))
        .expect("insert the metered key");
    r
}

fn lease_credits<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    store: &S,
    key: &KeyRecord,
) {
    let first = rt
        .block_on(store.lease_credits(&key.id, 1, None))
        .expect("lease");
    assert_eq!(first.map(|g| g.granted), Some(1), "{name}");
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            store
                .lease_credits(black_box(&key.id), 1, None)
                .await
                .expect("lease")
        })
    });
}

fn lease_rate<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    store: &S,
    key: &KeyRecord,
) {
    let limit = key
        .usage
        .rate_limits
        .get("requests")
        .expect("limit")
        .clone();
    let lease = move || keyward::usage::RateLease {
        name: limit.name().clone(),
        want: 1,
        now_us: Utc::now().timestamp_micros(),
        interval_us: limit.interval_us(),
        burst_us: limit.burst_us(),
    };
    let first = rt
        .block_on(store.lease_rate(&key.id, &lease()))
        .expect("lease");
    assert_eq!(first.granted, 1, "{name}");
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let l = lease();
            async move {
                store
                    .lease_rate(black_box(&key.id), &l)
                    .await
                    .expect("lease")
            }
        })
    });
}

fn get_1m<S: KeyStore>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    store: &S,
    ids: &[KeyId],
) {
    for id in ids.iter().take(10) {
        let found = rt.block_on(store.get(id)).expect("get");
        assert_eq!(found.map(|r| r.id), Some(id.clone()), "{name}");
    }
    let mut i = 0;
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % ids.len();
            let id = &ids[i];
            async move { store.get(black_box(id)).await.expect("get").expect("found") }
        })
    });
}

fn bench_stores(c: &mut Criterion) {
    let started = Instant::now();
    let rt = Runtime::new().expect("runtime");
    let filler = Filler::new();

    let memory = Arc::new(MemoryStore::new());
    fill_memory(&rt, &memory, &filler, 'L', Some(LIST_OWNER), LIST_KEYS);

    let dir = std::env::temp_dir().join(format!("keyward-bench-stores-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("keys.db");
    let sqlite = rt
        .block_on(SqliteStore::connect(&path.to_string_lossy()))
        .expect("SQLite");
    rt.block_on(sqlite.migrate()).expect("migrate SQLite");
    fill_sqlite(&rt, &sqlite, &filler, LIST_OWNER, LIST_KEYS);

    let postgres = postgres(&rt, &filler);
    let stores = Stores {
        memory: setup(&rt, memory),
        sqlite: setup(&rt, sqlite),
        postgres,
    };
    eprintln!("stores: setup took {:.1?}", started.elapsed());

    let mut group = c.benchmark_group("store_cold_verify");
    each_store!(stores, |name, s| cold_verify(
        &mut group, &rt, name, &s.cheap
    ));
    group.finish();

    let mut group = c.benchmark_group("store_cached_verify");
    each_store!(stores, |name, s| cached_verify(
        &mut group, &rt, name, &s.cheap
    ));
    group.finish();

    let mut group = c.benchmark_group("store_create");
    group.throughput(Throughput::Elements(1));
    each_store!(stores, |name, s| create(&mut group, &rt, name, s));
    group.finish();

    let mut group = c.benchmark_group("store_list_1k");
    group.throughput(Throughput::Elements(LIST_KEYS as u64));
    each_store!(stores, |name, s| list_1k(&mut group, &rt, name, &s.store));
    group.finish();

    let mut group = c.benchmark_group("store_lease_credits");
    group.throughput(Throughput::Elements(1));
    each_store!(stores, |name, s| {
        let key = metered_key(&rt, &s.store, &filler);
        lease_credits(&mut group, &rt, name, &s.store, &key)
    });
    group.finish();

    let mut group = c.benchmark_group("store_lease_rate");
    group.throughput(Throughput::Elements(1));
    each_store!(stores, |name, s| {
        let key = metered_key(&rt, &s.store, &filler);
        lease_rate(&mut group, &rt, name, &s.store, &key)
    });
    group.finish();

    // Argon2 at default parameters: tens of ms per check, so few samples.
    let mut group = c.benchmark_group("store_cold_verify_argon2_default");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(4));
    each_store!(stores, |name, s| cold_verify(
        &mut group, &rt, name, &s.strong
    ));
    group.finish();

    // Lookup by id among 1M rows: MemoryStore and PostgreSQL.
    let mut rng = rand::rng();
    let ids: Vec<KeyId> = (0..LOOKUP_SAMPLE)
        .map(|_| KeyId::new(&filler_id('M', rng.random_range(1..=LOOKUP_ROWS))).expect("id"))
        .collect();
    let big = MemoryStore::new();
    let fill_started = Instant::now();
    fill_memory(&rt, &big, &filler, 'M', None, LOOKUP_ROWS);
    eprintln!(
        "stores: {LOOKUP_ROWS} records into a MemoryStore in {:.1?}",
        fill_started.elapsed()
    );
    let mut group = c.benchmark_group("store_get_1m");
    get_1m(&mut group, &rt, "memory", &big, &ids);
    if let Some(pg) = &stores.postgres {
        get_1m(&mut group, &rt, "postgres", &pg.lookup, &ids);
    }
    group.finish();
    drop(big);

    drop(stores);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_stores
}
criterion_main!(benches);
