//! The client's address behind trusted proxies: `X-Forwarded-For` and the
//! standard `Forwarded` header (RFC 7239), both walked from the right.

use std::net::{IpAddr, SocketAddr};

use ::axum::http::HeaderMap;
use ::axum::http::header::FORWARDED;
use rfc7239::NodeName;

/// Which headers of a trusted proxy are read for the client's address
/// ([`KeywardLayer::proxy_headers`](super::KeywardLayer::proxy_headers)).
///
/// Read only the header your proxy writes. A proxy that sets one header
/// (nginx's `$proxy_add_x_forwarded_for`, most load balancers: only
/// `X-Forwarded-For`) passes a client's other header through unchanged, so
/// a client could forge it; reading both would let any client make its
/// address unknown, or name any address the allowlist and the per-source
/// throttle would believe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProxyHeaders {
    /// `X-Forwarded-For` only; `Forwarded` is ignored (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239) only; `X-Forwarded-For` is ignored.
    Forwarded,
    /// Both, for proxies that write both: when both are present they must
    /// name the same client, or the address is unknown.
    Both,
}

/// Most entries walked, over all `X-Forwarded-For` (or all `Forwarded`)
/// headers together; a longer chain of trusted hops makes the address unknown.
pub(super) const MAX_FORWARDED_HOPS: usize = 32;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address for a request from `peer`.
///
/// An untrusted peer is the client. A trusted peer's `X-Forwarded-For` and
/// `Forwarded` headers (those `read` names) are each walked from the right, skipping trusted
/// hops; the first untrusted hop is the client (or the leftmost entry when
/// every hop is trusted). `None` (unknown) when an entry on the way is not
/// an address (unparsable, `unknown`, an obfuscated `_name`, an element
/// without `for=`), when more than [`MAX_FORWARDED_HOPS`] entries would be
/// walked, or when both headers are present and name different clients.
pub(super) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    read: ProxyHeaders,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return Some(peer);
    }
    let (read_xff, read_forwarded) = match read {
        ProxyHeaders::XForwardedFor => (true, false),
        ProxyHeaders::Forwarded => (false, true),
        ProxyHeaders::Both => (true, true),
    };
    let xff = (read_xff && headers.contains_key(X_FORWARDED_FOR))
        .then(|| walk(peer, x_forwarded_for(headers), &is_trusted));
    let forwarded = (read_forwarded && headers.contains_key(FORWARDED))
        .then(|| walk(peer, forwarded(headers), &is_trusted));
    match (xff, forwarded) {
        (None, None) => Some(peer),
        (Some(one), None) | (None, Some(one)) => one,
        // Both: a proxy wrote one and a client may have forged the other.
        // Believe neither unless they agree.
        (Some(a), Some(b)) => (a == b).then_some(a).flatten(),
    }
}

/// Walks `entries` (right to left; `None` = not an address) from `peer`.
fn walk(
    peer: IpAddr,
    entries: impl Iterator<Item = Option<IpAddr>>,
    is_trusted: &impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let mut ip = peer;
    for (hops, entry) in entries.enumerate() {
        if hops >= MAX_FORWARDED_HOPS {
            return None;
        }
        ip = entry?.to_canonical();
        if !is_trusted(ip) {
            return Some(ip);
        }
    }
    Some(ip)
}

/// `X-Forwarded-For` entries, right to left: `1.2.3.4`, `::1`, `1.2.3.4:80`, `[::1]:80`.
fn x_forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        // A value that is not visible ASCII is one entry that is no address.
        .flat_map(|value| value.to_str().unwrap_or("").rsplit(','))
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
                .ok()
        })
}

