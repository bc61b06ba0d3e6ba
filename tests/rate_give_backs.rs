//! Give-backs of unspent rate-limit tokens (`KeyStore::return_rate`), from
//! an outside review of the numbered leases (2026-12-03): servers whose
//! ledgers hold tokens of several leases at once never let more through
//! than one GCRA admits; and the memory store, SQLite and PostgreSQL agree
//! on every grant of random lease and give-back sequences.

#[cfg(all(feature = "sqlite", feature = "postgres", feature = "testing"))]
mod postgres;

use std::sync::Arc;

use keyward::prelude::*;
use keyward::usage::{LimitName, RateLease, RateLimit, RateLimits};

async fn rate_key<S: KeyStore + Clone>(store: &S) -> KeyId {
    let registry = PermissionRegistry::builder()
        .permission("package:push")
        .build()
        .expect("registry");
    let policy = Policy::new(registry)
        .with_rate_limits(["requests"])
        .expect("limits");
    let format = TokenFormat::new("mkh", &["live"]).expect("format");
    let m = KeyManager::builder(store.clone(), format, policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .build()
        .expect("manager");
    let limit = RateLimit::new("requests", 100, std::time::Duration::from_secs(10)).unwrap();
    m.create(
        &Actor::system("tests"),
        NewKey::new("contoso", "live", "rated")
            .permissions(PermissionGrant::only(["package:push"]))
            .rate_limits(RateLimits::new([limit]).unwrap()),
    )
    .await
    .expect("create")
    .key
    .id
    .clone()
}

fn name() -> LimitName {
    LimitName::new("requests").unwrap()
}

fn lease(want: u32, now_us: i64, interval_us: u64, burst_us: u64) -> RateLease {
    RateLease {
        name: name(),
        want,
        now_us,
        interval_us,
        burst_us,
    }
}

/// xorshift64*: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One server's ledger of one limit, as `src/verify/ledger.rs` keeps it:
/// tokens of possibly several leases; the number of the earliest lease
/// held since its tokens were last zero, and the latest lease's number and
/// grant. A give-back sends as many as the latest lease granted under its
/// number and the rest under the earliest's.
#[derive(Default)]
struct Ledger {
    /// (lease index, tokens of it still held), oldest first.
    held: Vec<(usize, u32)>,
    earliest: u64,
    latest: (u64, u32),
    /// Given back later (a limit changed: the sweeper's orphans).
    orphans: Vec<[(u32, u64); 2]>,
}

impl Ledger {
    fn total(&self) -> u32 {
        self.held.iter().map(|h| h.1).sum()
    }

    /// Takes every token held: the parts to give back, and the tokens
    /// taken off each lease's count of tokens kept.
    fn take(&mut self, kept: &mut [(i64, i64)]) -> [(u32, u64); 2] {
        let tokens = self.total();
        for (l, t) in std::mem::take(&mut self.held) {
            kept[l].1 -= i64::from(t);
        }
        let recent = tokens.min(self.latest.1);
        [(recent, self.latest.0), (tokens - recent, self.earliest)]
    }
}

/// Servers (3) whose ledgers hold tokens of several leases at once,
/// spend oldest- or newest-first, give back before a lease or in a sweep,
/// and leave orphans for a later sweep: the tokens leases kept in any span
/// never pass one GCRA's burst plus one per interval of the span.
#[tokio::test]
async fn ledgers_of_several_leases_never_let_more_through_than_one_gcra() {
    const I: u64 = 100;
    const BURST: u64 = 1_000;
    let mut rng = Rng(0xDEAD_BEEF_1234_5678);
    for case in 0..2_000u64 {
        let store = Arc::new(MemoryStore::new());
        let id = rate_key(&store).await;
        let newest_first = case % 2 == 1;
        let mut now = 1_000_000i64;
        let mut servers: Vec<Ledger> = (0..3).map(|_| Ledger::default()).collect();
        // Per lease: its time and the tokens it kept (granted, less those
        // given back).
        let mut kept: Vec<(i64, i64)> = Vec::new();
        let mut log: Vec<String> = Vec::new();
        for _ in 0..10 + rng.below(50) {
            let s = rng.below(3) as usize;
            now += if rng.below(3) == 0 {
                0
            } else {
                rng.below(300) as i64
            };
            let mut give_back = Vec::new();
            let mut lease_want = None;
            match rng.below(7) {
                action @ (0 | 1) => {
                    // A top-up: expired tokens go back first (1), then a lease.
                    if action == 1 {
                        give_back.extend(servers[s].take(&mut kept));
                    }
                    lease_want = Some(1 + rng.below(16) as u32);
                }
                2 => {
                    let srv = &mut servers[s];
                    for _ in 0..rng.below(8) {
                        let mut held = srv.held.iter_mut().filter(|h| h.1 > 0);
                        let h = if newest_first {
                            held.last()
                        } else {
                            held.next()
                        };
                        match h {
                            Some(h) => h.1 -= 1,
                            None => break,
                        }
                    }
                    log.push(format!("t={now} s{s} spends: {} left", srv.total()));
                }
                3 => give_back.extend(servers[s].take(&mut kept)),
                4 => {
                    let parts = servers[s].take(&mut kept);
                    servers[s].orphans.push(parts);
                    log.push(format!("t={now} s{s} orphans {parts:?}"));
                }
                _ => give_back.extend(servers[s].orphans.drain(..).flatten()),
            }
            for (tokens, number) in give_back {
                if tokens > 0 {
                    store
                        .return_rate(&id, &name(), tokens, I, number)
                        .await
                        .unwrap();
                    log.push(format!("t={now} s{s} gives back {tokens} under {number}"));
                }
            }
            if let Some(want) = lease_want {
                let g = store
                    .lease_rate(&id, &lease(want, now, I, BURST))
                    .await
                    .unwrap();
                let srv = &mut servers[s];
                if srv.total() == 0 {
                    srv.held.clear();
                    srv.earliest = g.lease;
                }
                srv.latest = (g.lease, g.granted);
                kept.push((now, i64::from(g.granted)));
                srv.held.push((kept.len() - 1, g.granted));
                log.push(format!(
                    "t={now} s{s} leases {want}: {} #{}",
                    g.granted, g.lease
                ));
            }
        }
        for i in 0..kept.len() {
            let mut net = 0i64;
            for l in &kept[i..] {
                net += l.1;
                let span = l.0 - kept[i].0;
                assert!(
                    net <= (span + BURST as i64) / I as i64,
                    "case {case}: {net} tokens kept over {span} µs from lease {i}: {kept:?}\n{}",
                    log.join("\n")
                );
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// dt, want, interval, burst
    Lease(i64, u32, u64, u64),
    /// tokens, interval, lease number as an offset from the first lease's
    Return(u32, u64, i64),
}

/// Leases (clocks that stand still, go back or jump; zero intervals;
/// bursts shorter than an interval) and give-backs (numbers from one
/// before the first to two past the latest; intervals not the lease's).
fn sequence(rng: &mut Rng, len: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut leases = 0i64;
    for _ in 0..len {
        if rng.below(2) == 0 || leases == 0 {
            let dt = match rng.below(6) {
                0 => 0,
                1 => -(rng.below(2_000_000) as i64),
                2 => rng.below(20_000_000) as i64,
                _ => rng.below(1_000_000) as i64,
            };
            let (interval, burst) = match rng.below(8) {
                0 => (1_000_000, 10_000_000),
                1 => (0, 1_000),
                2 => (100_000, 50_000),
                _ => (100_000, 10_000_000),
            };
            ops.push(Op::Lease(dt, rng.below(40) as u32, interval, burst));
            leases += 1;
        } else {
            let offset = rng.below(leases as u64 + 3) as i64 - 1;
            let interval = if rng.below(6) == 0 {
                1_000_000
            } else {
                100_000
            };
            ops.push(Op::Return(rng.below(60) as u32, interval, offset));
        }
    }
    ops
}

/// Runs `ops` on `store`: every grant, its lease number relative to the
/// bucket's first.
#[cfg(all(feature = "sqlite", feature = "postgres", feature = "testing"))]
async fn run<S: KeyStore>(store: &S, id: &KeyId, t0: i64, ops: &[Op]) -> Vec<(u32, i64, u64)> {
    let mut out = Vec::new();
    let mut now = t0;
    let mut first: Option<u64> = None;
    for op in ops {
        match *op {
            Op::Lease(dt, want, interval, burst) => {
                now += dt;
                let g = store
                    .lease_rate(id, &lease(want, now, interval, burst))
                    .await
                    .expect("lease");
                let f = *first.get_or_insert(g.lease);
                out.push((g.granted, g.tat_us - t0, g.lease.wrapping_sub(f)));
            }
            Op::Return(tokens, interval, offset) => {
                let number = first.expect("leased before").wrapping_add_signed(offset);
                store
                    .return_rate(id, &name(), tokens, interval, number)
                    .await
                    .expect("return");
            }
        }
    }
    out
}

/// The memory store, SQLite and PostgreSQL agree on every grant of 150
/// random sequences of 40 leases and give-backs.
#[cfg(all(feature = "sqlite", feature = "postgres", feature = "testing"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_agree_on_random_sequences() {
    use keyward::{PostgresStore, SqliteStore};
    postgres::with_schema(|url, schema| async move {
        let pg = PostgresStore::connect(&url)
            .await
            .unwrap()
            .with_schema(&schema)
            .unwrap();
        pg.migrate().await.unwrap();
        let lite = SqliteStore::connect("sqlite::memory:").await.unwrap();
        lite.migrate().await.unwrap();
        let mem = Arc::new(MemoryStore::new());
        let t0 = 1_800_000_000_000_000i64;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..150 {
            let ops = sequence(&mut rng, 40);
            let m = run(&mem, &rate_key(&mem).await, t0, &ops).await;
            let l = run(&lite, &rate_key(&lite).await, t0, &ops).await;
            let p = run(&pg, &rate_key(&pg).await, t0, &ops).await;
            assert_eq!(m, l, "case {case}: memory and SQLite\n{ops:?}");
            assert_eq!(m, p, "case {case}: memory and PostgreSQL\n{ops:?}");
        }
    })
    .await;
}
