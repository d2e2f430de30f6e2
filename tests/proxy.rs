//! `mode = "proxy"` (SPEC §3, §5): verify, forward at once, relay the upstream's answer; 502
//! when it cannot be reached, 504 when it does not answer within `forward.timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

const SECRET: &str = "proxy-secret";

fn proxy_route(name: &str, url: &str) -> String {
    proxy_route_timed(name, url, "500ms")
}

/// `proxy_route` with its own `forward.timeout`.
fn proxy_route_timed(name: &str, url: &str, timeout: &str) -> String {
    format!(
        r#"
[[route]]
name = "{name}"
path = "/p/{name}"
mode = "proxy"
[route.verify]
scheme = "hmac"
secrets = ["{SECRET}"]
[route.forward]
url = "{url}"
timeout = "{timeout}"
"#
    )
}

/// A gateway on the embedded store with these routes (and `[server]` lines).
fn proxy_gateway(dir: &std::path::Path, server_extra: &str, routes: &str) -> Gateway {
    Gateway::start(dir, &config(&Backend::Embedded, dir, server_extra, routes))
}

/// An answer of `n` bytes with its `Content-Length`, for `raw_upstream`.
fn sized_answer(n: usize) -> &'static [u8] {
    let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + n, b'a');
    Box::leak(answer.into_boxed_slice())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_relays_the_upstream_answer_or_502_504() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    let routes = [
        proxy_route("live", &up.url("/cmd")),
        proxy_route("dead", &dead),
    ]
    .concat();
    let gw = proxy_gateway(dir.path(), "", &routes);
    let c = reqwest::Client::new();

    up.push(Plan::Status(201));
    let r = signed(&c, &gw.url("/p/live?x=1"), SECRET, "command=/deploy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "the upstream's own status");
    assert_eq!(
        r.headers()["x-upstream"],
        "test-upstream",
        "the upstream's headers"
    );
    assert_eq!(
        r.text().await.unwrap(),
        "upstream says 201",
        "the upstream's body"
    );
    let got = up.received().remove(0);
    assert_eq!(&got.body[..], b"command=/deploy");
    assert_eq!(got.uri, "/cmd?x=1");
    assert_eq!(got.header("hookgate-verified"), Some("hmac"));
    assert!(got.header("hookgate-event-id").is_some());

    // Rejections stay as they are, and nothing reaches the upstream.
    let r = c
        .post(gw.url("/p/live"))
        .header("X-Signature", "00")
        .header("X-Timestamp", now_secs().to_string())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.received().len(), 1);

    // An upstream error status is relayed as is, not retried.
    up.push(Plan::Status(500));
    let r = signed(&c, &gw.url("/p/live"), SECRET, "y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(up.received().len(), 2);

    let r = signed(&c, &gw.url("/p/dead"), SECRET, "z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "bad_gateway"
    );

    up.push(Plan::Delay(Duration::from_secs(2), 200));
    let r = signed(&c, &gw.url("/p/live"), SECRET, "slow")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "gateway_timeout"
    );

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"hookgate_requests_total{route="live",outcome="proxied"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"hookgate_requests_total{route="dead",outcome="bad_gateway"} 1"#));
    assert!(
        metrics.contains(r#"hookgate_requests_total{route="live",outcome="gateway_timeout"} 1"#)
    );
    let events = gw.admin_json("/admin/events").await;
    assert_eq!(
        events["events"].as_array().unwrap().len(),
        0,
        "proxied requests are not queued for delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_drops_the_headers_the_upstreams_connection_header_names() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let gw = proxy_gateway(dir.path(), "", &proxy_route("live", &up.url("/cmd")));
    let c = reqwest::Client::new();

    // Connection-specific headers of the upstream's hop (RFC 9110 §7.6.1), one named in a
    // value with a non-UTF-8 token, one in a second Connection line.
    up.push(Plan::Headers(
        200,
        vec![
            ("connection", b"X-Up-Secret, caf\xe9"),
            ("connection", b"x-up-other"),
            ("x-up-secret", b"leaked"),
            ("x-up-other", b"leaked too"),
            ("x-up-kept", b"kept"),
        ],
    ));
    let r = signed(&c, &gw.url("/p/live"), SECRET, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-up-kept"], "kept", "other upstream headers relayed");
    assert!(
        h.get("x-up-secret").is_none() && h.get("x-up-other").is_none(),
        "headers the upstream's Connection names are its hop's, not the client's: {h:?}"
    );
}

/// An upstream on loopback that answers every request with `answer` (raw bytes, whatever they
/// say) once it has read the request's head and body, then closes the connection.
async fn raw_upstream(answer: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as many body bytes as it declared.
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}/up")
}

/// Answers no upstream may pass on are a 502 that says why, in the log: a `101` as final
/// status (it would switch the sender's connection to a protocol it never asked for), a
/// transfer coding hookgate does not decode (the sender would get gzip bytes marked as
/// nothing), a body over the 10 MiB relayed (refused from its declared length, before it is
/// read), and an upstream that cannot be reached. An upstream's own 502 is relayed and counted
/// as `proxied`, not as the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_answers_it_cannot_relay_are_a_502_that_says_why() {
    let dir = tempdir();
    let switch = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let gzip = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let huge =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 11534336\r\n\r\nnot all of it").await;
    let own502 = raw_upstream(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\nmine").await;
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    let routes = [
        proxy_route("switch", &switch),
        proxy_route("gzip", &gzip),
        proxy_route("huge", &huge),
        proxy_route("own502", &own502),
        proxy_route("dead", &dead),
    ]
    .concat();
    let gw = proxy_gateway(dir.path(), "", &routes);
    let c = reqwest::Client::new();
    for (route, why) in [
        (
            "switch",
            "the upstream answered 101 Switching Protocols as its final status",
        ),
        (
            "gzip",
            "Transfer-Encoding gzip, which hookgate does not decode",
        ),
        ("huge", "over the 10485760 bytes relayed (11534336 bytes)"),
        ("dead", "Connection refused"),
    ] {
        let r = signed(&c, &gw.url(&format!("/p/{route}")), SECRET, "x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{route}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "bad_gateway"
        );
        let log = gw.log();
        assert!(
            log.lines()
                .any(|l| l.contains("no answer from the upstream to relay")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(why)),
            "{route}: {why:?} not in:\n{log}"
        );
        assert_eq!(
            gw.counter(&format!(
                "hookgate_requests_total{{route=\"{route}\",outcome=\"bad_gateway\"}}"
            ))
            .await,
            1.0
        );
    }
    let r = signed(&c, &gw.url("/p/own502"), SECRET, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.text().await.unwrap(), "mine", "the upstream's own answer");
    assert_eq!(
        gw.counter("hookgate_requests_total{route=\"own502\",outcome=\"proxied\"}")
            .await,
        1.0
    );
}

/// `forward.concurrency` holds in proxy mode too: with one request out to a slow upstream, a
/// second waits for it up to half of `forward.timeout`, then is answered 503 + Retry-After
/// without being sent (the legacy app behind is not flooded); once the first is answered, the
/// next goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_to_forward_concurrency() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let route = proxy_route_timed("one", &up.url("/cmd"), "2s") + "concurrency = 1\n";
    let gw = proxy_gateway(dir.path(), "", &route);
    let c = reqwest::Client::new();
    up.hold();
    let first = tokio::spawn(signed(&c, &gw.url("/p/one"), SECRET, "first").send());
    wait_until(
        Duration::from_secs(10),
        "the first request out",
        async || up.arrivals().len() == 1,
    )
    .await;
    let r = signed(&c, &gw.url("/p/one"), SECRET, "second")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(up.arrivals().len(), 1, "the second was not sent");
    up.release();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let r = signed(&c, &gw.url("/p/one"), SECRET, "third")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.counter("hookgate_requests_total{route=\"one\",outcome=\"upstream_busy\"}")
            .await,
        1.0
    );
    assert!(gw
        .log()
        .contains("forward.concurrency requests were out to the upstream"));
}

