//! A complete [`KeyStore`] over Redis, written as an outsider would: only
//! keyward's public API, the `redis` crate (async, tokio) and a few Lua
//! scripts. It is the worked answer to "how do I put keyward on my
//! database". `main` runs the public conformance suite against it.
//!
//! ```sh
//! redis-server --port 6379 --save "" &   # or any Redis 6+ on 127.0.0.1:6379
//! cargo run --all-features --example redis_store [redis://127.0.0.1:6379]
//! ```
//!
//! # Layout
//!
//! Every key of one store starts with its prefix, `keyward:{<namespace>}:`
//! (the braces are a Redis Cluster hash tag: one store lives in one slot, so
//! its scripts may touch any of its keys). Under it:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `key:<id>` | hash | one record, a field per [`KeyRecord`] field |
//! | `owner:<owner>` | sorted set, all scores 0 | the ids of an owner's records, in byte order (`ZRANGEBYLEX`) |
//! | `ids` | set | every id ever inserted: deleted ids stay, so they are never reused |
//! | `expiry` | sorted set, all scores 0 | `<expires_at>:<id>` of each key with an expiry, not revoked, not reminded |
//!
//! Times are stored as 20-digit decimal strings of microseconds shifted by
//! 2^63, so that byte order is time order: Lua compares them as strings
//! (equal-length digit strings, so the collation cannot matter), exactly,
//! whatever the year, where a Lua number or a sorted-set score (a double)
//! would lose microseconds past 2255, and `expiry` is ordered by expiry, then id.
//! `None` is the empty string. `permissions`, `resources` and `ip_allowlist`
//! are the JSON of their serde forms; `generation` is decimal text compared
//! as text.
//!
//! Each contract point that needs atomicity is one Lua script (Redis runs a
//! script with nothing else in between): insert with its quota count,
//! compare-and-swap update, delete, record_usage, take_expiry_reminders.
//! `get` and `list` are plain reads.
//!
//! # Usage controls: refused
//!
//! This store does not keep rate limits or credits. An insert or update of a
//! record with any is refused with `StoreError::Unsupported`, and the lease
//! operations keep [`KeyStore`]'s refusing defaults, so a metered key can
//! never be created here, nor spend without bound (fail closed). `main` runs
//! the key checks (`run_all`) and not `usage_conformance`, which such a store
//! fails by design. Keeping them would take a Lua script per operation, as
//! the SQL stores take one statement each (see `docs/DESIGN.md`).
//!
//! # What it leaves behind
//!
//! Everything is under the store's prefix. [`RedisStore::destroy`] deletes
//! all of it (`SCAN` + `UNLINK`), remembered ids included; `main` calls it
//! after a passing run, and prints the prefix and leaves the data for
//! inspection after a failing one (delete it with
//! `redis-cli --scan --pattern 'keyward:{<namespace>}:*' | xargs redis-cli unlink`).
//! Entries of `expiry` whose time has passed without a reminder stay until
//! the key is deleted or updated; they cost a skipped index entry, nothing more.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use keyward::{
    Environment, KeyId, KeyStore, OwnerId, ids::ExternalId, key::KeyKind, key::KeyRecord,
    key::SecretHash, metadata::Metadata, policy::IpAllowlist, policy::PermissionGrant,
    policy::ResourceScope, store::ListQuery, store::QuotaCheck, store::StoreError,
};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

/// A [`KeyStore`] in one Redis namespace. Cheap to clone: clones share one
/// multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: MultiplexedConnection,
    prefix: String,
}

impl RedisStore {
    /// Connects to `url` and keeps keys under `keyward:{<namespace>}:`.
    /// The namespace must not contain `{` or `}`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        if namespace.contains(['{', '}']) {
            return Err(StoreError::Backend(
                "the namespace must not contain { or }".into(),
            ));
        }
        let client = redis::Client::open(url).map_err(backend)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(backend)?;
        Ok(Self {
            conn,
            prefix: format!("keyward:{{{namespace}}}:"),
        })
    }

    /// The prefix of every Redis key of this store.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Deletes every Redis key of this store (records, indexes and the
    /// remembered ids). Returns how many Redis keys it deleted.
    pub async fn destroy(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            if !keys.is_empty() {
                deleted += keys.len();
                let _: usize = conn.unlink(&keys).await.map_err(backend)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}key:{id}", self.prefix)
    }
    fn owner_key(&self, owner: &OwnerId) -> String {
        format!("{}owner:{owner}", self.prefix)
    }
    fn ids_key(&self) -> String {
        format!("{}ids", self.prefix)
    }
    fn expiry_key(&self) -> String {
        format!("{}expiry", self.prefix)
    }
}

