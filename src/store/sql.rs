//! What the SQLite and PostgreSQL stores share: name validation, the column
//! encoding of a record and of a session (and the rule of the capped session
//! insert), and error mapping.
//!
//! Columns: `id`, `owner`, `environment`, `name`, `secret_hash` as text;
//! `kind` as text ([`KeyKind::as_str`]); `permissions`, `resources`,
//! `ip_allowlist` as JSON text (the serde forms of [`PermissionGrant`],
//! [`ResourceScope`] and [`IpAllowlist`]); `last_used_ip` as the address's
//! text form; `created_at`, `expires_at`, `revoked_at`, `suspended_at`,
//! `last_used_at`, `reminded_at` as integer microseconds since the Unix epoch
//! (UTC); `generation` as a 64-bit integer; `external_id` as text or NULL;
//! `metadata` as the object's compact JSON text, NULL when empty; the usage
//! controls as `sql_usage` describes them.
//!
//! A listing's name prefix is compared with `substr(name, 1, length(?)) = ?`,
//! not `LIKE`: exact and case-sensitive, with nothing to escape.
//!
//! Audit events (see [`AuditEvent`]) are rows of `<table>_audit`: `at` in
//! microseconds, `action` as [`AuditAction::as_str`], `client_ip` as text,
//! `count` as a 64-bit integer.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::Row;
use thiserror::Error;

use crate::audit::{AuditAction, AuditEvent};
use crate::ids::OwnerId;
use crate::ids::{Environment, ExternalId, KeyId};
use crate::key::{KeyKind, KeyRecord, SecretHash};
use crate::metadata::Metadata;
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::store::{ListQuery, StoreError};

use super::sql_usage::{EncodedUsage, decode_usage, encode_usage};

/// Longest SQL identifier accepted (PostgreSQL's limit).
pub(crate) const MAX_IDENT_LEN: usize = 63;

/// A table or schema name that is not a plain lowercase SQL identifier.
///
/// Names must match `[a-z_][a-z0-9_]{0,62}`; they are always quoted in SQL,
/// and the rule keeps them identical in every database and free of anything
/// that could change a statement.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use keyward::SqliteStore;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = SqliteStore::in_memory().await.unwrap();
/// let err = store.with_table("api-keys").unwrap_err();
/// assert_eq!(err.kind, "table");
/// # });
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid {kind} name {name:?}: use 1 to 63 characters from [a-z0-9_], not starting with a digit"
)]
pub struct InvalidName {
    /// What was being named: `"table"`, `"schema"` or `"channel"`.
    pub kind: &'static str,
    /// The name given (cut to 80 characters).
    pub name: String,
}

/// Checks `[a-z_][a-z0-9_]{0,62}`.
pub(crate) fn check_ident(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {
            name.len() <= MAX_IDENT_LEN
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            name: name.chars().take(80).collect(),
        })
    }
}

/// `{base}_{suffix}` when it fits in an identifier, otherwise a short name
/// derived from a hash of `base`, so that long table names never produce
/// clashing (truncated) index names.
pub(crate) fn derived_ident(base: &str, suffix: &str) -> String {
    let plain = format!("{base}_{suffix}");
    if plain.len() <= MAX_IDENT_LEN {
        return plain;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(base.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("kw_{hex}_{suffix}")
}

/// The columns, in the order every SELECT lists them.
pub(crate) const COLUMNS: &str = "id, owner, environment, name, kind, permissions, resources, ip_allowlist, \
     created_at, expires_at, revoked_at, suspended_at, last_used_at, last_used_ip, reminded_at, \
     generation, secret_hash, external_id, metadata, \
     rate_limits, credits_remaining, credits_leased, credits_refill, credits_refilled_for";

/// A record encoded for binding.
pub(crate) struct Encoded<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub environment: &'a str,
    pub name: &'a str,
    pub kind: &'static str,
    pub permissions: String,
    pub resources: String,
    pub ip_allowlist: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub suspended_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
    pub reminded_at: Option<i64>,
    pub generation: i64,
    pub secret_hash: &'a str,
    pub external_id: Option<&'a str>,
    pub metadata: Option<String>,
    pub usage: EncodedUsage,
}

pub(super) fn to_json<T: serde::Serialize>(field: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("cannot encode {field}: {e}")))
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn generation_to_sql(g: u64) -> Result<i64, StoreError> {
    i64::try_from(g).map_err(|_| {
        StoreError::Backend(format!("generation {g} is larger than the store can hold"))
    })
}

