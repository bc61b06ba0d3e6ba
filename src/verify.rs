//! The verification hot path: [`Verifier`], its request and its answers.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::audit::{AuditAction, AuditEvent, AuditLog, AuditSink};
use crate::cache::{Cached, HashDigest, KeyCache, Lookup, Proof, UnknownIds};
use crate::clock::Clock;
use crate::error::{HashError, PolicyError, TokenError};
use crate::hash::{Fingerprinter, HashScratch, SecretHasher};
use crate::hash_pool::{HashPool, PoolError};
use crate::key::{KeyKind, KeyRecord, OwnerId};
use crate::policy::{
    CompiledScope, IpAllowlist, Permission, PermissionSet, Policy, ResourceRef, ResourceRule,
    ResourceScope,
};
use crate::store::KeyStore;
use crate::throttle::{Source, SourceThrottle, Throttle};
use crate::token::{Environment, KeyId, TokenFormat};
use crate::usage::{UsageCell, UsageTracker, UsageWrite};

/// What a request needs: the environment it is served in, a permission, and
/// optionally the resource it acts on and the client's address.
///
/// ```
/// use keyward::{Environment, PermissionRegistry, VerifyRequest};
/// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
/// let live = Environment::new("live").unwrap();
/// let push = registry.get("package:push").unwrap();
/// let req = VerifyRequest::new(&live, push)
///     .resource("contoso", "AzureRM.DataFactoryV2")
///     .client_ip("10.1.2.3".parse().unwrap());
/// assert_eq!(req.resource.unwrap().name, "AzureRM.DataFactoryV2");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The environment this server serves; a key of another environment is refused.
    pub environment: &'a Environment,
    /// The permission the operation needs.
    pub permission: Permission,
    /// The resource the operation acts on, if any.
    pub resource: Option<ResourceRef<'a>>,
    /// The client's address. A key with an IP allowlist is refused when it is unknown.
    pub client_ip: Option<IpAddr>,
}

impl<'a> VerifyRequest<'a> {
    /// A request needing `permission` in `environment`.
    pub fn new(environment: &'a Environment, permission: Permission) -> Self {
        Self {
            environment,
            permission,
            resource: None,
            client_ip: None,
        }
    }
    /// The resource `name` of `owner` that the request acts on.
    pub fn resource(mut self, owner: &'a str, name: &'a str) -> Self {
        self.resource = Some(ResourceRef::new(owner, name));
        self
    }
    /// The client's address.
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }
}

/// Whether a denial is about who the caller is, what they may do, a flood,
/// or keyward not being able to decide. Maps to HTTP 401, 403, 429 and 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialKind {
    /// The credential is not valid here (HTTP 401).
    Authentication,
    /// The credential is valid but does not allow this request (HTTP 403).
    Authorization,
    /// Too many failed attempts for this key (HTTP 429).
    Throttled,
    /// The store failed or a record is unusable; denied to be safe (HTTP 503).
    Unavailable,
}

/// Why a request was refused. Kept whole for the audit trail; tell the
/// caller only its [`DenialKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenialReason {
    /// The token did not parse (no store access, no hashing).
    Malformed(TokenError),
    /// The token belongs to another environment (no store access).
    WrongEnvironment,
    /// No key has this id.
    UnknownKey,
    /// The secret is wrong.
    WrongSecret,
    /// The key is revoked (told only after the secret was proven).
    Revoked,
    /// The key has expired, or was unused longer than the idle-expiry
    /// policy allows (told only after the secret was proven).
    Expired,
    /// The key is suspended by its owner (told only after the secret was
    /// proven); reversible, unlike [`DenialReason::Revoked`].
    Suspended,
    /// The client's address is not in the key's allowlist (or unknown).
    IpNotAllowed,
    /// Too many wrong secrets for this key id recently.
    Throttled,
    /// The key lacks the permission.
    PermissionMissing,
    /// The operation is session-only: no key may perform it.
    SessionOnly,
    /// The resource belongs to another owner.
    OtherOwner,
    /// The resource is outside the key's selection.
    ResourceOutOfScope,
    /// The store failed; denied to be safe.
    StoreUnavailable,
    /// Too many checks are waiting for argon2; refused at once rather than
    /// queued (see [`VerifierConfig::max_hash_queue`]); try again after
    /// [`Denial::retry_after`].
    Overloaded,
    /// The stored record or hash could not be used; denied to be safe.
    CorruptRecord,
}

