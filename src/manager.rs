//! [`KeyManager`]: create, list, edit, regenerate, revoke, delete and verify keys.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::audit::{AuditAction, AuditEvent, AuditQuery, AuditSink};
use crate::clock::{Clock, SystemClock};
use crate::error::{KeywardError, PolicyError, StoreError};
use crate::hash::{Argon2Hasher, SecretHasher};
use crate::key::{
    KeyKind, KeyRecord, KeyStatus, KeyView, MAX_NAME_LEN, OwnerId, SecretHash, check_text,
};
use crate::policy::{
    Actor, DefaultManagementPolicy, ExpiryChoice, IpAllowlist, ManagementAction, ManagementPolicy,
    PermissionGrant, Policy, ResourceScope,
};
use crate::session::{SessionConfig, SessionError, SessionStore, Sessions};
use crate::store::{KeyStore, ListQuery, QuotaCheck};
use crate::token::{Environment, KeyId, Token, TokenFormat};
use crate::verify::{Denial, Shared, VerifiedKey, Verifier, VerifierConfig, VerifyRequest};

/// What to create: owner, environment, name, and the key's policy.
///
/// ```
/// use keyward::{ExpiryChoice, NewKey, PermissionGrant, ResourceScope};
/// let new = NewKey::new("contoso", "live", "GitHub Actions Production")
///     .permissions(PermissionGrant::only(["package:push"]))
///     .resources(ResourceScope::only(["AzureRM.DataFactory*"]))
///     .expiry(ExpiryChoice::Days(90))
///     .ip_allowlist(["203.0.113.0/24"]);
/// assert_eq!(new.name, "GitHub Actions Production");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The owner (publisher, organization).
    pub owner: String,
    /// The environment tag (`live`, `test`, ...).
    pub environment: String,
    /// A name for people ("Jenkins Pipeline").
    pub name: String,
    /// What the key may do. Must be set: the default grants nothing and is refused.
    pub permissions: PermissionGrant,
    /// Which resources it covers (default: all of the owner's).
    pub resources: ResourceScope,
    /// Its lifetime (`None`: the policy's default).
    pub expiry: Option<ExpiryChoice>,
    /// CIDR ranges it may be used from (empty: anywhere).
    pub ip_allowlist: Vec<String>,
}

impl NewKey {
    /// A key for `owner` in `environment` named `name`.
    pub fn new(
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            owner: owner.into(),
            environment: environment.into(),
            name: name.into(),
            permissions: PermissionGrant::Only(Default::default()),
            resources: ResourceScope::All,
            expiry: None,
            ip_allowlist: Vec::new(),
        }
    }
    /// Sets the permissions.
    pub fn permissions(mut self, grant: PermissionGrant) -> Self {
        self.permissions = grant;
        self
    }
    /// Sets the resource scope.
    pub fn resources(mut self, scope: ResourceScope) -> Self {
        self.resources = scope;
        self
    }
    /// Sets the lifetime.
    pub fn expiry(mut self, choice: ExpiryChoice) -> Self {
        self.expiry = Some(choice);
        self
    }
    /// Sets the IP allowlist.
    pub fn ip_allowlist<I, S>(mut self, ranges: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ip_allowlist = ranges.into_iter().map(Into::into).collect();
        self
    }
}

/// Changes to a key. Fields left `None` stay as they are.
///
/// The name and resources may always change; permissions, expiry and IP
/// allowlist may always narrow, and widen only where the policy's
/// [`EditPolicy`](crate::EditPolicy) allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyEdit {
    /// New name.
    pub name: Option<String>,
    /// New permissions.
    pub permissions: Option<PermissionGrant>,
    /// New resource scope.
    pub resources: Option<ResourceScope>,
    /// New lifetime, counted from the time of the edit.
    pub expiry: Option<ExpiryChoice>,
    /// New IP allowlist.
    pub ip_allowlist: Option<Vec<String>>,
}

/// A key just created or regenerated: the full token, shown once, and the view.
#[derive(Debug)]
pub struct CreatedKey {
    /// The full key. It is not stored anywhere: show it to its owner once.
    pub token: Token,
    /// The key as listings show it.
    pub key: KeyView,
}

/// The result of [`KeyManager::rotate`]: the successor (its token shown
/// once) and the old key, now expiring at the end of the grace period.
#[derive(Debug)]
pub struct RotatedKey {
    /// The new key, with the old one's settings.
    pub successor: CreatedKey,
    /// The old key, with its new (earlier or unchanged) expiry.
    pub previous: KeyView,
}

/// A key to bring over from another system, by its id and the SHA-256 (hex)
/// of its secret, as crates.io-style and Unkey-style stores keep them.
///
/// The holder keeps using the secret they have: they present it with the
/// key id ([`Verifier::verify_pair`](crate::Verifier::verify_pair), or
/// HTTP Basic `key_id:secret` through the axum layer). On the first
/// successful check the SHA-256 hash is replaced by an argon2id hash.
///
/// ```
/// use keyward::{ImportKey, PermissionGrant};
/// let scoped = ImportKey::scoped("K7x2Lq9", "contoso", "live", "old CI key",
///         "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
///     .permissions(PermissionGrant::only(["package:push"]));
/// let legacy = ImportKey::legacy("Zr81", "contoso", "live", "2015 key",
///         "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
/// // The hash is not a secret, but it is never printed.
/// assert!(!format!("{legacy:?}").contains("9f86d0"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ImportKey {
    /// The key's id in the other system (ASCII letters and digits).
    pub id: String,
    /// The owner.
    pub owner: String,
    /// The environment tag.
    pub environment: String,
    /// A name for people.
    pub name: String,
    /// Scoped (permissions, resources and expiry below) or legacy full-access.
    pub kind: KeyKind,
    /// Scoped keys: what the key may do.
    pub permissions: PermissionGrant,
    /// Scoped keys: which resources it covers.
    pub resources: ResourceScope,
    /// Scoped keys: when it expires (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// CIDR ranges it may be used from (empty: anywhere).
    pub ip_allowlist: Vec<String>,
    /// When it was created in the other system (default: now).
    pub created_at: Option<DateTime<Utc>>,
    /// SHA-256 of the secret, 64 hexadecimal characters.
    pub sha256_hex: String,
}

