//! The [`Verifier`] front: parse, check the cache, fall back to the cold
//! path, record the outcome.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::cache::{Cached, Lookup, Proof};
use super::cold::{Admission, Admitted, ColdDenial, Refused};
use super::compiled::{CompiledKey, VerifiedKey};
use super::denial::{Denial, DenialReason};
use super::flights::{Lead, MAX_WAITS};
use super::ledger::{Outcome, UsageSeen, top_up};
use super::request::{Spending, VerifyRequest};
use super::shared::{MAX_SOURCE_WAITS, Shared};
use super::throttle::Waiters;
use crate::hash::FINGERPRINT_LEN;
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::policy::ResourceRule;
use crate::store::KeyStore;
use crate::token::TokenError;
use crate::trace::VerifySpan;
use crate::usage::UsageError;

/// The longest secret [`Verifier::verify_pair`] accepts.
pub const MAX_PAIR_SECRET_LEN: usize = 256;

/// Checks tokens: parse, checksum and environment, then the cache, and only
/// on a miss the store and argon2. Cheap to clone; get one from
/// [`KeyManager::verifier`](crate::KeyManager::verifier).
///
/// **Cache.** After a key's secret was proven once, the verifier keeps the
/// compiled policy and a keyed SHA-256 fingerprint of the secret (under a
/// per-process random key; never the secret) for
/// [`VerifierConfig::cache_ttl`](crate::verify::VerifierConfig::cache_ttl).
/// A hit compares fingerprints in constant time and checks expiry and policy:
/// about a microsecond. Revoke, regenerate, edit and delete through the
/// manager invalidate the entry before they return; other processes call
/// [`Verifier::invalidate`] from a change feed, and the TTL bounds the rest.
///
/// **Cold checks.** Unknown ids and bad checksums never reach argon2. Each
/// cold check of an existing key takes a token from a per-id bucket
/// ([`VerifierConfig::failure_burst`](crate::verify::VerifierConfig::failure_burst)); a
/// right secret gives it back, so only wrong secrets are throttled, and a
/// caller whose right secret is cached is never slowed by them. At most
/// [`VerifierConfig::max_concurrent_hashes`](crate::verify::VerifierConfig::max_concurrent_hashes)
/// argon2 computations run at once, on keyward's own hashing threads,
/// behind a bounded queue that is fair across client sources (beyond it a
/// check is refused as [`DenialReason::Overloaded`](crate::DenialReason::Overloaded)).
///
/// **Failures deny.** A store error or an unusable record is a denial
/// ([`DenialKind::Unavailable`](crate::verify::DenialKind::Unavailable)), never a pass.
///
/// A check, the [`VerifiedKey`](crate::VerifiedKey) it gives, and a
/// [`Denial`](crate::Denial):
///
/// ```
/// use keyward::prelude::*;
/// use keyward::verify::DenialKind;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let registry = PermissionRegistry::builder()
///     .permission("package:push")
///     .permission("package:unlist")
///     .build()
///     .unwrap();
/// let push = registry.get("package:push").unwrap();
/// let unlist = registry.get("package:unlist").unwrap();
/// let manager = KeyManager::builder(
///     MemoryStore::new(),
///     TokenFormat::new("mkh", &["live"]).unwrap(),
///     Policy::new(registry),
/// )
/// .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
/// .build()
/// .unwrap();
/// let created = manager
///     .create(
///         &Actor::system("docs"),
///         NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::only(["package:push"])),
///     )
///     .await
///     .unwrap();
/// let token = created.token.expose_secret();
/// let verifier = manager.verifier();
/// let live = Environment::new("live").unwrap();
///
/// let key = verifier.verify(token, &VerifyRequest::new(&live, push)).await.unwrap();
/// assert_eq!(key.owner().as_str(), "contoso");
/// assert_eq!(key.id(), &created.key.id);
///
/// let refused = verifier.verify(token, &VerifyRequest::new(&live, unlist)).await.unwrap_err();
/// assert_eq!(refused.kind(), DenialKind::Authorization);
/// assert_eq!(refused.key_id.as_ref(), Some(&created.key.id));
///
/// let garbage = verifier.verify("mkh_live_nope", &VerifyRequest::new(&live, push)).await.unwrap_err();
/// assert_eq!(garbage.reason.code(), "malformed");
/// assert_eq!(garbage.kind(), DenialKind::Authentication);
/// # });
/// ```
pub struct Verifier<S> {
    pub(crate) shared: Arc<Shared<S>>,
}

