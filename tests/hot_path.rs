//! The verifier's hot path stays small: the future a check returns is what
//! every cached hit builds, moves and polls, so everything that can wait
//! (the cold path's store read and argon2 queue, a usage lease) lives
//! behind one box, and the part that never waits runs on the first poll
//! (issue 14): 3.7 KB at first, about 1 KB with the cold path boxed, under
//! 128 bytes since the whole waiting part is (debug build).

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
    assert!(size <= 128, "verify future: {size} bytes");
    let pair = verifier.verify_pair("abc", "secret", &req);
    let size = std::mem::size_of_val(&pair);
    eprintln!("verify_pair future: {size} bytes");
    assert!(size <= 128, "verify_pair future: {size} bytes");
}
