//! The hashing threads: a fixed set of threads that run argon2, each
//! reusing its own memory, at the lowest normal priority on Linux (so
//! cached checks are never starved, issue 14 §4), fed by a bounded queue
//! that is fair across client sources.
//!
//! Hand-written rather than tokio's blocking pool plus a semaphore, for
//! three things neither gives (issue 10): a bound on the waiters and on the
//! wait (beyond it a check is refused at once, never queued for a minute),
//! admission that is fair across sources (a newly active source first, then
//! round robin, and a full queue pushes out the newest job of the source
//! holding the most), and memory
//! that stays put (tokio's blocking threads come and go, and glibc keeps
//! freed 19 MiB argon2 blocks in their arenas: RSS only grew).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::hash::HashError;
use crate::hash::{HashScratch, SecretHasher};
use crate::source::Source;

/// Why a job was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// The queue is full (and this source holds its share), or the job
    /// waited longer than the bound: try again after `retry_after`.
    Overloaded { retry_after: Duration },
    /// The hasher refused (an unusable stored hash, a failure).
    Hash(HashError),
}

impl From<PoolError> for HashError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Overloaded { .. } => HashError::Failed("argon2 queue is full".into()),
            PoolError::Hash(e) => e,
        }
    }
}

/// What a worker hands a job: the hasher and its scratch, or the reason it
/// will not run.
enum Turn<'a> {
    /// Run it: the hasher, the thread's memory, and what to call once the
    /// work is done and before the answer is sent (the thread is free).
    Run(&'a dyn SecretHasher, &'a mut HashScratch, &'a dyn Fn()),
    Refused(PoolError),
}

type JobFn = Box<dyn for<'a> FnOnce(Turn<'a>) + Send>;

struct Job {
    enqueued: Instant,
    run: JobFn,
}

/// The queue key: a client source, or none (no address; management calls).
type Lane = Option<Source>;

#[derive(Default)]
struct State {
    /// Waiting jobs, per lane, oldest first.
    queues: HashMap<Lane, VecDeque<Job>>,
    /// Lanes that became active and were not served since: served first,
    /// so a source's first check waits for at most one running job, not
    /// for a round of every backlogged source.
    fresh: VecDeque<Lane>,
    /// Lanes still holding jobs after being served, in round-robin order.
    order: VecDeque<Lane>,
    waiting: usize,
    spawned: usize,
    /// Threads holding no job: from their start (counted by the submit
    /// that started them) until they take one, and again from when they
    /// finish it. Not only those asleep in the wait: one woken for a job
    /// but not yet running (at nice 19 on a busy machine, for a while) is
    /// still free, and a second job queued meanwhile needs a thread of its
    /// own, not that one.
    free: usize,
    shutdown: bool,
}

impl State {
    /// With the queue full: the lane that gives up its newest job so one
    /// of `lane`'s can wait, the lane holding the most waiting jobs if it
    /// holds more than `lane` would after admission; `None`: `lane`'s job
    /// is refused. Management calls are never pushed out.
    fn victim(&self, lane: Lane) -> Option<Lane> {
        let mine = self.queues.get(&lane).map_or(0, VecDeque::len);
        self.queues
            .iter()
            .filter(|(l, _)| **l != Some(Source::MANAGEMENT))
            .max_by_key(|(_, q)| q.len())
            .filter(|(_, q)| q.len() > mine + 1)
            .map(|(l, _)| *l)
    }
}

struct Inner {
    hasher: Arc<dyn SecretHasher>,
    state: Mutex<State>,
    work: Condvar,
    threads: usize,
    max_waiting: usize,
    max_wait: Duration,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overloaded(&self) -> PoolError {
        PoolError::Overloaded {
            retry_after: self.max_wait.max(Duration::from_secs(1)),
        }
    }
}

/// Runs hasher calls on at most `threads` threads.
pub(crate) struct HashPool {
    inner: Arc<Inner>,
}