pub(crate) fn encode(r: &KeyRecord) -> Result<Encoded<'_>, StoreError> {
    Ok(Encoded {
        id: r.id.as_str(),
        owner: r.owner.as_str(),
        environment: r.environment.as_str(),
        name: &r.name,
        kind: r.kind.as_str(),
        permissions: to_json("permissions", &r.permissions)?,
        resources: to_json("resources", &r.resources)?,
        ip_allowlist: to_json("ip_allowlist", &r.ip_allowlist)?,
        created_at: micros(r.created_at),
        expires_at: r.expires_at.map(micros),
        revoked_at: r.revoked_at.map(micros),
        suspended_at: r.suspended_at.map(micros),
        last_used_at: r.last_used_at.map(micros),
        last_used_ip: r.last_used_ip.map(|ip| ip.to_string()),
        reminded_at: r.reminded_at.map(micros),
        generation: generation_to_sql(r.generation)?,
        secret_hash: r.secret_hash.as_str(),
        external_id: r.external_id.as_ref().map(|x| x.as_str()),
        metadata: (!r.metadata.is_empty()).then(|| r.metadata.to_json()),
        usage: encode_usage(&r.usage)?,
    })
}

/// A printable, bounded form of a stored id for error messages.
pub(super) fn printable_id(raw: &str) -> String {
    raw.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(super) fn corrupt(id: &str, field: &'static str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: printable_id(id),
        field,
        reason: reason.to_string(),
    }
}

/// Decodes one row (selected with [`COLUMNS`]) into a record. Anything that
/// does not parse is [`StoreError::Corrupt`], naming the field; the reason
/// never quotes the hash column.
pub(crate) fn decode<'r, R>(row: &'r R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let raw_id: String = row.try_get("id").map_err(|e| corrupt("?", "id", e))?;
    let id_str = raw_id.as_str();
    let text = |field: &'static str| -> Result<String, StoreError> {
        row.try_get::<String, _>(field)
            .map_err(|e| corrupt(id_str, field, e))
    };
    let int = |field: &'static str| -> Result<i64, StoreError> {
        row.try_get::<i64, _>(field)
            .map_err(|e| corrupt(id_str, field, e))
    };
    let opt_int = |field: &'static str| -> Result<Option<i64>, StoreError> {
        row.try_get::<Option<i64>, _>(field)
            .map_err(|e| corrupt(id_str, field, e))
    };
    let time = |field: &'static str, v: i64| -> Result<DateTime<Utc>, StoreError> {
        DateTime::from_timestamp_micros(v)
            .ok_or_else(|| corrupt(id_str, field, format!("{v} microseconds is out of range")))
    };
    let opt_time = |field: &'static str| -> Result<Option<DateTime<Utc>>, StoreError> {
        opt_int(field)?.map(|v| time(field, v)).transpose()
    };
    fn json<T: serde::de::DeserializeOwned>(
        id: &str,
        field: &'static str,
        s: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(s).map_err(|e| corrupt(id, field, e))
    }

    let id = KeyId::new(id_str).map_err(|e| corrupt(id_str, "id", e))?;
    let owner = OwnerId::new(&text("owner")?).map_err(|e| corrupt(id_str, "owner", e))?;
    let environment =
        Environment::new(&text("environment")?).map_err(|e| corrupt(id_str, "environment", e))?;
    let name = text("name")?;
    let kind_raw = text("kind")?;
    let kind = KeyKind::parse(&kind_raw).ok_or_else(|| {
        corrupt(
            id_str,
            "kind",
            format!("unknown kind {:?}", printable_id(&kind_raw)),
        )
    })?;
    let permissions: PermissionGrant = json(id_str, "permissions", &text("permissions")?)?;
    let resources: ResourceScope = json(id_str, "resources", &text("resources")?)?;
    let ip_allowlist: IpAllowlist = json(id_str, "ip_allowlist", &text("ip_allowlist")?)?;
    let created_at = time("created_at", int("created_at")?)?;
    let expires_at = opt_time("expires_at")?;
    let revoked_at = opt_time("revoked_at")?;
    let suspended_at = opt_time("suspended_at")?;
    let last_used_at = opt_time("last_used_at")?;
    let last_used_ip = row
        .try_get::<Option<String>, _>("last_used_ip")
        .map_err(|e| corrupt(id_str, "last_used_ip", e))?
        .map(|s| parse_ip(id_str, "last_used_ip", &s))
        .transpose()?;
    let reminded_at = opt_time("reminded_at")?;
    let generation_raw = int("generation")?;
    let generation = u64::try_from(generation_raw).map_err(|_| {
        corrupt(
            id_str,
            "generation",
            format!("{generation_raw} is negative"),
        )
    })?;
    let external_id = row
        .try_get::<Option<String>, _>("external_id")
        .map_err(|e| corrupt(id_str, "external_id", e))?
        .map(|x| ExternalId::new(&x).map_err(|e| corrupt(id_str, "external_id", e)))
        .transpose()?;
    let metadata = match row
        .try_get::<Option<String>, _>("metadata")
        .map_err(|e| corrupt(id_str, "metadata", e))?
    {
        None => Metadata::EMPTY,
        Some(text) => Metadata::parse(&text).map_err(|e| corrupt(id_str, "metadata", e))?,
    };
    // The hash is checked only for being text; its content is never quoted.
    let secret_hash = SecretHash::new(
        row.try_get::<String, _>("secret_hash")
            .map_err(|_| corrupt(id_str, "secret_hash", "not text"))?,
    );
    Ok(KeyRecord {
        id,
        owner,
        environment,
        name,
        kind,
        permissions,
        resources,
        ip_allowlist,
        external_id,
        metadata,
        usage: decode_usage(row, id_str)?,
        created_at,
        expires_at,
        revoked_at,
        suspended_at,
        last_used_at,
        last_used_ip,
        reminded_at,
        generation,
        secret_hash,
    })
}

