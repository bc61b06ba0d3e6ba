//! The verifier's hot path stays small: the future a check returns is what
//! every cached hit builds and polls, so the cold path's state (store read,
//! argon2 queue) lives behind a box instead of inside it (issue 14): about
//! 3.7 KB before, under 1 KB since (debug build).

use std::sync::Arc;

use keyward::{
    Environment, KeyManager, MemoryStore, PermissionRegistry, Policy, TokenFormat, VerifyRequest,
};

#[test]
fn a_check_future_is_small() {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()
        .unwrap();
    let push = registry.get("package:push").unwrap();
    let manager = KeyManager::builder(
        Arc::new(MemoryStore::new()),
        TokenFormat::new("mkh", &["live"]).unwrap(),
        Policy::new(registry),
    )
    .build()
    .unwrap();
    let verifier = manager.verifier();
    let live = Environment::new("live").unwrap();
    let req = VerifyRequest::new(&live, push);
    let check = verifier.verify("mkh_live_x", &req);
    let size = std::mem::size_of_val(&check);
    eprintln!("verify future: {size} bytes");
    assert!(size <= 1024, "verify future: {size} bytes");
    let pair = verifier.verify_pair("abc", "secret", &req);
    let size = std::mem::size_of_val(&pair);
    eprintln!("verify_pair future: {size} bytes");
    assert!(size <= 1024, "verify_pair future: {size} bytes");
}