impl HashPool {
    /// A pool of at most `threads` hashing threads (started on first use),
    /// at most `max_waiting` jobs waiting, each at most `max_wait`.
    pub(crate) fn new(
        hasher: Arc<dyn SecretHasher>,
        threads: usize,
        max_waiting: usize,
        max_wait: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hasher,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                threads: threads.max(1),
                max_waiting: max_waiting.max(1),
                max_wait,
            }),
        }
    }

    /// Runs `f` on a hashing thread, for a client from `lane`. Refused at
    /// once when the queue is full and `lane` already holds its share;
    /// refused without running when it waited longer than the bound or its
    /// caller went away.
    pub(crate) async fn run<R, F>(&self, lane: Lane, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn SecretHasher, &mut HashScratch) -> Result<R, HashError> + Send + 'static,
    {
        let (run, rx) = job(f);
        self.submit(lane, run)?;
        rx.await
            .unwrap_or_else(|_| Err(PoolError::Hash(HashError::Failed("hashing failed".into()))))
    }

    /// Whether a job from `lane` would be admitted now, or else how long to
    /// wait. Asked before the store is read, so a check that could not be
    /// hashed anyway costs no store read (shedding load early).
    pub(crate) fn admits(&self, lane: Lane) -> Result<(), PoolError> {
        let st = self.inner.lock();
        if st.waiting < self.inner.max_waiting {
            return Ok(());
        }
        match st.victim(lane) {
            Some(_) => Ok(()),
            None => Err(self.inner.overloaded()),
        }
    }

    fn submit(&self, lane: Lane, run: JobFn) -> Result<(), PoolError> {
        let pushed_out = {
            let mut st = self.inner.lock();
            self.enqueue(&mut st, lane, run)?
        };
        if let Some(job) = pushed_out {
            (job.run)(Turn::Refused(self.inner.overloaded()));
        }
        Ok(())
    }

    /// Queues `run` for `lane` under the lock held as `st`, starting a
    /// thread (up to the cap) if the queue would hold more jobs than there
    /// are free threads to take them; returns the job pushed out to make
    /// room, to be refused once the lock is released.
    fn enqueue(&self, st: &mut State, lane: Lane, run: JobFn) -> Result<Option<Job>, PoolError> {
        let inner = &self.inner;
        let mut pushed_out = None;
        if st.shutdown {
            return Err(PoolError::Hash(HashError::Failed(
                "hashing is shut down".into(),
            )));
        }
        if st.waiting >= inner.max_waiting {
            let Some(victim) = st.victim(lane) else {
                return Err(inner.overloaded());
            };
            pushed_out = st.queues.get_mut(&victim).and_then(VecDeque::pop_back);
            st.waiting -= 1;
        }
        // Every free thread takes a waiting job (each is awake, or asleep
        // and woken by a queued job's notify). Starting one whenever the
        // waiting jobs would outnumber the free threads keeps them at most
        // as many below the cap: none waits behind a running job while the
        // cap allows another thread.
        if st.waiting >= st.free && st.spawned < inner.threads {
            let worker = Arc::clone(inner);
            let started = std::thread::Builder::new()
                .name("keyward-hash".into())
                .spawn(move || work(&worker));
            if started.is_ok() {
                st.spawned += 1;
                st.free += 1;
            } else if st.spawned == 0 {
                // No thread to run it: refused now, not queued forever.
                return Err(PoolError::Hash(HashError::Failed(
                    "no hashing thread could be started".into(),
                )));
            }
        }
        let queue = st.queues.entry(lane).or_default();
        queue.push_back(Job {
            enqueued: Instant::now(),
            run,
        });
        if queue.len() == 1 {
            st.fresh.push_back(lane);
        }
        st.waiting += 1;
        inner.work.notify_one();
        Ok(pushed_out)
    }

    /// Jobs waiting now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.inner.lock().waiting
    }
}

/// `f` as a job, and where its answer comes.
fn job<R, F>(f: F) -> (JobFn, oneshot::Receiver<Result<R, PoolError>>)
where
    R: Send + 'static,
    F: FnOnce(&dyn SecretHasher, &mut HashScratch) -> Result<R, HashError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let run: JobFn = Box::new(move |turn: Turn<'_>| {
        let result = match turn {
            // The caller went away (client gone, timeout): no argon2.
            Turn::Run(..) if tx.is_closed() => return,
            Turn::Run(hasher, scratch, done) => {
                let result = f(hasher, scratch).map_err(PoolError::Hash);
                done();
                result
            }
            Turn::Refused(e) => Err(e),
        };
        let _ = tx.send(result);
    });
    (run, rx)
}

