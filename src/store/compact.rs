//! How [`MemoryStore`](super::MemoryStore) keeps a record: every string,
//! list and time of a [`KeyRecord`] packed into one allocation; inline only
//! what changes without an update (usage, reminders), the generation and the
//! expiry (scanned for reminders). Map slots are paid about twice (hash
//! tables run half empty after growing), so the inline part is kept small. A million
//! keys then take a few hundred megabytes (`examples/footprint.rs` measures
//! it); a `KeyRecord` is rebuilt on each read, which only cold checks,
//! listings and management calls do.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::memory_usage::UsageState;
use crate::ids::OwnerId;
use crate::ids::{Environment, ExternalId, KeyId};
use crate::key::{KeyKind, KeyRecord, SecretHash};
use crate::metadata::Metadata;
use crate::policy::{IpAllowlist, PermissionGrant, ResourceScope};
use crate::store::StoreError;

/// The count written for "all" (permissions or resources); a list of `n`
/// items is written as `n + 1`.
const ALL: u64 = 0;

/// A stored record without its id (the map's key).
#[derive(Clone)]
pub(super) struct CompactRecord {
    /// In order: owner, environment, name, secret hash (each a LEB128
    /// length, then its UTF-8 bytes); permissions and resources (a LEB128
    /// count + 1, [`ALL`] for "all", then each string); the IP allowlist (a
    /// count, then per network the family 4 or 6, its octets and its prefix
    /// length); the kind (0 scoped, 1 legacy); created, revoked and
    /// suspended times (a flag byte for the optional ones, then seconds as
    /// 8 bytes little-endian and nanoseconds as 4); the external id (a flag
    /// byte, then the string); the metadata's compact JSON (empty for `{}`).
    blob: Box<[u8]>,
    pub(super) generation: u64,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) last_used_at: Option<DateTime<Utc>>,
    pub(super) last_used_ip: Option<IpAddr>,
    pub(super) reminded_at: Option<DateTime<Utc>>,
    /// Limits, credits and limit states: changed by leases without an
    /// update; `None` (one word) for a key with neither.
    pub(super) usage: Option<Box<UsageState>>,
}

