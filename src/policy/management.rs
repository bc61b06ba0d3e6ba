//! Who may manage keys: actors, roles and the [`ManagementPolicy`] hook.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ids::OwnerId;

/// The role of a person (or system) managing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An administrator of the owner: may do everything with its keys.
    Administrator,
    /// A manager: may manage keys only when an administrator granted API access,
    /// and (under [`DefaultManagementPolicy`]) may never end a key's access
    /// (revoke, delete, regenerate, rotate with a short grace) nor import one.
    Manager {
        /// Whether an administrator granted this manager API access.
        api_access: bool,
    },
    /// The application itself (migrations, scheduled jobs): may do everything.
    System,
}

/// Who is making a management call, for which owner.
///
/// ```
/// use keyward::{Actor, OwnerId};
/// let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap());
/// assert_eq!(admin.id(), "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    id: String,
    owner: Option<OwnerId>,
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_ip: Option<IpAddr>,
}

impl Actor {
    /// An administrator of `owner`.
    pub fn administrator(id: impl Into<String>, owner: OwnerId) -> Self {
        Self {
            id: id.into(),
            owner: Some(owner),
            role: Role::Administrator,
            client_ip: None,
        }
    }
    /// A manager of `owner`, with or without API access.
    pub fn manager(id: impl Into<String>, owner: OwnerId, api_access: bool) -> Self {
        Self {
            id: id.into(),
            owner: Some(owner),
            role: Role::Manager { api_access },
            client_ip: None,
        }
    }
    /// The application itself, acting for any owner.
    pub fn system(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            owner: None,
            role: Role::System,
            client_ip: None,
        }
    }
    /// The actor's id (a user id, a job name), recorded in the audit trail.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The owner the actor acts for (`None` for [`Role::System`]).
    pub fn owner(&self) -> Option<&OwnerId> {
        self.owner.as_ref()
    }
    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The same actor, calling from `ip` (the address of the administrator's
    /// request), recorded on the audit events of its management calls.
    ///
    /// ```
    /// use keyward::{Actor, OwnerId};
    /// let admin = Actor::administrator("alice", OwnerId::new("contoso").unwrap())
    ///     .with_client_ip("203.0.113.9".parse().unwrap());
    /// assert_eq!(admin.client_ip(), Some("203.0.113.9".parse().unwrap()));
    /// ```
    pub fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }
    /// Where the actor's call comes from, if the application said so.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }
}

/// A management operation, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagementAction {
    /// Create a key.
    Create,
    /// Read or list keys and the audit trail.
    View,
    /// Edit a key.
    Edit,
    /// Give a key a new secret.
    Regenerate,
    /// Create a successor and retire the key after a grace period.
    Rotate,
    /// Suspend a key (reversible).
    Suspend,
    /// Resume a suspended key.
    Resume,
    /// Revoke a key (permanent).
    Revoke,
    /// Delete a key.
    Delete,
    /// Import a key from another system.
    Import,
    /// Take expiry reminders (across owners).
    Remind,
    /// Register or delete a trust policy (trusted publishing); listing
    /// them is [`ManagementAction::View`].
    Trust,
    /// Give a key more usage: set or add to its credits, or widen its
    /// usage controls in an edit (raise, lengthen or remove a rate limit,
    /// turn metering on or off, give it a more generous refill). Narrowing
    /// them is [`ManagementAction::Edit`]; reading the balance is
    /// [`ManagementAction::View`]. The application itself only, by
    /// default: a marketplace sells usage, so its customers' own
    /// administrators may not give it to themselves.
    Usage,
}

impl fmt::Display for ManagementAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ManagementAction::Create => "create",
            ManagementAction::View => "view",
            ManagementAction::Edit => "edit",
            ManagementAction::Regenerate => "regenerate",
            ManagementAction::Rotate => "rotate",
            ManagementAction::Suspend => "suspend",
            ManagementAction::Resume => "resume",
            ManagementAction::Revoke => "revoke",
            ManagementAction::Delete => "delete",
            ManagementAction::Import => "import",
            ManagementAction::Remind => "remind",
            ManagementAction::Trust => "register trust policies for",
            ManagementAction::Usage => "give usage (credits, wider rate limits) to",
        };
        f.write_str(s)
    }
}

/// Why a management call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagementDenial {
    /// The key belongs to another owner than the actor's.
    OtherOwner,
    /// A manager without API access.
    NoApiAccess,
    /// Only administrators may do this (by default: revoke, delete,
    /// regenerate, import, rotate with a short grace).
    AdministratorOnly,
    /// Only the application itself ([`Role::System`]) may do this across owners.
    SystemOnly,
    /// Only the application itself ([`Role::System`]) may do this, even for
    /// an owner's own keys (by default: [`ManagementAction::Usage`], giving
    /// credits or wider rate limits, which a marketplace sells).
    ApplicationOnly,
}

