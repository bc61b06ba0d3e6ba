//! Rate limits and credits through the verifier (MemoryStore, ManualClock):
//! GCRA burst then one per interval, credits spent exactly, refill once per
//! period, denials spend nothing, typed misuse, store failures deny, unspent
//! credits go back, and the store round trips per 1,000 checks.

use std::sync::Arc;
use std::time::Duration;

use keyward::chrono::{DateTime, TimeDelta, Utc};
use keyward::prelude::*;
use keyward::store::{FaultyStore, Op};
use keyward::usage::{CreditChange, Credits, RateLimit, RateLimits, Refill, UsageError};
use keyward::verify::{DenialKind, VerifierConfig};

type Store = Arc<FaultyStore<MemoryStore>>;

/// The usage round trips (leases, settles, returns) `FaultyStore` counted.
const USAGE_TRIPS: [Op; 4] = [
    Op::LeaseCredits,
    Op::SettleCredits,
    Op::LeaseRate,
    Op::ReturnRate,
];

fn usage_trips(store: &Store) -> u64 {
    USAGE_TRIPS.iter().map(|op| store.calls(*op)).sum()
}

fn start() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().expect("time")
}

struct Fixture {
    store: Store,
    manager: KeyManager<Store>,
    clock: ManualClock,
    registry: PermissionRegistry,
    live: Environment,
}

fn fixture_with(config: VerifierConfig) -> Fixture {
    let registry = PermissionRegistry::builder()
        .permission("search")
        .build()
        .expect("registry");
    let policy = Policy::new(registry.clone())
        .with_rate_limits(["requests", "publish"])
        .expect("limits");
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let clock = ManualClock::new(start());
    let manager = KeyManager::builder(
        store.clone(),
        TokenFormat::new("mkh", &["live"]).expect("format"),
        policy,
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .clock(clock.clone())
    .verifier_config(config)
    .build()
    .expect("manager");
    Fixture {
        store,
        manager,
        clock,
        registry,
        live: Environment::new("live").expect("env"),
    }
}

fn fixture() -> Fixture {
    fixture_with(VerifierConfig::default())
}

impl Fixture {
    async fn key(&self, limits: Vec<RateLimit>, credits: Option<Credits>) -> (String, KeyId) {
        let mut new = NewKey::new("contoso", "live", "metered")
            .permissions(PermissionGrant::only(["search"]))
            .rate_limits(RateLimits::new(limits).expect("limits"));
        if let Some(c) = credits {
            new = new.credits(c);
        }
        let created = self
            .manager
            .create(&Actor::system("tests"), new)
            .await
            .expect("create");
        (
            created.token.expose_secret().to_owned(),
            created.key.id.clone(),
        )
    }

    fn req(&self) -> VerifyRequest<'_> {
        VerifyRequest::new(&self.live, self.registry.get("search").expect("perm"))
    }

    async fn credits(&self, id: &KeyId) -> Credits {
        self.store
            .inner()
            .get(id)
            .await
            .expect("get")
            .expect("key")
            .usage
            .credits
            .expect("credits")
    }
}

fn per_second(name: &str, limit: u32) -> RateLimit {
    RateLimit::new(name, limit, Duration::from_secs(1)).expect("limit")
}

#[tokio::test]
async fn a_burst_of_the_limit_then_one_per_interval_with_exact_retry_after() {
    let f = fixture();
    let (token, _) = f.key(vec![per_second("requests", 10)], None).await;
    let v = f.manager.verifier();
    let req = f.req().spend("requests", 1);
    for i in 0..10 {
        let key = v.verify(&token, &req).await.expect("within the burst");
        let status = key.rate_limit().expect("status");
        assert_eq!((status.name.as_str(), status.limit), ("requests", 10));
        assert!(status.remaining <= 9 - i, "{i}: {status:?}");
    }
    let denied = v.verify(&token, &req).await.unwrap_err();
    assert_eq!(denied.kind(), DenialKind::Limited);
    assert_eq!(denied.reason.code(), "rate_limited");
    assert_eq!(denied.retry_after, Some(Duration::from_millis(100)));
    let DenialReason::RateLimited(status) = &denied.reason else {
        panic!("{denied:?}")
    };
    assert_eq!((status.remaining, status.limit), (0, 10));
    assert_eq!(status.window, Duration::from_secs(1));
    // One microsecond early: still denied, with the store not asked again.
    let trips = f.store.calls(Op::LeaseRate);
    f.clock.advance(TimeDelta::microseconds(99_999));
    let early = v.verify(&token, &req).await.unwrap_err();
    assert_eq!(early.retry_after, Some(Duration::from_micros(1)));
    assert_eq!(f.store.calls(Op::LeaseRate), trips);
    // Then exactly one per interval.
    for _ in 0..5 {
        f.clock.advance(TimeDelta::microseconds(1));
        v.verify(&token, &req).await.expect("one token back");
        let again = v.verify(&token, &req).await.unwrap_err();
        assert_eq!(again.retry_after, Some(Duration::from_millis(100)));
        f.clock.advance(TimeDelta::microseconds(99_999));
    }
}

