//! The path normalizer on arbitrary bytes: never panics, and what it returns is normal,
//! stable and free of separators an app could decode later (the same checks as the
//! property test in src/proxy/path.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        gateway::proxy::path::check_normalized(path);
    }
});