// ---------------------------------------------------------------------------
// Encoding: KeyRecord <-> hash fields. KeyRecord is not serde-serializable
// (its hash must never end up in a log), so each field is written by hand.
// ---------------------------------------------------------------------------

/// A time as 20 digits that sort like the times: microseconds + 2^63.
fn enc_time(t: DateTime<Utc>) -> String {
    let shifted = (i128::from(t.timestamp_micros()) - i128::from(i64::MIN)) as u64;
    format!("{shifted:020}")
}

/// The quota's idle cutoff, encoded: a key whose last use (or creation, if
/// never used) is at or before it is expired for being unused
/// (`QuotaCheck::counts`). Empty without idle expiry.
fn idle_cutoff(q: QuotaCheck) -> String {
    q.idle_expiry
        .and_then(|idle| q.now.checked_sub_signed(idle))
        .map(enc_time)
        .unwrap_or_default()
}

fn enc_opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(enc_time).unwrap_or_default()
}

fn dec_time(id: &str, field: &'static str, s: &str) -> Result<DateTime<Utc>, StoreError> {
    let shifted: u64 = s.parse().map_err(|e| corrupt(id, field, e))?;
    let micros = (i128::from(shifted) + i128::from(i64::MIN)) as i64;
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(id, field, "out of range"))
}

fn dec_opt_time(
    id: &str,
    field: &'static str,
    s: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    if s.is_empty() {
        Ok(None)
    } else {
        dec_time(id, field, s).map(Some)
    }
}

fn json<T: serde::Serialize>(field: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("cannot encode {field}: {e}")))
}

/// The hash fields written by `insert` and `update` (`update` leaves
/// `last_used_at` and `last_used_ip` out).
fn fields(r: &KeyRecord, with_usage: bool) -> Result<Vec<(&'static str, String)>, StoreError> {
    // This example does not implement usage controls (the lease
    // operations keep their refusing defaults): a metered or rate-limited
    // key is refused rather than stored without its controls.
    if !r.usage.is_empty() {
        return Err(StoreError::Unsupported("usage controls"));
    }
    let mut f = vec![
        ("owner", r.owner.to_string()),
        ("environment", r.environment.to_string()),
        ("name", r.name.clone()),
        ("kind", r.kind.as_str().to_owned()),
        ("permissions", json("permissions", &r.permissions)?),
        ("resources", json("resources", &r.resources)?),
        ("ip_allowlist", json("ip_allowlist", &r.ip_allowlist)?),
        ("created_at", enc_time(r.created_at)),
        ("expires_at", enc_opt_time(r.expires_at)),
        ("revoked_at", enc_opt_time(r.revoked_at)),
        ("suspended_at", enc_opt_time(r.suspended_at)),
        ("reminded_at", enc_opt_time(r.reminded_at)),
        ("generation", r.generation.to_string()),
        ("secret_hash", r.secret_hash.as_str().to_owned()),
        (
            "external_id",
            r.external_id
                .as_ref()
                .map(|x| x.to_string())
                .unwrap_or_default(),
        ),
        (
            "metadata",
            if r.metadata.is_empty() {
                String::new()
            } else {
                r.metadata.to_json()
            },
        ),
    ];
    if with_usage {
        f.push(("last_used_at", enc_opt_time(r.last_used_at)));
        f.push((
            "last_used_ip",
            r.last_used_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ));
    }
    Ok(f)
}

/// The `expiry` index member of a record, if it belongs in the index.
fn expiry_member(r: &KeyRecord) -> String {
    match r.expires_at {
        Some(e) if r.revoked_at.is_none() && r.reminded_at.is_none() => {
            format!("{}:{}", enc_time(e), r.id)
        }
        _ => String::new(),
    }
}

