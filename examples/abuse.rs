//! Hostile traffic against a real `Verifier` (MemoryStore, default argon2id
//! parameters), in three floods, then one line of figures (issue 10). The
//! argon2 flood runs first, so its memory figures start from a fresh
//! process:
//!
//! 1. **Lockout**: an attacker sends wrong secrets for the holder's public
//!    key id from 100 addresses, ten a second, for ten simulated minutes
//!    (a `ManualClock`; the 30 s cache TTL expires twenty times), while the
//!    holder checks once a second. `holder_success` is the holder's share
//!    of successful checks.
//! 2. **Argon2 work**: one source sends 10 000 wrong secrets across 1 000
//!    key ids as fast as it can (its throttles relaxed, so every attempt
//!    asks for argon2 and only the hashing queue stands in the way), while
//!    20 first uses of other keys come from another source.
//!    `first_use_p99_ms` is the 99th percentile of their latency;
//!    `argon2_ms` the median time of one argon2 run on the hashing threads
//!    during that flood (same run, same load: the ratio of the two is the
//!    queueing, not the machine's speed); the bare argon2 run on a quiet
//!    thread after the flood is printed beside it; `rss_mb_*` the process's resident memory before, at its peak
//!    during, and after the flood.
//! 3. **Anonymous flood**: 100 000 checks of random key ids from 50
//!    addresses. `audit_rows` is the number of audit rows they wrote;
//!    `unknown_checks` the sum of those rows' counts.
//!
//! ```text
//! cargo run --release --example abuse
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use keyward::prelude::*;
use keyward::{
    audit::AuditAction, audit::AuditEvent, hash::HashError, hash::HashScratch, hash::SecretHasher,
    store::MemoryAuditSink, verify::VerifierConfig,
};

const ATTACK_SOURCES: u32 = 100;
const SECONDS: u32 = 600;
const FLOOD_IDS: usize = 1_000;
const FLOOD_SECRETS: u64 = 10_000;
const FIRST_USES: usize = 20;
const RANDOM_CHECKS: u64 = 100_000;

fn ip(i: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
}