pub(super) fn parse_ip(id: &str, field: &'static str, s: &str) -> Result<IpAddr, StoreError> {
    s.parse::<IpAddr>().map_err(|_| {
        corrupt(
            id,
            field,
            format!("{:?} is not an IP address", printable_id(s)),
        )
    })
}

/// The columns of `<table>_audit`, in the order every audit SELECT lists them.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at, action, actor, owner, key_id, client_ip, detail, count";

/// An audit event encoded for binding (`id` is assigned by the database).
/// Counts above `i64::MAX` are stored as `i64::MAX`.
pub(crate) struct EncodedEvent<'a> {
    pub at: i64,
    pub action: &'static str,
    pub actor: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub client_ip: Option<String>,
    pub detail: &'a str,
    pub count: i64,
}

pub(crate) fn encode_event(e: &AuditEvent) -> Result<EncodedEvent<'_>, StoreError> {
    Ok(EncodedEvent {
        at: micros(e.at),
        action: e.action.as_str(),
        actor: e.actor.as_deref(),
        owner: e.owner.as_ref().map(|o| o.as_str()),
        key_id: e.key_id.as_ref().map(|k| k.as_str()),
        client_ip: e.client_ip.map(|ip| ip.to_string()),
        detail: &e.detail,
        // Saturates rather than failing: a batch the sink refuses would be
        // retried forever and hold back every later event.
        count: i64::try_from(e.count).unwrap_or(i64::MAX),
    })
}

