//! Resource patterns: compiling and matching arbitrary input never panics;
//! a pattern without wildcards matches exactly itself (ignoring ASCII case).
#![no_main]

use keyward::{policy::ResourceRule, policy::ResourceScope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.split('\n');
    let name = parts.next().unwrap_or("");
    let patterns: Vec<String> = parts.map(str::to_owned).collect();
    let rule = ResourceRule::default();
    if let Ok(scope) = rule.compile(&ResourceScope::Only(patterns.clone())) {
        let matched = scope.matches(name);
        for p in &patterns {
            if !p.contains(['*', '?']) && p.eq_ignore_ascii_case(name) {
                assert!(matched, "literal {p:?} must match {name:?}");
            }
        }
    }
    let _ = rule.check_name(name);
});
