//! Several gateway processes sharing one Redis (issue 5): shared dedupe, shared delivery
//! (each event delivered once), takeover of a killed replica's leased events after the
//! visibility timeout, and failing closed (503 + Retry-After, `/readyz` 503) while Redis is
//! down, recovering without a gateway restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const SECRET: &str = "replica-secret";
const PREFIX: &str = "shared";

/// The visibility timeout of tests not about takeover: far beyond any stall of a loaded
/// machine (a lease is renewed every quarter of it), so a slow replica's attempt is never
/// taken over and made twice by the other.
const NO_TAKEOVER: &str = "10s";

/// A gateway config on the shared Redis: every replica uses the same `key_prefix`.
fn replica_config(
    redis: &RedisServer,
    upstream: &str,
    visibility: &str,
    forward_extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"

[store]
backend = "redis"
url = "{url}"
key_prefix = "{PREFIX}"
visibility_timeout = "{visibility}"

[[route]]
name = "r"
path = "/hooks/r"
[route.verify]
scheme = "hmac"
secrets = ["{SECRET}"]
[route.forward]
url = "{upstream}"
timeout = "30s"
backoff_initial = "20ms"
backoff_max = "200ms"
max_attempts = 100
{forward_extra}
"#,
        url = redis.url()
    )
}

fn start_replica(dir: &Path, config: &str) -> Gateway {
    std::fs::create_dir_all(dir).unwrap();
    Gateway::start(dir, config)
}

async fn send(c: &reqwest::Client, gw_url: &str, body: String, key: Option<&str>) -> (u16, Value) {
    let mut req = signed(c, gw_url, SECRET, body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Deliveries answered 2xx, counted per `Hookgate-Event-Id`.
fn delivered_counts(up: &Upstream) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in up.delivered() {
        *seen
            .entry(r.header("hookgate-event-id").unwrap().to_string())
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_sent_to_both_replicas_is_delivered_once() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let dir = tempdir();
    let cfg = replica_config(&redis, &up.url("/in"), NO_TAKEOVER, "");
    let a = start_replica(&dir.path().join("a"), &cfg);
    let b = start_replica(&dir.path().join("b"), &cfg);
    let c = reqwest::Client::new();
    // Ten copies to each replica at once, racing on one key.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            a.url("/hooks/r")
        } else {
            b.url("/hooks/r")
        };
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            send(&c, &url, "{\"same\":1}".into(), Some("k-shared")).await
        }));
    }
    let mut accepted = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            202 => accepted += 1,
            200 => assert_eq!(v["status"], "duplicate"),
            other => panic!("unexpected {other}: {v}"),
        }
        ids.insert(v["event_id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        accepted, 1,
        "one replica accepted, the other saw a duplicate"
    );
    assert_eq!(ids.len(), 1, "every answer names the one event");
    let id = ids.into_iter().next().unwrap();
    a.wait_event_state(&id, "delivered", Duration::from_secs(15))
        .await;
    // Both replicas see the same record, and it was delivered once.
    assert_eq!(
        b.admin_json(&format!("/admin/events/{id}")).await["state"],
        "delivered"
    );
    assert_eq!(up.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_events_over_two_replicas_each_delivered_once() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.random_failure(0.1, 503);
    let dir = tempdir();
    let cfg = replica_config(&redis, &up.url("/in"), NO_TAKEOVER, "");
    let a = start_replica(&dir.path().join("a"), &cfg);
    let b = start_replica(&dir.path().join("b"), &cfg);
    let c = reqwest::Client::new();
    let mut acked = HashSet::new();
    // Four senders, alternating replicas, so both ingress and both workers are busy.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, ua, ub) = (c.clone(), a.url("/hooks/r"), b.url("/hooks/r"));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..75 {
                let url = if (i + t) % 2 == 0 { &ua } else { &ub };
                let (s, v) = send(&c, url, format!("{{\"t\":{t},\"i\":{i}}}"), None).await;
                assert_eq!(s, 202, "{v}");
                ids.push(v["event_id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 300);
    up.wait_delivered(300, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(15),
        "300 recorded as delivered",
        || async { a.admin_json("/admin/routes").await["routes"][0]["delivered"] == 300 },
    )
    .await;
    let seen = delivered_counts(&up);
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), acked);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // Both replicas took part in delivering: each logged a delivered attempt (not merely a
    // line naming one, such as "cannot record delivery attempt; retrying").
    for (name, gw) in [("a", &a), ("b", &b)] {
        assert!(
            gw.log()
                .lines()
                .any(|l| l.contains(" delivery attempt ") && l.contains("\"delivered\"")),
            "replica {name} delivered nothing"
        );
    }
}

/// Entries of the route's stream leased (in the consumer group's PEL), read straight from Redis.
fn leased_in_redis(redis: &RedisServer) -> i64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(format!("{{{PREFIX}:r}}:stream"))
        .arg("hookgate")
        .query(&mut con)
        .unwrap_or(redis::Value::Nil);
    match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_in_flight_events_are_taken_over() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // Replica A's attempts hang in the upstream (then fail), so they are in flight when it dies.
    for _ in 0..20 {
        up.push(Plan::Delay(Duration::from_secs(20), 503));
    }
    let dir = tempdir();
    // A short visibility timeout: this test is about its takeover.
    let cfg = replica_config(&redis, &up.url("/in"), "3s", "");
    let mut a = start_replica(&dir.path().join("a"), &cfg);
    let c = reqwest::Client::new();
    let mut acked = HashSet::new();
    for i in 0..20 {
        let (s, v) = send(&c, &a.url("/hooks/r"), format!("in flight {i}"), None).await;
        assert_eq!(s, 202);
        acked.insert(v["event_id"].as_str().unwrap().to_string());
    }
    wait_until(
        Duration::from_secs(10),
        "all 20 leased by replica a",
        || async { leased_in_redis(&redis) == 20 },
    )
    .await;
    // Every attempt of A's is out at the upstream (each took its 20 s plan), so B's answers
    // come from the default: 200 at once.
    up.wait_arrived(20, Duration::from_secs(10)).await;
    let b = start_replica(&dir.path().join("b"), &cfg);
    let killed_at = Instant::now();
    a.kill9();
    up.wait_delivered(20, Duration::from_secs(30)).await;
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "taken over after {took:?}, before the 3s visibility timeout"
    );
    let seen = delivered_counts(&up);
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), acked);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    wait_until(
        Duration::from_secs(10),
        "20 recorded as delivered",
        || async { b.admin_json("/admin/routes").await["routes"][0]["delivered"] == 20 },
    )
    .await;
    // The takeover is said: each event B took from A's lapsed leases, in its log and counted.
    assert_eq!(
        b.counter(r#"hookgate_leases_taken_over_total{route="r"}"#)
            .await,
        20.0
    );
    assert_eq!(
        b.log().matches("whose lease lapsed").count(),
        20,
        "{}",
        b.log()
    );
}