/// The upstream's answer counts against `server.max_body_memory` with the request's body, as
/// it arrives: one larger than the room left is a 502 that says so (an upstream answering 10
/// MiB to each of many requests took 14 MB of memory per answer), and nothing stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_answers_count_against_max_body_memory() {
    let dir = tempdir();
    let big = raw_upstream(sized_answer(614_400)).await;
    // The same without a length: chunked, in 64 KiB chunks.
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.resize(chunked.len() + 65_536, b'c');
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let lengthless = raw_upstream(Box::leak(chunked.into_boxed_slice())).await;
    // A HEAD's answer declares what a GET would get: no body to hold, and the length relayed.
    let head = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n").await;
    let routes = [
        proxy_route_timed("big", &big, "5s"),
        proxy_route_timed("unsized", &lengthless, "5s"),
        proxy_route_timed("head", &head, "5s").replace("mode = ", "methods = [\"HEAD\"]\nmode = "),
    ]
    .concat();
    let gw = proxy_gateway(
        dir.path(),
        "max_body = \"64KiB\"\nmax_body_memory = \"512KiB\"",
        &routes,
    );
    let c = reqwest::Client::new();
    let r = signed(&c, &gw.url("/p/big"), SECRET, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        gw.log().contains(
            "the upstream's answer (614400 bytes) does not fit in server.max_body_memory"
        ),
        "{}",
        gw.log()
    );
    let r = signed(&c, &gw.url("/p/unsized"), SECRET, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(gw
        .log()
        .lines()
        .any(|l| l.contains("route=\"unsized\"")
            && l.contains("does not fit in server.max_body_memory")));
    let ts = now_secs();
    let r = c
        .head(gw.url("/p/head"))
        .header("X-Timestamp", ts.to_string())
        .header("X-Signature", hmac_sign(SECRET, ts, b""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    assert_eq!(r.headers()["content-length"], "20000000");
    assert_eq!(gw.counter("hookgate_body_memory_bytes").await, 0.0);
}

/// A proxied answer stays counted until the sender has taken it, not only until it was built:
/// its buffer carries the count and is freed when the connection has written its last byte.
/// The sender here has a tiny receive buffer and reads only the head at first, so most of a
/// 10 MiB answer cannot have left the gateway (its send buffer is at most `tcp_wmem`'s 4 MiB
/// by default); once the sender reads it all, the count goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_answers_waiting_for_a_slow_reader_still_count() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TEN_MIB: usize = 10 << 20;
    let dir = tempdir();
    let up = raw_upstream(sized_answer(TEN_MIB)).await;
    let gw = proxy_gateway(dir.path(), "", &proxy_route_timed("slow", &up, "5s"));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(gw.ingress).await.unwrap();
    let ts = now_secs();
    s.write_all(
        format!(
            "POST /p/slow HTTP/1.1\r\nHost: gw\r\nX-Timestamp: {ts}\r\nX-Signature: {}\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nx",
            hmac_sign(SECRET, ts, b"x")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 64];
    let n = s.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    let held = "hookgate_body_memory_bytes";
    assert!(
        gw.counter(held).await >= TEN_MIB as f64,
        "the answer waiting for the sender is counted: {}",
        gw.counter(held).await
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(n + rest.len() > TEN_MIB, "the whole answer arrived");
    wait_until(
        Duration::from_secs(10),
        "the count given back",
        async || gw.counter(held).await == 0.0,
    )
    .await;
}

/// A proxy route records nothing, so it de-duplicates nothing, but `required = true` still
/// refuses a request without its key (SPEC §5: every rejection row stays as it is in proxy
/// mode), and `check` warns that `ttl` (and `key`, unless required) does nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refuses_a_request_without_a_required_key() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let route = format!(
        "{}[route.dedupe]\nkey = \"header:X-Command-Id\"\nrequired = true\nttl = \"1h\"\n",
        proxy_route("keyed", &up.url("/cmd"))
    );
    let cfg = config(&Backend::Embedded, dir.path(), "", &route);
    let file = dir.path().join("check.toml");
    std::fs::write(&file, &cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // `key` names what `required` demands; `ttl` does nothing here.
    assert!(
        err.contains("warning: route[0].dedupe.ttl: is not used with mode = \"proxy\""),
        "{err}"
    );
    assert!(!err.contains("route[0].dedupe.key"), "{err}");

    let gw = proxy_gateway(dir.path(), "", &route);
    let c = reqwest::Client::new();
    let r = signed(&c, &gw.url("/p/keyed"), SECRET, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "missing_dedupe_key"
    );
    assert!(up.received().is_empty(), "nothing forwarded");
    up.push(Plan::Status(200));
    let r = signed(&c, &gw.url("/p/keyed"), SECRET, "x")
        .header("X-Command-Id", "c-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.received().len(), 1);
}
