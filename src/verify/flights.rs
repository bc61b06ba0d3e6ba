//! First proofs in flight, one per key id (crate-internal): concurrent
//! first uses of one key with the secret being proven wait for that proof
//! instead of each proving it.
//!
//! Both throttle buckets hold a token for every unproven check until its
//! secret proves right, so that a burst of concurrent wrong secrets cannot
//! all pass a peek. Without this, more than `failure_burst` (10) first uses
//! of one key at once (a CI matrix starting after a deploy) were refused as
//! throttled though none was wrong, and each ran argon2. Now the first
//! check of an id leads (takes the tokens, reads the store, runs argon2,
//! caches) and checks of the same id *and the same secret* (its cache
//! fingerprint, compared in constant time) that start meanwhile wait for
//! it to end, then look at the cache again: a hit that takes no token.
//! The lead ends as soon as the key is cached (before any rehash), or when
//! the check is refused or its future dropped. A check waits for one lead
//! at most ([`MAX_WAITS`]): after a lead that failed or was dropped it
//! goes through the buckets as before, and at most [`MAX_WAITERS`] checks
//! wait for one lead.
//!
//! A check with another secret never waits: it is admitted or refused
//! exactly as before, so wrong guesses (each its own secret) neither queue
//! here nor hold up the right one. An id has one lead at a time: while a
//! check with another secret (a guess, an old secret) leads, first uses of
//! the right secret do not group and meet the buckets as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::hash::{FINGERPRINT_LEN, same_fingerprint};

/// A lead: woken when it ends, the fingerprint of the secret it proves,
/// and how many checks have come to wait for it.
type Flight = (Arc<Notify>, [u8; FINGERPRINT_LEN], Arc<AtomicUsize>);

/// Ids with a lead in flight at most: past it, first uses do not wait
/// (each proves on its own, as before). A lead was admitted, so a check
/// that carries a client address holds its source's token while it leads.
const MAX_FLIGHTS: usize = 4096;

/// How many leads a check waits for before it goes through admission
/// without waiting: one. A lead that ends refused (a wrong secret, an
/// overloaded queue, an unavailable store) or dropped costs the checks
/// with its secret at most its own time, then they are checked as before.
pub(super) const MAX_WAITS: u32 = 1;

/// Checks that wait for one lead at most; later ones go through admission
/// as before (waiting costs no token, so the number is bounded here).
const MAX_WAITERS: usize = 64;

/// The ids whose first proof is in flight.
#[derive(Default)]
pub(crate) struct Flights {
    leads: Mutex<HashMap<Box<str>, Flight>>,
    /// `leads.len()`, read without the lock: most checks find it 0.
    count: AtomicUsize,
}

impl Flights {
    fn leads(&self) -> MutexGuard<'_, HashMap<Box<str>, Flight>> {
        self.leads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lead in flight for `id` proving the secret of `fingerprint`
    /// (computed only when `id` has a lead), if any: wait for it with
    /// [`Flights::wait`].
    pub(super) fn in_flight(
        &self,
        id: &str,
        fingerprint: impl FnOnce() -> [u8; FINGERPRINT_LEN],
    ) -> Option<Arc<Notify>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (notify, proving, waiters) = self.leads().get(id).cloned()?;
        if !same_fingerprint(&proving, &fingerprint()) {
            return None;
        }
        let earlier = waiters.fetch_add(1, Ordering::Relaxed);
        (earlier < MAX_WAITERS).then_some(notify)
    }

    /// Makes this check the lead for `id`: `None` when another check leads
    /// already (both prove; the race is a few instructions wide) or when
    /// [`MAX_FLIGHTS`] leads are in flight. The lead ends when the guard
    /// is dropped, whatever the outcome (a dropped future included).
    pub(super) fn lead(
        self: &Arc<Self>,
        id: &str,
        fingerprint: [u8; FINGERPRINT_LEN],
    ) -> Option<Lead> {
        let mut leads = self.leads();
        if leads.len() >= MAX_FLIGHTS || leads.contains_key(id) {
            return None;
        }
        let notify = Arc::new(Notify::new());
        leads.insert(
            id.into(),
            (Arc::clone(&notify), fingerprint, Arc::default()),
        );
        self.count.store(leads.len(), Ordering::Release);
        Some(Lead {
            flights: Arc::clone(self),
            id: id.into(),
            notify,
        })
    }

    /// Waits until the lead `flight` for `id` ends (at once if it already
    /// has).
    pub(super) async fn wait(&self, id: &str, flight: Arc<Notify>) {
        let notified = flight.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the lead is looked at again: a lead that ends
        // in between notifies this waiter, none is lost.
        notified.as_mut().enable();
        let current = self
            .leads()
            .get(id)
            .is_some_and(|(n, _, _)| Arc::ptr_eq(n, &flight));
        if current {
            notified.await;
        }
    }
}

