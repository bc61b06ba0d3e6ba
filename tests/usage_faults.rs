//! The verifier's credit ledger under store faults and edge cases (review
//! findings F4–F6 of issue 12): a settle whose reply was lost mints nothing
//! when the sweeper settles again; a block of an ended refill period is
//! forfeited, not returned into the new balance; a request costing more
//! than the balance leaves at most a normal block leased; credits the
//! manager adds are spendable at once, without waiting out the backoff.
#![cfg(feature = "testing")]

use std::sync::Arc;

use keyward::chrono::{DateTime, TimeDelta, Utc};
use keyward::clock::Clock;
use keyward::prelude::*;
use keyward::store::{Fault, FaultyStore, Op};
use keyward::usage::{Credits, Refill};
use keyward::verify::VerifierConfig;

type Store = Arc<FaultyStore<MemoryStore>>;

fn start() -> DateTime<Utc> {
    // 23:59:00: the next daily refill is one minute away.
    "2026-01-10T23:59:00Z".parse().expect("time")
}

struct F {
    store: Store,
    manager: KeyManager<Store>,
    clock: ManualClock,
    registry: PermissionRegistry,
    live: Environment,
}

fn fixture() -> F {
    let registry = PermissionRegistry::builder()
        .permission("search")
        .build()
        .unwrap();
    let store: Store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let clock = ManualClock::new(start());
    let manager = KeyManager::builder(
        Arc::clone(&store),
        TokenFormat::new("mkh", &["live"]).unwrap(),
        Policy::new(registry.clone()),
    )
    .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    .clock(clock.clone())
    .verifier_config(VerifierConfig::default())
    .build()
    .unwrap();
    F {
        store,
        manager,
        clock,
        registry,
        live: Environment::new("live").unwrap(),
    }
}

fn billing() -> Actor {
    Actor::system("billing")
}

impl F {
    async fn metered(&self, credits: Credits) -> (String, KeyId) {
        let new = NewKey::new("contoso", "live", "metered")
            .permissions(PermissionGrant::only(["search"]))
            .credits(credits);
        let c = self.manager.create(&billing(), new).await.unwrap();
        (c.token.expose_secret().to_owned(), c.key.id.clone())
    }

    fn req(&self) -> VerifyRequest<'_> {
        VerifyRequest::new(&self.live, self.registry.get("search").unwrap())
    }

    async fn credits(&self, id: &KeyId) -> Credits {
        self.store
            .inner()
            .get(id)
            .await
            .unwrap()
            .unwrap()
            .usage
            .credits
            .unwrap()
    }
}

/// F4: the sweeper's settle commits but its reply is lost; the next sweep
/// settles again. The unspent block must come back once, not twice.
#[tokio::test]
async fn a_settle_whose_reply_was_lost_mints_nothing_when_sent_again() {
    let f = fixture();
    let (token, id) = f.metered(Credits::new(1_000).unwrap()).await;
    let v = f.manager.verifier();
    // Two checks at the same instant: the second lease is a full block.
    v.verify(&token, &f.req()).await.unwrap();
    v.verify(&token, &f.req()).await.unwrap();
    let held = f.credits(&id).await;
    assert!(held.leased > 2, "a block is leased: {held:?}");
    f.store.inject(Op::SettleCredits, Fault::LostReply);
    v.release_usage().await; // commits; the verifier sees an error
    f.store.heal();
    v.release_usage().await; // the retry
    let after = f.credits(&id).await;
    // The first settle returned the block; the retry returned nothing.
    assert_eq!((after.remaining, after.leased), (998, 0), "{after:?}");
    // And nothing more comes back from later sweeps.
    v.release_usage().await;
    assert_eq!(f.credits(&id).await.remaining, 998);
}

/// F4, the other side: a settle that failed without committing is retried
/// as spent only, so its unspent block is stranded (never minted).
#[tokio::test]
async fn a_settle_that_failed_before_commit_strands_its_block() {
    let f = fixture();
    let (token, id) = f.metered(Credits::new(1_000).unwrap()).await;
    let v = f.manager.verifier();
    v.verify(&token, &f.req()).await.unwrap();
    v.verify(&token, &f.req()).await.unwrap();
    let held = f.credits(&id).await;
    let block = held.leased - 2;
    f.store.inject(Op::SettleCredits, Fault::Fail);
    v.release_usage().await;
    f.store.heal();
    v.release_usage().await;
    let after = f.credits(&id).await;
    assert_eq!(after.leased, 0, "{after:?}");
    assert_eq!(after.remaining, 1_000 - 2 - block, "{after:?}");
}

/// F5: this server holds a block of yesterday's period; past midnight
/// another server's lease refills the balance to 1,000. Giving the old
/// block back must not add it to the new period's balance.
#[tokio::test]
async fn an_old_period_block_is_forfeited_not_returned_into_the_new_period() {
    let f = fixture();
    let refill = Refill::daily(1_000).unwrap();
    let (token, id) = f
        .metered(Credits::new(1_000).unwrap().with_refill(refill))
        .await;
    let v = f.manager.verifier();
    v.verify(&token, &f.req()).await.unwrap();
    v.verify(&token, &f.req()).await.unwrap();
    assert!(f.credits(&id).await.leased > 2);
    f.clock.advance(TimeDelta::minutes(2));
    let now = f.clock.now();
    let due = f.credits(&id).await.refill_due(now);
    let g = f.store.lease_credits(&id, 1, due).await.unwrap().unwrap();
    assert_eq!(g.remaining, 999);
    v.release_usage().await;
    let after = f.credits(&id).await;
    assert_eq!(after.remaining, 999, "{after:?}");
    // Only the other server's 1 credit is still leased.
    assert_eq!(after.leased, 1, "{after:?}");
}

