//! The whole life of a key on `MemoryStore`, in plain words.
//!
//! Run it with `cargo run --example quickstart`.

use keyward::prelude::*;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn say_denial(what: &str, result: std::result::Result<VerifiedKey, Denial>) {
    match result {
        Ok(_) => {
            // Never expected: fail loudly, so CI notices a regression.
            eprintln!("  {what}: ALLOWED, which keyward must refuse");
            std::process::exit(1);
        }
        Err(d) => {
            let status = match d.kind() {
                DenialKind::Authentication => "401",
                DenialKind::Authorization => "403",
                DenialKind::Throttled | DenialKind::Limited => "429",
                DenialKind::Exhausted => "402",
                DenialKind::Misuse => "500",
                DenialKind::Unavailable => "503",
            };
            println!(
                "  {what}: refused, HTTP {status}, reason `{}`",
                d.reason.code()
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // Once, at startup: the marketplace's permissions and policy.
    let registry = PermissionRegistry::builder()
        .permission("package:push-new")
        .permission_implying("package:push", &["package:push-new"])
        .permission("package:unlist")
        .permission("package:metadata")
        .permission("analytics:read")
        .session_only("package:delete")
        .build()?;
    let push = registry.get("package:push").ok_or("no push permission")?;
    let delete = registry
        .get("package:delete")
        .ok_or("no delete permission")?;
    let policy = Policy::new(registry)
        .with_quota(3)?
        .with_expiry(ExpiryPolicy::choices(
            &[90, 365],
            true,
            ExpiryChoice::Days(90),
        )?);
    let format = TokenFormat::new("mkh", &["live", "test"])?;
    println!(
        "Secret scanners find leaked keys with: {}",
        format.scanner_regex()
    );

    let manager = KeyManager::builder(MemoryStore::new(), format, policy).build()?;
    let live = Environment::new("live")?;
    let test = Environment::new("test")?;

    // Every management call names who makes it: here contoso's administrator.
    let admin = Actor::administrator("alice", OwnerId::new("contoso")?);

    // A publisher creates a key for its CI pipeline.
    let created = manager
        .create(
            &admin,
            NewKey::new("contoso", "live", "GitHub Actions Production")
                .permissions(PermissionGrant::only(["package:push"]))
                .resources(ResourceScope::only(["AzureRM.DataFactory*"]))
                .expiry(ExpiryChoice::Days(90))
                .ip_allowlist(["203.0.113.0/24"]),
        )
        .await?;
    let token = created.token.expose_secret();
    println!(
        "\nCreated key {} \"{}\" for {}, expires {}.",
        created.key.id,
        created.key.name,
        created.key.owner,
        created
            .key
            .expires_at
            .map_or("never".into(), |t| t.date_naive().to_string()),
    );
    println!(
        "The full key is shown once ({} characters, starting {}...), then only its argon2id hash is kept.",
        token.len(),
        &token[..9]
    );

    let ci = "203.0.113.10".parse()?;
    let allowed = VerifyRequest::new(&live, push)
        .resource("contoso", "AzureRm.DataFactoryV2.Netcore")
        .client_ip(ci);
    let key = manager.verify(token, &allowed).await?;
    println!(
        "\nPush of AzureRm.DataFactoryV2.Netcore from {ci}: allowed (key {}, owner {}).",
        key.id(),
        key.owner()
    );
    let started = std::time::Instant::now();
    manager.verify(token, &allowed).await?;
    println!(
        "The same check again, from the cache: {:?}.",
        started.elapsed()
    );

    println!("\nWhat the key may not do:");
    say_denial(
        "push another package (AzureRM.Profile)",
        manager
            .verify(
                token,
                &VerifyRequest::new(&live, push)
                    .resource("contoso", "AzureRM.Profile")
                    .client_ip(ci),
            )
            .await,
    );
    say_denial(
        "push another publisher's package",
        manager
            .verify(
                token,
                &VerifyRequest::new(&live, push)
                    .resource("fabrikam", "AzureRM.DataFactory")
                    .client_ip(ci),
            )
            .await,
    );
    say_denial(
        "push from 198.51.100.1",
        manager
            .verify(token, &allowed.client_ip("198.51.100.1".parse()?))
            .await,
    );
    say_denial(
        "delete a package (session-only)",
        manager
            .verify(token, &VerifyRequest::new(&live, delete).client_ip(ci))
            .await,
    );
    say_denial(
        "use the live key on the test environment",
        manager
            .verify(token, &VerifyRequest::new(&test, push).client_ip(ci))
            .await,
    );

    let regenerated = manager.regenerate(&admin, &created.key.id).await?;
    println!("\nRegenerated: same id {}, new secret.", regenerated.key.id);
    say_denial("the old secret", manager.verify(token, &allowed).await);
    manager
        .verify(regenerated.token.expose_secret(), &allowed)
        .await?;
    println!("  the new secret: allowed");

    manager.revoke(&admin, &created.key.id).await?;
    println!("\nRevoked.");
    say_denial(
        "the revoked key",
        manager
            .verify(regenerated.token.expose_secret(), &allowed)
            .await,
    );

    println!("\nKeys of contoso:");
    for view in manager
        .list(&admin, ListQuery::new(OwnerId::new("contoso")?))
        .await?
    {
        println!("  {}  {:<28} {:?}", view.id, view.name, view.status);
    }
    Ok(())
}
