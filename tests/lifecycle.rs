//! A process's hold on its store and its shutdown: a second process cannot open a store in
//! use, a store deleted under a running process is noticed, and SIGTERM stops new delivery
//! attempts at once while in-flight requests finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const SECRET: &str = "lifecycle-secret";

fn route(up: &str) -> String {
    format!(
        "\n[[route]]\nname = \"r\"\npath = \"/hooks/r\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"{SECRET}\"]\n[route.forward]\nurl = \"{up}\"\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\nmax_attempts = 1000\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_store_is_refused() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")));
    let gw = Gateway::start(dir.path(), &cfg);
    // Same config file, same store.path; its listeners are on other free ports.
    let log = dir.path().join("second.log");
    let mut second = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "-c"])
        .arg(&gw.config_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let err = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|| panic!("the second process kept running: {err}"));
    assert!(!status.success(), "second process started: {err}");
    assert!(
        err.contains("store.path: ") && err.contains("in use by another hookgate process"),
        "{err}"
    );
    // The first one still serves.
    let r = signed(&reqwest::Client::new(), &gw.url("/hooks/r"), SECRET, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// `rm -rf store.path` under a running gateway: what it recorded from then on would be in an
/// unlinked file, gone at the next start. It refuses new events (503 + Retry-After), is not
/// ready, says why, and still delivers what it holds; the next start says it makes a new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_deleted_under_the_gateway_refuses_new_events_and_is_not_ready() {
    let dir = tempdir();
    let up = Upstream::start().await;
    // The delivery waits until the store is gone: the upstream holds it until released.
    up.hold();
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")));
    let gw = Gateway::start(dir.path(), &cfg);
    let c = reqwest::Client::new();
    let before = accepted(signed(&c, &gw.url("/hooks/r"), SECRET, "before")).await;
    let ready = |gw: &Gateway| {
        let url = gw.admin_url("/readyz");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&gw).await, 200);

    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let mut n = 0;
    wait_until(Duration::from_secs(10), "new events refused", async || {
        n += 1;
        let r = signed(&c, &gw.url("/hooks/r"), SECRET, format!("after {n}"))
            .send()
            .await
            .unwrap();
        r.status() == 503 && r.headers().contains_key("retry-after")
    })
    .await;
    assert_eq!(ready(&gw).await, 503);
    assert!(
        gw.log()
            .contains("the database file was deleted or replaced"),
        "{}",
        gw.log()
    );
    // What it had recorded is still delivered from the open file.
    up.release();
    gw.wait_event_state(&before, "delivered", Duration::from_secs(10))
        .await;
    drop(gw);
    let again = Gateway::start(dir.path(), &cfg);
    assert!(
        again.log().contains("making a new, empty store"),
        "{}",
        again.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_delivery_attempts_while_a_slow_request_drains() {
    const EVENTS: usize = 40;
    let dir = tempdir();
    let up = Upstream::start().await;
    // One delivery at a time, each answered after 100 ms: a steady stream of attempts, held
    // back until every event is in (so it cannot have run out before the signal however
    // slowly they are recorded).
    up.hold();
    for _ in 0..EVENTS {
        up.push(Plan::Delay(Duration::from_millis(100), 200));
    }
    // A grace period far longer than the test's waits: the slow request holds the process
    // in its drain for the whole window below.
    let routes =
        route(&up.url("/in")).replace("[route.forward]\n", "[route.forward]\nconcurrency = 1\n");
    let cfg = config(&Backend::Embedded, dir.path(), "", &routes)
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"60s\"");
    let mut gw = Gateway::start(dir.path(), &cfg);
    let c = reqwest::Client::new();
    for i in 0..EVENTS {
        let r = signed(&c, &gw.url("/hooks/r"), SECRET, format!("event {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    // A request whose body never completes keeps the ingress draining after SIGTERM; the
    // server has read its head and waits for the body (100 Continue).
    let mut slow = request_in_flight(
        gw.ingress,
        "POST /hooks/r HTTP/1.1\r\nHost: x\r\nContent-Length: 100",
    );
    slow.write_all(b"abc").unwrap();
    up.release();
    up.wait_received(2, Duration::from_secs(10)).await;
    signal(gw.pid(), "TERM");
    wait_until(Duration::from_secs(10), "shutdown to begin", || async {
        gw.log().contains("shutting down")
    })
    .await;
    // At most the attempts in flight around the signal; before, the worker went on starting
    // new ones for as long as the slow request held the ingress open (up to the grace period).
    let at_signal = up.arrivals().len();
    assert!(
        at_signal + 3 <= EVENTS,
        "only {} events left to attempt at the signal: too few to tell",
        EVENTS - at_signal
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = up.arrivals().len();
    assert!(
        gw.is_running(),
        "the process exited during the window, so it proves nothing: {}",
        gw.log()
    );
    assert!(
        later <= at_signal + 2,
        "{} attempts after SIGTERM",
        later - at_signal
    );
    drop(slow);
    assert!(gw.terminate_wait().success());
}

/// A request still in flight when the grace period ends is cut off unanswered, and the log
/// says so (it said only "shutting down" and "stopped": the cut was seen by nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_by_the_grace_period_is_logged() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")))
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\"");
    let mut gw = Gateway::start(dir.path(), &cfg);
    let mut slow = request_in_flight(
        gw.ingress,
        "POST /hooks/r HTTP/1.1\r\nHost: x\r\nContent-Length: 100",
    );
    slow.write_all(b"abc").unwrap();
    signal(gw.pid(), "TERM");
    assert!(gw.terminate_wait().success());
    assert!(
        gw.log()
            .contains("shutdown grace period elapsed with requests still in flight"),
        "{}",
        gw.log()
    );
}

/// With `HOOKGATE_LOG_FORMAT=json` every line the process writes, on stdout and stderr, is a
/// JSON object (a container runtime puts both in one stream): the stdout line that says
/// where it listens too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_on_stdout_and_stderr() {
    use std::io::BufRead;
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")));
    let path = dir.path().join("hookgate.toml");
    write_config(&path, &cfg);
    let log = dir.path().join("json.log");
    let mut child = ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["serve", "-c"])
            .arg(&path)
            .env("HOOKGATE_LOG_FORMAT", "json")
            .env("HOOKGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let stdout = child.get().stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .next()
            .unwrap()
            .unwrap()
    })
    .await
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["message"], "hookgate listening", "{v}");
    let ingress = v["ingress"].as_str().unwrap().to_string();
    let c = reqwest::Client::new();
    let id = accepted(signed(
        &c,
        &format!("http://{ingress}/hooks/r"),
        SECRET,
        "json",
    ))
    .await;
    let r = c
        .get(format!("http://{ingress}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    wait_until(Duration::from_secs(10), "the attempt logged", async || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("delivery attempt")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["outcome"] == "not_found" {
            assert_eq!(v["route"], "unmatched", "{line}");
            assert!(v["latency_ms"].is_number(), "{line}");
        }
    }
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("not_found"), "{text}");
}

