//! [`VerifierConfig`]: the settings of the verifier's cache, throttle and
//! hashing.

use std::time::Duration;

/// Settings of the verifier's cache, throttle and hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Most keys cached (default 100 000).
    pub cache_capacity: usize,
    /// How long a key id the store did not have is refused without asking
    /// the store again (default 5 s; zero turns it off), so a flood that
    /// repeats unknown ids does not reach the store each time. At most
    /// 65 536 ids are remembered. A key imported through *another* server
    /// under an id this server just found missing is refused as unknown
    /// for at most this long (imports and changes through this process,
    /// and [`Verifier::invalidate`](crate::Verifier::invalidate), forget the id at once).
    pub unknown_id_ttl: Duration,
    /// How long a cached key is trusted without reading the store (default
    /// 30 s): the bound on staleness when a change notification is lost.
    /// After it, the next check re-reads the record; it runs argon2 again
    /// only if the stored hash changed, so a longer TTL saves store reads,
    /// not CPU.
    pub cache_ttl: Duration,
    /// Cold checks allowed at once for one key id before throttling (default 10).
    pub failure_burst: u32,
    /// One more cold check per this interval after the burst (default 6 s, 10 a minute).
    pub failure_refill: Duration,
    /// Failed cold checks (wrong secret, unknown id) allowed at once from
    /// one client source (an IPv4 address or an IPv6 /64), over all key
    /// ids, before that source is throttled (default 30). Only checks
    /// that carry a client address count; a secret proven earlier in this
    /// process is never throttled.
    pub source_failure_burst: u32,
    /// One more failed cold check per this interval for a source after its
    /// burst (default 2 s, 30 a minute).
    pub source_failure_refill: Duration,
    /// Most argon2 computations at once (default: the number of CPUs): the
    /// number of hashing threads, each holding `m_cost` KiB of memory
    /// (19 MiB by default) for its whole life, reused by every check.
    ///
    /// On Linux the hashing threads run at the lowest normal priority
    /// (nice 19; the rest of the process is untouched), so argon2 only
    /// takes CPU that other work leaves over. The trade-off, measured with
    /// `examples/cold_load.rs` on 2 vCPUs (see `benches/README.md`):
    ///
    /// - cached checks keep their throughput under a saturating stream of
    ///   cold checks (0.965–1.05 of idle, against 0.50–0.65 at normal
    ///   priority with this cap, and 0.62–0.67 with a cap of 1: a smaller
    ///   cap alone does not protect them);
    /// - with CPU to spare, cold checks run at full speed on up to this
    ///   many threads, hence the default of one per CPU;
    /// - while the host's CPUs are saturated (by cached checks or by any
    ///   other process), cold checks get about 1.4 % of a core per
    ///   thread (measured: 0.7–1.9 a second instead of 42–60, each taking
    ///   1.2–1.8 s with the default argon2 parameters), and those that
    ///   wait longer than `max_hash_wait` are refused as
    ///   [`DenialReason::Overloaded`](crate::DenialReason::Overloaded)
    ///   (HTTP 503 with `Retry-After`), never let through.
    ///
    /// Elsewhere the hashing threads keep normal priority, and a lower cap
    /// is the only lever (it does not reach the same protection).
    pub max_concurrent_hashes: usize,
    /// Most checks waiting for a hashing thread (default 32 per thread).
    /// When the queue is full, the client source holding the most waiting
    /// checks gives up its newest one to a source holding fewer; if there
    /// is none, the check is refused at once with
    /// [`DenialReason::Overloaded`](crate::DenialReason::Overloaded) (HTTP 503 with `Retry-After`).
    pub max_hash_queue: usize,
    /// Longest a check waits for a hashing thread (default 2 s); beyond it
    /// it is refused with [`DenialReason::Overloaded`](crate::DenialReason::Overloaded) without
    /// running. Also the longest a check waits, in all, for a token of its
    /// client source that other checks in flight hold; beyond it it is
    /// refused with [`DenialReason::Throttled`](crate::DenialReason::Throttled).
    pub max_hash_wait: Duration,
    /// A key in use causes at most one `last_used_at` write to the store
    /// per this interval (default 60 s); checks never wait for it.
    pub usage_interval: Duration,
    /// Authentication failures are written to the audit trail aggregated:
    /// one event per key id and reason per this window (default 60 s).
    pub failure_window: Duration,
    /// The most credits this process leases from the store at once for one
    /// key (default 100). Blocks adapt to the key's spend rate (about one
    /// second of spending, at least 1, and at most an eighth of what the
    /// store has left), up to this. **Stranded bound:** a server that
    /// crashes strands at most its unspent block per key, so at most this
    /// many credits per key and crashed server stay `leased` in the store
    /// and are never spent (except a crash in the middle of one check that
    /// costs more than a block: then up to that check's cost, or, while a
    /// denied oversized grant is being given back, up to that grant;
    /// `docs/DESIGN.md` gives the cases); a graceful shutdown awaits
    /// [`Verifier::release_usage`](crate::Verifier::release_usage) and
    /// strands none.
    pub max_credit_block: u64,
    /// A key unused this long gives its unspent credits and rate-limit
    /// tokens back to the store (default 10 s), from a sweeper task that
    /// runs while a tokio runtime does (every half of this, at most every
    /// 5 s); the sweeper also settles the credits spent since its last
    /// run, so the store's `leased` catches up.
    pub usage_idle: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(30),
            unknown_id_ttl: Duration::from_secs(5),
            failure_burst: 10,
            failure_refill: Duration::from_secs(6),
            source_failure_burst: 30,
            source_failure_refill: Duration::from_secs(2),
            max_concurrent_hashes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_hash_queue: 32 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_hash_wait: Duration::from_secs(2),
            usage_interval: Duration::from_secs(60),
            failure_window: Duration::from_secs(60),
            max_credit_block: 100,
            usage_idle: Duration::from_secs(10),
        }
    }
}