/// Resident memory in MiB (Linux; 0 elsewhere).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The default argon2id hasher, timing each verification it runs.
struct TimedHasher {
    inner: Argon2Hasher,
    runs_ms: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl SecretHasher for TimedHasher {
    fn hash(&self, secret: &[u8]) -> Result<String, HashError> {
        self.inner.hash(secret)
    }
    fn hash_with(&self, secret: &[u8], scratch: &mut HashScratch) -> Result<String, HashError> {
        self.inner.hash_with(secret, scratch)
    }
    fn verify(&self, secret: &[u8], stored: &str) -> Result<bool, HashError> {
        self.inner.verify(secret, stored)
    }
    fn verify_with(
        &self,
        secret: &[u8],
        stored: &str,
        scratch: &mut HashScratch,
    ) -> Result<bool, HashError> {
        let t = Instant::now();
        let r = self.inner.verify_with(secret, stored, scratch);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if let Ok(mut runs) = self.runs_ms.lock() {
            runs.push(ms);
        }
        r
    }
    fn needs_rehash(&self, stored: &str) -> bool {
        self.inner.needs_rehash(stored)
    }
}

fn permissions() -> Result<PermissionRegistry, Box<dyn std::error::Error>> {
    Ok(PermissionRegistry::builder()
        .permission("package:push")
        .build()?)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let format = TokenFormat::new("mkh", &["live"])?;
    let live = Environment::new("live")?;
    let push = permissions()?.get("package:push").ok_or("no permission")?;
    let system = Actor::system("abuse");

    // --- 2. Argon2 work: one source floods 1 000 ids; another's first uses. ---
    let store = Arc::new(MemoryStore::new());
    let config = VerifierConfig {
        // Only the hashing queue stands between this flood and argon2.
        failure_burst: 1_000_000,
        source_failure_burst: 1_000_000,
        ..VerifierConfig::default()
    };
    let timed_runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let timed = TimedHasher {
        inner: Argon2Hasher::default(),
        runs_ms: Arc::clone(&timed_runs),
    };
    let manager = KeyManager::builder(
        Arc::clone(&store),
        format.clone(),
        Policy::new(permissions()?),
    )
    .verifier_config(config)
    .hasher(timed)
    .build()?;
    // 1 000 flood targets: one real key, its record copied under new ids
    // (each insert would otherwise cost an argon2 hash).
    let template = manager
        .create(
            &system,
            NewKey::new("victim", "live", "CI")
                .permissions(PermissionGrant::only(["package:push"])),
        )
        .await?;
    let record = store.get(&template.key.id).await?.ok_or("no record")?;
    let mut targets = Vec::with_capacity(FLOOD_IDS);
    for i in 0..FLOOD_IDS {
        let mut copy = record.clone();
        copy.id = KeyId::generate();
        copy.owner = OwnerId::new(&format!("victim{i}"))?;
        store.insert(&copy, None).await?;
        targets.push(copy.id);
    }
    let mut first = Vec::with_capacity(FIRST_USES);
    for i in 0..FIRST_USES {
        first.push(
            manager
                .create(
                    &system,
                    NewKey::new(format!("publisher{i}"), "live", "CI")
                        .permissions(PermissionGrant::only(["package:push"])),
                )
                .await?,
        );
    }
    let rss_before = rss_mb();
    let peak = Arc::new(AtomicU64::new(rss_before.to_bits()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let now = rss_mb();
                if now > f64::from_bits(peak.load(Ordering::Relaxed)) {
                    peak.store(now.to_bits(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(true));
    let verifier = manager.verifier();
    // Forged tokens made up front: the attacker's own work is not the
    // server's, and should not take the server's CPU in this one process.
    let forged: Arc<Vec<Token>> = Arc::new(
        (0..FLOOD_SECRETS as usize)
            .map(|i| format.generate(&live, &targets[i % targets.len()]))
            .collect(),
    );
    let mut flood = Vec::new();
    for task in 0..512usize {
        let (v, e) = (verifier.clone(), live.clone());
        let (sent, overloaded, measuring) = (
            Arc::clone(&sent),
            Arc::clone(&overloaded),
            Arc::clone(&measuring),
        );
        let forged = Arc::clone(&forged);
        flood.push(tokio::spawn(async move {
            let mut i = task;
            // At full speed until 10 000 are sent and the first uses are done.
            while sent.fetch_add(1, Ordering::Relaxed) < FLOOD_SECRETS
                || measuring.load(Ordering::Relaxed)
            {
                let token = &forged[i % forged.len()];
                let req = VerifyRequest::new(&e, push).client_ip(ip(66));
                if let Err(d) = v.verify(token.expose_secret(), &req).await {
                    if d.reason == DenialReason::Overloaded {
                        overloaded.fetch_add(1, Ordering::Relaxed);
                        // A real client waits at least a moment before retrying.
                        tokio::task::yield_now().await;
                    }
                }
                i += 512;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::with_capacity(FIRST_USES);
    for key in &first {
        let req = VerifyRequest::new(&live, push).client_ip(ip(7));
        let t = Instant::now();
        let result = verifier.verify(key.token.expose_secret(), &req).await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Err(d) = result {
            println!("first use refused: {}", d.reason);
        }
    }
    measuring.store(false, Ordering::Relaxed);
    for f in flood {
        f.await?;
    }
    // Let the hashing threads finish what was queued.
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let rss_peak = f64::from_bits(peak.load(Ordering::Relaxed)).max(rss_mb());
    let rss_after = rss_mb();
    // One bare argon2 run, median of 9, in this run (after the memory
    // figures: argon2's own verifier allocates its blocks on each call).
    let hasher = Argon2Hasher::default();
    let phc = hasher.hash(b"a secret of some length")?;
    let mut runs: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            let _ = hasher.verify(b"another secret", &phc);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    let bare_argon2_ms = runs[runs.len() / 2];
    let mut flood_runs = timed_runs.lock().map(|r| r.clone()).unwrap_or_default();
    flood_runs.sort_by(f64::total_cmp);
    let argon2_ms = flood_runs
        .get(flood_runs.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);

    latencies.sort_by(f64::total_cmp);
    let p99_index = ((latencies.len() as f64 * 0.99).ceil() as usize).clamp(1, latencies.len()) - 1;
    let first_use_p99 = latencies[p99_index];
    println!(
        "argon2 flood: {} wrong secrets sent, {} refused as overloaded, {} argon2 runs (median {argon2_ms:.1} ms; bare on a quiet thread {bare_argon2_ms:.1} ms); first uses p50 {:.1} ms, max {:.1} ms",
        sent.load(Ordering::Relaxed),
        overloaded.load(Ordering::Relaxed),
        flood_runs.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );

    // --- 1. Lockout: a holder and a flood of wrong secrets for its id. ---
    // In a block of its own, so its verifier (and hashing threads) are
    // gone before the memory of the next flood is measured.
    let holder_success = {
        let clock = ManualClock::new("2026-12-01T00:00:00Z".parse()?);
        let manager = KeyManager::builder(
            MemoryStore::new(),
            format.clone(),
            Policy::new(permissions()?),
        )
        .clock(clock.clone())
        .build()?;
        let holder = manager
            .create(
                &system,
                NewKey::new("contoso", "live", "CI")
                    .permissions(PermissionGrant::only(["package:push"])),
            )
            .await?;
        let from_holder = VerifyRequest::new(&live, push).client_ip(ip(1));
        manager
            .verify(holder.token.expose_secret(), &from_holder)
            .await?;
        let (mut ok, mut total) = (0u32, 0u32);
        for second in 0..SECONDS {
            for k in 0..10 {
                let forged = format.generate(&live, &holder.key.id);
                let from = VerifyRequest::new(&live, push)
                    .client_ip(ip(1000 + (second * 10 + k) % ATTACK_SOURCES));
                let _ = manager.verify(forged.expose_secret(), &from).await;
            }
            total += 1;
            if manager
                .verify(holder.token.expose_secret(), &from_holder)
                .await
                .is_ok()
            {
                ok += 1;
            }
            clock.advance(TimeDelta::seconds(1));
        }
        let rate = 100.0 * f64::from(ok) / f64::from(total);
        println!("lockout: holder {ok}/{total} checks passed over {SECONDS} simulated seconds");
        rate
    };

    // --- 3. Anonymous flood: random ids, audit rows and store reads. ---
    let sink = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::builder(
        MemoryStore::new(),
        format.clone(),
        Policy::new(permissions()?),
    )
    .audit_shared(sink.clone())
    .build()?;
    for i in 0..RANDOM_CHECKS {
        let random = format.generate(&live, &KeyId::generate());
        let req = VerifyRequest::new(&live, push).client_ip(ip(i as u32 % 50));
        let _ = manager.verify(random.expose_secret(), &req).await;
    }
    manager.flush().await?;
    let rows: Vec<AuditEvent> = sink
        .events()
        .into_iter()
        .filter(|e| e.action == AuditAction::AuthenticationFailed)
        .collect();
    let unknown_checks: u64 = rows.iter().map(|e| e.count).sum();

    println!(
        "abuse: holder_success={holder_success:.1} first_use_p99_ms={first_use_p99:.1} argon2_ms={argon2_ms:.1} rss_mb_before={rss_before:.0} rss_mb_peak={rss_peak:.0} rss_mb_after={rss_after:.0} audit_rows={} unknown_checks={unknown_checks}",
        rows.len()
    );
    Ok(())
}
