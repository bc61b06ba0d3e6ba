//! The cold path: a cache miss reads the store, throttles, proves the
//! secret with argon2 and caches the answer.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use sha2::{Digest, Sha256};
use tokio::sync::futures::Notified;
use zeroize::Zeroizing;

use super::alarm;

use super::cache::{Cached, HashDigest, Proof, UnknownIds};
use super::compiled::CompiledKey;
use super::denial::DenialReason;
use super::flights::Lead;
use super::hash_pool::PoolError;
use super::shared::{MAX_SOURCE_WAITERS, MAX_SOURCE_WAITS, Shared};
use super::throttle::{Counted, MAX_WAITERS_PER_KEY, Short, SourceHold, Waiters, hold_source};
use crate::hash::FINGERPRINT_LEN;
use crate::ids::OwnerId;
use crate::ids::{Environment, KeyId};
use crate::key::KeyRecord;
use crate::source::Source;
use crate::store::KeyStore;

/// A cold check let through by [`Shared::admit`], with the source's
/// throttle token it holds (given back when the secret proves right or the
/// check could not be made, spent otherwise).
pub(super) struct Admitted(Option<SourceHold>);

impl Admitted {
    /// Gives the source's token back when this is dropped: the secret
    /// proved right, or the check could not be made.
    pub(super) fn succeeded(&self) {
        if let Some(hold) = &self.0 {
            hold.succeeded();
        }
    }
}

/// What [`Shared::admit`] decided.
pub(super) enum Admission {
    /// Let through to the cold path.
    Admitted(Admitted),
    /// Refused.
    Refused(Refused),
    /// The source has no token left, but checks in flight hold some: wait
    /// for a release (or `wait`, when a token will have refilled), then
    /// ask again.
    Busy {
        waiters: Arc<Waiters>,
        wait: TimeDelta,
    },
}

/// Why a cold check failed, when to retry, and the key's owner where the
/// key was found.
pub(super) struct ColdDenial(
    pub(super) DenialReason,
    pub(super) Option<Duration>,
    pub(super) Option<OwnerId>,
);

/// Why [`Shared::admit`] refused, with the key id as the unknown-id
/// memory holds it when that is what refused.
pub(super) struct Refused(pub(super) ColdDenial, pub(super) Option<KeyId>);

