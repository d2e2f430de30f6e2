//! Whole requests, framed as a sender may frame them (honest, chunked, short, long, raw
//! bytes after), sent over loopback to a gateway running in this process with a route per
//! scheme, each sender half-closing once its request is sent. The gateway may refuse
//! anything, but it always answers, never panics, never answers a 5xx but 501 for a transfer
//! coding it does not know (the store is healthy here, so any other 5xx could only be a bug),
//! and never accepts a request on a signed route that was not signed.
#![no_main]

#[path = "common.rs"]
mod common;
#[path = "gateway.rs"]
mod gateway;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Framing {
    Length,
    NoLength,
    WrongLength(u16),
    Chunked(Vec<u16>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    route: u8,
    sign: bool,
    method: u8,
    path_suffix: String,
    query: String,
    /// (index into `common::HEADERS`, or past its end: `name` is the header's name; raw value)
    headers: Vec<(u8, String, Vec<u8>)>,
    framing: Framing,
    body: Vec<u8>,
    trailing: Vec<u8>,
}

/// Schemes where a request passes only with a signature computed from a secret or a private
/// key; token schemes (the fuzzer may write the token out) and `none` are not among them.
const SIGNED: &[&str] = &[
    "hmac",
    "hmac-full",
    "stripe",
    "stdwh",
    "svix",
    "slack",
    "twilio",
    "paddle",
    "discord",
    "github",
    "zoom",
    "square",
    "shopify",
    "linear",
    "typeform",
    "razorpay",
    "twitch",
    "intercom",
    "calendly",
    "hubspot",
    "sendgrid",
];

fn request(input: &Input, gw: &gateway::Gateway) -> (Vec<u8>, &'static str, bool) {
    let route = &gw.routes[usize::from(input.route) % gw.routes.len()];
    let method = common::METHODS[usize::from(input.method) % common::METHODS.len()];
    let mut target = format!("{}{}", route.path, input.path_suffix);
    if !input.query.is_empty() {
        target.push('?');
        target.push_str(&input.query);
    }
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    let mut signed = false;
    if input.sign {
        let url = format!("{}{}", common::PUBLIC_URL, target);
        let m = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::POST);
        for (k, v) in route
            .verifier
            .sign(&m, &input.body, std::time::SystemTime::now(), &url)
            .into_iter()
            .flatten()
        {
            signed = true;
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
    }
    for (i, name, value) in &input.headers {
        let name = common::HEADERS
            .get(usize::from(*i))
            .copied()
            .unwrap_or(name.as_str());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match &input.framing {
        Framing::Length => {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", input.body.len()).as_bytes(),
            );
            out.extend_from_slice(&input.body);
        }
        Framing::NoLength => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&input.body);
        }
        Framing::WrongLength(n) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
            out.extend_from_slice(&input.body);
        }
        Framing::Chunked(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = &input.body[..];
            for s in sizes {
                let n = usize::from(*s).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
                rest = tail;
            }
            if !rest.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out.extend_from_slice(&input.trailing);
    let name = common::routes()
        .into_iter()
        .map(|(n, _, _)| n)
        .find(|n| *n == route.name)
        .and_then(|n| SIGNED.iter().copied().find(|s| *s == n))
        .unwrap_or("");
    (out, name, signed)
}

/// The status of every answer in what the gateway wrote back.
fn statuses(reply: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = reply[at..].windows(9).position(|w| w == b"HTTP/1.1 ") {
        let s = at + i + 9;
        if let Some(code) = reply
            .get(s..s + 3)
            .and_then(|c| std::str::from_utf8(c).ok())
        {
            if let Ok(code) = code.parse() {
                found.push(code);
            }
        }
        at = s;
    }
    found
}

fn show_statuses() -> bool {
    static SHOW: OnceLock<bool> = OnceLock::new();
    *SHOW.get_or_init(|| std::env::var_os("HOOKGATE_FUZZ_STATUSES").is_some())
}

fuzz_target!(|input: Input| {
    let gw = gateway::get();
    let (bytes, signed_route, signed) = request(&input, gw);
    let reply = gateway::exchange(gw.ingress, &bytes);
    let codes = statuses(&reply);
    if show_statuses() {
        // `HOOKGATE_FUZZ_STATUSES=1 cargo fuzz run … -- -runs=0` over a corpus: what it reaches.
        let head = &bytes[..bytes.len().min(300)];
        eprintln!("statuses {codes:?} request {}", head.escape_ascii());
    }
    // Every request gets an answer, even from a sender that half-closes once it is sent.
    assert!(!codes.is_empty(), "no answer to:\n{}", bytes.escape_ascii());
    for code in codes {
        // 501: a transfer coding other than chunked (RFC 9112 §6.1), refused as such.
        assert!(
            code < 500 || code == 501,
            "answered {code}:\n{}",
            String::from_utf8_lossy(&reply)
        );
        if !signed && !signed_route.is_empty() {
            assert!(
                !(200..300).contains(&code),
                "route {signed_route} accepted an unsigned request ({code}):\n{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
});
