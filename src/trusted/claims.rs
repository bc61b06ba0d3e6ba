//! Matching a verified token's claims against a trust policy.
//!
//! The cases follow the public reference implementations (crates.io's
//! trusted publishing, PyPI's GitHub publisher, NuGet's federated
//! credentials): the owner is pinned by its numeric id as well as its name,
//! the repository is `owner/name` compared without case, the workflow file
//! is read from `workflow_ref` (`owner/repo/.github/workflows/file@ref`, the
//! top-level workflow of the run, as crates.io reads it) and must be a file
//! of the same repository, the environment is compared
//! without case and only when the policy names one, the ref exactly.

use serde::{Deserialize, Serialize};

use crate::trust_policy::{GitHubClaims, TrustClaims};

/// The claims of an OIDC token that keyward reads, after its signature,
/// times and audience were checked. Unknown claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct TokenClaims {
    /// `iss`.
    #[serde(default)]
    pub iss: Option<String>,
    /// `jti`: the token's unique id (required; a token is used once).
    #[serde(default)]
    pub jti: Option<String>,
    /// `sub`.
    #[serde(default)]
    pub sub: Option<String>,
    /// `repository` (`owner/name`).
    #[serde(default)]
    pub repository: Option<String>,
    /// `repository_id`.
    #[serde(default)]
    pub repository_id: Option<String>,
    /// `repository_owner`.
    #[serde(default)]
    pub repository_owner: Option<String>,
    /// `repository_owner_id`.
    #[serde(default)]
    pub repository_owner_id: Option<String>,
    /// `workflow_ref` (`owner/repo/.github/workflows/file.yml@ref`): the
    /// run's top-level workflow.
    #[serde(default)]
    pub workflow_ref: Option<String>,
    /// `job_workflow_ref`: the workflow file running the job (another
    /// repository's, for a reusable workflow). Audited, not matched.
    #[serde(default)]
    pub job_workflow_ref: Option<String>,
    /// `environment`.
    #[serde(default)]
    pub environment: Option<String>,
    /// `ref`.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
}

/// A claim that did not match (or was missing): named, never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimName {
    /// `repository_owner`.
    RepositoryOwner,
    /// `repository_owner_id`.
    RepositoryOwnerId,
    /// `repository`.
    Repository,
    /// `repository_id`.
    RepositoryId,
    /// `workflow_ref`.
    WorkflowRef,
    /// `environment`.
    Environment,
    /// `ref`.
    Ref,
    /// `sub`.
    Subject,
}

impl std::fmt::Display for ClaimName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClaimName::RepositoryOwner => "repository_owner",
            ClaimName::RepositoryOwnerId => "repository_owner_id",
            ClaimName::Repository => "repository",
            ClaimName::RepositoryId => "repository_id",
            ClaimName::WorkflowRef => "workflow_ref",
            ClaimName::Environment => "environment",
            ClaimName::Ref => "ref",
            ClaimName::Subject => "sub",
        })
    }
}

/// Why a policy did not match a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// The token lacks the claim.
    Missing(ClaimName),
    /// The claim's value differs from the policy's.
    Mismatch(ClaimName),
}

/// Whether `token` satisfies `claims`; the first claim that fails otherwise.
pub fn match_claims(claims: &TrustClaims, token: &TokenClaims) -> Result<(), ClaimError> {
    match claims {
        TrustClaims::GitHub(c) => match_github(c, token),
    }
}

fn need(value: &Option<String>, name: ClaimName) -> Result<&str, ClaimError> {
    match value.as_deref() {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ClaimError::Missing(name)),
    }
}