impl DenialReason {
    /// The class of the denial.
    pub fn kind(&self) -> DenialKind {
        use DenialReason::*;
        match self {
            Malformed(_) | WrongEnvironment | UnknownKey | WrongSecret | Revoked | Expired
            | Suspended | IpNotAllowed => DenialKind::Authentication,
            PermissionMissing | SessionOnly | OtherOwner | ResourceOutOfScope => {
                DenialKind::Authorization
            }
            Throttled => DenialKind::Throttled,
            StoreUnavailable | CorruptRecord | Overloaded => DenialKind::Unavailable,
        }
    }

    /// A short stable code for logs and metrics (`wrong_secret`, `revoked`, ...).
    pub fn code(&self) -> &'static str {
        use DenialReason::*;
        match self {
            Malformed(_) => "malformed",
            WrongEnvironment => "wrong_environment",
            UnknownKey => "unknown_key",
            WrongSecret => "wrong_secret",
            Revoked => "revoked",
            Expired => "expired",
            Suspended => "suspended",
            IpNotAllowed => "ip_not_allowed",
            Throttled => "throttled",
            PermissionMissing => "permission_missing",
            SessionOnly => "session_only",
            OtherOwner => "other_owner",
            ResourceOutOfScope => "resource_out_of_scope",
            StoreUnavailable => "store_unavailable",
            Overloaded => "overloaded",
            CorruptRecord => "corrupt_record",
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::Malformed(e) => write!(f, "malformed token: {e}"),
            other => f.write_str(other.code()),
        }
    }
}

/// A refused request: the reason, and the key id when the token named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub reason: DenialReason,
    /// The key id the token named (when it parsed).
    pub key_id: Option<KeyId>,
    /// For [`DenialReason::Throttled`] and [`DenialReason::Overloaded`]:
    /// when a new attempt may be made.
    pub retry_after: Option<Duration>,
}

impl Denial {
    pub(crate) fn new(reason: DenialReason, key_id: Option<&str>) -> Self {
        Self {
            reason,
            key_id: key_id.and_then(|id| KeyId::new(id).ok()),
            retry_after: None,
        }
    }

    /// The class of the denial.
    pub fn kind(&self) -> DenialKind {
        self.reason.kind()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key_id {
            Some(id) => write!(f, "key {id} denied: {}", self.reason),
            None => write!(f, "denied: {}", self.reason),
        }
    }
}

impl std::error::Error for Denial {}

/// A key with its policy decoded and compiled, as the verifier caches it.
#[derive(Debug)]
pub struct CompiledKey {
    id: KeyId,
    owner: OwnerId,
    environment: Environment,
    name: String,
    permissions: PermissionSet,
    scope: CompiledScope,
    resources: ResourceScope,
    ip_allowlist: IpAllowlist,
    expires_at: Option<DateTime<Utc>>,
    /// The earlier of the expiry and the idle-expiry deadline: the one
    /// time compared on every check.
    deadline: Option<DateTime<Utc>>,
    kind: KeyKind,
    generation: u64,
    usage: Option<Arc<UsageCell>>,
}

impl CompiledKey {
    /// Decodes and compiles a stored record under `policy` (its idle-expiry
    /// rule included).
    pub fn compile(record: &KeyRecord, policy: &Policy) -> Result<Self, PolicyError> {
        let deadline = Self::deadline_of(record, policy);
        Ok(Self {
            id: record.id.clone(),
            owner: record.owner.clone(),
            environment: record.environment.clone(),
            name: record.name.clone(),
            permissions: policy.permissions().resolve_stored(&record.permissions),
            scope: policy.resource_rule().compile(&record.resources)?,
            resources: record.resources.clone(),
            ip_allowlist: record.ip_allowlist.clone(),
            expires_at: record.expires_at,
            deadline,
            kind: record.kind,
            generation: record.generation,
            usage: None,
        })
    }

    /// The earlier of a record's expiry and its idle deadline under `policy`.
    fn deadline_of(record: &KeyRecord, policy: &Policy) -> Option<DateTime<Utc>> {
        let idle = policy.idle_expiry().map(|idle| record.idle_deadline(idle));
        match (record.expires_at, idle) {
            (Some(e), Some(i)) => Some(e.min(i)),
            (e, i) => e.or(i),
        }
    }

    /// Whether this compiled key still says exactly what `record` says
    /// under `policy`: same record generation (every management write bumps
    /// it) and same deadline (usage writes move the idle deadline without
    /// one).
    fn still_matches(&self, record: &KeyRecord, policy: &Policy) -> bool {
        self.id == record.id
            && self.generation == record.generation
            && self.deadline == Self::deadline_of(record, policy)
    }

