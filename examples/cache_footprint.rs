//! Memory per *cached* key: fills a verifier's cache through the public path
//! (one `Verifier::verify` per key) and prints the bytes the allocator handed
//! out for it, and the growth of the resident set, divided by the number of
//! keys. (`examples/footprint.rs` measures the *store*'s bytes per key.)
//!
//! ```text
//! cargo run --release --example cache_footprint
//! ```
//!
//! One line per case, each measured in a fresh child process (so the
//! resident-set figure does not reuse memory freed by an earlier case):
//!
//! ```text
//! cache_footprint: patterns=<p> keys=<n> bytes_per_key=<allocator bytes> rss_per_key=<bytes>
//! ```
//!
//! Cases: 0, 1, 3 and 10 resource patterns (the 10 of `benches/verify.rs`)
//! at 10,000 and 100,000 keys. The keys have 0 CIDRs with 0 patterns, 1 with
//! 1 or 3, and 4 with 10 (the `verify/cached_hit` key), a 12-character id,
//! owner `publisher-123456`, environment `live`, a name and 2 permissions.
//! All keys are in the store before the measurement starts and the verifier
//! exists already: what is counted is what verifying each key once adds (the
//! cache entry with its compiled key: name, permissions, compiled scope and
//! the patterns as granted, allowlist, usage cell; the map's slots). Every key
//! shares one secret and so one cheap PHC (`Argon2Params::insecure_for_tests`),
//! which changes nothing in a cache entry and keeps the run to seconds.
//!
//! Bytes come from a counting wrapper around the system allocator (requested
//! sizes: malloc's own 8 to 16 bytes per allocation are not included; the
//! resident figure includes them); RSS from `/proc/self/statm` (Linux only;
//! 0 elsewhere).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use keyward::hash::{Argon2Hasher, SecretHasher};
use keyward::key::{KeyKind, KeyRecord, SecretHash};
use keyward::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use keyward::verify::VerifierConfig;
use keyward::{
    Argon2Params, Environment, KeyId, KeyManager, KeyStore, MemoryStore, OwnerId,
    PermissionRegistry, Policy, TokenFormat, VerifyRequest,
};
use rand::Rng;

