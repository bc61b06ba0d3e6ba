//! Cached checks under a saturating stream of cold checks (issue 14 §4):
//! does argon2 on the hashing threads starve the checks that need none?
//!
//! On a multi-thread tokio runtime (one worker per CPU), `2 × CPUs` tasks
//! do cached checks in a loop, each check behind a `yield_now` (a request
//! that was waiting to be scheduled, as behind a socket read), timed from
//! before the yield to the answer, so a check's latency includes the wait
//! for a worker thread. Rounds alternate an idle phase (cached checks only)
//! with a loaded phase, during which `4 × cap + 4` tasks keep the hashing
//! threads saturated with cold checks of valid keys (each key forgotten
//! before its check, so each check runs argon2 with the default parameters:
//! 19 MiB, t = 2), so drift of the machine hits both alike. For each cap it
//! prints one line:
//!
//! ```text
//! cold_load: cap=2 cached_idle=<ops/s> cached_loaded=<ops/s> ratio=<loaded/idle> median_round_ratio=.. p99_idle_us=.. p99_loaded_us=.. cold_per_s=.. cold_p50_ms=.. cold_p99_ms=.. overloaded=.. rounds=[..]
//! ```
//!
//! `ratio` is over all phases; `median_round_ratio` is the median of the
//! rounds' loaded/idle ratios, which a burst of other work on a shared
//! machine moves less. `cold_per_s` and the `cold_` percentiles are the
//! cold checks that ended during loaded phases (the price of keeping cached
//! checks fast); `overloaded` counts cold checks refused as overloaded.
//!
//! ```text
//! cargo run --release --example cold_load            # caps 1, CPUs and the default
//! cargo run --release --example cold_load -- 1 2 4   # these caps
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward::prelude::*;
use keyward::verify::VerifierConfig;

/// Idle/loaded round pairs per cap.
const ROUNDS: usize = 7;
/// Length of one measured phase.
const PHASE: Duration = Duration::from_millis(1500);
/// Time for the cold stream to fill the hashing threads before a loaded
/// phase is measured.
const RAMP: Duration = Duration::from_millis(300);
/// Keys the cached tasks cycle through.
const CACHED_KEYS: usize = 64;

type Manager = KeyManager<MemoryStore>;

/// What the tasks record: latencies per phase (index = phase number).
#[derive(Default)]
struct Record {
    cached: Mutex<Vec<Vec<u32>>>,
    cold: Mutex<Vec<Vec<u32>>>,
    overloaded: AtomicUsize,
}

impl Record {
    fn put(into: &Mutex<Vec<Vec<u32>>>, phase: usize, samples: &mut Vec<u32>) {
        if phase == 0 || samples.is_empty() {
            samples.clear();
            return;
        }
        let mut all = into.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() <= phase {
            all.resize_with(phase + 1, Vec::new);
        }
        all[phase].append(samples);
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() / 1_000).unwrap_or(u32::MAX)
}

fn percentile(samples: &mut [u32], p: f64) -> u32 {
    if samples.is_empty() {
        return 0;
    }
    let i = ((samples.len() as f64 * p) as usize).min(samples.len() - 1);
    *samples.select_nth_unstable(i).1
}

async fn create(manager: &Manager, n: usize, name: &str) -> Result<Vec<(KeyId, String)>, String> {
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let created = manager
            .create(
                &Actor::system("cold_load"),
                NewKey::new(format!("{name}-{i:03}"), "live", "CI")
                    .permissions(PermissionGrant::All),
            )
            .await
            .map_err(|e| format!("create: {e}"))?;
        keys.push((created.key.id, created.token.expose_secret().to_owned()));
    }
    Ok(keys)
}

struct Outcome {
    idle_ops: f64,
    loaded_ops: f64,
    p99_idle_us: u32,
    p99_loaded_us: u32,
    cold_per_s: f64,
    cold_p50_ms: f64,
    cold_p99_ms: f64,
    overloaded: usize,
    round_ratios: Vec<f64>,
}

