//! The cold check against bare argon2, interleaved: rounds that alternate a
//! few cold `Verifier::verify` calls (cache emptied before each) with as
//! many bare `argon2` verifies of the same secret and PHC, then the median
//! of the per-round ratios. Argon2 is memory-bound, and on a shared virtual
//! machine its speed drifts by tens of percent within seconds; criterion
//! measures `verify/cold_miss` and `verify/baseline_argon2` one after the
//! other, so that drift lands in their ratio. Interleaving cancels it.
//!
//! ```text
//! cargo run --release --example cold_vs_argon2
//! ```

use std::time::Instant;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use keyward::prelude::*;

const ROUNDS: usize = 10;
const PER_ROUND: usize = 6;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()?;
    let push = registry.get("package:push").ok_or("no permission")?;
    let format = TokenFormat::new("mkh", &["live"])?;
    // Default argon2id parameters, as in production and in benches/verify.rs.
    let manager =
        KeyManager::builder(MemoryStore::new(), format.clone(), Policy::new(registry)).build()?;
    // The benchmark's key: 10 patterns, 4 CIDRs.
    let patterns = [
        "AzureRM.DataFactory*",
        "AzureRM.Profile",
        "Contoso.*.Tools",
        "Contoso.Build?",
        "Fabrikam.Core*",
        "Fabrikam.Data.*",
        "Northwind.*",
        "Tailspin.Web*",
        "Wingtip.??.Client",
        "Litware.Analytics*",
    ];
    let created = manager
        .create(
            &Actor::system("example"),
            NewKey::new("contoso", "live", "CI")
                .permissions(PermissionGrant::All)
                .resources(ResourceScope::only(patterns))
                .ip_allowlist([
                    "203.0.113.0/24",
                    "198.51.100.0/24",
                    "2001:db8::/32",
                    "10.0.0.0/8",
                ]),
        )
        .await?;
    let token = created.token.expose_secret().to_owned();
    let live = Environment::new("live")?;
    let req = VerifyRequest::new(&live, push)
        .resource("contoso", "AzureRm.DataFactoryV2")
        .client_ip("203.0.113.7".parse()?);
    let record = manager
        .store()
        .get(&created.key.id)
        .await?
        .ok_or("the key is stored")?;
    let phc = record.secret_hash.as_str().to_owned();
    let secret = format.parse(&token)?.expose_secret().to_owned();
    let argon2 = Argon2::default();
    let verifier = manager.verifier();

    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            verifier.forget(&created.key.id);
            verifier
                .verify(&token, &req)
                .await
                .map_err(|d| format!("cold check refused: {}", d.reason.code()))?;
        }
        let cold = start.elapsed().as_secs_f64() / PER_ROUND as f64;
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            let hash = PasswordHash::new(&phc)?;
            argon2.verify_password(secret.as_bytes(), &hash)?;
        }
        let bare = start.elapsed().as_secs_f64() / PER_ROUND as f64;
        println!(
            "round {round:2}: cold check {:6.2} ms, bare argon2 {:6.2} ms, ratio {:.3}",
            cold * 1e3,
            bare * 1e3,
            cold / bare
        );
        ratios.push(cold / bare);
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[ROUNDS / 2 - 1] + ratios[ROUNDS / 2]) / 2.0;
    println!(
        "median ratio cold / bare argon2: {median:.3} (range {:.3} to {:.3}; target <= 1.05)",
        ratios[0],
        ratios[ROUNDS - 1]
    );
    Ok(())
}