    /// A compiled key from its parts (for session snapshots).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        id: KeyId,
        owner: OwnerId,
        environment: Environment,
        name: String,
        permissions: PermissionSet,
        resources: ResourceScope,
        policy: &Policy,
        ip_allowlist: IpAllowlist,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            id,
            owner,
            environment,
            name,
            permissions,
            scope: policy.resource_rule().compile(&resources)?,
            resources,
            ip_allowlist,
            expires_at,
            deadline: expires_at,
            kind: KeyKind::Scoped,
            generation: 0,
            usage: None,
        })
    }

    /// Checks only that the key may be used at all at time `now` from
    /// `client_ip`: expiry and IP allowlist, no permission or resource.
    #[inline]
    pub fn check_access(
        &self,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(), DenialReason> {
        if self.deadline.is_some_and(|e| e <= now) {
            return Err(DenialReason::Expired);
        }
        if !self.ip_allowlist.is_empty() {
            match client_ip {
                Some(ip) if self.ip_allowlist.allows(ip) => {}
                _ => return Err(DenialReason::IpNotAllowed),
            }
        }
        Ok(())
    }

    /// Checks a request against the key at time `now`: expiry, IP allowlist,
    /// permission, owner and resource scope, in that order.
    #[inline]
    pub fn check(
        &self,
        req: &VerifyRequest<'_>,
        rule: &ResourceRule,
        now: DateTime<Utc>,
    ) -> Result<(), DenialReason> {
        if self.deadline.is_some_and(|e| e <= now) {
            return Err(DenialReason::Expired);
        }
        if !self.ip_allowlist.is_empty() {
            match req.client_ip {
                Some(ip) if self.ip_allowlist.allows(ip) => {}
                _ => return Err(DenialReason::IpNotAllowed),
            }
        }
        if req.permission.is_session_only() {
            return Err(DenialReason::SessionOnly);
        }
        if !self.permissions.contains(req.permission) {
            return Err(DenialReason::PermissionMissing);
        }
        if let Some(res) = req.resource {
            if res.owner != self.owner.as_str() {
                return Err(DenialReason::OtherOwner);
            }
            if !self.scope.is_all()
                && (rule.check_name(res.name).is_err() || !self.scope.matches(res.name))
            {
                return Err(DenialReason::ResourceOutOfScope);
            }
        }
        Ok(())
    }

    /// The key id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
    /// The owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
    /// The environment.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The effective permissions (implications included).
    pub fn permissions(&self) -> PermissionSet {
        self.permissions
    }
    /// The compiled resource scope.
    pub fn scope(&self) -> &CompiledScope {
        &self.scope
    }
    /// The resource scope as granted (names and patterns).
    pub fn resources(&self) -> &ResourceScope {
        &self.resources
    }
    /// The IP allowlist (empty: anywhere).
    pub fn ip_allowlist(&self) -> &IpAllowlist {
        &self.ip_allowlist
    }
    /// The expiry.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// When the key stops working: the earlier of its expiry and, under an
    /// idle-expiry policy, its idle deadline as of when it was loaded.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }
    /// Scoped or legacy full-access.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
    /// The record generation this was compiled from.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// A key that passed a check, with its remaining lifetime at the time of
/// the check. Cheap to clone; derefs to [`CompiledKey`].
#[derive(Debug, Clone)]
pub struct VerifiedKey(Arc<CompiledKey>, Option<TimeDelta>);

impl VerifiedKey {
    pub(crate) fn from_compiled(key: Arc<CompiledKey>, now: DateTime<Utc>) -> Self {
        let remaining = key.deadline.map(|d| d - now);
        Self(key, remaining)
    }

    /// How long the key had left when it was checked (`None`: it never
    /// expires), so a response can warn its caller (as NuGet's
    /// `X-NuGet-Warning` does). Zero or more.
    pub fn remaining_lifetime(&self) -> Option<Duration> {
        self.1.map(|d| d.to_std().unwrap_or(Duration::ZERO))
    }
}

impl std::ops::Deref for VerifiedKey {
    type Target = CompiledKey;
    fn deref(&self) -> &CompiledKey {
        &self.0
    }
}

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
    /// and [`Verifier::invalidate`], forget the id at once).
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
    pub max_concurrent_hashes: usize,
    /// Most checks waiting for a hashing thread (default 32 per thread).
    /// When the queue is full, the client source holding the most waiting
    /// checks gives up its newest one to a source holding fewer; if there
    /// is none, the check is refused at once with
    /// [`DenialReason::Overloaded`] (HTTP 503 with `Retry-After`).
    pub max_hash_queue: usize,
    /// Longest a check waits for a hashing thread (default 2 s); beyond it
    /// it is refused with [`DenialReason::Overloaded`] without running.
    pub max_hash_wait: Duration,
    /// A key in use causes at most one `last_used_at` write to the store
    /// per this interval (default 60 s); checks never wait for it.
    pub usage_interval: Duration,
    /// Authentication failures are written to the audit trail aggregated:
    /// one event per key id and reason per this window (default 60 s).
    pub failure_window: Duration,
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
        }
    }
}