/// Which waits [`Verifier::begin`] may still answer with.
#[derive(Clone, Copy)]
struct MayWait {
    /// For a check of the same id proving the same secret
    /// ([`Begun::Wait`]).
    flight: bool,
    /// For a token of the source that a check in flight holds
    /// ([`Begun::SourceBusy`]).
    source: bool,
}

impl MayWait {
    /// A check that has not waited yet.
    const ALL: Self = Self {
        flight: true,
        source: true,
    };

    /// After `flights` and `sources` waits.
    fn after(flights: u32, sources: u32) -> Self {
        Self {
            flight: flights < MAX_WAITS,
            source: sources < MAX_SOURCE_WAITS,
        }
    }
}

/// What the part of a check that never waits decided ([`Verifier::begin`]).
enum Begun<'a> {
    /// The answer, without waiting.
    Done(Result<VerifiedKey, Denial>),
    /// The cache could not prove the secret and [`Shared::admit`] let the
    /// check through: the cold path proves it.
    Cold {
        id: &'a str,
        secret: &'a str,
        /// A stale entry's proof, if any.
        proof: Option<Proof>,
        /// The source's throttle token it took.
        admitted: Admitted,
        /// When the check began, in microseconds since the epoch.
        now: i64,
        /// This check's lead for the id (an unproven secret), which checks
        /// of the same id that start meanwhile wait for.
        lead: Option<Lead>,
        /// The secret's fingerprint, if computed already (for the lead):
        /// the cold path computes it only if not.
        fingerprint: Option<[u8; FINGERPRINT_LEN]>,
    },
    /// The secret is unproven and another check of the same id is proving
    /// the same secret: wait for it to end, then begin again.
    Wait {
        id: &'a str,
        secret: &'a str,
        flight: Arc<Notify>,
    },
    /// The secret is unproven and the client's source has no token left,
    /// but checks in flight hold some: wait for `released`, then begin
    /// again.
    SourceBusy {
        id: &'a str,
        secret: &'a str,
        waiters: Arc<Waiters>,
        /// When a token will have refilled (no release wakes for that).
        wait: Duration,
    },
    /// Proven and allowed, but a usage block is short: lease, then spend.
    Lease {
        id: &'a str,
        key: Arc<CompiledKey>,
        now: i64,
    },
}

/// The key id a denial names: as the token gave it, and as a [`KeyId`]
/// when the caller already has one.
struct Named<'a> {
    id: &'a str,
    key_id: Option<KeyId>,
}

impl<'a> Named<'a> {
    fn new(id: &'a str, key_id: Option<KeyId>) -> Self {
        Self { id, key_id }
    }

    /// The [`KeyId`], made from the token's id unless the caller had it.
    #[inline(always)]
    fn key_id(self) -> Option<KeyId> {
        self.key_id.or_else(|| KeyId::new(self.id).ok())
    }
}

/// What [`Verifier::settle`] decided for a proven key.
enum Settled {
    /// Refused, or allowed with its spending taken and its use noted.
    Done(Result<VerifiedKey, Denial>),
    /// Allowed, but a usage block is short: nothing taken yet.
    Lease(Arc<CompiledKey>),
}