#[derive(Debug)]
struct Sent {
    /// 0: replica a, 1: replica b.
    replica: usize,
    started: Instant,
    finished: Instant,
    status: u16,
    retry_after: bool,
    event_id: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_then_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let dir = tempdir();
    let cfg = replica_config(&redis, &up.url("/in"), NO_TAKEOVER, "");
    let a = start_replica(&dir.path().join("a"), &cfg);
    let b = start_replica(&dir.path().join("b"), &cfg);
    let c = reqwest::Client::new();

    // Load on both replicas for the whole test.
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for (t, url) in [(0, a.url("/hooks/r")), (1, b.url("/hooks/r"))] {
        let (c, log, stop) = (c.clone(), log.clone(), stop.clone());
        loaders.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                i += 1;
                let started = Instant::now();
                let resp = signed(&c, &url, SECRET, format!("load {t}-{i}"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key("retry-after");
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                log.lock().unwrap().push(Sent {
                    replica: t,
                    started,
                    finished: Instant::now(),
                    status,
                    retry_after,
                    event_id: v["event_id"].as_str().map(str::to_string),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let count = |status: u16| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|s| s.status == status)
            .count()
    };
    wait_until(Duration::from_secs(10), "some events accepted", || async {
        count(202) >= 20
    })
    .await;

    redis.stop();
    let down_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "503s while Redis is down",
        || async {
            log.lock()
                .unwrap()
                .iter()
                .filter(|s| s.started > down_at && s.status == 503)
                .count()
                >= 10
        },
    )
    .await;
    for gw in [&a, &b] {
        let r = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 503, "/readyz while Redis is down");
    }
    let up_at = Instant::now();
    redis.restart();

    wait_until(
        Duration::from_secs(20),
        "accepting again on both replicas",
        || async {
            let l = log.lock().unwrap();
            (0..2).all(|replica| {
                l.iter()
                    .filter(|s| s.replica == replica && s.started > up_at && s.status == 202)
                    .count()
                    >= 5
            })
        },
    )
    .await;
    for (name, gw) in [("a", &a), ("b", &b)] {
        wait_until(
            Duration::from_secs(20),
            &format!("/readyz 200 on replica {name} after Redis is back"),
            || async {
                reqwest::get(gw.admin_url("/readyz"))
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    for s in &log {
        assert!(
            matches!(s.status, 202 | 503),
            "only 202 or 503 under a Redis outage: {s:?}"
        );
        if s.status == 503 {
            assert!(s.retry_after, "a 503 carries Retry-After: {s:?}");
        }
        if s.started > down_at && s.finished < up_at {
            assert_eq!(s.status, 503, "no 2xx while Redis is down: {s:?}");
        }
        // Every Redis call is bounded (2 s, a reconnect's included); 6 s leaves a loaded
        // machine room and still tells a bounded wait from a hang (client timeout 10 s).
        if s.started > down_at && s.started < up_at {
            assert!(
                s.finished - s.started < Duration::from_secs(6),
                "a request waited {:?} on a dead Redis",
                s.finished - s.started
            );
        }
    }
    // Every event acknowledged, before or after the outage, is delivered (the AOF kept them).
    let acked: HashSet<String> = log
        .iter()
        .filter(|s| s.status == 202)
        .filter_map(|s| s.event_id.clone())
        .collect();
    up.wait_delivered(acked.len(), Duration::from_secs(60))
        .await;
    let seen = delivered_counts(&up);
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
}

#[test]
fn check_warns_when_redis_does_not_persist_and_fails_when_unreachable() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let path = dir.path().join("hookgate.toml");
    std::fs::write(
        &path,
        replica_config(&redis, "http://127.0.0.1:9/in", NO_TAKEOVER, ""),
    )
    .unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("does not persist"));

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    // Each weakening setting: `check` still succeeds (a warning is not an error) and says so.
    let mut weakened_warns = |key: &str, warning: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg("no")
            .query(&mut con)
            .unwrap();
        let out = check();
        assert!(out.status.success(), "a warning is not an error: {out:?}");
        let expected = format!("warning: store.url: Redis at {} {warning}", redis.url());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&expected),
            "{out:?}"
        );
    };
    weakened_warns(
        "appendfsync",
        "has appendfsync no: the OS decides when the AOF reaches the disk",
    );
    weakened_warns(
        "appendonly",
        "does not persist (appendonly no): a Redis restart loses acknowledged events",
    );

    drop(redis);
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("store.url: cannot reach Redis at "),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_attempt_beyond_the_visibility_timeout_is_not_taken_over() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    // 2.5 times the 6 s visibility timeout, and longer than a worker's 5 s idle poll. The lease
    // is renewed every 1.5 s: only a stall of 4.5 s would let the other replica take it.
    up.push(Plan::Delay(Duration::from_secs(15), 200));
    let dir = tempdir();
    let cfg = replica_config(&redis, &up.url("/in"), "6s", "");
    let a = start_replica(&dir.path().join("a"), &cfg);
    let b = start_replica(&dir.path().join("b"), &cfg);
    let c = reqwest::Client::new();
    let (s, v) = send(&c, &a.url("/hooks/r"), "slow".into(), None).await;
    assert_eq!(s, 202);
    let ev = a
        .wait_event_state(
            v["event_id"].as_str().unwrap(),
            "delivered",
            Duration::from_secs(30),
        )
        .await;
    let log = ev["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{ev:#}");
    assert!(
        log[0]["latency_ms"].as_u64().unwrap() >= 14_000,
        "delivered by the slow attempt itself, not by a takeover: {ev:#}"
    );
    assert_eq!(
        up.received().len(),
        1,
        "the attempt in flight was renewed, never handed to the other replica"
    );
    for gw in [&a, &b] {
        let taken = r#"hookgate_leases_taken_over_total{route="r"}"#;
        assert_eq!(gw.counter(taken).await, 0.0, "no takeover reported");
    }
}