/// The longest secret [`Verifier::verify_pair`] accepts.
pub const MAX_PAIR_SECRET_LEN: usize = 256;

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// Why a cold check failed, when to retry, and the key's owner where the
/// key was found.
struct ColdDenial(DenialReason, Option<Duration>, Option<OwnerId>);

/// State shared by a manager and its verifiers.
pub(crate) struct Shared<S> {
    pub(crate) store: S,
    pub(crate) format: TokenFormat,
    pub(crate) policy: Policy,
    pub(crate) hasher: Arc<dyn SecretHasher>,
    pub(crate) clock: Arc<dyn Clock>,
    cache: KeyCache,
    /// Ids the store recently did not have.
    unknown: UnknownIds,
    throttle: Throttle,
    sources: SourceThrottle,
    /// The argon2 threads and their bounded, fair queue.
    hashing: HashPool,
    fingerprinter: Fingerprinter,
    /// The manager's session cache, if it has sessions.
    session_cache: Option<Arc<KeyCache>>,
    pub(crate) audit: AuditLog,
    pub(crate) usage: UsageTracker,
}

impl<S: KeyStore> Shared<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: S,
        format: TokenFormat,
        policy: Policy,
        hasher: Arc<dyn SecretHasher>,
        clock: Arc<dyn Clock>,
        config: VerifierConfig,
        audit: Option<Arc<dyn AuditSink>>,
        session_cache: Option<Arc<KeyCache>>,
    ) -> Self {
        let now = clock.now();
        Self {
            audit: AuditLog::new(audit, delta(config.failure_window), now),
            usage: UsageTracker::new(delta(config.usage_interval)),
            store,
            format,
            policy,
            hasher: Arc::clone(&hasher),
            clock,
            cache: KeyCache::new(config.cache_capacity, delta(config.cache_ttl)),
            unknown: UnknownIds::new(delta(config.unknown_id_ttl)),
            throttle: Throttle::new(config.failure_burst, delta(config.failure_refill)),
            sources: SourceThrottle::new(
                config.source_failure_burst,
                delta(config.source_failure_refill),
            ),
            hashing: HashPool::new(
                Arc::clone(&hasher),
                config.max_concurrent_hashes,
                config.max_hash_queue,
                config.max_hash_wait,
            ),
            fingerprinter: Fingerprinter::random(),
            session_cache,
        }
    }

    /// Runs a hasher call on a hashing thread (see
    /// [`VerifierConfig::max_concurrent_hashes`]), for management calls.
    pub(crate) async fn run_hasher<R, F>(&self, f: F) -> Result<R, HashError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn SecretHasher, &mut HashScratch) -> Result<R, HashError> + Send + 'static,
    {
        Ok(self.hashing.run(Some(Source::MANAGEMENT), f).await?)
    }

    /// Forgets key `id` and this process's cached sessions of it, so their
    /// next check reads the store (where a revoke ended them).
    pub(crate) fn invalidate(&self, id: &KeyId) {
        // The epoch bump (in `invalidate`) comes first: a check that found
        // the id missing before this call cannot remember it afterwards.
        self.cache.invalidate(id.as_str());
        self.unknown.forget(id.as_str());
        if let Some(sessions) = &self.session_cache {
            sessions.invalidate_key(id);
        }
    }

    /// Forgets every cached key and session.
    pub(crate) fn invalidate_all(&self) {
        self.cache.clear();
        self.unknown.clear();
        if let Some(sessions) = &self.session_cache {
            sessions.clear();
        }
    }

    /// The audit event for a usage write.
    pub(crate) fn usage_event(&self, w: &UsageWrite) -> AuditEvent {
        AuditEvent {
            key_id: Some(w.id.clone()),
            owner: Some(w.owner.clone()),
            client_ip: w.ip,
            detail: format!("used since {}", w.since.to_rfc3339()),
            ..AuditEvent::new(w.at, AuditAction::Used)
        }
    }
}

