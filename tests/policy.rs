//! Policy pieces on their own: permissions, resource patterns, expiry, IP allowlists.

mod common;

use keyward::*;
use keyward::{
    hash::Argon2Hasher, hash::HashError, hash::Pepper, hash::SecretHasher, ids::InvalidValue,
    policy::ExpiryChoice, policy::ExpiryPolicy, policy::IpAllowlist, policy::PermissionGrant,
    policy::PolicyError, policy::ResourceRule, policy::ResourceScope,
};

#[test]
fn implications_are_transitive_and_all_means_every_grantable_permission() {
    let registry = PermissionRegistry::builder()
        .permission_implying("admin", &["write"])
        .permission_implying("write", &["read"])
        .permission("read")
        .permission("other")
        .session_only("delete")
        .build()
        .unwrap();
    let p = |n| registry.get(n).unwrap();
    let admin = registry.resolve(&PermissionGrant::only(["admin"])).unwrap();
    assert!(admin.contains(p("write")) && admin.contains(p("read")));
    assert!(!admin.contains(p("other")));
    let read = registry.resolve(&PermissionGrant::only(["read"])).unwrap();
    assert!(!read.contains(p("write")));
    let all = registry.resolve(&PermissionGrant::All).unwrap();
    for n in ["admin", "write", "read", "other"] {
        assert!(all.contains(p(n)), "{n}");
    }
    assert!(
        !all.contains(p("delete")),
        "all never includes session-only operations"
    );
    assert_eq!(registry.names(read), vec!["read"]);
}

#[test]
fn registry_errors_name_the_permission() {
    let dup = PermissionRegistry::builder()
        .permission("a")
        .permission("a")
        .build();
    assert_eq!(
        dup.unwrap_err(),
        PolicyError::DuplicatePermission { name: "a".into() }
    );
    let unknown = PermissionRegistry::builder()
        .permission_implying("a", &["b"])
        .build();
    assert_eq!(
        unknown.unwrap_err(),
        PolicyError::UnknownPermission { name: "b".into() }
    );
    let implies_session = PermissionRegistry::builder()
        .permission_implying("a", &["s"])
        .session_only("s")
        .build();
    assert_eq!(
        implies_session.unwrap_err(),
        PolicyError::ImpliesSessionOnly {
            name: "a".into(),
            implied: "s".into()
        }
    );
    let bad = PermissionRegistry::builder()
        .permission("Package Push")
        .build();
    assert!(matches!(
        bad.unwrap_err(),
        PolicyError::Invalid(InvalidValue::BadCharacter { ch: 'P', .. })
    ));
    let mut many = PermissionRegistry::builder();
    for i in 0..=keyward::PermissionRegistry::MAX_PERMISSIONS {
        many = many.permission(&format!("p{i}"));
    }
    assert_eq!(
        many.build().unwrap_err(),
        PolicyError::TooManyPermissions {
            max: keyward::PermissionRegistry::MAX_PERMISSIONS
        }
    );
}

#[test]
fn session_only_and_unknown_permissions_cannot_be_granted() {
    let registry = common::registry();
    assert_eq!(
        registry
            .resolve(&PermissionGrant::only(["package:delete"]))
            .unwrap_err(),
        PolicyError::SessionOnlyPermission {
            name: "package:delete".into()
        }
    );
    assert_eq!(
        registry
            .resolve(&PermissionGrant::only(["package:nuke"]))
            .unwrap_err(),
        PolicyError::UnknownPermission {
            name: "package:nuke".into()
        }
    );
    assert_eq!(
        registry
            .resolve(&PermissionGrant::Only(Default::default()))
            .unwrap_err(),
        PolicyError::NoPermissions
    );
    // A stored grant naming a permission the registry dropped grants nothing for it.
    let stored =
        registry.resolve_stored(&PermissionGrant::only(["package:nuke", "package:unlist"]));
    assert_eq!(registry.names(stored), vec!["package:unlist"]);
}

#[test]
fn globs_are_case_insensitive_and_cover_future_names() {
    let rule = ResourceRule::default();
    let scope = rule
        .compile(&ResourceScope::only([
            "AzureRM.DataFactory*",
            "Contoso.Exact",
            "Tool?",
        ]))
        .unwrap();
    for yes in [
        "AzureRM.DataFactory",
        "AzureRm.DataFactoryV2.Netcore",
        "azurerm.datafactory.brand.new.package",
        "contoso.EXACT",
        "Tool1",
    ] {
        assert!(scope.matches(yes), "{yes}");
    }
    for no in [
        "AzureRM.Profile",
        "Contoso.Exact2",
        "XAzureRM.DataFactory",
        "Tool12",
        "Tool",
    ] {
        assert!(!scope.matches(no), "{no}");
    }
    assert!(
        rule.compile(&ResourceScope::All)
            .unwrap()
            .matches("anything")
    );
}

