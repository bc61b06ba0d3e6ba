//! Trust policies (re-exported as `keyward::trusted::TrustPolicy`, ...): which CI identity may exchange its OIDC token for a
//! session token of which owner, with which permissions and resources.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Environment, InvalidValue, KeyId, OwnerId, check_chars};
use crate::policy::{PermissionGrant, ResourceScope};

/// The issuer of GitHub Actions' OIDC tokens.
pub const GITHUB_ACTIONS_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// A registered trust policy: tokens of `issuer` for `audience` whose claims
/// match `claims` may be exchanged for a session token of `owner` in
/// `environment`, holding `permissions` on `resources` and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustPolicy {
    /// The policy's id (same alphabet as key ids). Sessions issued through
    /// the policy carry it where a key's session carries the key id.
    pub id: KeyId,
    /// Whose identity the sessions act as.
    pub owner: OwnerId,
    /// The environment of the sessions issued.
    pub environment: Environment,
    /// A name for listings and the audit trail.
    pub name: String,
    /// The token issuer (`iss`), an `https://` URL.
    pub issuer: String,
    /// The audience the token must name (`aud`), e.g. the registry's host name.
    pub audience: String,
    /// The claims that must match.
    pub claims: TrustClaims,
    /// What the sessions may do (checked against the
    /// [`PermissionRegistry`](crate::PermissionRegistry) like a key's grant:
    /// session-only permissions are refused).
    pub permissions: PermissionGrant,
    /// Which resources the sessions reach.
    pub resources: ResourceScope,
    /// When the policy was registered.
    pub created_at: DateTime<Utc>,
    /// The actor who registered it.
    pub created_by: String,
}

impl TrustPolicy {
    /// The most trust policies one owner may hold.
    pub const MAX_PER_OWNER: u32 = 20;
    /// The most policies a store returns for one issuer and lookup value
    /// ([`TrustStore::find_trust_policies`](crate::store::TrustStore::find_trust_policies)).
    pub const MAX_CANDIDATES: usize = 256;
    /// The longest issuer URL.
    pub const MAX_ISSUER_LEN: usize = 256;
    /// The longest audience.
    pub const MAX_AUDIENCE_LEN: usize = 128;
    /// The longest policy name.
    pub const MAX_NAME_LEN: usize = 100;

    /// The value a store indexes the policy by, besides the issuer: for
    /// GitHub Actions the repository owner's numeric id (never reused, unlike
    /// an account name).
    pub fn lookup(&self) -> &str {
        self.claims.lookup()
    }
}

/// The claims a trust policy requires, by kind of issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrustClaims {
    /// A GitHub Actions workflow.
    GitHub(GitHubClaims),
}