impl<S: KeyStore> Shared<S> {
    /// The first, synchronous steps of a cold check: the id's throttle
    /// (unless the secret was proven before) and the memory of unknown ids,
    /// then the source's throttle (likewise), one shard lock for a refused
    /// check as for an admitted one. Done before the cold path's future is
    /// built (it is boxed), so a flood of throttled sources or remembered
    /// unknown ids is answered without an allocation; the source's token
    /// held here goes to [`Shared::cold`]. (Holding it first and releasing
    /// it on these refusals took two locks and an `Arc` count: `unknown_id`
    /// went from 0.42 to 0.55 of the baseline, 2026-12-03.)
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit(
        &self,
        unknown: &UnknownIds,
        id: &str,
        env: &Environment,
        now: i64,
        client_ip: Option<IpAddr>,
        proven: bool,
        may_wait: bool,
    ) -> Admission {
        let shared = self;
        // A throttled source or id is refused before the store is read: a
        // flood of wrong secrets then costs neither argon2 nor store round
        // trips. A secret proven earlier skips both (no lockout). First
        // what refuses whatever the source's bucket holds: the id's bucket,
        // and the memory of unknown ids (refused naming the id as the
        // memory keeps it).
        let throttled = |(wait, (owner, _)): (TimeDelta, (OwnerId, Environment))| {
            let why = ColdDenial(DenialReason::Throttled, wait.to_std().ok(), Some(owner));
            Refused(why, None)
        };
        let refused = (!proven)
            .then(|| shared.throttle.peek(id, now))
            .flatten()
            .filter(|(_, (_, e))| e == env)
            .map(throttled)
            .or_else(|| {
                let key_id = unknown.remembered(id, now)?;
                Some(Refused(
                    ColdDenial(DenialReason::UnknownKey, None, None),
                    key_id,
                ))
            });
        let source = client_ip.filter(|_| !proven).map(Source::of);
        let Some(source) = source else {
            return match refused {
                Some(refused) => Admission::Refused(refused),
                None => Admission::Admitted(Admitted(None)),
            };
        };
        let source_refused = |wait: TimeDelta| {
            let why = ColdDenial(DenialReason::Throttled, wait.to_std().ok(), None);
            Admission::Refused(Refused(why, None))
        };
        // Refused all the same: it spends a token of its source, as a wrong
        // secret does, in one step (a source sending random ids is
        // throttled like one sending wrong secrets, and its flood stops
        // reaching the store), or is refused for its source first.
        if let Some(refused) = refused {
            return match shared.sources.try_acquire(&source, &(), now) {
                Ok(()) => Admission::Refused(refused),
                Err(wait) => source_refused(wait),
            };
        }
        // The source's token is held from here, before the read, so a
        // burst of concurrent checks cannot all slip past a peek; it is
        // given back when the secret proves right or the check could not
        // be made. When the source's tokens are all held by checks in
        // flight (not spent by failures), the check waits for one to end
        // instead of being refused: a fleet's first uses behind one
        // address are not failures.
        match hold_source(&shared.sources, source, now, may_wait) {
            Ok(hold) => Admission::Admitted(Admitted(Some(hold))),
            Err(Short::Held { wait, waiters }) => Admission::Busy { waiters, wait },
            Err(Short::Empty(wait)) => source_refused(wait),
        }
    }

    /// One wait of a cold check for a token of its source that checks in
    /// flight hold, after a look said so ([`Admission::Busy`]) with
    /// `released` (of `waiters`) enabled before that look, so that no
    /// release is missed. Counted in while it waits only, so that its own
    /// looks never find itself among the waiters (at most
    /// [`MAX_WAITERS_PER_KEY`] on one source, [`MAX_SOURCE_WAITERS`] in
    /// all); woken by a release, or by an alarm when a token will have
    /// refilled (`wait`) or `until` is up. `false`: it could not wait (too
    /// many wait already, or no alarm could be set: a wait must end), and
    /// is to be refused, as without waiting.
    pub(super) async fn wait_for_source(
        &self,
        waiters: &Waiters,
        released: Pin<&mut Notified<'_>>,
        wait: Duration,
        until: Option<Instant>,
    ) -> bool {
        let Some(_one_of_its_source) = Counted::enter(&waiters.waiting, MAX_WAITERS_PER_KEY) else {
            return false;
        };
        let Some(_one_of_all) = Counted::enter(&self.source_waiters, MAX_SOURCE_WAITERS) else {
            return false;
        };
        let ring_at = match (Instant::now().checked_add(wait), until) {
            (Some(refilled), Some(until)) => Some(refilled.min(until)),
            (refilled, until) => refilled.or(until),
        };
        let Some(rung) = ring_at.and_then(alarm::set) else {
            return false;
        };
        alarm::either(rung, released).await;
        true
    }

