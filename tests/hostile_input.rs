//! Hostile input never panics: arbitrary config text gives errors with a path, arbitrary
//! headers and bodies give a verification error, never a panic (cargo-fuzz needs a nightly
//! toolchain this project does not assume; these property tests run on every CI run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::SystemTime;

use proptest::prelude::*;

const ROUTE: &str = "[[route]]\nname = \"r\"\npath = \"/r\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"s\"]\n[route.forward]\nurl = \"http://127.0.0.1:1/\"\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn config_text_never_panics(text in "\\PC{0,400}") {
        let _ = hookgate::config::parse(&text);
    }

    #[test]
    fn config_values_never_panic(key in "(max_body|timeout|tolerance|ttl|url|methods|path|allow_ips)", value in "\\PC{0,40}") {
        let text = format!("{ROUTE}\n[route.dedupe]\nkey = {value:?}\nttl = {value:?}\n").replace("path = \"/r\"", &format!("{key} = {value:?}\npath = \"/r\""));
        if let Err(p) = hookgate::config::parse(&text) {
            for e in &p.errors {
                prop_assert!(e.contains(": "), "every error names its path: {e}");
            }
        }
    }

    #[test]
    fn verification_of_arbitrary_requests_never_panics(
        sig in proptest::collection::vec(any::<u8>(), 0..200),
        ts in proptest::collection::vec(any::<u8>(), 0..30),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (cfg, _) = hookgate::config::parse(ROUTE).unwrap();
        let mut b = http::Request::post("/r");
        if let Ok(v) = http::HeaderValue::from_bytes(&sig) { b = b.header("x-signature", v); }
        if let Ok(v) = http::HeaderValue::from_bytes(&ts) { b = b.header("x-timestamp", v); }
        let parts = b.body(()).unwrap().into_parts().0;
        let r = cfg.routes[0].verifier.verify(&parts, &body, SystemTime::now());
        prop_assert!(r.is_err());
    }
}
