//! Alarms: one thread for the process that wakes the cold checks waiting
//! for a token of their source when one will have refilled, or when their
//! time to wait is up (a refill is no event that wakes them).
//!
//! keyward's own thread, started by the first alarm: a waiting check then
//! needs no tokio timer (a runtime may be built without one, where
//! `tokio::time::sleep` panics) and no runtime at all (a caller may poll
//! checks with any executor).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::futures::Notified;
use tokio::sync::oneshot;

/// Alarms set at once at most, over every verifier of the process (each
/// waiting check sets one at a time, and at most 4,096 wait per manager);
/// past it, alarms of checks that stopped waiting are dropped first, and
/// if none has, no alarm is set.
const MAX_ALARMS: usize = 8192;

/// One alarm: rings `ring` at `at`.
struct Alarm {
    at: Instant,
    /// Orders alarms set for the same instant.
    seq: u64,
    ring: oneshot::Sender<()>,
}

// The heap is a max-heap: the earliest alarm is the greatest.
impl Ord for Alarm {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Alarm {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Alarm {}

#[derive(Default)]
struct State {
    alarms: BinaryHeap<Alarm>,
    seq: u64,
    /// Whether the thread runs (or could not be started: then `false`
    /// and every `set` tries again).
    started: bool,
}

#[derive(Default)]
struct Alarms {
    state: Mutex<State>,
    /// Signalled when an alarm earlier than all others is set.
    earlier: Condvar,
}

static ALARMS: OnceLock<Alarms> = OnceLock::new();

impl Alarms {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread: rings every alarm that is due, then sleeps until the
    /// next one (or until an earlier one is set).
    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while state.alarms.peek().is_some_and(|a| a.at <= now) {
                due.extend(state.alarms.pop());
            }
            if !due.is_empty() {
                // Rung without the lock: a waker then never runs under it.
                drop(state);
                for alarm in due {
                    // A check that stopped waiting dropped its receiver.
                    let _ = alarm.ring.send(());
                }
                state = self.lock();
                continue;
            }
            state = match state.alarms.peek().map(|a| a.at - now) {
                None => self
                    .earlier
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(sleep) => {
                    let woken = self.earlier.wait_timeout(state, sleep);
                    woken.unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

/// Sets an alarm for `at`: the receiver completes then (or, should the
/// alarm be dropped, at once with an error, which also wakes its check).
/// `None` when no alarm could be set (the thread could not be started, or
/// too many are set): the check is then refused rather than wait without
/// one.
pub(crate) fn set(at: Instant) -> Option<oneshot::Receiver<()>> {
    ALARMS.get_or_init(Alarms::default).set(at)
}

impl Alarms {
    /// [`set`] on these alarms (starting their thread if it does not run).
    fn set(&'static self, at: Instant) -> Option<oneshot::Receiver<()>> {
        let mut state = self.lock();
        if !state.started {
            let spawned = std::thread::Builder::new()
                .name("keyward-alarms".into())
                .spawn(|| self.run());
            if spawned.is_err() {
                return None;
            }
            state.started = true;
        }
        if state.alarms.len() >= MAX_ALARMS {
            state.alarms.retain(|a| !a.ring.is_closed());
            if state.alarms.len() >= MAX_ALARMS {
                return None;
            }
        }
        let (ring, rung) = oneshot::channel();
        state.seq += 1;
        let seq = state.seq;
        let earliest = state.alarms.peek().is_none_or(|a| at < a.at);
        state.alarms.push(Alarm { at, seq, ring });
        if earliest {
            self.earlier.notify_one();
        }
        Some(rung)
    }
}

/// Waits until `released` (a `Notified` already enabled) completes or the
/// alarm `rung` rings, whichever is first.
pub(crate) async fn either(mut rung: oneshot::Receiver<()>, mut released: Pin<&mut Notified<'_>>) {
    std::future::poll_fn(|cx| {
        if released.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Pin::new(&mut rung).poll(cx).map(|_| ())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn alarms_ring_in_the_order_of_their_times() {
        let start = Instant::now();
        let late = set(start + Duration::from_millis(60)).expect("set");
        let early = set(start + Duration::from_millis(20)).expect("set");
        let mut late = late;
        let mut early = early;
        // Neither has rung at once.
        assert!(early.try_recv().is_err() && late.try_recv().is_err());
        let deadline = start + Duration::from_secs(10);
        while early.try_recv().is_err() {
            assert!(Instant::now() < deadline, "the early alarm never rang");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(start.elapsed() >= Duration::from_millis(20));
        while late.try_recv().is_err() {
            assert!(Instant::now() < deadline, "the late alarm never rang");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(start.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn no_alarm_is_set_past_max_alarms_that_checks_still_wait_for() {
        // Alarms of their own (the process's are shared with other tests).
        let alarms: &'static Alarms = Box::leak(Box::default());
        let far = Instant::now() + Duration::from_secs(3600);
        let mut waited: Vec<_> = (0..MAX_ALARMS).filter_map(|_| alarms.set(far)).collect();
        assert_eq!(waited.len(), MAX_ALARMS);
        assert!(alarms.set(far).is_none(), "every alarm is waited for");
        // A check stops waiting: its alarm's place is free.
        waited.pop();
        let again = alarms.set(far);
        assert!(again.is_some());
        assert!(alarms.set(far).is_none(), "the freed place is taken again");
    }

    #[test]
    fn a_full_set_of_alarms_makes_room_from_those_nobody_waits_for() {
        let far = Instant::now() + Duration::from_secs(3600);
        // Whatever other tests set, this fills the set with alarms that
        // are dropped at once, then sets one more: it finds room.
        let dropped: Vec<_> = (0..MAX_ALARMS).filter_map(|_| set(far)).collect();
        drop(dropped);
        assert!(set(far).is_some());
    }
}
