//! Session tokens: parsing and a full session check against a MemoryStore
//! holding one session never panic, and nothing but the real session token
//! is granted.
//!
//! The first byte picks how the rest is used (see `verify.rs`): 0 the rest
//! as the token; 1 a well-formed session token with the real session's id
//! and the rest as the secret; 2 the rest as `id:secret`; 3 the rest as a
//! key token given to `exchange` (which must refuse session tokens).
#![no_main]

use std::sync::OnceLock;

use keyward::*;
use keyward::{
    hash::Argon2Hasher, policy::PermissionGrant, session::SessionConfig, verify::VerifierConfig,
};
use libfuzzer_sys::fuzz_target;

struct World {
    rt: tokio::runtime::Runtime,
    manager: KeyManager<MemoryStore>,
    format: TokenFormat,
    session_token: String,
    session_id: String,
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
        let manager = KeyManager::builder(
            MemoryStore::new(),
            TokenFormat::new("mkh", &["live", "test"]).expect("format"),
            Policy::new(registry),
        )
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .verifier_config(VerifierConfig {
            failure_burst: u32::MAX,
            ..VerifierConfig::default()
        })
        .sessions(SessionConfig::new("mkhs"))
        .build()
        .unwrap();
        let live = Environment::new("live").expect("env");
        let created = rt
            .block_on(manager.create(
                &Actor::system("fuzz"),
                NewKey::new("contoso", "live", "fuzz").permissions(PermissionGrant::All),
            ))
            .expect("create");
        let session = rt
            .block_on(manager.exchange(created.token.expose_secret(), &live, None, None))
            .expect("exchange");
        let format = manager.session_format().expect("session format").clone();
        let session_token = session.token.expose_secret().to_owned();
        let session_id = format
            .parse(&session_token)
            .expect("parses")
            .key_id()
            .to_owned();
        World {
            rt,
            manager,
            format,
            session_token,
            session_id,
            push,
            live,
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
    let token = match mode % 4 {
        0 => s.to_owned(),
        1 => match w.format.from_pair(&w.live, &w.session_id, s) {
            Ok(t) => t.expose_secret().to_owned(),
            Err(_) => return,
        },
        2 => {
            let (id, secret) = s.split_once(':').unwrap_or((s, ""));
            match w.format.from_pair(&w.live, id, secret) {
                Ok(t) => t.expose_secret().to_owned(),
                Err(_) => return,
            }
        }
        _ => {
            // Whatever is given, exchange never mints a session from a
            // session token or from anything but the real key.
            let exchanged = w.rt.block_on(w.manager.exchange(s, &w.live, None, None));
            if w.manager.is_session_token(s) {
                assert!(exchanged.is_err(), "a session token minted a session");
            }
            assert!(exchanged.is_err(), "{s:?} is not the key");
            return;
        }
    };
    if let Ok(parsed) = w.format.parse(&token) {
        assert!(token.starts_with("mkhs_"));
        assert_eq!(parsed.key_id().len(), keyward::TokenFormat::KEY_ID_LEN);
        assert_eq!(
            parsed.expose_secret().len(),
            keyward::TokenFormat::SECRET_LEN
        );
    }
    let req = VerifyRequest::new(&w.live, w.push).resource("contoso", "Contoso.Tools");
    if w.rt
        .block_on(w.manager.verify_session(&token, &req))
        .is_ok()
    {
        assert_eq!(token, w.session_token, "only the real session may pass");
    }
    if w.rt
        .block_on(w.manager.authenticate_session(&token, &w.live, None))
        .is_ok()
    {
        assert_eq!(token, w.session_token, "only the real session may pass");
    }
});
