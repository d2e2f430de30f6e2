//! End-to-end tests of the ingress contract (SPEC §5–6): every row of the status table, the
//! raw body and headers as forwarded, slow clients, fail-closed recording, admin and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const SECRET: &str = "topsecret-value-1";
const OLD: &str = "oldsecret-value-0";

fn routes(up: &str) -> String {
    let deep = "d".repeat(1_000);
    format!(
        r#"
[[route]]
name = "orders"
path = "/hooks/orders"
methods = ["POST", "PUT"]
max_body = "4KiB"
[route.verify]
scheme = "hmac"
secrets = ["{OLD}", "{SECRET}"]
[route.dedupe]
key = "header:Idempotency-Key"
required = true
[route.forward]
url = "{up}/base?fixed=1"
backoff_initial = "20ms"
backoff_max = "100ms"

[[route]]
name = "untimed"
path = "/hooks/untimed"
[route.verify]
scheme = "hmac"
secrets = ["{SECRET}"]
signed_payload = "{{body}}"
[route.dedupe]
key = "header:Idempotency-Key"
[route.forward]
url = "{up}/untimed"

[[route]]
name = "limited"
path = "/hooks/limited"
rate_limit = {{ per_second = 1, burst = 1 }}
[route.verify]
scheme = "none"
[route.forward]
url = "{up}/limited"

[[route]]
name = "limited-signed"
path = "/hooks/limited-signed"
rate_limit = {{ per_second = 1, burst = 1 }}
[route.verify]
scheme = "hmac"
secrets = ["{SECRET}"]
[route.forward]
url = "{up}/limited-signed"

[[route]]
name = "deep"
path = "/hooks/deep"
[route.verify]
scheme = "none"
[route.dedupe]
key = "none"
[route.forward]
url = "{up}/{deep}"

[[route]]
name = "private"
path = "/hooks/private"
allow_ips = ["10.0.0.0/8"]
[route.verify]
scheme = "none"
[route.forward]
url = "{up}/private"
"#
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    up: Upstream,
    gw: Gateway,
    c: reqwest::Client,
}

async fn fixture(server_extra: &str) -> Fixture {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(
        &Backend::Embedded,
        dir.path(),
        server_extra,
        &routes(&format!("http://{}", up.addr)),
    );
    let gw = Gateway::start(dir.path(), &cfg);
    Fixture {
        _dir: dir,
        up,
        gw,
        c: reqwest::Client::new(),
    }
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_status_table() {
    let f = fixture("trusted_proxies = [\"127.0.0.1/32\"]").await;
    let url = f.gw.url("/hooks/orders");
    let now = now_secs();
    let body = b"{\"order\":1}".to_vec();
    let keyed = |ts: i64, sig: String, key: &str| {
        f.c.post(&url)
            .header("X-Timestamp", ts.to_string())
            .header("X-Signature", sig)
            .header("Idempotency-Key", key)
            .body(body.clone())
    };
    let req = |ts: i64, sig: String| keyed(ts, sig, "k1");

    let (s, v, _) = answer(req(now, hmac_sign(SECRET, now, &body))).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "accepted");
    let id = v["event_id"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&id).unwrap().get_version_num(),
        7,
        "event ids are UUIDv7"
    );

    let (s, v, _) = answer(req(now, hmac_sign(SECRET, now, &body))).await;
    assert_eq!(
        (s, v["status"].as_str(), v["event_id"].as_str()),
        (200, Some("duplicate"), Some(id.as_str()))
    );

    // Rotation: the old secret still passes.
    let (s, _, _) = answer(keyed(now, hmac_sign(OLD, now, &body), "k2")).await;
    assert_eq!(s, 202);

    let (s, v, _) = answer(
        f.c.post(&url)
            .header("X-Timestamp", now.to_string())
            .header("Idempotency-Key", "k3")
            .body(body.clone()),
    )
    .await;
    assert_eq!((s, error_of(&v)), (401, "missing_signature"));

    let (s, v, _) = answer(keyed(now, hmac_sign("wrong-secret", now, &body), "k4")).await;
    assert_eq!((s, error_of(&v)), (401, "invalid_signature"));

    // Tampered body: signature of another body.
    let (s, v, _) = answer(keyed(now, hmac_sign(SECRET, now, b"{\"order\":2}"), "k5")).await;
    assert_eq!((s, error_of(&v)), (401, "invalid_signature"));

    // Clear margins: the exact boundary is unit-tested with time as an input.
    for ts in [now - 400, now + 400] {
        let (s, v, _) = answer(keyed(ts, hmac_sign(SECRET, ts, &body), "k6")).await;
        assert_eq!(
            (s, error_of(&v)),
            (401, "stale_timestamp"),
            "timestamp {ts} vs now {now}"
        );
    }
    let (s, v, _) = answer(
        f.c.post(&url)
            .header("X-Signature", hmac_sign(SECRET, now, &body))
            .body(body.clone()),
    )
    .await;
    assert_eq!(
        (s, error_of(&v)),
        (401, "stale_timestamp"),
        "missing timestamp"
    );

    let (s, v, _) = answer(signed(&f.c, &url, SECRET, body.clone())).await;
    assert_eq!((s, error_of(&v)), (400, "missing_dedupe_key"));

    let big = vec![b'x'; 4097];
    let (s, v, _) = answer(signed(&f.c, &url, SECRET, big).header("Idempotency-Key", "k7")).await;
    assert_eq!((s, error_of(&v)), (413, "body_too_large"));
    let exact = vec![b'x'; 4096];
    let (s, _, _) = answer(signed(&f.c, &url, SECRET, exact).header("Idempotency-Key", "k8")).await;
    assert_eq!(s, 202, "a body of exactly max_body passes");

    let (s, v, _) = answer(f.c.post(f.gw.url("/hooks/nope")).body("x")).await;
    assert_eq!((s, error_of(&v)), (404, "not_found"));

    let (s, v, h) = answer(f.c.get(&url)).await;
    assert_eq!((s, error_of(&v)), (405, "method_not_allowed"));
    assert_eq!(h["allow"], "POST, PUT");

    let (s, v, _) = answer(f.c.post(f.gw.url("/hooks/private")).body("x")).await;
    assert_eq!((s, error_of(&v)), (403, "forbidden"));
    // From a trusted proxy, X-Forwarded-For names the client.
    let (s, _, _) = answer(
        f.c.post(f.gw.url("/hooks/private"))
            .header("X-Forwarded-For", "10.1.2.3")
            .body("x"),
    )
    .await;
    assert_eq!(s, 202);

    // 1 a second, burst 1: of ten sent at once, the first passes and the rest cannot all
    // come a second apart (two sent one after the other could, on a loaded machine).
    let burst: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(answer(
                f.c.post(f.gw.url("/hooks/limited")).body(format!("{i}")),
            ))
        })
        .collect();
    let mut limited = 0;
    let mut passed = 0;
    for t in burst {
        let (s, v, h) = t.await.unwrap();
        match s {
            202 => passed += 1,
            429 => {
                limited += 1;
                assert_eq!(error_of(&v), "rate_limited");
                assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(
        passed >= 1 && limited >= 1,
        "{passed} passed, {limited} limited"
    );

    assert_eq!(
        f.gw.counter(r#"hookgate_requests_total{route="limited",outcome="rate_limited"}"#)
            .await,
        limited as f64,
        "each 429 counted"
    );

    // Forged requests do not use up a route's limit: the signed sender still gets through.
    for i in 0..5 {
        let (s, v, _) = answer(signed(
            &f.c,
            &f.gw.url("/hooks/limited-signed"),
            "wrong",
            format!("{i}"),
        ))
        .await;
        assert_eq!((s, error_of(&v)), (401, "invalid_signature"), "forgery {i}");
    }
    let (s, v, _) = answer(signed(
        &f.c,
        &f.gw.url("/hooks/limited-signed"),
        SECRET,
        "ok",
    ))
    .await;
    assert_eq!(s, 202, "{v}");

    // Every response is JSON, and none reveals a secret or an expected signature.
    let metrics = f.gw.metrics().await;
    for needle in [
        r#"hookgate_requests_total{route="orders",outcome="accepted"} 3"#,
        r#"hookgate_requests_total{route="orders",outcome="duplicate"} 1"#,
        r#"hookgate_requests_total{route="orders",outcome="invalid_signature"} 2"#,
        r#"hookgate_requests_total{route="orders",outcome="stale_timestamp"} 3"#,
        r#"hookgate_requests_total{route="unmatched",outcome="not_found"} 1"#,
        r#"hookgate_secret_matches_total{route="orders",secret_index="0"} 1"#,
        "hookgate_request_duration_seconds_bucket",
        "hookgate_build_info{version=",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains(SECRET) && !f.gw.log().contains(SECRET) && !f.gw.log().contains(OLD),
        "a secret leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_body_and_headers_arrive_as_specified() {
    let f = fixture("").await;
    let body: &[u8] = b"  {\"caf\xc3\xa9\" : \"\xe2\x9c\x93\"}\r\n\t \x00\xff trailing  ";
    let ts = now_secs();
    let (s, v, _) = answer(
        f.c.put(f.gw.url("/hooks/orders?b=%20x&a=1"))
            .header("X-Timestamp", ts.to_string())
            .header("X-Signature", hmac_sign(SECRET, ts, body))
            .header("Idempotency-Key", "raw-1")
            .header("X-Custom", "kept")
            .header("Content-Type", "application/octet-stream")
            .header("Hookgate-Event-Id", "forged")
            .header("Hookgate-Verified", "forged")
            // Look-alikes a CGI-style upstream reads as HTTP_HOOKGATE_VERIFIED.
            .header("Hookgate_Verified", "forged")
            .header("Hookgate.Route", "forged")
            .header("Proxy-Authorization", "hop")
            .body(body.to_vec()),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let id = v["event_id"].as_str().unwrap();
    let got =
        f.up.wait_delivered(1, Duration::from_secs(10))
            .await
            .remove(0);
    assert_eq!(&got.body[..], body, "raw body byte for byte");
    assert_eq!(got.method, "PUT", "original method");
    assert_eq!(
        got.uri, "/base?fixed=1&b=%20x&a=1",
        "original query appended"
    );
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        got.header("x-signature").map(str::len),
        Some(64),
        "original signature headers kept"
    );
    assert_eq!(
        got.header("hookgate-event-id"),
        Some(id),
        "client-sent Hookgate-* dropped"
    );
    assert_eq!(got.header("hookgate-verified"), Some("hmac"));
    assert_eq!(got.header("hookgate-route"), Some("orders"));
    assert_eq!(got.header("hookgate-attempt"), Some("1"));
    assert!(humantime::parse_rfc3339(got.header("hookgate-received-at").unwrap()).is_ok());
    assert_eq!(got.headers.get_all("hookgate-event-id").iter().count(), 1);
    assert!(
        got.header("hookgate_verified").is_none() && got.header("hookgate.route").is_none(),
        "look-alikes of Hookgate-* dropped"
    );
    assert!(
        got.header("proxy-authorization").is_none(),
        "hop-by-hop dropped"
    );
    assert_eq!(
        got.header("host"),
        Some(f.up.addr.to_string().as_str()),
        "Host is the upstream's"
    );

    let ev =
        f.gw.wait_event_state(id, "delivered", Duration::from_secs(5))
            .await;
    assert_eq!(ev["route"], "orders");
    assert_eq!(ev["dedupe_key"], "header:raw-1");
    assert_eq!(ev["body_bytes"], body.len());
    let list =
        f.gw.admin_json("/admin/events?route=orders&state=delivered&limit=5")
            .await;
    assert_eq!(list["events"][0]["event_id"], id);
    let bad = reqwest::get(f.gw.admin_url("/admin/events?state=lost"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

fn raw_exchange(
    addr: std::net::SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        if s.write_all(p).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

/// A raw HTTP/1.1 request to `target` (the `orders` route takes one signed, with `key` as its
/// Idempotency-Key), with `extra` header lines, `Content-Length` and `Connection: close`;
/// returns the gateway's answer.
async fn send_raw(f: &Fixture, target: &[u8], key: &str, extra: &[u8], body: &[u8]) -> String {
    let ts = now_secs();
    let mut req = b"POST ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: gw\r\nX-Timestamp: {ts}\r\nX-Signature: {}\r\n\
             Idempotency-Key: {key}\r\nContent-Length: {}\r\nConnection: close\r\n",
            hmac_sign(SECRET, ts, body),
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(extra);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let addr = f.gw.ingress;
    tokio::task::spawn_blocking(move || raw_exchange(addr, &[&req], Duration::ZERO).0)
        .await
        .unwrap()
}

/// Sends `req` to `addr`, shuts the sending side at once, and returns all that came back.
async fn half_closed_exchange(addr: std::net::SocketAddr, req: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&req).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

/// A sender that shuts its side of the connection once its request is sent (a half-close)
/// still gets its answer, with a body or without, and so does an admin client; before, hyper
/// dropped the request in flight on the EOF and the sender saw the connection closed with no
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_half_closes_still_gets_its_answer() {
    let f = fixture("").await;
    let addr = f.gw.ingress;
    for (key, body) in [("half-empty", &b""[..]), ("half-body", &b"{\"a\":1}"[..])] {
        let ts = now_secs();
        let mut req = format!(
            "POST /hooks/orders HTTP/1.1\r\nHost: gw\r\nX-Timestamp: {ts}\r\nX-Signature: {}\r\n\
             Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n",
            hmac_sign(SECRET, ts, body),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let got = half_closed_exchange(addr, req).await;
        assert!(got.starts_with("HTTP/1.1 202"), "{key}: {got:?}");
    }
    assert_eq!(
        f.up.wait_delivered(2, Duration::from_secs(10)).await.len(),
        2
    );
    // The admin listener too.
    let req = b"GET /admin/routes HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec();
    let got = half_closed_exchange(f.gw.admin, req).await;
    assert!(got.starts_with("HTTP/1.1 200"), "admin: {got:?}");
}

/// A query string the head limit lets in can still make `forward.url` + query longer than an
/// HTTP client sends (65,534 bytes): refused with 414 before the event is accepted, where the
/// event would otherwise have been acknowledged and then failed every attempt. A long query
/// that fits still goes through, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_too_long_to_forward_is_refused_414() {
    let f = fixture("").await;
    let addr = f.gw.ingress;
    let send = move |q: String| {
        tokio::task::spawn_blocking(move || {
            let req = format!(
                "POST /hooks/deep?{q} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            raw_exchange(addr, &[req.as_bytes()], Duration::ZERO).0
        })
    };
    let long = format!("q={}", "a".repeat(64_600));
    let got = send(long).await.unwrap();
    assert!(
        got.starts_with("HTTP/1.1 414"),
        "{}",
        &got[..got.len().min(300)]
    );
    assert!(got.contains(r#"{"error":"uri_too_long"}"#), "{got}");
    wait_until(Duration::from_secs(5), "the refusal counted", async || {
        f.gw.counter(r#"hookgate_requests_total{route="deep",outcome="uri_too_long"}"#)
            .await
            == 1.0
    })
    .await;
    let fits = format!("q={}", "b".repeat(60_000));
    let got = send(fits.clone()).await.unwrap();
    assert!(
        got.starts_with("HTTP/1.1 202"),
        "{}",
        &got[..got.len().min(300)]
    );
    let got = f.up.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "only the one that fits was accepted");
    assert!(
        got[0].uri.ends_with(&format!("?{fits}")),
        "query forwarded as sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_or_an_unknown_transfer_coding_is_refused() {
    let f = fixture("").await;
    // Past 64 KiB of head, though within what hyper's read buffer takes.
    let big = format!("X-Big: {}\r\n", "a".repeat(80_000));
    let got = send_raw(&f, b"/hooks/orders", "big-head", big.as_bytes(), b"x").await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert!(got.contains(r#"{"error":"headers_too_large"}"#), "{got}");
    // gzip under chunked: hyper undoes the chunking only, so the upstream would get gzip
    // bytes with nothing saying so.
    let addr = f.gw.ingress;
    let got = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            &[b"POST /hooks/orders HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"],
            Duration::ZERO,
        )
        .0
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 501"), "{got}");
    assert!(
        got.contains(r#"{"error":"unsupported_transfer_coding"}"#),
        "{got}"
    );
    // Heads hyper's parser refuses before any route sees them (more than 100 headers: 431; a
    // request line that is no HTTP: 400) are counted and logged as unmatched requests.
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let got = send_raw(&f, b"/hooks/orders", "many", many.as_bytes(), b"x").await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let got = tokio::task::spawn_blocking(move || {
        raw_exchange(addr, &[b"GARBAGE\r\n\r\n"], Duration::ZERO).0
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    wait_until(
        Duration::from_secs(5),
        "parser refusals counted",
        async || {
            f.gw.counter(
                r#"hookgate_requests_total{route="unmatched",outcome="headers_too_large"}"#,
            )
            .await
                == 1.0
                && f.gw
                    .counter(r#"hookgate_requests_total{route="unmatched",outcome="bad_request"}"#)
                    .await
                    == 1.0
        },
    )
    .await;
    assert_eq!(
        f.gw.log().matches("refused by the HTTP parser").count(),
        2,
        "{}",
        f.gw.log()
    );
    assert!(f.up.received().is_empty());
}

/// A sender's `Expect: 100-continue` is not passed on: the gateway sends the body whole, and a
/// strict receiver may answer 417, a permanent failure that would dead-letter the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_expect_header_is_not_forwarded() {
    let f = fixture("").await;
    let got = send_raw(
        &f,
        b"/hooks/orders",
        "expect-1",
        b"Expect: 100-continue\r\n",
        b"{}",
    )
    .await;
    assert!(got.contains(" 202 "), "{got}");
    let up = f.up.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(up[0].header("expect"), None, "{:?}", up[0].headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_a_connection_header_names_are_dropped_even_beside_a_non_utf8_token() {
    let f = fixture("").await;
    let extra = b"Connection: X-Secret, caf\xe9\r\nX-Secret: s3cr3t\r\nX-Custom: kept\r\n";
    let answer = send_raw(&f, b"/hooks/orders", "conn-1", extra, b"{}").await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let got =
        f.up.wait_delivered(1, Duration::from_secs(10))
            .await
            .remove(0);
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert!(
        got.headers.get("x-secret").is_none(),
        "a header the Connection header names is hop-by-hop: {:?}",
        got.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_query_string_is_forwarded_as_sent() {
    let f = fixture("").await;
    // Bytes a URL parser would percent-encode (a receiver re-checking a signature over the
    // URL, Twilio-style, needs the sender's), next to an escape it must not decode.
    let query = "a=b'c&e=caf\u{e9}&s=%20x";
    let target = format!("/hooks/orders?{query}");
    let answer = send_raw(&f, target.as_bytes(), "query-1", b"", b"{}").await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // A route whose URL has no query of its own (and no signature to check).
    let target = format!("/hooks/limited?{query}");
    let answer = send_raw(&f, target.as_bytes(), "query-2", b"", b"{}").await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let mut uris: Vec<String> =
        f.up.wait_delivered(2, Duration::from_secs(10))
            .await
            .into_iter()
            .map(|r| r.uri)
            .collect();
    uris.sort();
    assert_eq!(
        uris,
        [
            format!("/base?fixed=1&{query}"),
            format!("/limited?{query}")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_is_forwarded_with_content_length_zero() {
    let f = fixture("").await;
    // 411 is permanent: without a length the event would be dead at its first attempt.
    let answer = send_raw(&f, b"/hooks/orders", "empty-1", b"", b"").await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let got =
        f.up.wait_delivered(1, Duration::from_secs(10))
            .await
            .remove(0);
    assert!(got.body.is_empty());
    assert_eq!(
        got.header("content-length"),
        Some("0"),
        "an empty POST says so: {:?}",
        got.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_enforced_while_reading() {
    let f = fixture("header_timeout = \"1s\"\nbody_timeout = \"1s\"").await;
    let addr = f.gw.ingress;
    let resp = tokio::task::spawn_blocking(move || {
        // Chunked, no Content-Length: cut off once past 4 KiB.
        let chunk = format!("{:x}\r\n{}\r\n", 3000, "y".repeat(3000));
        let head = b"POST /hooks/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nIdempotency-Key: c\r\n\r\n";
        let (chunked, _) = raw_exchange(addr, &[head, chunk.as_bytes(), chunk.as_bytes(), b"0\r\n\r\n"], Duration::ZERO);
        // A body that stops arriving: 408 after body_timeout.
        let head = b"POST /hooks/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
        let (stalled, took) = raw_exchange(addr, &[head], Duration::ZERO);
        // A head that never ends: the connection is closed after header_timeout.
        let (slow_head, head_took) = raw_exchange(addr, &[b"POST /hooks/orders HTTP/1.1\r\nHost: x\r\n"], Duration::ZERO);
        (chunked, stalled, took, slow_head, head_took)
    })
    .await
    .unwrap();
    let (chunked, stalled, took, slow_head, head_took) = resp;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("body_too_large"));
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("request_timeout"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!slow_head.contains("202"), "{slow_head}");
    assert!(
        head_took < Duration::from_secs(5),
        "slow head cut off after {head_took:?}"
    );
    assert!(f.up.received().is_empty());
}

/// The head of a signed `orders` request with `key` for `body`, framed by `Content-Length` or
/// (`chunked`) by one chunk of the whole body; returns the head and the body as framed.
fn signed_request(key: &str, body: &[u8], chunked: bool) -> (Vec<u8>, Vec<u8>) {
    let ts = now_secs();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST /hooks/orders HTTP/1.1\r\nHost: gw\r\nX-Timestamp: {ts}\r\nX-Signature: {}\r\n\
         Idempotency-Key: {key}\r\n{framing}\r\nConnection: close\r\n\r\n",
        hmac_sign(SECRET, ts, body)
    );
    let mut framed = Vec::new();
    if chunked {
        framed.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        framed.extend_from_slice(body);
        framed.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        framed.extend_from_slice(body);
    }
    (head.into_bytes(), framed)
}

/// Bodies being received are counted, all routes together, against `server.max_body_memory`,
/// as their bytes arrive (a declared length too: counted whole up front, senders declaring
/// bodies they never sent held the budget). With two senders holding most of it (one with
/// `Content-Length`, one chunked), a third body that does not fit waits up to a second for
/// room and is then refused `503` + `Retry-After`, while a small one still fits; once the
/// holders finish or go away, the refused one goes through. Without the budget nothing bounded
/// them: 300 senders of 1 MiB bodies took 330 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_at_once_are_bounded_by_max_body_memory() {
    let f = fixture("max_body = \"4KiB\"\nmax_body_memory = \"8KiB\"").await;
    let addr = f.gw.ingress;
    assert_eq!(
        f.gw.counter("hookgate_body_memory_limit_bytes").await,
        8192.0
    );
    let held = "hookgate_body_memory_bytes";
    // Two senders send 3,000 of their 4,000 bytes and wait: each holds the 3,000 received.
    let body_a = vec![b'a'; 4000];
    let (head_a, framed_a) = signed_request("mem-a", &body_a, false);
    let mut a = TcpStream::connect(addr).unwrap();
    a.write_all(&head_a).unwrap();
    a.write_all(&framed_a[..3000]).unwrap();
    let body_b = vec![b'b'; 4000];
    let (head_b, framed_b) = signed_request("mem-b", &body_b, true);
    let mut b = TcpStream::connect(addr).unwrap();
    b.write_all(&head_b).unwrap();
    // The chunk-size line and 3,000 bytes of the chunk's data.
    let b_sent = framed_b.len() - 1000 - b"\r\n0\r\n\r\n".len();
    b.write_all(&framed_b[..b_sent]).unwrap();
    wait_until(
        Duration::from_secs(10),
        "both bodies' bytes held",
        async || f.gw.counter(held).await == 6000.0,
    )
    .await;

    // 3,000 more do not fit in 8 KiB (after a second's wait for room); 1,000 do.
    let body_c = vec![b'c'; 3000];
    let (head_c, framed_c) = signed_request("mem-c", &body_c, false);
    let req_c = [head_c, framed_c].concat();
    let exchange = |req: Vec<u8>| {
        tokio::task::spawn_blocking(move || raw_exchange(addr, &[&req], Duration::ZERO).0)
    };
    let t0 = Instant::now();
    let refused = exchange(req_c.clone()).await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "waited for room first"
    );
    assert!(refused.contains("\"error\":\"unavailable\""), "{refused}");
    assert!(
        refused.to_lowercase().contains("retry-after: 1\r\n"),
        "{refused}"
    );
    let (head_d, framed_d) = signed_request("mem-d", &[b'd'; 1000], false);
    let small = exchange([head_d, framed_d].concat()).await.unwrap();
    assert!(small.starts_with("HTTP/1.1 202"), "{small}");

    // The first holder finishes its body and is accepted; the second goes away.
    a.write_all(&framed_a[3000..]).unwrap();
    let mut answer_a = String::new();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.read_to_string(&mut answer_a).unwrap();
    assert!(answer_a.starts_with("HTTP/1.1 202"), "{answer_a}");
    drop(b);
    wait_until(
        Duration::from_secs(10),
        "every byte given back",
        async || f.gw.counter(held).await == 0.0,
    )
    .await;
    let retried = exchange(req_c).await.unwrap();
    assert!(retried.starts_with("HTTP/1.1 202"), "{retried}");

    let delivered = f.up.wait_delivered(3, Duration::from_secs(10)).await;
    let mut bodies: Vec<Vec<u8>> = delivered.iter().map(|r| r.body.to_vec()).collect();
    bodies.sort();
    assert_eq!(bodies, vec![body_a, vec![b'c'; 3000], vec![b'd'; 1000]]);
    assert_eq!(
        f.gw.counter("hookgate_requests_total{route=\"orders\",outcome=\"body_memory_full\"}")
            .await,
        1.0,
        "counted apart from a store that cannot record"
    );
    assert_eq!(
        f.gw.counter("hookgate_requests_total{route=\"orders\",outcome=\"unavailable\"}")
            .await,
        0.0
    );
    assert!(
        f.gw.log().contains("fill server.max_body_memory"),
        "the refusal says why"
    );
}

/// Connections that declare a body and send (almost) none of it hold only what they sent of
/// `server.max_body_memory`: counted whole up front, three of them (each declaring the route's
/// 4 KiB limit) held the 8 KiB budget for `body_timeout`, and every real webhook got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_bodies_that_never_come_do_not_hold_the_body_budget() {
    let f = fixture("max_body = \"4KiB\"\nmax_body_memory = \"8KiB\"").await;
    let addr = f.gw.ingress;
    // Each sends its head and the first byte of its body, then nothing more.
    let idle: Vec<TcpStream> = (0..3)
        .map(|i| {
            let (head, framed) = signed_request(&format!("idle-{i}"), &[b'i'; 4000], false);
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&head).unwrap();
            s.write_all(&framed[..1]).unwrap();
            s
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "the three bodies begun",
        async || f.gw.counter("hookgate_body_memory_bytes").await >= 3.0,
    )
    .await;
    let (head, framed) = signed_request("real", &[b'r'; 3000], false);
    let req = [head, framed].concat();
    let answer = tokio::task::spawn_blocking(move || raw_exchange(addr, &[&req], Duration::ZERO).0)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    drop(idle);
}

/// A declared body under way (64 KiB of it arrived) holds the rest of its length, so bodies
/// starting after it cannot fill the budget with halves that none can finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_under_way_holds_its_whole_length() {
    let f = fixture("max_body = \"256KiB\"\nmax_body_memory = \"256KiB\"").await;
    let addr = f.gw.ingress;
    // The "untimed" route: max_body 1 MiB, signed over the body alone.
    let body = vec![b'u'; 200 * 1024];
    let sig = {
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        m.update(&body);
        hex::encode(m.finalize().into_bytes())
    };
    let head = format!(
        "POST /hooks/untimed HTTP/1.1\r\nHost: gw\r\nX-Signature: {sig}\r\n\
         Idempotency-Key: under-way\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    let framed = body.clone();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&head).unwrap();
    s.write_all(&framed[..70 * 1024]).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the whole declared length held",
        async || f.gw.counter("hookgate_body_memory_bytes").await == (200 * 1024) as f64,
    )
    .await;
    s.write_all(&framed[70 * 1024..]).unwrap();
    let mut answer = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    let f = fixture("header_timeout = \"1s\"\nbody_timeout = \"1s\"").await;
    let addr = f.gw.ingress;
    // Pipelined requests, never reading: once the answers fill the socket buffers the gateway
    // cannot write, stops reading, and our writes block. Without a write deadline that lasts
    // forever; with one, the gateway closes the connection and a write fails.
    let (err, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let batch = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2048);
        let t0 = Instant::now();
        loop {
            if let Err(e) = s.write_all(&batch) {
                return (e, t0.elapsed());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "never blocked");
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the gateway should close the stuck connection; the write ended with {err:?} after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_with_503_when_the_event_cannot_be_recorded() {
    let f = fixture("").await;
    let db = f._dir.path().join("data").join("hookgate.db");
    // Another process holding the database's write lock: the gateway cannot record.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (s, v, h) = answer(
        signed(&f.c, &f.gw.url("/hooks/orders"), SECRET, "x").header("Idempotency-Key", "locked"),
    )
    .await;
    assert_eq!((s, error_of(&v)), (503, "unavailable"));
    assert_eq!(h["retry-after"], "5");
    locker.execute_batch("ROLLBACK").unwrap();
    // Nothing half-recorded: the same key is accepted (not a duplicate) once the store is back.
    let (s, v, _) = answer(
        signed(&f.c, &f.gw.url("/hooks/orders"), SECRET, "x").header("Idempotency-Key", "locked"),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let metrics = f.gw.metrics().await;
    assert!(
        metrics.contains(r#"hookgate_requests_total{route="orders",outcome="unavailable"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("hookgate_store_errors_total 0"),
        "store errors counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_answers_503_promptly_to_every_request_in_flight() {
    let f = fixture("").await;
    let db = f._dir.path().join("data").join("hookgate.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Sent together, so several share a batch: each must be answered within the accept
    // deadline (3 s) plus the machine's slack, not after one busy wait per write.
    let sent: Vec<_> = (0..8)
        .map(|i| {
            let req = signed(
                &f.c,
                &f.gw.url("/hooks/orders"),
                SECRET,
                format!("locked {i}"),
            )
            .header("Idempotency-Key", format!("locked-{i}"));
            tokio::spawn(async move {
                let t0 = Instant::now();
                let (s, v, h) = answer(req).await;
                (s, v, h, t0.elapsed())
            })
        })
        .collect();
    for t in sent {
        let (s, v, h, took) = t.await.unwrap();
        assert_eq!((s, error_of(&v)), (503, "unavailable"), "{v}");
        assert!(h.contains_key("retry-after"));
        assert!(took < Duration::from_secs(6), "answered after {took:?}");
    }
    locker.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_separate_and_token_protected() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(
        &Backend::Embedded,
        dir.path(),
        "admin_token = \"env:HG_TEST_ADMIN_TOKEN\"",
        &routes(&format!("http://{}", up.addr)),
    );
    std::fs::write(dir.path().join("hookgate.toml"), cfg).unwrap();
    let gw = Gateway::start_with(
        &dir.path().join("hookgate.toml"),
        &[("HG_TEST_ADMIN_TOKEN", "adm1n-t0ken")],
    );
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(gw.admin_url("/admin/routes"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(gw.admin_url("/admin/routes"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = c
        .get(gw.admin_url("/admin/routes"))
        .bearer_auth("adm1n-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let routes: Value = ok.json().await.unwrap();
    assert_eq!(routes["routes"].as_array().unwrap().len(), 6);
    // The scheme's name is case-insensitive; the token is not.
    for (header, status) in [
        ("bearer adm1n-t0ken", 200),
        ("BEARER adm1n-t0ken", 200),
        ("Bearer ADM1N-T0KEN", 401),
        ("Basic adm1n-t0ken", 401),
        ("Bearer", 401),
    ] {
        let r = c
            .get(gw.admin_url("/admin/routes"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{header}");
    }
    assert_eq!(routes["routes"][0]["name"], "orders");
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            c.get(gw.admin_url(probe)).send().await.unwrap().status(),
            200,
            "{probe} needs no token"
        );
    }
    // Admin endpoints are not on the public port.
    for path in ["/metrics", "/admin/routes", "/healthz"] {
        assert_eq!(
            c.get(gw.url(path)).send().await.unwrap().status(),
            404,
            "{path} on the public port"
        );
    }
    // The operator's client: address and token from the config file.
    let (_, v, _) = answer(c.post(gw.url("/hooks/limited")).body("via cli")).await;
    let id = v["event_id"].as_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(args)
            .env("HG_TEST_ADMIN_TOKEN", "adm1n-t0ken")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cfg_path = dir.path().join("hookgate.toml");
    let cfg_arg = cfg_path.to_str().unwrap();
    // The config says 127.0.0.1:0; point the client at the real port.
    let admin = format!("http://{}", gw.admin);
    // `hookgate events` against the real admin port with the token, then `args`.
    let events = |args: &[&str]| {
        let mut all = vec![
            "events",
            "-c",
            cfg_arg,
            "--admin",
            &admin,
            "--token",
            "adm1n-t0ken",
        ];
        all.extend_from_slice(args);
        cli(&all)
    };
    let (code, out, err) = events(&["list", "--route", "limited"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id), "{out}");
    let (code, out, _) = events(&["show", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"attempt_log\""), "{out}");
    // A route's dead letters: the route by position, or by --route as elsewhere.
    for how in [
        &["replay-dead", "limited"][..],
        &["replay-dead", "--route", "limited"],
    ] {
        let (code, out, err) = events(how);
        assert_eq!(code, Some(0), "{how:?}: {err}");
        assert!(out.contains("\"replayed\": 0"), "{how:?}: {out}");
    }
    let (code, _, err) = cli(&["events", "-c", cfg_arg, "replay-dead"]);
    assert_eq!(code, Some(2), "no route: {err}");
    assert!(err.contains("ROUTE"), "{err}");
    let (code, _, err) = cli(&[
        "events", "-c", cfg_arg, "--admin", &admin, "--token", "wrong", "show", &id,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    assert!(
        err.contains("is not the running gateway's server.admin_token")
            && !err.contains("pass --token"),
        "a token was given: the hint says it is the wrong one: {err}"
    );
    let unknown = c
        .get(gw.admin_url("/admin/events/does-not-exist"))
        .bearer_auth("adm1n-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut f = fixture("").await;
    let addr = f.gw.ingress;
    let body = b"in flight".to_vec();
    let ts = now_secs();
    let head = format!(
        "POST /hooks/orders HTTP/1.1\r\nHost: x\r\nX-Timestamp: {ts}\r\nX-Signature: {}\r\nIdempotency-Key: inflight\r\nContent-Length: {}",
        hmac_sign(SECRET, ts, &body),
        body.len()
    );
    // In flight: the server read the head and waits for the body (100 Continue).
    let mut s = request_in_flight(addr, &head);
    s.write_all(&body[..3]).unwrap();
    signal(f.gw.pid(), "TERM");
    // The rest of the body only once shutdown is under way (its workers told to stop, which
    // happens with the ingress's stop).
    wait_until(Duration::from_secs(10), "shutdown under way", || async {
        f.gw.log().contains("delivery worker stopped")
    })
    .await;
    s.write_all(&body[3..]).unwrap();
    // The answer, then the end of the connection (it is not kept alive while shutting down).
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let resp = String::from_utf8_lossy(&out);
    assert!(
        resp.starts_with("HTTP/1.1 202"),
        "in-flight request finished: {resp}"
    );
    let t0 = Instant::now();
    let status = f.gw.terminate_wait();
    assert!(status.success(), "exit status {status:?}");
    // Not held to the grace period once nothing is in flight (a bound here only tells a hang).
    assert!(
        !f.gw.log().contains("shutdown grace period elapsed"),
        "{}",
        f.gw.log()
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_logged_as_replay_or_provider_retry() {
    let f = fixture("").await;
    let url = f.gw.url("/hooks/orders");
    let body = b"{\"order\":9}".to_vec();
    let ts = now_secs();
    let send = |ts: i64| {
        f.c.post(&url)
            .header("X-Timestamp", ts.to_string())
            .header("X-Signature", hmac_sign(SECRET, ts, &body))
            .header("Idempotency-Key", "evt-9")
            .body(body.clone())
            .send()
    };
    // The generic scheme: whether its sender re-signs a retry is not known, so an identical
    // copy is a redelivery at info, and a re-signed one a retry (Stripe's identical copy
    // warns: tests/providers.rs).
    assert_eq!(send(ts).await.unwrap().status(), 202);
    assert_eq!(send(ts).await.unwrap().status(), 200);
    wait_until(Duration::from_secs(5), "redelivery logged", || async {
        f.gw.log().contains("a redelivery")
    })
    .await;
    assert!(!f.gw.log().contains("a provider retry"));
    assert_eq!(send(ts - 1).await.unwrap().status(), 200);
    wait_until(Duration::from_secs(5), "retry logged", || async {
        f.gw.log().contains("a provider retry")
    })
    .await;
    assert_eq!(f.gw.log().matches("possible replay").count(), 0);

    // A scheme that signs no timestamp (here `hmac` over the body alone, as GitHub or Shopify
    // sign): its redeliveries carry the same signature, and are no warning.
    let untimed = |key: &str| {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        m.update(&body);
        f.c.post(f.gw.url("/hooks/untimed"))
            .header("X-Signature", hex::encode(m.finalize().into_bytes()))
            .header("Idempotency-Key", key.to_string())
            .body(body.clone())
            .send()
    };
    assert_eq!(untimed("gh-1").await.unwrap().status(), 202);
    assert_eq!(untimed("gh-1").await.unwrap().status(), 200);
    wait_until(Duration::from_secs(5), "redelivery logged", || async {
        f.gw.log().matches("a redelivery").count() == 2
    })
    .await;
    let log = f.gw.log();
    let line = log.lines().rfind(|l| l.contains("a redelivery")).unwrap();
    assert!(line.contains("INFO") && line.contains("untimed"), "{line}");
    assert_eq!(f.gw.log().matches("possible replay").count(), 0);
}

/// SPEC §3: `dedupe.key = "auto"` falls back to `Idempotency-Key` for the generic `hmac` scheme
/// only. A preset without an event id (Meta signs the body alone, no timestamp) dedupes on the
/// body's SHA-256, so a captured request resent under a fresh, unsigned `Idempotency-Key` is a
/// duplicate, not a second event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_dedupe_ignores_idempotency_key_on_a_preset_without_an_id() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let routes = format!(
        r#"
[[route]]
name = "meta"
path = "/hooks/meta"
[route.verify]
scheme = "meta"
secrets = ["meta-app-secret"]
[route.forward]
url = "{up}/meta"

[[route]]
name = "generic"
path = "/hooks/generic"
[route.verify]
scheme = "hmac"
secrets = ["{SECRET}"]
[route.forward]
url = "{up}/generic"
"#,
        up = format!("http://{}", up.addr)
    );
    let gw = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), "", &routes),
    );
    let c = reqwest::Client::new();

    // Signed as Meta does: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256(app secret, body).
    let body = br#"{"object":"page","entry":[{"id":"1","time":1700000000}]}"#;
    let sig = {
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"meta-app-secret").unwrap();
        m.update(body);
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    };
    let meta = |key: &str| {
        c.post(gw.url("/hooks/meta"))
            .header("X-Hub-Signature-256", sig.clone())
            .header("Idempotency-Key", key)
            .body(body.to_vec())
    };
    let (s, v, _) = answer(meta("capture-1")).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("accepted")), "{v}");
    let first = v["event_id"].as_str().unwrap().to_string();
    for key in ["replay-2", "replay-3"] {
        let (s, v, _) = answer(meta(key)).await;
        assert_eq!(
            (s, v["status"].as_str(), v["event_id"].as_str()),
            (200, Some("duplicate"), Some(first.as_str())),
            "a replay under Idempotency-Key {key}"
        );
    }

    // The generic hmac scheme still honours the sender's Idempotency-Key.
    let generic = |key: &str| {
        signed(&c, &gw.url("/hooks/generic"), SECRET, "same").header("Idempotency-Key", key)
    };
    let (s1, a, _) = answer(generic("k-1")).await;
    let (s2, _, _) = answer(generic("k-2")).await;
    let (s3, v, _) = answer(generic("k-1")).await;
    assert_eq!((s1, s2, s3), (202, 202, 200));
    assert_eq!(v["event_id"], a["event_id"]);
    // Each request's line names its key: the sender's id is what an operator is handed.
    let log = gw.log();
    for key in ["header:k-1", "header:k-2"] {
        assert!(
            log.lines()
                .any(|l| l.contains("outcome=\"accepted\"")
                    && l.contains(&format!("key=\"{key}\" "))),
            "{key}: {log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("outcome=\"duplicate\"") && l.contains("key=\"header:k-1\" ")),
        "{log}"
    );

    gw.wait_event_state(&first, "delivered", Duration::from_secs(10))
        .await;
    let delivered = up.wait_delivered(3, Duration::from_secs(10)).await;
    let to = |p: &str| delivered.iter().filter(|r| r.uri.starts_with(p)).count();
    assert_eq!((to("/meta"), to("/generic")), (1, 2), "{delivered:?}");
}

/// `allow_ips` behind a trusted proxy reads every `X-Forwarded-For` line, in order, as one
/// list (RFC 9110 §5.3): a proxy that appends its own line (HAProxy `option forwardfor`) names
/// the client there, and the client's forged first line cannot stand in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_ips_reads_every_forwarded_for_line() {
    let f = fixture("trusted_proxies = [\"127.0.0.1/32\"]").await;
    let addr = f.gw.ingress;
    let send = move |lines: &[&str]| {
        let xff: String = lines
            .iter()
            .map(|l| format!("X-Forwarded-For: {l}\r\n"))
            .collect();
        let req = format!(
            "POST /hooks/private HTTP/1.1\r\nHost: x\r\n{xff}Content-Length: 1\r\nConnection: close\r\n\r\nx"
        );
        raw_exchange(addr, &[req.as_bytes()], Duration::ZERO).0
    };
    let (forged, honest, one_line) = tokio::task::spawn_blocking(move || {
        (
            // The client forges an allowed address; the proxy appends the one it saw.
            send(&["10.1.2.3", "203.0.113.7"]),
            // The reverse: the client's own line is outside, the proxy saw an allowed address.
            send(&["203.0.113.7", "10.1.2.3"]),
            // The same forgery within one line, for comparison.
            send(&["10.1.2.3, 203.0.113.7"]),
        )
    })
    .await
    .unwrap();
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    assert!(forged.contains("\"forbidden\""), "{forged}");
    assert!(honest.starts_with("HTTP/1.1 202"), "{honest}");
    assert!(one_line.starts_with("HTTP/1.1 403"), "{one_line}");
}
