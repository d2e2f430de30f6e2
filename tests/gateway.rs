//! End-to-end tests of the core loop (issue 2): the real binary, real sockets, a real upstream.
//! Tests of store-dependent behaviour take a `Backend` so they run against every store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const SECRET: &str = "s3cr3t-new";
const OLD_SECRET: &str = "s3cr3t-old";

fn hmac_route(name: &str, upstream: &str, extra_forward: &str, dedupe: &str) -> String {
    let backoff_max = if extra_forward.contains("backoff_max") {
        ""
    } else {
        "backoff_max = \"200ms\""
    };
    format!(
        r#"
[[route]]
name = "{name}"
path = "/hooks/{name}"
max_body = "4KiB"
[route.verify]
scheme = "hmac"
secrets = ["{OLD_SECRET}", "{SECRET}"]
{dedupe}
[route.forward]
url = "{upstream}"
timeout = "2s"
backoff_initial = "20ms"
{backoff_max}
{extra_forward}
"#
    )
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs an async test body once per backend available.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::support::Backend::Embedded).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                // One private redis-server per test, alive until the test ends.
                let server = super::support::RedisServer::start();
                super::$name(super::support::Backend::Redis(server.url())).await;
                drop(server);
            })*
        }
    };
}

backends!(
    dedupe_same_key_twice_delivers_once,
    dedupe_twenty_parallel_requests_deliver_once,
    dedupe_survives_restart,
    delivery_retries_then_delivers_at_attempt_three,
    delivery_permanent_4xx_is_dead_at_once,
    delivery_honours_retry_after,
    delivery_timeout_is_retried,
    delivery_attempts_exhausted_is_dead,
    hundred_events_with_twenty_percent_failures_all_delivered_once,
    sigkill_loses_no_acknowledged_event,
    a_retry_scheduled_beyond_backoff_max_is_made_due,
    replay_and_redrive_dead,
);

async fn dedupe_same_key_twice_delivers_once(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let send = || {
        signed(&c, &gw.url("/hooks/r"), SECRET, "{\"n\":1}")
            .header("Idempotency-Key", "k-1")
            .send()
    };
    let (s1, b1) = json(send().await.unwrap()).await;
    let (s2, b2) = json(send().await.unwrap()).await;
    assert_eq!((s1, b1["status"].as_str()), (202, Some("accepted")));
    assert_eq!((s2, b2["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(
        b1["event_id"], b2["event_id"],
        "a duplicate names the original"
    );
    up.wait_delivered(1, Duration::from_secs(10)).await;
    gw.wait_event_state(
        b1["event_id"].as_str().unwrap(),
        "delivered",
        Duration::from_secs(5),
    )
    .await;
    // A third copy after delivery is still a duplicate, and nothing more is forwarded.
    let (s3, _) = json(send().await.unwrap()).await;
    assert_eq!(s3, 200);
    assert_eq!(up.received().len(), 1);
    // The original shows how many copies were answered as duplicates, and when the last came
    // (the embedded store writes the counts within a second, with other writes).
    let path = format!("/admin/events/{}", b1["event_id"].as_str().unwrap());
    let mut ev = Value::Null;
    wait_until(Duration::from_secs(5), "both copies counted", async || {
        ev = gw.admin_json(&path).await;
        ev["duplicates"] == 2
    })
    .await;
    let last = ev["last_duplicate_at"].as_str().unwrap();
    assert!(
        last >= ev["received_at"].as_str().unwrap() && last.ends_with('Z'),
        "{ev:#}"
    );
}

async fn dedupe_twenty_parallel_requests_deliver_once(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let body = b"{\"same\":true}".to_vec();
    let reqs = (0..20).map(|_| {
        signed(&c, &gw.url("/hooks/r"), SECRET, body.clone())
            .header("Idempotency-Key", "same")
            .send()
    });
    let answers = futures_join_all(reqs).await;
    let mut ids = std::collections::HashSet::new();
    let (mut accepted, mut dups) = (0, 0);
    for r in answers {
        let (s, v) = json(r.unwrap()).await;
        match s {
            202 => accepted += 1,
            200 => dups += 1,
            other => panic!("unexpected {other}: {v}"),
        }
        ids.insert(v["event_id"].as_str().unwrap().to_string());
    }
    assert_eq!((accepted, dups), (1, 19));
    assert_eq!(ids.len(), 1, "every answer names the one recorded event");
    let id = ids.into_iter().next().unwrap();
    gw.wait_event_state(&id, "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(up.received().len(), 1);
    let path = format!("/admin/events/{id}");
    wait_until(
        Duration::from_secs(5),
        "every copy counted with the original",
        async || gw.admin_json(&path).await["duplicates"] == 19,
    )
    .await;
}

async fn dedupe_survives_restart(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", ""));
    let c = reqwest::Client::new();
    let mut gw = Gateway::start(dir.path(), &cfg);
    let (s, first) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "x")
            .header("Idempotency-Key", "k")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 202);
    up.wait_delivered(1, Duration::from_secs(10)).await;
    assert!(gw.terminate().success());
    let gw = Gateway::start(dir.path(), &cfg);
    let (s, again) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "x")
            .header("Idempotency-Key", "k")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &again["event_id"]), (200, &first["event_id"]));
    // A new event after the restart, delivered: the restarted worker has looked at what is
    // due, so the first event would have gone out again by now had the restart lost its
    // delivered state.
    let (s, fresh) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "y")
            .header("Idempotency-Key", "k2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 202);
    gw.wait_event_state(
        fresh["event_id"].as_str().unwrap(),
        "delivered",
        Duration::from_secs(10),
    )
    .await;
    let ids: Vec<_> = up
        .received()
        .iter()
        .map(|r| r.header("hookgate-event-id").unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [&first["event_id"], &fresh["event_id"]].map(|v| v.as_str().unwrap().to_string()),
        "each event delivered once; the duplicate recorded nothing"
    );
    let listed = gw.admin_json("/admin/events?route=r").await;
    assert_eq!(listed["events"].as_array().unwrap().len(), 2, "{listed}");
}