/// Checks tokens: parse, checksum and environment, then the cache, and only
/// on a miss the store and argon2. Cheap to clone; get one from
/// [`KeyManager::verifier`](crate::KeyManager::verifier).
///
/// **Cache.** After a key's secret was proven once, the verifier keeps the
/// compiled policy and an HMAC-SHA256 fingerprint of the secret (under a
/// per-process random key; never the secret) for [`VerifierConfig::cache_ttl`].
/// A hit compares fingerprints in constant time and checks expiry and policy:
/// about a microsecond. Revoke, regenerate, edit and delete through the
/// manager invalidate the entry before they return; other processes call
/// [`Verifier::invalidate`] from a change feed, and the TTL bounds the rest.
///
/// **Cold checks.** Unknown ids and bad checksums never reach argon2. Each
/// cold check of an existing key takes a token from a per-id bucket
/// ([`VerifierConfig::failure_burst`]); a right secret gives it back, so only
/// wrong secrets are throttled, and a caller whose right secret is cached is
/// never slowed by them. At most [`VerifierConfig::max_concurrent_hashes`]
/// argon2 computations run at once, on tokio's blocking threads
/// (`spawn_blocking`) when called inside a tokio runtime, inline otherwise.
///
/// **Failures deny.** A store error or an unusable record is a denial
/// ([`DenialKind::Unavailable`]), never a pass.
pub struct Verifier<S> {
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S> Clone for Verifier<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Verifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl<S: KeyStore> Verifier<S> {
    /// Checks `token` for `req`.
    pub async fn verify(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        crate::trace::verify_span("key", self.verify_impl(token, req)).await
    }

    async fn verify_impl(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        let shared = &*self.shared;
        let parsed = match shared.format.parse(token) {
            Ok(p) => p,
            Err(e) => return Err(self.deny(None, DenialReason::Malformed(e), None, req.client_ip)),
        };
        let id = parsed.key_id();
        if parsed.environment() != req.environment.as_str() {
            return Err(self.deny(
                Some(id),
                DenialReason::WrongEnvironment,
                None,
                req.client_ip,
            ));
        }
        let rule = shared.policy.resource_rule();
        self.check_with(
            id,
            parsed.expose_secret(),
            req.environment,
            req.client_ip,
            |key, now| key.check(req, rule, now),
        )
        .await
    }

    /// Checks that `token` is a valid key of `environment` that may be used
    /// now from `client_ip` (expiry, revocation, suspension, IP allowlist),
    /// without asking for any permission: for "who am I" endpoints, and for
    /// exchanging a key for a session. Same cache, throttle and denials as
    /// [`Verifier::verify`].
    pub async fn authenticate(
        &self,
        token: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedKey, Denial> {
        crate::trace::verify_span("key", self.authenticate_impl(token, environment, client_ip))
            .await
    }

    async fn authenticate_impl(
        &self,
        token: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedKey, Denial> {
        let parsed = match self.shared.format.parse(token) {
            Ok(p) => p,
            Err(e) => return Err(self.deny(None, DenialReason::Malformed(e), None, client_ip)),
        };
        let id = parsed.key_id();
        if parsed.environment() != environment.as_str() {
            return Err(self.deny(Some(id), DenialReason::WrongEnvironment, None, client_ip));
        }
        self.check_with(
            id,
            parsed.expose_secret(),
            environment,
            client_ip,
            |key, now| key.check_access(client_ip, now),
        )
        .await
    }

    /// Checks a key id and secret given separately, for `req`: HTTP Basic
    /// `key_id:secret`, and keys imported from another system (whose
    /// secrets need not follow this token format; see
    /// [`ImportKey`](crate::ImportKey)). The secret must be 1 to
    /// [`MAX_PAIR_SECRET_LEN`] visible ASCII characters and the id a valid
    /// [`KeyId`](crate::KeyId); otherwise the denial is
    /// [`DenialReason::Malformed`] without any store access. Then the same
    /// cache, throttle, argon2 cap and denials as [`Verifier::verify`], and
    /// the key must belong to `req.environment`.
    pub async fn verify_pair(
        &self,
        key_id: &str,
        secret: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        crate::trace::verify_span("pair", self.verify_pair_impl(key_id, secret, req)).await
    }

    async fn verify_pair_impl(
        &self,
        key_id: &str,
        secret: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        self.check_pair_input(key_id, secret, req.client_ip)?;
        let rule = self.shared.policy.resource_rule();
        self.check_with(
            key_id,
            secret,
            req.environment,
            req.client_ip,
            |key, now| key.check(req, rule, now),
        )
        .await
    }

    /// [`Verifier::authenticate`] for an id + secret pair (see
    /// [`Verifier::verify_pair`]): valid, usable now from `client_ip`, no
    /// permission asked.
    pub async fn authenticate_pair(
        &self,
        key_id: &str,
        secret: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedKey, Denial> {
        crate::trace::verify_span(
            "pair",
            self.authenticate_pair_impl(key_id, secret, environment, client_ip),
        )
        .await
    }

    async fn authenticate_pair_impl(
        &self,
        key_id: &str,
        secret: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedKey, Denial> {
        self.check_pair_input(key_id, secret, client_ip)?;
        self.check_with(key_id, secret, environment, client_ip, |key, now| {
            key.check_access(client_ip, now)
        })
        .await
    }

    /// Refuses pair input no key could match, before any store access.
    fn check_pair_input(
        &self,
        key_id: &str,
        secret: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<(), Denial> {
        let malformed = |e| self.deny(None, DenialReason::Malformed(e), None, client_ip);
        if key_id.is_empty() || secret.is_empty() {
            return Err(malformed(TokenError::Empty));
        }
        for (len, max) in [
            (key_id.len(), crate::token::MAX_KEY_ID_LEN),
            (secret.len(), MAX_PAIR_SECRET_LEN),
        ] {
            if len > max {
                return Err(malformed(TokenError::TooLong { len, max }));
            }
        }
        if let Some(position) = key_id.bytes().position(|b| !b.is_ascii_alphanumeric()) {
            return Err(malformed(TokenError::BadCharacter { position }));
        }
        if let Some(position) = secret.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(malformed(TokenError::BadCharacter { position }));
        }
        Ok(())
    }

    /// Proves `secret` for key `id` (cache, else store and argon2), runs
    /// `check` on the key, and records the outcome (usage or failure).
    #[inline]
    async fn check_with(
        &self,
        id: &str,
        secret: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        check: impl FnOnce(&CompiledKey, DateTime<Utc>) -> Result<(), DenialReason>,
    ) -> Result<VerifiedKey, Denial> {
        let shared = &*self.shared;
        let mut now = shared.clock.now();
        let fingerprint = || shared.fingerprinter.fingerprint(secret.as_bytes());
        let proof = match shared.cache.lookup_proof(id, environment, fingerprint, now) {
            Lookup::Hit(Cached::Live(key)) => Ok(key),
            Lookup::Hit(Cached::Dead(reason, owner)) => {
                return Err(self.deny_owned(Some(id), owner, reason, None, client_ip));
            }
            Lookup::Stale(proof) => Err(Some(proof)),
            Lookup::Miss => Err(None),
        };
        let key = match proof {
            Ok(key) => key,
            Err(proof) => match self
                .cold(id, environment, secret, now, client_ip, proof)
                .await
            {
                Ok(key) => {
                    // The cold check may have waited (store, argon2 slot):
                    // judge expiry at the time it ends.
                    now = shared.clock.now();
                    key
                }
                Err(ColdDenial(reason, retry, owner)) => {
                    return Err(self.deny_owned(Some(id), owner, reason, retry, client_ip));
                }
            },
        };
        match check(&key, now) {
            Ok(()) => {
                self.used(&key, client_ip, now);
                Ok(VerifiedKey::from_compiled(key, now))
            }
            Err(reason) => {
                Err(self.deny_owned(Some(id), Some(key.owner.clone()), reason, None, client_ip))
            }
        }
    }

    /// Notes a successful use; starts a store write (never awaited) when
    /// the key's usage interval has passed.
    #[inline]
    fn used(&self, key: &CompiledKey, client_ip: Option<IpAddr>, now: DateTime<Utc>) {
        crate::trace::verified(&key.id, key.owner.as_str());
        let Some(cell) = &key.usage else { return };
        let Some(write) = cell.touch(now, client_ip, self.shared.usage.interval) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let shared = Arc::clone(&self.shared);
                handle.spawn(async move {
                    if let Err(e) = shared
                        .store
                        .record_usage(&write.id, write.at, write.ip)
                        .await
                    {
                        crate::trace::usage_write_failed(&write.id, &e);
                        shared.usage.restore(&write);
                        return;
                    }
                    if shared.audit.enabled() {
                        let event = shared.usage_event(&write);
                        if let Err(e) = shared.audit.send(vec![event]).await {
                            crate::trace::audit_failed(&e);
                        }
                    }
                });
            }
            // No runtime to write from: keep it for the next flush.
            Err(_) => self.shared.usage.restore(&write),
        }
    }

    /// Builds a denial and counts it for the audit trail (aggregated), for
    /// a key whose owner is not known.
    fn deny(
        &self,
        id: Option<&str>,
        reason: DenialReason,
        retry_after: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> Denial {
        self.deny_owned(id, None, reason, retry_after, client_ip)
    }

    /// Builds a denial and counts it for the audit trail (aggregated). With
    /// the owner where the key was found, so the owner's own audit queries
    /// show the failed attempts on their keys.
    fn deny_owned(
        &self,
        id: Option<&str>,
        owner: Option<OwnerId>,
        reason: DenialReason,
        retry_after: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> Denial {
        crate::trace::denied(id, owner.as_ref().map(OwnerId::as_str), &reason);
        let denial = Denial {
            retry_after,
            ..Denial::new(reason, id)
        };
        let shared = &*self.shared;
        if shared.audit.enabled() {
            let now = shared.clock.now();
            if let Some(events) = shared.audit.failures.add(
                denial.key_id.clone(),
                owner,
                denial.reason.code(),
                client_ip,
                now,
            ) {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let shared = Arc::clone(&self.shared);
                    handle.spawn(async move {
                        if let Err(e) = shared.audit.send(events).await {
                            crate::trace::audit_failed(&e);
                        }
                    });
                }
            }
        }
        denial
    }

    /// The cache missed: read the store, prove the secret with argon2
    /// (unless `proof` shows it was proven against the hash the store still
    /// holds), cache.
    async fn cold(
        &self,
        id: &str,
        env: &Environment,
        secret: &str,
        now: DateTime<Utc>,
        client_ip: Option<IpAddr>,
        proof: Option<Proof>,
    ) -> Result<Arc<CompiledKey>, ColdDenial> {
        let shared = &*self.shared;
        let source = client_ip.map(Source::of);
        // A throttled source or id is refused before the store is read: a
        // flood of wrong secrets then costs neither argon2 nor store round
        // trips. A secret proven earlier skips both (no lockout). The
        // source's token is taken here, before the read, so a burst of
        // concurrent checks cannot all slip past a peek; it is given back
        // when the secret proves right or the check could not be made.
        let mut source_token = None;
        if proof.is_none() {
            if let Some(s) = source {
                if let Err(wait) = shared.sources.try_acquire(&s, &(), now) {
                    return Err(ColdDenial(
                        DenialReason::Throttled,
                        wait.to_std().ok(),
                        None,
                    ));
                }
                source_token = Some(s);
            }
            if let Some((wait, (owner, _))) =
                shared.throttle.peek(id, now).filter(|(_, (_, e))| e == env)
            {
                return Err(ColdDenial(
                    DenialReason::Throttled,
                    wait.to_std().ok(),
                    Some(owner),
                ));
            }
        }
        let refund_source = || {
            if let Some(s) = source_token {
                shared.sources.refund(&s, now);
            }
        };
        // An unknown id keeps its source's token, as a wrong secret does:
        // a source sending random ids is throttled like one sending wrong
        // secrets, and its flood stops reaching the store.
        let unknown = || ColdDenial(DenialReason::UnknownKey, None, None);
        let key_id = KeyId::new(id).map_err(|_| unknown())?;
        if shared.unknown.contains(id, now) {
            return Err(unknown());
        }
        // A check that will need argon2 but could not get into the queue
        // is refused before it costs a store read.
        if proof.is_none() {
            if let Err(PoolError::Overloaded { retry_after }) = shared.hashing.admits(source) {
                refund_source();
                return Err(ColdDenial(
                    DenialReason::Overloaded,
                    Some(retry_after),
                    None,
                ));
            }
        }
        let epoch = shared.cache.epoch();
        let record = match shared.store.get(&key_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                shared
                    .unknown
                    .insert(&key_id, shared.clock.now(), &shared.cache, epoch);
                return Err(unknown());
            }
            Err(_) => {
                refund_source();
                return Err(ColdDenial(DenialReason::StoreUnavailable, None, None));
            }
        };
        if record.id != key_id || record.environment != *env {
            return Err(unknown());
        }
        // From here on the key exists: its owner sees the failures.
        let owner = || Some(record.owner.clone());
        let stored = record.secret_hash.as_str();
        let digest: HashDigest = Sha256::digest(stored.as_bytes()).into();
        let rehash = match &proof {
            // Proven in this process against the hash the store still
            // holds: the same secret matches it again, no argon2.
            Some(p) if p.hash == digest => crate::hash::needs_replacing(&*shared.hasher, stored),
            _ => {
                // A proof against an older hash (regenerated, rehashed)
                // skips the throttles, as the secret was right before, but
                // not argon2.
                let fingerprint = || shared.fingerprinter.fingerprint(secret.as_bytes());
                if proof.is_some() {
                    // Checked once: concurrent checks with this (perhaps
                    // old, leaked) secret now take the throttled path.
                    shared.cache.forget_proof(id, &fingerprint());
                } else {
                    let tag = (record.owner.clone(), record.environment.clone());
                    if let Err(wait) = shared.throttle.try_acquire(&key_id, &tag, now) {
                        return Err(ColdDenial(
                            DenialReason::Throttled,
                            wait.to_std().ok(),
                            owner(),
                        ));
                    }
                }
                // Tokens go back when the secret proves right or could not
                // be checked; only the tokens this check took.
                let refund = || {
                    if proof.is_none() {
                        shared.throttle.refund(&key_id, now);
                    }
                    refund_source();
                };
                let phc = stored.to_owned();
                let owned_secret = Zeroizing::new(secret.as_bytes().to_vec());
                let verified = shared
                    .hashing
                    .run(source, move |h, scratch| {
                        crate::hash::verify_stored(h, &owned_secret, &phc, scratch)
                    })
                    .await;
                let (ok, rehash) = match verified {
                    Ok(answer) => answer,
                    Err(e) => {
                        refund();
                        return Err(match e {
                            PoolError::Overloaded { retry_after } => {
                                ColdDenial(DenialReason::Overloaded, Some(retry_after), owner())
                            }
                            PoolError::Hash(_) => {
                                ColdDenial(DenialReason::CorruptRecord, None, owner())
                            }
                        });
                    }
                };
                if !ok {
                    return Err(ColdDenial(DenialReason::WrongSecret, None, owner()));
                }
                refund();
                rehash
            }
        };
        let fingerprint = shared.fingerprinter.fingerprint(secret.as_bytes());
        let dead = if record.revoked_at.is_some() {
            Some(DenialReason::Revoked)
        } else if record.suspended_at.is_some() {
            // Reversible: dropped from the cache by resume (and by the TTL).
            Some(DenialReason::Suspended)
        } else {
            None
        };
        if let Some(reason) = dead {
            shared.cache.insert_proven(
                &key_id,
                &record.environment,
                fingerprint,
                Cached::Dead(reason.clone(), owner()),
                Some(digest),
                shared.clock.now(),
                epoch,
            );
            return Err(ColdDenial(reason, None, owner()));
        }
        let key = match proof.and_then(|p| p.key) {
            // Nothing changed since it was compiled: no recompiling.
            Some(key) if key.still_matches(&record, &shared.policy) => key,
            _ => {
                let mut compiled = CompiledKey::compile(&record, &shared.policy)
                    .map_err(|_| ColdDenial(DenialReason::CorruptRecord, None, owner()))?;
                compiled.usage = Some(shared.usage.cell(&record.id, &record.owner));
                Arc::new(compiled)
            }
        };
        shared.cache.insert_proven(
            &key_id,
            &record.environment,
            fingerprint,
            Cached::Live(Arc::clone(&key)),
            Some(digest),
            shared.clock.now(),
            epoch,
        );
        if rehash {
            self.rehash(record, secret).await;
        }
        Ok(key)
    }

    /// Replaces a hash made with weaker parameters. Best effort: a concurrent
    /// change wins, and the next successful check tries again.
    async fn rehash(&self, mut record: KeyRecord, secret: &str) {
        let shared = &*self.shared;
        let owned_secret = Zeroizing::new(secret.as_bytes().to_vec());
        if let Ok(phc) = shared
            .run_hasher(move |h, scratch| h.hash_with(&owned_secret, scratch))
            .await
        {
            let expected = record.generation;
            record.secret_hash = crate::key::SecretHash::new(phc);
            record.generation += 1;
            let _ = shared.store.update(&record, expected).await;
        }
    }

    /// Forgets a key at once, and this process's cached sessions of it, so
    /// their next check reads the store. Call it from a change feed when
    /// another process changed the key.
    pub fn invalidate(&self, id: &KeyId) {
        self.shared.invalidate(id);
    }

    /// Like [`Verifier::invalidate`], and also forgets the proof that the
    /// key's secret was checked (see [`VerifierConfig::cache_ttl`]), so its
    /// next check runs argon2 again. [`Verifier::invalidate`] is enough for
    /// any change of a key; this is for benchmarks of the cold path, and
    /// for an operator who wants a secret proven from scratch.
    pub fn forget(&self, id: &KeyId) {
        self.shared.invalidate(id);
        self.shared.cache.remove(id.as_str());
    }

    /// Forgets every cached key and session (after a change feed reconnects,
    /// for example).
    pub fn invalidate_all(&self) {
        self.shared.invalidate_all();
    }

    /// Number of keys the cache trusts without a store read (entries
    /// invalidated are not counted; those past their TTL are until evicted).
    pub fn cached_keys(&self) -> usize {
        self.shared.cache.len()
    }

    /// The resource rule the verifier checks names with.
    pub fn resource_rule(&self) -> &ResourceRule {
        self.shared.policy.resource_rule()
    }
}