/// Rebuilds a record from its hash (`HGETALL`); `None` for a missing hash.
fn decode(id: &str, h: &HashMap<String, String>) -> Result<Option<KeyRecord>, StoreError> {
    if h.is_empty() {
        return Ok(None);
    }
    let get = |field: &'static str| -> Result<&str, StoreError> {
        h.get(field)
            .map(String::as_str)
            .ok_or_else(|| corrupt(id, field, "missing"))
    };
    let permissions: PermissionGrant =
        serde_json::from_str(get("permissions")?).map_err(|e| corrupt(id, "permissions", e))?;
    let resources: ResourceScope =
        serde_json::from_str(get("resources")?).map_err(|e| corrupt(id, "resources", e))?;
    let ip_allowlist: IpAllowlist =
        serde_json::from_str(get("ip_allowlist")?).map_err(|e| corrupt(id, "ip_allowlist", e))?;
    let last_used_ip = match get("last_used_ip")? {
        "" => None,
        s => Some(
            s.parse::<IpAddr>()
                .map_err(|e| corrupt(id, "last_used_ip", e))?,
        ),
    };
    // Hashes written before these fields existed have neither.
    let external_id = match h.get("external_id").map(String::as_str) {
        None | Some("") => None,
        Some(x) => Some(ExternalId::new(x).map_err(|e| corrupt(id, "external_id", e))?),
    };
    let metadata = match h.get("metadata").map(String::as_str) {
        None | Some("") => Metadata::default(),
        Some(m) => Metadata::parse(m).map_err(|e| corrupt(id, "metadata", e))?,
    };
    Ok(Some(KeyRecord {
        id: KeyId::new(id).map_err(|e| corrupt(id, "id", e))?,
        owner: OwnerId::new(get("owner")?).map_err(|e| corrupt(id, "owner", e))?,
        environment: Environment::new(get("environment")?)
            .map_err(|e| corrupt(id, "environment", e))?,
        name: get("name")?.to_owned(),
        kind: KeyKind::parse(get("kind")?).ok_or_else(|| corrupt(id, "kind", "unknown kind"))?,
        permissions,
        resources,
        ip_allowlist,
        external_id,
        metadata,
        usage: Default::default(),
        created_at: dec_time(id, "created_at", get("created_at")?)?,
        expires_at: dec_opt_time(id, "expires_at", get("expires_at")?)?,
        revoked_at: dec_opt_time(id, "revoked_at", get("revoked_at")?)?,
        suspended_at: dec_opt_time(id, "suspended_at", get("suspended_at")?)?,
        last_used_at: dec_opt_time(id, "last_used_at", get("last_used_at")?)?,
        last_used_ip,
        reminded_at: dec_opt_time(id, "reminded_at", get("reminded_at")?)?,
        generation: get("generation")?
            .parse()
            .map_err(|e| corrupt(id, "generation", e))?,
        secret_hash: SecretHash::new(get("secret_hash")?.to_owned()),
    }))
}

/// A flat `field, value, field, value, ...` list (a script's `HGETALL`) as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut it = flat.into_iter();
    let mut h = HashMap::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        h.insert(k, v);
    }
    h
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(id: &str, field: &'static str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        field,
        reason: reason.to_string(),
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// The scripts. ARGV[1] is always the store's prefix; the keys a script
// derives from it (an owner's set, a record's hash) share the store's hash tag.
// ---------------------------------------------------------------------------

/// KEYS: ids, record hash, owner set, expiry.
/// ARGV: prefix, id, max_live ("" for no quota), now, environment,
/// expiry member ("" for none), idle cutoff ("" for no idle expiry: a key
/// last used, or created if never used, at or before it is expired and does
/// not count), then field/value pairs.
/// Returns "ok", "dup" or "quota".
static INSERT: Lua = Lua::new(
    r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 'dup'
end
if ARGV[3] ~= '' then
  local live = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local f = redis.call('HMGET', ARGV[1] .. 'key:' .. id, 'environment', 'revoked_at', 'expires_at',
      'created_at', 'last_used_at')
    local since = f[4]
    if f[5] and f[5] ~= '' and f[5] > f[4] then
      since = f[5]
    end
    if f[1] == ARGV[5] and f[2] == '' and (f[3] == '' or f[3] > ARGV[4])
      and (ARGV[7] == '' or since > ARGV[7]) then
      live = live + 1
    end
  end
  if live >= tonumber(ARGV[3]) then
    return 'quota'
  end
end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[4], 0, ARGV[6])
end
return 'ok'
"#,
);

/// KEYS: record hash, expiry.
/// ARGV: prefix, id, expected generation, new owner, expiry member ("" for
/// none), then field/value pairs (no usage fields).
/// Returns "ok", "missing" or the stored generation (a conflict).
static UPDATE: Lua = Lua::new(
    r#"
local old = redis.call('HMGET', KEYS[1], 'generation', 'owner', 'expires_at')
if not old[1] then
  return 'missing'
end
if old[1] ~= ARGV[3] then
  return old[1]
end
if old[3] ~= '' then
  redis.call('ZREM', KEYS[2], old[3] .. ':' .. ARGV[2])
end
if old[2] ~= ARGV[4] then
  redis.call('ZREM', ARGV[1] .. 'owner:' .. old[2], ARGV[2])
  redis.call('ZADD', ARGV[1] .. 'owner:' .. ARGV[4], 0, ARGV[2])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[2], 0, ARGV[5])