async fn delivery_retries_then_delivers_at_attempt_three(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.fail_next(2, 500);
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let (_, v) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "retry me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let id = v["event_id"].as_str().unwrap();
    let got = up.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("hookgate-attempt"), Some("3"));
    let all = up.received();
    assert_eq!(
        all.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    assert!(
        all.iter()
            .all(|r| r.header("hookgate-event-id") == Some(id)),
        "same event id on every attempt"
    );
    let ev = gw
        .wait_event_state(id, "delivered", Duration::from_secs(5))
        .await;
    let log = ev["attempt_log"].as_array().unwrap();
    let outcomes: Vec<_> = log
        .iter()
        .map(|a| {
            (
                a["n"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, "retry", Some(500)),
            (2, "retry", Some(500)),
            (3, "delivered", Some(200))
        ]
    );
    assert_eq!(log[0]["detail"], "HTTP 500: upstream says 500");
    assert!(log
        .iter()
        .all(|a| a["latency_ms"].is_u64() && a["started_at_ms"].is_i64()));
    // The same instant for people, in the form of the event's `received_at`.
    for a in log {
        let iso = a["started_at"].as_str().expect("started_at");
        let t = humantime::parse_rfc3339(iso).expect("RFC 3339");
        let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(ms, a["started_at_ms"].as_i64().unwrap(), "{iso}");
    }
    let metrics = gw.metrics().await;
    for line in [
        r#"hookgate_deliveries_total{route="r",outcome="retry"} 2"#,
        r#"hookgate_deliveries_total{route="r",outcome="delivered"} 1"#,
        r#"hookgate_delivery_duration_seconds_count{route="r"} 3"#,
        r#"hookgate_requests_total{route="r",outcome="accepted"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
}

async fn delivery_permanent_4xx_is_dead_at_once(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.fail_next(1, 400);
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let (_, v) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "bad for upstream")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ev = gw
        .wait_event_state(
            v["event_id"].as_str().unwrap(),
            "dead",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ev["attempt_log"].as_array().unwrap().len(), 1);
    assert!(
        ev["last_error"].as_str().unwrap().contains("HTTP 400"),
        "{ev}"
    );
    assert_eq!(up.received().len(), 1, "a permanent failure is not retried");
    let dead = gw.admin_json("/admin/events?route=r&state=dead").await;
    assert_eq!(dead["events"][0]["event_id"], v["event_id"]);
}

/// A redirect is not followed, and not a permanent failure either (SPEC §6 makes only "other
/// 4xx" permanent): retried, with where it pointed in the attempt's detail, so a receiver
/// redirecting during a deploy gets the event once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_retried_and_says_where_it_pointed() {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.push(Plan::Headers(
        302,
        vec![("location", b"https://moved.example/in")],
    ));
    let gw = Gateway::start(
        dir.path(),
        &config(
            &Backend::Embedded,
            dir.path(),
            "",
            &hmac_route("r", &up.url("/in"), "", ""),
        ),
    );
    let c = reqwest::Client::new();
    let id = accepted(signed(&c, &gw.url("/hooks/r"), SECRET, "redirected")).await;
    let ev = gw
        .wait_event_state(&id, "delivered", Duration::from_secs(10))
        .await;
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{ev}");
    assert_eq!(
        (log[0]["outcome"].as_str(), log[0]["status"].as_u64()),
        (Some("retry"), Some(302))
    );
    let detail = log[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("HTTP 302: redirect to \"https://moved.example/in\" not followed"),
        "{detail}"
    );
}

