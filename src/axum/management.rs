//! Management errors ([`KeywardError`]) as HTTP responses, so that every
//! backend does not write the same `match`.

use std::fmt;

use ::axum::http::header::RETRY_AFTER;
use ::axum::http::{HeaderValue, StatusCode};
use ::axum::response::{IntoResponse, Response};

use crate::manager::KeywardError;
use crate::store::StoreError;

/// A [`KeyManager`](crate::KeyManager) error as an HTTP response: a status
/// for each kind of error and a JSON body `{"error", "message"}` whose
/// `error` is [`KeywardError::code`]. Handlers return it with `?`:
///
/// ```
/// use axum::Json;
/// use keyward::axum::ManagementRejection;
/// use keyward::{Actor, KeyId, KeyManager, key::KeyView, MemoryStore};
///
/// async fn get_key(
///     manager: KeyManager<MemoryStore>,
///     admin: Actor,
///     id: KeyId,
/// ) -> Result<Json<KeyView>, ManagementRejection> {
///     Ok(Json(manager.get(&admin, &id).await?))
/// }
/// # let _ = get_key;
/// ```
///
/// | error | status |
/// |---|---|
/// | `Policy`, `Token`, `UnknownEnvironment`, `BadImportHash` | 400 Bad Request |
/// | `NotAllowed` | 403 Forbidden |
/// | `NotFound` | 404 Not Found |
/// | `Revoked`, `Expired`, `Suspended`, `NotSuspended`, `Legacy`, `IdTaken`, `NotMetered`, `QuotaExceeded`, `Store(Conflict \| DuplicateId)` | 409 Conflict |
/// | `Store(TooManySessions)` | 429 Too Many Requests |
/// | `Hash`, `Store(Corrupt)` | 500 Internal Server Error |
/// | other `Store` errors, `SessionsNotEnded` | 503 Service Unavailable, `Retry-After: 5` |
///
/// 4xx messages are the error's own text (errors never carry a secret);
/// 5xx messages are fixed, so a database driver's text (host names,
/// queries) never reaches the caller: log the error before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementRejection {
    error: KeywardError,
}

impl ManagementRejection {
    /// How long a 503 asks the caller to wait, in seconds.
    pub const RETRY_AFTER_SECS: u64 = 5;

    /// The HTTP status for this error (see the table above).
    pub fn status(&self) -> StatusCode {
        use KeywardError as E;
        match &self.error {
            E::Policy(_)
            | E::Token(_)
            | E::Usage(_)
            | E::UnknownEnvironment(_)
            | E::BadImportHash(_) => StatusCode::BAD_REQUEST,
            E::NotAllowed { .. } => StatusCode::FORBIDDEN,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Revoked(_)
            | E::Expired(_)
            | E::Suspended(_)
            | E::NotSuspended(_)
            | E::Legacy(..)
            | E::IdTaken(_)
            | E::NotMetered(_)
            | E::QuotaExceeded { .. }
            | E::Store(StoreError::Conflict { .. } | StoreError::DuplicateId(_)) => {
                StatusCode::CONFLICT
            }
            E::Store(StoreError::TooManySessions { .. }) => StatusCode::TOO_MANY_REQUESTS,
            E::Hash(_) | E::Store(StoreError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            E::Store(StoreError::Unsupported(_)) => StatusCode::NOT_IMPLEMENTED,
            E::Store(_) | E::SessionsNotEnded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The message sent: the error's text for 4xx, a fixed text for 5xx.
    pub fn message(&self) -> String {
        let status = self.status();
        if !status.is_server_error() {
            return self.error.to_string();
        }
        match &self.error {
            KeywardError::SessionsNotEnded { id, .. } => format!(
                "Key {id} is revoked, but its session tokens could not be ended right now. \
                 Revoke it again (as compromised) or end its sessions in a few seconds."
            ),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                "The key store is unavailable right now. Try again in a few seconds.".to_owned()
            }
            _ => "The key could not be handled because of a server error.".to_owned(),
        }
    }

    /// The error.
    pub fn error(&self) -> &KeywardError {
        &self.error
    }

    /// The error, back.
    pub fn into_inner(self) -> KeywardError {
        self.error
    }
}

impl From<KeywardError> for ManagementRejection {
    fn from(error: KeywardError) -> Self {
        Self { error }
    }
}

impl fmt::Display for ManagementRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.error)
    }
}

