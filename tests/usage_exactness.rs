//! Many servers, one database: 8 verifiers (each its own `KeyManager` over
//! its own store handle) spend one key's 10,000 credits concurrently and
//! spend exactly 10,000; with one killed mid-way, at most its unspent block
//! is stranded (still `leased` in the store). And 4 verifiers sharing a
//! rate limit of 100 per second admit, in every one-second window, at most
//! what one GCRA would plus 10 %.
//!
//! Written once, generic over the store: run on a shared `MemoryStore`
//! here, and on PostgreSQL when `KEYWARD_TEST_POSTGRES_URL` is set (skipped
//! otherwise, failing when `KEYWARD_REQUIRE_POSTGRES=1`).

#[cfg(all(feature = "postgres", feature = "testing"))]
mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyward::chrono::{DateTime, TimeDelta, Utc};
use keyward::prelude::*;
use keyward::usage::{Credits, RateLimit, RateLimits};
use keyward::verify::VerifierConfig;

const CREDITS: u64 = 10_000;
const SERVERS: usize = 8;
/// `VerifierConfig::max_credit_block` (the default): the most a killed
/// server strands.
const MAX_BLOCK: u64 = 100;

fn registry() -> PermissionRegistry {
    PermissionRegistry::builder()
        .permission("search")
        .build()
        .expect("registry")
}

fn server<S: KeyStore>(store: S, clock: Option<ManualClock>) -> KeyManager<S> {
    let policy = Policy::new(registry())
        .with_rate_limits(["requests"])
        .expect("limits");
    let mut b = KeyManager::builder(store, TokenFormat::new("mkh", &["live"]).unwrap(), policy)
        .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
        .verifier_config(VerifierConfig {
            max_credit_block: MAX_BLOCK,
            ..VerifierConfig::default()
        });
    if let Some(c) = clock {
        b = b.clock(c);
    }
    b.build().expect("manager")
}

async fn credits_of<S: KeyStore>(store: &S, id: &KeyId) -> Credits {
    store
        .get(id)
        .await
        .expect("get")
        .expect("key")
        .usage
        .credits
        .expect("credits")
}

/// Spends on `verifier` until its credits are exhausted (or `stop_after`
/// successes); returns the successes.
async fn spend<S: KeyStore>(verifier: Verifier<S>, token: String, stop_after: u64) -> u64 {
    let registry = registry();
    let live = Environment::new("live").unwrap();
    let req = VerifyRequest::new(&live, registry.get("search").unwrap());
    let mut passed = 0;
    while passed < stop_after {
        match verifier.verify(&token, &req).await {
            Ok(_) => passed += 1,
            Err(d) if d.reason == DenialReason::UsageExhausted => break,
            Err(d) => panic!("unexpected denial: {d:?}"),
        }
    }
    passed
}

/// The exactness run over stores made by `handle` (each call: a new handle
/// on the same database). With `kill`, server 0 spends 500 while the
/// others run and is dropped without releasing.
async fn exactness<S, F, Fut>(handle: F, kill: bool)
where
    S: KeyStore + Clone,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let admin_store = handle().await;
    let admin = server(admin_store.clone(), None);
    let created = admin
        .create(
            &Actor::system("tests"),
            NewKey::new("contoso", "live", "shared")
                .permissions(PermissionGrant::only(["search"]))
                .credits(Credits::new(CREDITS).unwrap()),
        )
        .await
        .expect("create");
    let token = created.token.expose_secret().to_owned();
    let id = created.key.id.clone();

    let mut servers = Vec::new();
    for _ in 0..SERVERS {
        servers.push(server(handle().await, None));
    }
    // The victim runs beside the others, and after 500 successes is
    // killed: dropped with its block, without release_usage.
    let victim = if kill {
        let victim = servers.remove(0);
        // Proven before the race (its first check is a cold one), so it
        // holds a leased block when the others start.
        let first = spend(victim.verifier(), token.clone(), 1).await;
        let token = token.clone();
        Some(tokio::spawn(async move {
            let n = first + spend(victim.verifier(), token, 499).await;
            drop(victim);
            n
        }))
    } else {
        None
    };
    let tasks: Vec<_> = servers
        .iter()
        .map(|m| tokio::spawn(spend(m.verifier(), token.clone(), u64::MAX)))
        .collect();
    let mut total = 0;
    if let Some(v) = victim {
        let killed = v.await.expect("victim");
        // Usually killed at 500; on a slow machine the others may exhaust
        // the balance first (then it strands what it still holds).
        assert!((1..=500).contains(&killed), "{killed}");
        total += killed;
    }
    for t in tasks {
        total += t.await.expect("task");
    }
    assert!(total <= CREDITS, "overspent: {total}");
    let c = credits_of(&admin_store, &id).await;
    assert_eq!(c.remaining, 0, "{c:?}");
    for m in &servers {
        m.verifier().release_usage().await;
    }
    let c = credits_of(&admin_store, &id).await;
    if kill {
        let stranded = CREDITS - total;
        assert!(
            stranded <= MAX_BLOCK,
            "stranded {stranded} > the bound {MAX_BLOCK}"
        );
        assert!(
            c.leased >= stranded,
            "the store shows what is stranded: {c:?}, {stranded}"
        );
        assert_eq!(c.remaining, 0);
    } else {
        assert_eq!(total, CREDITS, "exactly the balance");
        assert_eq!((c.remaining, c.leased), (0, 0), "{c:?}");
    }
}