async fn delivery_honours_retry_after(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.push(Plan::RetryAfter(429, 1));
    let gw = Gateway::start(
        dir.path(),
        &config(
            &b,
            dir.path(),
            "",
            &hmac_route("r", &up.url("/in"), "backoff_max = \"5s\"", ""),
        ),
    );
    let c = reqwest::Client::new();
    signed(&c, &gw.url("/hooks/r"), SECRET, "slow down")
        .send()
        .await
        .unwrap();
    let got = up.wait_delivered(1, Duration::from_secs(10)).await;
    let all = up.received();
    assert_eq!(all.len(), 2);
    let gap = got[0].at.duration_since(all[0].at);
    // backoff_initial is 20ms; only Retry-After explains a wait of about a second.
    assert!(
        gap >= Duration::from_millis(900),
        "retried after {gap:?}, before Retry-After: 1"
    );
}

async fn delivery_timeout_is_retried(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.push(Plan::Delay(Duration::from_secs(3), 200));
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let (_, v) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "patience")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ev = gw
        .wait_event_state(
            v["event_id"].as_str().unwrap(),
            "delivered",
            Duration::from_secs(15),
        )
        .await;
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{ev:#}");
    assert_eq!(log[0]["outcome"], "retry");
    assert!(
        log[0]["detail"].as_str().unwrap().contains("timed out")
            || log[0]["detail"]
                .as_str()
                .unwrap()
                .contains("request failed"),
        "{ev:#}"
    );
    assert!(log[0]["status"].is_null());
}

async fn delivery_attempts_exhausted_is_dead(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.always(503);
    let gw = Gateway::start(
        dir.path(),
        &config(
            &b,
            dir.path(),
            "",
            &hmac_route("r", &up.url("/in"), "max_attempts = 3", ""),
        ),
    );
    let c = reqwest::Client::new();
    let (_, v) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "doomed")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ev = gw
        .wait_event_state(
            v["event_id"].as_str().unwrap(),
            "dead",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ev["attempt_log"].as_array().unwrap().len(), 3);
    assert!(
        ev["last_error"]
            .as_str()
            .unwrap()
            .contains("max_attempts (3)"),
        "{ev}"
    );
    assert_eq!(up.received().len(), 3);
}