fn match_github(policy: &GitHubClaims, token: &TokenClaims) -> Result<(), ClaimError> {
    use ClaimError::Mismatch;
    // Ids exactly: a deleted account's name can be registered again by
    // someone else; its id cannot.
    let owner_id = need(&token.repository_owner_id, ClaimName::RepositoryOwnerId)?;
    if owner_id != policy.repository_owner_id {
        return Err(Mismatch(ClaimName::RepositoryOwnerId));
    }
    let owner = need(&token.repository_owner, ClaimName::RepositoryOwner)?;
    if !owner.eq_ignore_ascii_case(&policy.repository_owner) {
        return Err(Mismatch(ClaimName::RepositoryOwner));
    }
    let repository = need(&token.repository, ClaimName::Repository)?;
    let expected_repository = format!("{}/{}", policy.repository_owner, policy.repository_name);
    if !repository.eq_ignore_ascii_case(&expected_repository) {
        return Err(Mismatch(ClaimName::Repository));
    }
    // `repo:owner/name:…` (PyPI checks it too): the subject names the same
    // repository, without case.
    let sub = need(&token.sub, ClaimName::Subject)?;
    let mut parts = sub.splitn(3, ':');
    let (kind, repo) = (parts.next(), parts.next());
    if kind != Some("repo") || !repo.is_some_and(|r| r.eq_ignore_ascii_case(&expected_repository)) {
        return Err(Mismatch(ClaimName::Subject));
    }
    if let Some(id) = &policy.repository_id {
        if need(&token.repository_id, ClaimName::RepositoryId)? != id {
            return Err(Mismatch(ClaimName::RepositoryId));
        }
    }
    // `owner/repo/.github/workflows/release.yml@refs/tags/v1`: the run's
    // top-level workflow file, in this very repository (it may call
    // reusable workflows of other repositories: the repository's own file
    // decides that). Split at the first `@`: a policy's file name has none,
    // so `nested@evil.yml@ref` matches no policy.
    let workflow_ref = need(&token.workflow_ref, ClaimName::WorkflowRef)?;
    let Some((path, _at)) = workflow_ref.split_once('@') else {
        return Err(Mismatch(ClaimName::WorkflowRef));
    };
    let Some((repo_part, file)) = path.split_once("/.github/workflows/") else {
        return Err(Mismatch(ClaimName::WorkflowRef));
    };
    if !repo_part.eq_ignore_ascii_case(&expected_repository) || file != policy.workflow {
        return Err(Mismatch(ClaimName::WorkflowRef));
    }
    if let Some(env) = &policy.environment {
        let token_env = need(&token.environment, ClaimName::Environment)?;
        // GitHub compares environment names without case; so do the
        // reference registries. Unicode case folding of the simple kind.
        if token_env.to_lowercase() != env.to_lowercase() {
            return Err(Mismatch(ClaimName::Environment));
        }
    }
    if let Some(r) = &policy.git_ref {
        let token_ref = need(&token.git_ref, ClaimName::Ref)?;
        if token_ref != r {
            return Err(Mismatch(ClaimName::Ref));
        }
    }
    Ok(())
}

/// The claims that matched, for the audit trail and the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchedClaims {
    /// `iss`.
    pub issuer: String,
    /// `sub`, if present.
    pub subject: Option<String>,
    /// `repository`.
    pub repository: Option<String>,
    /// `repository_owner_id`.
    pub repository_owner_id: Option<String>,
    /// `workflow_ref`.
    pub workflow_ref: Option<String>,
    /// `job_workflow_ref`, if present.
    pub job_workflow_ref: Option<String>,
    /// `environment`, if present.
    pub environment: Option<String>,
    /// `ref`, if present.
    pub git_ref: Option<String>,
    /// `jti`.
    pub jti: String,
}

#[cfg_attr(not(feature = "trusted-publishing"), allow(dead_code))]
impl MatchedClaims {
    pub(crate) fn of(issuer: &str, jti: &str, token: &TokenClaims) -> Self {
        Self {
            issuer: issuer.to_owned(),
            subject: token.sub.clone(),
            repository: token.repository.clone(),
            repository_owner_id: token.repository_owner_id.clone(),
            workflow_ref: token.workflow_ref.clone(),
            job_workflow_ref: token.job_workflow_ref.clone(),
            environment: token.environment.clone(),
            git_ref: token.git_ref.clone(),
            jti: jti.to_owned(),
        }
    }