impl Drop for HashPool {
    fn drop(&mut self) {
        let jobs: Vec<Job> = {
            let mut st = self.inner.lock();
            st.shutdown = true;
            st.fresh.clear();
            st.order.clear();
            st.waiting = 0;
            st.queues.drain().flat_map(|(_, q)| q).collect()
        };
        self.inner.work.notify_all();
        for job in jobs {
            (job.run)(Turn::Refused(PoolError::Hash(HashError::Failed(
                "hashing is shut down".into(),
            ))));
        }
    }
}

/// The next job, round robin over lanes; `None` at shutdown. The calling
/// thread was counted free before (see [`work`]).
fn next(inner: &Inner) -> Option<Job> {
    let mut st = inner.lock();
    loop {
        while let Some(lane) = st.fresh.pop_front().or_else(|| st.order.pop_front()) {
            let Some(queue) = st.queues.get_mut(&lane) else {
                continue;
            };
            let Some(job) = queue.pop_front() else {
                st.queues.remove(&lane);
                continue;
            };
            if queue.is_empty() {
                st.queues.remove(&lane);
            } else {
                st.order.push_back(lane);
            }
            st.waiting -= 1;
            st.free -= 1;
            return Some(job);
        }
        if st.shutdown {
            return None;
        }
        st = inner.work.wait(st).unwrap_or_else(PoisonError::into_inner);
    }
}

/// A hashing thread: its own scratch memory for its whole life.
fn work(inner: &Inner) {
    lower_priority();
    // Wiped after each job's answer is sent, not before (see HashScratch).
    let mut scratch = HashScratch::deferring();
    // Counted free from its start, by the submit that started it, and
    // again once each job's work is done.
    while let Some(job) = next(inner) {
        let freed = Cell::new(false);
        let free = || {
            if !freed.replace(true) {
                inner.lock().free += 1;
            }
        };
        if job.enqueued.elapsed() > inner.max_wait {
            free();
            (job.run)(Turn::Refused(inner.overloaded()));
            continue;
        }
        let hasher = &*inner.hasher;
        // A panicking hasher fails its own check (its sender is dropped),
        // not the thread. The job calls `free` before it sends its answer:
        // a caller that submits its next check as soon as it has the
        // answer (one after another, as a benchmark or a batch does) finds
        // this thread free and starts no other, whose memory would be cold
        // (argon2's 19 MiB stays in this thread's caches).
        let _ = catch_unwind(AssertUnwindSafe(|| {
            (job.run)(Turn::Run(hasher, &mut scratch, &free));
        }));
        // The answer is sent: now the blocks the hash left are zeroed,
        // before this thread takes another job.
        scratch.wipe();
        free();
    }
}

/// Puts the calling hashing thread at the lowest normal priority (nice 19),
/// so argon2 takes only the CPU that checks needing none leave over: with
/// every core busy, a nice-0 thread gets about 98.5 % of a core shared with
/// a hashing thread (CFS weights 1024 and 15), and a cached check's
/// throughput stays at least 0.9 of what it is without cold checks (issue
/// 14 §4, `examples/cold_load.rs`); with cores to spare, argon2 runs at full
/// speed. The price: when the host's CPUs are saturated (by this process or
/// any other), cold checks slow down, and those that wait longer than
/// `max_hash_wait` are refused as overloaded.
///
/// Linux only, where a thread's nice value is its own (`setpriority` on the
/// calling thread): elsewhere the same call would lower the whole process.
/// A failure leaves the thread as it was (only speed is at stake).
#[cfg(target_os = "linux")]
fn lower_priority() {
    use thread_priority::ThreadPriority;
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    // `Min` under SCHED_OTHER is nice 19; lowering needs no privilege.
    let _ = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
    );
}