/// Decodes one row of `<table>_audit` (selected with [`AUDIT_COLUMNS`]).
/// Anything that does not parse is [`StoreError::Corrupt`] with the event's
/// row id (as `audit#<id>`) and the field.
pub(crate) fn decode_event<'r, R>(row: &'r R) -> Result<AuditEvent, StoreError>
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let row_id: i64 = row.try_get("id").map_err(|e| corrupt("audit#?", "id", e))?;
    let rid = format!("audit#{row_id}");
    let rid = rid.as_str();
    let int = |field: &'static str| -> Result<i64, StoreError> {
        row.try_get::<i64, _>(field)
            .map_err(|e| corrupt(rid, field, e))
    };
    let opt_text = |field: &'static str| -> Result<Option<String>, StoreError> {
        row.try_get::<Option<String>, _>(field)
            .map_err(|e| corrupt(rid, field, e))
    };
    let at_raw = int("at")?;
    let at = DateTime::from_timestamp_micros(at_raw)
        .ok_or_else(|| corrupt(rid, "at", format!("{at_raw} microseconds is out of range")))?;
    let action_raw: String = row
        .try_get("action")
        .map_err(|e| corrupt(rid, "action", e))?;
    let action = AuditAction::parse(&action_raw).ok_or_else(|| {
        corrupt(
            rid,
            "action",
            format!("unknown action {:?}", printable_id(&action_raw)),
        )
    })?;
    let actor = opt_text("actor")?;
    let owner = opt_text("owner")?
        .map(|o| OwnerId::new(&o).map_err(|e| corrupt(rid, "owner", e)))
        .transpose()?;
    let key_id = opt_text("key_id")?
        .map(|k| KeyId::new(&k).map_err(|e| corrupt(rid, "key_id", e)))
        .transpose()?;
    let client_ip = opt_text("client_ip")?
        .map(|s| parse_ip(rid, "client_ip", &s))
        .transpose()?;
    let detail: String = row
        .try_get("detail")
        .map_err(|e| corrupt(rid, "detail", e))?;
    let count_raw = int("count")?;
    let count = u64::try_from(count_raw)
        .map_err(|_| corrupt(rid, "count", format!("{count_raw} is negative")))?;
    Ok(AuditEvent {
        at,
        action,
        actor,
        owner,
        key_id,
        client_ip,
        detail,
        count,
    })
}

/// Boxes a store future as `Send` (see the `KeyStore` impls).
pub(crate) fn boxed<'a, T>(
    fut: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(fut)
}

/// Maps a driver error to [`StoreError::Backend`]. Driver messages name the
/// failing operation and the database's message, never bound values.
pub(crate) fn backend(op: &str, e: sqlx::Error) -> StoreError {
    StoreError::Backend(format!("{op}: {e}"))
}

/// Whether the error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// The conditions of a listing or count past `owner = <first placeholder>`,
/// each starting with ` AND `, placeholders from `next`. Binds go in this
/// order: environment; name prefix twice; external id; `after` (only with
/// `paged`); `now` then the idle cutoff (only when the second value is
/// true).
pub(crate) fn list_conditions(
    query: &ListQuery,
    paged: bool,
    mut next: impl FnMut() -> String,
) -> (String, bool) {
    let mut text = String::new();
    if query.environment.is_some() {
        text.push_str(&format!(" AND environment = {}", next()));
    }
    if query.name_prefix.is_some() {
        let (a, b) = (next(), next());
        text.push_str(&format!(" AND substr(name, 1, length({a})) = {b}"));
    }
    if query.external_id.is_some() {
        text.push_str(&format!(" AND external_id = {}", next()));
    }
    if paged && query.after.is_some() {
        text.push_str(&format!(" AND id > {}", next()));
    }
    let needs_now = query
        .status
        .is_some_and(|s| s != crate::key::KeyStatus::Revoked);
    if let Some(status) = query.status {
        let (now, cut) = if needs_now {
            (next(), next())
        } else {
            (String::new(), String::new())
        };
        text.push_str(" AND ");
        text.push_str(&status_condition(status, &now, &cut));
    }
    (text, needs_now)
}

/// Binds [`list_conditions`]' values (after the owner), in its order.
macro_rules! bind_list_conditions {
    ($q:expr, $query:expr, $paged:expr, $needs_now:expr) => {{
        let query: &$crate::store::ListQuery = $query;
        let mut q = $q;
        if let Some(env) = &query.environment {
            q = q.bind(env.as_str());
        }
        if let Some(prefix) = &query.name_prefix {
            q = q.bind(prefix.as_str()).bind(prefix.as_str());
        }
        if let Some(x) = &query.external_id {
            q = q.bind(x.as_str());
        }
        if $paged {
            if let Some(after) = &query.after {
                q = q.bind(after.as_str());
            }
        }
        if $needs_now {
            q = q.bind($crate::store::sql::micros(query.now));
            q = q.bind($crate::store::sql::idle_cutoff(
                query.now,
                query.idle_expiry,
            ));
        }
        q
    }};
}
pub(crate) use bind_list_conditions;

/// A key's idle-expiry "since" in SQL: its last use, or its creation if
/// never used (or if the use is recorded before the creation), as
/// [`KeyRecord::idle_deadline`](crate::key::KeyRecord::idle_deadline) counts it.
const IDLE_SINCE: &str =
    "(CASE WHEN last_used_at > created_at THEN last_used_at ELSE created_at END)";