/// The four entry points' shared start: `begin` (the part of a check that
/// never waits) inside a `keyward.verify` span of `kind`; when the check
/// must wait, `Err` with the rest (`finish`) boxed and run in the same
/// span. The span lives only in this call, so the check's future holds
/// just its arguments and the box (`tests/hot_path.rs`). Callers bind the
/// box before awaiting it: awaited inside a `match` arm, the scrutinee
/// would stay in the future (160 bytes instead of 72).
#[inline]
#[allow(clippy::type_complexity)]
fn started<'a, C, F>(
    kind: &'static str,
    check: C,
    begin: impl FnOnce(&C) -> Begun<'a>,
    finish: impl FnOnce(Begun<'a>, C) -> F,
) -> Result<Result<VerifiedKey, Denial>, Pin<Box<impl Future<Output = F::Output> + 'a>>>
where
    F: Future<Output = Result<VerifiedKey, Denial>> + 'a,
{
    let span = VerifySpan::new(kind);
    match span.in_scope(|| begin(&check)) {
        Begun::Done(answer) => Ok(answer),
        begun => Err(Box::pin(span.instrument(finish(begun, check)))),
    }
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
        let (env, ip, spending) = (req.environment, req.client_ip, Some(&req.spending));
        let (id, secret) = self.credential("key", None, token, env, ip)?;
        let rule = self.shared.policy.resource_rule();
        let check = |key: &CompiledKey, now| key.check_at(req, rule, now);
        let rest = match started(
            "key",
            check,
            |check| self.begin(id, secret, env, ip, spending, check, MayWait::ALL),
            |begun, check| self.finish(begun, env, ip, spending, check),
        ) {
            Ok(answer) => return answer,
            Err(rest) => rest,
        };
        rest.await
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
        let (id, secret) = self.credential("key", None, token, environment, client_ip)?;
        let check = |key: &CompiledKey, now| key.check_access_at(client_ip, now);
        let rest = match started(
            "key",
            check,
            |check| {
                self.begin(
                    id,
                    secret,
                    environment,
                    client_ip,
                    None,
                    check,
                    MayWait::ALL,
                )
            },
            |begun, check| self.finish(begun, environment, client_ip, None, check),
        ) {
            Ok(answer) => return answer,
            Err(rest) => rest,
        };
        rest.await
    }

    /// Checks a key id and secret given separately, for `req`: HTTP Basic
    /// `key_id:secret`, and keys imported from another system (whose
    /// secrets need not follow this token format; see
    /// [`ImportKey`](crate::manager::ImportKey)). The secret must be 1 to
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
        let (env, ip, spending) = (req.environment, req.client_ip, Some(&req.spending));
        let (id, secret) = self.credential("pair", Some(key_id), secret, env, ip)?;
        let rule = self.shared.policy.resource_rule();
        let check = |key: &CompiledKey, now| key.check_at(req, rule, now);
        let rest = match started(
            "pair",
            check,
            |check| self.begin(id, secret, env, ip, spending, check, MayWait::ALL),
            |begun, check| self.finish(begun, env, ip, spending, check),
        ) {
            Ok(answer) => return answer,
            Err(rest) => rest,
        };
        rest.await
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
        let (id, secret) = self.credential("pair", Some(key_id), secret, environment, client_ip)?;
        let check = |key: &CompiledKey, now| key.check_access_at(client_ip, now);
        let rest = match started(
            "pair",
            check,
            |check| {
                self.begin(
                    id,
                    secret,
                    environment,
                    client_ip,
                    None,
                    check,
                    MayWait::ALL,
                )
            },
            |begun, check| self.finish(begun, environment, client_ip, None, check),
        ) {
            Ok(answer) => return answer,
            Err(rest) => rest,
        };
        rest.await
    }

    /// The key id and secret of a credential, read without any store
    /// access: a token of keyward's format (`pair_id: None`; parsed and of
    /// `environment`), or an id + secret pair (the input rule,
    /// [`check_pair_input`]). A refusal is recorded, inside the
    /// `keyward.verify` span of `kind` like the rest of a check.
    ///
    /// The entry points call this before anything else and return its
    /// refusal with `?`: built where the answer goes, not moved through
    /// [`Begun`] and [`started`] (issue 14: a malformed token's refusal
    /// was mostly copies of its [`Denial`]).
    #[inline]
    fn credential<'a>(
        &self,
        kind: &'static str,
        pair_id: Option<&'a str>,
        secret: &'a str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
    ) -> Result<(&'a str, &'a str), Denial> {
        let refuse =
            |id, reason| VerifySpan::new(kind).in_scope(|| self.deny(id, reason, None, client_ip));
        if let Some(id) = pair_id {
            return match check_pair_input(id, secret) {
                Ok(()) => Ok((id, secret)),
                Err(e) => Err(refuse(None, DenialReason::Malformed(e))),
            };
        }
        let parsed = match self.shared.format.parse(secret) {
            Ok(parsed) => parsed,
            Err(e) => return Err(refuse(None, DenialReason::Malformed(e))),
        };
        let id = parsed.key_id();
        if parsed.environment() != environment.as_str() {
            return Err(refuse(Some(id), DenialReason::WrongEnvironment));
        }
        Ok((id, parsed.expose_secret()))
    }

    /// The part of a check that never waits, run when the check is first
    /// polled: the cache's answer; for a proven key its policy check,
    /// spending from the local blocks and the use noted
    /// ([`Verifier::settle`]); on a miss the throttles and the unknown-id
    /// memory ([`Shared::admit`]).
    ///
    /// A cached hit (and every refusal that needs no store) ends here, so
    /// the future a check returns holds only its arguments and, when the
    /// check must wait, one box with the rest ([`Verifier::finish`]): the
    /// cold path's state (store read, argon2 queue) is kilobytes, and
    /// inline it would make every check's future that large to build and
    /// move (issue 14).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn begin<'a>(
        &self,
        id: &'a str,
        secret: &'a str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        spending: Option<&Spending<'_>>,
        check: &impl Fn(&CompiledKey, i64) -> Result<(), DenialReason>,
        may: MayWait,
    ) -> Begun<'a> {
        // Microseconds: every time a check compares is an integer.
        let now = self.shared.clock.now_micros();
        let proof = match self.by_cache(id, secret, environment, client_ip, spending, check, now) {
            Ok(begun) => return begun,
            Err(proof) => proof,
        };
        // The secret's fingerprint, computed at most once here: only for an
        // id with a lead, and for a check that leads.
        let mut computed = None;
        let mut fingerprint = || {
            *computed
                .get_or_insert_with(|| self.shared.fingerprinter.fingerprint(secret.as_bytes()))
        };
        // An unproven secret while another check of the id proves the same
        // secret: wait for it before touching any bucket (`flights`: then a
        // hit that takes no token).
        if proof.is_none() && may.flight {
            if let Some(flight) = self.shared.flights.in_flight(id, &mut fingerprint) {
                return Begun::Wait { id, secret, flight };
            }
        }
        // Throttles and the unknown-id memory first: a flood of them never
        // builds the box.
        let proven = proof.is_some();
        let shared = &*self.shared;
        match shared.admit(
            &shared.unknown,
            id,
            environment,
            now,
            client_ip,
            proven,
            may.source,
        ) {
            Admission::Admitted(admitted) => {
                let lead = if proof.is_none() {
                    self.shared.flights.lead(id, fingerprint())
                } else {
                    None
                };
                Begun::Cold {
                    id,
                    secret,
                    proof,
                    admitted,
                    now,
                    lead,
                    fingerprint: computed,
                }
            }
            Admission::Busy { waiters, wait } => Begun::SourceBusy {
                id,
                secret,
                waiters,
                wait: wait.to_std().unwrap_or_default(),
            },
            Admission::Refused(Refused(ColdDenial(reason, retry, owner), key_id)) => {
                let named = Some(Named::new(id, key_id));
                let denial = self.deny_named(named, owner, reason, retry, client_ip);
                Begun::Done(Err(denial))
            }
        }
    }

    /// The cache's part of [`Verifier::begin`] at `now`: `Ok` when the
    /// cache decides (a cached refusal, or a proven key settled by
    /// [`Verifier::settle`]); `Err` with a stale entry's proof, if any,
    /// when the cold path must prove the secret, having taken and recorded
    /// nothing.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn by_cache<'a>(
        &self,
        id: &'a str,
        secret: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        spending: Option<&Spending<'_>>,
        check: &impl Fn(&CompiledKey, i64) -> Result<(), DenialReason>,
        now: i64,
    ) -> Result<Begun<'a>, Option<Proof>> {
        let shared = &*self.shared;
        let fingerprint = || shared.fingerprinter.fingerprint(secret.as_bytes());
        match shared.cache.lookup_proof(id, environment, fingerprint, now) {
            Lookup::Hit(Cached::Live(key)) => Ok(
                match self.settle(key, id, client_ip, spending, check, now) {
                    Settled::Done(answer) => Begun::Done(answer),
                    Settled::Lease(key) => Begun::Lease { id, key, now },
                },
            ),
            Lookup::Hit(Cached::Dead(reason, owner)) => {
                let denial = self.deny_owned(Some(id), owner, reason, None, client_ip);
                Ok(Begun::Done(Err(denial)))
            }
            Lookup::Stale(proof) => Err(Some(proof)),
            Lookup::Miss => Err(None),
        }
    }

    /// A proven key: runs `check`, spends what `spending` asks from the
    /// local blocks and notes the use; [`Settled::Lease`] when a block is
    /// short (nothing taken).
    #[inline]
    fn settle(
        &self,
        key: Arc<CompiledKey>,
        id: &str,
        client_ip: Option<IpAddr>,
        spending: Option<&Spending<'_>>,
        check: &impl Fn(&CompiledKey, i64) -> Result<(), DenialReason>,
        now: i64,
    ) -> Settled {
        if let Err(reason) = check(&key, now) {
            let owner = Some(key.owner.clone());
            return Settled::Done(Err(self.deny_owned(
                Some(id),
                owner,
                reason,
                None,
                client_ip,
            )));
        }
        let mut seen = UsageSeen::default();
        if let Some(spending) = spending {
            if key.metering.is_some() || spending.has_limits() {
                match self.spend_local(&key, spending, now) {
                    Ok(Some(s)) => seen = s,
                    Ok(None) => return Settled::Lease(key),
                    Err((reason, retry)) => {
                        let owner = Some(key.owner.clone());
                        let denial = self.deny_owned(Some(id), owner, reason, retry, client_ip);
                        return Settled::Done(Err(denial));
                    }
                }
            }
        }
        self.used(&key, client_ip, now);
        Settled::Done(Ok(VerifiedKey::from_compiled(key, now).with_usage(seen)))
    }

    /// The rest of a check that must wait, after [`Verifier::begin`]: the
    /// cold path (store read, argon2, then [`Verifier::settle`]), and a
    /// lease when a usage block is short. The callers box it.
    async fn finish(
        &self,
        begun: Begun<'_>,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        spending: Option<&Spending<'_>>,
        check: impl Fn(&CompiledKey, i64) -> Result<(), DenialReason>,
    ) -> Result<VerifiedKey, Denial> {
        let shared = &*self.shared;
        let mut begun = begun;
        let (mut flight_waits, mut source_waits) = (0, 0);
        // When waiting for the source's tokens ends, however often it woke.
        let mut wait_until: Option<Option<Instant>> = None;
        let begun = loop {
            begun = match begun {
                // Bounded: `begin` gives no `Wait` once it may not wait;
                // were it to, the check fails closed.
                Begun::Wait { id, secret, flight } if flight_waits < MAX_WAITS => {
                    shared.flights.wait(id, flight).await;
                    flight_waits += 1;
                    let may = MayWait::after(flight_waits, source_waits);
                    self.begin(id, secret, environment, client_ip, spending, &check, may)
                }
                Begun::SourceBusy {
                    id,
                    secret,
                    waiters,
                    wait,
                } if source_waits < MAX_SOURCE_WAITS => {
                    let now = Instant::now();
                    // `None`: no bound in time (a `max_hash_wait` past
                    // what an `Instant` holds).
                    let until =
                        *wait_until.get_or_insert_with(|| now.checked_add(shared.max_source_wait));
                    source_waits += 1;
                    // This wait is within the bounds: the look below may
                    // still answer `SourceBusy`.
                    let may = MayWait {
                        source: until.is_none_or(|until| now < until),
                        ..MayWait::after(flight_waits, source_waits - 1)
                    };
                    let notified = waiters.released.notified();
                    let mut notified = std::pin::pin!(notified);
                    notified.as_mut().enable();
                    // Asked again now that no release can be missed.
                    let again =
                        self.begin(id, secret, environment, client_ip, spending, &check, may);
                    let same = matches!(
                        &again,
                        Begun::SourceBusy { waiters: still, .. } if Arc::ptr_eq(still, &waiters)
                    );
                    if !same {
                        again
                    } else {
                        drop(again);
                        if !shared
                            .wait_for_source(&waiters, notified, wait, until)
                            .await
                        {
                            // Too many checks wait already, or no alarm
                            // could be set (a wait must end): refused, as
                            // without waiting.
                            let may = MayWait {
                                source: false,
                                ..may
                            };
                            begun = self.begin(
                                id,
                                secret,
                                environment,
                                client_ip,
                                spending,
                                &check,
                                may,
                            );
                            continue;
                        }
                        let may = MayWait {
                            source: until.is_none_or(|until| Instant::now() < until),
                            ..MayWait::after(flight_waits, source_waits)
                        };
                        self.begin(id, secret, environment, client_ip, spending, &check, may)
                    }
                }
                other => break other,
            };
        };
        let (id, key, now) = match begun {
            Begun::Done(answer) => return answer,
            Begun::Lease { id, key, now } => (id, key, now),
            Begun::Wait { id, .. } => {
                let retry = Some(Duration::from_secs(1));
                let reason = DenialReason::Overloaded;
                return Err(self.deny_owned(Some(id), None, reason, retry, client_ip));
            }
            Begun::SourceBusy { id, .. } => {
                let retry = Some(Duration::from_secs(1));
                let reason = DenialReason::Throttled;
                return Err(self.deny_owned(Some(id), None, reason, retry, client_ip));
            }
            Begun::Cold {
                id,
                secret,
                proof,
                admitted,
                now,
                lead,
                fingerprint,
            } => {
                // The lead ends inside, once the key is cached (or refused).
                let cold = shared.cold(
                    id,
                    environment,
                    secret,
                    now,
                    client_ip,
                    proof,
                    admitted,
                    (lead, fingerprint),
                );
                let key = match cold.await {
                    Ok(key) => key,
                    Err(ColdDenial(reason, retry, owner)) => {
                        return Err(self.deny_owned(Some(id), owner, reason, retry, client_ip));
                    }
                };
                if key.metering.is_some() {
                    self.start_sweeper();
                }
                // The cold check may have waited (store, argon2 slot):
                // judge expiry at the time it ends.
                let now = shared.clock.now_micros();
                match self.settle(key, id, client_ip, spending, &check, now) {
                    Settled::Done(answer) => return answer,
                    Settled::Lease(key) => (id, key, now),
                }
            }
        };
        let spent = match spending {
            Some(spending) => self.spend_leasing(&key, spending, now).await,
            None => Ok(UsageSeen::default()),
        };
        match spent {
            Ok(seen) => {
                self.used(&key, client_ip, now);
                Ok(VerifiedKey::from_compiled(key, now).with_usage(seen))
            }
            Err((reason, retry)) => {
                let owner = Some(key.owner.clone());
                Err(self.deny_owned(Some(id), owner, reason, retry, client_ip))
            }
        }
    }

    /// [`Verifier::authenticate`] (`pair_id: None`) or
    /// [`Verifier::authenticate_pair`] when the answer needs no waiting: a
    /// malformed credential, a cached refusal, or a cached key (then
    /// checked and its use noted by the same [`Verifier::by_cache`] as
    /// the async check). `None`, having recorded nothing: the key must be
    /// proven by the cold path; call the async method. `now` is the
    /// caller's clock read, in microseconds since the epoch (the layer
    /// reads it once per request).
    #[cfg(feature = "axum")]
    pub(crate) fn authenticate_cached(
        &self,
        pair_id: Option<&str>,
        secret: &str,
        environment: &Environment,
        client_ip: Option<IpAddr>,
        now: i64,
    ) -> Option<Result<VerifiedKey, Denial>> {
        let kind = if pair_id.is_some() { "pair" } else { "key" };
        let (id, secret) = match self.credential(kind, pair_id, secret, environment, client_ip) {
            Ok(credential) => credential,
            Err(denial) => return Some(Err(denial)),
        };
        VerifySpan::new(kind).in_scope(|| {
            let check = |key: &CompiledKey, now| key.check_access_at(client_ip, now);
            match self.by_cache(id, secret, environment, client_ip, None, &check, now) {
                Ok(Begun::Done(answer)) => Some(answer),
                // No spending, so no lease; and a miss is the cold path's.
                Ok(
                    Begun::Lease { .. }
                    | Begun::Cold { .. }
                    | Begun::Wait { .. }
                    | Begun::SourceBusy { .. },
                )
                | Err(_) => None,
            }
        })
    }

    /// Whether [`Verifier::charge`] has anything to spend for `key`: a
    /// metered key, or a route that spends rate limits.
    #[cfg(feature = "axum")]
    pub(crate) fn charges(&self, key: &VerifiedKey, spending: &Spending<'_>) -> bool {
        key.metering.is_some() || spending.has_limits()
    }

    /// Spends what `spending` asks of a proven key that passed its policy
    /// check from the local blocks: every named limit must be one the
    /// policy declares (else the application erred), then the blocks are
    /// checked and taken together. `Ok(None)`: a block is short, lease
    /// ([`Verifier::spend_leasing`]).
    #[inline]
    fn spend_local(
        &self,
        key: &CompiledKey,
        spending: &Spending<'_>,
        now: i64,
    ) -> Result<Option<UsageSeen>, (DenialReason, Option<Duration>)> {
        let shared = &*self.shared;
        if spending.has_limits() {
            if let Some(e) = spending.malformed() {
                return Err((DenialReason::BadSpend(e), None));
            }
            if let Some((name, _)) = spending
                .limits()
                .find(|(name, _)| shared.policy.rate_limit_name(name).is_none())
            {
                let error = UsageError::UnknownLimit { name: name.into() };
                return Err((DenialReason::BadSpend(error), None));
            }
        }
        let Some(m) = &key.metering else {
            return Ok(Some(UsageSeen::default()));
        };
        match m.ledger.try_spend(m, spending, now) {
            Outcome::Spent(seen) => Ok(Some(seen)),
            Outcome::Denied(reason, retry) => Err((reason, retry)),
            Outcome::Short => Ok(None),
        }
    }

    /// [`Verifier::spend_local`] found a block short: lease, then spend.
    #[cold]
    async fn spend_leasing(
        &self,
        key: &CompiledKey,
        spending: &Spending<'_>,
        now_us: i64,
    ) -> Result<UsageSeen, (DenialReason, Option<Duration>)> {
        let shared = &*self.shared;
        let Some(m) = &key.metering else {
            return Ok(UsageSeen::default());
        };
        let now = micros_to_time(now_us);
        // A few rounds: a block leased here may be spent by concurrent
        // checks of the same key before this one takes from it.
        for _ in 0..4 {
            top_up(
                &shared.store,
                m,
                spending,
                now,
                shared.ledgers.max_credit_block,
            )
            .await
            .map_err(|reason| (reason, None))?;
            match m.ledger.try_spend(m, spending, now_us) {
                Outcome::Spent(seen) => return Ok(seen),
                Outcome::Denied(reason, retry) => return Err((reason, retry)),
                Outcome::Short => {}
            }
        }
        Err((DenialReason::Overloaded, Some(Duration::from_secs(1))))
    }

    /// Spends `spending` for a key that already passed its checks (the axum
    /// layer authenticates, authorizes, then spends), with the same rules
    /// and denials as [`Verifier::verify`]; so does
    /// [`KeyManager::verify_session`](crate::KeyManager::verify_session).
    pub(crate) async fn charge(
        &self,
        key: VerifiedKey,
        spending: &Spending<'_>,
        client_ip: Option<IpAddr>,
    ) -> Result<VerifiedKey, Denial> {
        if key.metering.is_none() && !spending.has_limits() {
            return Ok(key);
        }
        if key.metering.is_some() {
            // Sessions reach a key's ledger without the key's cold path.
            self.start_sweeper();
        }
        let now = self.shared.clock.now_micros();
        let spent = match self.spend_local(&key, spending, now) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => self.spend_leasing(&key, spending, now).await,
            Err(e) => Err(e),
        };
        match spent {
            Ok(seen) => Ok(key.with_usage(seen)),
            Err((reason, retry)) => Err(self.deny_owned(
                Some(key.id().as_str()),
                Some(key.owner.clone()),
                reason,
                retry,
                client_ip,
            )),
        }
    }

    /// Starts the task that gives idle keys' credits and tokens back to the
    /// store (once, when a tokio runtime exists). It holds the verifier's
    /// state weakly: it ends when the last manager and verifier are gone.
    fn start_sweeper(&self) {
        let shared = &*self.shared;
        if shared
            .ledgers
            .sweeper
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !shared.ledgers.claim_sweeper() {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let tick =
            (shared.ledgers.idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(shared) = weak.upgrade() else { return };
                let now_us = shared.clock.now().timestamp_micros();
                shared.ledgers.sweep(&shared.store, now_us, false).await;
            }
        });
    }

    /// Gives every unspent credit and rate-limit token this process leased
    /// back to the store, and settles the credits it spent. Await it at
    /// graceful shutdown (after the server stopped taking requests): a
    /// process that ends without it strands its unspent block per metered
    /// key (at most [`VerifierConfig::max_credit_block`](crate::verify::VerifierConfig::max_credit_block)
    /// but for the in-flight cases that field's doc names), which stays
    /// `leased` in the store. Checks after it lease again.
    ///
    /// ```
    /// # use keyward::prelude::*;
    /// # use keyward::usage::Credits;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let registry = PermissionRegistry::builder().permission("search").build().unwrap();
    /// let store = std::sync::Arc::new(MemoryStore::new());
    /// let manager = KeyManager::builder(store.clone(), TokenFormat::new("mkh", &["live"]).unwrap(), Policy::new(registry.clone()))
    ///     .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
    ///     .build()
    ///     .unwrap();
    /// let created = manager
    ///     .create(
    ///         &Actor::system("docs"),
    ///         NewKey::new("contoso", "live", "search")
    ///             .permissions(PermissionGrant::only(["search"]))
    ///             .credits(Credits::new(1_000).unwrap()),
    ///     )
    ///     .await
    ///     .unwrap();
    /// let live = Environment::new("live").unwrap();
    /// let req = VerifyRequest::new(&live, registry.get("search").unwrap()).credits(3);
    /// let verifier = manager.verifier();
    /// verifier.verify(created.token.expose_secret(), &req).await.unwrap();
    /// verifier.release_usage().await;
    /// let credits = store.get(&created.key.id).await.unwrap().unwrap().usage.credits.unwrap();
    /// assert_eq!((credits.remaining, credits.leased), (997, 0));
    /// # });
    /// ```
    pub async fn release_usage(&self) {
        let shared = &*self.shared;
        let now_us = shared.clock.now().timestamp_micros();
        shared.ledgers.sweep(&shared.store, now_us, true).await;
    }

    /// Notes a successful use; starts a store write (never awaited) when
    /// the key's usage interval has passed.
    ///
    /// Most hits end at the first test: within the second of the key's
    /// last noted use and before its next write is due, a use changes
    /// nothing, and the key's own copy of that bound is read with its other
    /// fields (no load of the usage cell, no write to any shared line).
    #[inline]
    fn used(&self, key: &CompiledKey, client_ip: Option<IpAddr>, now_us: i64) {
        crate::trace::verified(&key.id, key.owner.as_str());
        if now_us < key.usage_quiet_until.load(Ordering::Relaxed) {
            return;
        }
        let Some(cell) = &key.usage else { return };
        let interval = self.shared.usage.interval;
        let due = cell.note(micros_to_time(now_us), client_ip, interval);
        let quiet = cell.quiet_until(interval);
        if key.usage_quiet_until.load(Ordering::Relaxed) != quiet {
            key.usage_quiet_until.store(quiet, Ordering::Relaxed);
        }
        if !due {
            return;
        }
        // No runtime to write from: the use stays pending in the cell for
        // the next flush (nothing taken, nothing to put back).
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(write) = cell.take() else { return };
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
    ///
    /// Inline, with the audit trail's part out of line: a refusal is built
    /// once, where the caller's answer is, rather than returned from a call
    /// and copied (issue 14: a bad-checksum refusal is mostly moves of it).
    #[inline]
    fn deny_owned(
        &self,
        id: Option<&str>,
        owner: Option<OwnerId>,
        reason: DenialReason,
        retry_after: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> Denial {
        let named = id.map(|id| Named::new(id, None));
        self.deny_named(named, owner, reason, retry_after, client_ip)
    }

    /// [`Verifier::deny_owned`] with the id's [`KeyId`] when the caller
    /// has one. Always inline: returned from a call, the denial is copied
    /// again (a bad-checksum refusal measured 475 instructions inline, 530
    /// called).
    #[inline(always)]
    fn deny_named(
        &self,
        named: Option<Named<'_>>,
        owner: Option<OwnerId>,
        reason: DenialReason,
        retry_after: Option<Duration>,
        client_ip: Option<IpAddr>,
    ) -> Denial {
        let id = named.as_ref().map(|n| n.id);
        crate::trace::denied(id, owner.as_ref().map(OwnerId::as_str), reason.code());
        if self.shared.audit.enabled() {
            self.audit_denial(named.as_ref(), owner, reason.code(), client_ip);
        }
        Denial {
            reason,
            key_id: named.and_then(Named::key_id),
            retry_after,
        }
    }

    /// The audit trail's part of [`Verifier::deny_owned`]: given the parts,
    /// not the denial, so the denial never has an address before it is
    /// the caller's answer.
    #[inline(never)]
    fn audit_denial(
        &self,
        named: Option<&Named<'_>>,
        owner: Option<OwnerId>,
        code: &'static str,
        client_ip: Option<IpAddr>,
    ) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let key_id = named.and_then(|n| n.key_id.clone().or_else(|| KeyId::new(n.id).ok()));
        if let Some(events) = shared
            .audit
            .failures
            .add(key_id, owner, code, client_ip, now)
        {
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

    /// Forgets a key at once, and this process's cached sessions of it, so
    /// their next check reads the store. Call it from a change feed when
    /// another process changed the key.
    pub fn invalidate(&self, id: &KeyId) {
        self.shared.invalidate(id);
    }

    /// Like [`Verifier::invalidate`], and also forgets the proof that the
    /// key's secret was checked (see
    /// [`VerifierConfig::cache_ttl`](crate::verify::VerifierConfig::cache_ttl)), so its
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

impl<S: KeyStore> crate::store::Invalidate for Verifier<S> {
    fn invalidate(&self, id: &KeyId) {
        self.shared.invalidate(id);
    }
    fn invalidate_all(&self) {
        self.shared.invalidate_all();
    }
}

/// A clock read in microseconds as a time, for the paths that keep one (a
/// due usage write, a lease): rare next to the checks, which compare the
/// numbers.
fn micros_to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Refuses pair input no key could match, before any store access: an
/// empty or too long id or secret, an id of other than ASCII letters and
/// digits, a secret of other than visible ASCII.
fn check_pair_input(key_id: &str, secret: &str) -> Result<(), TokenError> {
    if key_id.is_empty() || secret.is_empty() {
        return Err(TokenError::Empty);
    }
    for (len, max) in [
        (key_id.len(), crate::ids::MAX_KEY_ID_LEN),
        (secret.len(), MAX_PAIR_SECRET_LEN),
    ] {
        if len > max {
            return Err(TokenError::TooLong { len, max });
        }
    }
    if let Some(position) = key_id.bytes().position(|b| !b.is_ascii_alphanumeric()) {
        return Err(TokenError::BadCharacter { position });
    }
    if let Some(position) = secret.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(TokenError::BadCharacter { position });
    }
    Ok(())
}
