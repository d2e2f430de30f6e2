//! Hostile input never panics: arbitrary config text gives errors with a path, arbitrary
//! headers and bodies give a verification error, never a panic, on every scheme; and every
//! scheme that can sign accepts its own signature over any body. These run on every CI run;
//! the coverage-guided fuzz targets in `fuzz/` (docs/FUZZING.md) go deeper, run by hand, on the
//! same routes (`fuzz/fuzz_targets/common.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/fuzz_targets/common.rs"]
mod fuzz_common;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use hookgate::config::RouteConfig;
use proptest::prelude::*;

/// One route per scheme, as the fuzz targets build them.
fn scheme_routes() -> &'static [Arc<RouteConfig>] {
    static ROUTES: OnceLock<Vec<Arc<RouteConfig>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let text = fuzz_common::config_text("/nonexistent/hostile", "http://127.0.0.1:9/");
        hookgate::config::parse(&text).unwrap().0.routes
    })
}

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

    #[test]
    fn every_scheme_refuses_arbitrary_requests_without_panic(
        route in 0..fuzz_common::routes().len(),
        method in 0..fuzz_common::METHODS.len(),
        headers in proptest::collection::vec(
            (0..fuzz_common::HEADERS.len(), proptest::collection::vec(any::<u8>(), 0..80)),
            0..6,
        ),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let r = &scheme_routes()[route];
        let mut b = http::Request::builder()
            .method(fuzz_common::METHODS[method])
            .uri(r.path.as_str());
        for (name, value) in &headers {
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                b = b.header(fuzz_common::HEADERS[*name], v);
            }
        }
        let parts = b.body(()).unwrap().into_parts().0;
        let now = fuzz_common::now();
        if r.verifier.handshake(&parts, &body, now).is_none() {
            let got = r.verifier.verify(&parts, &body, now);
            prop_assert!(
                got.is_err() || r.verifier.scheme() == "none",
                "{} accepted an unsigned request", r.verifier.scheme()
            );
        }
    }

    #[test]
    fn every_scheme_that_signs_verifies_its_own_signature(
        route in 0..fuzz_common::routes().len(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let r = &scheme_routes()[route];
        let now = fuzz_common::now();
        let url = format!("{}{}", fuzz_common::PUBLIC_URL, r.path);
        let Some(signed) = r.verifier.sign(&http::Method::POST, &body, now, &url) else {
            return Ok(());
        };
        let mut b = http::Request::post(r.path.as_str());
        for (k, v) in &signed {
            b = b.header(k.as_str(), v.as_str());
        }
        let parts = b.body(()).unwrap().into_parts().0;
        if r.verifier.handshake(&parts, &body, now).is_none() && r.verifier.scheme() != "linear" {
            // (Linear reads its time from the body, which an arbitrary body does not have.)
            let got = r.verifier.verify(&parts, &body, now);
            prop_assert!(got.is_ok(), "{}: its own signature refused: {got:?}", r.verifier.scheme());
        }
    }
}