/// A check in the new period forfeits the old period's block before it
/// leases from the refilled balance (the lease path; the give-back path
/// is the test above).
#[tokio::test]
async fn a_check_in_the_new_period_forfeits_the_old_block() {
    let f = fixture();
    let refill = Refill::daily(1_000).unwrap();
    let (token, id) = f
        .metered(Credits::new(1_000).unwrap().with_refill(refill))
        .await;
    let v = f.manager.verifier();
    v.verify(&token, &f.req()).await.unwrap();
    v.verify(&token, &f.req()).await.unwrap();
    f.clock.advance(TimeDelta::minutes(2));
    let due = f.credits(&id).await.refill_due(f.clock.now());
    f.store.lease_credits(&id, 1, due).await.unwrap().unwrap();
    // A check in the new period: the old block is forfeited, a new one
    // leased from the refilled balance.
    v.verify(&token, &f.req()).await.unwrap();
    v.release_usage().await;
    let after = f.credits(&id).await;
    // 1,000 refilled, 1 leased by the other server, 1 spent here.
    assert_eq!((after.remaining, after.leased), (998, 1), "{after:?}");
}

/// F6: a request costing more than the balance is denied and leaves at
/// most a normal block leased: the rest of the balance stays available
/// to other servers, and a crash could strand no more than a block.
#[tokio::test]
async fn a_cost_above_the_balance_does_not_lease_the_whole_balance() {
    let f = fixture();
    let (token, id) = f.metered(Credits::new(1_000_000).unwrap()).await;
    let v = f.manager.verifier();
    let denied = v
        .verify(&token, &f.req().credits(u64::MAX))
        .await
        .unwrap_err();
    assert_eq!(denied.reason, DenialReason::UsageExhausted);
    let c = f.credits(&id).await;
    let max_block = VerifierConfig::default().max_credit_block;
    assert!(c.leased <= max_block, "{c:?}");
    assert_eq!(c.remaining + c.leased, 1_000_000, "{c:?}");
    // Another server leases from the balance as usual.
    let g = f
        .store
        .lease_credits(&id, 500, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.granted, 500);
    // Checks the balance can pay still pass at the same instant, beyond
    // the block kept (no "exhausted" backoff for them), and everything is
    // accounted for once released.
    for _ in 0..5 {
        v.verify(&token, &f.req()).await.unwrap();
    }
    // The oversized cost is still denied.
    let denied = v
        .verify(&token, &f.req().credits(2_000_000))
        .await
        .unwrap_err();
    assert_eq!(denied.reason, DenialReason::UsageExhausted);
    v.release_usage().await;
    let after = f.credits(&id).await;
    assert_eq!(after.remaining + after.leased, 1_000_000 - 5, "{after:?}");
    assert_eq!(after.leased, 500, "{after:?}");
}

/// A request whose cost is above the block but within the balance still
/// passes, and leaves no more than a block behind.
#[tokio::test]
async fn a_cost_above_the_block_within_the_balance_passes() {
    let f = fixture();
    let (token, id) = f.metered(Credits::new(10_000).unwrap()).await;
    let v = f.manager.verifier();
    v.verify(&token, &f.req().credits(5_000)).await.unwrap();
    let c = f.credits(&id).await;
    assert_eq!(c.remaining + c.leased, 10_000, "{c:?}");
    v.release_usage().await;
    let after = f.credits(&id).await;
    assert_eq!((after.remaining, after.leased), (5_000, 0), "{after:?}");
}

/// Credits the manager adds to an exhausted key are spendable by this
/// process at once, not after its 1 s "exhausted" backoff.
#[tokio::test]
async fn credits_added_by_the_manager_clear_the_exhausted_backoff() {
    let f = fixture();
    let (token, id) = f.metered(Credits::new(1).unwrap()).await;
    let v = f.manager.verifier();
    v.verify(&token, &f.req()).await.unwrap();
    let denied = v.verify(&token, &f.req()).await.unwrap_err();
    assert_eq!(denied.reason, DenialReason::UsageExhausted);
    f.manager.add_credits(&billing(), &id, 5).await.unwrap();
    // Same instant (the clock does not move): no backoff to wait out.
    v.verify(&token, &f.req()).await.unwrap();
    f.manager.set_credits(&billing(), &id, 0).await.unwrap();
    v.release_usage().await;
    let denied = v.verify(&token, &f.req()).await.unwrap_err();
    assert_eq!(denied.reason, DenialReason::UsageExhausted);
    f.manager.set_credits(&billing(), &id, 3).await.unwrap();
    v.verify(&token, &f.req()).await.unwrap();
}