    /// [`Shared::admit`] for a check that needs no argon2 (a session
    /// token's, with the memory of unknown session ids), waiting as a
    /// key's first use does while its source's tokens are all held by
    /// checks in flight, within the same bounds ([`Shared::wait_for_source`],
    /// `max_hash_wait` in all, [`MAX_SOURCE_WAITS`] wake-ups). Each look
    /// after the first reads the clock again, so a token that refilled
    /// while it waited is seen. `Ok` with the time of the look that let it
    /// through.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn admit_waiting(
        &self,
        unknown: &UnknownIds,
        id: &str,
        env: &Environment,
        now: i64,
        client_ip: Option<IpAddr>,
        proven: bool,
    ) -> Result<(Admitted, i64), ColdDenial> {
        let mut first = Some(now);
        let mut look = |may_wait| {
            let now = first.take().unwrap_or_else(|| self.clock.now_micros());
            match self.admit(unknown, id, env, now, client_ip, proven, may_wait) {
                Admission::Admitted(admitted) => Ok(Ok((admitted, now))),
                Admission::Refused(Refused(why, _)) => Ok(Err(why)),
                Admission::Busy { waiters, wait } => Err((waiters, wait)),
            }
        };
        // `None`: no bound in time (a `max_hash_wait` past what an
        // `Instant` holds).
        let until = Instant::now().checked_add(self.max_source_wait);
        let mut waits = 0;
        loop {
            let may_wait = waits < MAX_SOURCE_WAITS && until.is_none_or(|u| Instant::now() < u);
            let (waiters, wait) = match look(may_wait) {
                Ok(answer) => return answer,
                Err(busy) => busy,
            };
            waits += 1;
            let released = waiters.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            // Asked again now that no release can be missed.
            match look(true) {
                Ok(answer) => return answer,
                Err((still, _)) if Arc::ptr_eq(&still, &waiters) => {}
                // A new bucket (the old one was dropped): look again.
                Err(_) => continue,
            }
            let wait = wait.to_std().unwrap_or_default();
            if !self.wait_for_source(&waiters, released, wait, until).await {
                return match look(false) {
                    Ok(answer) => answer,
                    // Not answered without waiting; refused all the same.
                    Err((_, wait)) => Err(ColdDenial(
                        DenialReason::Throttled,
                        wait.to_std().ok(),
                        None,
                    )),
                };
            }
        }
    }

    /// The cache missed and [`Shared::admit`] let the check through: read
    /// the store, prove the secret with argon2 (unless `proof` shows it was
    /// proven against the hash the store still holds), cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cold(
        &self,
        id: &str,
        env: &Environment,
        secret: &str,
        now: i64,
        client_ip: Option<IpAddr>,
        proof: Option<Proof>,
        admitted: Admitted,
        (lead, fingerprint): (Option<Lead>, Option<[u8; FINGERPRINT_LEN]>),
    ) -> Result<Arc<CompiledKey>, ColdDenial> {
        let shared = self;
        // The secret's fingerprint, computed at most once (`begin` may have
        // computed it for the lead).
        let mut known = fingerprint;
        let mut fingerprint =
            || *known.get_or_insert_with(|| shared.fingerprinter.fingerprint(secret.as_bytes()));
        let source = client_ip.map(Source::of);
        // Released when this check ends, however it ends.
        let source_token = admitted.0;
        let refund_source = || {
            if let Some(hold) = &source_token {
                hold.succeeded();
            }
        };
        let unknown = || ColdDenial(DenialReason::UnknownKey, None, None);
        let key_id = KeyId::new(id).map_err(|_| unknown())?;
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
                // Checked once: only the check that removes the proof skips
                // the id's bucket. Concurrent checks with this (perhaps old,
                // leaked) secret all read the proof before the first removed
                // it; they take the throttled path like any unproven secret.
                let first_with_proof =
                    proof.is_some() && shared.cache.forget_proof(id, &fingerprint());
                if !first_with_proof {
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
                    if !first_with_proof {
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
        // Proven: the source's token goes back now (checks waiting for it
        // go on), not after the rehash below.
        drop(source_token);
        let fingerprint = fingerprint();
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
                compiled.metering = shared.ledgers.metering(&record);
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
        // The key is cached: the checks waiting for this lead go on now,
        // not after the rehash (an argon2 run and a store write that are
        // not theirs). Every earlier return ends the lead as well.
        drop(lead);
        if rehash {
            self.rehash(record, secret).await;
        }
        Ok(key)
    }

    /// Replaces a hash made with weaker parameters. Best effort: a concurrent
    /// change wins, and the next successful check tries again.
    async fn rehash(&self, mut record: KeyRecord, secret: &str) {
        let shared = self;
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
}
