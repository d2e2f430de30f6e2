//! The admin API's event view (SPEC §7) never shows a route's secret: static tokens and
//! `Authorization` credentials are recorded and forwarded as received, but masked on display.
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
