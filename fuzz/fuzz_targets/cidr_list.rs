//! IP allowlists: parsing arbitrary lists never panics; a parsed range
//! allows its own network address.
#![no_main]

use keyward::policy::IpAllowlist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ranges: Vec<&str> = s.split(',').collect();
    if let Ok(list) = IpAllowlist::parse(&ranges) {
        for net in list.nets() {
            assert!(list.allows(net.network()));
        }
    }
});