/// The gateway turns transparent huge pages off for itself (its RSS otherwise kept 2 MB
/// pages resident and rose in steps), unless `MIMALLOC_ALLOW_THP` is set.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_huge_pages_are_off_unless_asked_for() {
    let up = Upstream::start().await;
    let thp = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status:\n{status}"))
    };
    let dir = tempdir();
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")));
    let gw = Gateway::start(dir.path(), &cfg);
    assert_eq!(thp(gw.pid()), "0");
    drop(gw);
    let dir = tempdir();
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")));
    let path = dir.path().join("hookgate.toml");
    std::fs::write(&path, cfg).unwrap();
    let gw = Gateway::start_with(&path, &[("MIMALLOC_ALLOW_THP", "1")]);
    // As this process has it (a parent that turned them off passes that on).
    assert_eq!(thp(gw.pid()), thp(std::process::id()));
}

/// `hookgate backup` while the gateway runs: the copy holds every event acknowledged before
/// it (wherever SQLite holds them, database file or WAL), and a gateway started on it, as the README's
/// restore says, delivers the pending ones and still shows the delivered one. It refuses to
/// overwrite a file, and says what to do on a Redis store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_running_restores_every_acknowledged_event() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")));
    let mut gw = Gateway::start(dir.path(), &cfg);
    let c = reqwest::Client::new();
    let delivered = accepted(signed(&c, &gw.url("/hooks/r"), SECRET, "delivered before")).await;
    gw.wait_event_state(&delivered, "delivered", Duration::from_secs(10))
        .await;
    up.always(503);
    let mut pending = Vec::new();
    for i in 0..3 {
        pending.push(
            accepted(signed(
                &c,
                &gw.url("/hooks/r"),
                SECRET,
                format!("pending {i}"),
            ))
            .await,
        );
    }
    let to = dir.path().join("backup.db");
    let backup = |to: &std::path::Path, config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .arg("backup")
            .arg("-c")
            .arg(config)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };
    let out = backup(&to, &gw.config_path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 pending, 1 delivered, 0 dead events") && stdout.contains("To restore"),
        "{stdout}"
    );
    let again = backup(&to, &gw.config_path);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert!(gw.terminate().success());

    // Restored into a new store directory, as the README says.
    let restored = tempdir();
    std::fs::create_dir_all(restored.path().join("data")).unwrap();
    std::fs::copy(&to, restored.path().join("data/hookgate.db")).unwrap();
    up.always(200);
    let gw = Gateway::start(
        restored.path(),
        &config(
            &Backend::Embedded,
            restored.path(),
            "",
            &route(&up.url("/in")),
        ),
    );
    for id in &pending {
        gw.wait_event_state(id, "delivered", Duration::from_secs(10))
            .await;
    }
    let ev = gw.admin_json(&format!("/admin/events/{delivered}")).await;
    assert_eq!(ev["state"], "delivered", "{ev}");

    // A Redis store is not copied this way.
    let redis_cfg = restored.path().join("redis.toml");
    std::fs::write(
        &redis_cfg,
        config(
            &Backend::Redis("redis://127.0.0.1:1/0".into()),
            restored.path(),
            "",
            &route(&up.url("/in")),
        ),
    )
    .unwrap();
    let redis = backup(&restored.path().join("r.db"), &redis_cfg);
    assert_eq!(redis.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&redis.stderr).contains("Redis's own persistence"));
}

/// An attempt still under way when `shutdown_grace` runs out is cut off: the log says so and
/// that it will be made again (it is, after the restart), not that its attempt was recorded as
/// failed — which it was not (the walkthrough saw the claim, printed after "stopped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_outlasting_the_grace_period_is_said_to_be_cut_off_and_made_again() {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.hold();
    let cfg = config(&Backend::Embedded, dir.path(), "", &route(&up.url("/in")))
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\"");
    let mut gw = Gateway::start(dir.path(), &cfg);
    let c = reqwest::Client::new();
    let id = accepted(signed(&c, &gw.url("/hooks/r"), SECRET, "slow")).await;
    up.wait_arrived(1, Duration::from_secs(10)).await;
    assert!(gw.terminate().success());
    let log = gw.log();
    assert!(
        log.contains("did not stop within the grace period"),
        "{log}"
    );
    assert!(
        log.contains("cut off by shutdown before its outcome was known"),
        "{log}"
    );
    assert!(!log.contains("recording its attempt as failed"), "{log}");
    up.release();
    let again = Gateway::start(dir.path(), &cfg);
    again
        .wait_event_state(&id, "delivered", Duration::from_secs(10))
        .await;
}