impl fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportKey")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("environment", &self.environment)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("permissions", &self.permissions)
            .field("resources", &self.resources)
            .field("expires_at", &self.expires_at)
            .field("ip_allowlist", &self.ip_allowlist)
            .field("created_at", &self.created_at)
            .field("sha256_hex", &"[REDACTED]")
            .finish()
    }
}

impl ImportKey {
    fn base(
        kind: KeyKind,
        id: impl Into<String>,
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            owner: owner.into(),
            environment: environment.into(),
            name: name.into(),
            kind,
            permissions: PermissionGrant::Only(Default::default()),
            resources: ResourceScope::All,
            expires_at: None,
            ip_allowlist: Vec::new(),
            created_at: None,
            sha256_hex: sha256_hex.into(),
        }
    }
    /// A scoped key; set its permissions (required), resources and expiry.
    pub fn scoped(
        id: impl Into<String>,
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
    ) -> Self {
        Self::base(KeyKind::Scoped, id, owner, environment, name, sha256_hex)
    }
    /// A legacy full-access key: every grantable permission, every resource
    /// of the owner, never expires.
    pub fn legacy(
        id: impl Into<String>,
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        sha256_hex: impl Into<String>,
    ) -> Self {
        let mut key = Self::base(KeyKind::Legacy, id, owner, environment, name, sha256_hex);
        key.permissions = PermissionGrant::All;
        key
    }
    /// Sets the permissions (scoped keys).
    pub fn permissions(mut self, grant: PermissionGrant) -> Self {
        self.permissions = grant;
        self
    }
    /// Sets the resources (scoped keys).
    pub fn resources(mut self, scope: ResourceScope) -> Self {
        self.resources = scope;
        self
    }
    /// Sets the expiry (scoped keys).
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Sets the IP allowlist.
    pub fn ip_allowlist<I, T>(mut self, ranges: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.ip_allowlist = ranges.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the creation time from the other system.
    pub fn created_at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = Some(at);
        self
    }
}

/// Builds a [`KeyManager`].
pub struct KeyManagerBuilder<S> {
    store: S,
    format: TokenFormat,
    policy: Policy,
    hasher: Arc<dyn SecretHasher>,
    clock: Arc<dyn Clock>,
    config: VerifierConfig,
    sessions: Option<SessionConfig>,
    end_sessions: Option<EndSessions<S>>,
    audit: Option<Arc<dyn AuditSink>>,
    management: Arc<dyn ManagementPolicy>,
}

/// Ends every session of a key in the store: set when sessions are
/// configured (the store is then a [`SessionStore`]), so that
/// [`KeyManager::revoke`], which needs only a [`KeyStore`], ends them too.
pub(crate) type EndSessions<S> =
    for<'a> fn(
        &'a S,
        &'a KeyId,
    ) -> Pin<Box<dyn Future<Output = Result<u64, StoreError>> + Send + 'a>>;

fn end_sessions_in<'a, S: SessionStore>(
    store: &'a S,
    id: &'a KeyId,
) -> Pin<Box<dyn Future<Output = Result<u64, StoreError>> + Send + 'a>> {
    Box::pin(store.revoke_sessions(id))
}

impl<S: KeyStore + SessionStore> KeyManagerBuilder<S> {
    /// Enables session tokens ([`KeyManager::exchange`]) with this prefix,
    /// these lifetimes and this cap of live sessions per key. Errors: an
    /// invalid prefix, the key prefix itself, a zero lifetime, a default
    /// above the maximum.
    ///
    /// ```
    /// use keyward::*;
    /// let builder = || KeyManager::builder(
    ///     MemoryStore::new(),
    ///     TokenFormat::new("mkh", &["live"]).unwrap(),
    ///     Policy::new(PermissionRegistry::builder().permission("p").build().unwrap()),
    /// );
    /// assert!(builder().sessions(SessionConfig::new("mkhs")).is_ok());
    /// assert_eq!(builder().sessions(SessionConfig::new("mkh")).err(), Some(SessionError::PrefixClash));
    /// ```
    pub fn sessions(mut self, config: SessionConfig) -> Result<Self, SessionError> {
        Sessions::check_config(&config, &self.format)?;
        self.sessions = Some(config);
        self.end_sessions = Some(end_sessions_in::<S>);
        Ok(self)
    }
}

impl<S: KeyStore> KeyManagerBuilder<S> {
    /// Uses another hasher (default: [`Argon2Hasher`] with default parameters).
    pub fn hasher(mut self, hasher: impl SecretHasher) -> Self {
        self.hasher = Arc::new(hasher);
        self
    }
    /// Uses another clock (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Sets the verifier's cache, throttle, hashing and usage settings.
    pub fn verifier_config(mut self, config: VerifierConfig) -> Self {
        self.config = config;
        self
    }
    /// Records the audit trail in `sink` (default: none). Every management
    /// action, refusal, session issued, aggregated authentication failure
    /// and recorded use becomes an [`AuditEvent`].
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Some(Arc::new(sink));
        self
    }
    /// Same as [`KeyManagerBuilder::audit`] with a shared sink.
    pub fn audit_shared(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }
    /// Decides who may manage keys (default: [`DefaultManagementPolicy`]).
    pub fn management_policy(mut self, policy: impl ManagementPolicy) -> Self {
        self.management = Arc::new(policy);
        self
    }
    /// Builds the manager.
    pub fn build(self) -> KeyManager<S> {
        let sessions = self.sessions.map(|config| {
            Arc::new(Sessions::new(
                config,
                &self.format,
                self.config.cache_capacity,
                self.config.cache_ttl,
            ))
        });
        KeyManager {
            management: self.management,
            end_sessions: self.end_sessions,
            shared: Arc::new(Shared::new(
                self.store,
                self.format,
                self.policy,
                self.hasher,
                self.clock,
                self.config,
                self.audit,
                sessions.as_ref().map(|s| Arc::clone(&s.cache)),
            )),
            sessions,
        }
    }
}

