//! A full verification against a MemoryStore holding one key: arbitrary input
//! never panics and is never granted unless it is the key itself.
//!
//! The first byte picks how the rest is used, so that most inputs get past
//! the token parser (whose checksum random bytes almost never satisfy):
//! - 0: the rest is the token, as sent;
//! - 1: the rest is a secret, made into a well-formed token with the real
//!   key's id (reaches the store lookup and the secret comparison);
//! - 2: the rest is `key_id:secret`, made into a well-formed token (unknown
//!   ids, and the real one).
//!
//! The rest is also the requested resource name. Argon2 uses the insecure
//! test parameters so that a wrong secret costs microseconds.
#![no_main]

use std::sync::OnceLock;

use keyward::*;
use keyward::{
    hash::Argon2Hasher, policy::PermissionGrant, policy::ResourceScope, verify::VerifierConfig,
};
use libfuzzer_sys::fuzz_target;

struct World {
    rt: tokio::runtime::Runtime,
    manager: KeyManager<MemoryStore>,
    format: TokenFormat,
    token: String,
    key_id: String,
    push: Permission,
    live: Environment,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let registry = PermissionRegistry::builder()
            .permission("package:push")
            .build()
            .expect("registry");
        let push = registry.get("package:push").expect("push");
        let format = TokenFormat::new("mkh", &["live", "test"]).expect("format");
        let manager =
            KeyManager::builder(MemoryStore::new(), format.clone(), Policy::new(registry))
                .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
                .verifier_config(VerifierConfig {
                    failure_burst: u32::MAX,
                    ..VerifierConfig::default()
                })
                .build()
                .unwrap();
        let created = rt
            .block_on(
                manager.create(
                    &Actor::system("fuzz"),
                    NewKey::new("contoso", "live", "fuzz")
                        .permissions(PermissionGrant::All)
                        .resources(ResourceScope::only(["Contoso.*", "Fabrikam"])),
                ),
            )
            .expect("create");
        World {
            rt,
            manager,
            format,
            token: created.token.expose_secret().to_owned(),
            key_id: created.key.id.as_str().to_owned(),
            push,
            live: Environment::new("live").expect("env"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let token = match mode % 3 {
        0 => s.to_owned(),
        1 => match w.format.from_pair(&w.live, &w.key_id, s) {
            Ok(t) => t.expose_secret().to_owned(),
            Err(_) => return,
        },
        _ => {
            let (id, secret) = s.split_once(':').unwrap_or((s, ""));
            match w.format.from_pair(&w.live, id, secret) {
                Ok(t) => t.expose_secret().to_owned(),
                Err(_) => return,
            }
        }
    };
    let req = VerifyRequest::new(&w.live, w.push).resource("contoso", s);
    match w.rt.block_on(w.manager.verify(&token, &req)) {
        Ok(_) => assert_eq!(token, w.token, "only the real key may pass"),
        // The real key's id with another secret reaches the store and argon2.
        Err(d) if mode % 3 == 1 => assert_eq!(d.reason, DenialReason::WrongSecret),
        Err(_) => {}
    }
    // The real key with the fuzzed resource name: granted only when the
    // name is in the key's scope.
    let granted = w.rt.block_on(w.manager.verify(&w.token, &req)).is_ok();
    let lower = s.to_ascii_lowercase();
    let in_scope = lower == "fabrikam" || lower.starts_with("contoso.");
    if granted {
        assert!(in_scope, "{s:?} is out of scope");
    }
});
