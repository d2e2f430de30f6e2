//! The admin API's event view (SPEC §7) never shows a route's secret: static tokens and
//! `Authorization` credentials are recorded and forwarded as received, but masked on display.
//! Events are found by the id their sender gave them (`?key=`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_view_masks_static_tokens_and_authorization() {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.always(200);
    let routes = format!(
        r#"
[[route]]
name = "gl"
path = "/gl"
[route.verify]
scheme = "gitlab"
secrets = ["gl-token-s3cret"]
[route.forward]
url = "{gl}"

[[route]]
name = "okta"
path = "/okta"
[route.verify]
scheme = "okta"
secrets = ["okta-s3cret"]
signature_header = "X-Okta-Token"
[route.forward]
url = "{okta}"

[[route]]
name = "basic"
path = "/basic"
[route.verify]
scheme = "basic"
secrets = ["user:basic-s3cret"]
[route.forward]
url = "{basic}"
"#,
        gl = up.url("/gl"),
        okta = up.url("/okta"),
        basic = up.url("/basic"),
    );
    let gw = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), "", &routes),
    );
    let c = reqwest::Client::new();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "user:basic-s3cret"
        )
    );
    let sends: [(&str, &str, &str); 3] = [
        ("/gl", "x-gitlab-token", "gl-token-s3cret"),
        ("/okta", "x-okta-token", "okta-s3cret"),
        ("/basic", "authorization", &basic),
    ];
    for (path, header, value) in sends {
        let r = c
            .post(gw.url(path))
            .header(header, value)
            .header("x-kept", "visible")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{path}");
        let id = r.json::<serde_json::Value>().await.unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string();
        let ev = gw
            .wait_event_state(&id, "delivered", Duration::from_secs(10))
            .await;
        let text = ev.to_string();
        assert!(!text.contains(value), "{path}: secret shown: {text}");
        let headers = ev["headers"].as_array().unwrap();
        let shown = |name: &str| {
            headers
                .iter()
                .find(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
                .map(|p| p[1].clone())
        };
        assert_eq!(shown(header), Some("[redacted]".into()), "{path}: {text}");
        // An okta event shows only harmless headers: its token header is the hook's choice.
        let kept = if path == "/okta" {
            "[redacted]"
        } else {
            "visible"
        };
        assert_eq!(shown("x-kept"), Some(kept.into()), "{path}: {text}");
        assert_eq!(shown("accept"), Some("*/*".into()), "{path}: {text}");
    }
    // A route since removed is masked by its scheme: the gitlab token of an event recorded
    // under a route the config no longer has stays hidden.
    let gl_id = gw.admin_json("/admin/events?route=gl").await["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let without_gl = routes[routes.find("[[route]]\nname = \"okta\"").unwrap()..].to_string();
    gw.reload(
        &config(&Backend::Embedded, dir.path(), "", &without_gl),
        "ok",
    )
    .await;
    let r = c.post(gw.url("/gl")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404, "route gl is gone");
    let ev = gw.admin_json(&format!("/admin/events/{gl_id}")).await;
    assert_eq!(ev["route"], "gl", "{ev}");
    assert!(!ev.to_string().contains("gl-token-s3cret"), "{ev}");

    // The upstream still received the credentials as sent (forwarded unchanged).
    let got = up.received();
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .any(|r| r.header("x-gitlab-token") == Some("gl-token-s3cret")));
    assert!(got
        .iter()
        .any(|r| r.header("authorization") == Some(basic.as_str())));
}

/// A route with no verification, de-duplicated by `key`, forwarding to `up`.
fn unsigned_route(name: &str, key: &str, up: &Upstream) -> String {
    format!(
        "\n[[route]]\nname = \"{name}\"\npath = \"/{name}\"\n[route.verify]\nscheme = \"none\"\n\
         [route.dedupe]\nkey = \"{key}\"\n[route.forward]\nurl = \"{}\"\n",
        up.url("/in")
    )
}

/// `GET path` on `gw`'s admin port, which must be answered 400: its JSON body.
async fn refused(gw: &Gateway, path: &str) -> serde_json::Value {
    let r = reqwest::get(gw.admin_url(path)).await.unwrap();
    assert_eq!(r.status(), 400, "{path}");
    r.json().await.unwrap()
}

