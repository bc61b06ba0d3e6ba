//! The client's address behind trusted proxies: `X-Forwarded-For` and the
//! standard `Forwarded` header (RFC 7239), both walked from the right.
//!
//! Both are split on their raw bytes, from the right, and each entry is
//! read only when the walk reaches it: what a client sends to the left of
//! its proxy's entry can neither make that entry unreadable nor move where
//! it starts. `Forwarded` is parsed here, not by the `rfc7239` crate used
//! until 2026-12-03: that crate split values on every `,` and `;`, inside
//! quoted strings too, so a proxy's own element such as
//! `for=203.0.113.5;host="x,for=192.0.2.1"` (a client's `Host` header,
//! quoted as RFC 7239 asks) named 192.0.2.1 as the client; and a value
//! read as text (`HeaderValue::to_str`) became unreadable as a whole from
//! one byte that is not ASCII, making every client's address unknown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ::axum::http::HeaderMap;
use ::axum::http::header::FORWARDED;

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

/// Longest `X-Forwarded-For` entry read (`[` + an IPv6 address + `]:` +
/// a port is at most 53 bytes); a longer one is no address.
const MAX_XFF_ENTRY: usize = 64;

/// Most parameters in one `Forwarded` element (RFC 7239 defines four);
/// an element with more is no address. It bounds the check for repeated
/// names; an element's length is bounded by the header's only, since a
/// proxy quotes the client's own `Host` into it (`host="..."`), and a
/// limit on it would let a client make its address unknown.
const MAX_PARAMETERS: usize = 16;

/// `X-Forwarded-For` entries, right to left: `1.2.3.4`, `::1`, `1.2.3.4:80`,
/// `[::1]:80`. Split on the raw bytes: an entry that is not ASCII is no
/// address, and only itself.
fn x_forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','))
        .map(|entry| {
            let entry = entry.trim_ascii();
            if entry.len() > MAX_XFF_ENTRY {
                return None;
            }
            let entry = std::str::from_utf8(entry).ok()?;
            entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
                .ok()
        })
}

/// `Forwarded` elements' `for=` nodes, right to left ([`elements_rev`],
/// [`for_node`]).
fn forwarded(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(FORWARDED)
        .iter()
        .rev()
        .flat_map(|value| elements_rev(value.as_bytes()))
        .map(for_node)
}

