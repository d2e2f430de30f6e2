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