/// `hookgate events … ARGS` against `gw`'s admin port with the config in `dir`: its stdout,
/// after asserting it succeeded.
fn events_cli(dir: &std::path::Path, gw: &Gateway, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "-c"])
        .arg(dir.join("hookgate.toml"))
        .args(["--admin", &format!("http://{}", gw.admin)])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /admin/events?key=` and `hookgate events list --key` find events by the id their
/// sender gave them, whichever kind of dedupe key the route records (`json:`, `header:`, a body
/// hash spelled out), with the route and state filters, on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_found_by_their_dedupe_key() {
    use sha2::Digest;
    let redis = RedisServer::start();
    for backend in [Backend::Embedded, Backend::Redis(redis.url())] {
        let up = Upstream::start().await;
        let dir = tempdir();
        let route = |name: &str, key: &str| unsigned_route(name, key, &up);
        let routes = [
            route("json", "json:/id"),
            route("hdr", "header:Idempotency-Key"),
            route("sha", "body-sha256"),
        ]
        .concat();
        let gw = Gateway::start(dir.path(), &config(&backend, dir.path(), "", &routes));
        let c = reqwest::Client::new();
        let send = async |path: &str, key: Option<&str>, body: &str| {
            let mut req = c.post(gw.url(path)).body(body.to_string());
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            accepted(req).await
        };
        let json1 = send("/json", None, r#"{"id":"evt_1"}"#).await;
        let json2 = send("/json", None, r#"{"id":"evt_2"}"#).await;
        let hdr1 = send("/hdr", Some("evt_1"), "same id, another route").await;
        let sha = send("/sha", None, "x").await;
        let found = async |query: &str| -> Vec<String> {
            let v = gw.admin_json(&format!("/admin/events?{query}")).await;
            v["events"]
                .as_array()
                .unwrap_or_else(|| panic!("{query}: {v}"))
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            found("key=evt_1").await,
            vec![hdr1.clone(), json1.clone()],
            "{backend:?}: newest first, every route"
        );
        assert_eq!(
            found("key=evt_1&route=json").await,
            vec![json1.clone()],
            "{backend:?}"
        );
        assert_eq!(found("key=evt_2").await, vec![json2.clone()], "{backend:?}");
        assert_eq!(
            found("key=json%3Aevt_2").await,
            vec![json2.clone()],
            "{backend:?}: a recorded key spelled out"
        );
        let hash = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"x")));
        assert_eq!(
            found(&format!("key={hash}")).await,
            vec![sha.clone()],
            "{backend:?}"
        );
        assert_eq!(
            found("key=evt_3").await,
            Vec::<String>::new(),
            "{backend:?}"
        );
        let none = gw.admin_json("/admin/events?key=evt_3").await;
        assert!(
            none["note"].as_str().unwrap().contains("dedupe"),
            "an empty answer by key says where else to look: {none}"
        );
        let some = gw.admin_json("/admin/events?key=evt_2").await;
        assert!(some.get("note").is_none(), "{some}");
        assert_eq!(
            found("key=evt_1&limit=1").await,
            vec![hdr1.clone()],
            "{backend:?}"
        );
        gw.wait_event_state(&json1, "delivered", Duration::from_secs(10))
            .await;
        assert_eq!(
            found("key=evt_1&route=json&state=delivered").await,
            vec![json1.clone()],
            "{backend:?}"
        );
        assert_eq!(
            found("key=evt_1&state=dead").await,
            Vec::<String>::new(),
            "{backend:?}"
        );

        let long = "k".repeat(9_000);
        let r = c
            .get(gw.admin_url(&format!("/admin/events?key={long}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{backend:?}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "invalid_key"
        );
        // A misspelt filter or a page larger than the most one holds is refused, not ignored.
        for (query, code) in [
            ("rout=json", "unknown_parameter"),
            ("key=", "empty_parameter"),
            ("route=&state=dead", "empty_parameter"),
            ("limit=5000", "invalid_limit"),
            ("limit=0", "invalid_limit"),
            ("state=Dead", "invalid_state"),
            // Which of two would apply is a guess.
            ("state=dead&state=pending", "repeated_parameter"),
            ("limit=2&key=a&limit=3", "repeated_parameter"),
        ] {
            let v = refused(&gw, &format!("/admin/events?{query}")).await;
            assert_eq!(v["error"], code, "{query}: {v}");
            assert!(v["detail"].is_string(), "{query}: {v}");
        }

        let stdout = events_cli(dir.path(), &gw, &["list", "--key", "evt_2"]);
        assert!(
            stdout.contains(&json2) && !stdout.contains(&json1),
            "{stdout}"
        );
    }
}

/// `GET /admin/events` pages: a full page names the `before=` that continues it (`next`),
/// and following it lists every event once, in the order of one big page, through ties of
/// events received in the same millisecond (sent at once), with the filters; both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_page_by_page() {
    let redis = RedisServer::start();
    for backend in [Backend::Embedded, Backend::Redis(redis.url())] {
        let up = Upstream::start().await;
        let dir = tempdir();
        let routes = [
            unsigned_route("a", "header:Idempotency-Key", &up),
            unsigned_route("b", "header:Idempotency-Key", &up),
        ]
        .concat();
        let gw = Gateway::start(dir.path(), &config(&backend, dir.path(), "", &routes));
        let c = reqwest::Client::new();
        let mut sent = Vec::new();
        for round in 0..3 {
            let batch = (0..10).map(|i| {
                let path = if i % 3 == 0 { "/b" } else { "/a" };
                accepted(
                    c.post(gw.url(path))
                        .header("Idempotency-Key", format!("k{round}-{i}"))
                        .body("x"),
                )
            });
            sent.extend(futures_util::future::join_all(batch).await);
        }
        let page = async |query: &str| -> (Vec<String>, Option<String>) {
            let v = gw.admin_json(&format!("/admin/events?{query}")).await;
            let ids = v["events"]
                .as_array()
                .unwrap_or_else(|| panic!("{query}: {v}"))
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string())
                .collect();
            (ids, v["next"].as_str().map(str::to_string))
        };
        for filter in ["", "route=a&"] {
            let (all, next) = page(&format!("{filter}limit=1000")).await;
            assert_eq!(next, None, "{backend:?}: a page not full has no next");
            let expect = if filter.is_empty() { 30 } else { 18 };
            assert_eq!(all.len(), expect, "{backend:?} {filter}");
            let (mut paged, mut before) = (Vec::new(), None::<String>);
            loop {
                let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
                let (ids, next) = page(&format!("{filter}limit=7{cursor}")).await;
                assert!(ids.len() <= 7);
                paged.extend(ids);
                match next {
                    Some(n) => before = Some(n),
                    None => break,
                }
                assert!(paged.len() <= expect, "{backend:?}: pages repeat");
            }
            assert_eq!(
                paged, all,
                "{backend:?} {filter}: pages in the order of one"
            );
        }
        let mut every = sent.clone();
        every.sort();
        let (mut all, _) = page("limit=1000").await;
        all.sort();
        assert_eq!(all, every, "{backend:?}");
        // A time: the events received before it.
        let (before_all, _) = page("limit=1000&before=2000-01-01T00:00:00Z").await;
        assert!(before_all.is_empty(), "{backend:?}: {before_all:?}");
        let (after_all, _) = page("limit=1000&before=2100-01-01T00:00:00Z").await;
        assert_eq!(after_all.len(), 30, "{backend:?}");

        for (query, code) in [
            ("before=evt_1", "invalid_before"),
            // A UUID, but not one of hookgate's (v4).
            (
                "before=0b6f9c2e-3f5d-4c1a-9a57-2f0e4d1b8a6c",
                "invalid_before",
            ),
            ("before=", "empty_parameter"),
        ] {
            let v = refused(&gw, &format!("/admin/events?{query}")).await;
            assert_eq!(v["error"], code, "{query}: {v}");
        }
        let (first, next) = page("limit=2").await;
        let next = next.unwrap();
        // Any spelling of the id continues at the same place.
        let (hyphenated, _) = page(&format!("limit=2&before={next}")).await;
        let (plain, _) = page(&format!(
            "limit=2&before={}",
            next.replace('-', "").to_uppercase()
        ))
        .await;
        assert_eq!(plain, hyphenated, "{backend:?}");
        let stdout = events_cli(
            dir.path(),
            &gw,
            &["list", "--limit", "2", "--before", &next],
        );
        let (second, _) = page(&format!("limit=2&before={next}")).await;
        assert!(
            second.iter().all(|id| stdout.contains(id)) && !stdout.contains(&first[0]),
            "{stdout}"
        );
    }
}

/// A dead letter nobody wants is discarded (`DELETE /admin/events/{id}`, `events discard`):
/// gone with its attempt log, no longer counted as dead; its key still answers a redelivery
/// as a duplicate. A pending event cannot be discarded. Both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_is_discarded_and_only_a_dead_one() {
    let redis = RedisServer::start();
    for backend in [Backend::Embedded, Backend::Redis(redis.url())] {
        let up = Upstream::start().await;
        let dir = tempdir();
        let route = unsigned_route("d", "header:Idempotency-Key", &up);
        let gw = Gateway::start(dir.path(), &config(&backend, dir.path(), "", &route));
        let c = reqwest::Client::new();
        let send = async |key: &str| {
            c.post(gw.url("/d"))
                .header("Idempotency-Key", key)
                .body("x")
                .send()
                .await
                .unwrap()
        };
        up.fail_next(1, 400);
        let r = send("unwanted").await;
        assert_eq!(r.status(), 202, "{backend:?}");
        let dead = r.json::<serde_json::Value>().await.unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string();
        gw.wait_event_state(&dead, "dead", Duration::from_secs(10))
            .await;
        up.hold();
        let r = send("wanted").await;
        let pending = r.json::<serde_json::Value>().await.unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string();

        let delete = async |id: &str| {
            let r = c
                .delete(gw.admin_url(&format!("/admin/events/{id}")))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        };
        let (status, v) = delete(&pending).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (409, Some("not_dead")),
            "{backend:?}: {v}"
        );
        up.release();

        // Any spelling of the UUID names the event (an id copied from a tool that upper-cases).
        let shown = c
            .get(gw.admin_url(&format!(
                "/admin/events/{}",
                dead.to_uppercase().replace('-', "")
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(shown.status(), 200, "{backend:?}");
        let stdout = events_cli(dir.path(), &gw, &["discard", &dead]);
        assert!(stdout.contains("discarded"), "{stdout}");

        let r = c
            .get(gw.admin_url(&format!("/admin/events/{dead}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{backend:?}: gone");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unknown_event");
        assert!(
            v["detail"].as_str().unwrap().contains("discarded"),
            "a 404 for an id hookgate answered with says why it may be gone: {v}"
        );
        // A provider's id where an event id belongs (what an operator is handed) is said to
        // be one, with where to look it up, not "never recorded".
        let r = c
            .get(gw.admin_url("/admin/events/evt_1QfinanceX"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = r.json().await.unwrap();
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("not a hookgate event id") && detail.contains("key="),
            "{v}"
        );
        // Its attempt log went with it.
        match &backend {
            Backend::Embedded => {
                let db = rusqlite::Connection::open_with_flags(
                    dir.path().join("data/hookgate.db"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                let n: i64 = db
                    .query_row(
                        "SELECT (SELECT COUNT(*) FROM attempts WHERE event_id = ?1)
                              + (SELECT COUNT(*) FROM events WHERE id = ?1)",
                        [&dead],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(n, 0, "no row of the discarded event is left");
                let orphans: i64 = db
                    .query_row(
                        "SELECT (SELECT COUNT(*) FROM payloads) - (SELECT COUNT(*) FROM events)",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(orphans, 0, "its headers and body went too");
            }
            Backend::Redis(url) => {
                let mut con = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("*{dead}*"))
                    .query(&mut con)
                    .unwrap();
                assert!(
                    keys.is_empty(),
                    "no key of the discarded event is left: {keys:?}"
                );
            }
        }
        assert_eq!(delete(&dead).await.0, 404, "{backend:?}: once");
        let routes = gw.admin_json("/admin/routes").await;
        assert_eq!(routes["routes"][0]["dead"], 0, "{backend:?}: {routes}");
        assert!(gw.log().contains("dead event discarded"), "{backend:?}");
        // Its key is still known: a redelivery is a duplicate, not delivered again.
        assert_eq!(send("unwanted").await.status(), 200, "{backend:?}");
        gw.wait_event_state(&pending, "delivered", Duration::from_secs(10))
            .await;
        // An unsigned route's duplicate is logged as one, not as a provider's re-signed retry.
        let log = gw.log();
        let line = log
            .lines()
            .find(|l| l.contains("outcome=\"duplicate\""))
            .unwrap_or_else(|| panic!("{backend:?}: {log}"));
        assert!(
            line.contains("request: duplicate") && !line.contains("re-signed"),
            "{backend:?}: {line}"
        );
    }
}