/// The blob holds the secret hash: never printed.
impl fmt::Debug for CompactRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompactRecord")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl CompactRecord {
    /// Packs `r` (its id is the caller's map key).
    pub(super) fn encode(r: &KeyRecord) -> Result<Self, StoreError> {
        let too_big = |field| StoreError::Corrupt {
            id: r.id.to_string(),
            field,
            reason: "longer than 4 GiB".into(),
        };
        let mut w = Writer(Vec::with_capacity(256));
        w.str(r.owner.as_str()).ok_or_else(|| too_big("owner"))?;
        w.str(r.environment.as_str())
            .ok_or_else(|| too_big("environment"))?;
        w.str(&r.name).ok_or_else(|| too_big("name"))?;
        w.str(r.secret_hash.as_str())
            .ok_or_else(|| too_big("secret_hash"))?;
        match &r.permissions {
            PermissionGrant::All => w.uint(ALL),
            PermissionGrant::Only(names) => w.list(names).ok_or_else(|| too_big("permissions"))?,
        }
        match &r.resources {
            ResourceScope::All => w.uint(ALL),
            ResourceScope::Only(names) => w.list(names).ok_or_else(|| too_big("resources"))?,
        }
        let nets = r.ip_allowlist.nets();
        w.uint(nets.len() as u64);
        for net in nets {
            match net {
                IpNet::V4(n) => {
                    w.0.push(4);
                    w.0.extend_from_slice(&n.addr().octets());
                }
                IpNet::V6(n) => {
                    w.0.push(6);
                    w.0.extend_from_slice(&n.addr().octets());
                }
            }
            w.0.push(net.prefix_len());
        }
        w.0.push(match r.kind {
            KeyKind::Scoped => 0,
            KeyKind::Legacy => 1,
        });
        w.time(r.created_at);
        w.optional_time(r.revoked_at);
        w.optional_time(r.suspended_at);
        match &r.external_id {
            None => w.0.push(0),
            Some(x) => {
                w.0.push(1);
                w.str(x.as_str()).ok_or_else(|| too_big("external_id"))?;
            }
        }
        if r.metadata.is_empty() {
            w.uint(0);
        } else {
            w.str(&r.metadata.to_json())
                .ok_or_else(|| too_big("metadata"))?;
        }
        Ok(Self {
            blob: w.0.into_boxed_slice(),
            generation: r.generation,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            last_used_ip: r.last_used_ip,
            reminded_at: r.reminded_at,
            usage: UsageState::new(&r.usage),
        })
    }

    /// Rebuilds the record of key `id`. A blob that does not decode (which
    /// only a bug could cause) is [`StoreError::Corrupt`] naming the field.
    pub(super) fn decode(&self, id: &KeyId) -> Result<KeyRecord, StoreError> {
        let corrupt = |field: &'static str| StoreError::Corrupt {
            id: id.to_string(),
            field,
            reason: "the in-memory record does not decode".into(),
        };
        let mut r = Reader(&self.blob);
        let owner = r.str().ok_or_else(|| corrupt("owner"))?;
        let owner = OwnerId::new(owner).map_err(|_| corrupt("owner"))?;
        let environment = r.str().ok_or_else(|| corrupt("environment"))?;
        let environment = Environment::new(environment).map_err(|_| corrupt("environment"))?;
        let name = r.str().ok_or_else(|| corrupt("name"))?.to_owned();
        let secret_hash =
            SecretHash::new(r.str().ok_or_else(|| corrupt("secret_hash"))?.to_owned());
        let permissions = match r.list().ok_or_else(|| corrupt("permissions"))? {
            None => PermissionGrant::All,
            Some(names) => PermissionGrant::Only(names.into_iter().collect()),
        };
        let resources = match r.list().ok_or_else(|| corrupt("resources"))? {
            None => ResourceScope::All,
            Some(names) => ResourceScope::Only(names),
        };
        let count = r.uint().ok_or_else(|| corrupt("ip_allowlist"))?;
        let mut nets = Vec::new();
        for _ in 0..count {
            nets.push(r.net().ok_or_else(|| corrupt("ip_allowlist"))?);
        }
        let kind = match r.bytes(1).and_then(|b| b.first().copied()) {
            Some(0) => KeyKind::Scoped,
            Some(1) => KeyKind::Legacy,
            _ => return Err(corrupt("kind")),
        };
        let created_at = r.time().ok_or_else(|| corrupt("created_at"))?;
        let revoked_at = r.optional_time().ok_or_else(|| corrupt("revoked_at"))?;
        let suspended_at = r.optional_time().ok_or_else(|| corrupt("suspended_at"))?;
        let external_id = match r.bytes(1).and_then(|b| b.first().copied()) {
            Some(0) => None,
            Some(1) => {
                let x = r.str().ok_or_else(|| corrupt("external_id"))?;
                Some(ExternalId::new(x).map_err(|_| corrupt("external_id"))?)
            }
            _ => return Err(corrupt("external_id")),
        };
        let metadata = match r.str().ok_or_else(|| corrupt("metadata"))? {
            "" => Metadata::EMPTY,
            json => Metadata::parse(json).map_err(|_| corrupt("metadata"))?,
        };
        if !r.0.is_empty() {
            return Err(corrupt("metadata"));
        }
        Ok(KeyRecord {
            id: id.clone(),
            owner,
            environment,
            name,
            kind,
            permissions,
            resources,
            ip_allowlist: IpAllowlist::from_nets(nets),
            external_id,
            metadata,
            usage: self
                .usage
                .as_ref()
                .map(|u| u.controls.clone())
                .unwrap_or_default(),
            created_at,
            expires_at: self.expires_at,
            revoked_at,
            suspended_at,
            last_used_at: self.last_used_at,
            last_used_ip: self.last_used_ip,
            reminded_at: self.reminded_at,
            generation: self.generation,
            secret_hash,
        })
    }

    /// The owner, read without rebuilding the record.
    pub(super) fn owner(&self) -> Option<&str> {
        Reader(&self.blob).str()
    }
}

struct Writer(Vec<u8>);

