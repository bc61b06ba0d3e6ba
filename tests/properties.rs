//! Property tests: the token format, resource matching, IP allowlists, edit
//! rules and expiry arithmetic against simple reference models.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Days, Utc};
use keyward::*;
use keyward::{
    policy::EditPolicy, policy::ExpiryChoice, policy::IpAllowlist, policy::PermissionGrant,
    policy::PolicyError, policy::ResourceRule, policy::ResourceScope, token::TokenError,
    verify::VerifierConfig,
};
use proptest::prelude::*;

const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tokens_round_trip(test_env in any::<bool>()) {
        let format = common::format();
        let env = Environment::new(if test_env { "test" } else { "live" }).unwrap();
        let id = KeyId::generate();
        let token = format.generate(&env, &id);
        let parsed = format.parse(token.expose_secret()).unwrap();
        prop_assert_eq!(parsed.environment(), env.as_str());
        prop_assert_eq!(parsed.key_id(), id.as_str());
    }

    #[test]
    fn every_single_character_change_is_refused(pos in 0usize..200, c in 0usize..TOKEN_ALPHABET.len()) {
        let format = common::format();
        let token = format.generate(&Environment::new("live").unwrap(), &KeyId::generate());
        let mut bytes = token.expose_secret().as_bytes().to_vec();
        let pos = pos % bytes.len();
        prop_assume!(bytes[pos] != TOKEN_ALPHABET[c]);
        bytes[pos] = TOKEN_ALPHABET[c];
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(format.parse(&changed).is_err());
    }

    #[test]
    fn parsing_arbitrary_input_never_panics(input in ".{0,200}") {
        let _ = common::format().parse(&input);
    }
}

/// Reference glob matcher: anchored, `*` = any run of characters, `?` = one
/// character, ASCII case-insensitive.
fn reference_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            reference_match(&pattern[1..], name)
                || (!name.is_empty() && reference_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => reference_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p.eq_ignore_ascii_case(n) => {
            reference_match(&pattern[1..], &name[1..])
        }
        _ => false,
    }
}

fn mask4(p: u8) -> u32 {
    if p == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(p))
    }
}

fn mask6(p: u8) -> u128 {
    if p == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(p))
    }
}

/// A client address for an IPv4 range `base/prefix`: `mode` 0 keeps the
/// random `ip`; 1 puts its host bits inside the range; 2 and 3 are the
/// range's first and last address; 4 and 5 the addresses just below and
/// just above it (wrapping).
fn client_for_range(ip: u32, base: u32, prefix: u8, mode: u8) -> u32 {
    let net = base & mask4(prefix);
    let last = net | !mask4(prefix);
    match mode {
        1 => net | (ip & !mask4(prefix)),
        2 => net,
        3 => last,
        4 => net.wrapping_sub(1),
        5 => last.wrapping_add(1),
        _ => ip,
    }
}

/// The IPv4-mapped IPv6 form `::ffff:a.b.c.d`, as a number.
fn mapped(ip: u32) -> u128 {
    (0xffff_u128 << 32) | u128::from(ip)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn resource_matching_agrees_with_the_reference(
        patterns in prop::collection::vec("[aAbB.*?]{1,8}", 1..4),
        name in "[aAbB.]{1,10}",
    ) {
        let scope = ResourceRule::default().compile(&ResourceScope::Only(patterns.clone())).unwrap();
        let expected = patterns.iter().any(|p| reference_match(p.as_bytes(), name.as_bytes()));
        prop_assert_eq!(scope.matches(&name), expected, "patterns {:?} name {:?}", patterns, name);
    }

    /// Client addresses are random a sixth of the time, else inside, at
    /// the edges of, or just outside one of the generated ranges.
    #[test]
    fn ipv4_allowlist_agrees_with_naive_masking(
        nets in prop::collection::vec((any::<u32>(), 0u8..=32), 1..5),
        ip in any::<u32>(),
        target in any::<prop::sample::Index>(),
        mode in 0u8..6,
    ) {
        let ranges: Vec<String> = nets.iter().map(|(a, p)| format!("{}/{}", Ipv4Addr::from(*a), p)).collect();
        let list = IpAllowlist::parse(&ranges).unwrap();
        let (base, prefix) = nets[target.index(nets.len())];
        let ip = client_for_range(ip, base, prefix, mode);
        let expected = nets.iter().any(|(a, p)| ip & mask4(*p) == a & mask4(*p));
        if (1..=3).contains(&mode) {
            prop_assert!(expected, "the generator put {} in {:?}", Ipv4Addr::from(ip), ranges);
        }
        let v4 = IpAddr::V4(Ipv4Addr::from(ip));
        let mapped = IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped());
        prop_assert_eq!(list.allows(v4), expected, "{} in {:?}", v4, ranges);
        prop_assert_eq!(list.allows(mapped), expected, "IPv4-mapped form {} in {:?}", mapped, ranges);
    }

    #[test]
    fn expiry_adds_whole_calendar_days(secs in 946_684_800i64..4_102_444_800, days in 1u32..=3660) {
        let created = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
        let expires = ExpiryChoice::Days(days).expires_at(created).unwrap();
        let reference = created.checked_add_days(Days::new(u64::from(days))).unwrap();
        prop_assert_eq!(expires, reference);
        prop_assert_eq!(expires.time(), created.time());
    }
}