    /// One line for the audit trail (control characters dropped).
    pub(crate) fn audit_detail(&self) -> String {
        let mut s = format!("iss={} jti={}", self.issuer, self.jti);
        for (k, v) in [
            ("sub", &self.subject),
            ("repository", &self.repository),
            ("repository_owner_id", &self.repository_owner_id),
            ("workflow_ref", &self.workflow_ref),
            ("job_workflow_ref", &self.job_workflow_ref),
            ("environment", &self.environment),
            ("ref", &self.git_ref),
        ] {
            if let Some(v) = v {
                s.push_str(&format!(" {k}={v}"));
            }
        }
        s.chars().filter(|c| !c.is_control()).take(2048).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TrustClaims {
        TrustClaims::GitHub(GitHubClaims::new(
            "Octo-Org",
            "1234",
            "Widgets",
            "release.yml",
        ))
    }

    fn token() -> TokenClaims {
        TokenClaims {
            repository: Some("octo-org/widgets".into()),
            repository_owner: Some("octo-org".into()),
            repository_owner_id: Some("1234".into()),
            sub: Some("repo:octo-org/widgets:environment:Release".into()),
            workflow_ref: Some(
                "octo-org/widgets/.github/workflows/release.yml@refs/tags/v1".into(),
            ),
            environment: Some("Release".into()),
            git_ref: Some("refs/tags/v1".into()),
            ..TokenClaims::default()
        }
    }

    #[test]
    fn names_match_without_case_ids_exactly() {
        assert_eq!(match_claims(&policy(), &token()), Ok(()));
        let mut t = token();
        t.repository_owner_id = Some("12345".into());
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Mismatch(ClaimName::RepositoryOwnerId))
        );
        t.repository_owner_id = None;
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Missing(ClaimName::RepositoryOwnerId))
        );
    }

    #[test]
    fn the_subject_names_the_same_repository() {
        let mut t = token();
        t.sub = Some("REPO:octo-org/widgets".into());
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Mismatch(ClaimName::Subject))
        );
        t.sub = Some("repo:Octo-Org/Widgets".into());
        assert_eq!(match_claims(&policy(), &t), Ok(()));
        t.sub = Some("repo:octo-org/widgets-fork:ref:refs/heads/main".into());
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Mismatch(ClaimName::Subject))
        );
        t.sub = None;
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Missing(ClaimName::Subject))
        );
    }

    #[test]
    fn a_pinned_repository_id_is_matched_exactly() {
        let TrustClaims::GitHub(base) = policy();
        let pinned = TrustClaims::GitHub(base.repository_id("98765"));
        let mut t = token();
        assert_eq!(
            match_claims(&pinned, &t),
            Err(ClaimError::Missing(ClaimName::RepositoryId))
        );
        t.repository_id = Some("98765".into());
        assert_eq!(match_claims(&pinned, &t), Ok(()));
        t.repository_id = Some("987650".into());
        assert_eq!(
            match_claims(&pinned, &t),
            Err(ClaimError::Mismatch(ClaimName::RepositoryId))
        );
        // Blank is missing, as NuGet's validator has it.
        t.repository_id = Some(" ".into());
        assert_eq!(
            match_claims(&pinned, &t),
            Err(ClaimError::Missing(ClaimName::RepositoryId))
        );
    }

    #[test]
    fn repository_and_owner_must_match() {
        let mut t = token();
        t.repository = Some("octo-org/widgets-fork".into());
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Mismatch(ClaimName::Repository))
        );
        let mut t = token();
        t.repository_owner = Some("evil-org".into());
        assert_eq!(
            match_claims(&policy(), &t),
            Err(ClaimError::Mismatch(ClaimName::RepositoryOwner))
        );
    }

    #[test]
    fn workflow_file_is_exact_and_from_the_same_repository() {
        for bad in [
            "octo-org/widgets/.github/workflows/Release.yml@refs/tags/v1",
            "octo-org/widgets/.github/workflows/release.yaml@refs/tags/v1",
            "octo-org/widgets/.github/workflows/release.yml",
            "other/shared/.github/workflows/release.yml@refs/heads/main",
            "octo-org/widgets/.github/workflows/sub/release.yml@refs/tags/v1",
            "octo-org/widgets/release.yml@refs/tags/v1",
            "octo-org/widgets/.github/workflows/nested@release.yml@refs/tags/v1",
            "octo-org/widgets/.github/workflows/@refs/tags/v1",
        ] {
            let mut t = token();
            t.workflow_ref = Some(bad.into());
            assert_eq!(
                match_claims(&policy(), &t),
                Err(ClaimError::Mismatch(ClaimName::WorkflowRef)),
                "{bad}"
            );
        }
        // An `@` in the ref after the file name is the ref's business.
        let mut t = token();
        t.workflow_ref =
            Some("octo-org/widgets/.github/workflows/release.yml@refs/heads/a@b.yml".into());
        assert_eq!(match_claims(&policy(), &t), Ok(()));
        // A reusable workflow of another repository running the job: the
        // top-level workflow is what the policy names.
        t.job_workflow_ref =
            Some("other/shared/.github/workflows/publish.yml@refs/heads/main".into());
        assert_eq!(match_claims(&policy(), &t), Ok(()));
    }

    #[test]
    fn environment_and_ref_only_when_required() {
        let TrustClaims::GitHub(base) = policy();
        let with_env = TrustClaims::GitHub(base.clone().environment("release"));
        assert_eq!(match_claims(&with_env, &token()), Ok(()));
        let mut t = token();
        t.environment = None;
        assert_eq!(match_claims(&policy(), &t), Ok(()));
        assert_eq!(
            match_claims(&with_env, &t),
            Err(ClaimError::Missing(ClaimName::Environment))
        );
        t.environment = Some("staging".into());
        assert_eq!(
            match_claims(&with_env, &t),
            Err(ClaimError::Mismatch(ClaimName::Environment))
        );
        let with_ref = TrustClaims::GitHub(base.git_ref("refs/heads/main"));
        assert_eq!(
            match_claims(&with_ref, &token()),
            Err(ClaimError::Mismatch(ClaimName::Ref))
        );
    }
}