impl fmt::Display for ManagementDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManagementDenial::OtherOwner => "the key belongs to another owner",
            ManagementDenial::NoApiAccess => "the manager has not been granted API access",
            ManagementDenial::AdministratorOnly => "only an administrator may do this",
            ManagementDenial::SystemOnly => "only the application itself may do this across owners",
            ManagementDenial::ApplicationOnly => "only the application itself may do this",
        })
    }
}

/// Decides who may manage which keys. Every [`KeyManager`](crate::KeyManager)
/// management call asks it first; a refusal is a typed error and is audited.
pub trait ManagementPolicy: Send + Sync + 'static {
    /// Whether `actor` may perform `action` on keys of `owner`.
    fn check(
        &self,
        actor: &Actor,
        action: ManagementAction,
        owner: &OwnerId,
    ) -> Result<(), ManagementDenial>;

    /// Whether `actor` may perform `action` across all owners (taking
    /// expiry reminders, reading the whole audit trail). Default: only
    /// [`Role::System`].
    fn check_global(
        &self,
        actor: &Actor,
        action: ManagementAction,
    ) -> Result<(), ManagementDenial> {
        let _ = action;
        if actor.role() == Role::System {
            Ok(())
        } else {
            Err(ManagementDenial::SystemOnly)
        }
    }
}

/// The default policy: administrators may manage their owner's keys;
/// managers only when granted API access, and never end a key's access
/// (revoke, delete, regenerate, or rotate with a grace shorter than
/// [`MIN_ROTATION_GRACE`](crate::manager::MIN_ROTATION_GRACE)) nor import keys, nor
/// register or delete trust policies (a standing grant to a CI identity);
/// nobody may touch another owner's keys; nobody but [`Role::System`] may
/// give a key usage ([`ManagementAction::Usage`]: credits, wider rate
/// limits), which a marketplace sells ([`ManagementDenial::ApplicationOnly`]);
/// [`Role::System`] may do everything.
///
/// ```
/// use keyward::{Actor, policy::DefaultManagementPolicy, policy::ManagementAction, policy::ManagementDenial, policy::ManagementPolicy, OwnerId};
/// let contoso = OwnerId::new("contoso").unwrap();
/// let policy = DefaultManagementPolicy;
/// let manager = Actor::manager("bob", contoso.clone(), true);
/// assert!(policy.check(&manager, ManagementAction::Create, &contoso).is_ok());
/// assert_eq!(
///     policy.check(&manager, ManagementAction::Revoke, &contoso),
///     Err(ManagementDenial::AdministratorOnly)
/// );
/// assert_eq!(
///     policy.check(&manager, ManagementAction::Delete, &contoso),
///     Err(ManagementDenial::AdministratorOnly)
/// );
/// assert_eq!(
///     policy.check(&manager, ManagementAction::Regenerate, &contoso),
///     Err(ManagementDenial::AdministratorOnly)
/// );
/// assert_eq!(
///     policy.check(&manager, ManagementAction::Import, &contoso),
///     Err(ManagementDenial::AdministratorOnly)
/// );
/// // A publisher's own administrator may not give its keys credits.
/// let admin = Actor::administrator("alice", contoso.clone());
/// assert_eq!(
///     policy.check(&admin, ManagementAction::Usage, &contoso),
///     Err(ManagementDenial::ApplicationOnly)
/// );
/// assert!(policy.check(&Actor::system("billing"), ManagementAction::Usage, &contoso).is_ok());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultManagementPolicy;

impl ManagementPolicy for DefaultManagementPolicy {
    fn check(
        &self,
        actor: &Actor,
        action: ManagementAction,
        owner: &OwnerId,
    ) -> Result<(), ManagementDenial> {
        if actor.role == Role::System {
            return Ok(());
        }
        if actor.owner.as_ref() != Some(owner) {
            return Err(ManagementDenial::OtherOwner);
        }
        match actor.role {
            // Usage is sold: only the application gives it.
            _ if action == ManagementAction::Usage => Err(ManagementDenial::ApplicationOnly),
            Role::Administrator | Role::System => Ok(()),
            Role::Manager { api_access: false } => Err(ManagementDenial::NoApiAccess),
            // Ending a key's access is for administrators: revoking,
            // deleting (which ends it as surely, and drops it from
            // listings), regenerating (its holders' secret stops working;
            // a rotation with a grace shorter than MIN_ROTATION_GRACE asks
            // for Revoke too) and importing (a key from outside, past the
            // usual checks of creation).
            Role::Manager { api_access: true }
                if matches!(
                    action,
                    ManagementAction::Revoke
                        | ManagementAction::Delete
                        | ManagementAction::Regenerate
                        | ManagementAction::Import
                        | ManagementAction::Trust
                ) =>
            {
                Err(ManagementDenial::AdministratorOnly)
            }
            Role::Manager { api_access: true } => Ok(()),
        }
    }
}
