//! [`TrustedPublishing`]: the exchange of a CI job's OIDC token for a
//! session token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::claims::{ClaimError, MatchedClaims, match_claims};
use super::error::TrustError;
use super::fetch::{Fetching, JwksFetcher};
use super::keys::{IssuerKeys, Unverified, peek, verify};
use crate::audit::{AuditAction, AuditEvent};
use crate::ids::KeyId;
use crate::ids::OwnerId;
use crate::manager::{ID_ATTEMPTS, KeyManager};
use crate::policy::{IpAllowlist, PermissionGrant};
use crate::session::{IssuedSession, SessionCap, SessionHash, SessionRecord};
use crate::store::SessionStore;
use crate::store::StoreError;
use crate::store::{KeyStore, TrustStore};
use crate::trust_policy::{TrustPolicy, check_issuer};
use crate::verify::SessionError;

/// Settings of [`TrustedPublishing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 30 s, at most
    /// [`TrustedPublishing::MAX_LEEWAY`]).
    pub leeway: Duration,
    /// Lifetime of the sessions issued (default 30 minutes, as crates.io's),
    /// cut to the session configuration's `max_ttl`.
    pub session_ttl: Duration,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(30),
            session_ttl: Duration::from_secs(30 * 60),
        }
    }
}

/// A session issued through a trust policy.
#[derive(Debug)]
pub struct TrustedSession {
    /// The session token (shown once) and its view; the view's `key_id` is
    /// the policy's id.
    pub session: IssuedSession,
    /// The policy that matched.
    pub policy_id: KeyId,
    /// The claims that matched (also in the audit event).
    pub claims: MatchedClaims,
}

/// Exchanges OIDC identity tokens (JWTs) of trusted issuers for session
/// tokens, under the trust policies in the store.
///
/// The application supplies each issuer's key set (JWKS), and replaces it
/// when the issuer rotates keys; keyward fetches nothing.
///
/// ```no_run
/// # async fn f(manager: keyward::KeyManager<keyward::MemoryStore>, jwt: &str, jwks: &str) {
/// use keyward::trusted::{TrustConfig, TrustedPublishing, GITHUB_ACTIONS_ISSUER};
/// let trusted = TrustedPublishing::new(TrustConfig::default()).unwrap();
/// trusted.set_issuer_keys(GITHUB_ACTIONS_ISSUER, jwks).unwrap();
/// let issued = trusted.exchange(&manager, jwt, None).await;
/// # }
/// ```
pub struct TrustedPublishing {
    config: TrustConfig,
    issuers: RwLock<HashMap<String, Arc<IssuerKeys>>>,
    fetching: Option<Fetching>,
}

