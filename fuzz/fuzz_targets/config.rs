//! Arbitrary config text: `hookgate check` and `serve` parse and validate it. It may be refused,
//! with every problem naming its key path, but never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(p) = hookgate::config::parse(text) {
        for e in &p.errors {
            assert!(e.contains(": "), "an error without its key path: {e:?}");
        }
    }
});
