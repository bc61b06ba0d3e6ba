//! The resource matcher against its oracle: a `globset` set built from the
//! same patterns exactly as keyward built it before it had its own matcher
//! (`case_insensitive` as the rule says, `literal_separator(false)`,
//! `backslash_escape(false)`). Patterns and names are generated over an
//! alphabet with mixed ASCII case, `.`, `/`, multibyte letters and letters
//! whose Unicode case folding differs from ASCII folding (`İ`, `ß`, `ſ`, the
//! Kelvin sign), so the property covers case folding, `*` across dots and
//! slashes, anchoring, `?` against multibyte characters and `**` forms.

use globset::{GlobBuilder, GlobSetBuilder};
use keyward::policy::{ResourceRule, ResourceScope};
use proptest::prelude::*;

/// Characters of names and literal parts of patterns.
const LETTERS: &[char] = &[
    'a', 'A', 'b', 'B', 'k', 'K', 's', 'S', 'i', 'I', '0', '.', '-', '_', '/', 'é', 'É', 'İ', 'ß',
    'ſ', '\u{212A}', '日',
];
/// Extra characters for the permissive rule: every non-alphanumeric letter above.
const EXTRA: &str = ".-_/éÉİßſ\u{212A}日";

fn oracle(patterns: &[String], case_insensitive: bool, name: &str) -> bool {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(
            GlobBuilder::new(p)
                .case_insensitive(case_insensitive)
                .literal_separator(false)
                .backslash_escape(false)
                .build()
                .unwrap(),
        );
    }
    builder.build().unwrap().is_match(name)
}

fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(LETTERS).prop_map(String::from),
        2 => Just("*".to_owned()),
        1 => Just("**".to_owned()),
        1 => Just("?".to_owned()),
        1 => Just("/**/".to_owned()),
        1 => Just("**/".to_owned()),
        1 => Just("/**".to_owned()),
    ];
    proptest::collection::vec(piece, 1..8).prop_map(|v| v.concat())
}

/// A name made from a pattern by filling its wildcards (often a hit), or a
/// random one.
fn name_for(patterns: Vec<String>) -> impl Strategy<Value = (Vec<String>, String)> {
    let n = patterns.len();
    (
        Just(patterns),
        0..n,
        proptest::collection::vec(proptest::sample::select(LETTERS), 0..4),
        any::<bool>(),
        proptest::collection::vec(proptest::sample::select(LETTERS), 0..10),
    )
        .prop_map(|(patterns, which, fill, derive, random)| {
            let name = if derive {
                let fill: String = fill.into_iter().collect();
                patterns[which]
                    .chars()
                    .map(|c| match c {
                        '*' => fill.clone(),
                        '?' => fill.chars().next().unwrap_or('x').to_string(),
                        c => c.to_string(),
                    })
                    .collect()
            } else {
                random.into_iter().collect()
            };
            (patterns, name)
        })
}

fn case_flip(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn matcher_agrees_with_globset(
        (patterns, name) in proptest::collection::vec(pattern(), 1..4).prop_flat_map(name_for),
        case_insensitive in any::<bool>(),
    ) {
        let rule = ResourceRule::default()
            .extra_chars(EXTRA)
            .unwrap()
            .case_insensitive(case_insensitive);
        let scope = rule.compile(&ResourceScope::Only(patterns.clone())).unwrap();
        for name in [name.clone(), case_flip(&name), name.to_uppercase(), name.to_lowercase()] {
            prop_assert_eq!(
                scope.matches(&name),
                oracle(&patterns, case_insensitive, &name),
                "patterns {:?} name {:?} case_insensitive {}",
                patterns,
                name,
                case_insensitive
            );
        }
    }

    #[test]
    fn matcher_agrees_with_globset_on_any_name(
        patterns in proptest::collection::vec("[a-zA-Z0-9._*?-]{1,12}", 1..6),
        name in "\\PC{0,16}",
    ) {
        let scope = ResourceRule::default()
            .compile(&ResourceScope::Only(patterns.clone()))
            .unwrap();
        prop_assert_eq!(scope.matches(&name), oracle(&patterns, true, &name));
    }
}

/// Names and patterns picked by hand: the edges the generated ones may miss.
#[test]
fn matcher_agrees_with_globset_on_edge_cases() {
    let rule = ResourceRule::default()
        .extra_chars(EXTRA)
        .unwrap()
        .max_len(300);
    let long = "a".repeat(128);
    let long_star = format!("{}*", "a?".repeat(149));
    let patterns: &[&str] = &[
        "*",
        "**",
        "***",
        "?",
        "??",
        "*a",
        "a*",
        "*a*",
        "a*a",
        "*.*",
        "a.*.b",
        "*.",
        "a*.",
        "**/..",
        "**/*.",
        "..",
        "**/",
        "**/a",
        "a/**",
        "a/**/b",
        "/**",
        "/**/",
        "**/**",
        "a/**/**/b",
        "a**b",
        "a/**b",
        "a**/b",
        "*/**/*",
        "İ*",
        "?ß",
        "\u{212A}",
        "k",
        "日?",
        "é",
        "É",
        &long,
        &long_star,
    ];
    let names: &[&str] = &[
        "",
        "a",
        "A",
        "aa",
        "ab",
        "a.b",
        "a..b",
        ".",
        "..",
        "a/..",
        "a..",
        "a.x.b",
        "/",
        "//",
        "a/",
        "/a",
        "a/b",
        "a/x/b",
        "a//b",
        "ax/b",
        "İ",
        "i",
        "I",
        "i̇",
        "ß",
        "ss",
        "SS",
        "ẞ",
        "k",
        "K",
        "\u{212A}",
        "日本",
        "é",
        "É",
        "e",
        "\n",
        "a\nb",
        &long,
        &"A".repeat(128),
        &"a".repeat(129),
        &"ab".repeat(150),
    ];
    for ci in [true, false] {
        let rule = rule.clone().case_insensitive(ci);
        for &p in patterns {
            let patterns = vec![p.to_owned()];
            let scope = rule
                .compile(&ResourceScope::Only(patterns.clone()))
                .unwrap();
            for &name in names {
                assert_eq!(
                    scope.matches(name),
                    oracle(&patterns, ci, name),
                    "pattern {p:?} name {name:?} case_insensitive {ci}"
                );
            }
        }
    }
}