end
return 'ok'
"#,
);

/// KEYS: record hash, expiry. ARGV: prefix, id. Returns 1, or 0 if missing.
/// The id stays in `ids`, so it is never reused.
static DELETE: Lua = Lua::new(
    r#"
local old = redis.call('HMGET', KEYS[1], 'owner', 'expires_at')
if not old[1] then
  return 0
end
redis.call('ZREM', ARGV[1] .. 'owner:' .. old[1], ARGV[2])
if old[2] ~= '' then
  redis.call('ZREM', KEYS[2], old[2] .. ':' .. ARGV[2])
end
redis.call('DEL', KEYS[1])
return 1
"#,
);

/// KEYS: record hash. ARGV: at, ip ("" for none). A missing record or a
/// later stored use: nothing changes.
static RECORD_USAGE: Lua = Lua::new(
    r#"
local last = redis.call('HGET', KEYS[1], 'last_used_at')
if not last then
  return 0
end
if last == '' or last <= ARGV[1] then
  redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1], 'last_used_ip', ARGV[2])
  return 1
end
return 0
"#,
);

/// KEYS: expiry. ARGV: prefix, now, until, limit.
/// Takes due keys in expiry order, marks them (and drops them from
/// `expiry`) and returns `{ {id, field, value, ...}, ... }`. Its work is
/// bounded by `limit`, not by the size of the index.
static TAKE_REMINDERS: Lua = Lua::new(
    r#"
local taken = {}
local limit = tonumber(ARGV[4])
if limit <= 0 then
  return taken
end
-- (now, until]: members sort as '<time>:<id>', and ';' sorts right after ':'.
-- Every member read is removed, so each round makes progress; the index
-- holds only due keys, so a round of n members takes n keys.
while #taken < limit do
  local due = redis.call('ZRANGEBYLEX', KEYS[1], '(' .. ARGV[2] .. ';', '[' .. ARGV[3] .. ';',
    'LIMIT', 0, limit - #taken)
  if #due == 0 then
    break
  end
  for _, member in ipairs(due) do
    local id = string.sub(member, 22)
    local key = ARGV[1] .. 'key:' .. id
    local f = redis.call('HMGET', key, 'revoked_at', 'reminded_at', 'expires_at')
    redis.call('ZREM', KEYS[1], member)
    if f[1] == '' and f[2] == '' and f[3] == string.sub(member, 1, 20) then
      redis.call('HSET', key, 'reminded_at', ARGV[2])
      local row = redis.call('HGETALL', key)
      table.insert(row, 1, id)
      table.insert(taken, row)
    end
  end
end
return taken
"#,
);

/// A script's source, hashed once (calls send `EVALSHA`, and `EVAL` only
/// when the server does not have it yet).
struct Lua {
    source: &'static str,
    script: std::sync::OnceLock<redis::Script>,
}

impl Lua {
    const fn new(source: &'static str) -> Self {
        Self {
            source,
            script: std::sync::OnceLock::new(),
        }
    }
    fn script(&self) -> &redis::Script {
        self.script.get_or_init(|| redis::Script::new(self.source))
    }
}

impl RedisStore {
    /// Walks the owner's records in id (byte) order from past `after`, a
    /// batch at a time, until `visit` says stop (returns `false`). Listing
    /// and counting both filter with `ListQuery`'s own `matches*`, so every
    /// filter (name prefix, external id, ...) is the same as in keyward's
    /// stores.
    async fn walk(
        &self,
        query: &ListQuery,
        after: Option<&KeyId>,
        mut visit: impl FnMut(KeyRecord) -> bool,
    ) -> Result<(), StoreError> {
        const BATCH: usize = 256;
        let mut conn = self.conn.clone();
        let owner_key = self.owner_key(&query.owner);
        let mut from = match after {
            Some(after) => format!("({after}"),
            None => "-".to_owned(),
        };
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(&owner_key)
                .arg(&from)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            if ids.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(self.key(id));
            }
            let hashes: Vec<HashMap<String, String>> =
                pipe.query_async(&mut conn).await.map_err(backend)?;
            for (id, h) in ids.iter().zip(&hashes) {
                // A record deleted since the range was read is skipped.
                if let Some(r) = decode(id, h)? {
                    if !visit(r) {
                        return Ok(());
                    }
                }
            }
            match ids.last() {
                Some(last) if ids.len() == BATCH => from = format!("({last}"),
                _ => return Ok(()),
            }
        }
    }
}