impl TrustClaims {
    /// The value stores index policies by (see [`TrustPolicy::lookup`]).
    pub fn lookup(&self) -> &str {
        match self {
            TrustClaims::GitHub(c) => &c.repository_owner_id,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidValue> {
        match self {
            TrustClaims::GitHub(c) => c.validate(),
        }
    }

    /// See [`GitHubClaims`]' specificity: more pinned claims, more specific.
    #[cfg_attr(not(feature = "trusted-publishing"), allow(dead_code))]
    pub(crate) fn specificity(&self) -> usize {
        match self {
            TrustClaims::GitHub(c) => c.specificity(),
        }
    }
}

/// What a GitHub Actions token must carry to match.
///
/// Owner and repository names are compared case-insensitively (GitHub
/// treats them so); ids, the workflow file name and the ref exactly; the
/// deployment environment case-insensitively (GitHub environments are).
///
/// ```
/// use keyward::trusted::GitHubClaims;
/// let claims = GitHubClaims::new("octo-org", "1234", "octo-repo", "release.yml")
///     .environment("pypi");
/// assert_eq!(claims.environment.as_deref(), Some("pypi"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubClaims {
    /// `repository_owner`: the user or organization.
    pub repository_owner: String,
    /// `repository_owner_id`: its numeric id, so a renamed and re-registered
    /// account name does not inherit the trust.
    pub repository_owner_id: String,
    /// The repository's name, without the owner (`repository` is
    /// `owner/name`).
    pub repository_name: String,
    /// The workflow file name under `.github/workflows/` (e.g.
    /// `release.yml`), matched against `workflow_ref` (the run's top-level workflow).
    pub workflow: String,
    /// The repository's numeric id (`repository_id`), if pinned: a
    /// repository deleted and created again under the same name has
    /// another id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// The deployment environment (`environment`) the job must run in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The git ref (`ref`, e.g. `refs/tags/v1.0` or `refs/heads/main`) the
    /// job must run for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

impl GitHubClaims {
    /// The longest owner name GitHub allows.
    pub const MAX_OWNER_LEN: usize = 39;
    /// The longest repository name GitHub allows.
    pub const MAX_REPOSITORY_LEN: usize = 100;
    /// The longest workflow file name, environment or ref accepted.
    pub const MAX_FIELD_LEN: usize = 255;
    /// The longest numeric id accepted.
    pub const MAX_ID_LEN: usize = 20;

    /// Required claims; environment and ref are optional (builder methods).
    pub fn new(
        repository_owner: impl Into<String>,
        repository_owner_id: impl Into<String>,
        repository_name: impl Into<String>,
        workflow: impl Into<String>,
    ) -> Self {
        Self {
            repository_owner: repository_owner.into(),
            repository_owner_id: repository_owner_id.into(),
            repository_name: repository_name.into(),
            workflow: workflow.into(),
            repository_id: None,
            environment: None,
            git_ref: None,
        }
    }
    /// Requires this repository id.
    pub fn repository_id(mut self, id: impl Into<String>) -> Self {
        self.repository_id = Some(id.into());
        self
    }
    /// Requires this deployment environment.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }
    /// Requires this git ref (`refs/...`).
    pub fn git_ref(mut self, git_ref: impl Into<String>) -> Self {
        self.git_ref = Some(git_ref.into());
        self
    }

    /// How many optional claims the policy pins (repository id,
    /// environment, ref): among one owner's matching policies the most
    /// specific one is used (as PyPI prefers a publisher bound to the
    /// token's environment).
    pub(crate) fn specificity(&self) -> usize {
        usize::from(self.repository_id.is_some())
            + usize::from(self.environment.is_some())
            + usize::from(self.git_ref.is_some())
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        check_chars(
            "repository owner",
            &self.repository_owner,
            Self::MAX_OWNER_LEN,
            "ASCII letters, digits and '-'",
            |c| c.is_ascii_alphanumeric() || c == '-',
        )?;
        check_chars(
            "repository owner id",
            &self.repository_owner_id,
            Self::MAX_ID_LEN,
            "ASCII digits",
            |c| c.is_ascii_digit(),
        )?;
        check_chars(
            "repository name",
            &self.repository_name,
            Self::MAX_REPOSITORY_LEN,
            "ASCII letters, digits, '-', '_' and '.'",
            |c| c.is_ascii_alphanumeric() || "-_.".contains(c),
        )?;
        if self.repository_name == "." || self.repository_name == ".." {
            return Err(InvalidValue::BadCharacter {
                field: "repository name",
                ch: '.',
                allowed: "a name other than '.' or '..'",
            });
        }
        check_chars(
            "workflow",
            &self.workflow,
            Self::MAX_FIELD_LEN,
            "a file name ending in .yml or .yaml (ASCII letters, digits, '-', '_', '.')",
            |c| c.is_ascii_alphanumeric() || "-_.".contains(c),
        )?;
        if !(self.workflow.ends_with(".yml") || self.workflow.ends_with(".yaml"))
            || self.workflow.len() <= 5
        {
            return Err(InvalidValue::BadCharacter {
                field: "workflow",
                ch: self.workflow.chars().last().unwrap_or('.'),
                allowed: "a file name ending in .yml or .yaml",
            });
        }
        if let Some(id) = &self.repository_id {
            check_chars("repository id", id, Self::MAX_ID_LEN, "ASCII digits", |c| {
                c.is_ascii_digit()
            })?;
        }
        if let Some(env) = &self.environment {
            check_chars(
                "environment",
                env,
                Self::MAX_FIELD_LEN,
                "printable characters other than ',', ';' and quotes",
                |c| !c.is_control() && !",;'\"`".contains(c),
            )?;
            if env.trim() != env {
                return Err(InvalidValue::BadCharacter {
                    field: "environment",
                    ch: ' ',
                    allowed: "no leading or trailing space",
                });
            }
        }
        if let Some(r) = &self.git_ref {
            check_chars(
                "git ref",
                r,
                Self::MAX_FIELD_LEN,
                "printable ASCII without spaces, starting with refs/",
                |c| c.is_ascii_graphic(),
            )?;
            if !r.starts_with("refs/") {
                return Err(InvalidValue::BadCharacter {
                    field: "git ref",
                    ch: r.chars().next().unwrap_or('r'),
                    allowed: "a full ref starting with refs/",
                });
            }
        }
        Ok(())
    }
}

/// What an application asks to register: [`KeyManager::create_trust_policy`](crate::KeyManager::create_trust_policy).
///
/// ```
/// use keyward::trusted::{GitHubClaims, NewTrustPolicy};
/// use keyward::policy::PermissionGrant;
/// let new = NewTrustPolicy::github(
///     "contoso", "live", "release from GitHub", "registry.example",
///     GitHubClaims::new("contoso", "4242", "widgets", "release.yml"),
/// )
/// .permissions(PermissionGrant::only(["package:push"]));
/// assert_eq!(new.issuer, keyward::trusted::GITHUB_ACTIONS_ISSUER);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrustPolicy {
    /// The owner.
    pub owner: String,
    /// The environment tag of the sessions.
    pub environment: String,
    /// A name.
    pub name: String,
    /// The issuer URL.
    pub issuer: String,
    /// The audience.
    pub audience: String,
    /// The claims.
    pub claims: TrustClaims,
    /// The permissions (default: none, which is refused: name them).
    pub permissions: PermissionGrant,
    /// The resources (default: all of the owner's).
    pub resources: ResourceScope,
}

impl NewTrustPolicy {
    /// A policy for GitHub Actions ([`GITHUB_ACTIONS_ISSUER`]).
    pub fn github(
        owner: impl Into<String>,
        environment: impl Into<String>,
        name: impl Into<String>,
        audience: impl Into<String>,
        claims: GitHubClaims,
    ) -> Self {
        Self {
            owner: owner.into(),
            environment: environment.into(),
            name: name.into(),
            issuer: GITHUB_ACTIONS_ISSUER.to_owned(),
            audience: audience.into(),
            claims: TrustClaims::GitHub(claims),
            permissions: PermissionGrant::only(Vec::<String>::new()),
            resources: ResourceScope::All,
        }
    }
    /// The permissions the sessions get.
    pub fn permissions(mut self, permissions: PermissionGrant) -> Self {
        self.permissions = permissions;
        self
    }
    /// The resources the sessions reach.
    pub fn resources(mut self, resources: ResourceScope) -> Self {
        self.resources = resources;
        self
    }
    /// Another issuer than GitHub's (a GitHub Enterprise Server, say).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }
}

/// Checks an issuer URL: `https://`, printable ASCII, bounded.
pub(crate) fn check_issuer(issuer: &str) -> Result<(), InvalidValue> {
    check_chars(
        "issuer",
        issuer,
        TrustPolicy::MAX_ISSUER_LEN,
        "printable ASCII",
        |c| c.is_ascii_graphic(),
    )?;
    if !issuer.starts_with("https://") || issuer.len() <= "https://".len() {
        return Err(InvalidValue::BadCharacter {
            field: "issuer",
            ch: issuer.chars().next().unwrap_or('h'),
            allowed: "an https:// URL",
        });
    }
    Ok(())
}

/// Checks an audience: printable ASCII, bounded.
pub(crate) fn check_audience(audience: &str) -> Result<(), InvalidValue> {
    check_chars(
        "audience",
        audience,
        TrustPolicy::MAX_AUDIENCE_LEN,
        "printable ASCII",
        |c| c.is_ascii_graphic(),
    )
}