async fn hundred_events_with_twenty_percent_failures_all_delivered_once(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.random_failure(0.2, 503);
    let gw = Gateway::start(
        dir.path(),
        &config(
            &b,
            dir.path(),
            "",
            &hmac_route("r", &up.url("/in"), "max_attempts = 30", ""),
        ),
    );
    let c = reqwest::Client::new();
    let mut ids = std::collections::HashSet::new();
    for i in 0..100 {
        let (s, v) = json(
            signed(&c, &gw.url("/hooks/r"), SECRET, format!("{{\"i\":{i}}}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 202);
        ids.insert(v["event_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 100);
    up.wait_delivered(100, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(10),
        "all 100 recorded as delivered",
        || async { gw.admin_json("/admin/routes").await["routes"][0]["delivered"] == 100 },
    )
    .await;
    let delivered = up.delivered();
    let mut seen = std::collections::HashMap::new();
    for r in &delivered {
        *seen
            .entry(r.header("hookgate-event-id").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 100, "every event delivered");
    assert!(
        seen.values().all(|n| *n == 1),
        "none delivered twice: {seen:?}"
    );
    assert!(seen.keys().all(|id| ids.contains(id)));
    assert!(
        up.received().len() > 100,
        "some attempts failed and were retried"
    );
}

/// Route `r` delivering to `up` with room for many retries, `backoff_max` apart at most.
fn retrying_config(b: &Backend, dir: &std::path::Path, up: &Upstream, backoff_max: &str) -> String {
    config(
        b,
        dir,
        "",
        &hmac_route(
            "r",
            &up.url("/in"),
            &format!("max_attempts = 100\nbackoff_max = \"{backoff_max}\""),
            "",
        ),
    )
}

async fn sigkill_loses_no_acknowledged_event(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.always(503);
    let cfg = retrying_config(&b, dir.path(), &up, "100ms");
    let mut gw = Gateway::start(dir.path(), &cfg);
    let c = reqwest::Client::new();
    let mut acked = std::collections::HashSet::new();
    for i in 0..50 {
        let (s, v) = json(
            signed(&c, &gw.url("/hooks/r"), SECRET, format!("event {i}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 202);
        acked.insert(v["event_id"].as_str().unwrap().to_string());
    }
    gw.kill9();
    let gw = Gateway::start(dir.path(), &cfg);
    // The start says what it takes up again.
    let log = gw.log();
    assert!(
        log.lines().any(
            |l| l.contains("at start, the store holds undelivered events")
                && l.contains("route=r")
                && l.contains("pending=50")
        ),
        "{log}"
    );
    up.always(200);
    up.wait_delivered(50, Duration::from_secs(30)).await;
    let delivered: std::collections::HashSet<String> = up
        .delivered()
        .iter()
        .map(|r| r.header("hookgate-event-id").unwrap().to_string())
        .collect();
    assert_eq!(
        delivered, acked,
        "every acknowledged event delivered after the restart"
    );
}

/// Retries are scheduled by the wall clock, never more than `backoff_max` ahead. A clock set
/// back by an hour (NTP stepping a clock that ran fast) left a retry an hour away, and the
/// event waited that long with its upstream back up. Modeled by moving the stopped gateway's
/// scheduled retry an hour ahead in its store, which is what the clock set back sees: after
/// the restart it is made due at once, and said so.
async fn a_retry_scheduled_beyond_backoff_max_is_made_due(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.always(503);
    let cfg = retrying_config(&b, dir.path(), &up, "1s");
    let mut gw = Gateway::start(dir.path(), &cfg);
    let c = reqwest::Client::new();
    let id = accepted(signed(&c, &gw.url("/hooks/r"), SECRET, "an hour late")).await;
    wait_until(Duration::from_secs(10), "a failed attempt", async || {
        !up.received().is_empty()
    })
    .await;
    assert!(gw.terminate().success());
    let hour = 3_600_000i64;
    match &b {
        Backend::Embedded => {
            let db = rusqlite::Connection::open(dir.path().join("data/hookgate.db")).unwrap();
            let n = db
                .execute(
                    "UPDATE events SET next_attempt_at = next_attempt_at + ?1
                     WHERE id = ?2 AND state = 'pending'",
                    rusqlite::params![hour, id],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
        Backend::Redis(url) => {
            let mut con = ::redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            let retry: Vec<String> = ::redis::cmd("KEYS")
                .arg("*:r}:retry")
                .query(&mut con)
                .unwrap();
            assert_eq!(retry.len(), 1, "{retry:?}");
            let at: i64 = ::redis::cmd("ZSCORE")
                .arg(&retry[0])
                .arg(&id)
                .query(&mut con)
                .unwrap();
            let ev = retry[0].replace(":retry", &format!(":ev:{id}"));
            let _: () = ::redis::cmd("ZADD")
                .arg(&retry[0])
                .arg(at + hour)
                .arg(&id)
                .query(&mut con)
                .unwrap();
            let _: () = ::redis::cmd("HSET")
                .arg(&ev)
                .arg("next_attempt_at")
                .arg(at + hour)
                .query(&mut con)
                .unwrap();
        }
    }
    up.always(200);
    let gw = Gateway::start(dir.path(), &cfg);
    let got = up.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("hookgate-event-id"), Some(id.as_str()));
    gw.wait_event_state(&id, "delivered", Duration::from_secs(5))
        .await;
    assert!(
        gw.log()
            .contains("retries were scheduled further ahead than forward.backoff_max (and a minute) allows now")
            && gw.log().contains("events=1"),
        "{}",
        gw.log()
    );
}

async fn replay_and_redrive_dead(b: Backend) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.fail_next(2, 410);
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let (_, a) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "a")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (_, bb) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "b")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (a, bb) = (
        a["event_id"].as_str().unwrap().to_string(),
        bb["event_id"].as_str().unwrap().to_string(),
    );
    gw.wait_event_state(&a, "dead", Duration::from_secs(10))
        .await;
    gw.wait_event_state(&bb, "dead", Duration::from_secs(10))
        .await;
    let r = c
        .post(gw.admin_url("/admin/routes/r/replay-dead"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["replayed"], 2);
    gw.wait_event_state(&a, "delivered", Duration::from_secs(10))
        .await;
    let ev = gw
        .wait_event_state(&bb, "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(ev["attempts"], 2);
    // Replaying a delivered event delivers it again, with the next attempt number.
    let r = c
        .post(gw.admin_url(&format!("/admin/events/{a}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_until(
        Duration::from_secs(10),
        "replayed event delivered again",
        || async {
            up.delivered()
                .iter()
                .filter(|r| r.header("hookgate-event-id") == Some(a.as_str()))
                .count()
                == 2
        },
    )
    .await;
    let again = up
        .delivered()
        .into_iter()
        .filter(|r| r.header("hookgate-event-id") == Some(a.as_str()))
        .last()
        .unwrap();
    assert_eq!(again.header("hookgate-attempt"), Some("3"));
    // Each replay is in the event's history: when, after which attempt, from which state.
    let mut ev = Value::Null;
    wait_until(
        Duration::from_secs(10),
        "the third attempt recorded",
        async || {
            ev = gw.admin_json(&format!("/admin/events/{a}")).await;
            ev["attempts"] == 3
        },
    )
    .await;
    let marks = |ev: &Value| -> Vec<(u64, String)> {
        ev["replays"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert!(r["at"].as_str().unwrap().ends_with('Z'), "{r}");
                assert!(r["at_ms"].as_i64().unwrap() > 0, "{r}");
                (
                    r["after_attempts"].as_u64().unwrap(),
                    r["was"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        marks(&ev),
        [(1, "dead".to_string()), (2, "delivered".to_string())],
        "{ev:#}"
    );
    assert_eq!(ev["attempt_log"].as_array().unwrap().len(), 3, "{ev:#}");
    let once = gw.admin_json(&format!("/admin/events/{bb}")).await;
    assert_eq!(marks(&once), [(1, "dead".to_string())], "{once:#}");
    let unknown = c
        .post(gw.admin_url("/admin/events/nope/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// `futures::future::join_all` without the dependency: spawn and await in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A replay that arrives while the event is out for delivery takes effect once that attempt is
/// recorded, without waiting for the worker's idle poll (5 s, counted from the replay's wake:
/// a worker that waited for it would deliver the replay 3.5 s or more after the first
/// attempt's 1.5 s answer). Embedded only: with Redis the
/// replayed entry is read while the old one is still leased and waits for the visibility
/// timeout (known, noted in docs/REDIS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replay_during_an_attempt_is_delivered_again_promptly() {
    let b = Backend::Embedded;
    let dir = tempdir();
    let up = Upstream::start().await;
    up.push(Plan::Delay(Duration::from_millis(1500), 200));
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &up.url("/in"), "", "")),
    );
    let c = reqwest::Client::new();
    let (_, a) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "slow")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The replay goes in once the first (1.5 s) attempt is out at the upstream.
    let id = a["event_id"].as_str().unwrap().to_string();
    up.wait_arrived(1, Duration::from_secs(10)).await;
    let r = c
        .post(gw.admin_url(&format!("/admin/events/{id}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let replayed = std::time::Instant::now();
    let got = up.wait_delivered(2, Duration::from_secs(15)).await;
    assert!(
        replayed < got[0].at,
        "the replay came after the first attempt was answered: it was not during one"
    );
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap < Duration::from_millis(2500),
        "the replay was delivered {gap:?} after the first attempt was answered"
    );
    assert!(got
        .iter()
        .all(|r| r.header("hookgate-event-id") == Some(id.as_str())));
}

/// What `withholding_upstream` counted, and what went wrong in it (checked by the test).
#[derive(Default)]
struct Withholding {
    requests: std::sync::atomic::AtomicUsize,
    problems: std::sync::Mutex<Vec<String>>,
}

/// An upstream that answers `200` with its headers at once, then sends part of its body and
/// holds the rest back for `hold`; counts the requests it received. Its own failures (an
/// accept or read error, a malformed request) are kept, not lost with a spawned task.
async fn withholding_upstream(hold: Duration) -> (String, std::sync::Arc<Withholding>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    let state = std::sync::Arc::new(Withholding::default());
    let st = state.clone();
    let problem = |st: &Withholding, p: String| st.problems.lock().unwrap().push(p);
    tokio::spawn(async move {
        loop {
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => sock,
                Err(e) => {
                    problem(&st, format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let st = st.clone();
            tokio::spawn(async move {
                // The whole request: its head, then Content-Length bytes of body.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |got: &[u8]| -> Result<bool, String> {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return Ok(false);
                    };
                    let head = String::from_utf8_lossy(&got[..end + 4]).to_ascii_lowercase();
                    let len = match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                        Some(v) => v.trim().parse::<usize>().map_err(|e| format!("{v}: {e}"))?,
                        None => 0,
                    };
                    Ok(got.len() >= end + 4 + len)
                };
                loop {
                    match complete(&got) {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => return problem(&st, format!("content-length {e}")),
                    }
                    match sock.read(&mut buf).await {
                        Ok(0) => return, // the gateway gave up on this connection
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => return problem(&st, format!("read: {e}")),
                    }
                }
                st.requests.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\naccepted, more ")
                    .await
                {
                    return problem(&st, format!("write: {e}"));
                }
                tokio::time::sleep(hold).await;
            });
        }
    });
    (url, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_decided_by_the_status_not_a_withheld_body() {
    let dir = tempdir();
    // forward.timeout is 2 s (hmac_route); the body is held back for longer.
    let (url, upstream) = withholding_upstream(Duration::from_secs(6)).await;
    let b = Backend::Embedded;
    let gw = Gateway::start(
        dir.path(),
        &config(&b, dir.path(), "", &hmac_route("r", &url, "", "")),
    );
    let c = reqwest::Client::new();
    let (s, v) = json(
        signed(&c, &gw.url("/hooks/r"), SECRET, "{\"slow\":\"body\"}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 202);
    let ev = gw
        .wait_event_state(
            v["event_id"].as_str().unwrap(),
            "delivered",
            Duration::from_secs(10),
        )
        .await;
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "delivered at the first attempt: {ev:#}");
    assert_eq!(log[0]["outcome"], "delivered");
    assert_eq!(log[0]["status"], 200);
    let detail = log[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("cut short") && detail.contains("accepted, more"),
        "what arrived is kept, and why it stops: {detail}"
    );
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the upstream got the event once"
    );
    let problems = upstream.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "test upstream: {problems:?}");
}

/// Redis lost an event while its retry waited (evicted, flushed, a failover to a replica that
/// lacked it): nothing can deliver it any more, and hookgate says so — an error line and
/// `hookgate_store_errors_total` — instead of dropping the due retry without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_event_redis_lost_is_reported_when_its_retry_falls_due() {
    let server = RedisServer::start();
    let b = Backend::Redis(server.url());
    let dir = tempdir();
    let up = Upstream::start().await;
    up.push(Plan::RetryAfter(503, 2));
    let gw = Gateway::start(
        dir.path(),
        &config(
            &b,
            dir.path(),
            "",
            &hmac_route("r", &up.url("/in"), "backoff_max = \"5s\"", ""),
        ),
    );
    let c = reqwest::Client::new();
    let id = accepted(signed(&c, &gw.url("/hooks/r"), SECRET, "to be lost")).await;
    // The first attempt is recorded (503, retry in 2 s); then Redis loses the event.
    let path = format!("/admin/events/{id}");
    wait_until(
        Duration::from_secs(10),
        "first attempt recorded",
        async || gw.admin_json(&path).await["attempts"] == 1,
    )
    .await;
    let mut con = ::redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("*ev:{id}"))
        .query(&mut con)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: i64 = ::redis::cmd("DEL").arg(&keys[0]).query(&mut con).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while gw.counter("hookgate_store_errors_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lost event was not reported; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.log().contains("event lost") && gw.log().contains(&id));
    assert_eq!(up.received().len(), 1, "never delivered after the loss");
}

/// A gateway whose route `c` (`forward`: an extra line of its `[route.forward]`) delivers to
/// an upstream that answers 503 to everything.
async fn failing_sink_gateway(forward: &str) -> (tempfile::TempDir, Upstream, Gateway) {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.always(503);
    let gw = Gateway::start(
        dir.path(),
        &config(
            &Backend::Embedded,
            dir.path(),
            "",
            &hmac_route("c", &up.url("/in"), forward, ""),
        ),
    );
    (dir, up, gw)
}

/// An open circuit waits for an event to probe the sink with. When every event it held went
/// dead (or, on a shared Redis store, another replica delivered them), nothing is held back:
/// the circuit closes, rather than keeping `hookgate_circuit_open` and its alert up for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_with_nothing_left_to_deliver_closes() {
    let (_dir, _up, gw) = failing_sink_gateway("max_attempts = 1").await;
    let c = reqwest::Client::new();
    let gauge = r#"hookgate_circuit_open{route="c"}"#;
    for i in 0..5 {
        accepted(signed(&c, &gw.url("/hooks/c"), SECRET, format!("gone-{i}"))).await;
    }
    wait_until(Duration::from_secs(10), "circuit open", async || {
        gw.log().contains("delivery circuit open")
    })
    .await;
    wait_until(Duration::from_secs(10), "all five dead", async || {
        gw.admin_json("/admin/routes").await["routes"][0]["dead"] == 5
    })
    .await;
    wait_until(Duration::from_secs(15), "circuit closed", async || {
        gw.counter(gauge).await == 0.0
            && gw.admin_json("/admin/routes").await["routes"][0]
                .get("circuit_open_since")
                .is_none()
    })
    .await;
    assert!(
        gw.log().contains("nothing left here to deliver"),
        "{}",
        gw.log()
    );
    // The sink still down: the next events open it again.
    for i in 0..5 {
        accepted(signed(
            &c,
            &gw.url("/hooks/c"),
            SECRET,
            format!("again-{i}"),
        ))
        .await;
    }
    wait_until(Duration::from_secs(10), "circuit open again", async || {
        gw.counter(gauge).await == 1.0
    })
    .await;
}

/// A sink that keeps failing opens the route's circuit: deliveries pause (so pending events'
/// `next_attempt_at` may pass with no attempt), and the operator sees it in the log and in
/// `hookgate_circuit_open`; the first answer closes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_is_logged_and_shown_as_a_gauge() {
    let (_dir, up, gw) = failing_sink_gateway("max_attempts = 1000").await;
    let c = reqwest::Client::new();
    let id = accepted(signed(&c, &gw.url("/hooks/c"), SECRET, "circuit")).await;
    let gauge = r#"hookgate_circuit_open{route="c"}"#;
    wait_until(Duration::from_secs(10), "circuit open", async || {
        gw.counter(gauge).await == 1.0
    })
    .await;
    assert!(gw.log().contains("delivery circuit open"), "{}", gw.log());
    // The admin API says so with the route, and with the event waiting behind it.
    let since = |v: &Value, field: &str| v[field].as_str().map(str::to_string);
    let routes = gw.admin_json("/admin/routes").await;
    let route = since(&routes["routes"][0], "circuit_open_since");
    assert!(
        route.as_deref().is_some_and(|t| t.ends_with('Z')),
        "{routes}"
    );
    let ev = gw.admin_json(&format!("/admin/events/{id}")).await;
    assert_eq!(ev["state"], "pending");
    assert_eq!(since(&ev, "route_circuit_open_since"), route, "{ev}");
    up.always(200);
    let ev = gw
        .wait_event_state(&id, "delivered", Duration::from_secs(30))
        .await;
    assert!(ev.get("route_circuit_open_since").is_none(), "{ev}");
    wait_until(Duration::from_secs(5), "circuit closed", async || {
        gw.counter(gauge).await == 0.0 && gw.log().contains("delivery circuit closed")
    })
    .await;
    let routes = gw.admin_json("/admin/routes").await;
    assert!(
        routes["routes"][0].get("circuit_open_since").is_none(),
        "{routes}"
    );
}

/// An operator's replay (after fixing the upstream) ends an open circuit's pause: the probe
/// goes at once instead of up to a minute later, when the replay looked like it did nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_replay_ends_an_open_circuits_pause() {
    let (_dir, up, gw) = failing_sink_gateway("max_attempts = 1000").await;
    let c = reqwest::Client::new();
    let id = accepted(signed(&c, &gw.url("/hooks/c"), SECRET, "held")).await;
    // Failed probes double the pause: 1 s, 2 s, 4 s, then 8 s.
    wait_until(Duration::from_secs(30), "an 8 s pause", async || {
        gw.log().contains("pause_ms=8000")
    })
    .await;
    up.always(200);
    let replay = c
        .post(gw.admin_url(&format!("/admin/events/{id}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let t0 = std::time::Instant::now();
    gw.wait_event_state(&id, "delivered", Duration::from_secs(30))
        .await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "delivered {:?} after the replay, not at the end of the pause",
        t0.elapsed()
    );
    assert!(
        gw.log().contains("an operator's replay ends its pause"),
        "{}",
        gw.log()
    );
}

/// Runs Python from the project's `.venv` (the providers' SDKs: `scripts/sdk-setup.sh`) on
/// `code`, with `args` as `sys.argv[1:]`; its stdout, trimmed.
fn sdk_python(code: &str, args: &[&str]) -> String {
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        py.exists(),
        "provider SDKs are not installed: run scripts/sdk-setup.sh"
    );
    let out = std::process::Command::new(py)
        .args(["-c", code])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `[route.forward.sign] scheme = "stripe" | "slack"`: a receiver that checks the provider's
/// signature itself (with the provider's SDK, which refuses a signature older than 5 minutes)
/// gets each attempt signed at that attempt's time, not the provider's original header (as
/// old as the event: every retry or replay after 5 minutes would be refused, 400, dead).
#[tokio::test]
async fn stripe_and_slack_re_signing_is_accepted_by_the_providers_sdks() {
    const STRIPE: &str = "whsec_resign";
    const SLACK: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    let dir = tempdir();
    let up = Upstream::start().await;
    let route = |name: &str, secret: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = \"/hooks/{name}\"\n[route.verify]\nscheme = \"{name}\"\nsecrets = [\"{secret}\"]\n[route.forward]\nurl = \"{}\"\nsign = {{ scheme = \"{name}\", secret = \"{secret}\" }}\n",
            up.url(&format!("/{name}"))
        )
    };
    let routes = format!("{}\n{}", route("stripe", STRIPE), route("slack", SLACK));
    let gw = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), "", &routes),
    );
    let c = reqwest::Client::new();
    // Signed by the providers' SDKs 200 s ago: fresh enough for the gateway's 5 minutes.
    let then = (now_secs() - 200).to_string();
    let body = r#"{"id":"evt_resign","type":"payment_intent.succeeded"}"#;
    let stripe_header = sdk_python(
        "import stripe,sys; print(stripe.WebhookSignature.generate_signature_header(sys.argv[1], sys.argv[2], timestamp=int(sys.argv[3])))",
        &[body, STRIPE, &then],
    );
    let slack_sig = sdk_python(
        "import sys; from slack_sdk.signature import SignatureVerifier as V; print(V(sys.argv[2]).generate_signature(timestamp=sys.argv[3], body=sys.argv[1]))",
        &[body, SLACK, &then],
    );
    let sent = [
        c.post(gw.url("/hooks/stripe"))
            .header("Stripe-Signature", &stripe_header)
            .body(body),
        c.post(gw.url("/hooks/slack"))
            .header("X-Slack-Request-Timestamp", &then)
            .header("X-Slack-Signature", &slack_sig)
            .body(body),
    ];
    for req in sent {
        let (status, v) = json(req.send().await.unwrap()).await;
        assert_eq!(status, 202, "{v}");
    }
    let got = up.wait_delivered(2, Duration::from_secs(10)).await;
    let at = |p: &str| got.iter().find(|r| r.uri.starts_with(p)).unwrap();
    // Stripe's SDK with a 5-second tolerance: the forwarded signature is fresh, the original
    // is not.
    let check_stripe = "import stripe,sys\ntry:\n    stripe.WebhookSignature.verify_header(sys.argv[1], sys.argv[2], sys.argv[3], tolerance=5)\n    print('valid')\nexcept stripe.SignatureVerificationError as e:\n    print('refused', e)";
    let forwarded = at("/stripe").header("stripe-signature").unwrap();
    assert_eq!(
        sdk_python(check_stripe, &[body, forwarded, STRIPE]),
        "valid",
        "{forwarded}"
    );
    assert!(sdk_python(check_stripe, &[body, &stripe_header, STRIPE]).starts_with("refused"));
    // Slack's SDK checks its own 5 minutes; the forwarded timestamp is the attempt's.
    let slack = at("/slack");
    let (ts, sig) = (
        slack.header("x-slack-request-timestamp").unwrap(),
        slack.header("x-slack-signature").unwrap(),
    );
    assert!((now_secs() - ts.parse::<i64>().unwrap()).abs() <= 5, "{ts}");
    assert_ne!(sig, slack_sig);
    assert_eq!(
        sdk_python(
            "import sys; from slack_sdk.signature import SignatureVerifier as V; print(V(sys.argv[2]).is_valid(body=sys.argv[1], timestamp=sys.argv[3], signature=sys.argv[4]))",
            &[body, SLACK, ts, sig],
        ),
        "True"
    );
}