impl KeyStore for RedisStore {
    async fn insert(
        &self,
        record: &KeyRecord,
        quota: Option<QuotaCheck>,
    ) -> Result<(), StoreError> {
        let mut script = INSERT.script().prepare_invoke();
        script
            .key(self.ids_key())
            .key(self.key(record.id.as_str()))
            .key(self.owner_key(&record.owner))
            .key(self.expiry_key())
            .arg(&self.prefix)
            .arg(record.id.as_str())
            .arg(quota.map(|q| q.max_live.to_string()).unwrap_or_default())
            .arg(quota.map(|q| enc_time(q.now)).unwrap_or_default())
            .arg(record.environment.as_str())
            .arg(expiry_member(record))
            .arg(quota.map(idle_cutoff).unwrap_or_default());
        for (k, v) in fields(record, true)? {
            script.arg(k).arg(v);
        }
        let outcome: String = script
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "dup" => Err(StoreError::DuplicateId(record.id.clone())),
            "quota" => Err(StoreError::QuotaExceeded {
                limit: quota.map_or(0, |q| q.max_live),
            }),
            other => Err(StoreError::Backend(format!("insert script said {other:?}"))),
        }
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let h: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(self.key(id.as_str()))
            .await
            .map_err(backend)?;
        decode(id.as_str(), &h)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out = Vec::new();
        self.walk(query, query.after.as_ref(), |r| {
            if query.matches(&r) {
                out.push(r);
            }
            out.len() < query.limit
        })
        .await?;
        Ok(out)
    }

    async fn count(&self, query: &ListQuery) -> Result<u64, StoreError> {
        let mut n = 0u64;
        self.walk(query, None, |r| {
            if query.matches_filters(&r) {
                n += 1;
            }
            true
        })
        .await?;
        Ok(n)
    }

    async fn update(&self, record: &KeyRecord, expected_generation: u64) -> Result<(), StoreError> {
        let mut script = UPDATE.script().prepare_invoke();
        script
            .key(self.key(record.id.as_str()))
            .key(self.expiry_key())
            .arg(&self.prefix)
            .arg(record.id.as_str())
            .arg(expected_generation.to_string())
            .arg(record.owner.as_str())
            .arg(expiry_member(record));
        for (k, v) in fields(record, false)? {
            script.arg(k).arg(v);
        }
        let outcome: String = script
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "missing" => Err(StoreError::NotFound(record.id.clone())),
            found => Err(StoreError::Conflict {
                id: record.id.clone(),
                expected: expected_generation,
                found: found
                    .parse()
                    .map_err(|e| corrupt(record.id.as_str(), "generation", e))?,
            }),
        }
    }

    async fn delete(&self, id: &KeyId) -> Result<(), StoreError> {
        let deleted: i64 = DELETE
            .script()
            .key(self.key(id.as_str()))
            .key(self.expiry_key())
            .arg(&self.prefix)
            .arg(id.as_str())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(id.clone()))
        }
    }

    async fn record_usage(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
        ip: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        let _: i64 = RECORD_USAGE
            .script()
            .key(self.key(id.as_str()))
            .arg(enc_time(at))
            .arg(ip.map(|ip| ip.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn take_expiry_reminders(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        if until <= now || limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<Vec<String>> = TAKE_REMINDERS
            .script()
            .key(self.expiry_key())
            .arg(&self.prefix)
            .arg(enc_time(now))
            .arg(enc_time(until))
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            if row.is_empty() {
                continue;
            }
            let id = row.remove(0);
            if let Some(r) = decode(&id, &pairs(row))? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    // A fresh namespace per run: the suite never sees another run's data.
    let namespace = format!("conformance-{}", KeyId::generate());
    let store = match RedisStore::connect(&url, &namespace).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("redis_store: cannot connect to {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "redis_store: {} conformance checks against {url}, prefix {}",
        keyward::store::conformance::CHECKS.len(),
        store.prefix()
    );
    // run_all panics on the first broken rule; run it on a task to turn
    // the panic into a failing exit code.
    let suite = {
        let store = store.clone();
        tokio::spawn(async move {
            keyward::store::conformance::run_all(|| {
                let store = store.clone();
                async move { store }
            })
            .await;
        })
    };
    match suite.await {
        Ok(()) => {
            match store.destroy().await {
                Ok(n) => println!("redis_store: cleaned up {n} Redis keys"),
                Err(e) => eprintln!("redis_store: cleanup failed: {e}"),
            }
            println!(
                "redis_store: all {} conformance checks passed",
                keyward::store::conformance::CHECKS.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "redis_store: conformance FAILED ({}); data left under {}",
                if e.is_panic() {
                    "see the panic above"
                } else {
                    "task cancelled"
                },
                store.prefix()
            );
            ExitCode::FAILURE
        }
    }
}