impl std::error::Error for ManagementRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl IntoResponse for ManagementRejection {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.error.code(), "message": self.message() });
        let mut response = (status, ::axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(Self::RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashError;
    use crate::ids::KeyId;
    use crate::ids::OwnerId;
    use crate::policy::PolicyError;
    use crate::policy::{ManagementAction, ManagementDenial};
    use crate::token::TokenError;

    fn id() -> KeyId {
        KeyId::new("abc123").unwrap()
    }

    /// Status, `error` code, message and Retry-After of the response.
    fn answer(error: KeywardError) -> (StatusCode, String, String, Option<String>) {
        let response = ManagementRejection::from(error).into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body();
        let bytes = futures_body(body);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (
            status,
            json["error"].as_str().unwrap().to_owned(),
            json["message"].as_str().unwrap().to_owned(),
            retry,
        )
    }

    fn futures_body(body: ::axum::body::Body) -> Vec<u8> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(::axum::body::to_bytes(body, 1 << 16))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn bad_requests_are_400_with_the_error_text() {
        for e in [
            KeywardError::Policy(PolicyError::NoPermissions),
            KeywardError::Token(TokenError::Empty),
            KeywardError::UnknownEnvironment("staging".into()),
            KeywardError::BadImportHash(id()),
        ] {
            let text = e.to_string();
            let code = e.code();
            let (status, error, message, retry) = answer(e);
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(error, code);
            assert_eq!(message, text);
            assert_eq!(retry, None);
        }
    }

    #[test]
    fn refusals_by_the_management_policy_are_403() {
        let e = KeywardError::NotAllowed {
            actor: "mallory".into(),
            action: ManagementAction::Revoke,
            owner: OwnerId::new("contoso").unwrap(),
            denial: ManagementDenial::OtherOwner,
        };
        let (status, error, _, _) = answer(e);
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(error, "not_allowed");
    }

    #[test]
    fn unknown_keys_are_404() {
        let (status, error, message, _) = answer(KeywardError::NotFound(id()));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error, "not_found");
        assert!(message.contains("abc123"));
    }

    #[test]
    fn state_conflicts_are_409() {
        for e in [
            KeywardError::Revoked(id()),
            KeywardError::Expired(id()),
            KeywardError::Suspended(id()),
            KeywardError::NotSuspended(id()),
            KeywardError::Legacy(id(), "rotated"),
            KeywardError::IdTaken(id()),
            KeywardError::QuotaExceeded { limit: 3 },
            KeywardError::Store(StoreError::Conflict {
                id: id(),
                expected: 1,
                found: 2,
            }),
            KeywardError::Store(StoreError::DuplicateId(id())),
        ] {
            let code = e.code();
            let (status, error, _, _) = answer(e);
            assert_eq!(status, StatusCode::CONFLICT, "{code}");
            assert_eq!(error, code);
        }
    }

    #[test]
    fn a_session_cap_is_429() {
        let e = KeywardError::Store(StoreError::TooManySessions {
            key_id: id(),
            limit: 100,
        });
        assert_eq!(answer(e).0, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn server_faults_are_500_without_their_detail() {
        for e in [
            KeywardError::Hash(HashError::Failed("db.internal:5432 pepper".into())),
            KeywardError::Store(StoreError::Corrupt {
                id: "abc123".into(),
                field: "permissions",
                reason: "db.internal:5432".into(),
            }),
        ] {
            let (status, _, message, retry) = answer(e);
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!message.contains("db.internal"), "{message}");
            assert_eq!(retry, None);
        }
    }

    #[test]
    fn an_unavailable_store_is_503_with_retry_after_and_no_driver_text() {
        for e in [
            KeywardError::Store(StoreError::Backend(
                "connection to db.internal:5432 refused".into(),
            )),
            KeywardError::SessionsNotEnded {
                id: id(),
                source: StoreError::Backend("db.internal:5432 timeout".into()),
            },
        ] {
            let code = e.code();
            let (status, error, message, retry) = answer(e);
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error, code);
            assert!(!message.contains("db.internal"), "{message}");
            assert_eq!(retry.as_deref(), Some("5"));
        }
    }
}
