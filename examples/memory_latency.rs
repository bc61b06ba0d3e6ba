//! What one random read of memory costs on this machine, by working-set
//! size: the floor under `scale/cached_hit_1m` (benches/README.md, issue 14
//! §2).
//!
//! A cached check of a key drawn at random from a million must read at
//! least the map's slot and the key it points to, and at a million keys
//! those lines are nearly never in the CPU caches. Whatever the design, a
//! million keys hold at least a 16-byte fingerprint each to compare a
//! secret against: 16 MiB that one random read must reach (32 MiB with
//! the SHA-256 baseline's 32-byte digests), so the 16 and 32 MiB lines are
//! the least the million-key case adds to a check. This example chases
//! pointers through a random cycle over 1 MiB to 1 GiB (one 64-byte line
//! per step, each load depending on the one before) and prints the time
//! per load, one line per size:
//!
//! ```text
//! memory_latency: working_set_mib=<n> ns_per_load=<t>
//! ```
//!
//! Run it with `cargo run --release --example memory_latency` (about 20 s
//! and 1 GiB of memory).

use std::hint::black_box;
use std::time::Instant;

/// Bytes of one step: one cache line, so no two steps share a line.
const LINE: usize = 64;
/// Loads timed per size.
const STEPS: usize = 2_000_000;

fn main() {
    for mib in [1usize, 8, 16, 32, 64, 256, 1024] {
        let lines = mib * 1024 * 1024 / LINE;
        let cycle = random_cycle(lines);
        // One `usize` at the start of each line: the index of the next line.
        let per_line = LINE / size_of::<usize>();
        let mut memory = vec![0usize; lines * per_line];
        for (i, &next) in cycle.iter().enumerate() {
            memory[i * per_line] = next * per_line;
        }
        drop(cycle);
        let mut at = 0;
        // Every page was faulted in by the writes above; a short warm-up
        // of the chase itself.
        for _ in 0..lines.min(STEPS) {
            at = memory[at];
        }
        let started = Instant::now();
        for _ in 0..STEPS {
            at = memory[black_box(at)];
        }
        let ns = started.elapsed().as_secs_f64() * 1e9 / STEPS as f64;
        black_box(at);
        println!("memory_latency: working_set_mib={mib} ns_per_load={ns:.1}");
    }
}

/// `next[i]` for a single cycle through all `n` lines in random order
/// (Sattolo's algorithm), so the hardware prefetchers cannot guess the
/// next line.
fn random_cycle(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        // xorshift64: any fixed, well-mixed sequence serves here.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % i as u64) as usize;
        order.swap(i, j);
    }
    let mut next = vec![0; n];
    for i in 0..n {
        next[order[i]] = order[(i + 1) % n];
    }
    next
}
