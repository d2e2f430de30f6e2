//! The admin API's requests, with arbitrary query strings, ids, route names and methods, against
//! a gateway in this process whose store holds a few real events (dead by the time most inputs
//! run: deliveries go to a closed port, one attempt each). The admin API is not public, but an
//! operator's typo or a script's bad input must get a 4xx naming the problem: it always answers,
//! never panics, never answers a 5xx (the store is healthy here).
#![no_main]

#[path = "common.rs"]
mod common;
#[path = "gateway.rs"]
mod gateway;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Id {
    /// One of the recorded events.
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Call {
    List(String),
    Show(Id),
    Replay(Id),
    Discard(Id),
    ReplayDead(String),
    Routes,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    call: Call,
}

const METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT", "HEAD"];

/// Event ids recorded before the first input: a few signed events on the generic route.
fn events() -> &'static [String] {
    static IDS: OnceLock<Vec<String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let gw = gateway::get();
        let route = gw
            .routes
            .iter()
            .find(|r| r.name == "hmac")
            .expect("the hmac route");
        (0..4)
            .filter_map(|i| {
                let body = format!("{{\"n\":{i}}}");
                let url = format!("{}{}", common::PUBLIC_URL, route.path);
                let signed = route.verifier.sign(
                    &http::Method::POST,
                    body.as_bytes(),
                    std::time::SystemTime::now(),
                    &url,
                )?;
                let mut req = format!("POST {} HTTP/1.1\r\nHost: fuzz\r\n", route.path);
                for (k, v) in signed {
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
                req.push_str(&format!(
                    "Idempotency-Key: admin-fuzz-{i}-{}\r\nContent-Length: {}\r\n\r\n{body}",
                    std::process::id(),
                    body.len()
                ));
                let reply = String::from_utf8_lossy(&gateway::exchange(gw.ingress, req.as_bytes()))
                    .into_owned();
                let at = reply.find("\"event_id\":\"")? + 12;
                Some(reply[at..].split('"').next()?.to_string())
            })
            .collect()
    })
}

fn id(pick: &Id) -> String {
    match pick {
        Id::Known(i) => {
            let ids = events();
            ids.get(usize::from(*i) % ids.len().max(1))
                .cloned()
                .unwrap_or_default()
        }
        Id::Raw(s) => s.clone(),
    }
}

fuzz_target!(|input: Input| {
    let gw = gateway::get();
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let target = match &input.call {
        Call::List(q) => format!("/admin/events?{q}"),
        Call::Show(i) => format!("/admin/events/{}", id(i)),
        Call::Replay(i) => format!("/admin/events/{}/replay", id(i)),
        Call::Discard(i) => format!("/admin/events/{}", id(i)),
        Call::ReplayDead(r) => format!("/admin/routes/{r}/replay-dead"),
        Call::Routes => "/admin/routes".to_string(),
        Call::Other(p) => format!("/{p}"),
    };
    let req = format!("{method} {target} HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 0\r\n\r\n");
    let reply = gateway::exchange(gw.admin, req.as_bytes());
    let head = String::from_utf8_lossy(&reply[..reply.len().min(12)]).into_owned();
    let code: Option<u16> = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|c| c.get(..3)?.parse().ok());
    let Some(code) = code else {
        panic!(
            "no answer to {req:?}: {:?}",
            String::from_utf8_lossy(&reply)
        );
    };
    assert!(
        code < 500,
        "{req:?} answered {code}: {}",
        String::from_utf8_lossy(&reply)
    );
});