const PERMS: [&str; 5] = [
    "package:push-new",
    "package:push",
    "package:unlist",
    "package:metadata",
    "analytics:read",
];

/// Reference closure of the test registry: push implies push-new.
fn closure(names: &[&str]) -> std::collections::BTreeSet<&'static str> {
    let mut out = std::collections::BTreeSet::new();
    for n in names {
        let p = PERMS.iter().find(|p| *p == n).unwrap();
        out.insert(*p);
        if *p == "package:push" {
            out.insert("package:push-new");
        }
    }
    out
}

fn subset(mask: u8) -> Vec<&'static str> {
    PERMS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, p)| *p)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn permission_edits_narrow_always_and_widen_only_where_allowed(
        old in 1u8..32, new in 1u8..32, permissive in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let edits = if permissive { EditPolicy::permissive() } else { EditPolicy::default() };
            let f = common::fixture_with(
                std::sync::Arc::new(MemoryStore::new()),
                common::policy().with_edits(edits),
                VerifierConfig::default(),
            );
            let (old, new) = (subset(old), subset(new));
            let created = f
                .create(NewKey::new(common::OWNER, "live", "k").permissions(PermissionGrant::only(old.clone())))
                .await;
            let result = f
                .manager
                .edit(&keyward::Actor::system("tests"), &created.key.id, KeyEdit { permissions: Some(PermissionGrant::only(new.clone())), ..KeyEdit::default() })
                .await;
            let narrowing = closure(&new).is_subset(&closure(&old));
            prop_assert_eq!(result.is_ok(), narrowing || permissive, "old {:?} new {:?}", old, new);
            if let Err(e) = result {
                let widening = matches!(e, KeywardError::Policy(PolicyError::PermissionWidening { .. }));
                prop_assert!(widening, "unexpected error {:?}", e);
                let stored = f.manager.get(&keyward::Actor::system("tests"), &created.key.id).await.unwrap();
                prop_assert_eq!(stored.permissions, PermissionGrant::only(old));
            }
            Ok(())
        })?;
    }
}