/// Elsewhere hashing threads keep the priority they started with.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{Argon2Hasher, Argon2Params};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pool(threads: usize, max_waiting: usize) -> HashPool {
        HashPool::new(
            Arc::new(Argon2Hasher::new(Argon2Params::insecure_for_tests())),
            threads,
            max_waiting,
            Duration::from_secs(30),
        )
    }

    fn lane(i: u8) -> Lane {
        Some(Source::of(std::net::IpAddr::from([10, 0, 0, i])))
    }

    /// A job that blocks its thread until `gate` is opened.
    fn blocker(
        gate: Arc<(Mutex<bool>, Condvar)>,
    ) -> impl FnOnce(&dyn SecretHasher, &mut HashScratch) -> Result<(), HashError> + Send + 'static
    {
        move |_, _| {
            let (m, c) = &*gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            Ok(())
        }
    }

    /// Starts a job from lane 1 that holds its thread until `gate` opens,
    /// and returns once a thread runs it.
    async fn occupy(
        p: &Arc<HashPool>,
        gate: &Arc<(Mutex<bool>, Condvar)>,
    ) -> tokio::task::JoinHandle<Result<(), PoolError>> {
        let busy = tokio::spawn({
            let p = Arc::clone(p);
            let g = Arc::clone(gate);
            async move { p.run(lane(1), blocker(g)).await }
        });
        // Both read under one lock: read apart, the job could be submitted
        // between the two reads and still be waiting.
        while {
            let st = p.inner.lock();
            st.waiting != 0 || st.spawned == 0
        } {
            tokio::task::yield_now().await;
        }
        busy
    }

    fn open(gate: &Arc<(Mutex<bool>, Condvar)>) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    /// A hashing thread answers first and zeroes its argon2 blocks after,
    /// before it takes its next job: the first job still sees the blocks
    /// its hash left as it answers, the second finds them zeroed.
    #[tokio::test]
    async fn a_thread_wipes_its_blocks_after_answering_and_before_its_next_job() {
        let p = pool(1, 8);
        let hasher = Argon2Hasher::new(Argon2Params::insecure_for_tests());
        let stored = hasher.hash(b"right").unwrap();
        let dirty_when_answering = p
            .run(lane(1), move |h, scratch| {
                assert!(h.verify_with(b"right", &stored, scratch)?);
                Ok(scratch.dirty_blocks())
            })
            .await
            .unwrap();
        assert!(dirty_when_answering > 0, "wiped before the answer");
        let dirty_at_next_job = p
            .run(lane(2), |_, scratch| Ok(scratch.dirty_blocks()))
            .await
            .unwrap();
        assert_eq!(
            dirty_at_next_job, 0,
            "the next job found the last one's blocks"
        );
    }

    /// A thread counts itself free before its answer is sent, so a check
    /// submitted as soon as the last one answered (one after another, as a
    /// benchmark or a batch does) finds it free and starts no other thread,
    /// whose argon2 memory would be cold. Shown by holding the pool's lock
    /// while the job ends: the answer must wait for the count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_is_counted_free_before_its_answer_is_sent() {
        let p = Arc::new(pool(4, 8));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let busy = occupy(&p, &gate).await;
        let answered_first = {
            let _held = p.inner.lock();
            open(&gate);
            std::thread::sleep(Duration::from_millis(300));
            busy.is_finished()
        };
        assert!(
            !answered_first,
            "answered before the thread counted itself free"
        );
        busy.await.unwrap().unwrap();
        let st = p.inner.lock();
        assert_eq!((st.free, st.spawned), (1, 1));
    }

    /// How long a job of a meeting waits for the others: only a pool that
    /// leaves one of them queued behind another waits this long.
    const MEET_LIMIT: Duration = Duration::from_secs(10);

    /// A job that waits (at most `MEET_LIMIT`) until `n` jobs of `meeting`
    /// run at once, as checks behind a test's gate do, and says whether
    /// they did.
    fn meet(
        meeting: &Arc<(Mutex<usize>, Condvar)>,
        n: usize,
    ) -> impl FnOnce(&dyn SecretHasher, &mut HashScratch) -> Result<bool, HashError> + Send + 'static
    {
        let meeting = Arc::clone(meeting);
        move |_, _| {
            let (m, c) = &*meeting;
            let mut here = m.lock().unwrap();
            *here += 1;
            c.notify_all();
            let (here, _) = c.wait_timeout_while(here, MEET_LIMIT, |h| *h < n).unwrap();
            Ok(*here >= n)
        }
    }

    /// A pool of `threads` threads of which one has run a job and is free
    /// again (waiting for work), the others not started yet.
    fn warm_pool(threads: usize) -> HashPool {
        let p = pool(threads, 64);
        let (warm, answer) = job(|_, _| Ok(()));
        p.submit(None, warm).unwrap();
        answer.blocking_recv().unwrap().unwrap();
        while p.inner.lock().free != 1 {
            std::thread::yield_now();
        }
        p
    }

    /// The flaky `tests/verifier.rs::the_concurrent_argon2_cap_holds`, made
    /// deterministic: jobs queued back to back while the one free thread
    /// has not yet taken the first (woken, but not yet run: at nice 19 on
    /// a busy machine that can take long) must each get a thread, up to
    /// the cap. Counting only threads blocked in the wait as free, the pool
    /// started none for them: the later jobs waited behind the first.
    #[test]
    fn jobs_queued_before_the_free_thread_wakes_each_get_a_thread_up_to_the_cap() {
        for cap in 2..=4 {
            for round in 0..10 {
                let p = warm_pool(cap);
                let meeting = Arc::new((Mutex::new(0), Condvar::new()));
                let mut answers = Vec::new();
                {
                    // All queued under one lock: the free thread cannot take
                    // the first before the last is queued.
                    let mut st = p.inner.lock();
                    for i in 0..cap {
                        let (run, answer) = job(meet(&meeting, cap));
                        let pushed_out = p.enqueue(&mut st, lane(i as u8), run).unwrap();
                        assert!(pushed_out.is_none());
                        answers.push(answer);
                    }
                }
                for answer in answers {
                    assert_eq!(
                        answer.blocking_recv().unwrap(),
                        Ok(true),
                        "cap {cap}, round {round}: a job waited behind another"
                    );
                }
                assert_eq!(p.inner.lock().spawned, cap);
            }
        }
    }

    /// The same through `run`, as the verifier submits, with whatever
    /// interleaving the scheduler gives: two jobs with a cap of two always
    /// run together.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_cap_of_two_two_jobs_always_run_together() {
        for round in 0..200 {
            let p = Arc::new(tokio::task::block_in_place(|| warm_pool(2)));
            let meeting = Arc::new((Mutex::new(0), Condvar::new()));
            let jobs: Vec<_> = (0..2u8)
                .map(|i| {
                    let (p, f) = (Arc::clone(&p), meet(&meeting, 2));
                    tokio::spawn(async move { p.run(lane(i), f).await })
                })
                .collect();
            for j in jobs {
                assert_eq!(j.await.unwrap(), Ok(true), "round {round}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_the_flooding_source_and_admits_another() {
        let p = Arc::new(pool(1, 4));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let busy = occupy(&p, &gate).await;
        // Source 1 fills the queue.
        let mut flood = Vec::new();
        for _ in 0..4 {
            let p2 = Arc::clone(&p);
            flood.push(tokio::spawn(
                async move { p2.run(lane(1), |_, _| Ok(1)).await },
            ));
        }
        while p.waiting() < 4 {
            tokio::task::yield_now().await;
        }
        // More from source 1: refused at once.
        assert!(matches!(
            p.run(lane(1), |_, _| Ok(1)).await,
            Err(PoolError::Overloaded { .. })
        ));
        // Source 2 is admitted: source 1's newest job is pushed out.
        let order = Arc::new(AtomicUsize::new(0));
        let second = tokio::spawn({
            let p = Arc::clone(&p);
            let order = Arc::clone(&order);
            async move {
                p.run(
                    lane(2),
                    move |_, _| Ok(order.fetch_add(1, Ordering::SeqCst)),
                )
                .await
            }
        });
        // Wait until it is queued: one of source 1's jobs is answered then.
        while !flood.iter().any(|f| f.is_finished()) {
            tokio::task::yield_now().await;
        }
        assert_eq!(p.waiting(), 4);
        open(&gate);
        busy.await.unwrap().unwrap();
        let mut results = Vec::new();
        for f in flood {
            results.push(f.await.unwrap());
        }
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(PoolError::Overloaded { .. })))
            .count();
        assert_eq!(refused, 1, "one of source 1's jobs made room: {results:?}");
        // Round robin: source 2 ran second, right after source 1's oldest.
        assert_eq!(second.await.unwrap().unwrap(), 0);
    }

    #[test]
    fn a_job_that_waited_too_long_is_refused_without_running() {
        let hasher: Arc<dyn SecretHasher> =
            Arc::new(Argon2Hasher::new(Argon2Params::insecure_for_tests()));
        let p = HashPool::new(hasher, 1, 8, Duration::from_millis(50));
        let ran = Arc::new(AtomicUsize::new(0));
        let (late, answer) = job({
            let ran = Arc::clone(&ran);
            move |_, _| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
        {
            let mut st = p.inner.lock();
            assert!(p.enqueue(&mut st, None, late).unwrap().is_none());
            // Queued longer ago than the bound, as behind a long job; set
            // under the lock, so the test does not depend on when the
            // (nice 19) thread gets to run, before or after the bound.
            let queued = st
                .queues
                .get_mut(&None)
                .and_then(VecDeque::back_mut)
                .unwrap();
            queued.enqueued = queued
                .enqueued
                .checked_sub(Duration::from_millis(100))
                .unwrap();
        }
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(PoolError::Overloaded { .. })
        ));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threads_are_capped_and_a_panicking_hasher_fails_only_its_own_check() {
        let p = Arc::new(pool(2, 64));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for i in 0..16u8 {
            let (running, most, p) = (Arc::clone(&running), Arc::clone(&most), Arc::clone(&p));
            jobs.push(tokio::spawn(async move {
                p.run(lane(i), move |_, _| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                })
                .await
            }));
        }
        for (i, job) in jobs.into_iter().enumerate() {
            assert_eq!(job.await.unwrap().unwrap(), i as u8);
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert!(
            p.run(None, |_, _| -> Result<(), HashError> { panic!("boom") })
                .await
                .is_err()
        );
        assert_eq!(p.run(None, |_, _| Ok(7)).await.unwrap(), 7);
        assert_eq!(p.inner.lock().spawned, 2);
    }

    /// The nice value of the calling thread, from `/proc/thread-self/stat`
    /// (field 19; fields counted after the parenthesised command name).
    #[cfg(target_os = "linux")]
    fn own_nice() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        let after_name = stat.rsplit_once(')')?.1;
        after_name.split_whitespace().nth(16)?.parse().ok()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_the_lowest_priority_and_the_caller_does_not() {
        let p = pool(1, 4);
        let before = own_nice().expect("own nice value");
        let hashing = p.run(None, |_, _| Ok(own_nice())).await.unwrap();
        assert_eq!(hashing, Some(19));
        assert_eq!(
            own_nice(),
            Some(before),
            "only the hashing thread is lowered"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn management_jobs_are_never_pushed_out() {
        let p = Arc::new(pool(1, 2));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let busy = occupy(&p, &gate).await;
        let management = Some(Source::MANAGEMENT);
        let mut jobs = Vec::new();
        for _ in 0..2 {
            let p2 = Arc::clone(&p);
            jobs.push(tokio::spawn(async move {
                p2.run(management, |_, _| Ok(1)).await
            }));
        }
        while p.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        // A client source finds the queue full of management jobs: it is
        // refused, and no management job is pushed out.
        assert!(matches!(
            p.run(lane(3), |_, _| Ok(3)).await,
            Err(PoolError::Overloaded { .. })
        ));
        assert!(p.admits(lane(3)).is_err());
        open(&gate);
        busy.await.unwrap().unwrap();
        for j in jobs {
            assert_eq!(j.await.unwrap().unwrap(), 1);
        }
    }
}