impl std::fmt::Debug for TrustedPublishing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedPublishing")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TrustedPublishing {
    /// The longest token read, in bytes; longer ones are refused unread.
    pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
    /// The largest leeway a configuration may set.
    pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
    /// The longest `exp - iat` accepted (GitHub's tokens live minutes), so
    /// a used `jti` is remembered for a bounded time.
    pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
    /// The most issuers configured at once.
    pub const MAX_ISSUERS: usize = 16;

    /// # Errors
    /// [`TrustError::LeewayTooLong`]; [`TrustError::Session`] with
    /// [`SessionError::ZeroTtl`] for a zero session lifetime.
    pub fn new(config: TrustConfig) -> Result<Self, TrustError> {
        if config.leeway > Self::MAX_LEEWAY {
            return Err(TrustError::LeewayTooLong(config.leeway));
        }
        if config.session_ttl.is_zero() {
            return Err(TrustError::Session(SessionError::ZeroTtl));
        }
        Ok(Self {
            config,
            issuers: RwLock::new(HashMap::new()),
            fetching: None,
        })
    }

    /// Fetches the key sets of `issuers` through `fetcher` when needed: an
    /// issuer without keys yet, or a token naming a `kid` the cached set
    /// lacks (the issuer rotated its keys). At most one fetch per issuer
    /// per `min_refresh` (one at a time), so a flood of tokens with made-up
    /// `kid`s costs one fetch per interval; other issuers are never
    /// fetched. A failed fetch keeps the keys cached before.
    ///
    /// # Errors
    /// [`TrustError::Malformed`] for an issuer that is not an https URL,
    /// [`TrustError::BadKeySet`] for more than
    /// [`TrustedPublishing::MAX_ISSUERS`].
    pub fn with_fetcher(
        mut self,
        fetcher: impl JwksFetcher,
        issuers: &[&str],
        min_refresh: Duration,
    ) -> Result<Self, TrustError> {
        if issuers.len() > Self::MAX_ISSUERS {
            return Err(TrustError::BadKeySet(format!(
                "at most {} issuers",
                Self::MAX_ISSUERS
            )));
        }
        for issuer in issuers {
            check_issuer(issuer)
                .map_err(|_| TrustError::Malformed("issuer is not an https URL"))?;
        }
        self.fetching = Some(Fetching {
            fetcher: Box::new(fetcher),
            issuers: issuers.iter().map(|i| (*i).to_owned()).collect(),
            min_refresh,
            last: tokio::sync::Mutex::new(HashMap::new()),
        });
        Ok(self)
    }

    fn cached(&self, issuer: &str) -> Option<Arc<IssuerKeys>> {
        self.issuers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(issuer)
            .cloned()
    }

    /// The issuer's keys, fetched first when a fetcher is set and the cache
    /// has none or lacks the token's `kid`.
    async fn keys_for(&self, head: &Unverified) -> Result<Arc<IssuerKeys>, TrustError> {
        let cached = self.cached(&head.issuer);
        if let Some(keys) = cached.as_ref().filter(|k| k.has(&head.kid)) {
            return Ok(Arc::clone(keys));
        }
        let Some(fetching) = &self.fetching else {
            return cached.ok_or(TrustError::UnknownIssuer);
        };
        let mut last = fetching.last.lock().await;
        // Fetched by another exchange while this one waited?
        if let Some(keys) = self.cached(&head.issuer).filter(|k| k.has(&head.kid)) {
            return Ok(keys);
        }
        if fetching.due(&mut last, &head.issuer) {
            let fetched = fetching.fetcher.fetch(&head.issuer).await;
            match fetched {
                Ok(json) => match self.set_issuer_keys(&head.issuer, &json) {
                    Ok(()) => {}
                    Err(e) if self.cached(&head.issuer).is_none() => return Err(e),
                    Err(_) => {}
                },
                Err(reason) if self.cached(&head.issuer).is_none() => {
                    return Err(TrustError::BadKeySet(format!(
                        "fetching the key set failed: {}",
                        reason.chars().take(200).collect::<String>()
                    )));
                }
                Err(_) => {}
            }
        }
        drop(last);
        self.cached(&head.issuer).ok_or(TrustError::UnknownIssuer)
    }

    /// Sets (or replaces) the key set of `issuer` from its JWKS document.
    ///
    /// # Errors
    /// [`TrustError::BadKeySet`] (not JSON, too large, too many keys, no
    /// usable RS256/ES256 key, or too many issuers) and
    /// [`TrustError::Malformed`] for an issuer that is not an https URL.
    pub fn set_issuer_keys(&self, issuer: &str, jwks: &str) -> Result<(), TrustError> {
        check_issuer(issuer).map_err(|_| TrustError::Malformed("issuer is not an https URL"))?;
        let keys = Arc::new(IssuerKeys::from_jwks(jwks)?);
        let mut issuers = self.issuers.write().unwrap_or_else(PoisonError::into_inner);
        if !issuers.contains_key(issuer) && issuers.len() >= Self::MAX_ISSUERS {
            return Err(TrustError::BadKeySet(format!(
                "at most {} issuers",
                Self::MAX_ISSUERS
            )));
        }
        issuers.insert(issuer.to_owned(), keys);
        Ok(())
    }

    /// Forgets an issuer: its tokens are refused from now on.
    pub fn remove_issuer(&self, issuer: &str) {
        self.issuers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(issuer);
    }

    /// Exchanges `token` for a session token of the trust policy its claims
    /// match.
    ///
    /// In order: size, header (`alg` RS256 or ES256, `kid`), issuer keys,
    /// signature, `exp`/`nbf`/`iat` with the leeway, `aud`, the policies'
    /// claims, then the `jti` is claimed in the store (a replay is refused
    /// on every server sharing it) and the session is issued with the
    /// policy's permissions and resources (checked again against the
    /// application's policy) and audited with the matched claims.
    ///
    /// When policies of several owners match the token (anyone may
    /// register a policy naming any repository), nothing is issued:
    /// [`TrustError::AmbiguousOwner`]; the client then names the owner
    /// through [`TrustedPublishing::exchange_for`]. Among one owner's
    /// matching policies, the one pinning the most optional claims
    /// (repository id, environment, ref) is used, the first by id on a tie.
    ///
    /// # Errors
    /// A [`TrustError`] naming what was wrong; nothing is issued.
    pub async fn exchange<S: KeyStore + SessionStore + TrustStore>(
        &self,
        manager: &KeyManager<S>,
        token: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<TrustedSession, TrustError> {
        self.exchange_impl(manager, token, None, client_ip).await
    }

    /// [`TrustedPublishing::exchange`] for a session of `owner` only: only
    /// `owner`'s policies are considered (the client names the account it
    /// publishes as), so another owner's policy naming the same repository
    /// neither wins nor makes the exchange ambiguous.
    ///
    /// # Errors
    /// As [`TrustedPublishing::exchange`]; [`TrustError::NoPolicy`] when
    /// `owner` has no policy for the token's identity.
    pub async fn exchange_for<S: KeyStore + SessionStore + TrustStore>(
        &self,
        manager: &KeyManager<S>,
        token: &str,
        owner: &OwnerId,
        client_ip: Option<IpAddr>,
    ) -> Result<TrustedSession, TrustError> {
        self.exchange_impl(manager, token, Some(owner), client_ip)
            .await
    }

    async fn exchange_impl<S: KeyStore + SessionStore + TrustStore>(
        &self,
        manager: &KeyManager<S>,
        token: &str,
        owner: Option<&OwnerId>,
        client_ip: Option<IpAddr>,
    ) -> Result<TrustedSession, TrustError> {
        if token.len() > Self::MAX_TOKEN_BYTES {
            return Err(TrustError::TokenTooLarge {
                len: token.len(),
                max: Self::MAX_TOKEN_BYTES,
            });
        }
        let sessions = manager
            .sessions
            .as_deref()
            .ok_or(TrustError::Session(SessionError::NotConfigured))?;
        let head = peek(token)?;
        let keys = self.keys_for(&head).await?;
        let now = manager.shared.clock.now();
        let verified = verify(
            token,
            &head,
            &keys,
            now,
            self.config.leeway,
            Self::MAX_TOKEN_LIFETIME,
        )?;
        let claims = verified.claims;
        let jti = match claims.jti.as_deref() {
            Some(j) if j.trim().is_empty() => return Err(TrustError::MissingClaim("jti")),
            Some(j) if j.len() <= 256 => j.to_owned(),
            Some(_) => return Err(TrustError::Malformed("jti is too long")),
            None => return Err(TrustError::MissingClaim("jti")),
        };
        let Some(lookup) = claims.repository_owner_id.as_deref() else {
            return Err(TrustError::MissingClaim("repository_owner_id"));
        };
        let store = manager.store();
        let candidates = match owner {
            // The owner's own policies (at most `MAX_PER_OWNER`): policies
            // other owners register naming the same repository owner cannot
            // push them out of a page. (Until 2026-12-03 this filtered the
            // page of 256 candidates by id, and squatters whose policies'
            // ids sorted first made an owner's own policy unreachable.)
            Some(owner) => {
                let mut own = store.list_trust_policies(owner).await?;
                own.retain(|p| p.issuer == head.issuer && p.lookup() == lookup);
                own
            }
            None => {
                let found = store.find_trust_policies(&head.issuer, lookup).await?;
                // A full page: more owners name this repository owner than
                // one page holds, and a policy beyond it could be the one
                // that matches too. Which owner is meant cannot be told.
                if found.len() >= TrustPolicy::MAX_CANDIDATES {
                    return Err(TrustError::AmbiguousOwner);
                }
                found
            }
        };
        if candidates.is_empty() {
            return Err(TrustError::NoPolicy);
        }
        let mut first_error = None;
        let mut matched: Option<TrustPolicy> = None;
        let mut audience_seen = false;
        for policy in candidates {
            if !verified.audiences.contains(&policy.audience) {
                continue;
            }
            audience_seen = true;
            match match_claims(&policy.claims, &claims) {
                Ok(()) => match &matched {
                    None => matched = Some(policy),
                    Some(first) if first.owner != policy.owner => {
                        return Err(TrustError::AmbiguousOwner);
                    }
                    // Candidates come by id: a later one wins only when
                    // it pins more claims.
                    Some(first) if policy.claims.specificity() > first.claims.specificity() => {
                        matched = Some(policy);
                    }
                    Some(_) => {}
                },
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let policy = match (matched, first_error) {
            (Some(p), _) => p,
            (None, Some(ClaimError::Missing(c) | ClaimError::Mismatch(c))) => {
                return Err(TrustError::ClaimMismatch { claim: c });
            }
            (None, None) if !audience_seen => return Err(TrustError::WrongAudience),
            (None, None) => return Err(TrustError::NoPolicy),
        };
        // The grant, as the application's policy allows it today.
        let app = manager.policy();
        let set = app
            .permissions()
            .resolve(&policy.permissions)
            .map_err(TrustError::PolicyInvalid)?;
        app.resource_rule()
            .compile(&policy.resources)
            .map_err(TrustError::PolicyInvalid)?;
        // The token is used once, on every server sharing the store.
        if !store
            .claim_jti(&head.issuer, &jti, verified.expires_at, now)
            .await?
        {
            return Err(TrustError::Replayed);
        }
        let ttl = self.config.session_ttl.min(sessions.config.max_ttl);
        let expires_at = TimeDelta::from_std(ttl)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let names = app.permissions().names(set);
        let mut record = SessionRecord {
            id: KeyId::generate(),
            key_id: policy.id.clone(),
            owner: policy.owner.clone(),
            environment: policy.environment.clone(),
            key_name: policy.name.clone(),
            permissions: PermissionGrant::only(names),
            resources: policy.resources.clone(),
            ip_allowlist: IpAllowlist::default(),
            created_at: now,
            expires_at,
            revoked: false,
            secret_hash: SessionHash::from_bytes([0; 32]),
        };
        let matched = MatchedClaims::of(&head.issuer, &jti, &claims);
        for _ in 0..ID_ATTEMPTS {
            let issued = sessions.format.generate(&record.environment, &record.id);
            record.secret_hash = SessionHash::of(
                sessions
                    .format
                    .parse(issued.expose_secret())
                    .map_err(SessionError::from)?
                    .expose_secret(),
            );
            let cap = SessionCap {
                max_live: sessions.config.max_sessions_per_key,
                now,
            };
            match store.insert_session(&record, Some(cap)).await {
                Ok(()) => {}
                Err(StoreError::DuplicateId(_)) => {
                    record.id = KeyId::generate();
                    continue;
                }
                Err(StoreError::TooManySessions { key_id, limit }) => {
                    return Err(SessionError::TooManySessions { key_id, limit }.into());
                }
                Err(e) => return Err(e.into()),
            }
            // A policy deleted meanwhile ended its sessions without seeing
            // this one: never hand it out.
            if store.get_trust_policy(&policy.id).await?.is_none() {
                return Err(TrustError::NoPolicy);
            }
            let event = AuditEvent {
                actor: Some(format!("trusted-publishing:{}", policy.id)),
                owner: Some(policy.owner.clone()),
                key_id: Some(policy.id.clone()),
                client_ip,
                detail: format!(
                    "session {} through trust policy {:?}: {}",
                    record.id,
                    policy.name,
                    matched.audit_detail()
                ),
                ..AuditEvent::new(now, AuditAction::SessionIssued)
            };
            if let Err(_e) = manager.shared.audit.send(vec![event]).await {
                crate::trace::audit_failed(&_e);
            }
            return Ok(TrustedSession {
                session: IssuedSession {
                    token: issued,
                    session: record.view(),
                },
                policy_id: policy.id,
                claims: matched,
            });
        }
        Err(StoreError::DuplicateId(record.id).into())
    }

    /// Deletes the records of used `jti`s that have expired; run it on a
    /// timer, beside [`KeyManager::purge_expired_sessions`].
    pub async fn purge_expired_jtis<S: KeyStore + TrustStore>(
        &self,
        manager: &KeyManager<S>,
    ) -> Result<u64, TrustError> {
        let now = manager.shared.clock.now();
        Ok(manager.store().delete_expired_jtis(now).await?)
    }
}
