//! `mode = "proxy"` (SPEC §3, §5): verify, forward at once, relay the upstream's answer; 502
//! when it cannot be reached, 504 when it does not answer within `forward.timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

const SECRET: &str = "proxy-secret";

fn proxy_route(name: &str, url: &str) -> String {
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
timeout = "500ms"
"#
    )
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
    let gw = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), "", &routes),
    );
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
    let gw = Gateway::start(
        dir.path(),
        &config(
            &Backend::Embedded,
            dir.path(),
            "",
            &proxy_route("live", &up.url("/cmd")),
        ),
    );
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