#[test]
fn case_sensitive_matching_is_configurable() {
    let rule = ResourceRule::default().case_insensitive(false);
    let scope = rule.compile(&ResourceScope::only(["AzureRM.*"])).unwrap();
    assert!(scope.matches("AzureRM.Profile"));
    assert!(!scope.matches("azurerm.Profile"));
}

#[test]
fn bad_patterns_get_errors_that_name_them() {
    let rule = ResourceRule::default().max_entries(3);
    let cases: Vec<(ResourceScope, PolicyError)> = vec![
        (
            ResourceScope::only(["ok", ""]),
            PolicyError::EmptyPattern { index: 1 },
        ),
        (
            ResourceScope::only(["a".repeat(129)]),
            PolicyError::PatternTooLong {
                pattern: "a".repeat(128),
                len: 129,
                max: 128,
            },
        ),
        (
            ResourceScope::only(["pkg/evil*"]),
            PolicyError::PatternBadCharacter {
                pattern: "pkg/evil*".into(),
                ch: '/',
            },
        ),
        (
            ResourceScope::only(["pkg[abc]"]),
            PolicyError::PatternBadCharacter {
                pattern: "pkg[abc]".into(),
                ch: '[',
            },
        ),
        (
            ResourceScope::only(["{a,b}"]),
            PolicyError::PatternBadCharacter {
                pattern: "{a,b}".into(),
                ch: '{',
            },
        ),
        (ResourceScope::Only(vec![]), PolicyError::EmptySelection),
        (
            ResourceScope::only(["a", "b", "c", "d"]),
            PolicyError::TooManyResources { count: 4, max: 3 },
        ),
    ];
    for (scope, expected) in cases {
        assert_eq!(rule.compile(&scope).unwrap_err(), expected);
    }
    assert_eq!(
        ResourceRule::default().extra_chars(".-*").unwrap_err(),
        PolicyError::GlobCharInRule { ch: '*' }
    );
}

#[test]
fn expiry_policies_from_the_reference_products() {
    // "90 days / 1 year / never"
    let p = ExpiryPolicy::choices(&[90, 365], true, ExpiryChoice::Days(90)).unwrap();
    assert_eq!(p.check(None).unwrap(), ExpiryChoice::Days(90));
    assert_eq!(
        p.check(Some(ExpiryChoice::Days(365))).unwrap(),
        ExpiryChoice::Days(365)
    );
    assert_eq!(
        p.check(Some(ExpiryChoice::Never)).unwrap(),
        ExpiryChoice::Never
    );
    assert!(matches!(
        p.check(Some(ExpiryChoice::Days(180))),
        Err(PolicyError::ExpiryNotAllowed { days: 180, .. })
    ));
    // "1/90/180/270/365 days, default 365, no never"
    let g = ExpiryPolicy::default();
    assert_eq!(g.check(None).unwrap(), ExpiryChoice::Days(365));
    assert_eq!(
        g.check(Some(ExpiryChoice::Never)).unwrap_err(),
        PolicyError::NeverNotAllowed
    );
    for d in [1, 90, 180, 270, 365] {
        assert_eq!(
            g.check(Some(ExpiryChoice::Days(d))).unwrap(),
            ExpiryChoice::Days(d)
        );
    }
    assert!(g.check(Some(ExpiryChoice::Days(0))).is_err());
    assert!(g.check(Some(ExpiryChoice::Days(366))).is_err());
    // A maximum.
    let m = ExpiryPolicy::up_to(30, ExpiryChoice::Days(7)).unwrap();
    assert!(m.check(Some(ExpiryChoice::Days(30))).is_ok());
    assert!(m.check(Some(ExpiryChoice::Days(31))).is_err());
    assert_eq!(
        m.check(Some(ExpiryChoice::Never)).unwrap_err(),
        PolicyError::NeverNotAllowed
    );
    // A maximum on days, with "never" still allowed.
    let n = ExpiryPolicy::unrestricted().with_max_days(30).unwrap();
    assert!(n.check(Some(ExpiryChoice::Days(31))).is_err());
    assert_eq!(
        n.check(Some(ExpiryChoice::Never)).unwrap(),
        ExpiryChoice::Never
    );
}