/// The elements of one `Forwarded` value, right to left: split at each `,`
/// outside a quoted string. Read from the right, a quoted string is
/// entered at a `"` and left at a `"` not escaped (not preceded by an odd
/// number of backslashes), which is exact for the well-formed elements a proxy
/// writes, whatever a client put to their left (an unbalanced quote there
/// only spoils the elements from it leftwards).
fn elements_rev(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut quoted = false;
        for i in (0..text.len()).rev() {
            match text[i] {
                b'"' => {
                    let escaped = quoted
                        && text[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1;
                    if !escaped {
                        quoted = !quoted;
                    }
                }
                b',' if !quoted => {
                    rest = Some(&text[..i]);
                    return Some(&text[i + 1..]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

/// Whether `b` may be in an RFC 9110 quoted string (`qdtext`, or the
/// second byte of a `quoted-pair`): tab, space, visible ASCII, `obs-text`.
fn in_quoted_string(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80
}

/// Whether `b` may be in an RFC 9110 token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The address in one element's `for=` parameter. `None` when it has none
/// (no `for`, `unknown`, an obfuscated `_name`) or when the element does
/// not follow RFC 7239 §4: a parameter that is no `token=value`, a value
/// that is neither a token nor a quoted string, a parameter given twice,
/// more than [`MAX_PARAMETERS`]. Quoted strings may hold any byte but
/// controls other than tab (RFC 9110 §5.6.4's `obs-text` included: a
/// client's `Host` quoted by its proxy is read past, whatever it holds).
fn for_node(element: &[u8]) -> Option<IpAddr> {
    let element = element.trim_ascii();
    // The `for` value, unquoted (a node is at most 53 bytes; a longer
    // one is none).
    let mut node: Option<([u8; 64], usize)> = None;
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    loop {
        while i < element.len() && matches!(element[i], b' ' | b'\t') {
            i += 1;
        }
        if i == element.len() {
            break;
        }
        if element[i] == b';' {
            // An empty pair (`*( ";" [ forwarded-pair ] )`).
            i += 1;
            continue;
        }
        let start = i;
        while i < element.len() && is_tchar(element[i]) {
            i += 1;
        }
        let name = &element[start..i];
        if name.is_empty() || element.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        if seen.len() == MAX_PARAMETERS || seen.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return None;
        }
        seen.push(name);
        let is_for = name.eq_ignore_ascii_case(b"for");
        let mut value = [0u8; 64];
        let mut len = 0;
        let mut keep = |b: u8| {
            if is_for {
                *value.get_mut(len)? = b;
                len += 1;
            }
            Some(())
        };
        if element.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match *element.get(i)? {
                    b'"' => break,
                    b'\\' => {
                        i += 1;
                        let b = *element.get(i)?;
                        if !in_quoted_string(b) {
                            return None;
                        }
                        keep(b)?;
                    }
                    b if in_quoted_string(b) => keep(b)?,
                    _ => return None,
                }
                i += 1;
            }
            i += 1;
        } else {
            let start = i;
            while i < element.len() && is_tchar(element[i]) {
                keep(element[i])?;
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        if is_for {
            node = Some((value, len));
        }
        while i < element.len() && matches!(element[i], b' ' | b'\t') {
            i += 1;
        }
        match element.get(i) {
            None => break,
            Some(b';') => i += 1,
            Some(_) => return None,
        }
    }
    let (value, len) = node?;
    node_ip(&value[..len])
}

/// The address of an RFC 7239 §6 node: `1.2.3.4`, `[2001:db8::1]`, either
/// with `:port` or an obfuscated `:_port`; `unknown` and `_names` are none.
fn node_ip(node: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(node).ok()?;
    let (ip, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?), after)
    } else {
        let (v4, port) = text.split_at(text.find(':').unwrap_or(text.len()));
        (IpAddr::V4(v4.parse::<Ipv4Addr>().ok()?), port)
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(obfuscated) if obfuscated.starts_with('_') => {
            obfuscated[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && obfuscated.len() > 1
        }
        Some(digits) => {
            (1..=5).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        }
    };
    port_ok.then_some(ip)
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

    /// The client seen from a trusted peer, for raw header bytes.
    fn seen_bytes(name: &str, value: &[u8]) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        headers.append(
            ::axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
        client_ip(ip("127.0.0.1"), &headers, ProxyHeaders::Both, |a| {
            a.is_loopback()
        })
    }

    #[test]
    fn bytes_a_client_puts_left_of_its_proxys_entry_change_nothing() {
        let client = Some(ip("203.0.113.5"));
        let cases: [(&str, &[u8], Option<IpAddr>); 10] = [
            // Not ASCII: once the whole value was unreadable.
            ("x-forwarded-for", b"\xff, 203.0.113.5", client),
            ("x-forwarded-for", b"1.1.1.1\x80,203.0.113.5", client),
            ("forwarded", b"for=\"\x80\", for=203.0.113.5", client),
            // An unbalanced quote, a stray backslash, a broken element.
            ("forwarded", b"for=\"abc, for=203.0.113.5", client),
            ("forwarded", b"for=\"x\\, for=203.0.113.5", client),
            ("forwarded", b"for=\", for=\"203.0.113.5\"", client),
            ("forwarded", b";;=;, for=203.0.113.5", client),
            // The client's entry itself not ASCII: no address.
            ("x-forwarded-for", b"203.0.113.5\xff", None),
            ("forwarded", b"for=\"203.0.113.5\xff\"", None),
            // A client's Host quoted by its proxy, whatever it holds.
            (
                "forwarded",
                b"for=203.0.113.5;host=\"ex\xffample.org\"",
                client,
            ),
        ];
        for (name, value, expected) in cases {
            assert_eq!(seen_bytes(name, value), expected, "{name}: {value:?}");
        }
    }

    #[test]
    fn commas_and_semicolons_in_quoted_strings_belong_to_their_element() {
        let f = |v: &str| seen(&[("forwarded", v)]);
        let client = Some(ip("203.0.113.5"));
        // A proxy quoting a client's Host header, as RFC 7239 asks: the
        // `for=` inside the quotes is the host's text, not an element.
        assert_eq!(f("for=203.0.113.5;host=\"x,for=192.0.2.1\""), client);
        assert_eq!(f("for=203.0.113.5;host=\"a;for=192.0.2.1\""), client);
        assert_eq!(f("host=\"x,for=192.0.2.1\";for=203.0.113.5"), client);
        assert_eq!(f("for=203.0.113.5;host=\"a\\\",for=192.0.2.1\""), client);
        // `"a\\"` in the header is `a` and an escaped backslash: the quote
        // ends the string, and the proxy's element is the one after the comma.
        assert_eq!(
            f("for=203.0.113.5;host=\"a\\\\\", for=192.0.2.1"),
            Some(ip("192.0.2.1"))
        );
        // A parameter twice is no element (RFC 7239 §4).
        assert_eq!(f("for=203.0.113.5;for=192.0.2.1"), None);
        assert_eq!(f("for=203.0.113.5;FOR=192.0.2.1"), None);
        // Obfuscated ports are ports; a node longer than any address is none.
        assert_eq!(f("for=\"203.0.113.5:_p1\""), client);
        assert_eq!(f("for=\"[2001:db8::1]:_p-1\""), Some(ip("2001:db8::1")));
        assert_eq!(f("for=\"203.0.113.5:_\""), None);
        assert_eq!(f("for=\"203.0.113.5:\""), None);
        assert_eq!(f("for=\"[2001:db8::1]x\""), None);
        let long_host = format!("for=203.0.113.5;host=\"{}.example.org\"", "a".repeat(600));
        assert_eq!(f(&long_host), client);
        let params = |n: usize| (0..n).map(|k| format!(";p{k}=1")).collect::<String>();
        let most = format!("for=203.0.113.5{}", params(MAX_PARAMETERS - 1));
        assert_eq!(f(&most), client);
        let more = format!("for=203.0.113.5{}", params(MAX_PARAMETERS));
        assert_eq!(f(&more), None, "more parameters than RFC 7239 has");
        let long_node = format!("for=\"203.0.113.5{}\"", " ".repeat(80));
        assert_eq!(f(&long_node), None);
    }

    proptest::proptest! {
        /// Whatever bytes a client sends, a proxy that appends its own
        /// entry (on the same line) names the client, and nothing panics.
        #[test]
        fn no_client_prefix_hides_or_changes_the_proxys_entry(
            prefix in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"\",;=\\[]:_ f1.-".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..80,
            ),
        ) {
            let client = Some(ip("203.0.113.5"));
            // Header values hold no control bytes but tab.
            let prefix: Vec<u8> = prefix
                .into_iter()
                .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                .collect();
            for (name, entry) in [
                ("x-forwarded-for", &b", 203.0.113.5"[..]),
                ("forwarded", &b", for=203.0.113.5"[..]),
                ("forwarded", &b",for=\"203.0.113.5:8080\";host=\"h,x;for=1.1.1.1\""[..]),
            ] {
                let value = [&prefix[..], entry].concat();
                proptest::prop_assert_eq!(seen_bytes(name, &value), client);
            }
            // The prefix alone: an address or none, never a panic.
            if !prefix.is_empty() {
                let _ = seen_bytes("forwarded", &prefix);
                let _ = seen_bytes("x-forwarded-for", &prefix);
            }
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