#[tokio::test]
async fn credits_are_spent_exactly_to_zero_then_usage_exhausted() {
    let f = fixture();
    let (token, id) = f.key(vec![], Some(Credits::new(250).unwrap())).await;
    let v = f.manager.verifier();
    let req = f.req();
    let mut passed = 0;
    let denial = loop {
        match v.verify(&token, &req).await {
            Ok(key) => {
                passed += 1;
                assert_eq!(
                    key.credits_remaining(),
                    Some(250 - passed),
                    "this server's view"
                );
            }
            Err(d) => break d,
        }
        assert!(passed <= 250, "overspent");
    };
    assert_eq!(passed, 250);
    assert_eq!(denial.reason, DenialReason::UsageExhausted);
    assert_eq!(denial.kind(), DenialKind::Exhausted);
    assert_eq!(denial.retry_after, None, "no refill");
    v.release_usage().await;
    let c = f.credits(&id).await;
    assert_eq!((c.remaining, c.leased), (0, 0));
    // Credits added by management are spendable after the short backoff.
    f.store
        .inner()
        .change_credits(&id, CreditChange::Add(2))
        .await
        .unwrap();
    f.clock.advance(TimeDelta::seconds(2));
    let cost2 = f.req().credits(2);
    v.verify(&token, &cost2)
        .await
        .expect("two added, two spent");
    assert_eq!(
        v.verify(&token, &req).await.unwrap_err().reason,
        DenialReason::UsageExhausted
    );
}

#[tokio::test]
async fn a_refill_applies_exactly_once_per_period() {
    let f = fixture();
    let daily = Credits::new(3)
        .unwrap()
        .with_refill(Refill::daily(3).unwrap());
    let (token, id) = f.key(vec![], Some(daily)).await;
    let v = f.manager.verifier();
    let req = f.req();
    f.clock.advance(TimeDelta::hours(23));
    for _ in 0..3 {
        v.verify(&token, &req).await.expect("the day's credits");
    }
    let denied = v.verify(&token, &req).await.unwrap_err();
    assert_eq!(denied.reason, DenialReason::UsageExhausted);
    assert_eq!(
        denied.retry_after,
        Some(Duration::from_secs(3600)),
        "until the refill at midnight"
    );
    // Over the day boundary: refilled once, spent once more.
    f.clock.advance(TimeDelta::hours(1));
    for _ in 0..3 {
        v.verify(&token, &req).await.expect("refilled");
    }
    assert_eq!(
        v.verify(&token, &req).await.unwrap_err().reason,
        DenialReason::UsageExhausted
    );
    f.clock.advance(TimeDelta::hours(12));
    assert_eq!(
        v.verify(&token, &req).await.unwrap_err().reason,
        DenialReason::UsageExhausted,
        "not refilled twice in one day"
    );
    v.release_usage().await;
    let c = f.credits(&id).await;
    assert_eq!((c.remaining, c.leased), (0, 0));

    // Monthly on day 28, over February's end.
    let monthly = Credits::new(2)
        .unwrap()
        .with_refill(Refill::monthly(28, 2).unwrap());
    let (token, _) = f.key(vec![], Some(monthly)).await;
    f.clock.set("2026-02-27T12:00:00Z".parse().unwrap());
    let mut passed = 0;
    while v.verify(&token, &req).await.is_ok() {
        passed += 1;
    }
    assert_eq!(passed, 2, "the balance it was created with");
    f.clock.set("2026-02-28T00:00:00Z".parse().unwrap());
    passed = 0;
    while v.verify(&token, &req).await.is_ok() {
        passed += 1;
    }
    assert_eq!(passed, 2, "refilled on the 28th");
    f.clock.set("2026-03-27T23:59:59Z".parse().unwrap());
    assert!(
        v.verify(&token, &req).await.is_err(),
        "not before the next 28th"
    );
}