impl Writer {
    /// LEB128: 7 bits a byte, low bits first.
    fn uint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }
    fn str(&mut self, s: &str) -> Option<()> {
        self.uint(u64::try_from(s.len()).ok()?);
        self.0.extend_from_slice(s.as_bytes());
        Some(())
    }
    fn list<'a, I>(&mut self, items: I) -> Option<()>
    where
        I: IntoIterator<Item = &'a String>,
        I::IntoIter: ExactSizeIterator,
    {
        let items = items.into_iter();
        self.uint(u64::try_from(items.len()).ok()?.checked_add(1)?);
        for s in items {
            self.str(s)?;
        }
        Some(())
    }
    fn time(&mut self, t: DateTime<Utc>) {
        self.0.extend_from_slice(&t.timestamp().to_le_bytes());
        self.0
            .extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
    }
    fn optional_time(&mut self, t: Option<DateTime<Utc>>) {
        match t {
            None => self.0.push(0),
            Some(t) => {
                self.0.push(1);
                self.time(t);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn uint(&mut self) -> Option<u64> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes(1)?.first()?;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.uint()?).ok()?;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
    /// `None` inside: "all".
    fn list(&mut self) -> Option<Option<Vec<String>>> {
        let count = self.uint()?;
        if count == ALL {
            return Some(None);
        }
        let count = count - 1;
        let mut items = Vec::with_capacity(count.min(64) as usize);
        for _ in 0..count {
            items.push(self.str()?.to_owned());
        }
        Some(Some(items))
    }
    fn time(&mut self) -> Option<DateTime<Utc>> {
        let secs = i64::from_le_bytes(self.bytes(8)?.try_into().ok()?);
        let nanos = u32::from_le_bytes(self.bytes(4)?.try_into().ok()?);
        DateTime::from_timestamp(secs, nanos)
    }
    fn optional_time(&mut self) -> Option<Option<DateTime<Utc>>> {
        match *self.bytes(1)?.first()? {
            0 => Some(None),
            1 => Some(Some(self.time()?)),
            _ => None,
        }
    }
    fn net(&mut self) -> Option<IpNet> {
        let family = *self.bytes(1)?.first()?;
        let addr = match family {
            4 => {
                let o: [u8; 4] = self.bytes(4)?.try_into().ok()?;
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                let o: [u8; 16] = self.bytes(16)?.try_into().ok()?;
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return None,
        };
        let prefix = *self.bytes(1)?.first()?;
        IpNet::new(addr, prefix).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record() -> KeyRecord {
        let t = Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap()
            + chrono::TimeDelta::nanoseconds(123_456_789);
        KeyRecord {
            id: KeyId::new("abcDEF123456").unwrap(),
            owner: OwnerId::new("contoso").unwrap(),
            environment: Environment::new("live").unwrap(),
            name: "GitHub Actions — prod\n\u{0}".into(),
            kind: KeyKind::Legacy,
            permissions: PermissionGrant::only(["package:push", "analytics:read"]),
            resources: ResourceScope::only(["AzureRM.DataFactory*", "", "Ünïcode"]),
            ip_allowlist: IpAllowlist::parse(&["203.0.113.0/24", "2001:db8::/32", "::/0"]).unwrap(),
            external_id: Some(ExternalId::new("ext/Ünï 1").unwrap()),
            metadata: Metadata::parse(r#"{"a":[1,{"b":null}],"ü":"x"}"#).unwrap(),
            usage: crate::usage::UsageControls {
                rate_limits: crate::usage::RateLimits::new([crate::usage::RateLimit::new(
                    "publish",
                    10,
                    std::time::Duration::from_secs(3600),
                )
                .unwrap()])
                .unwrap(),
                credits: Some(crate::usage::Credits::new(7).unwrap()),
            },
            created_at: t,
            expires_at: Some(t + chrono::TimeDelta::days(90)),
            revoked_at: Some(DateTime::<Utc>::MAX_UTC),
            suspended_at: Some(DateTime::<Utc>::MIN_UTC),
            last_used_at: Some(DateTime::<Utc>::MAX_UTC),
            last_used_ip: Some("::ffff:10.0.0.1".parse().unwrap()),
            reminded_at: Some(DateTime::<Utc>::MIN_UTC),
            generation: u64::MAX,
            secret_hash: SecretHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        }
    }

    #[test]
    fn every_field_round_trips() {
        let r = record();
        let packed = CompactRecord::encode(&r).unwrap();
        assert_eq!(packed.decode(&r.id).unwrap(), r);
        assert_eq!(packed.owner(), Some("contoso"));
        let all = KeyRecord {
            permissions: PermissionGrant::All,
            resources: ResourceScope::All,
            ip_allowlist: IpAllowlist::any(),
            kind: KeyKind::Scoped,
            external_id: None,
            metadata: Metadata::EMPTY,
            usage: Default::default(),
            ..record()
        };
        let packed = CompactRecord::encode(&all).unwrap();
        assert_eq!(packed.decode(&all.id).unwrap(), all);
        let empty = KeyRecord {
            permissions: PermissionGrant::Only(Default::default()),
            resources: ResourceScope::Only(Vec::new()),
            ..record()
        };
        let packed = CompactRecord::encode(&empty).unwrap();
        assert_eq!(packed.decode(&empty.id).unwrap(), empty);
        // Lengths past one LEB128 byte.
        let long = KeyRecord {
            name: "n".repeat(300),
            resources: ResourceScope::Only((0..200).map(|i| format!("pkg{i}")).collect()),
            revoked_at: None,
            suspended_at: None,
            ..record()
        };
        let packed = CompactRecord::encode(&long).unwrap();
        assert_eq!(packed.decode(&long.id).unwrap(), long);
    }

    #[test]
    fn a_damaged_blob_is_a_corrupt_record_not_a_panic() {
        let r = record();
        let packed = CompactRecord::encode(&r).unwrap();
        for cut in 0..packed.blob.len() {
            let mut damaged = packed.clone();
            damaged.blob = packed.blob[..cut].into();
            assert!(
                matches!(damaged.decode(&r.id), Err(StoreError::Corrupt { .. })),
                "cut at {cut}"
            );
        }
        let mut extra = packed.clone();
        extra.blob = [&packed.blob[..], &[0]].concat().into();
        assert!(matches!(
            extra.decode(&r.id),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn debug_shows_no_hash() {
        let packed = CompactRecord::encode(&record()).unwrap();
        let shown = format!("{packed:?}");
        assert!(!shown.contains("argon2"), "{shown}");
        assert!(!shown.contains("aGFzaA"), "{shown}");
    }
}
