//! Cross-process revocation through PostgreSQL LISTEN/NOTIFY, measured.
//!
//! Two "application servers" — two separate connection pools, two
//! `KeyManager`s, over one schema — as a load-balanced registry would run.
//! Server B listens to the change feed. For each of 100 keys: B verifies it
//! (so B's cache holds it), A revokes it, and we time until B refuses the
//! key, both from the start of A's revoke call and from its return (the
//! commit). Prints p50/p99/max of each.
//!
//! ```text
//! KEYWARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run --release --features postgres --example propagation
//! ```
//!
//! The run works in a fresh schema with a random name and drops it at the end.

use std::time::{Duration, Instant};

use keyward::prelude::*;
use keyward::{PostgresStore, verify::VerifierConfig};

const KEYS: usize = 100;
const GIVE_UP: Duration = Duration::from_secs(5);

fn manager(store: PostgresStore) -> Result<KeyManager<PostgresStore>, Box<dyn std::error::Error>> {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()?;
    let policy = Policy::new(registry);
    let format = TokenFormat::new("mkh", &["live"])?;
    Ok(KeyManager::builder(store, format, policy)
        // Hashing cost is not what is measured here.
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        // A long TTL: only the change feed can make B notice in time.
        .verifier_config(VerifierConfig {
            cache_ttl: Duration::from_secs(600),
            ..VerifierConfig::default()
        })
        .build()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} revocations, {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        ms(times.last().copied().unwrap_or_default()),
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KEYWARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let schema = format!("kwprop_{}", KeyId::generate().as_str().to_ascii_lowercase());

    let a_store = PostgresStore::connect(&url).await?.with_schema(&schema)?;
    a_store.migrate().await?;
    let b_store = PostgresStore::connect(&url).await?.with_schema(&schema)?;
    let a = manager(a_store.clone())?;
    let b = manager(b_store.clone())?;
    let feed = b_store.listen(&b.verifier()).await?;

    let result = measure(&a, &b).await;

    drop(feed);
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(a_store.pool())
        .await?;
    let times = result?;
    report(
        "from the start of the revoke call",
        times.iter().map(|t| t.0).collect(),
    );
    report(
        "from the revoke's commit (call returned)",
        times.iter().map(|t| t.1).collect(),
    );
    Ok(())
}

async fn measure(
    a: &KeyManager<PostgresStore>,
    b: &KeyManager<PostgresStore>,
) -> Result<Vec<(Duration, Duration)>, Box<dyn std::error::Error>> {
    let push = a
        .policy()
        .permissions()
        .get("package:push")
        .ok_or("no permission")?;
    let live = Environment::new("live")?;
    let req = VerifyRequest::new(&live, push);
    let mut times = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let created = a
            .create(
                &keyward::Actor::system("propagation"),
                NewKey::new("contoso", "live", format!("key {i}"))
                    .permissions(PermissionGrant::only(["package:push"])),
            )
            .await?;
        let token = created.token.expose_secret();
        b.verify(token, &req).await?; // B's cache now holds the key
        let start = Instant::now();
        a.revoke(&keyward::Actor::system("propagation"), &created.key.id)
            .await?;
        let committed = start.elapsed();
        loop {
            match b.verify(token, &req).await {
                Err(d) if d.reason == DenialReason::Revoked => break,
                _ if start.elapsed() > GIVE_UP => {
                    return Err(format!("key {i}: not refused after {GIVE_UP:?}").into());
                }
                _ => tokio::task::yield_now().await,
            }
        }
        let total = start.elapsed();
        times.push((total, total.saturating_sub(committed)));
    }
    Ok(times)
}