#[tokio::test]
async fn a_denial_spends_nothing_anywhere() {
    let f = fixture();
    let publish = RateLimit::new("publish", 2, Duration::from_secs(3600)).unwrap();
    let (token, id) = f
        .key(
            vec![per_second("requests", 100), publish],
            Some(Credits::new(100).unwrap()),
        )
        .await;
    let v = f.manager.verifier();
    let both = f.req().spend("requests", 1).spend("publish", 1);
    for _ in 0..2 {
        v.verify(&token, &both).await.expect("publish twice");
    }
    for _ in 0..5 {
        let denied = v.verify(&token, &both).await.unwrap_err();
        let DenialReason::RateLimited(status) = &denied.reason else {
            panic!("{denied:?}")
        };
        assert_eq!(status.name.as_str(), "publish");
    }
    // The credits and the `requests` limit were not spent by the denials.
    let key = v
        .verify(&token, &f.req().spend("requests", 1))
        .await
        .unwrap();
    assert_eq!(key.credits_remaining(), Some(97));
    v.release_usage().await;
    assert_eq!(f.credits(&id).await.remaining, 97);
    // Credits short: the rate limit is not spent either.
    let (token, _) = f
        .key(
            vec![per_second("requests", 3)],
            Some(Credits::new(1).unwrap()),
        )
        .await;
    let pricey = f.req().spend("requests", 1).credits(2);
    for _ in 0..5 {
        let denied = v.verify(&token, &pricey).await.unwrap_err();
        assert_eq!(denied.reason, DenialReason::UsageExhausted);
    }
    let cheap = f.req().spend("requests", 1);
    let key = v.verify(&token, &cheap).await.expect("the limit is intact");
    assert_eq!(key.rate_limit().unwrap().remaining, 2);
}

#[tokio::test]
async fn bad_spends_are_typed_and_name_the_limit() {
    let f = fixture();
    let (token, _) = f.key(vec![per_second("requests", 10)], None).await;
    let (plain, _) = f.key(vec![], None).await;
    let v = f.manager.verifier();
    for t in [&token, &plain] {
        let d = v.verify(t, &f.req().spend("publsh", 1)).await.unwrap_err();
        assert_eq!(d.kind(), DenialKind::Misuse);
        assert_eq!(
            d.reason,
            DenialReason::BadSpend(UsageError::UnknownLimit {
                name: "publsh".into()
            })
        );
        let d = v
            .verify(t, &f.req().spend("requests", 0))
            .await
            .unwrap_err();
        assert!(
            matches!(&d.reason, DenialReason::BadSpend(UsageError::BadSpend { name, .. }) if &**name == "requests"),
            "{d:?}"
        );
        let five = f
            .req()
            .spend("requests", 1)
            .spend("requests", 1)
            .spend("requests", 1)
            .spend("requests", 1)
            .spend("publish", 1);
        let d = v.verify(t, &five).await.unwrap_err();
        assert!(
            matches!(&d.reason, DenialReason::BadSpend(UsageError::BadSpend { name, .. }) if &**name == "publish"),
            "{d:?}"
        );
    }
    // A declared limit the key does not carry costs nothing.
    v.verify(&plain, &f.req().spend("publish", 1))
        .await
        .expect("the key has no publish limit");
}

#[tokio::test]
async fn store_failures_while_leasing_deny() {
    let f = fixture();
    let (token, _) = f
        .key(
            vec![per_second("requests", 10)],
            Some(Credits::new(10).unwrap()),
        )
        .await;
    let (limited, _) = f.key(vec![per_second("requests", 10)], None).await;
    let v = f.manager.verifier();
    let req = f.req().spend("requests", 1);
    v.verify(&token, &req).await.expect("proven and cached");
    v.verify(&limited, &req).await.expect("proven and cached");
    for op in USAGE_TRIPS {
        f.store.fail(op);
    }
    // The first blocks were one token each: the next check must lease.
    for t in [&token, &limited] {
        let d = v.verify(t, &req).await.unwrap_err();
        assert_eq!(d.reason, DenialReason::StoreUnavailable);
        assert_eq!(d.kind(), DenialKind::Unavailable);
    }
    f.store.heal();
    v.verify(&token, &req).await.expect("the store is back");
}