/// `Forwarded` elements' `for=` nodes, right to left (parsed by the
/// `rfc7239` crate: quoted values, `[IPv6]`, ports, `unknown`, `_obfuscated`).
fn forwarded(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(FORWARDED)
        .iter()
        .rev()
        .flat_map(|value| rfc7239::parse(value.to_str().unwrap_or("")).rev())
        .map(|element| match element.ok()?.forwarded_for?.name {
            NodeName::Ip(ip) => Some(ip),
            NodeName::Unknown | NodeName::Obfuscated(_) => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The client seen from a trusted peer (127.0.0.1; 127/8 and ::1 trusted).
    fn seen(pairs: &[(&str, &str)]) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                ::axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        client_ip(ip("127.0.0.1"), &headers, ProxyHeaders::Both, |a| {
            a.is_loopback() || a == ip("::1")
        })
    }

    #[test]
    fn forwarded_values_in_every_form() {
        let f = |v: &str| seen(&[("forwarded", v)]);
        assert_eq!(f("for=203.0.113.5"), Some(ip("203.0.113.5")));
        assert_eq!(f("For=\"203.0.113.5:4711\""), Some(ip("203.0.113.5")));
        assert_eq!(f("for=\"[2001:db8::1]\""), Some(ip("2001:db8::1")));
        assert_eq!(f("for=\"[2001:db8::1]:443\""), Some(ip("2001:db8::1")));
        assert_eq!(f("for=\"[::ffff:203.0.113.5]\""), Some(ip("203.0.113.5")));
        assert_eq!(
            f("for=203.0.113.5;proto=https;by=127.0.0.9;host=example.org"),
            Some(ip("203.0.113.5"))
        );
        // Right to left: the rightmost untrusted hop, over commas and headers.
        assert_eq!(
            f("for=198.51.100.7, for=203.0.113.5"),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            f("for=198.51.100.7, for=203.0.113.5, for=127.0.0.2"),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            seen(&[
                ("forwarded", "for=198.51.100.7"),
                ("forwarded", "for=203.0.113.5,for=\"[::1]:80\""),
            ]),
            Some(ip("203.0.113.5"))
        );
        // Only trusted hops: the leftmost.
        assert_eq!(f("for=127.0.0.3, for=127.0.0.2"), Some(ip("127.0.0.3")));
        // Left of the client, anything goes: it is not read.
        assert_eq!(f("for=garbage, for=203.0.113.5"), Some(ip("203.0.113.5")));
    }

    #[test]
    fn what_is_no_address_makes_the_client_unknown() {
        let f = |v: &str| seen(&[("forwarded", v)]);
        for v in [
            "for=unknown",
            "for=_hidden",
            "for=\"_gazonk\"",
            "for=203.0.113.5, for=unknown",
            "for=203.0.113.5, for=_proxy1, for=127.0.0.2",
            "proto=https",
            "for=",
            "for=2001:db8::1", // IPv6 must be in brackets
            "for=\"[2001:db8::1\"",
            "for=203.0.113.5:99999",
            "for=example.org",
            "for=203.0.113.5,",
            "for=203.0.113.5;bogus",
            "",
        ] {
            assert_eq!(f(v), None, "{v:?}");
        }
    }

    #[test]
    fn the_walk_is_bounded() {
        let trusted = vec!["for=127.0.0.2"; MAX_FORWARDED_HOPS].join(",");
        assert_eq!(seen(&[("forwarded", &trusted)]), Some(ip("127.0.0.2")));
        let long = vec!["for=127.0.0.2"; MAX_FORWARDED_HOPS + 1].join(",");
        assert_eq!(seen(&[("forwarded", &long)]), None);
        let many: Vec<(&str, &str)> = vec![("forwarded", "for=127.0.0.2"); MAX_FORWARDED_HOPS + 1];
        assert_eq!(seen(&many), None, "counted over headers");
        let xff = vec!["127.0.0.2"; MAX_FORWARDED_HOPS + 1].join(",");
        assert_eq!(seen(&[("x-forwarded-for", &xff)]), None);
        // A huge untrusted prefix is never read.
        let prefix = format!("{}, for=203.0.113.5", "for=x;".repeat(20_000));
        assert_eq!(seen(&[("forwarded", &prefix)]), Some(ip("203.0.113.5")));
    }

    #[test]
    fn both_headers_must_agree() {
        let both = |xff: &str, fwd: &str| seen(&[("x-forwarded-for", xff), ("forwarded", fwd)]);
        assert_eq!(
            both("203.0.113.5", "for=203.0.113.5"),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            both("203.0.113.5, 127.0.0.2", "for=\"203.0.113.5:1\""),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(both("198.51.100.7", "for=203.0.113.5"), None);
        assert_eq!(both("203.0.113.5", "for=unknown"), None);
        assert_eq!(both("bogus", "for=203.0.113.5"), None);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", HeaderValue::from_static("for=203.0.113.5"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        assert_eq!(
            client_ip(ip("198.51.100.7"), &headers, ProxyHeaders::Both, |a| {
                a.is_loopback()
            }),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn only_the_headers_the_proxy_writes_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        // Forged by the client, passed through by a proxy that writes only
        // X-Forwarded-For.
        headers.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        let trusted = |a: IpAddr| a.is_loopback();
        let peer = ip("127.0.0.1");
        assert_eq!(
            client_ip(peer, &headers, ProxyHeaders::default(), trusted),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(peer, &headers, ProxyHeaders::Forwarded, trusted),
            Some(ip("1.1.1.1"))
        );
        assert_eq!(client_ip(peer, &headers, ProxyHeaders::Both, trusted), None);
        let mut only_forwarded = HeaderMap::new();
        only_forwarded.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        assert_eq!(
            client_ip(peer, &only_forwarded, ProxyHeaders::XForwardedFor, trusted),
            Some(peer),
            "ignored: the proxy's own address"
        );
    }
}