/// Creates, lists, edits, regenerates, rotates, suspends, revokes, deletes,
/// imports and verifies keys. Cheap to clone; every clone shares one store,
/// policy, audit trail and verifier cache.
///
/// Every management call takes the [`Actor`] making it; the
/// [`ManagementPolicy`] decides, and a refusal is
/// [`KeywardError::NotAllowed`] (and an audit event).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use keyward::*;
/// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
/// let push = registry.get("package:push").unwrap();
/// let manager = KeyManager::builder(
///     MemoryStore::new(),
///     TokenFormat::new("mkh", &["live", "test"]).unwrap(),
///     Policy::new(registry),
/// )
/// .hasher(Argon2Hasher::new(Argon2Params::insecure_for_tests()))
/// .build();
///
/// let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
/// let created = manager
///     .create(&admin, NewKey::new("contoso", "live", "CI").permissions(PermissionGrant::All))
///     .await
///     .unwrap();
/// let live = Environment::new("live").unwrap();
/// let key = manager
///     .verify(created.token.expose_secret(), &VerifyRequest::new(&live, push))
///     .await
///     .unwrap();
/// assert_eq!(key.owner().as_str(), "contoso");
///
/// // Nobody manages another owner's keys.
/// let mallory = Actor::administrator("mallory", OwnerId::new("fabrikam").unwrap());
/// assert!(matches!(
///     manager.revoke(&mallory, &created.key.id).await,
///     Err(KeywardError::NotAllowed { denial: ManagementDenial::OtherOwner, .. })
/// ));
/// # });
/// ```
pub struct KeyManager<S> {
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) sessions: Option<Arc<Sessions>>,
    management: Arc<dyn ManagementPolicy>,
    end_sessions: Option<EndSessions<S>>,
}

impl<S> Clone for KeyManager<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            sessions: self.sessions.clone(),
            management: Arc::clone(&self.management),
            end_sessions: self.end_sessions,
        }
    }
}

impl<S> fmt::Debug for KeyManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager").finish_non_exhaustive()
    }
}

pub(crate) const ID_ATTEMPTS: usize = 3;

/// The shortest rotation grace period that is not an end of the old key's
/// access: 24 hours, time for its integrations to switch. A rotation with a
/// shorter grace ends the old key almost at once, as a revoke would, so it
/// also needs the [`ManagementPolicy`]'s permission to
/// [`Revoke`](ManagementAction::Revoke) (administrators only, by default).
pub const MIN_ROTATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest rotation grace period and reminder window.
const MAX_WINDOW_DAYS: i64 = 3650;

/// Which fields an edit changed, for the audit trail.
fn changed_fields(old: &KeyRecord, new: &KeyRecord) -> String {
    let mut fields = Vec::new();
    if old.name != new.name {
        fields.push("name");
    }
    if old.permissions != new.permissions {
        fields.push("permissions");
    }
    if old.resources != new.resources {
        fields.push("resources");
    }
    if old.expires_at != new.expires_at {
        fields.push("expires_at");
    }
    if old.ip_allowlist != new.ip_allowlist {
        fields.push("ip_allowlist");
    }
    fields.join(", ")
}

impl<S: KeyStore> KeyManager<S> {
    /// Starts building a manager over `store` with this token format and policy.
    pub fn builder(store: S, format: TokenFormat, policy: Policy) -> KeyManagerBuilder<S> {
        KeyManagerBuilder {
            store,
            format,
            policy,
            hasher: Arc::new(Argon2Hasher::default()),
            clock: Arc::new(SystemClock),
            config: VerifierConfig::default(),
            sessions: None,
            end_sessions: None,
            audit: None,
            management: Arc::new(DefaultManagementPolicy),
        }
    }