fn t0() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// 4 servers on one store share a limit of 100 per second; every
/// millisecond each tries one request. In every one-second window the
/// servers admit at most one GCRA's worth plus 10 % of the limit.
async fn rate_across_servers<S, F, Fut>(handle: F)
where
    S: KeyStore + Clone,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let clock = ManualClock::new(t0());
    let admin = server(handle().await, Some(clock.clone()));
    let limit = RateLimit::new("requests", 100, Duration::from_secs(1)).unwrap();
    let created = admin
        .create(
            &Actor::system("tests"),
            NewKey::new("contoso", "live", "shared")
                .permissions(PermissionGrant::only(["search"]))
                .rate_limits(RateLimits::new([limit]).unwrap()),
        )
        .await
        .expect("create");
    let token = created.token.expose_secret().to_owned();
    let mut verifiers = Vec::new();
    for _ in 0..4 {
        verifiers.push(server(handle().await, Some(clock.clone())));
    }
    let registry = registry();
    let live = Environment::new("live").unwrap();
    let req = VerifyRequest::new(&live, registry.get("search").unwrap()).spend("requests", 1);
    let steps = 5_000; // 5 s of 1 ms
    let mut admitted_at = Vec::new();
    for step in 0..steps {
        for m in &verifiers {
            match m.verifier().verify(&token, &req).await {
                Ok(_) => admitted_at.push(step),
                Err(d) if d.reason.code() == "rate_limited" => {}
                Err(d) => panic!("unexpected denial: {d:?}"),
            }
        }
        clock.advance(TimeDelta::milliseconds(1));
    }
    // One GCRA (burst 100, one per 10 ms) admits at most 100 + L / 10 ms
    // in a window of L ms (199 in a second) while its burst lasts, and 100
    // (101 with both ends) in any window once the burst is spent: from the
    // first second on under this flood.
    let window = 1_000;
    let mut worst_steady = 0;
    for a in 0..(steps - window) {
        let n = admitted_at
            .iter()
            .filter(|&&t| t >= a && t < a + window)
            .count();
        let one_gcra = if a < window { 199 } else { 100 };
        assert!(
            n <= one_gcra + 10,
            "window at {a} ms: {n} admitted, one GCRA: {one_gcra}"
        );
        if a >= window {
            worst_steady = worst_steady.max(n);
        }
    }
    println!(
        "rate across 4 servers: {} admitted in 5 s, worst steady 1 s window {worst_steady}",
        admitted_at.len()
    );
    assert!(worst_steady <= 110, "{worst_steady}");
    let total = admitted_at.len();
    assert!(total <= 100 + 500 + 10, "{total} in 5 s");
    assert!(total >= 500, "the limit is not starved: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_servers_spend_exactly_the_balance_memory() {
    let store = Arc::new(MemoryStore::new());
    exactness(|| std::future::ready(Arc::clone(&store)), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_strands_at_most_its_block_memory() {
    let store = Arc::new(MemoryStore::new());
    exactness(|| std::future::ready(Arc::clone(&store)), true).await;
}

#[tokio::test]
async fn rate_limit_across_four_servers_memory() {
    let store = Arc::new(MemoryStore::new());
    rate_across_servers(|| std::future::ready(Arc::clone(&store))).await;
}

#[cfg(all(feature = "postgres", feature = "testing"))]
mod on_postgres {
    use super::*;
    use keyward::PostgresStore;

    async fn handle(url: &str, schema: &str) -> PostgresStore {
        let store = PostgresStore::connect(url)
            .await
            .expect("connect")
            .with_schema(schema)
            .expect("schema name");
        store.migrate().await.expect("migrate");
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn eight_servers_spend_exactly_the_balance_postgres() {
        super::postgres::with_schema(|url, schema| async move {
            exactness(|| handle(&url, &schema), false).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_killed_server_strands_at_most_its_block_postgres() {
        super::postgres::with_schema(|url, schema| async move {
            exactness(|| handle(&url, &schema), true).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_limit_across_four_servers_postgres() {
        super::postgres::with_schema(|url, schema| async move {
            rate_across_servers(|| handle(&url, &schema)).await;
        })
        .await;
    }
}

/// One key with a limit of 100 per 10 s (a token per 100 ms, a lease
/// spendable for 1 s), on a shared `MemoryStore` and clock, and `n`
/// servers besides the one that made it.
async fn servers_of_one_limit<const N: usize>() -> (
    ManualClock,
    String,
    [KeyManager<Arc<MemoryStore>>; N],
    KeyManager<Arc<MemoryStore>>,
) {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let admin = server(Arc::clone(&store), Some(clock.clone()));
    let limit = RateLimit::new("requests", 100, Duration::from_secs(10)).unwrap();
    let created = admin
        .create(
            &Actor::system("tests"),
            NewKey::new("contoso", "live", "shared")
                .permissions(PermissionGrant::only(["search"]))
                .rate_limits(RateLimits::new([limit]).unwrap()),
        )
        .await
        .unwrap();
    let token = created.token.expose_secret().to_owned();
    let servers = std::array::from_fn(|_| server(Arc::clone(&store), Some(clock.clone())));
    (clock, token, servers, admin)
}

/// Sends `n` requests through `m`; how many passed.
async fn passed(m: &KeyManager<Arc<MemoryStore>>, token: &str, n: usize) -> usize {
    passed_costing(m, token, n, 1).await
}

/// Sends `n` requests of one request each through `servers` in turn; how
/// many passed.
async fn in_turn(servers: &[&KeyManager<Arc<MemoryStore>>], token: &str, n: usize) -> usize {
    let mut ok = 0;
    for m in servers.iter().cycle().take(n) {
        ok += passed(m, token, 1).await;
    }
    ok
}

/// Sends `n` requests of `cost` requests each through `m`; how many passed.
async fn passed_costing(
    m: &KeyManager<Arc<MemoryStore>>,
    token: &str,
    n: usize,
    cost: u32,
) -> usize {
    let registry = registry();
    let live = Environment::new("live").unwrap();
    let req = VerifyRequest::new(&live, registry.get("search").unwrap()).spend("requests", cost);
    let mut ok = 0;
    for _ in 0..n {
        match m.verifier().verify(token, &req).await {
            Ok(_) => ok += 1,
            Err(d) if d.reason.code() == "rate_limited" => {}
            Err(d) => panic!("unexpected denial: {d:?}"),
        }
    }
    ok
}

/// Two servers: A spends 2 requests (holding the rest of its block),
/// `after` later B drains the bucket, then both ask, A giving its block
/// back: how many passed at that instant.
async fn spent_then_drained(after: TimeDelta) -> usize {
    let (clock, token, [a, b], _admin) = servers_of_one_limit::<2>().await;
    assert_eq!(passed(&a, &token, 2).await, 2);
    clock.advance(after);
    let mut at_once = passed(&b, &token, 400).await;
    at_once += in_turn(&[&a, &b], &token, 800).await;
    at_once
}

/// Tokens given back after the store's bucket restarted (its TAT behind
/// the clock, so the next lease forgot every charge before) are not
/// counted twice. Before 2026-12-03 they were: an outside review measured
/// 124 requests passing at one instant under a limit of 100 with two
/// servers, and 128 with four whose give-backs interleave (DESIGN.md
/// allows 110). The store now counts restarts and refuses a give-back
/// leased before one.
#[tokio::test]
async fn tokens_given_back_after_the_bucket_restarted_are_not_counted_twice() {
    // Two servers: A leases a block and spends 2 of it; 11 s later (A's
    // block expired, the bucket full again) B drains the bucket, then A
    // gives its tokens back.
    let at_once = spent_then_drained(TimeDelta::seconds(11)).await;
    assert!(at_once <= 100, "two servers: {at_once} at one instant");
    assert!(at_once >= 90, "two servers: {at_once}: the bucket was full");

    // Four servers: S1, S2 and S3 lease and spend 2 each; a second on, S1
    // and S2 give their blocks back (the TAT moves back, which S3 cannot
    // see); 4.4 s later the bucket is full, D drains it, and S3 gives back
    // (on a request, and again with the sweep a graceful shutdown runs).
    for sweep in [false, true] {
        let (clock, token, [s1, s2, s3, d], _admin) = servers_of_one_limit::<4>().await;
        for m in [&s1, &s2, &s3] {
            assert_eq!(passed(m, &token, 2).await, 2);
        }
        clock.advance(TimeDelta::seconds(1));
        for m in [&s1, &s2] {
            assert_eq!(passed(m, &token, 1).await, 1);
        }
        clock.advance(TimeDelta::milliseconds(4_400));
        let mut at_once = passed(&d, &token, 400).await;
        if sweep {
            s3.verifier().release_usage().await;
        }
        at_once += in_turn(&[&s3, &s1, &s2, &d], &token, 800).await;
        assert!(
            at_once <= 110,
            "four servers (sweep {sweep}): {at_once} at one instant"
        );
    }
}

/// What a give-back can no longer credit is bounded: servers that leased
/// first hold unspent blocks (48 tokens in all) when a third spends 48; a
/// give-back may not move the bucket back past where a later lease found
/// it (0.1 s ahead of the clock here), so at 5.2 s, where one GCRA would
/// be full again, the 48 the store still charges are lost until they
/// drain: at least 100 − 48 pass, and never more than the limit allows.
/// (The steady state is not starved: `rate_limit_across_four_servers`.)
#[tokio::test]
async fn what_give_backs_cannot_credit_is_at_most_the_unspent_blocks() {
    let (clock, token, [s1, s2, s4], _admin) = servers_of_one_limit::<3>().await;
    for m in [&s1, &s2] {
        assert_eq!(passed(m, &token, 2).await, 2);
    }
    assert_eq!(passed(&s4, &token, 48).await, 48);
    clock.advance(TimeDelta::milliseconds(5_200));
    let mut at_once = 0;
    at_once += in_turn(&[&s1, &s2, &s4], &token, 900).await;
    assert!(
        at_once >= 100 - 48,
        "{at_once}: more was lost than the unspent blocks"
    );
    assert!(at_once <= 110, "{at_once} at one instant");
}

/// A give-back credits no time that has passed, though no restart ever
/// happens (the TAT stays ahead of the clock at every lease): the charge
/// of A's unspent tokens has mostly elapsed when another server leases on
/// top of it, and without that charge the lease would have started from
/// the clock. (With the restart count alone, found by an outside review:
/// 123 at one instant; with three such servers, 171.)
#[tokio::test]
async fn a_give_back_after_its_charge_mostly_elapsed_is_not_counted_twice() {
    // A leases 1 + 25 and spends 2 at T: TAT = T + 2.6 s (26 × 100 ms).
    // 2.5 s on: A's block expired (1 s), the TAT still 100 ms ahead: no
    // restart. B drains the bucket (99), then A gives back its 24.
    let at_once = spent_then_drained(TimeDelta::milliseconds(2_500)).await;
    // A's 2 requests at T are long out of a GCRA's bucket (0.2 s): one
    // GCRA admits 100 now; DESIGN.md allows 110.
    assert!(at_once <= 110, "two servers: {at_once} at one instant");
}

/// The same with three servers giving back after their charges mostly
/// elapsed.
#[tokio::test]
async fn give_backs_of_three_servers_after_their_charges_mostly_elapsed_are_not_counted_twice() {
    let (clock, token, [s1, s2, s3, d], _admin) = servers_of_one_limit::<4>().await;
    for m in [&s1, &s2, &s3] {
        assert_eq!(passed(m, &token, 2).await, 2);
    }
    // TAT = T + 7.8 s; 7.7 s on, no restart.
    clock.advance(TimeDelta::milliseconds(7_700));
    let mut at_once = passed(&d, &token, 400).await;
    at_once += in_turn(&[&s1, &s2, &s3, &d], &token, 1600).await;
    assert!(at_once <= 110, "four servers: {at_once} at one instant");
}

/// A limit removed and added back starts a new bucket; tokens leased from
/// the old one are not given back into the new one. Servers A and B lease
/// from the old bucket (A holds 24 unspent), an administrator removes the
/// limit and adds it back, and a second later the new bucket starts full:
/// at most 100 (110 with DESIGN.md's tolerance) pass at one instant. (An
/// outside review found 124 when every bucket's restart count started
/// from 0, so that the old give-back matched the new bucket.)
#[tokio::test]
async fn tokens_of_a_bucket_since_dropped_are_not_given_back_into_its_successor() {
    let (clock, token, [a, b], admin) = servers_of_one_limit::<2>().await;
    let format = TokenFormat::new("mkh", &["live"]).unwrap();
    let id = KeyId::new(format.parse(&token).unwrap().key_id()).unwrap();
    assert_eq!(passed(&a, &token, 2).await, 2);
    assert_eq!(passed(&b, &token, 26).await, 26);
    let limit = RateLimit::new("requests", 100, Duration::from_secs(10)).unwrap();
    for limits in [RateLimits::default(), RateLimits::new([limit]).unwrap()] {
        let edit = keyward::KeyEdit {
            rate_limits: Some(limits),
            ..keyward::KeyEdit::default()
        };
        admin
            .edit(&Actor::system("tests"), &id, edit)
            .await
            .unwrap();
    }
    clock.advance(TimeDelta::milliseconds(1_001));
    let mut at_once = passed(&b, &token, 1).await;
    at_once += passed(&a, &token, 1).await;
    at_once += in_turn(&[&a, &b], &token, 800).await;
    assert!(
        at_once <= 110,
        "{at_once} at one instant on a new bucket of 100"
    );
}

/// A server's unspent block goes back whole when no lease came after it:
/// with a limit of 1,000 a day, the TAT stays ahead of the clock for
/// days, so before 2026-12-03 20:00 UTC a block given back when it
/// expired (a second after its lease) was credited only as far as the
/// lease had found the TAT ahead (one token): 247 of a publisher's daily
/// requests were lost each time (found when CI's smoke test saw 996 left
/// where 997 were due). The store now credits its latest lease's tokens
/// whole.
#[tokio::test]
async fn an_expired_block_goes_back_whole_when_no_lease_came_after_it() {
    let (clock, token, m) = one_server_of_a_daily_limit().await;
    // A lease of 1, then a block (250 at most), 2 of it spent.
    assert_eq!(passed(&m, &token, 3).await, 3);
    // The block expires (a lease is spendable for 1 s); the next request
    // gives it back and leases again.
    clock.advance(TimeDelta::milliseconds(1_500));
    let left = passed(&m, &token, 2_000).await;
    assert_eq!(left, 1_000 - 3, "what a day's bucket has left after 3");
}

/// One server and a key limited to 1,000 requests a day.
async fn one_server_of_a_daily_limit() -> (ManualClock, String, KeyManager<Arc<MemoryStore>>) {
    let clock = ManualClock::new(t0());
    let m = server(Arc::new(MemoryStore::new()), Some(clock.clone()));
    let limit = RateLimit::new("requests", 1_000, Duration::from_secs(86_400)).unwrap();
    let created = m
        .create(
            &Actor::system("tests"),
            NewKey::new("contoso", "live", "daily")
                .permissions(PermissionGrant::only(["search"]))
                .rate_limits(RateLimits::new([limit]).unwrap()),
        )
        .await
        .unwrap();
    let token = created.token.expose_secret().to_owned();
    (clock, token, m)
}

/// The same when requests cost more than what is left of a block: the
/// server leases again while it still holds tokens of the block before,
/// and gives back both leases' tokens, those the latest lease granted
/// under its number (whole). With all of them under the earliest lease's
/// number an outside review found 251 requests of cost 3 passing where
/// 333 were due (245 of 248 tokens lost, 2026-12-03).
#[tokio::test]
async fn a_block_goes_back_whole_when_requests_cost_more_than_what_is_left() {
    let (clock, token, m) = one_server_of_a_daily_limit().await;
    // A lease of 3, then a block of 250 (83 requests, 1 token left); the
    // 85th request leases another block while it holds that token.
    let first = passed_costing(&m, &token, 85, 3).await;
    assert_eq!(first, 85);
    // Both blocks expire; the next request gives back 248 and leases.
    clock.advance(TimeDelta::milliseconds(1_500));
    let later = passed_costing(&m, &token, 2_000, 3).await;
    assert_eq!(
        first + later,
        1_000 / 3,
        "{first} + {later} requests of cost 3 under 1,000 tokens a day"
    );
}
