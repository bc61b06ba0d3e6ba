//! Shared test fixtures: a marketplace policy, a manual clock, a counting
//! hasher, captured `tracing` output.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use keyward::*;
use keyward::{
    hash::Argon2Hasher, hash::HashError, hash::SecretHasher, key::KeyRecord, policy::ExpiryChoice,
    policy::ExpiryPolicy, policy::PermissionGrant, store::ListQuery, store::QuotaCheck,
    store::StoreError, verify::VerifierConfig,
};

pub const OWNER: &str = "contoso";

/// The SHA-256 of `secret` in lowercase hex, as crates.io-style stores keep
/// it (for imports).
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn registry() -> PermissionRegistry {
    PermissionRegistry::builder()
        .permission("package:push-new")
        .permission_implying("package:push", &["package:push-new"])
        .permission("package:unlist")
        .permission("package:metadata")
        .permission("analytics:read")
        .session_only("package:delete")
        .build()
        .expect("registry")
}

pub fn start() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().expect("time")
}

pub fn format() -> TokenFormat {
    TokenFormat::new("mkh", &["live", "test"]).expect("format")
}

/// Counts hasher calls and the most that ran at once.
#[derive(Clone, Default)]
pub struct Counters {
    pub verifies: Arc<AtomicUsize>,
    pub hashes: Arc<AtomicUsize>,
    pub running: Arc<AtomicUsize>,
    pub max_running: Arc<AtomicUsize>,
}

pub struct CountingHasher {
    inner: Argon2Hasher,
    pub counters: Counters,
    delay: std::time::Duration,
}

impl CountingHasher {
    pub fn new(counters: Counters) -> Self {
        Self::with_delay(counters, std::time::Duration::ZERO)
    }
    pub fn with_delay(counters: Counters, delay: std::time::Duration) -> Self {
        Self {
            inner: Argon2Hasher::new(Argon2Params::insecure_for_tests()),
            counters,
            delay,
        }
    }
    fn enter(&self) {
        let now = self.counters.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.max_running.fetch_max(now, Ordering::SeqCst);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }
    fn leave(&self) {
        self.counters.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SecretHasher for CountingHasher {
    fn hash(&self, secret: &[u8]) -> Result<String, HashError> {
        self.counters.hashes.fetch_add(1, Ordering::SeqCst);
        self.enter();
        let r = self.inner.hash(secret);
        self.leave();
        r
    }
    fn verify(&self, secret: &[u8], stored: &str) -> Result<bool, HashError> {
        self.counters.verifies.fetch_add(1, Ordering::SeqCst);
        self.enter();
        let r = self.inner.verify(secret, stored);
        self.leave();
        r
    }
    fn needs_rehash(&self, stored: &str) -> bool {
        self.inner.needs_rehash(stored)
    }
}

pub struct Fixture<S: KeyStore = Arc<MemoryStore>> {
    pub manager: KeyManager<S>,
    pub clock: ManualClock,
    pub counters: Counters,
    pub registry: PermissionRegistry,
    pub live: Environment,
    pub test: Environment,
}

impl<S: KeyStore> Fixture<S> {
    pub fn perm(&self, name: &str) -> Permission {
        self.registry.get(name).expect("permission")
    }
    pub fn push(&self) -> Permission {
        self.perm("package:push")
    }
    pub fn hash_verifies(&self) -> usize {
        self.counters.verifies.load(Ordering::SeqCst)
    }
    pub async fn create(&self, new: NewKey) -> CreatedKey {
        self.manager
            .create(&keyward::Actor::system("tests"), new)
            .await
            .expect("create")
    }
    /// A live push key for all of OWNER's packages.
    pub async fn push_key(&self) -> CreatedKey {
        self.create(
            NewKey::new(OWNER, "live", "CI").permissions(PermissionGrant::only(["package:push"])),
        )
        .await
    }
    pub fn req(&self) -> VerifyRequest<'_> {
        VerifyRequest::new(&self.live, self.push()).resource(OWNER, "Contoso.Tools")
    }
}

pub fn policy() -> Policy {
    Policy::new(registry())
        .with_quota(3)
        .expect("quota")
        .with_expiry(
            ExpiryPolicy::choices(&[1, 90, 365], true, ExpiryChoice::Days(90)).expect("expiry"),
        )
}

pub fn fixture() -> Fixture {
    fixture_with(
        Arc::new(MemoryStore::new()),
        policy(),
        VerifierConfig::default(),
    )
}

pub fn fixture_with<S: KeyStore>(store: S, policy: Policy, config: VerifierConfig) -> Fixture<S> {
    let clock = ManualClock::new(start());
    let counters = Counters::default();
    let manager = KeyManager::builder(store, format(), policy)
        .hasher(CountingHasher::new(counters.clone()))
        .clock(clock.clone())
        .verifier_config(config)
        .build()
        .unwrap();
    Fixture {
        manager,
        clock,
        counters,
        registry: registry(),
        live: Environment::new("live").expect("env"),
        test: Environment::new("test").expect("env"),
    }
}

/// A snapshot of everything an owner has in a store, to show "unchanged".
/// The usage columns are left out: successful checks write them in the
/// background, at a time no test controls.
pub async fn snapshot<S: KeyStore>(store: &S, owner: &str) -> Vec<KeyRecord> {
    let mut q = ListQuery::new(OwnerId::new(owner).expect("owner")).limit(1000);
    q.now = start();
    let mut records = store.list(&q).await.expect("list");
    for r in &mut records {
        r.last_used_at = None;
        r.last_used_ip = None;
    }
    records
}

/// A store wrapper whose operations can be made to fail.
pub struct FlakyStore<S> {
    pub inner: S,
    pub fail_reads: std::sync::atomic::AtomicBool,
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// How many times `record_usage` reached the store.
    pub usage_writes: AtomicUsize,
}

impl<S> FlakyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fail_reads: Default::default(),
            fail_writes: Default::default(),
            usage_writes: Default::default(),
        }
    }
    fn check(&self, flag: &std::sync::atomic::AtomicBool) -> Result<(), StoreError> {
        if flag.load(Ordering::SeqCst) {
            Err(StoreError::Backend("injected failure".into()))
        } else {
            Ok(())
        }
    }
}

impl<S: KeyStore> KeyStore for FlakyStore<S> {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.insert(record, quota).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.list(query).await
    }
    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.count(query).await
    }
    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.update(record, expected_generation).await
    }
    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.delete(id).await
    }
    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.usage_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.record_usage(id, at, ip).await
    }
    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.take_expiry_reminders(now, until, limit).await
    }
}

/// The application itself, allowed everything (for tests not about roles).
pub fn sys() -> Actor {
    Actor::system("tests")
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A thread-local subscriber that wants everything, writing to the
/// returned buffer while the guard lives.
pub fn capture_tracing() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    (logs.clone(), tracing::subscriber::set_default(subscriber))
}