async fn run(cap: usize, cpus: usize) -> Result<Outcome, String> {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()
        .map_err(|e| e.to_string())?;
    let push = registry.get("package:push").ok_or("no permission")?;
    let format = TokenFormat::new("mkh", &["live"]).map_err(|e| e.to_string())?;
    let manager = KeyManager::builder(MemoryStore::new(), format, Policy::new(registry))
        .verifier_config(VerifierConfig {
            max_concurrent_hashes: cap,
            // Cold checks of the same ids again and again: never throttled.
            failure_burst: 1_000_000,
            failure_refill: Duration::from_millis(1),
            ..VerifierConfig::default()
        })
        .build()
        .map_err(|e| e.to_string())?;
    let live = Environment::new("live").map_err(|e| e.to_string())?;
    let cached = Arc::new(create(&manager, CACHED_KEYS, "cached").await?);
    let cold_tasks = 4 * cap + 4;
    let cold = create(&manager, cold_tasks, "cold").await?;
    let verifier = manager.verifier();
    for (_, token) in cached.iter() {
        verifier
            .verify(token, &VerifyRequest::new(&live, push))
            .await
            .map_err(|d| format!("warm: {}", d.reason.code()))?;
    }

    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Record::default());

    let mut cached_tasks = Vec::new();
    for t in 0..2 * cpus {
        let (verifier, cached, live) = (verifier.clone(), Arc::clone(&cached), live.clone());
        let (phase, stop, record) = (Arc::clone(&phase), Arc::clone(&stop), Arc::clone(&record));
        cached_tasks.push(tokio::spawn(async move {
            let req = VerifyRequest::new(&live, push);
            let mut mine = phase.load(Ordering::Relaxed);
            let mut samples = Vec::with_capacity(1 << 16);
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let now = phase.load(Ordering::Relaxed);
                if now != mine {
                    Record::put(&record.cached, mine, &mut samples);
                    mine = now;
                }
                let started = Instant::now();
                tokio::task::yield_now().await;
                let token = &cached[i % cached.len()].1;
                i += 1;
                if let Err(d) = verifier.verify(token, &req).await {
                    return Err(format!("cached check refused: {}", d.reason.code()));
                }
                samples.push(micros(started.elapsed()));
            }
            Record::put(&record.cached, mine, &mut samples);
            Ok(())
        }));
    }

    let mut idle_time = Duration::ZERO;
    let mut loaded_time = Duration::ZERO;
    let mut phases = Vec::new(); // (phase number, loaded, duration)
    for round in 0..ROUNDS {
        // Idle: cached checks only.
        let n = 2 * round + 1;
        let started = Instant::now();
        phase.store(n, Ordering::Relaxed);
        tokio::time::sleep(PHASE).await;
        phase.store(0, Ordering::Relaxed);
        let took = started.elapsed();
        idle_time += took;
        phases.push((n, false, took));

        // Loaded: the cold stream saturates the hashing threads.
        let loading = Arc::new(AtomicBool::new(true));
        let mut streams = Vec::new();
        for (id, token) in &cold {
            let (id, token) = (id.clone(), token.clone());
            let (verifier, live, loading) = (verifier.clone(), live.clone(), Arc::clone(&loading));
            let (phase, record) = (Arc::clone(&phase), Arc::clone(&record));
            streams.push(tokio::spawn(async move {
                let req = VerifyRequest::new(&live, push);
                while loading.load(Ordering::Relaxed) {
                    verifier.forget(&id);
                    let started = Instant::now();
                    let result = verifier.verify(&token, &req).await;
                    // Counted in the phase it ends in, however long it
                    // waited (the rate is the cold throughput), and
                    // recorded at once: the stream is aborted at the end.
                    let now = phase.load(Ordering::Relaxed);
                    match result {
                        Ok(_) => {
                            Record::put(&record.cold, now, &mut vec![micros(started.elapsed())]);
                        }
                        Err(d) if d.reason == DenialReason::Overloaded => {
                            if now != 0 {
                                record.overloaded.fetch_add(1, Ordering::Relaxed);
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(d) => return Err(format!("cold check refused: {}", d.reason.code())),
                    }
                }
                Ok::<(), String>(())
            }));
        }
        tokio::time::sleep(RAMP).await;
        let n = 2 * round + 2;
        let started = Instant::now();
        phase.store(n, Ordering::Relaxed);
        tokio::time::sleep(PHASE).await;
        phase.store(0, Ordering::Relaxed);
        let took = started.elapsed();
        loaded_time += took;
        phases.push((n, true, took));
        // Stop the stream: its waiting checks are dropped (a check whose
        // caller went away never runs argon2); one already running ends.
        loading.store(false, Ordering::Relaxed);
        for s in &streams {
            s.abort();
        }
        for s in streams {
            match s.await {
                Ok(result) => result?,
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in cached_tasks {
        t.await.map_err(|e| e.to_string())??;
    }

    let mut cached_by_phase =
        std::mem::take(&mut *record.cached.lock().map_err(|e| e.to_string())?);
    let mut cold_by_phase = std::mem::take(&mut *record.cold.lock().map_err(|e| e.to_string())?);
    cached_by_phase.resize_with(2 * ROUNDS + 1, Vec::new);
    cold_by_phase.resize_with(2 * ROUNDS + 1, Vec::new);
    let (mut idle, mut loaded, mut cold_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut rates = Vec::new();
    for &(n, is_loaded, took) in &phases {
        let samples = std::mem::take(&mut cached_by_phase[n]);
        rates.push(samples.len() as f64 / took.as_secs_f64());
        if is_loaded {
            loaded.extend(samples);
            cold_all.append(&mut cold_by_phase[n]);
        } else {
            idle.extend(samples);
        }
    }
    let round_ratios = rates.chunks(2).map(|r| r[1] / r[0]).collect();
    Ok(Outcome {
        idle_ops: idle.len() as f64 / idle_time.as_secs_f64(),
        loaded_ops: loaded.len() as f64 / loaded_time.as_secs_f64(),
        p99_idle_us: percentile(&mut idle, 0.99),
        p99_loaded_us: percentile(&mut loaded, 0.99),
        cold_per_s: cold_all.len() as f64 / loaded_time.as_secs_f64(),
        cold_p50_ms: f64::from(percentile(&mut cold_all, 0.5)) / 1e3,
        cold_p99_ms: f64::from(percentile(&mut cold_all, 0.99)) / 1e3,
        overloaded: record.overloaded.load(Ordering::Relaxed),
        round_ratios,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let default_cap = VerifierConfig::default().max_concurrent_hashes;
    let mut caps: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if caps.is_empty() {
        caps = vec![1, cpus, default_cap];
        caps.sort_unstable();
        caps.dedup();
    }
    println!(
        "cold_load: {cpus} CPUs, default cap {default_cap}, {ROUNDS} idle/loaded rounds of {PHASE:?}"
    );
    for cap in caps {
        let o = run(cap, cpus).await?;
        let ratios: Vec<String> = o.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
        let mut sorted = o.round_ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            "cold_load: cap={cap} cached_idle={:.0} cached_loaded={:.0} ratio={:.3} median_round_ratio={median:.3} p99_idle_us={} p99_loaded_us={} cold_per_s={:.1} cold_p50_ms={:.1} cold_p99_ms={:.1} overloaded={} rounds=[{}]",
            o.idle_ops,
            o.loaded_ops,
            o.loaded_ops / o.idle_ops,
            o.p99_idle_us,
            o.p99_loaded_us,
            o.cold_per_s,
            o.cold_p50_ms,
            o.cold_p99_ms,
            o.overloaded,
            ratios.join(" ")
        );
    }
    Ok(())
}