/// A check's lead for an id: dropping it ends the lead and wakes the
/// checks waiting for it.
pub(crate) struct Lead {
    flights: Arc<Flights>,
    id: Box<str>,
    notify: Arc<Notify>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        {
            let mut leads = self.flights.leads();
            if leads
                .get(&*self.id)
                .is_some_and(|(n, _, _)| Arc::ptr_eq(n, &self.notify))
            {
                leads.remove(&*self.id);
            }
            self.flights.count.store(leads.len(), Ordering::Release);
        }
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    const A: [u8; FINGERPRINT_LEN] = [1; FINGERPRINT_LEN];
    const B: [u8; FINGERPRINT_LEN] = [2; FINGERPRINT_LEN];

    #[test]
    fn one_lead_per_id_and_it_ends_when_dropped() {
        let flights = Arc::new(Flights::default());
        assert!(flights.in_flight("abc", || A).is_none());
        let lead = flights.lead("abc", A).expect("first lead");
        assert!(
            flights.lead("abc", A).is_none(),
            "a second lead for the same id"
        );
        assert!(
            flights.lead("abc", B).is_none(),
            "or for another secret of it"
        );
        assert!(flights.in_flight("abc", || A).is_some());
        assert!(
            flights.in_flight("abc", || B).is_none(),
            "another secret never waits"
        );
        assert!(flights.in_flight("abd", || A).is_none());
        let other = flights.lead("abd", A).expect("another id leads on its own");
        drop(lead);
        assert!(flights.in_flight("abc", || A).is_none());
        assert!(flights.in_flight("abd", || A).is_some());
        drop(other);
        assert_eq!(flights.count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_fingerprint_is_computed_only_for_an_id_with_a_lead() {
        let flights = Arc::new(Flights::default());
        let never = || -> [u8; FINGERPRINT_LEN] { panic!("computed with no lead") };
        assert!(flights.in_flight("abc", never).is_none());
        let _lead = flights.lead("abd", A).expect("lead");
        assert!(flights.in_flight("abc", never).is_none());
    }

    #[test]
    fn a_waiter_wakes_when_the_lead_ends_and_never_waits_for_an_ended_one() {
        let flights = Arc::new(Flights::default());
        let lead = flights.lead("abc", A).expect("lead");
        let flight = flights.in_flight("abc", || A).expect("in flight");
        let wait = flights.wait("abc", Arc::clone(&flight));
        let mut wait = std::pin::pin!(wait);
        assert!(
            poll_once(wait.as_mut()).is_pending(),
            "waits while the lead runs"
        );
        drop(lead);
        assert!(
            poll_once(wait.as_mut()).is_ready(),
            "woken when the lead ends"
        );
        // A lead that ended before the wait began: no waiting at all.
        let ended = flights.wait("abc", flight);
        let mut ended = std::pin::pin!(ended);
        assert!(poll_once(ended.as_mut()).is_ready());
    }

    #[test]
    fn at_most_max_waiters_wait_for_one_lead() {
        let flights = Arc::new(Flights::default());
        let _lead = flights.lead("abc", A).expect("lead");
        for _ in 0..MAX_WAITERS {
            assert!(flights.in_flight("abc", || A).is_some());
        }
        assert!(
            flights.in_flight("abc", || A).is_none(),
            "one waiter too many"
        );
    }

    #[test]
    fn leads_stop_at_the_bound() {
        let flights = Arc::new(Flights::default());
        let leads: Vec<Lead> = (0..MAX_FLIGHTS)
            .map(|i| flights.lead(&format!("id{i}"), A).expect("under the bound"))
            .collect();
        assert!(flights.lead("one-more", A).is_none());
        drop(leads);
        assert!(flights.lead("one-more", A).is_some());
    }
}