/// Counts live bytes, then defers to the system allocator.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter is only a statistic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The 10 patterns of `benches/verify.rs` (`verify/cached_hit`).
const PATTERNS: [&str; 10] = [
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
/// The 4 CIDRs of the same key.
const CIDRS: [&str; 4] = [
    "10.0.0.0/8",
    "192.0.2.0/24",
    "2001:db8::/32",
    "203.0.113.0/24",
];
/// Matched by the first pattern.
const RESOURCE: &str = "AzureRm.DataFactoryV2.Netcore";
const CLIENT_IP: &str = "10.1.2.3";
const SECRET_ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, patterns, keys] = args.as_slice() {
        let patterns: usize = patterns.parse().expect("pattern count");
        let keys: usize = keys.parse().expect("key count");
        measure(patterns, keys);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    for keys in [10_000usize, 100_000] {
        for patterns in [0usize, 1, 3, 10] {
            let out = std::process::Command::new(&exe)
                .args([patterns.to_string(), keys.to_string()])
                .output()
                .expect("child run");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// Resident bytes of this process (0 where `/proc` is missing).
fn rss() -> isize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<isize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn registry() -> PermissionRegistry {
    PermissionRegistry::builder()
        .permission("package:push-new")
        .permission_implying("package:push", &["package:push-new"])
        .permission("package:unlist")
        .build()
        .expect("registry")
}

/// A well-formed token for `id` with `secret` (the format's checksum
/// computed here; `TokenFormat::parse` checks every one).
fn token(format: &TokenFormat, live: &Environment, id: &KeyId, secret: &str) -> String {
    let mut s = format!("{}_{}_{}{}", format.prefix(), live, id, secret);
    let mut n = crc32fast::hash(s.as_bytes());
    let mut sum = [b'0'; TokenFormat::CHECKSUM_LEN];
    for slot in sum.iter_mut().rev() {
        *slot = SECRET_ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    s.extend(sum.iter().map(|b| char::from(*b)));
    s
}

fn measure(patterns: usize, keys: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let live = Environment::new("live").expect("environment");
    let format = TokenFormat::new("mkh", &["live"]).expect("format");
    let mut rng = rand::rng();
    let secret: String = (0..TokenFormat::SECRET_LEN)
        .map(|_| char::from(SECRET_ALPHABET[rng.random_range(0..62)]))
        .collect();
    let phc = Argon2Hasher::new(Argon2Params::insecure_for_tests())
        .hash(secret.as_bytes())
        .expect("hash");
    let cidrs: &[&str] = match patterns {
        0 => &[],
        10 => &CIDRS,
        _ => &CIDRS[..1],
    };
    let resources = if patterns == 0 {
        ResourceScope::All
    } else {
        ResourceScope::only(PATTERNS[..patterns].iter().copied())
    };
    let ip_allowlist = IpAllowlist::parse(cidrs).expect("cidrs");
    let now = Utc::now();

    let store = Arc::new(MemoryStore::new());
    let mut work: Vec<(String, String)> = Vec::with_capacity(keys);
    while work.len() < keys {
        let i = work.len();
        let id: String = (0..TokenFormat::KEY_ID_LEN)
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect();
        let id = KeyId::new(&id).expect("id");
        let owner = format!("publisher-{:06}", i % 100_000);
        let record = KeyRecord {
            id: id.clone(),
            owner: OwnerId::new(&owner).expect("owner"),
            environment: live.clone(),
            name: format!("GitHub Actions {i}"),
            permissions: PermissionGrant::only(["package:push", "package:unlist"]),
            resources: resources.clone(),
            ip_allowlist: ip_allowlist.clone(),
            external_id: None,
            metadata: Default::default(),
            usage: Default::default(),
            created_at: now,
            expires_at: Some(now + TimeDelta::days(365)),
            revoked_at: None,
            suspended_at: None,
            last_used_ip: None,
            reminded_at: None,
            kind: KeyKind::Scoped,
            last_used_at: None,
            generation: 1,
            secret_hash: SecretHash::new(phc.clone()),
        };
        if rt.block_on(store.insert(&record, None)).is_ok() {
            work.push((token(&format, &live, &id, &secret), owner));
        }
    }

    let manager = KeyManager::builder(Arc::clone(&store), format, Policy::new(registry()))
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .verifier_config(VerifierConfig {
            // Room for every key: the cache is 64 shards of capacity / 64 each.
            cache_capacity: keys * 2,
            cache_ttl: Duration::from_secs(24 * 3600),
            failure_burst: 1_000_000,
            usage_interval: Duration::from_secs(24 * 3600),
            ..VerifierConfig::default()
        })
        .build()
        .expect("manager");
    let verifier = manager.verifier();
    let push = manager
        .policy()
        .permissions()
        .get("package:push")
        .expect("push");
    let ip: IpAddr = CLIENT_IP.parse().expect("ip");

    let (bytes_before, rss_before) = (BYTES.load(Ordering::Relaxed), rss());
    rt.block_on(async {
        for (token, owner) in &work {
            let req = VerifyRequest::new(&live, push)
                .resource(owner, RESOURCE)
                .client_ip(ip);
            verifier.verify(token, &req).await.expect("verify");
        }
    });
    let (bytes_after, rss_after) = (BYTES.load(Ordering::Relaxed), rss());
    assert_eq!(verifier.cached_keys(), keys);

    println!(
        "cache_footprint: patterns={patterns} keys={keys} bytes_per_key={} rss_per_key={}",
        (bytes_after - bytes_before) / keys as isize,
        (rss_after - rss_before) / keys as isize,
    );
}
