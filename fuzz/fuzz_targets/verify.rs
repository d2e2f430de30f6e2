//! Every verifier on arbitrary requests: the handshake check, the verification and the
//! dedupe key derived from what passed. None may panic; and a request signed by the route's own
//! `sign()` (what `hookgate sign` prints, and the tests' SDK-signed requests match) must verify
//! unless the body itself says it is stale.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use hookgate::config::RouteConfig;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    route: u8,
    sign: bool,
    method: u8,
    query: String,
    /// (index into `common::HEADERS`, or past its end: `name` is the header's name; value)
    headers: Vec<(u8, String, Vec<u8>)>,
    body: Vec<u8>,
}

fn routes() -> &'static [Arc<RouteConfig>] {
    static ROUTES: OnceLock<Vec<Arc<RouteConfig>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let text = common::config_text("/nonexistent/fuzz", "http://127.0.0.1:9/");
        match hookgate::config::parse(&text) {
            Ok((cfg, _)) => cfg.routes,
            Err(p) => panic!("the fuzz config is invalid: {:?}", p.errors),
        }
    })
}

fuzz_target!(|input: Input| {
    let routes = routes();
    let route = &routes[usize::from(input.route) % routes.len()];
    let method = http::Method::from_bytes(
        common::METHODS[usize::from(input.method) % common::METHODS.len()].as_bytes(),
    )
    .unwrap_or(http::Method::POST);
    let path = if input.query.is_empty() {
        route.path.clone()
    } else {
        format!("{}?{}", route.path, input.query)
    };
    let mut b = http::Request::builder().method(method.clone());
    b = match http::Uri::try_from(path.as_str()) {
        Ok(uri) => b.uri(uri),
        Err(_) => b.uri(route.path.as_str()),
    };
    let now = common::now();
    let signed = if input.sign {
        let url = format!("{}{}", common::PUBLIC_URL, route.path);
        route.verifier.sign(&method, &input.body, now, &url)
    } else {
        None
    };
    for (name, value) in signed.iter().flatten() {
        b = b.header(name.as_str(), value.as_str());
    }
    for (i, name, value) in &input.headers {
        let name = common::HEADERS
            .get(usize::from(*i))
            .copied()
            .unwrap_or(name.as_str());
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        b = b.header(n, v);
    }
    let Ok(req) = b.body(()) else { return };
    let (parts, ()) = req.into_parts();
    let v = &route.verifier;
    if let Some(answer) = v.handshake(&parts, &input.body, now) {
        let _ = answer;
        return;
    }
    let r = v.verify(&parts, &input.body, now);
    if let Ok(verified) = &r {
        let _ = hookgate::dedupe::derive(&route.dedupe, verified, &parts.headers, &input.body);
    }
    // Webhooks are POSTs; `sign()` signs one (Twilio refuses a form body on another method).
    let pristine = signed.is_some()
        && method == http::Method::POST
        && input.headers.is_empty()
        && input.query.is_empty();
    if pristine && v.scheme() != "linear" {
        // Linear signs the body only and reads the time from it (`webhookTimestamp`): an
        // arbitrary body has none, so its own signature may well be refused as stale.
        assert!(
            r.is_ok(),
            "{}: its own signature was refused: {r:?}",
            v.scheme()
        );
    }
});
