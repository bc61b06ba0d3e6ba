//! [`Source`]: where a request comes from, for throttling, argon2
//! admission and failure aggregation. A ground-floor type: it imports
//! nothing from the crate.

use std::net::IpAddr;

/// Where a request comes from, as far as throttling and argon2 admission
/// are concerned: an IPv4 address, or the /64 prefix of an IPv6 address
/// (one host usually holds a whole /64). An IPv4-mapped IPv6 address is its
/// IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(u128);

impl Source {
    /// keyward's own hashing for management calls (create, regenerate,
    /// rotate, rehash): a lane of the hashing queue of its own, never pushed
    /// out. No address maps to it (an IPv6 /64 has its low 64 bits clear).
    pub(crate) const MANAGEMENT: Source = Source(u128::MAX);

    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(0xffff_0000_0000 | u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => Self(u128::from(v6) & !u128::from(u64::MAX)),
            },
        }
    }
}