/// The idle-expiry cutoff in microseconds for a status judged at `now`
/// under `idle`: a key whose [`IDLE_SINCE`] is at or before it is expired
/// for being unused (`since + idle <= now`). Without idle expiry, and when
/// `now - idle` is before the earliest time, `i64::MIN`, which no key's
/// time is at or before.
pub(crate) fn idle_cutoff(now: DateTime<Utc>, idle: Option<chrono::TimeDelta>) -> i64 {
    idle.and_then(|idle| now.checked_sub_signed(idle))
        .map_or(i64::MIN, micros)
}

/// The SQL condition for a status at a bound `now` and idle cutoff `cut`
/// ([`idle_cutoff`]; both given as placeholder text, each used at most
/// once, `now` first), in the order of
/// [`KeyRecord::status_with_idle`](crate::key::KeyRecord::status_with_idle):
/// revoked, then expired (by expiry, or unused since the cutoff), then
/// suspended, then active.
pub(crate) fn status_condition(status: crate::key::KeyStatus, now: &str, cut: &str) -> String {
    use crate::key::KeyStatus::*;
    match status {
        Active => format!(
            "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now}) AND suspended_at IS NULL \
             AND {IDLE_SINCE} > {cut}"
        ),
        Suspended => format!(
            "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now}) AND suspended_at IS NOT NULL \
             AND {IDLE_SINCE} > {cut}"
        ),
        Expired => format!(
            "revoked_at IS NULL AND ((expires_at IS NOT NULL AND expires_at <= {now}) \
             OR {IDLE_SINCE} <= {cut})"
        ),
        Revoked => "revoked_at IS NOT NULL".to_owned(),
    }
}

/// The SQL condition for a key counting against a quota at a bound `now`
/// and idle cutoff `cut` (each used once, `now` first): neither revoked nor
/// expired, suspended or not (see
/// [`QuotaCheck::counts`](crate::store::QuotaCheck::counts)).
pub(crate) fn live_condition(now: &str, cut: &str) -> String {
    format!(
        "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now}) AND {IDLE_SINCE} > {cut}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_end_with_the_usage_columns() {
        assert!(COLUMNS.ends_with(crate::store::sql_usage::USAGE_COLUMNS));
    }

    #[test]
    fn identifiers() {
        for ok in ["keys", "_k", "api_keys_2", &"a".repeat(63)] {
            assert!(check_ident("table", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Keys",
            "1keys",
            "api-keys",
            "k\"; drop",
            "ключи",
            &"a".repeat(64),
            "a b",
        ] {
            assert!(check_ident("table", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_conditions_bind_now_and_cutoff_once_except_revoked() {
        use crate::key::KeyStatus::*;
        // The stores bind `now`, then the idle cutoff, once each for every
        // status but Revoked.
        for status in [Active, Suspended, Expired] {
            let text = status_condition(status, "$8", "$9");
            assert_eq!(text.matches("$8").count(), 1);
            assert_eq!(text.matches("$9").count(), 1);
            assert!(text.find("$8") < text.find("$9"), "now comes first");
        }
        assert_eq!(
            status_condition(Revoked, "$8", "$9").matches('$').count(),
            0
        );
        assert!(status_condition(Active, "?", "?").contains("suspended_at IS NULL"));
        assert!(status_condition(Suspended, "?", "?").contains("suspended_at IS NOT NULL"));
        let live = live_condition("$3", "$4");
        assert!(live.find("$3") < live.find("$4"));
        assert_eq!(live.matches('$').count(), 2);
    }

    #[test]
    fn the_idle_cutoff_is_now_minus_idle_and_min_without_it() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(idle_cutoff(now, None), i64::MIN);
        let day = chrono::TimeDelta::days(1);
        assert_eq!(idle_cutoff(now, Some(day)), micros(now - day));
        assert_eq!(
            idle_cutoff(DateTime::<Utc>::MIN_UTC, Some(day)),
            i64::MIN,
            "before the earliest time no key is idle"
        );
    }

    #[test]
    fn derived_names_fit() {
        assert_eq!(derived_ident("keys", "owner_id"), "keys_owner_id");
        let long = "a".repeat(63);
        let d = derived_ident(&long, "owner_id");
        assert!(d.len() <= MAX_IDENT_LEN && d.starts_with("kw_"));
        assert_ne!(d, derived_ident(&"b".repeat(63), "owner_id"));
    }
}
