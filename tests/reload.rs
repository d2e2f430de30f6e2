//! Config reload (SPEC §8): SIGHUP and a changed file swap routes in atomically; an invalid
//! config is refused and the old one keeps serving; pending events survive the swap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

fn route(name: &str, secret: &str, up: &str) -> String {
    format!(
        "\n[[route]]\nname = \"{name}\"\npath = \"/hooks/{name}\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"{secret}\"]\n[route.forward]\nurl = \"{up}\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\nmax_attempts = 100\n"
    )
}

async fn metric(gw: &Gateway, line: &str) -> bool {
    reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_routes_invalid_configs_are_refused() {
    let dir = tempdir();
    let up = Upstream::start().await;
    up.always(503);
    let cfg = |routes: &str| config(&Backend::Embedded, dir.path(), "", routes);
    let mut gw = Gateway::start(dir.path(), &cfg(&route("a", "old", &up.url("/a"))));
    let c = reqwest::Client::new();

    // An event left pending across the reload (the upstream refuses it for now).
    let r = signed(&c, &gw.url("/hooks/a"), "old", "pending across reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        signed(&c, &gw.url("/hooks/b"), "bee", "x")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // SIGHUP: new secret for a, new route b.
    std::fs::write(
        &gw.config_path,
        cfg(&[
            route("a", "new", &up.url("/a")),
            route("b", "bee", &up.url("/b")),
        ]
        .concat()),
    )
    .unwrap();
    signal(gw.pid(), "HUP");
    wait_until(Duration::from_secs(10), "reload ok", || {
        metric(&gw, r#"hookgate_config_reloads_total{result="ok"} 1"#)
    })
    .await;
    up.always(200);
    assert_eq!(
        signed(&c, &gw.url("/hooks/b"), "bee", "x")
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        signed(&c, &gw.url("/hooks/a"), "old", "y")
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "the removed secret no longer passes"
    );
    assert_eq!(
        signed(&c, &gw.url("/hooks/a"), "new", "y")
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let delivered = up.wait_delivered(3, Duration::from_secs(10)).await;
    assert!(
        delivered
            .iter()
            .any(|r| &r.body[..] == b"pending across reload"),
        "the pending event was delivered by the new generation"
    );

    // An invalid config is refused; the old one keeps serving.
    std::fs::write(&gw.config_path, "[[route]]\nname = \"broken\"\n").unwrap();
    signal(gw.pid(), "HUP");
    wait_until(Duration::from_secs(10), "reload refused", || {
        metric(&gw, r#"hookgate_config_reloads_total{result="error"}"#)
    })
    .await;
    assert_eq!(
        signed(&c, &gw.url("/hooks/b"), "bee", "z")
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert!(gw.log().contains("config reload refused"));

    // A changed file is picked up without a signal.
    std::fs::write(&gw.config_path, cfg(&route("c", "sea", &up.url("/c")))).unwrap();
    wait_until(Duration::from_secs(10), "file change reloaded", || async {
        signed(&c, &gw.url("/hooks/c"), "sea", "w")
            .send()
            .await
            .unwrap()
            .status()
            == 202
    })
    .await;
    assert_eq!(
        signed(&c, &gw.url("/hooks/b"), "bee", "z")
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "route b is gone"
    );
    assert!(gw.terminate().success());
}

/// `store.min_free_space` above what the disk has: new events get 503 with Retry-After (fail
/// closed, SPEC §1 "spool full"), the reason is logged and exported, and a reload that lowers
/// it lets the sender's retry in without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_space_events_get_503_until_a_reload_lowers_it() {
    let dir = tempdir();
    let up = Upstream::start().await;
    let cfg = |min_free: &str| {
        let store = Backend::Embedded.store_toml(dir.path());
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{store}min_free_space = \"{min_free}\"\n{}",
            route("a", "sec", &up.url("/a"))
        )
    };
    // About a petabyte: more than this machine's disk has free.
    let mut gw = Gateway::start(dir.path(), &cfg("1000000GiB"));
    let c = reqwest::Client::new();

    let r = signed(&c, &gw.url("/hooks/a"), "sec", "while the disk is low")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.headers().contains_key("retry-after"),
        "the sender is told to retry"
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"error": "unavailable"})
    );
    assert!(
        metric(&gw, "hookgate_store_min_free_space_bytes 1073741824000000").await,
        "the threshold is exported"
    );
    assert!(metric(&gw, "hookgate_store_disk_free_bytes ").await);
    assert!(
        gw.log().contains("below store.min_free_space"),
        "the log says why: {}",
        gw.log()
    );
    let ready = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "the store is reachable; it is full");

    std::fs::write(&gw.config_path, cfg("0")).unwrap();
    signal(gw.pid(), "HUP");
    wait_until(Duration::from_secs(10), "reload ok", || {
        metric(&gw, r#"hookgate_config_reloads_total{result="ok"} 1"#)
    })
    .await;
    let r = signed(&c, &gw.url("/hooks/a"), "sec", "while the disk is low")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the retry is accepted after the reload");
    let delivered = up.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(&delivered[0].body[..], b"while the disk is low");
    assert!(
        !gw.log().contains("take effect only after a restart"),
        "min_free_space applies on reload, so no restart is asked for"
    );
    assert!(gw.terminate().success());
}