#[test]
fn inconsistent_expiry_policies_are_refused() {
    assert!(matches!(
        ExpiryPolicy::choices(&[90], false, ExpiryChoice::Never),
        Err(PolicyError::InvalidExpiryPolicy { .. })
    ));
    assert!(matches!(
        ExpiryPolicy::choices(&[90], false, ExpiryChoice::Days(30)),
        Err(PolicyError::InvalidExpiryPolicy { .. })
    ));
    assert!(matches!(
        ExpiryPolicy::choices(&[], false, ExpiryChoice::Days(1)),
        Err(PolicyError::InvalidExpiryPolicy { .. })
    ));
    assert!(matches!(
        ExpiryPolicy::choices(&[0, 5], false, ExpiryChoice::Days(5)),
        Err(PolicyError::InvalidExpiryPolicy { .. })
    ));
    assert!(matches!(
        ExpiryPolicy::choices(&[90, 365], false, ExpiryChoice::Days(90))
            .unwrap()
            .with_max_days(100),
        Err(PolicyError::InvalidExpiryPolicy { .. })
    ));
}

#[test]
fn expiry_arithmetic_crosses_month_ends_and_leap_days() {
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert_eq!(
        ExpiryChoice::Days(1).expires_at(at("2028-02-28T23:30:00Z")),
        Some(at("2028-02-29T23:30:00Z"))
    );
    assert_eq!(
        ExpiryChoice::Days(365).expires_at(at("2028-01-01T00:00:00Z")),
        Some(at("2028-12-31T00:00:00Z"))
    );
    assert_eq!(
        ExpiryChoice::Days(90).expires_at(at("2026-11-30T10:00:00Z")),
        Some(at("2027-02-28T10:00:00Z"))
    );
    assert_eq!(
        ExpiryChoice::Never.expires_at(at("2026-11-30T10:00:00Z")),
        None
    );
}

#[test]
fn ip_allowlists_handle_v4_v6_and_mapped_addresses() {
    let list =
        IpAllowlist::parse(&["203.0.113.0/24", "2001:db8:abcd::/48", "198.51.100.7"]).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(list.allows(ip("203.0.113.200")));
    assert!(!list.allows(ip("203.0.114.1")));
    assert!(
        list.allows(ip("::ffff:203.0.113.9")),
        "IPv4-mapped IPv6 matches its IPv4 range"
    );
    assert!(!list.allows(ip("::ffff:203.0.114.9")));
    assert!(list.allows(ip("2001:db8:abcd:12::1")));
    assert!(!list.allows(ip("2001:db8:abce::1")));
    assert!(list.allows(ip("198.51.100.7")));
    assert!(!list.allows(ip("198.51.100.8")));
    assert!(
        IpAllowlist::any().allows(ip("8.8.8.8")),
        "empty allows anywhere"
    );
    // Host bits are cleared, duplicates removed.
    let norm = IpAllowlist::parse(&["10.1.2.3/8", "10.0.0.0/8"]).unwrap();
    assert_eq!(norm.nets().len(), 1);
    assert_eq!(norm.nets()[0].to_string(), "10.0.0.0/8");
}

#[test]
fn bad_cidrs_are_named() {
    for bad in [
        "10.0.0.0/33",
        "300.1.1.1",
        "10.0.0.0/",
        "fe80::/129",
        "",
        "example.com",
        "10.0.0.0/8/8",
    ] {
        assert_eq!(
            IpAllowlist::parse(&["192.0.2.0/24", bad]).unwrap_err(),
            PolicyError::InvalidCidr { input: bad.into() },
            "{bad}"
        );
    }
    let many: Vec<String> = (0..=keyward::policy::IpAllowlist::MAX_RANGES)
        .map(|i| format!("10.0.{i}.0/24"))
        .collect();
    assert_eq!(
        IpAllowlist::parse(&many).unwrap_err(),
        PolicyError::TooManyCidrs {
            count: keyward::policy::IpAllowlist::MAX_RANGES + 1,
            max: keyward::policy::IpAllowlist::MAX_RANGES
        }
    );
}

#[test]
fn narrowing_an_allowlist_is_within_it() {
    let wide = IpAllowlist::parse(&["10.0.0.0/8"]).unwrap();
    let narrow = IpAllowlist::parse(&["10.1.0.0/16"]).unwrap();
    assert!(narrow.is_within(&wide));
    assert!(!wide.is_within(&narrow));
    assert!(narrow.is_within(&IpAllowlist::any()));
    assert!(!IpAllowlist::any().is_within(&narrow));
}