/// Every single-character change of a token, at every position, to every
/// character of the token alphabet and a few outside it, is refused; a
/// change inside the body that keeps the shape (alphanumeric for
/// alphanumeric) is caught by the checksum itself.
#[test]
fn every_single_character_change_of_every_position_is_refused() {
    let format = common::format();
    let mut alphabet: Vec<char> = TOKEN_ALPHABET.iter().map(|b| char::from(*b)).collect();
    alphabet.extend(['-', ' ', '.', 'é', '\0']);
    for env in ["live", "test"] {
        let env = Environment::new(env).unwrap();
        for _ in 0..8 {
            let token = format.generate(&env, &KeyId::generate());
            let original: Vec<char> = token.expose_secret().chars().collect();
            let body_start = original.len() - keyward::TokenFormat::BODY_LEN;
            assert!(format.parse(token.expose_secret()).is_ok());
            for pos in 0..original.len() {
                for &c in &alphabet {
                    if c == original[pos] {
                        continue;
                    }
                    let mut changed = original.clone();
                    changed[pos] = c;
                    let changed: String = changed.into_iter().collect();
                    let result = format.parse(&changed);
                    assert!(result.is_err(), "{pos} -> {c:?} accepted");
                    if pos >= body_start && c.is_ascii_alphanumeric() {
                        assert_eq!(
                            result.unwrap_err(),
                            TokenError::BadChecksum,
                            "{pos} -> {c:?}"
                        );
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A token split into its id and secret (the Basic pair) rebuilds into
    /// the same token.
    #[test]
    fn tokens_round_trip_through_their_key_pair(test_env in any::<bool>()) {
        let format = common::format();
        let env = Environment::new(if test_env { "test" } else { "live" }).unwrap();
        let token = format.generate(&env, &KeyId::generate());
        let parsed = format.parse(token.expose_secret()).unwrap();
        let rebuilt = format.from_pair(&env, parsed.key_id(), parsed.expose_secret()).unwrap();
        prop_assert_eq!(rebuilt.expose_secret(), token.expose_secret());
    }

    /// IPv6 ranges against naive 128-bit masking; an IPv4-mapped address is
    /// checked against IPv6 ranges as itself.
    #[test]
    fn ipv6_allowlist_agrees_with_naive_masking(
        nets in prop::collection::vec((any::<u128>(), 0u8..=128), 1..5),
        ip in any::<u128>(),
        near in any::<bool>(),
    ) {
        let mask = |p: u8| if p == 0 { 0 } else { u128::MAX << (128 - u32::from(p)) };
        // Half the time, an address inside the first range.
        let ip = if near { (nets[0].0 & mask(nets[0].1)) | (ip & !mask(nets[0].1)) } else { ip };
        let ranges: Vec<String> = nets
            .iter()
            .map(|(a, p)| format!("{}/{}", std::net::Ipv6Addr::from(*a), p))
            .collect();
        let list = IpAllowlist::parse(&ranges).unwrap();
        let addr = std::net::Ipv6Addr::from(ip);
        let v6_match = nets.iter().any(|(a, p)| ip & mask(*p) == a & mask(*p));
        // A mapped address is also its IPv4 address, which no IPv6 range holds.
        prop_assert_eq!(list.allows(IpAddr::V6(addr)), v6_match, "{:?} in {:?}", addr, ranges);
        if near {
            prop_assert!(list.allows(IpAddr::V6(addr)));
        }
    }

    /// Mixed IPv4 and IPv6 lists: an IPv4 client, seen as IPv4 or as an
    /// IPv4-mapped IPv6 address, is allowed exactly when an IPv4 range holds
    /// it or an IPv6 range holds its mapped form: the same client gets the
    /// same answer whichever way its socket reports it. Half the IPv6 ranges
    /// are written over the mapped space (`::ffff:a.b.c.d/p`), and most
    /// clients are drawn inside, at the edges of or just outside a range.
    #[test]
    fn mixed_allowlists_agree_with_the_naive_reference(
        v4 in prop::collection::vec((any::<u32>(), 0u8..=32), 0..3),
        v6 in prop::collection::vec((any::<u128>(), 0u8..=128, any::<bool>()), 0..3),
        ip in any::<u32>(),
        target in any::<prop::sample::Index>(),
        mode in 0u8..6,
    ) {
        prop_assume!(!v4.is_empty() || !v6.is_empty());
        let v6: Vec<(u128, u8)> = v6
            .iter()
            .map(|&(a, p, over_mapped)| if over_mapped { (mapped(a as u32), p) } else { (a, p) })
            .collect();
        let mut ranges: Vec<String> = v4.iter().map(|(a, p)| format!("{}/{}", Ipv4Addr::from(*a), p)).collect();
        ranges.extend(v6.iter().map(|(a, p)| format!("{}/{}", std::net::Ipv6Addr::from(*a), p)));
        let list = IpAllowlist::parse(&ranges).unwrap();

        // The IPv4 view of every range that holds mapped addresses.
        let mut targets: Vec<(u32, u8)> = v4.clone();
        for &(a, p) in &v6 {
            if p >= 96 && a & mask6(96) == mapped(0) {
                targets.push((a as u32, p - 96));
            } else if mapped(0) & mask6(p) == a & mask6(p) {
                targets.push((0, 0)); // holds the whole mapped space
            }
        }
        let ip = match targets.len() {
            0 => ip,
            n => {
                let (base, prefix) = targets[target.index(n)];
                client_for_range(ip, base, prefix, mode)
            }
        };

        let in_v4 = v4.iter().any(|(a, p)| ip & mask4(*p) == a & mask4(*p));
        let in_v6 = v6.iter().any(|(a, p)| mapped(ip) & mask6(*p) == a & mask6(*p));
        if !targets.is_empty() && (1..=3).contains(&mode) {
            prop_assert!(in_v4 || in_v6, "the generator put {} in {:?}", Ipv4Addr::from(ip), ranges);
        }
        let expected = in_v4 || in_v6;
        let as_v4 = IpAddr::V4(Ipv4Addr::from(ip));
        let as_mapped = IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped());
        prop_assert_eq!(u128::from(Ipv4Addr::from(ip).to_ipv6_mapped()), mapped(ip));
        prop_assert_eq!(
            list.allows(as_mapped),
            expected,
            "mapped form {} in {:?} (in an IPv4 range: {}, in an IPv6 range: {})",
            as_mapped, ranges, in_v4, in_v6
        );
        prop_assert_eq!(
            list.allows(as_v4),
            expected,
            "IPv4 form {} in {:?} (in an IPv4 range: {}, in an IPv6 range: {})",
            as_v4, ranges, in_v4, in_v6
        );
    }
}

/// Reference calendar (Howard Hinnant's days-from-civil), independent of
/// chrono: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - days_from_civil(y, m, 1)
}

fn utc(y: i64, m: i64, d: i64, secs: u32) -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.with_ymd_and_hms(
        y as i32,
        m as u32,
        d as u32,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
    )
    .unwrap()
}

#[test]
fn expiry_across_month_ends_and_leap_days() {
    let cases = [
        // (created y, m, d), days, (expires y, m, d)
        ((2027, 1, 31), 30, (2027, 3, 2)),
        ((2028, 1, 31), 30, (2028, 3, 1)),
        ((2027, 2, 28), 1, (2027, 3, 1)),
        ((2028, 2, 28), 1, (2028, 2, 29)),
        ((2028, 2, 29), 1, (2028, 3, 1)),
        ((2028, 2, 29), 365, (2029, 2, 28)),
        ((2028, 2, 29), 366, (2029, 3, 1)),
        ((2100, 2, 28), 1, (2100, 3, 1)),
        ((2000, 2, 28), 1, (2000, 2, 29)),
        ((2026, 12, 31), 1, (2027, 1, 1)),
        ((2026, 4, 30), 90, (2026, 7, 29)),
    ];
    for ((y, m, d), days, (ey, em, ed)) in cases {
        let created = utc(y, m, d, 13 * 3600 + 5);
        let expires = ExpiryChoice::Days(days).expires_at(created).unwrap();
        assert_eq!(
            expires,
            utc(ey, em, ed, 13 * 3600 + 5),
            "{y}-{m}-{d} + {days}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Keys created on the last days of a month (February of leap and
    /// common years included) expire on the day the reference calendar
    /// gives, at the same time of day.
    #[test]
    fn month_end_expiry_agrees_with_the_reference_calendar(
        y in 1970i64..2400,
        m in 1i64..=12,
        back in 0i64..3,
        secs in 0u32..86_400,
        days in 1u32..=1000,
    ) {
        let d = days_in_month(y, m) - back;
        let created = utc(y, m, d, secs);
        let expires = ExpiryChoice::Days(days).expires_at(created).unwrap();
        let (ey, em, ed) = civil_from_days(days_from_civil(y, m, d) + i64::from(days));
        prop_assert_eq!(expires, utc(ey, em, ed, secs));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Through the manager: a key expires exactly `days` after its creation:
    /// it passes one second before and is refused as expired at that instant.
    #[test]
    fn keys_expire_at_the_computed_instant(
        y in 2026i64..2033, m in 1i64..=12, back in 0i64..2, choice in 0usize..3,
    ) {
        let days = [1u32, 90, 365][choice];
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = common::fixture();
            let d = days_in_month(y, m) - back;
            f.clock.set(utc(y, m, d, 23 * 3600 + 59 * 60));
            let key = f
                .create(NewKey::new(common::OWNER, "live", "k")
                    .permissions(PermissionGrant::only(["package:push"]))
                    .expiry(ExpiryChoice::Days(days)))
                .await;
            let (ey, em, ed) = civil_from_days(days_from_civil(y, m, d) + i64::from(days));
            let expected = utc(ey, em, ed, 23 * 3600 + 59 * 60);
            prop_assert_eq!(key.key.expires_at, Some(expected));
            f.clock.set(expected - chrono::TimeDelta::seconds(1));
            prop_assert!(f.manager.verify(key.token.expose_secret(), &f.req()).await.is_ok());
            f.clock.set(expected);
            let denial = f.manager.verify(key.token.expose_secret(), &f.req()).await.unwrap_err();
            prop_assert_eq!(denial.reason, DenialReason::Expired);
            Ok(())
        })?;
    }

    /// Expiry edits: an earlier (or equal) expiry is always allowed; a later
    /// one (or never) only where the edit policy allows extending.
    #[test]
    fn expiry_edits_narrow_always_and_extend_only_where_allowed(
        old in 0usize..4, new in 0usize..4, elapsed in 0i64..400, permissive in any::<bool>(),
    ) {
        let choices = [ExpiryChoice::Days(1), ExpiryChoice::Days(90), ExpiryChoice::Days(365), ExpiryChoice::Never];
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let edits = EditPolicy { extend_expiry: permissive, ..EditPolicy::default() };
            let f = common::fixture_with(
                std::sync::Arc::new(MemoryStore::new()),
                common::policy().with_edits(edits),
                VerifierConfig::default(),
            );
            let key = f
                .create(NewKey::new(common::OWNER, "live", "k")
                    .permissions(PermissionGrant::only(["package:push"]))
                    .expiry(choices[old]))
                .await;
            let old_expiry = key.key.expires_at;
            prop_assume!(old_expiry.is_none_or(|e| common::start() + chrono::TimeDelta::days(elapsed) < e));
            f.clock.advance(chrono::TimeDelta::days(elapsed));
            let now = common::start() + chrono::TimeDelta::days(elapsed);
            let new_expiry = choices[new].expires_at(now);
            let narrowing = match (new_expiry, old_expiry) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(n), Some(o)) => n <= o,
            };
            let result = f
                .manager
                .edit(&keyward::Actor::system("tests"), &key.key.id, KeyEdit { expiry: Some(choices[new]), ..KeyEdit::default() })
                .await;
            prop_assert_eq!(result.is_ok(), narrowing || permissive, "{:?} -> {:?}", old_expiry, new_expiry);
            let stored = f.manager.get(&keyward::Actor::system("tests"), &key.key.id).await.unwrap().expires_at;
            match result {
                Ok(_) => prop_assert_eq!(stored, new_expiry),
                Err(e) => {
                    prop_assert_eq!(e, KeywardError::Policy(PolicyError::ExpiryExtension));
                    prop_assert_eq!(stored, old_expiry);
                }
            }
            Ok(())
        })?;
    }

    /// IP allowlist edits: a list whose every range lies inside an old
    /// range is always allowed; anything wider (or emptying the list) only
    /// where the edit policy allows it. Checked against naive masking.
    #[test]
    fn ip_edits_narrow_always_and_widen_only_where_allowed(
        old in prop::collection::vec((any::<u8>(), 8u8..=16), 1..3),
        new in prop::collection::vec((any::<u8>(), 4u8..=24), 0..3),
        permissive in any::<bool>(),
    ) {
        // Ranges inside 10.0.0.0/8 so that old and new often overlap.
        let net = |(b, p): (u8, u8)| (0x0a00_0000u32 | (u32::from(b) << 16), p);
        let old: Vec<(u32, u8)> = old.into_iter().map(net).collect();
        let new: Vec<(u32, u8)> = new.into_iter().map(net).collect();
        let text = |v: &[(u32, u8)]| v.iter().map(|(a, p)| format!("{}/{}", Ipv4Addr::from(*a), p)).collect::<Vec<_>>();
        let mask = |p: u8| if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
        let inside = |(a, p): (u32, u8), (oa, op): (u32, u8)| p >= op && a & mask(op) == oa & mask(op);
        let within = !new.is_empty() && new.iter().all(|n| old.iter().any(|o| inside(*n, *o)));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let edits = EditPolicy { widen_ip_allowlist: permissive, ..EditPolicy::default() };
            let f = common::fixture_with(
                std::sync::Arc::new(MemoryStore::new()),
                common::policy().with_edits(edits),
                VerifierConfig::default(),
            );
            let key = f
                .create(NewKey::new(common::OWNER, "live", "k")
                    .permissions(PermissionGrant::only(["package:push"]))
                    .ip_allowlist(text(&old)))
                .await;
            let result = f
                .manager
                .edit(&keyward::Actor::system("tests"), &key.key.id, KeyEdit { ip_allowlist: Some(text(&new)), ..KeyEdit::default() })
                .await;
            prop_assert_eq!(result.is_ok(), within || permissive, "{:?} -> {:?}", text(&old), text(&new));
            if let Err(e) = result {
                prop_assert_eq!(e, KeywardError::Policy(PolicyError::IpWidening));
                let stored = f.manager.get(&keyward::Actor::system("tests"), &key.key.id).await.unwrap().ip_allowlist;
                prop_assert_eq!(stored, IpAllowlist::parse(&text(&old)).unwrap());
            }
            Ok(())
        })?;
    }
}
