//! Memory per stored key: fills a `MemoryStore` with 1,000,000 realistic
//! records and prints the bytes the allocator handed out for them, divided by
//! the number of keys. (`examples/cache_footprint.rs` measures a key in the
//! verifier's cache.)
//!
//! ```text
//! cargo run --release --example footprint
//! ```
//!
//! The count comes from a counting wrapper around the system allocator
//! (requested sizes, so malloc's own per-allocation overhead of 8 to 16 bytes
//! is not included; the number of allocations is printed so it can be added).
//! The records are built before the store is measured, so only the store's
//! copies count: the insert clones each record, as every store must.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use chrono::{TimeDelta, Utc};
use keyward::prelude::*;
use keyward::{hash::SecretHasher, key::KeyRecord, key::SecretHash, policy::IpAllowlist};
use rand::Rng;

/// Counts live bytes and live allocations, then defers to the system allocator.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
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

const KEYS: usize = 1_000_000;

fn counters() -> (isize, isize) {
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCATIONS.load(Ordering::Relaxed),
    )
}

fn main() {
    let live = Environment::new("live").expect("environment");
    // A real-length argon2id PHC string (default parameters: ~97 characters).
    let phc = Argon2Hasher::new(Argon2Params::default())
        .hash(b"a secret of 43 characters, as keys have...")
        .expect("hash");
    let now = Utc::now();
    let mut rng = rand::rng();
    let ranges = ["10", "172", "192", "198", "203"];

    let records: Vec<KeyRecord> = (0..KEYS)
        .map(|i| {
            let id: String = (0..keyward::TokenFormat::KEY_ID_LEN)
                .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                .collect();
            KeyRecord {
                id: KeyId::new(&id).expect("id"),
                owner: OwnerId::new(&format!("publisher-{:06}", i % 100_000)).expect("owner"),
                environment: live.clone(),
                name: format!("GitHub Actions {i}"),
                permissions: PermissionGrant::only(["package:push", "package:unlist"]),
                resources: ResourceScope::only([
                    format!("Contoso.Pkg{}*", i % 97),
                    "AzureRM.DataFactory*".to_owned(),
                    format!("Fabrikam.Tools{}", i % 13),
                ]),
                ip_allowlist: IpAllowlist::parse(&[format!(
                    "{}.{}.0.0/16",
                    ranges[i % 5],
                    i % 256
                )])
                .expect("cidr"),
                external_id: None,
                metadata: Default::default(),
                usage: Default::default(),
                created_at: now,
                expires_at: Some(now + TimeDelta::days(365)),
                revoked_at: None,
                suspended_at: None,
                last_used_ip: None,
                reminded_at: None,
                kind: keyward::key::KeyKind::Scoped,
                last_used_at: None,
                generation: 1,
                secret_hash: SecretHash::new(phc.clone()),
            }
        })
        .collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (bytes_before, allocs_before) = counters();
    let store = MemoryStore::new();
    rt.block_on(async {
        for r in &records {
            store.insert(r, None).await.expect("insert");
        }
    });
    let (bytes_after, allocs_after) = counters();
    assert_eq!(store.len(), KEYS);

    let bytes = (bytes_after - bytes_before) as f64 / KEYS as f64;
    let allocs = (allocs_after - allocs_before) as f64 / KEYS as f64;
    println!("keys stored:          {KEYS}");
    println!("PHC string length:    {} chars", phc.len());
    println!("bytes per key:        {bytes:.0} (allocator counters, requested sizes)");
    println!("allocations per key:  {allocs:.1}");
    println!("target:               <= 600 bytes per key");

    // For comparison: one record as reads hand it out (MemoryStore keeps it
    // packed, every string, list and time in one allocation: see
    // src/store/compact.rs), inline and piece by piece on the heap.
    let r = &records[0];
    println!(
        "a KeyRecord as read:  {} bytes inline with its id, and on the heap:",
        size_of::<(KeyId, KeyRecord)>()
    );
    println!("  id:                 {}", heap_of(&r.id));
    println!("  owner:              {}", heap_of(&r.owner));
    println!("  environment:        {}", heap_of(&r.environment));
    println!("  name:               {}", heap_of(&r.name));
    println!("  permissions:        {}", heap_of(&r.permissions));
    println!("  resources:          {}", heap_of(&r.resources));
    println!("  ip allowlist:       {}", heap_of(&r.ip_allowlist));
    println!("  secret hash:        {}", heap_of(&r.secret_hash));
    println!(
        "(stored: the id as the map key and in the owner index, the packed record, and map slack)"
    );
}

/// Heap bytes a clone of `value` allocates (its inline size excluded).
fn heap_of<T: Clone>(value: &T) -> isize {
    let (before, _) = counters();
    let copy = Box::new(value.clone());
    let (after, _) = counters();
    drop(copy);
    after - before - size_of::<T>() as isize
}