    /// The verifier sharing this manager's cache; hand it to request handlers.
    pub fn verifier(&self) -> Verifier<S> {
        Verifier {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The token format.
    pub fn format(&self) -> &TokenFormat {
        &self.shared.format
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    fn environment(&self, tag: &str) -> Result<Environment, KeywardError> {
        self.shared
            .format
            .environment(tag)
            .cloned()
            .ok_or_else(|| KeywardError::UnknownEnvironment(tag.chars().take(32).collect()))
    }

    async fn hash_token(&self, token: &Token) -> Result<SecretHash, KeywardError> {
        let parsed = self.shared.format.parse(token.expose_secret())?;
        let secret = zeroize::Zeroizing::new(parsed.expose_secret().as_bytes().to_vec());
        let phc = self
            .shared
            .run_hasher(move |h, scratch| h.hash_with(&secret, scratch))
            .await?;
        Ok(SecretHash::new(phc))
    }

    /// Writes audit events. A failing sink does not undo or fail the action
    /// that happened: the events are kept and retried (see [`KeyManager::flush`]).
    async fn audit(&self, events: Vec<AuditEvent>) {
        if let Err(_e) = self.shared.audit.send(events).await {
            crate::trace::audit_failed(&_e);
        }
    }

    fn event(
        &self,
        actor: &Actor,
        action: AuditAction,
        record: &KeyRecord,
        detail: String,
    ) -> AuditEvent {
        AuditEvent {
            actor: Some(actor.id().to_owned()),
            owner: Some(record.owner.clone()),
            key_id: Some(record.id.clone()),
            client_ip: actor.client_ip(),
            detail,
            ..AuditEvent::new(self.now(), action)
        }
    }

    /// Asks the management policy; a refusal is audited and returned.
    pub(crate) async fn allow(
        &self,
        actor: &Actor,
        action: ManagementAction,
        owner: &OwnerId,
        key: Option<&KeyId>,
    ) -> Result<(), KeywardError> {
        match self.management.check(actor, action, owner) {
            Ok(()) => Ok(()),
            Err(denial) => {
                self.audit(vec![AuditEvent {
                    actor: Some(actor.id().to_owned()),
                    owner: Some(owner.clone()),
                    key_id: key.cloned(),
                    client_ip: actor.client_ip(),
                    detail: format!("{action}: {denial}"),
                    ..AuditEvent::new(self.now(), AuditAction::ManagementDenied)
                }])
                .await;
                crate::trace::management(actor.id(), action, key, Err(&denial));
                Err(KeywardError::NotAllowed {
                    actor: actor.id().to_owned(),
                    action,
                    owner: owner.clone(),
                    denial,
                })
            }
        }
    }

    /// Asks the management policy about a call across owners
    /// ([`ManagementPolicy::check_global`]); a refusal is audited (with no
    /// owner: it concerns all of them) and returned.
    async fn allow_global(
        &self,
        actor: &Actor,
        action: ManagementAction,
        key: Option<&KeyId>,
    ) -> Result<(), KeywardError> {
        let Err(denial) = self.management.check_global(actor, action) else {
            return Ok(());
        };
        self.audit(vec![AuditEvent {
            actor: Some(actor.id().to_owned()),
            owner: None,
            key_id: key.cloned(),
            client_ip: actor.client_ip(),
            detail: format!("{action} across owners: {denial}"),
            ..AuditEvent::new(self.now(), AuditAction::ManagementDenied)
        }])
        .await;
        crate::trace::management(actor.id(), action, key, Err(&denial));
        Err(KeywardError::NotAllowed {
            actor: actor.id().to_owned(),
            action,
            owner: OwnerId::new("*").map_err(PolicyError::from)?,
            denial,
        })
    }

    /// Ends every session of the key `id` in the store (when sessions are
    /// configured), then drops this process's cached sessions of it (after
    /// the store, so a check that read a session before cannot cache it).
    pub(crate) async fn end_key_sessions(&self, id: &KeyId) -> Result<u64, StoreError> {
        let Some(end) = self.end_sessions else {
            return Ok(0);
        };
        let result = end(&self.shared.store, id).await;
        self.shared.invalidate(id);
        result
    }

    /// Loads a key and asks the policy whether `actor` may do `action` to it.
    async fn load_for(
        &self,
        actor: &Actor,
        action: ManagementAction,
        id: &KeyId,
    ) -> Result<KeyRecord, KeywardError> {
        let record = self.load(id).await?;
        self.allow(actor, action, &record.owner, Some(id)).await?;
        Ok(record)
    }

    /// Creates a key. The full token is in the result and nowhere else.
    ///
    /// Everything is validated before anything is stored: owner, environment,
    /// name, permissions (unknown or session-only names are refused),
    /// resource patterns, expiry and IP ranges. The store enforces the quota
    /// atomically.
    pub async fn create(&self, actor: &Actor, new: NewKey) -> Result<CreatedKey, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Create,
            None,
            self.create_impl(actor, new),
        )
        .await
    }

    async fn create_impl(&self, actor: &Actor, new: NewKey) -> Result<CreatedKey, KeywardError> {
        let policy = &self.shared.policy;
        let owner = OwnerId::new(&new.owner).map_err(PolicyError::from)?;
        self.allow(actor, ManagementAction::Create, &owner, None)
            .await?;
        let environment = self.environment(&new.environment)?;
        check_text("name", &new.name, MAX_NAME_LEN).map_err(PolicyError::from)?;
        policy.permissions().resolve(&new.permissions)?;
        policy.resource_rule().compile(&new.resources)?;
        let expiry = policy.expiry().check(new.expiry)?;
        let ip_allowlist = IpAllowlist::parse(&new.ip_allowlist)?;

        let now = self.now();
        let quota = policy.quota().map(|max_live| QuotaCheck { max_live, now });
        let record = KeyRecord {
            id: KeyId::generate(),
            owner,
            environment,
            name: new.name,
            kind: KeyKind::Scoped,
            permissions: new.permissions,
            resources: new.resources,
            ip_allowlist,
            created_at: now,
            expires_at: expiry.expires_at(now),
            revoked_at: None,
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            reminded_at: None,
            generation: 1,
            secret_hash: SecretHash::new(String::new()),
        };
        let created = self.insert_new(record, quota).await?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Created,
            &created.1,
            String::new(),
        )])
        .await;
        crate::trace::management(
            actor.id(),
            ManagementAction::Create,
            Some(&created.1.id),
            Ok(()),
        );
        Ok(CreatedKey {
            token: created.0,
            key: created.1.view(now),
        })
    }

    /// Hashes a fresh token for `record` and inserts it, with a new id on
    /// the (astronomically unlikely) clash.
    async fn insert_new(
        &self,
        mut record: KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(Token, KeyRecord), KeywardError> {
        for _ in 0..ID_ATTEMPTS {
            let token = self.shared.format.generate(&record.environment, &record.id);
            record.secret_hash = self.hash_token(&token).await?;
            match self.shared.store.insert(&record, quota).await {
                Ok(()) => return Ok((token, record)),
                Err(StoreError::DuplicateId(_)) => record.id = KeyId::generate(),
                // The reply may have been lost after the insert committed
                // (a timeout, a dropped connection): if the record is there
                // with this secret's hash, it is ours, and its token must
                // not be lost.
                Err(e @ StoreError::Backend(_)) => {
                    return match self.shared.store.get(&record.id).await {
                        Ok(Some(stored))
                            if stored.secret_hash.as_str() == record.secret_hash.as_str() =>
                        {
                            Ok((token, record))
                        }
                        _ => Err(KeywardError::from_store(e)),
                    };
                }
                Err(e) => return Err(KeywardError::from_store(e)),
            }
        }
        Err(KeywardError::Store(StoreError::DuplicateId(record.id)))
    }

    /// Imports a key from another system by its id and the SHA-256 (hex) of
    /// its secret; see [`ImportKey`]. Administrators only under the default
    /// [`ManagementPolicy`] (or [`Actor::system`], for a migration job).
    ///
    /// A scoped key's expiry must fit the [`ExpiryPolicy`](crate::ExpiryPolicy)
    /// ([`ExpiryPolicy::check_expires_at`](crate::ExpiryPolicy::check_expires_at):
    /// never expiring only where "never" is allowed, else
    /// [`PolicyError::NeverNotAllowed`]; no more than the maximum from now,
    /// else [`PolicyError::ExpiryNotAllowed`]). Legacy full-access keys,
    /// the documented exception, never expire, and come in only through
    /// [`ImportKey::legacy`]. Imports count against the quota like created
    /// keys: [`KeywardError::QuotaExceeded`] when the owner already has
    /// the quota's number of live keys in the environment (raise the quota,
    /// or revoke keys, before migrating more). The id must never have been
    /// used in this store (a deleted key's id included):
    /// [`KeywardError::IdTaken`]. A refusal stores nothing.
    pub async fn import(&self, actor: &Actor, key: ImportKey) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Import,
            None,
            self.import_impl(actor, key),
        )
        .await
    }

    async fn import_impl(&self, actor: &Actor, key: ImportKey) -> Result<KeyView, KeywardError> {
        let policy = &self.shared.policy;
        let owner = OwnerId::new(&key.owner).map_err(PolicyError::from)?;
        self.allow(actor, ManagementAction::Import, &owner, None)
            .await?;
        let id = KeyId::new(&key.id).map_err(PolicyError::from)?;
        let environment = self.environment(&key.environment)?;
        check_text("name", &key.name, MAX_NAME_LEN).map_err(PolicyError::from)?;
        let hex = key.sha256_hex.to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeywardError::BadImportHash(id));
        }
        let now = self.now();
        let (permissions, resources, expires_at) = match key.kind {
            // The documented exception: full access, never expires.
            KeyKind::Legacy => (PermissionGrant::All, ResourceScope::All, None),
            KeyKind::Scoped => {
                policy.permissions().resolve(&key.permissions)?;
                policy.resource_rule().compile(&key.resources)?;
                policy.expiry().check_expires_at(now, key.expires_at)?;
                (key.permissions, key.resources, key.expires_at)
            }
        };
        let ip_allowlist = IpAllowlist::parse(&key.ip_allowlist)?;
        let record = KeyRecord {
            id,
            owner,
            environment,
            name: key.name,
            kind: key.kind,
            permissions,
            resources,
            ip_allowlist,
            created_at: key.created_at.unwrap_or(now),
            expires_at,
            revoked_at: None,
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            reminded_at: None,
            generation: 1,
            secret_hash: SecretHash::new(format!("{}{hex}", crate::hash::SHA256_IMPORT_PREFIX)),
        };
        let quota = policy.quota().map(|max_live| QuotaCheck { max_live, now });
        match self.shared.store.insert(&record, quota).await {
            Ok(()) => {}
            Err(StoreError::DuplicateId(id)) => return Err(KeywardError::IdTaken(id)),
            // A lost reply: if exactly this record is there, the import
            // happened (a retry would now be refused as IdTaken).
            Err(e @ StoreError::Backend(_)) => match self.shared.store.get(&record.id).await {
                Ok(Some(stored)) if stored == record => {}
                _ => return Err(KeywardError::from_store(e)),
            },
            Err(e) => return Err(KeywardError::from_store(e)),
        }
        self.shared.invalidate(&record.id);
        self.audit(vec![self.event(
            actor,
            AuditAction::Imported,
            &record,
            record.kind.as_str().to_owned(),
        )])
        .await;
        crate::trace::management(
            actor.id(),
            ManagementAction::Import,
            Some(&record.id),
            Ok(()),
        );
        Ok(record.view(now))
    }

    async fn load(&self, id: &KeyId) -> Result<KeyRecord, KeywardError> {
        self.shared
            .store
            .get(id)
            .await
            .map_err(KeywardError::from_store)?
            .ok_or_else(|| KeywardError::NotFound(id.clone()))
    }

    /// Checks that a key may still change: not revoked, not expired
    /// (suspended keys may be edited and regenerated).
    fn changeable(&self, record: &KeyRecord) -> Result<(), KeywardError> {
        match record.status(self.now()) {
            KeyStatus::Active | KeyStatus::Suspended => Ok(()),
            KeyStatus::Revoked => Err(KeywardError::Revoked(record.id.clone())),
            KeyStatus::Expired => Err(KeywardError::Expired(record.id.clone())),
        }
    }

    /// Writes a changed record (compare-and-swap) and forgets the cached key.
    async fn save(&self, mut record: KeyRecord) -> Result<KeyRecord, KeywardError> {
        let expected = record.generation;
        record.generation += 1;
        let mut result = self.shared.store.update(&record, expected).await;
        // Invalidate even on error: the write may have happened before a timeout.
        self.shared.invalidate(&record.id);
        if let Err(StoreError::Backend(_)) = result {
            // A lost reply: if the store holds exactly this record (usage
            // aside, which updates never write), the update happened.
            if let Ok(Some(mut stored)) = self.shared.store.get(&record.id).await {
                stored.last_used_at = record.last_used_at;
                stored.last_used_ip = record.last_used_ip;
                if stored == record {
                    result = Ok(());
                }
            }
        }
        result.map_err(KeywardError::from_store)?;
        Ok(record)
    }

    fn view(&self, record: &KeyRecord, now: DateTime<Utc>) -> KeyView {
        record.view_with_idle(now, self.shared.policy.idle_expiry())
    }

    /// The key with this id.
    pub async fn get(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::View,
            Some(id),
            self.get_impl(actor, id),
        )
        .await
    }

    async fn get_impl(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        let record = self.load_for(actor, ManagementAction::View, id).await?;
        Ok(self.view(&record, self.now()))
    }

    /// One page of an owner's keys, revoked ones included (filter with
    /// [`ListQuery::status`]), with their last use, so unused keys can be
    /// found and revoked. Status is judged at the manager's clock.
    pub async fn list(
        &self,
        actor: &Actor,
        query: ListQuery,
    ) -> Result<Vec<KeyView>, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::View,
            None,
            self.list_impl(actor, query),
        )
        .await
    }

    async fn list_impl(
        &self,
        actor: &Actor,
        mut query: ListQuery,
    ) -> Result<Vec<KeyView>, KeywardError> {
        self.allow(actor, ManagementAction::View, &query.owner, None)
            .await?;
        query.now = self.now();
        let records = self
            .shared
            .store
            .list(&query)
            .await
            .map_err(KeywardError::from_store)?;
        Ok(records.iter().map(|r| self.view(r, query.now)).collect())
    }

    /// Edits a key. Takes effect for the very next check in this process.
    /// Legacy keys cannot be edited ([`KeywardError::Legacy`]).
    pub async fn edit(
        &self,
        actor: &Actor,
        id: &KeyId,
        edit: KeyEdit,
    ) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Edit,
            Some(id),
            self.edit_impl(actor, id, edit),
        )
        .await
    }

    async fn edit_impl(
        &self,
        actor: &Actor,
        id: &KeyId,
        edit: KeyEdit,
    ) -> Result<KeyView, KeywardError> {
        let policy = &self.shared.policy;
        let mut record = self.load_for(actor, ManagementAction::Edit, id).await?;
        self.changeable(&record)?;
        if record.kind == KeyKind::Legacy {
            return Err(KeywardError::Legacy(id.clone(), "edited"));
        }
        let before = record.clone();
        let now = self.now();
        if let Some(name) = edit.name {
            check_text("name", &name, MAX_NAME_LEN).map_err(PolicyError::from)?;
            record.name = name;
        }
        if let Some(grant) = edit.permissions {
            let new = policy.permissions().resolve(&grant)?;
            let old = policy.permissions().resolve_stored(&record.permissions);
            if !policy.edits().widen_permissions && !old.is_superset(new) {
                let added = policy.permissions().names(new.without(old));
                let name = added.first().copied().unwrap_or_default().to_owned();
                return Err(PolicyError::PermissionWidening { name }.into());
            }
            record.permissions = grant;
        }
        if let Some(scope) = edit.resources {
            policy.resource_rule().compile(&scope)?;
            record.resources = scope;
        }
        if let Some(choice) = edit.expiry {
            let choice = policy.expiry().check(Some(choice))?;
            let new = choice.expires_at(now);
            let narrower = match (new, record.expires_at) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(n), Some(o)) => n <= o,
            };
            if !narrower && !policy.edits().extend_expiry {
                return Err(PolicyError::ExpiryExtension.into());
            }
            if new != record.expires_at {
                // A new expiry deserves its own reminder.
                record.reminded_at = None;
            }
            record.expires_at = new;
        }
        if let Some(ranges) = edit.ip_allowlist {
            let list = IpAllowlist::parse(&ranges)?;
            if !list.is_within(&record.ip_allowlist) && !policy.edits().widen_ip_allowlist {
                return Err(PolicyError::IpWidening.into());
            }
            record.ip_allowlist = list;
        }
        let detail = changed_fields(&before, &record);
        let record = self.save(record).await?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Edited,
            &record,
            detail,
        )])
        .await;
        crate::trace::management(actor.id(), ManagementAction::Edit, Some(id), Ok(()));
        Ok(self.view(&record, now))
    }

    /// Gives the key a new secret: same id and settings; the old secret is
    /// refused from the next check on. Returns the new token, once. Session
    /// tokens already exchanged stay valid until they expire.
    pub async fn regenerate(&self, actor: &Actor, id: &KeyId) -> Result<CreatedKey, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Regenerate,
            Some(id),
            self.regenerate_impl(actor, id),
        )
        .await
    }

    async fn regenerate_impl(&self, actor: &Actor, id: &KeyId) -> Result<CreatedKey, KeywardError> {
        let mut record = self
            .load_for(actor, ManagementAction::Regenerate, id)
            .await?;
        self.changeable(&record)?;
        if record.kind == KeyKind::Legacy {
            return Err(KeywardError::Legacy(id.clone(), "regenerated"));
        }
        let token = self.shared.format.generate(&record.environment, &record.id);
        record.secret_hash = self.hash_token(&token).await?;
        let record = self.save(record).await?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Regenerated,
            &record,
            String::new(),
        )])
        .await;
        crate::trace::management(actor.id(), ManagementAction::Regenerate, Some(id), Ok(()));
        Ok(CreatedKey {
            token,
            key: self.view(&record, self.now()),
        })
    }

    /// Rotates a key with overlap: creates a successor with the same
    /// owner, environment, name, permissions, resources, IP allowlist and
    /// lifetime length (counted from now, never longer than the
    /// [`ExpiryPolicy`](crate::ExpiryPolicy)'s maximum; a key that never
    /// expires gets a successor that never expires only where "never" is
    /// still allowed, else the policy's default), returns its token once,
    /// and makes the old key expire after `grace` (never later than its own
    /// expiry), so both work during the overlap and CI can switch with no
    /// downtime.
    ///
    /// A `grace` shorter than [`MIN_ROTATION_GRACE`] ends the old key's
    /// access almost at once, as a revoke would: the actor must also be
    /// allowed to [`Revoke`](ManagementAction::Revoke) it (administrators
    /// only, by default), else [`KeywardError::NotAllowed`] for `revoke`.
    ///
    /// The old key is on its way out, so the quota check allows one key
    /// more than the policy's quota for the successor: an owner at the
    /// quota can rotate one key at a time, and repeated rotations cannot pile
    /// up keys ([`KeywardError::QuotaExceeded`] until the overlap ends; an
    /// owner already above the quota, as a quota lowered since can leave one, must revoke
    /// keys before rotating). If
    /// retiring the old key fails, or the call is cancelled (a dropped
    /// future, a timeout) between the two writes, the successor is deleted
    /// again and the error returned. Legacy and suspended keys cannot be
    /// rotated.
    pub async fn rotate(
        &self,
        actor: &Actor,
        id: &KeyId,
        grace: Duration,
    ) -> Result<RotatedKey, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Rotate,
            Some(id),
            self.rotate_impl(actor, id, grace),
        )
        .await
    }

    async fn rotate_impl(
        &self,
        actor: &Actor,
        id: &KeyId,
        grace: Duration,
    ) -> Result<RotatedKey, KeywardError> {
        let old = self.load_for(actor, ManagementAction::Rotate, id).await?;
        if grace < MIN_ROTATION_GRACE {
            // Ends the old key's access almost at once: a revoke in effect.
            self.allow(actor, ManagementAction::Revoke, &old.owner, Some(id))
                .await?;
        }
        self.changeable(&old)?;
        if old.kind == KeyKind::Legacy {
            return Err(KeywardError::Legacy(id.clone(), "rotated"));
        }
        if old.suspended_at.is_some() {
            return Err(KeywardError::Suspended(id.clone()));
        }
        let grace = TimeDelta::from_std(grace)
            .ok()
            .filter(|g| *g <= TimeDelta::days(MAX_WINDOW_DAYS))
            .ok_or(PolicyError::BadGracePeriod)?;
        let now = self.now();
        // Checked: an imported or unrestricted key may expire near the end
        // of time, and `+` would panic there.
        let later = |d: TimeDelta| {
            now.checked_add_signed(d)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        // The old key's lifetime length, never longer than the policy's
        // maximum: its creation time may come from another system (an
        // import dated decades back).
        let expires_at = self.shared.policy.expiry().successor_expiry(
            now,
            old.expires_at
                .map(|e| e.signed_duration_since(old.created_at)),
        );
        let successor = KeyRecord {
            id: KeyId::generate(),
            created_at: now,
            expires_at,
            revoked_at: None,
            suspended_at: None,
            last_used_at: None,
            last_used_ip: None,
            reminded_at: None,
            generation: 1,
            secret_hash: SecretHash::new(String::new()),
            ..old.clone()
        };
        let quota = self.shared.policy.quota().map(|q| QuotaCheck {
            max_live: q.saturating_add(1),
            now,
        });
        let (token, successor) = self.insert_new(successor, quota).await?;
        // Until the old key is retired, dropping this future deletes the
        // successor (whose token nobody would ever see).
        let mut undo = UndoInsert {
            shared: Some(Arc::clone(&self.shared)),
            id: successor.id.clone(),
        };
        let mut retired = old.clone();
        let end = later(grace);
        retired.expires_at = Some(old.expires_at.map_or(end, |e| e.min(end)));
        let retired = match self.save(retired).await {
            Ok(r) => r,
            Err(e) => {
                // Undo: nothing half-done. The guard stays armed until the
                // delete returned, so a drop during it still deletes. If
                // even that fails, the successor stays unusable: its token
                // is never returned.
                let _ = self.shared.store.delete(&successor.id).await;
                undo.shared = None;
                return Err(e);
            }
        };
        undo.shared = None;
        self.audit(vec![
            self.event(
                actor,
                AuditAction::Rotated,
                &retired,
                format!("successor {}", successor.id),
            ),
            self.event(
                actor,
                AuditAction::Created,
                &successor,
                format!("rotated from {}", retired.id),
            ),
        ])
        .await;
        crate::trace::management(actor.id(), ManagementAction::Rotate, Some(id), Ok(()));
        Ok(RotatedKey {
            successor: CreatedKey {
                token,
                key: self.view(&successor, now),
            },
            previous: self.view(&retired, now),
        })
    }

    /// Suspends a key: refused with [`DenialReason::Suspended`](crate::DenialReason::Suspended)
    /// from the next check on, until [`KeyManager::resume`]. Unlike revoke,
    /// reversible. Session tokens already issued are not ended (use
    /// [`KeyManager::end_sessions`]); no new one is exchanged while it is
    /// suspended.
    pub async fn suspend(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Suspend,
            Some(id),
            self.suspend_impl(actor, id),
        )
        .await
    }

    async fn suspend_impl(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        let mut record = self.load_for(actor, ManagementAction::Suspend, id).await?;
        self.changeable(&record)?;
        if record.suspended_at.is_some() {
            return Err(KeywardError::Suspended(id.clone()));
        }
        let now = self.now();
        record.suspended_at = Some(now);
        let record = self.save(record).await?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Suspended,
            &record,
            String::new(),
        )])
        .await;
        crate::trace::management(actor.id(), ManagementAction::Suspend, Some(id), Ok(()));
        Ok(self.view(&record, now))
    }

    /// Resumes a suspended key. Errors: [`KeywardError::NotSuspended`].
    pub async fn resume(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Resume,
            Some(id),
            self.resume_impl(actor, id),
        )
        .await
    }

    async fn resume_impl(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        let mut record = self.load_for(actor, ManagementAction::Resume, id).await?;
        self.changeable(&record)?;
        if record.suspended_at.is_none() {
            return Err(KeywardError::NotSuspended(id.clone()));
        }
        record.suspended_at = None;
        let record = self.save(record).await?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Resumed,
            &record,
            String::new(),
        )])
        .await;
        crate::trace::management(actor.id(), ManagementAction::Resume, Some(id), Ok(()));
        Ok(self.view(&record, self.now()))
    }

    /// Revokes a key, permanently: it stays listed as revoked and can never
    /// be re-enabled, and every session token exchanged for it ends at once
    /// (the key "is disabled immediately and any integration using it will
    /// stop working"). Revoking it again is [`KeywardError::Revoked`].
    ///
    /// The key is revoked first, so no new session can be exchanged for it
    /// once its sessions are ended. If ending them fails, the key stays
    /// revoked and the error is [`KeywardError::SessionsNotEnded`]: call
    /// [`KeyManager::revoke_compromised`] (which accepts a key already
    /// revoked) or [`KeyManager::end_sessions`] again. Other processes drop
    /// their cached sessions of the key on the change feed (PostgreSQL) or
    /// within the verifier's cache TTL. Sessions are ended in the store by
    /// managers built with [`KeyManagerBuilder::sessions`]; any manager
    /// with sessions also refuses a session whose key is revoked when it
    /// reads the session from the store, so a revoke by a manager without
    /// sessions (or whose ending failed) stops them too.
    pub async fn revoke(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Revoke,
            Some(id),
            self.revoke_impl(actor, id),
        )
        .await
    }

    async fn revoke_impl(&self, actor: &Actor, id: &KeyId) -> Result<KeyView, KeywardError> {
        let mut record = self.load_for(actor, ManagementAction::Revoke, id).await?;
        if record.revoked_at.is_some() {
            return Err(KeywardError::Revoked(id.clone()));
        }
        let now = self.now();
        record.revoked_at = Some(now);
        let record = self.save(record).await?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Revoked,
            &record,
            String::new(),
        )])
        .await;
        self.end_key_sessions(id)
            .await
            .map_err(|source| KeywardError::SessionsNotEnded {
                id: id.clone(),
                source,
            })?;
        crate::trace::management(actor.id(), ManagementAction::Revoke, Some(id), Ok(()));
        Ok(self.view(&record, now))
    }

    /// Deletes a key: gone from listings, refused from the next check on.
    /// Its id is never used again (a deleted legacy key cannot be re-imported).
    /// Session tokens already exchanged for it stay valid until they expire
    /// (as regenerating leaves them); revoke the key first to end them, or
    /// end them afterwards with [`KeyManager::end_sessions`].
    pub async fn delete(&self, actor: &Actor, id: &KeyId) -> Result<(), KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Delete,
            Some(id),
            self.delete_impl(actor, id),
        )
        .await
    }

    async fn delete_impl(&self, actor: &Actor, id: &KeyId) -> Result<(), KeywardError> {
        let record = self.load_for(actor, ManagementAction::Delete, id).await?;
        let mut result = self.shared.store.delete(id).await;
        self.shared.invalidate(id);
        self.shared.usage.forget(id);
        if let Err(StoreError::Backend(_)) = result {
            // A lost reply: gone now means deleted.
            if let Ok(None) = self.shared.store.get(id).await {
                result = Ok(());
            }
        }
        result.map_err(KeywardError::from_store)?;
        self.audit(vec![self.event(
            actor,
            AuditAction::Deleted,
            &record,
            String::new(),
        )])
        .await;
        crate::trace::management(actor.id(), ManagementAction::Delete, Some(id), Ok(()));
        Ok(())
    }

    /// Takes the keys that expire within `within_days` days and whose owners
    /// have not been reminded yet, marking them reminded (atomically: with
    /// two workers calling at once, each key comes back once). Keys already
    /// expired are not returned. For a scheduled job; needs an actor allowed
    /// to act across owners ([`ManagementPolicy::check_global`]).
    ///
    /// Unlike the other writes, this one cannot be read back: if the store's
    /// reply is lost after it marked keys, those keys are not reminded.
    pub async fn take_expiry_reminders(
        &self,
        actor: &Actor,
        within_days: u32,
        limit: usize,
    ) -> Result<Vec<KeyView>, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::Remind,
            None,
            self.take_expiry_reminders_impl(actor, within_days, limit),
        )
        .await
    }

    async fn take_expiry_reminders_impl(
        &self,
        actor: &Actor,
        within_days: u32,
        limit: usize,
    ) -> Result<Vec<KeyView>, KeywardError> {
        if !(1..=MAX_WINDOW_DAYS).contains(&i64::from(within_days)) {
            return Err(PolicyError::BadReminderWindow.into());
        }
        self.allow_global(actor, ManagementAction::Remind, None)
            .await?;
        let now = self.now();
        let until = now + TimeDelta::days(i64::from(within_days));
        let records = self
            .shared
            .store
            .take_expiry_reminders(now, until, limit.clamp(1, crate::store::MAX_PAGE_SIZE))
            .await
            .map_err(KeywardError::from_store)?;
        // A key expired by idle expiry (which stores do not know) is expired,
        // not about to expire: marked like the others, but not returned.
        Ok(records
            .iter()
            .map(|r| self.view(r, now))
            .filter(|v| v.status != KeyStatus::Expired)
            .collect())
    }

    /// The audit trail matching `query` ("what did this key do between T1
    /// and T2": `AuditQuery::key(id).between(t1, t2)`). An actor of an
    /// owner sees only that owner's events (the query's owner is set to
    /// theirs); reading across owners needs [`ManagementPolicy::check_global`].
    pub async fn audit_trail(
        &self,
        actor: &Actor,
        query: AuditQuery,
    ) -> Result<Vec<AuditEvent>, KeywardError> {
        crate::trace::manage_span(
            actor.id(),
            ManagementAction::View,
            None,
            self.audit_trail_impl(actor, query),
        )
        .await
    }

    async fn audit_trail_impl(
        &self,
        actor: &Actor,
        mut query: AuditQuery,
    ) -> Result<Vec<AuditEvent>, KeywardError> {
        match (actor.owner(), &query.owner) {
            (Some(own), _) => {
                let owner = own.clone();
                self.allow(actor, ManagementAction::View, &owner, None)
                    .await?;
                query.owner = Some(owner);
            }
            (None, Some(owner)) => {
                let owner = owner.clone();
                self.allow(actor, ManagementAction::View, &owner, None)
                    .await?;
            }
            (None, None) => {
                self.allow_global(actor, ManagementAction::View, None)
                    .await?;
            }
        }
        // Pending aggregates first, so the answer includes recent activity;
        // a failure here is kept for later and does not hide the trail.
        let _ = self.flush().await;
        self.shared
            .audit
            .query(&query)
            .await
            .map_err(KeywardError::from_store)
    }

    /// Writes everything pending: recorded uses not yet in the store, the
    /// aggregated authentication failures, and audit events a failing sink
    /// could not take. Call it on shutdown (and, if you like, from a timer).
    /// Returns the first store or sink error; what failed is kept for the
    /// next flush.
    pub async fn flush(&self) -> Result<(), KeywardError> {
        let now = self.now();
        let writes = self.shared.usage.pending();
        let mut first_error = None;
        for w in &writes {
            if let Err(e) = self.shared.store.record_usage(&w.id, w.at, w.ip).await {
                first_error.get_or_insert(e);
                self.shared.usage.restore(w);
            }
        }
        let mut events = self.shared.audit.failures.flush(now);
        events.extend(writes.iter().map(|w| self.shared.usage_event(w)));
        if let Err(e) = self.shared.audit.send(events).await {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(KeywardError::from_store(e)),
            None => Ok(()),
        }
    }

    /// Audit events kept because the sink failed, waiting for the next write.
    pub fn unsent_audit_events(&self) -> usize {
        self.shared.audit.unsent()
    }

    /// Audit events dropped because a failing sink's backlog (10 000) was full.
    pub fn dropped_audit_events(&self) -> u64 {
        self.shared.audit.dropped()
    }

    /// Checks a token for a request; see [`Verifier`].
    pub async fn verify(
        &self,
        token: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        self.verifier().verify(token, req).await
    }

    /// Checks a key id and secret given separately (HTTP Basic
    /// `key_id:secret`, imported keys); see [`Verifier::verify_pair`].
    pub async fn verify_pair(
        &self,
        key_id: &str,
        secret: &str,
        req: &VerifyRequest<'_>,
    ) -> Result<VerifiedKey, Denial> {
        self.verifier().verify_pair(key_id, secret, req).await
    }

    /// Records a session issued for a key in the audit trail.
    pub(crate) async fn audit_session(
        &self,
        key: &VerifiedKey,
        session: &KeyId,
        ip: Option<IpAddr>,
    ) {
        self.audit(vec![AuditEvent {
            // Exchanges are made by the key's holder, not by a person of
            // the owner: the key is the actor.
            actor: Some(format!("key:{}", key.id())),
            owner: Some(key.owner().clone()),
            key_id: Some(key.id().clone()),
            client_ip: ip,
            detail: format!("session {session}"),
            ..AuditEvent::new(self.now(), AuditAction::SessionIssued)
        }])
        .await;
    }
}

/// Deletes a rotation's successor when the rotation is dropped before it
/// retired the old key (see [`KeyManager::rotate`]). Disarmed by taking
/// `shared`.
struct UndoInsert<S: KeyStore> {
    shared: Option<Arc<Shared<S>>>,
    id: KeyId,
}

impl<S: KeyStore> Drop for UndoInsert<S> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let id = self.id.clone();
        // Without a runtime there is nothing to run the delete on; the
        // successor's token was never returned, so it can never be used.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = shared.store.delete(&id).await;
            });
        }
    }
}
