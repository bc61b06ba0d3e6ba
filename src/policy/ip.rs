//! IP allowlist: CIDR ranges, IPv4 and IPv6.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::PolicyError;

/// Most ranges in one key's allowlist.
pub(crate) const MAX_IP_RANGES: usize = 64;

/// The networks a key may be used from. Empty means anywhere.
///
/// An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, as a dual-stack socket
/// reports IPv4 clients) matches its IPv4 range.
///
/// ```
/// use keyward::policy::IpAllowlist;
/// let list = IpAllowlist::parse(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]).unwrap();
/// assert!(list.allows("10.1.2.3".parse().unwrap()));
/// assert!(list.allows("::ffff:10.1.2.3".parse().unwrap()));
/// assert!(list.allows("2001:db8::1".parse().unwrap()));
/// assert!(list.allows("192.0.2.7".parse().unwrap()));
/// assert!(!list.allows("192.0.2.8".parse().unwrap()));
/// assert!(IpAllowlist::parse(&["10.0.0.0/33"]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IpAllowlist {
    /// Sorted, deduplicated; a boxed slice, as a cached key holds one.
    nets: Box<[IpNet]>,
}

impl IpAllowlist {
    /// Most CIDR ranges one allowlist may hold.
    pub const MAX_RANGES: usize = MAX_IP_RANGES;

    /// Allows every address.
    pub fn any() -> Self {
        Self::default()
    }

    /// Parses CIDR ranges (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    /// Host bits are cleared (`10.1.2.3/8` becomes `10.0.0.0/8`). The error
    /// names the first input that did not parse.
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<Self, PolicyError> {
        if ranges.len() > MAX_IP_RANGES {
            return Err(PolicyError::TooManyCidrs {
                count: ranges.len(),
                max: MAX_IP_RANGES,
            });
        }
        let nets = ranges
            .iter()
            .map(|r| parse_one(r.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_nets(nets))
    }

    /// An allowlist of already parsed networks (host bits cleared, duplicates removed).
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        nets.sort();
        nets.dedup();
        Self {
            nets: nets.into_boxed_slice(),
        }
    }

    /// The networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether the list is empty (anywhere allowed).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` may use the key.
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        // One answer for both forms of an IPv4 client (`a.b.c.d` from an
        // IPv4 socket, `::ffff:a.b.c.d` from a dual-stack one): IPv4 ranges
        // see the IPv4 form, IPv6 ranges (`::ffff:0:0/96`, `::/0`) the
        // mapped one.
        let canonical = ip.to_canonical();
        let (v4, mapped) = match canonical {
            IpAddr::V4(v4) => (Some(v4), v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => (None, v6),
        };
        // One containment test per range, of the form the range can hold.
        self.nets.iter().any(|n| match n {
            IpNet::V4(n) => v4.is_some_and(|a| n.contains(&a)),
            IpNet::V6(n) => n.contains(&mapped),
        })
    }

    /// Whether every address `self` allows is allowed by `other` too.
    pub fn is_within(&self, other: &IpAllowlist) -> bool {
        if other.nets.is_empty() {
            return true;
        }
        if self.nets.is_empty() {
            return false;
        }
        self.nets
            .iter()
            .all(|n| other.nets.iter().any(|o| o.contains(n)))
    }
}

fn parse_one(input: &str) -> Result<IpNet, PolicyError> {
    let s = input.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| PolicyError::InvalidCidr {
            input: input.chars().take(64).collect(),
        })
}