#[tokio::test]
async fn release_usage_returns_unspent_credits() {
    let f = fixture();
    let (token, id) = f.key(vec![], Some(Credits::new(1_000).unwrap())).await;
    let v = f.manager.verifier();
    for _ in 0..5 {
        v.verify(&token, &f.req()).await.unwrap();
    }
    let held = f.credits(&id).await;
    assert!(held.remaining < 995, "a block is leased: {held:?}");
    assert_eq!(held.remaining + held.leased, 1_000);
    v.release_usage().await;
    let c = f.credits(&id).await;
    assert_eq!((c.remaining, c.leased), (995, 0));
    // Checks after a release lease again.
    v.verify(&token, &f.req()).await.unwrap();
    v.release_usage().await;
    assert_eq!(f.credits(&id).await.remaining, 994);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_returns_an_idle_keys_credits() {
    let f = fixture_with(VerifierConfig {
        usage_idle: Duration::from_millis(200),
        ..VerifierConfig::default()
    });
    let (token, id) = f.key(vec![], Some(Credits::new(1_000).unwrap())).await;
    let v = f.manager.verifier();
    for _ in 0..5 {
        v.verify(&token, &f.req()).await.unwrap();
    }
    assert!(f.credits(&id).await.leased > 0);
    // Idle on the verifier's clock; the sweeper runs on real time.
    f.clock.advance(TimeDelta::seconds(1));
    let mut settled = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = f.credits(&id).await;
        if c.leased == 0 {
            settled = Some(c);
            break;
        }
    }
    let c = settled.expect("the sweeper settled within 10 s");
    assert_eq!(c.remaining, 995);
}

/// Store round trips for usage per 1,000 checks of a key with 10,000
/// credits and a generous limit, 10,000 checks a second on the verifier's
/// clock. Goal: at most 20.
#[tokio::test]
async fn store_round_trips_per_thousand_checks() {
    let f = fixture();
    let (token, _) = f
        .key(
            vec![per_second("requests", 100_000)],
            Some(Credits::new(10_000).unwrap()),
        )
        .await;
    let v = f.manager.verifier();
    let req = f.req().spend("requests", 1);
    v.verify(&token, &req).await.expect("proven");
    let before = usage_trips(&f.store);
    for _ in 0..1_000 {
        f.clock.advance(TimeDelta::microseconds(100));
        v.verify(&token, &req).await.expect("within limits");
    }
    let trips = usage_trips(&f.store) - before;
    println!("usage store round trips per 1,000 checks: {trips}");
    assert!(trips <= 20, "{trips} round trips per 1,000 checks");
}

/// An edit of a key's limits (a new generation) reaches the ledger when
/// the key is next compiled: the new limit applies, the old tokens of a
/// changed limit are not spent under it.
#[tokio::test]
async fn an_edited_limit_applies_after_invalidation() {
    let f = fixture();
    let (token, id) = f.key(vec![per_second("requests", 10)], None).await;
    let v = f.manager.verifier();
    let req = f.req().spend("requests", 1);
    for _ in 0..3 {
        v.verify(&token, &req).await.unwrap();
    }
    let mut record = f.store.inner().get(&id).await.unwrap().unwrap();
    let generation = record.generation;
    record.usage.rate_limits =
        RateLimits::new([RateLimit::new("requests", 2, Duration::from_secs(10)).unwrap()]).unwrap();
    record.generation += 1;
    f.store.inner().update(&record, generation).await.unwrap();
    v.invalidate(&id);
    let mut passed = 0;
    let denial = loop {
        match v.verify(&token, &req).await {
            Ok(key) => {
                passed += 1;
                assert_eq!(key.rate_limit().unwrap().limit, 2);
            }
            Err(d) => break d,
        }
        assert!(passed <= 2, "more than the new limit");
    };
    let DenialReason::RateLimited(status) = denial.reason else {
        panic!("{denial:?}")
    };
    assert_eq!((status.limit, status.window), (2, Duration::from_secs(10)));
}