#[test]
fn hashing_with_pepper_and_rehash() {
    let params = Argon2Params::insecure_for_tests();
    let old = Argon2Hasher::new(params).with_pepper(Pepper::new("p1", b"one".to_vec()).unwrap());
    let phc = old.hash(b"secret").unwrap();
    assert!(phc.contains("keyid="));
    assert!(old.verify(b"secret", &phc).unwrap());
    assert!(!old.needs_rehash(&phc));

    // Rotated pepper: old hashes still verify and ask to be rehashed.
    let new = Argon2Hasher::new(params)
        .with_pepper(Pepper::new("p2", b"two".to_vec()).unwrap())
        .with_old_pepper(Pepper::new("p1", b"one".to_vec()).unwrap());
    assert!(new.verify(b"secret", &phc).unwrap());
    assert!(new.needs_rehash(&phc));
    assert!(!new.needs_rehash(&new.hash(b"secret").unwrap()));

    // Without the pepper the hash cannot be checked at all.
    let none = Argon2Hasher::new(params);
    assert_eq!(
        none.verify(b"secret", &phc).unwrap_err(),
        HashError::UnknownPepper("p1".into())
    );
    // A wrong pepper with the same id fails the check.
    let wrong = Argon2Hasher::new(params).with_pepper(Pepper::new("p1", b"bad".to_vec()).unwrap());
    assert!(!wrong.verify(b"secret", &phc).unwrap());

    assert!(matches!(
        none.verify(b"x", "not a phc"),
        Err(HashError::Malformed(_))
    ));
    assert!(matches!(
        none.verify(
            b"x",
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
        ),
        Err(HashError::Malformed(_))
    ));
    assert_eq!(
        Pepper::new("toolongid", b"x".to_vec()).unwrap_err(),
        HashError::BadPepperId
    );
    assert_eq!(
        Pepper::new("", b"x".to_vec()).unwrap_err(),
        HashError::BadPepperId
    );
}

#[test]
fn default_argon2_parameters_are_owasp() {
    let p = Argon2Params::default();
    assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19_456, 2, 1));
    let hasher = Argon2Hasher::default();
    let phc = hasher.hash(b"s").unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(hasher.verify(b"s", &phc).unwrap());
    // A hash made with weaker parameters asks to be rehashed.
    let weak = Argon2Hasher::new(Argon2Params::insecure_for_tests())
        .hash(b"s")
        .unwrap();
    assert!(hasher.needs_rehash(&weak));
    assert!(!hasher.needs_rehash(&phc));
}

/// An IPv4 client gets the same answer in both of its forms (`a.b.c.d`
/// from an IPv4 socket, `::ffff:a.b.c.d` from a dual-stack one), also
/// against ranges written in IPv6 over the mapped space.
#[test]
fn ipv4_clients_match_ipv6_ranges_over_the_mapped_space() {
    let mapped = IpAllowlist::parse(&["::ffff:10.0.0.0/104"]).unwrap();
    let any_v6 = IpAllowlist::parse(&["::/0"]).unwrap();
    for (ip, allowed) in [
        ("10.1.2.3", true),
        ("::ffff:10.1.2.3", true),
        ("11.0.0.1", false),
        ("::ffff:11.0.0.1", false),
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        assert_eq!(
            mapped.allows(ip),
            allowed,
            "{ip} against ::ffff:10.0.0.0/104"
        );
        assert!(any_v6.allows(ip), "{ip} against ::/0");
    }
    // An IPv4-only list never matches a plain IPv6 client.
    let v4 = IpAllowlist::parse(&["0.0.0.0/0"]).unwrap();
    assert!(!v4.allows("2001:db8::1".parse().unwrap()));
}

#[test]
fn names_longer_than_the_rule_allows_are_refused_before_matching() {
    let rule = ResourceRule::default();
    assert!(rule.check_name(&"a".repeat(128)).is_ok());
    assert_eq!(
        rule.check_name(&"a".repeat(129)).unwrap_err(),
        PolicyError::PatternTooLong {
            pattern: "a".repeat(128),
            len: 129,
            max: 128
        }
    );
    // Counted in characters, as patterns are.
    let rule = ResourceRule::default().extra_chars(".-_é").unwrap();
    assert!(rule.check_name(&"é".repeat(128)).is_ok());
    assert!(rule.check_name(&"é".repeat(129)).is_err());
}

#[test]
fn a_compiled_scope_gives_back_its_patterns_as_granted() {
    let rule = ResourceRule::default().extra_chars(".-_/").unwrap();
    let entries = ["AzureRM.DataFactory*", "a/**/b", "**", "Tool?", "x***y"];
    let scope = ResourceScope::only(entries);
    let compiled = rule.compile(&scope).unwrap();
    assert!(compiled.patterns().eq(entries));
    assert_eq!(compiled.to_scope(), scope);
    let all = rule.compile(&ResourceScope::All).unwrap();
    assert_eq!(all.patterns().count(), 0);
    assert_eq!(all.to_scope(), ResourceScope::All);
}
