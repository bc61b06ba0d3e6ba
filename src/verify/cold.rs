//! The cold path: a cache miss reads the store, throttles, proves the
//! secret with argon2 and caches the answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cache::{Cached, HashDigest, Proof};
use super::compiled::CompiledKey;
use super::denial::DenialReason;
use super::hash_pool::PoolError;
use super::shared::Shared;
use crate::key::{KeyRecord, OwnerId};
use crate::source::Source;
use crate::store::KeyStore;
use crate::token::{Environment, KeyId};

/// Why a cold check failed, when to retry, and the key's owner where the
/// key was found.
pub(super) struct ColdDenial(
    pub(super) DenialReason,
    pub(super) Option<Duration>,
    pub(super) Option<OwnerId>,
);

impl<S: KeyStore> Shared<S> {
    /// The cache missed: read the store, prove the secret with argon2
    /// (unless `proof` shows it was proven against the hash the store still
    /// holds), cache.
    pub(super) async fn cold(
        &self,
        id: &str,
        env: &Environment,
        secret: &str,
        now: DateTime<Utc>,
        client_ip: Option<IpAddr>,
        proof: Option<Proof>,
    ) -> Result<Arc<CompiledKey>, ColdDenial> {
        let shared = self;
        let source = client_ip.map(Source::of);
        // A throttled source or id is refused before the store is read: a
        // flood of wrong secrets then costs neither argon2 nor store round
        // trips. A secret proven earlier skips both (no lockout).
        if proof.is_none() {
            if let Some((wait, ())) = source.and_then(|s| shared.sources.peek(&s, now)) {
                return Err(ColdDenial(
                    DenialReason::Throttled,
                    wait.to_std().ok(),
                    None,
                ));
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
        // An unknown id costs its source a token, as a wrong secret does:
        // a source sending random ids is throttled like one sending wrong
        // secrets, and its flood stops reaching the store.
        let unknown = || {
            if let Some(s) = source {
                let _ = shared.sources.try_acquire(&s, &(), now);
            }
            ColdDenial(DenialReason::UnknownKey, None, None)
        };
        let key_id = KeyId::new(id).map_err(|_| unknown())?;
        if shared.unknown.contains(id, now) {
            return Err(unknown());
        }
        // A check that will need argon2 but could not get into the queue
        // is refused before it costs a store read.
        if proof.is_none() {
            if let Err(PoolError::Overloaded { retry_after }) = shared.hashing.admits(source) {
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
            Err(_) => return Err(ColdDenial(DenialReason::StoreUnavailable, None, None)),
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
                if proof.is_none() {
                    let tag = (record.owner.clone(), record.environment.clone());
                    let throttled = |wait: TimeDelta| {
                        ColdDenial(DenialReason::Throttled, wait.to_std().ok(), owner())
                    };
                    shared
                        .throttle
                        .try_acquire(&key_id, &tag, now)
                        .map_err(throttled)?;
                    if let Some(s) = source {
                        if let Err(wait) = shared.sources.try_acquire(&s, &(), now) {
                            shared.throttle.refund(&key_id, now);
                            return Err(throttled(wait));
                        }
                    }
                }
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
                        // Not checked: the tokens go back.
                        shared.throttle.refund(&key_id, now);
                        if let Some(s) = source {
                            shared.sources.refund(&s, now);
                        }
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
                    if proof.is_some() {
                        // The proof no longer holds: the next try with this
                        // secret is throttled like any wrong secret.
                        let fingerprint = shared.fingerprinter.fingerprint(secret.as_bytes());
                        shared.cache.forget_proof(id, &fingerprint);
                    }
                    return Err(ColdDenial(DenialReason::WrongSecret, None, owner()));
                }
                shared.throttle.refund(&key_id, now);
                if let Some(s) = source {
                    shared.sources.refund(&s, now);
                }
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
